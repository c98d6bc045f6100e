// Fused softmax attention on tensor cores (FlashAttention-2 structure, Dao 2023, algorithms 1 and 2)
// for float16 and bfloat16 storage with float32 accumulation (mma.sync m16n8k16):
//   o = softmax(q k^T * scale + mask) v,  q (B*Hq, L, D), k and v (B*Hkv, S, D), D <= 256,
// with the causal, additive-mask and Philox-dropout conventions of attention.cu (shared through
// attention_common.cuh) and grouped-query attention: query head bh reads key/value head
// bh / group (group = Hq / Hkv; heads of one batch element are contiguous).
//
// Forward: a block owns 64 queries, 4 warps x 16 rows. Per 64-key tile (32 for D = 256) each warp
// computes its 16 x 64 scores with mma.sync straight from shared memory, applies scale, mask and
// causality in registers (the C-fragment layout says which (query, key) each register holds),
// runs the online softmax in registers (row max/sum over the 4 lanes of a fragment row with two
// shuffles), and feeds the probabilities, rounded to the storage type, back as A fragments of the
// P V product without a trip through shared memory (the accumulator layout of two 16 x 8 score
// fragments is the A layout of one 16 x 16 fragment). K and V tiles are double-buffered with
// cp.async: the copy of tile j + 1 is in flight while tile j is multiplied.
//
// Backward (recomputation, lse and delta = rowsum(do * o) from the forward):
//   dkdv: a block owns 64 keys of one key/value head (4 warps x 16 keys) and loops over the query
//         tiles of every query head of its group, Q/dO tiles double-buffered with cp.async:
//         S^T = K Q^T, P^T = exp(S^T - lse), dV += (P^T o Z) dO, dP^T = V dO^T,
//         dS^T = P^T o (Z o dP^T - delta), dK += scale * dS^T Q;
//   dq:   a block owns 64 queries and loops over key tiles: dQ += scale * dS K.
// Deterministic (no atomics); GQA sums dK/dV over the group inside one block.
#include "attention_common.cuh"
#include "avila_mma.cuh"
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define AVILA_DYNAMIC_SHARED_BYTES(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace attention_mma {

using attention_detail::dropout_factor;
using attention_detail::masked_score;
using attention_detail::negative_infinity;
using attention_detail::Problem;

constexpr int kThreads = 128;  // 4 warps
constexpr int kRowsPerWarp = 16;
constexpr int kBlockRows = 64;  // queries (forward, dq) or keys (dkdv) per block
constexpr unsigned int kFullWarp = 0xffffffffU;

template <int HD>
struct Shape {
    static constexpr int kStride = HD + 8;              // 16-bit elements per shared row: conflict-free fragments
    static constexpr int kInner = HD <= 128 ? 64 : 32;  // rows of the streamed tiles (K/V, or Q/dO in dkdv)
    static constexpr int kHeadFrags = HD / 8;           // 8-column fragments of an output row
    static constexpr int kHeadSteps = HD / 16;          // k-steps of a product over the head dimension
    static constexpr int kInnerFrags = kInner / 8;
    static constexpr int kInnerSteps = kInner / 16;
};

// 16-bit value <-> float and the mma instruction, per storage type.
__device__ __forceinline__ float widen(avila_half v) { return avila_half_to_float(v); }
__device__ __forceinline__ float widen(avila_bf16 v) { return avila_bf16_to_float(v); }
template <typename T>
__device__ __forceinline__ T narrow(float v);
template <>
__device__ __forceinline__ avila_half narrow<avila_half>(float v) {
    return avila_float_to_half(v);
}
template <>
__device__ __forceinline__ avila_bf16 narrow<avila_bf16>(float v) {
    return avila_float_to_bf16(v);
}
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
__device__ __forceinline__ unsigned short raw_bits(avila_half v) { return v.bits; }
#else
inline unsigned short raw_bits(avila_half v) { return std::bit_cast<unsigned short>(v); }
#endif
__device__ __forceinline__ unsigned short raw_bits(avila_bf16 v) { return v.bits; }
// d += a . b (the accumulator is copied: the instruction reads C before it writes D anyway)
__device__ __forceinline__ void mma(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2], avila_half) {
    const float c[4] = {d[0], d[1], d[2], d[3]};
    avila_mma_f16(d, a, b, c);
}
__device__ __forceinline__ void mma(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2], avila_bf16) {
    const float c[4] = {d[0], d[1], d[2], d[3]};
    avila_mma_bf16(d, a, b, c);
}

