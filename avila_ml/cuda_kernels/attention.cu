// Fused softmax attention in the style of FlashAttention-2 (Dao, 2023, algorithms 1 and 2):
//   o = softmax(q k^T * scale + mask) v   for q (BH, L, D), k and v (BH, S, D), D <= 128,
// with an optional additive float mask read through strides (0 = broadcast), and causal masking
// aligned top-left like torch.nn.functional.scaled_dot_product_attention (query i sees keys j <= i).
// The L x S score matrix never reaches global memory: scores live in registers and in one
// 64 x 64 shared-memory tile at a time.
//
// Layout shared by every kernel here: 256 threads as a 16 x 16 grid (tx = lane % 16, ty = lane / 16),
// a 64 x 64 score tile gives each thread rows {ty, ty+16, ty+32, ty+48} and columns
// {tx, tx+16, tx+32, tx+48}; its head-dim columns of an output row are given by OutputColumns.
// The 16 threads sharing a row sit in one half-warp, so row reductions are four __shfl_xor_sync steps.
// Shared tiles are float, rows padded to a multiple of 4 (zeros) plus 4 more floats: every inner
// loop then reads float4 vectors (4 FMAs per loaded value pair instead of 1), and the extra 4
// floats rotate successive rows across the banks. A thread's head-dim columns are kVec contiguous
// values per group, so the p v product reads v as float4 (float2 for D <= 32) too. float16 inputs
// are converted once on load and all arithmetic is float32.
//
// Backward (recomputation, no stored probabilities):
//   preprocess: delta_i = sum_d do[i, d] * o[i, d]
//   dk/dv kernel: one block per key tile, looping over query tiles, p = exp(s - lse),
//                 dv += p^T do, ds = p * (do v^T - delta), dk += scale * ds^T q
//   dq kernel:    one block per query tile, looping over key tiles, dq += scale * ds k
// Dropout (has_dropout): o = (p o z) v with z = keep / (1 - p_drop); keep(bh, i, j) is a pure
// function of (seed, offset, bh, i, j) through Philox4x32-10, the same formula as the xp path
// (avila_ml/backends/philox.py, dropout_keep), so every kernel regenerates the same mask and no
// mask is stored: word j % 4 of Philox(key = seed, counter = offset + (bh L + i) ceil(S/4) + j / 4)
// is kept iff >= threshold. The backward uses dv += (p o z)^T do, ds = p * (z * (do v^T) - delta).
// dq is produced by its own pass instead of atomicAdd from the dk/dv blocks: it recomputes
// q k^T and do v^T once more (7 instead of 5 tile products) but needs no float32 scratch buffer,
// no atomics (L * D * S/64 of them per head) and is deterministic.
#include "avila_half.cuh"  // avila_half and its float conversions (no <cuda_fp16.h> under NVRTC)
#include "attention_common.cuh"  // Problem, masked_score, probability, Philox dropout
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define AVILA_DYNAMIC_SHARED_BYTES(name) extern __shared__ __align__(16) unsigned char name[]
#define AVILA_CHECK_ALIGNED(pointer, bytes) ((void)0)
#endif

namespace attention_detail {

constexpr int kTile = 64;           // rows of a query tile and of a key tile
constexpr int kThreads = 256;       // 16 x 16
constexpr int kLanesPerRow = 16;
constexpr int kPerThread = kTile / kLanesPerRow;
constexpr int kScoreStride = kTile + 4;  // float4-aligned rows of the 64 x 64 score tile
constexpr unsigned int kFullWarp = 0xffffffffU;

// Columns of the shared q/k/v/do tiles: D rounded up to a float4, then 4 floats of bank rotation.
__device__ __forceinline__ int padded_head_dim(int head_dim) { return (head_dim + 3) & ~3; }
__device__ __forceinline__ int tile_stride(int head_dim) { return padded_head_dim(head_dim) + 4; }

// Head-dim columns owned by a thread: groups of kVec contiguous columns, group g starting at
// g * 16 * kVec + tx * kVec. kVec = 2 for D <= 32 keeps all 16 lanes of a row busy.
template <int HEAD_DIM_MAX>
struct OutputColumns {
    static constexpr int kVec = HEAD_DIM_MAX >= 64 ? 4 : 2;
    static constexpr int kGroups = HEAD_DIM_MAX / (kLanesPerRow * kVec);
    static constexpr int kCount = kVec * kGroups;
    static_assert(kCount * kLanesPerRow == HEAD_DIM_MAX, "head-dim bucket must be a multiple of 32");

