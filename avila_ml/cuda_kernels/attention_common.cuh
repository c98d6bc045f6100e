// Pieces of the attention problem shared by attention.cu (CUDA-core kernels) and attention_mma.cu
// (tensor-core kernels): the problem description, masking, and the Philox dropout mask that
// both regenerate bit for bit (the formula of avila_ml/backends/philox.py, dropout_keep).
#ifndef AVILA_ATTENTION_COMMON_CUH
#define AVILA_ATTENTION_COMMON_CUH

namespace attention_detail {

// Built from its bit pattern: NVRTC does not guarantee <math.h>'s INFINITY macro.
__device__ __forceinline__ float negative_infinity() { return __int_as_float(static_cast<int>(0xff800000U)); }

struct Problem {
    int seq_q, seq_k, head_dim;
    float scale;
    int is_causal;
    const float* mask;
    long long mask_stride_bh, mask_stride_l, mask_stride_s;
    int has_mask;
    long long dropout_threshold;  // keep iff the 32-bit Philox word >= this
    float dropout_scale;          // 1 / (1 - p_drop)
    long long dropout_seed, dropout_offset;  // 64-bit patterns (passed signed, used unsigned)
    int has_dropout;
};

// Word `word` (0..3) of Philox4x32-10 with key `seed` at counter (low 32 bits, high 32 bits, 0, 0)
// of `counter`. Each element computes its own block although four neighbouring keys share one:
// a thread's keys are 16 apart in this layout, and ten rounds are cheap next to the tile products.
__device__ __forceinline__ unsigned int philox_word(unsigned long long seed, unsigned long long counter, int word) {
    unsigned int c0 = static_cast<unsigned int>(counter), c1 = static_cast<unsigned int>(counter >> 32);
    unsigned int c2 = 0U, c3 = 0U;
    unsigned int k0 = static_cast<unsigned int>(seed), k1 = static_cast<unsigned int>(seed >> 32);
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        const unsigned long long p0 = 0xD2511F53ULL * c0;
        const unsigned long long p1 = 0xCD9E8D57ULL * c2;
        const unsigned int n0 = static_cast<unsigned int>(p1 >> 32) ^ c1 ^ k0;
        const unsigned int n2 = static_cast<unsigned int>(p0 >> 32) ^ c3 ^ k1;
        c1 = static_cast<unsigned int>(p1);
        c3 = static_cast<unsigned int>(p0);
        c0 = n0;
        c2 = n2;
        k0 += 0x9E3779B9U;
        k1 += 0xBB67AE85U;
    }
    return word == 0 ? c0 : word == 1 ? c1 : word == 2 ? c2 : c3;
}

// The dropout factor of (bh, i, j): 1 without dropout, else 1 / (1 - p_drop) if kept, 0 if dropped.
__device__ __forceinline__ float dropout_factor(int bh, int i, int j, const Problem& p) {
    if (!p.has_dropout || i >= p.seq_q || j >= p.seq_k) return 1.0f;
    const unsigned long long quads = (static_cast<unsigned long long>(p.seq_k) + 3ULL) / 4ULL;
    const unsigned long long row = static_cast<unsigned long long>(bh) * static_cast<unsigned long long>(p.seq_q) +
                                   static_cast<unsigned long long>(i);
    const unsigned long long counter = static_cast<unsigned long long>(p.dropout_offset) + row * quads +
                                       static_cast<unsigned long long>(j / 4);
    const unsigned int word = philox_word(static_cast<unsigned long long>(p.dropout_seed), counter, j % 4);
    return static_cast<long long>(word) >= p.dropout_threshold ? p.dropout_scale : 0.0f;
}

// Scaled, masked score of query i against key j; -inf where the key is out of range or masked.
__device__ __forceinline__ float masked_score(float dot, int i, int j, int bh, const Problem& p) {
    if (i >= p.seq_q || j >= p.seq_k || (p.is_causal && j > i)) return negative_infinity();
    float score = dot * p.scale;
    if (p.has_mask) score += p.mask[bh * p.mask_stride_bh + i * p.mask_stride_l + j * p.mask_stride_s];
    return score;
}

// exp(score - lse), with fully masked rows (lse = -inf) and masked entries giving exactly 0.
__device__ __forceinline__ float probability(float score, float lse) {
    return (score == negative_infinity() || lse == negative_infinity()) ? 0.0f : __expf(score - lse);
}

}  // namespace attention_detail

#endif  // AVILA_ATTENTION_COMMON_CUH