// Two values rounded to T, packed low | high << 16 (a fragment register).
template <typename T>
__device__ __forceinline__ unsigned int pack(float low, float high) {
    return static_cast<unsigned int>(raw_bits(narrow<T>(low))) |
           (static_cast<unsigned int>(raw_bits(narrow<T>(high))) << 16);
}
// Two shared-memory values of one column, rows r and r + 1, packed (a "transposed" fragment).
template <typename T>
__device__ __forceinline__ unsigned int pack_column(const T* tile, int row, int column, int stride) {
    return static_cast<unsigned int>(raw_bits(tile[row * stride + column])) |
           (static_cast<unsigned int>(raw_bits(tile[(row + 1) * stride + column])) << 16);
}

// Rows [first, first + rows_in_tile) of a (rows x head_dim) matrix into tile[row][0..HD), zero
// beyond the matrix and beyond head_dim: pairs of columns move with one 4-byte cp.async when
// inside and aligned (or zero-filled when wholly outside), else synchronously.
template <typename T, int HD>
__device__ __forceinline__ void load_rows(T* tile, const T* __restrict__ src, int first, int rows_in_tile, int rows,
                                          int head_dim) {
    constexpr int kPairs = HD / 2;
    for (int index = threadIdx.x; index < rows_in_tile * kPairs; index += kThreads) {
        const int row = index / kPairs;
        const int col = (index % kPairs) * 2;
        T* destination = tile + row * Shape<HD>::kStride + col;
        const bool row_in = first + row < rows;
        const long long offset = static_cast<long long>(first + row) * head_dim + col;
        const bool both = row_in && col + 1 < head_dim;
        const bool none = !row_in || col >= head_dim;
        if (both && (reinterpret_cast<unsigned long long>(src + offset) & 3ULL) == 0ULL) {
            avila_cp_async<4>(destination, src + offset, true);
        } else if (none) {
            // zero fill: nothing is read, but the address must still be 4-byte aligned (a head's
            // rows need not be); rounding down stays inside the tensor, whose start is aligned
            const T* aligned = reinterpret_cast<const T*>(reinterpret_cast<unsigned long long>(src) & ~3ULL);
            avila_cp_async<4>(destination, aligned, false);
        } else {
            destination[0] = col < head_dim ? src[offset] : narrow<T>(0.0f);
            destination[1] = both ? src[offset + 1] : narrow<T>(0.0f);
        }
    }
}

// floats [first, first + count) of `src` (lse or delta of one head) into dst, -inf / 0 beyond.
__device__ __forceinline__ void load_floats(float* dst, const float* __restrict__ src, int first, int count, int size,
                                            float fill) {
    for (int index = threadIdx.x; index < count; index += kThreads) {
        if (first + index < size) {
            avila_cp_async<4>(dst + index, src + first + index, true);
        } else {
            dst[index] = fill;
        }
    }
}

// acc[f] (16 rows x 8*F columns) += A (16 rows of `a_tile` starting at a_row, k over the head
// dimension) . B where B[k][n] = b_tile[n][k] (rows of b_tile are the n index): S = Q K^T, dP = dO V^T,
// S^T = K Q^T, dP^T = V dO^T.
template <typename T, int HD, int F>
__device__ __forceinline__ void multiply_rows(float (&acc)[F][4], const T* a_tile, int a_row, const T* b_tile,
                                              int lane) {
    constexpr int S = Shape<HD>::kStride;
    const int g = lane >> 2, t2 = (lane & 3) * 2;
#pragma unroll
    for (int ks = 0; ks < HD; ks += 16) {
        unsigned int a[4];
        a[0] = avila_load_u32(a_tile + (a_row + g) * S + ks + t2);
        a[1] = avila_load_u32(a_tile + (a_row + g + 8) * S + ks + t2);
        a[2] = avila_load_u32(a_tile + (a_row + g) * S + ks + t2 + 8);
        a[3] = avila_load_u32(a_tile + (a_row + g + 8) * S + ks + t2 + 8);
#pragma unroll
        for (int f = 0; f < F; ++f) {
            unsigned int b[2];
            b[0] = avila_load_u32(b_tile + (f * 8 + g) * S + ks + t2);
            b[1] = avila_load_u32(b_tile + (f * 8 + g) * S + ks + t2 + 8);
            mma(acc[f], a, b, T{});
        }
    }
}