    __device__ __forceinline__ static int first(int tx, int group) { return (group * kLanesPerRow + tx) * kVec; }
};

__device__ __forceinline__ void load_vector(const float* source, float (&values)[4]) {
    AVILA_CHECK_ALIGNED(source, 16);
    const float4 v = *reinterpret_cast<const float4*>(source);
    values[0] = v.x;
    values[1] = v.y;
    values[2] = v.z;
    values[3] = v.w;
}

__device__ __forceinline__ void load_vector(const float* source, float (&values)[2]) {
    AVILA_CHECK_ALIGNED(source, 8);
    const float2 v = *reinterpret_cast<const float2*>(source);
    values[0] = v.x;
    values[1] = v.y;
}

__device__ __forceinline__ float to_float(float value) { return value; }
__device__ __forceinline__ float to_float(avila_half value) { return avila_half_to_float(value); }

template <typename T>
__device__ __forceinline__ T from_float(float value);
template <>
__device__ __forceinline__ float from_float<float>(float value) {
    return value;
}
template <>
__device__ __forceinline__ avila_half from_float<avila_half>(float value) {
    return avila_float_to_half(value);
}

struct ThreadCoords {
    int tx, ty;
};

__device__ __forceinline__ ThreadCoords thread_coords() {
    return ThreadCoords{static_cast<int>(threadIdx.x) % kLanesPerRow, static_cast<int>(threadIdx.x) / kLanesPerRow};
}

// Rows [first_row, first_row + 64) of a (rows x head_dim) matrix into dst[64][tile_stride] as
// float; rows past the end and the padding columns up to a multiple of 4 are zero, so they add
// nothing to the dot products that run over the padded width.
template <typename T>
__device__ void load_tile(float* dst, const T* __restrict__ src, int first_row, int rows, int head_dim) {
    const int width = padded_head_dim(head_dim);
    const int ld = tile_stride(head_dim);
    for (int index = threadIdx.x; index < kTile * width; index += kThreads) {
        const int row = index / width;
        const int col = index - row * width;
        const int source_row = first_row + row;
        dst[row * ld + col] = source_row < rows && col < head_dim
                                  ? to_float(src[static_cast<long long>(source_row) * head_dim + col])
                                  : 0.0f;
    }
}

// acc[a][b] = sum_d A[ty + 16a][d] * B[tx + 16b][d]. A row is broadcast to its 16 lanes and the 16
// B rows of a half-warp are 16-byte reads spread over all banks by the +4 row padding.
__device__ __forceinline__ void tile_dot(const float* A, const float* B, int head_dim, ThreadCoords t,
                                         float (&acc)[kPerThread][kPerThread]) {
    const int ld = tile_stride(head_dim);
    const int width = padded_head_dim(head_dim);
#pragma unroll
    for (int a = 0; a < kPerThread; ++a)
#pragma unroll
        for (int b = 0; b < kPerThread; ++b) acc[a][b] = 0.0f;
    for (int d = 0; d < width; d += 4) {
        float a_values[kPerThread][4], b_values[kPerThread][4];
#pragma unroll
        for (int r = 0; r < kPerThread; ++r) {
            load_vector(A + (t.ty + kLanesPerRow * r) * ld + d, a_values[r]);
            load_vector(B + (t.tx + kLanesPerRow * r) * ld + d, b_values[r]);
        }
#pragma unroll
        for (int a = 0; a < kPerThread; ++a)
#pragma unroll
            for (int b = 0; b < kPerThread; ++b)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[a][b] += a_values[a][e] * b_values[b][e];
    }
}

// acc[a][.] += sum_r P[ty + 16a][r] * V[r][.] over this thread's head-dim columns (OutputColumns),
// P a 64 x 64 tile with row stride kScoreStride, V a q/k/v-style tile.
template <int HEAD_DIM_MAX>
__device__ __forceinline__ void tile_accumulate(const float* P, const float* V, int head_dim, ThreadCoords t,
                                                float (&acc)[kPerThread][OutputColumns<HEAD_DIM_MAX>::kCount]) {
    using Columns = OutputColumns<HEAD_DIM_MAX>;
    const int ld = tile_stride(head_dim);
    const int width = padded_head_dim(head_dim);
    for (int r = 0; r < kTile; r += 4) {
        float p_values[kPerThread][4];
#pragma unroll
        for (int a = 0; a < kPerThread; ++a) load_vector(P + (t.ty + kLanesPerRow * a) * kScoreStride + r, p_values[a]);
#pragma unroll
        for (int g = 0; g < Columns::kGroups; ++g) {
            const int col = Columns::first(t.tx, g);
            if (col >= width) continue;  // the padding columns inside `width` are zero
#pragma unroll
            for (int rr = 0; rr < 4; ++rr) {
                float v_values[Columns::kVec];
                load_vector(V + (r + rr) * ld + col, v_values);
#pragma unroll
                for (int a = 0; a < kPerThread; ++a)
#pragma unroll
                    for (int e = 0; e < Columns::kVec; ++e)
                        acc[a][g * Columns::kVec + e] += p_values[a][rr] * v_values[e];
            }
        }
    }
}

// Writes acc[a][.] (already scaled) to row `row` of a (rows x head_dim) output.
template <typename T, int HEAD_DIM_MAX>
__device__ __forceinline__ void store_row(T* __restrict__ dst, long long row, int head_dim, ThreadCoords t,
                                          const float (&values)[OutputColumns<HEAD_DIM_MAX>::kCount], float factor) {
    using Columns = OutputColumns<HEAD_DIM_MAX>;
#pragma unroll
    for (int g = 0; g < Columns::kGroups; ++g)
#pragma unroll
        for (int e = 0; e < Columns::kVec; ++e) {
            const int col = Columns::first(t.tx, g) + e;
            if (col < head_dim) dst[row * head_dim + col] = from_float<T>(values[g * Columns::kVec + e] * factor);
        }
}

__device__ __forceinline__ float max_over_row(float value) {
#pragma unroll
    for (int offset = kLanesPerRow / 2; offset > 0; offset /= 2)
        value = fmaxf(value, __shfl_xor_sync(kFullWarp, value, offset));
    return value;
}

__device__ __forceinline__ float sum_over_row(float value) {
#pragma unroll
    for (int offset = kLanesPerRow / 2; offset > 0; offset /= 2) value += __shfl_xor_sync(kFullWarp, value, offset);
    return value;
}

__device__ __forceinline__ int key_tiles_end(const Problem& p, int query_first) {
    // With top-left causal alignment no query of this tile sees a key at or past query_first + 64.
    return p.is_causal ? (p.seq_k < query_first + kTile ? p.seq_k : query_first + kTile) : p.seq_k;
}

// grid BH * ceil(L / 64) (query tiles fastest), 256 threads;
// dynamic shared memory (3 * 64 * tile_stride(D) + 64 * 68) floats.
template <typename T, int HEAD_DIM_MAX>
__device__ void forward(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ o,
                        float* __restrict__ lse, const Problem& p) {
    constexpr int COLS = OutputColumns<HEAD_DIM_MAX>::kCount;
    const ThreadCoords t = thread_coords();
    const int query_tiles = (p.seq_q + kTile - 1) / kTile;
    const int bh = blockIdx.x / query_tiles;
    const int query_first = (blockIdx.x % query_tiles) * kTile;
    const int head_dim = p.head_dim;
    const int ld = tile_stride(head_dim);
    const long long q_base = static_cast<long long>(bh) * p.seq_q * head_dim;
    const long long k_base = static_cast<long long>(bh) * p.seq_k * head_dim;

    AVILA_DYNAMIC_SHARED_BYTES(shared_bytes);
    float* q_tile = reinterpret_cast<float*>(shared_bytes);
    float* k_tile = q_tile + kTile * ld;
    float* v_tile = k_tile + kTile * ld;
    float* p_tile = v_tile + kTile * ld;  // [query][key]

    load_tile(q_tile, q + q_base, query_first, p.seq_q, head_dim);

    float row_max[kPerThread], row_sum[kPerThread], acc[kPerThread][COLS];
#pragma unroll
    for (int a = 0; a < kPerThread; ++a) {
        row_max[a] = negative_infinity();
        row_sum[a] = 0.0f;  // this thread's share; the 16 shares are summed once at the end
#pragma unroll
        for (int c = 0; c < COLS; ++c) acc[a][c] = 0.0f;
    }

    const int key_end = key_tiles_end(p, query_first);
    for (int key_first = 0; key_first < key_end; key_first += kTile) {
        __syncthreads();  // everyone is done with the previous k, v and p tiles
        load_tile(k_tile, k + k_base, key_first, p.seq_k, head_dim);
        load_tile(v_tile, v + k_base, key_first, p.seq_k, head_dim);
        __syncthreads();

        float scores[kPerThread][kPerThread];
        tile_dot(q_tile, k_tile, head_dim, t, scores);
#pragma unroll
        for (int a = 0; a < kPerThread; ++a) {
            const int i = query_first + t.ty + kLanesPerRow * a;
            float tile_max = negative_infinity();
#pragma unroll
            for (int b = 0; b < kPerThread; ++b) {
                scores[a][b] = masked_score(scores[a][b], i, key_first + t.tx + kLanesPerRow * b, bh, p);
                tile_max = fmaxf(tile_max, scores[a][b]);
            }
            const float new_max = fmaxf(row_max[a], max_over_row(tile_max));
            // While a row has seen only masked keys, subtract 0 instead of -inf to avoid inf - inf.
            const float reference = new_max == negative_infinity() ? 0.0f : new_max;
            const float rescale = __expf(row_max[a] - reference);
            row_max[a] = new_max;
            row_sum[a] *= rescale;
#pragma unroll
            for (int c = 0; c < COLS; ++c) acc[a][c] *= rescale;
#pragma unroll
            for (int b = 0; b < kPerThread; ++b) {
                const float prob = __expf(scores[a][b] - reference);
                row_sum[a] += prob;  // the softmax normaliser: before dropout
                const float kept = p.has_dropout ? prob * dropout_factor(bh, i, key_first + t.tx + kLanesPerRow * b, p) : prob;
                p_tile[(t.ty + kLanesPerRow * a) * kScoreStride + t.tx + kLanesPerRow * b] = kept;
            }
        }
        __syncthreads();
        tile_accumulate<HEAD_DIM_MAX>(p_tile, v_tile, head_dim, t, acc);
    }

#pragma unroll
    for (int a = 0; a < kPerThread; ++a) {
        const float total = sum_over_row(row_sum[a]);
        const int i = query_first + t.ty + kLanesPerRow * a;
        if (i >= p.seq_q) continue;
        const float inverse = total > 0.0f ? 1.0f / total : 0.0f;  // fully masked rows give o = 0
        store_row<T, HEAD_DIM_MAX>(o + q_base, i, head_dim, t, acc[a], inverse);
        if (t.tx == 0) {
            const float log_sum_exp = total > 0.0f ? row_max[a] + logf(total) : negative_infinity();
            lse[static_cast<long long>(bh) * p.seq_q + i] = log_sum_exp;
        }
    }
}

// delta[r] = sum_d do[r, d] * o[r, d] for the BH * L rows; one warp per row.
template <typename T>
__device__ void backward_preprocess(const T* __restrict__ o, const T* __restrict__ d_o, float* __restrict__ delta,
                                    long long rows, int head_dim) {
    const long long row = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    float sum = 0.0f;
    if (row < rows) {
        for (int d = lane; d < head_dim; d += 32) {
            sum += to_float(o[row * head_dim + d]) * to_float(d_o[row * head_dim + d]);
        }
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(kFullWarp, sum, offset);
    if (row < rows && lane == 0) delta[row] = sum;
}

// grid BH * ceil(S / 64) (key tiles fastest), 256 threads;
// dynamic shared memory (4 * 64 * tile_stride(D) + 64 * 68 + 128) floats.
// Thread rows are keys here (j = ty + 16a) so the dk, dv accumulators stay in registers.
template <typename T, int HEAD_DIM_MAX>
__device__ void backward_dkdv(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                              const T* __restrict__ d_o, const float* __restrict__ lse,
                              const float* __restrict__ delta, T* __restrict__ dk, T* __restrict__ dv,
                              const Problem& p) {
    constexpr int COLS = OutputColumns<HEAD_DIM_MAX>::kCount;
    const ThreadCoords t = thread_coords();
    const int key_tiles = (p.seq_k + kTile - 1) / kTile;
    const int bh = blockIdx.x / key_tiles;
    const int key_first = (blockIdx.x % key_tiles) * kTile;
    const int head_dim = p.head_dim;
    const int ld = tile_stride(head_dim);
    const long long q_base = static_cast<long long>(bh) * p.seq_q * head_dim;
    const long long k_base = static_cast<long long>(bh) * p.seq_k * head_dim;
    const long long row_base = static_cast<long long>(bh) * p.seq_q;

    AVILA_DYNAMIC_SHARED_BYTES(shared_bytes);
    float* k_tile = reinterpret_cast<float*>(shared_bytes);
    float* v_tile = k_tile + kTile * ld;
    float* q_tile = v_tile + kTile * ld;
    float* do_tile = q_tile + kTile * ld;
    float* score_tile = do_tile + kTile * ld;  // [key][query]: p, then ds
    float* lse_tile = score_tile + kTile * kScoreStride;
    float* delta_tile = lse_tile + kTile;

    load_tile(k_tile, k + k_base, key_first, p.seq_k, head_dim);
    load_tile(v_tile, v + k_base, key_first, p.seq_k, head_dim);

    float dk_acc[kPerThread][COLS], dv_acc[kPerThread][COLS];
#pragma unroll
    for (int a = 0; a < kPerThread; ++a)
#pragma unroll
        for (int c = 0; c < COLS; ++c) dk_acc[a][c] = dv_acc[a][c] = 0.0f;

    // Causal: queries before key_first see none of this tile's keys.
    const int query_begin = p.is_causal ? key_first : 0;
    for (int query_first = query_begin; query_first < p.seq_q; query_first += kTile) {
        __syncthreads();  // everyone is done with the previous q, do and score tiles
        load_tile(q_tile, q + q_base, query_first, p.seq_q, head_dim);
        load_tile(do_tile, d_o + q_base, query_first, p.seq_q, head_dim);
        if (threadIdx.x < kTile) {
            const int i = query_first + threadIdx.x;
            lse_tile[threadIdx.x] = i < p.seq_q ? lse[row_base + i] : negative_infinity();
            delta_tile[threadIdx.x] = i < p.seq_q ? delta[row_base + i] : 0.0f;
        }
        __syncthreads();

        float scores[kPerThread][kPerThread], d_probs[kPerThread][kPerThread];
        tile_dot(k_tile, q_tile, head_dim, t, scores);
        tile_dot(v_tile, do_tile, head_dim, t, d_probs);
        float d_scores[kPerThread][kPerThread];
#pragma unroll
        for (int a = 0; a < kPerThread; ++a) {
            const int j = key_first + t.ty + kLanesPerRow * a;
#pragma unroll
            for (int b = 0; b < kPerThread; ++b) {
                const int query_local = t.tx + kLanesPerRow * b;
                const float score = masked_score(scores[a][b], query_first + query_local, j, bh, p);
                const float prob = probability(score, lse_tile[query_local]);
                const float z = dropout_factor(bh, query_first + query_local, j, p);
                d_scores[a][b] = prob * (z * d_probs[a][b] - delta_tile[query_local]);
                score_tile[(t.ty + kLanesPerRow * a) * kScoreStride + query_local] = prob * z;
            }
        }
        __syncthreads();
        tile_accumulate<HEAD_DIM_MAX>(score_tile, do_tile, head_dim, t, dv_acc);
        __syncthreads();
#pragma unroll
        for (int a = 0; a < kPerThread; ++a)
#pragma unroll
            for (int b = 0; b < kPerThread; ++b)
                score_tile[(t.ty + kLanesPerRow * a) * kScoreStride + t.tx + kLanesPerRow * b] = d_scores[a][b];
        __syncthreads();
        tile_accumulate<HEAD_DIM_MAX>(score_tile, q_tile, head_dim, t, dk_acc);
    }

#pragma unroll
    for (int a = 0; a < kPerThread; ++a) {
        const int j = key_first + t.ty + kLanesPerRow * a;
        if (j >= p.seq_k) continue;
        store_row<T, HEAD_DIM_MAX>(dk + k_base, j, head_dim, t, dk_acc[a], p.scale);
        store_row<T, HEAD_DIM_MAX>(dv + k_base, j, head_dim, t, dv_acc[a], 1.0f);
    }
}

// grid BH * ceil(L / 64) (query tiles fastest), 256 threads;
// dynamic shared memory (4 * 64 * tile_stride(D) + 64 * 68) floats.
template <typename T, int HEAD_DIM_MAX>
__device__ void backward_dq(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                            const T* __restrict__ d_o, const float* __restrict__ lse, const float* __restrict__ delta,
                            T* __restrict__ dq, const Problem& p) {
    constexpr int COLS = OutputColumns<HEAD_DIM_MAX>::kCount;
    const ThreadCoords t = thread_coords();
    const int query_tiles = (p.seq_q + kTile - 1) / kTile;
    const int bh = blockIdx.x / query_tiles;
    const int query_first = (blockIdx.x % query_tiles) * kTile;
    const int head_dim = p.head_dim;
    const int ld = tile_stride(head_dim);
    const long long q_base = static_cast<long long>(bh) * p.seq_q * head_dim;
    const long long k_base = static_cast<long long>(bh) * p.seq_k * head_dim;

    AVILA_DYNAMIC_SHARED_BYTES(shared_bytes);
    float* q_tile = reinterpret_cast<float*>(shared_bytes);
    float* do_tile = q_tile + kTile * ld;
    float* k_tile = do_tile + kTile * ld;
    float* v_tile = k_tile + kTile * ld;
    float* ds_tile = v_tile + kTile * ld;  // [query][key]

    load_tile(q_tile, q + q_base, query_first, p.seq_q, head_dim);
    load_tile(do_tile, d_o + q_base, query_first, p.seq_q, head_dim);

    float row_lse[kPerThread], row_delta[kPerThread], dq_acc[kPerThread][COLS];
#pragma unroll
    for (int a = 0; a < kPerThread; ++a) {
        const int i = query_first + t.ty + kLanesPerRow * a;
        row_lse[a] = i < p.seq_q ? lse[static_cast<long long>(bh) * p.seq_q + i] : negative_infinity();
        row_delta[a] = i < p.seq_q ? delta[static_cast<long long>(bh) * p.seq_q + i] : 0.0f;
#pragma unroll
        for (int c = 0; c < COLS; ++c) dq_acc[a][c] = 0.0f;
    }

    const int key_end = key_tiles_end(p, query_first);
    for (int key_first = 0; key_first < key_end; key_first += kTile) {
        __syncthreads();  // everyone is done with the previous k, v and ds tiles
        load_tile(k_tile, k + k_base, key_first, p.seq_k, head_dim);
        load_tile(v_tile, v + k_base, key_first, p.seq_k, head_dim);
        __syncthreads();

        float scores[kPerThread][kPerThread], d_probs[kPerThread][kPerThread];
        tile_dot(q_tile, k_tile, head_dim, t, scores);
        tile_dot(do_tile, v_tile, head_dim, t, d_probs);
#pragma unroll
        for (int a = 0; a < kPerThread; ++a) {
            const int i = query_first + t.ty + kLanesPerRow * a;
#pragma unroll
            for (int b = 0; b < kPerThread; ++b) {
                const int key_local = t.tx + kLanesPerRow * b;
                const float prob = probability(masked_score(scores[a][b], i, key_first + key_local, bh, p), row_lse[a]);
                const float z = dropout_factor(bh, i, key_first + key_local, p);
                ds_tile[(t.ty + kLanesPerRow * a) * kScoreStride + key_local] = prob * (z * d_probs[a][b] - row_delta[a]);
            }
        }
        __syncthreads();
        tile_accumulate<HEAD_DIM_MAX>(ds_tile, k_tile, head_dim, t, dq_acc);
    }

#pragma unroll
    for (int a = 0; a < kPerThread; ++a) {
        const int i = query_first + t.ty + kLanesPerRow * a;
        if (i >= p.seq_q) continue;
        store_row<T, HEAD_DIM_MAX>(dq + q_base, i, head_dim, t, dq_acc[a], p.scale);
    }
}

}  // namespace attention_detail

#define AVILA_ATTENTION_MASK_PARAMS                                                                \
    const float *__restrict__ mask, long long mask_stride_bh, long long mask_stride_l, long long mask_stride_s, \
        int has_mask
#define AVILA_ATTENTION_SHAPE_PARAMS                                                                          \
    int seq_q, int seq_k, int head_dim, float scale, int is_causal, long long dropout_threshold, float dropout_scale, \
        long long dropout_seed, long long dropout_offset, int has_dropout
#define AVILA_ATTENTION_PROBLEM                                                                                    \
    attention_detail::Problem {                                                                                    \
        seq_q, seq_k, head_dim, scale, is_causal, mask, mask_stride_bh, mask_stride_l, mask_stride_s, has_mask,     \
            dropout_threshold, dropout_scale, dropout_seed, dropout_offset, has_dropout                            \
    }

#define AVILA_DEFINE_ATTENTION_KERNELS(T, suffix, head_dim_max)                                                        \
    extern "C" __global__ void __launch_bounds__(attention_detail::kThreads)                                           \
        flash_attention_forward_##suffix##_hd##head_dim_max(                                                           \
            const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, AVILA_ATTENTION_MASK_PARAMS,    \
            T* __restrict__ o, float* __restrict__ lse, AVILA_ATTENTION_SHAPE_PARAMS) {                                \
        attention_detail::forward<T, head_dim_max>(q, k, v, o, lse, AVILA_ATTENTION_PROBLEM);                          \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(attention_detail::kThreads)                                           \
        flash_attention_backward_dkdv_##suffix##_hd##head_dim_max(                                                     \
            const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, AVILA_ATTENTION_MASK_PARAMS,    \
            const T* __restrict__ d_o, const float* __restrict__ lse, const float* __restrict__ delta,                 \
            T* __restrict__ dk, T* __restrict__ dv, AVILA_ATTENTION_SHAPE_PARAMS) {                                    \
        attention_detail::backward_dkdv<T, head_dim_max>(q, k, v, d_o, lse, delta, dk, dv, AVILA_ATTENTION_PROBLEM);   \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(attention_detail::kThreads)                                           \
        flash_attention_backward_dq_##suffix##_hd##head_dim_max(                                                       \
            const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, AVILA_ATTENTION_MASK_PARAMS,    \
            const T* __restrict__ d_o, const float* __restrict__ lse, const float* __restrict__ delta,                 \
            T* __restrict__ dq, AVILA_ATTENTION_SHAPE_PARAMS) {                                                        \
        attention_detail::backward_dq<T, head_dim_max>(q, k, v, d_o, lse, delta, dq, AVILA_ATTENTION_PROBLEM);         \
    }

#define AVILA_DEFINE_ATTENTION_PREPROCESS(T, suffix)                                                               \
    extern "C" __global__ void flash_attention_backward_preprocess_##suffix(                                       \
        const T* __restrict__ o, const T* __restrict__ d_o, float* __restrict__ delta, long long rows, int head_dim) { \
        attention_detail::backward_preprocess<T>(o, d_o, delta, rows, head_dim);                                   \
    }

AVILA_DEFINE_ATTENTION_PREPROCESS(float, f32)
AVILA_DEFINE_ATTENTION_PREPROCESS(avila_half, f16)
AVILA_DEFINE_ATTENTION_KERNELS(float, f32, 32)
AVILA_DEFINE_ATTENTION_KERNELS(float, f32, 64)
AVILA_DEFINE_ATTENTION_KERNELS(float, f32, 128)
AVILA_DEFINE_ATTENTION_KERNELS(avila_half, f16, 32)
AVILA_DEFINE_ATTENTION_KERNELS(avila_half, f16, 64)
AVILA_DEFINE_ATTENTION_KERNELS(avila_half, f16, 128)