// out[HD/8][4] (16 rows x HD) += P . M where P (16 x 8*F, the accumulator layout of `p`) becomes A
// fragments in registers and M[k][d] = m_tile[k][d] (rows of m_tile are the k index): O += P V,
// dV += P^T dO, dK += dS^T Q, dQ += dS K.
template <typename T, int HD, int F>
__device__ __forceinline__ void multiply_registers(float (&out)[HD / 8][4], const float (&p)[F][4], const T* m_tile,
                                                   int lane) {
    constexpr int S = Shape<HD>::kStride;
    const int g = lane >> 2, t2 = (lane & 3) * 2;
#pragma unroll
    for (int kk = 0; kk < F / 2; ++kk) {
        // accumulator fragments 2kk and 2kk+1: (g, 2t..), (g+8, 2t..) -> A registers a0..a3
        unsigned int a[4];
        a[0] = pack<T>(p[2 * kk][0], p[2 * kk][1]);
        a[1] = pack<T>(p[2 * kk][2], p[2 * kk][3]);
        a[2] = pack<T>(p[2 * kk + 1][0], p[2 * kk + 1][1]);
        a[3] = pack<T>(p[2 * kk + 1][2], p[2 * kk + 1][3]);
#pragma unroll
        for (int d = 0; d < HD / 8; ++d) {
            unsigned int b[2];  // b0: k = 16kk + 2t, 2t+1; b1: k + 8, n = 8d + g
            b[0] = pack_column(m_tile, kk * 16 + t2, d * 8 + g, S);
            b[1] = pack_column(m_tile, kk * 16 + t2 + 8, d * 8 + g, S);
            mma(out[d], a, b, T{});
        }
    }
}

__device__ __forceinline__ float reduce_max4(float v) {
    v = fmaxf(v, __shfl_xor_sync(kFullWarp, v, 1));
    return fmaxf(v, __shfl_xor_sync(kFullWarp, v, 2));
}
__device__ __forceinline__ float reduce_sum4(float v) {
    v += __shfl_xor_sync(kFullWarp, v, 1);
    return v + __shfl_xor_sync(kFullWarp, v, 2);
}

// Writes out (16 x HD accumulator layout) * factor[row half] to rows row0 (+8) of a (rows x head_dim) matrix.
template <typename T, int HD>
__device__ __forceinline__ void store_rows(T* __restrict__ dst, const float (&out)[HD / 8][4], int row0, int rows,
                                           int head_dim, const float (&factor)[2], int lane) {
    const int g = lane >> 2, t2 = (lane & 3) * 2;
#pragma unroll
    for (int d = 0; d < HD / 8; ++d)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const int row = row0 + g + (c >= 2 ? 8 : 0);
            const int col = d * 8 + t2 + (c & 1);
            if (row < rows && col < head_dim) dst[static_cast<long long>(row) * head_dim + col] =
                narrow<T>(out[d][c] * factor[c >> 1]);
        }
}

template <int HD>
__device__ __forceinline__ int key_end(const Problem& p, int query_first) {
    // top-left causal alignment: no query of [query_first, +64) sees a key at or past query_first + 64
    return p.is_causal ? (p.seq_k < query_first + kBlockRows ? p.seq_k : query_first + kBlockRows) : p.seq_k;
}

// grid (BHq * ceil(L / 64)); shared: Q [64][HD+8] + 2 stages of K, V [inner][HD+8].
template <typename T, int HD>
__device__ void forward(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ o,
                        float* __restrict__ lse, const Problem& p, int group) {
    using Sh = Shape<HD>;
    constexpr int S = Sh::kStride;
    constexpr int F = Sh::kInnerFrags;
    const int query_tiles = (p.seq_q + kBlockRows - 1) / kBlockRows;
    const int bh = blockIdx.x / query_tiles;
    const int kv = bh / group;
    const int query_first = (blockIdx.x % query_tiles) * kBlockRows;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane >> 2, t2 = (lane & 3) * 2;
    const T* q_head = q + static_cast<long long>(bh) * p.seq_q * p.head_dim;
    const T* k_head = k + static_cast<long long>(kv) * p.seq_k * p.head_dim;
    const T* v_head = v + static_cast<long long>(kv) * p.seq_k * p.head_dim;

    AVILA_DYNAMIC_SHARED_BYTES(shared_bytes);
    T* q_tile = reinterpret_cast<T*>(shared_bytes);
    T* stages = q_tile + kBlockRows * S;  // [stage][K rows, then V rows][HD + 8]
    constexpr int kStage = 2 * Sh::kInner * S;

    load_rows<T, HD>(q_tile, q_head, query_first, kBlockRows, p.seq_q, p.head_dim);
    avila_cp_async_commit();
    const int keys = key_end<HD>(p, query_first);
    const int tiles = (keys + Sh::kInner - 1) / Sh::kInner;
    if (tiles > 0) {
        load_rows<T, HD>(stages, k_head, 0, Sh::kInner, p.seq_k, p.head_dim);
        load_rows<T, HD>(stages + Sh::kInner * S, v_head, 0, Sh::kInner, p.seq_k, p.head_dim);
    }
    avila_cp_async_commit();

    float out[HD / 8][4];
#pragma unroll
    for (int d = 0; d < HD / 8; ++d)
#pragma unroll
        for (int c = 0; c < 4; ++c) out[d][c] = 0.0f;
    float row_max[2] = {negative_infinity(), negative_infinity()};
    float row_sum[2] = {0.0f, 0.0f};  // this lane's share; the 4 shares are summed at the end
    const int row0 = query_first + warp * kRowsPerWarp;

    for (int tile = 0; tile < tiles; ++tile) {
        const T* k_tile = stages + (tile & 1) * kStage;
        const T* v_tile = k_tile + Sh::kInner * S;
        if (tile + 1 < tiles) {
            T* next = stages + ((tile + 1) & 1) * kStage;
            load_rows<T, HD>(next, k_head, (tile + 1) * Sh::kInner, Sh::kInner, p.seq_k, p.head_dim);
            load_rows<T, HD>(next + Sh::kInner * S, v_head, (tile + 1) * Sh::kInner, Sh::kInner, p.seq_k, p.head_dim);
        }
        avila_cp_async_commit();
        avila_cp_async_wait<1>();  // Q and this tile's K/V have landed; the prefetch may still fly
        __syncthreads();

        float s[F][4];
#pragma unroll
        for (int f = 0; f < F; ++f)
#pragma unroll
            for (int c = 0; c < 4; ++c) s[f][c] = 0.0f;
        multiply_rows<T, HD, F>(s, q_tile, warp * kRowsPerWarp, k_tile, lane);

        const int key0 = tile * Sh::kInner;
        float tile_max[2] = {negative_infinity(), negative_infinity()};
#pragma unroll
        for (int f = 0; f < F; ++f)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                s[f][c] = masked_score(s[f][c], row0 + g + (c >= 2 ? 8 : 0), key0 + f * 8 + t2 + (c & 1), bh, p);
                tile_max[c >> 1] = fmaxf(tile_max[c >> 1], s[f][c]);
            }
        float reference[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const float new_max = fmaxf(row_max[h], reduce_max4(tile_max[h]));
            // while a row has seen only masked keys, subtract 0 instead of -inf (no inf - inf)
            reference[h] = new_max == negative_infinity() ? 0.0f : new_max;
            const float rescale = __expf(row_max[h] - reference[h]);
            row_max[h] = new_max;
            row_sum[h] *= rescale;
#pragma unroll
            for (int d = 0; d < HD / 8; ++d) {
                out[d][2 * h] *= rescale;
                out[d][2 * h + 1] *= rescale;
            }
        }
#pragma unroll
        for (int f = 0; f < F; ++f)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const float prob = __expf(s[f][c] - reference[c >> 1]);  // exp(-inf) = 0 for masked keys
                row_sum[c >> 1] += prob;  // the softmax normaliser: before dropout
                s[f][c] = prob * dropout_factor(bh, row0 + g + (c >= 2 ? 8 : 0), key0 + f * 8 + t2 + (c & 1), p);
            }
        multiply_registers<T, HD, F>(out, s, v_tile, lane);
        __syncthreads();  // every warp is done with this stage before it is refilled
    }

    float factor[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const float total = reduce_sum4(row_sum[h]);
        factor[h] = total > 0.0f ? 1.0f / total : 0.0f;  // a row with every key masked: o = 0, lse = -inf
        const int row = row0 + g + 8 * h;
        if ((lane & 3) == 0 && row < p.seq_q) {
            lse[static_cast<long long>(bh) * p.seq_q + row] =
                total > 0.0f ? row_max[h] + __logf(total) : negative_infinity();
        }
    }
    store_rows<T, HD>(o + static_cast<long long>(bh) * p.seq_q * p.head_dim, out, row0, p.seq_q, p.head_dim, factor,
                      lane);
}

// delta[i] = sum_d do[i, d] * o[i, d] in float32, one thread per row.
template <typename T>
__device__ void delta(const T* __restrict__ o, const T* __restrict__ grad_o, float* __restrict__ result, long long rows,
                      int head_dim) {
    const long long row = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (row >= rows) return;
    float sum = 0.0f;
    for (int d = 0; d < head_dim; ++d) sum += widen(grad_o[row * head_dim + d]) * widen(o[row * head_dim + d]);
    result[row] = sum;
}

// grid (BHkv * ceil(S / 64)); shared: K, V [64][HD+8] + 2 stages of Q, dO [inner][HD+8] + lse, delta.
template <typename T, int HD>
__device__ void backward_dkdv(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                              const T* __restrict__ grad_o, const float* __restrict__ lse,
                              const float* __restrict__ delta_rows, T* __restrict__ dk, T* __restrict__ dv,
                              const Problem& p, int group) {
    using Sh = Shape<HD>;
    constexpr int S = Sh::kStride;
    constexpr int F = Sh::kInnerFrags;  // 8-query fragments of a streamed query tile
    const int key_tiles = (p.seq_k + kBlockRows - 1) / kBlockRows;
    const int kv = blockIdx.x / key_tiles;
    const int key_first = (blockIdx.x % key_tiles) * kBlockRows;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane >> 2, t2 = (lane & 3) * 2;
    const int key0 = key_first + warp * kRowsPerWarp;

    AVILA_DYNAMIC_SHARED_BYTES(shared_bytes);
    T* k_tile = reinterpret_cast<T*>(shared_bytes);
    T* v_tile = k_tile + kBlockRows * S;
    T* stages = v_tile + kBlockRows * S;  // [stage][Q rows, then dO rows][HD + 8]
    constexpr int kStage = 2 * Sh::kInner * S;
    float* row_stats = reinterpret_cast<float*>(stages + 2 * kStage);  // [stage][lse, delta][inner]

    load_rows<T, HD>(k_tile, k + static_cast<long long>(kv) * p.seq_k * p.head_dim, key_first, kBlockRows, p.seq_k,
                     p.head_dim);
    load_rows<T, HD>(v_tile, v + static_cast<long long>(kv) * p.seq_k * p.head_dim, key_first, kBlockRows, p.seq_k,
                     p.head_dim);
    avila_cp_async_commit();

    // causal: queries before key_first see none of these keys
    const int query_begin = p.is_causal ? (key_first / Sh::kInner) * Sh::kInner : 0;
    const int tiles_per_head = p.seq_q > query_begin ? (p.seq_q - query_begin + Sh::kInner - 1) / Sh::kInner : 0;
    const int tiles = tiles_per_head * group;  // every query head of this key/value head

    auto issue = [&](int tile, int stage) {
        const int bh = kv * group + tile / tiles_per_head;
        const int first = query_begin + (tile % tiles_per_head) * Sh::kInner;
        T* q_dst = stages + stage * kStage;
        load_rows<T, HD>(q_dst, q + static_cast<long long>(bh) * p.seq_q * p.head_dim, first, Sh::kInner, p.seq_q,
                         p.head_dim);
        load_rows<T, HD>(q_dst + Sh::kInner * S, grad_o + static_cast<long long>(bh) * p.seq_q * p.head_dim, first,
                         Sh::kInner, p.seq_q, p.head_dim);
        float* stats = row_stats + stage * 2 * Sh::kInner;
        load_floats(stats, lse + static_cast<long long>(bh) * p.seq_q, first, Sh::kInner, p.seq_q, negative_infinity());
        load_floats(stats + Sh::kInner, delta_rows + static_cast<long long>(bh) * p.seq_q, first, Sh::kInner, p.seq_q,
                    0.0f);
    };
    if (tiles > 0) issue(0, 0);
    avila_cp_async_commit();

    float grad_k[HD / 8][4], grad_v[HD / 8][4];
#pragma unroll
    for (int d = 0; d < HD / 8; ++d)
#pragma unroll
        for (int c = 0; c < 4; ++c) grad_k[d][c] = grad_v[d][c] = 0.0f;

    for (int tile = 0; tile < tiles; ++tile) {
        const int stage = tile & 1;
        const T* q_tile = stages + stage * kStage;
        const T* do_tile = q_tile + Sh::kInner * S;
        const float* tile_lse = row_stats + stage * 2 * Sh::kInner;
        const float* tile_delta = tile_lse + Sh::kInner;
        if (tile + 1 < tiles) issue(tile + 1, stage ^ 1);
        avila_cp_async_commit();
        avila_cp_async_wait<1>();
        __syncthreads();

        const int bh = kv * group + tile / tiles_per_head;
        const int query_first = query_begin + (tile % tiles_per_head) * Sh::kInner;
        float s[F][4], dp[F][4];
#pragma unroll
        for (int f = 0; f < F; ++f)
#pragma unroll
            for (int c = 0; c < 4; ++c) s[f][c] = dp[f][c] = 0.0f;
        multiply_rows<T, HD, F>(s, k_tile, warp * kRowsPerWarp, q_tile, lane);    // S^T = K Q^T
        multiply_rows<T, HD, F>(dp, v_tile, warp * kRowsPerWarp, do_tile, lane);  // dP^T = V dO^T
#pragma unroll
        for (int f = 0; f < F; ++f)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int j = key0 + g + (c >= 2 ? 8 : 0);  // key: the row here
                const int column = f * 8 + t2 + (c & 1);    // query within the tile
                const int i = query_first + column;
                const float score = masked_score(s[f][c], i, j, bh, p);
                const float row_lse = tile_lse[column];
                const float prob = (score == negative_infinity() || row_lse == negative_infinity())
                                       ? 0.0f
                                       : __expf(score - row_lse);
                const float z = dropout_factor(bh, i, j, p);
                s[f][c] = prob * z;                                   // (P o Z)^T for dV
                dp[f][c] = prob * (z * dp[f][c] - tile_delta[column]);  // dS^T
            }
        multiply_registers<T, HD, F>(grad_v, s, do_tile, lane);  // dV += (P o Z)^T dO
        multiply_registers<T, HD, F>(grad_k, dp, q_tile, lane);  // dK += dS^T Q
        __syncthreads();
    }
    const float scale[2] = {p.scale, p.scale};
    const float one[2] = {1.0f, 1.0f};
    store_rows<T, HD>(dk + static_cast<long long>(kv) * p.seq_k * p.head_dim, grad_k, key0, p.seq_k, p.head_dim, scale,
                      lane);
    store_rows<T, HD>(dv + static_cast<long long>(kv) * p.seq_k * p.head_dim, grad_v, key0, p.seq_k, p.head_dim, one,
                      lane);
}

// grid (BHq * ceil(L / 64)); shared: Q, dO [64][HD+8] + 2 stages of K, V [inner][HD+8].
template <typename T, int HD>
__device__ void backward_dq(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                            const T* __restrict__ grad_o, const float* __restrict__ lse,
                            const float* __restrict__ delta_rows, T* __restrict__ dq, const Problem& p, int group) {
    using Sh = Shape<HD>;
    constexpr int S = Sh::kStride;
    constexpr int F = Sh::kInnerFrags;
    const int query_tiles = (p.seq_q + kBlockRows - 1) / kBlockRows;
    const int bh = blockIdx.x / query_tiles;
    const int kv = bh / group;
    const int query_first = (blockIdx.x % query_tiles) * kBlockRows;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane >> 2, t2 = (lane & 3) * 2;
    const int row0 = query_first + warp * kRowsPerWarp;
    const T* k_head = k + static_cast<long long>(kv) * p.seq_k * p.head_dim;
    const T* v_head = v + static_cast<long long>(kv) * p.seq_k * p.head_dim;

    AVILA_DYNAMIC_SHARED_BYTES(shared_bytes);
    T* q_tile = reinterpret_cast<T*>(shared_bytes);
    T* do_tile = q_tile + kBlockRows * S;
    T* stages = do_tile + kBlockRows * S;
    constexpr int kStage = 2 * Sh::kInner * S;

    load_rows<T, HD>(q_tile, q + static_cast<long long>(bh) * p.seq_q * p.head_dim, query_first, kBlockRows, p.seq_q,
                     p.head_dim);
    load_rows<T, HD>(do_tile, grad_o + static_cast<long long>(bh) * p.seq_q * p.head_dim, query_first, kBlockRows,
                     p.seq_q, p.head_dim);
    avila_cp_async_commit();
    const int keys = key_end<HD>(p, query_first);
    const int tiles = (keys + Sh::kInner - 1) / Sh::kInner;
    if (tiles > 0) {
        load_rows<T, HD>(stages, k_head, 0, Sh::kInner, p.seq_k, p.head_dim);
        load_rows<T, HD>(stages + Sh::kInner * S, v_head, 0, Sh::kInner, p.seq_k, p.head_dim);
    }
    avila_cp_async_commit();

    float row_lse[2], row_delta[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int row = row0 + g + 8 * h;
        row_lse[h] = row < p.seq_q ? lse[static_cast<long long>(bh) * p.seq_q + row] : negative_infinity();
        row_delta[h] = row < p.seq_q ? delta_rows[static_cast<long long>(bh) * p.seq_q + row] : 0.0f;
    }
    float grad_q[HD / 8][4];
#pragma unroll
    for (int d = 0; d < HD / 8; ++d)
#pragma unroll
        for (int c = 0; c < 4; ++c) grad_q[d][c] = 0.0f;

    for (int tile = 0; tile < tiles; ++tile) {
        const T* k_tile = stages + (tile & 1) * kStage;
        const T* v_tile = k_tile + Sh::kInner * S;
        if (tile + 1 < tiles) {
            T* next = stages + ((tile + 1) & 1) * kStage;
            load_rows<T, HD>(next, k_head, (tile + 1) * Sh::kInner, Sh::kInner, p.seq_k, p.head_dim);
            load_rows<T, HD>(next + Sh::kInner * S, v_head, (tile + 1) * Sh::kInner, Sh::kInner, p.seq_k, p.head_dim);
        }
        avila_cp_async_commit();
        avila_cp_async_wait<1>();
        __syncthreads();

        float s[F][4], dp[F][4];
#pragma unroll
        for (int f = 0; f < F; ++f)
#pragma unroll
            for (int c = 0; c < 4; ++c) s[f][c] = dp[f][c] = 0.0f;
        multiply_rows<T, HD, F>(s, q_tile, warp * kRowsPerWarp, k_tile, lane);    // S = Q K^T
        multiply_rows<T, HD, F>(dp, do_tile, warp * kRowsPerWarp, v_tile, lane);  // dP = dO V^T
        const int key0 = tile * Sh::kInner;
#pragma unroll
        for (int f = 0; f < F; ++f)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int i = row0 + g + (c >= 2 ? 8 : 0);
                const int j = key0 + f * 8 + t2 + (c & 1);
                const float score = masked_score(s[f][c], i, j, bh, p);
                const float l = row_lse[c >> 1];
                const float prob =
                    (score == negative_infinity() || l == negative_infinity()) ? 0.0f : __expf(score - l);
                dp[f][c] = prob * (dropout_factor(bh, i, j, p) * dp[f][c] - row_delta[c >> 1]);  // dS
            }
        multiply_registers<T, HD, F>(grad_q, dp, k_tile, lane);  // dQ += dS K
        __syncthreads();
    }
    const float scale[2] = {p.scale, p.scale};
    store_rows<T, HD>(dq + static_cast<long long>(bh) * p.seq_q * p.head_dim, grad_q, row0, p.seq_q, p.head_dim, scale,
                      lane);
}

}  // namespace attention_mma

#define AVILA_ATTENTION_MMA_PARAMS                                                                              \
    const float *__restrict__ mask, long long mask_stride_bh, long long mask_stride_l, long long mask_stride_s, \
        int has_mask
#define AVILA_ATTENTION_MMA_PROBLEM_PARAMS                                                                      \
    int seq_q, int seq_k, int head_dim, float scale, int is_causal, long long dropout_threshold,                \
        float dropout_scale, long long dropout_seed, long long dropout_offset, int has_dropout, int group
#define AVILA_ATTENTION_MMA_PROBLEM                                                                             \
    attention_detail::Problem {                                                                                 \
        seq_q, seq_k, head_dim, scale, is_causal, mask, mask_stride_bh, mask_stride_l, mask_stride_s, has_mask, \
            dropout_threshold, dropout_scale, dropout_seed, dropout_offset, has_dropout                         \
    }

#define AVILA_DEFINE_ATTENTION_MMA_KERNELS(T, suffix, HD)                                                         \
    extern "C" __global__ void __launch_bounds__(attention_mma::kThreads) attention_mma_forward_##suffix##_hd##HD( \
        const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, AVILA_ATTENTION_MMA_PARAMS,     \
        T* __restrict__ o, float* __restrict__ lse, AVILA_ATTENTION_MMA_PROBLEM_PARAMS) {                          \
        attention_mma::forward<T, HD>(q, k, v, o, lse, AVILA_ATTENTION_MMA_PROBLEM, group);                       \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(attention_mma::kThreads)                                          \
        attention_mma_backward_dkdv_##suffix##_hd##HD(                                                            \
            const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, AVILA_ATTENTION_MMA_PARAMS, \
            const T* __restrict__ grad_o, const float* __restrict__ lse, const float* __restrict__ delta,         \
            T* __restrict__ dk, T* __restrict__ dv, AVILA_ATTENTION_MMA_PROBLEM_PARAMS) {                         \
        attention_mma::backward_dkdv<T, HD>(q, k, v, grad_o, lse, delta, dk, dv, AVILA_ATTENTION_MMA_PROBLEM,      \
                                            group);                                                                \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(attention_mma::kThreads)                                          \
        attention_mma_backward_dq_##suffix##_hd##HD(                                                              \
            const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, AVILA_ATTENTION_MMA_PARAMS, \
            const T* __restrict__ grad_o, const float* __restrict__ lse, const float* __restrict__ delta,         \
            T* __restrict__ dq, AVILA_ATTENTION_MMA_PROBLEM_PARAMS) {                                              \
        attention_mma::backward_dq<T, HD>(q, k, v, grad_o, lse, delta, dq, AVILA_ATTENTION_MMA_PROBLEM, group);   \
    }

#define AVILA_DEFINE_ATTENTION_MMA_TYPE(T, suffix)                                                                 \
    AVILA_DEFINE_ATTENTION_MMA_KERNELS(T, suffix, 32)                                                              \
    AVILA_DEFINE_ATTENTION_MMA_KERNELS(T, suffix, 64)                                                              \
    AVILA_DEFINE_ATTENTION_MMA_KERNELS(T, suffix, 128)                                                             \
    AVILA_DEFINE_ATTENTION_MMA_KERNELS(T, suffix, 256)                                                             \
    extern "C" __global__ void attention_mma_delta_##suffix(const T* __restrict__ o, const T* __restrict__ grad_o, \
                                                            float* __restrict__ delta, long long rows, int head_dim) { \
        attention_mma::delta<T>(o, grad_o, delta, rows, head_dim);                                                 \
    }

AVILA_DEFINE_ATTENTION_MMA_TYPE(avila_half, f16)
AVILA_DEFINE_ATTENTION_MMA_TYPE(avila_bf16, bf16)
