// Fused softmax attention in the style of FlashAttention-2 (Dao, 2023, algorithms 1 and 2):
//   o = softmax(q k^T * scale + mask) v   for q (BH, L, D), k and v (BH, S, D), D <= 128,
// with an optional additive float mask read through strides (0 = broadcast), and causal masking
// aligned top-left like torch.nn.functional.scaled_dot_product_attention (query i sees keys j <= i).
// The L x S score matrix never reaches global memory: scores live in registers and in one
// 64 x 64 shared-memory tile at a time.
//
// Layout shared by every kernel here: 256 threads as a 16 x 16 grid (tx = lane % 16, ty = lane / 16),
// a 64 x 64 score tile gives each thread rows {ty, ty+16, ty+32, ty+48} and columns
// {tx, tx+16, tx+32, tx+48}; head-dim columns of the outputs are {tx + 16c}. The 16 threads
// sharing a row sit in one half-warp, so row reductions are four __shfl_xor_sync steps.
// Shared tiles are stored as float with a row stride of D + 1, which keeps the column reads of
// q k^T conflict free; float16 inputs are converted once on load and all arithmetic is float32.
//
// Backward (recomputation, no stored probabilities):
//   preprocess: delta_i = sum_d do[i, d] * o[i, d]
//   dk/dv kernel: one block per key tile, looping over query tiles, p = exp(s - lse),
//                 dv += p^T do, ds = p * (do v^T - delta), dk += scale * ds^T q
//   dq kernel:    one block per query tile, looping over key tiles, dq += scale * ds k
// dq is produced by its own pass instead of atomicAdd from the dk/dv blocks: it recomputes
// q k^T and do v^T once more (7 instead of 5 tile products) but needs no float32 scratch buffer,
// no atomics (L * D * S/64 of them per head) and is deterministic.
#ifdef __CUDACC__
#include <cuda_fp16.h>
#define AVILA_DYNAMIC_SHARED_BYTES(name) extern __shared__ __align__(16) unsigned char name[]
#else
#include "host_emulation/cuda_host.h"
#endif

namespace attention_detail {

constexpr int kTile = 64;           // rows of a query tile and of a key tile
constexpr int kThreads = 256;       // 16 x 16
constexpr int kLanesPerRow = 16;
constexpr int kPerThread = kTile / kLanesPerRow;
constexpr int kScoreStride = kTile + 1;
constexpr unsigned int kFullWarp = 0xffffffffU;

__device__ __forceinline__ float to_float(float value) { return value; }
__device__ __forceinline__ float to_float(__half value) { return __half2float(value); }

template <typename T>
__device__ __forceinline__ T from_float(float value);
template <>
__device__ __forceinline__ float from_float<float>(float value) {
    return value;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float value) {
    return __float2half(value);
}

struct Problem {
    int seq_q, seq_k, head_dim;
    float scale;
    int is_causal;
    const float* mask;
    long long mask_stride_bh, mask_stride_l, mask_stride_s;
    int has_mask;
};

struct ThreadCoords {
    int tx, ty;
};

__device__ __forceinline__ ThreadCoords thread_coords() {
    return ThreadCoords{static_cast<int>(threadIdx.x) % kLanesPerRow, static_cast<int>(threadIdx.x) / kLanesPerRow};
}

// Rows [first_row, first_row + 64) of a (rows x head_dim) matrix into dst[64][ld] as float; rows
// past the end are zero so they add nothing to dot products.
template <typename T>
__device__ void load_tile(float* dst, int ld, const T* __restrict__ src, int first_row, int rows, int head_dim) {
    for (int index = threadIdx.x; index < kTile * head_dim; index += kThreads) {
        const int row = index / head_dim;
        const int col = index - row * head_dim;
        const int source_row = first_row + row;
        dst[row * ld + col] =
            source_row < rows ? to_float(src[static_cast<long long>(source_row) * head_dim + col]) : 0.0f;
    }
}

// acc[a][b] = sum_d A[ty + 16a][d] * B[tx + 16b][d]
__device__ __forceinline__ void tile_dot(const float* A, const float* B, int ld, int head_dim, ThreadCoords t,
                                         float (&acc)[kPerThread][kPerThread]) {
#pragma unroll
    for (int a = 0; a < kPerThread; ++a)
#pragma unroll
        for (int b = 0; b < kPerThread; ++b) acc[a][b] = 0.0f;
    for (int d = 0; d < head_dim; ++d) {
        float a_values[kPerThread], b_values[kPerThread];
#pragma unroll
        for (int r = 0; r < kPerThread; ++r) {
            a_values[r] = A[(t.ty + kLanesPerRow * r) * ld + d];
            b_values[r] = B[(t.tx + kLanesPerRow * r) * ld + d];
        }
#pragma unroll
        for (int a = 0; a < kPerThread; ++a)
#pragma unroll
            for (int b = 0; b < kPerThread; ++b) acc[a][b] += a_values[a] * b_values[b];
    }
}

// acc[a][c] += sum_r P[ty + 16a][r] * V[r][tx + 16c] over the columns tx + 16c < head_dim.
template <int COLS>
__device__ __forceinline__ void tile_accumulate(const float* P, const float* V, int ld, int head_dim, ThreadCoords t,
                                                float (&acc)[kPerThread][COLS]) {
    for (int r = 0; r < kTile; ++r) {
        float p_values[kPerThread];
#pragma unroll
        for (int a = 0; a < kPerThread; ++a) p_values[a] = P[(t.ty + kLanesPerRow * a) * kScoreStride + r];
#pragma unroll
        for (int c = 0; c < COLS; ++c) {
            const int col = t.tx + kLanesPerRow * c;
            if (col < head_dim) {
                const float v_value = V[r * ld + col];
#pragma unroll
                for (int a = 0; a < kPerThread; ++a) acc[a][c] += p_values[a] * v_value;
            }
        }
    }
}

// Scaled, masked score of query i against key j; -inf where the key is out of range or masked.
__device__ __forceinline__ float masked_score(float dot, int i, int j, int bh, const Problem& p) {
    if (i >= p.seq_q || j >= p.seq_k || (p.is_causal && j > i)) return -INFINITY;
    float score = dot * p.scale;
    if (p.has_mask) score += p.mask[bh * p.mask_stride_bh + i * p.mask_stride_l + j * p.mask_stride_s];
    return score;
}

// exp(score - lse), with fully masked rows (lse = -inf) and masked entries giving exactly 0.
__device__ __forceinline__ float probability(float score, float lse) {
    return (score == -INFINITY || lse == -INFINITY) ? 0.0f : __expf(score - lse);
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

// grid (ceil(L / 64), BH), 256 threads; dynamic shared memory (3 * 64 * (D + 1) + 64 * 65) floats.
template <typename T, int HEAD_DIM_MAX>
__device__ void forward(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ o,
                        float* __restrict__ lse, const Problem& p) {
    constexpr int COLS = HEAD_DIM_MAX / kLanesPerRow;
    const ThreadCoords t = thread_coords();
    const int bh = blockIdx.y;
    const int query_first = blockIdx.x * kTile;
    const int head_dim = p.head_dim;
    const int ld = head_dim + 1;
    const long long q_base = static_cast<long long>(bh) * p.seq_q * head_dim;
    const long long k_base = static_cast<long long>(bh) * p.seq_k * head_dim;

    AVILA_DYNAMIC_SHARED_BYTES(shared_bytes);
    float* q_tile = reinterpret_cast<float*>(shared_bytes);
    float* k_tile = q_tile + kTile * ld;
    float* v_tile = k_tile + kTile * ld;
    float* p_tile = v_tile + kTile * ld;  // [query][key]

    load_tile(q_tile, ld, q + q_base, query_first, p.seq_q, head_dim);

    float row_max[kPerThread], row_sum[kPerThread], acc[kPerThread][COLS];
#pragma unroll
    for (int a = 0; a < kPerThread; ++a) {
        row_max[a] = -INFINITY;
        row_sum[a] = 0.0f;  // this thread's share; the 16 shares are summed once at the end
#pragma unroll
        for (int c = 0; c < COLS; ++c) acc[a][c] = 0.0f;
    }

    const int key_end = key_tiles_end(p, query_first);
    for (int key_first = 0; key_first < key_end; key_first += kTile) {
        __syncthreads();  // everyone is done with the previous k, v and p tiles
        load_tile(k_tile, ld, k + k_base, key_first, p.seq_k, head_dim);
        load_tile(v_tile, ld, v + k_base, key_first, p.seq_k, head_dim);
        __syncthreads();

        float scores[kPerThread][kPerThread];
        tile_dot(q_tile, k_tile, ld, head_dim, t, scores);
#pragma unroll
        for (int a = 0; a < kPerThread; ++a) {
            const int i = query_first + t.ty + kLanesPerRow * a;
            float tile_max = -INFINITY;
#pragma unroll
            for (int b = 0; b < kPerThread; ++b) {
                scores[a][b] = masked_score(scores[a][b], i, key_first + t.tx + kLanesPerRow * b, bh, p);
                tile_max = fmaxf(tile_max, scores[a][b]);
            }
            const float new_max = fmaxf(row_max[a], max_over_row(tile_max));
            // While a row has seen only masked keys, subtract 0 instead of -inf to avoid inf - inf.
            const float reference = new_max == -INFINITY ? 0.0f : new_max;
            const float rescale = __expf(row_max[a] - reference);
            row_max[a] = new_max;
            row_sum[a] *= rescale;
#pragma unroll
            for (int c = 0; c < COLS; ++c) acc[a][c] *= rescale;
#pragma unroll
            for (int b = 0; b < kPerThread; ++b) {
                const float prob = __expf(scores[a][b] - reference);
                row_sum[a] += prob;
                p_tile[(t.ty + kLanesPerRow * a) * kScoreStride + t.tx + kLanesPerRow * b] = prob;
            }
        }
        __syncthreads();
        tile_accumulate(p_tile, v_tile, ld, head_dim, t, acc);
    }

#pragma unroll
    for (int a = 0; a < kPerThread; ++a) {
        const float total = sum_over_row(row_sum[a]);
        const int i = query_first + t.ty + kLanesPerRow * a;
        if (i >= p.seq_q) continue;
        const float inverse = total > 0.0f ? 1.0f / total : 0.0f;  // fully masked rows give o = 0
#pragma unroll
        for (int c = 0; c < COLS; ++c) {
            const int col = t.tx + kLanesPerRow * c;
            if (col < head_dim) o[q_base + static_cast<long long>(i) * head_dim + col] = from_float<T>(acc[a][c] * inverse);
        }
        if (t.tx == 0) lse[static_cast<long long>(bh) * p.seq_q + i] = total > 0.0f ? row_max[a] + logf(total) : -INFINITY;
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
        for (int d = lane; d < head_dim; d += 32) sum += to_float(o[row * head_dim + d]) * to_float(d_o[row * head_dim + d]);
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(kFullWarp, sum, offset);
    if (row < rows && lane == 0) delta[row] = sum;
}

// grid (ceil(S / 64), BH), 256 threads; dynamic shared memory (4 * 64 * (D + 1) + 64 * 65 + 128) floats.
// Thread rows are keys here (j = ty + 16a) so the dk, dv accumulators stay in registers.
template <typename T, int HEAD_DIM_MAX>
__device__ void backward_dkdv(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                              const T* __restrict__ d_o, const float* __restrict__ lse,
                              const float* __restrict__ delta, T* __restrict__ dk, T* __restrict__ dv,
                              const Problem& p) {
    constexpr int COLS = HEAD_DIM_MAX / kLanesPerRow;
    const ThreadCoords t = thread_coords();
    const int bh = blockIdx.y;
    const int key_first = blockIdx.x * kTile;
    const int head_dim = p.head_dim;
    const int ld = head_dim + 1;
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

    load_tile(k_tile, ld, k + k_base, key_first, p.seq_k, head_dim);
    load_tile(v_tile, ld, v + k_base, key_first, p.seq_k, head_dim);

    float dk_acc[kPerThread][COLS], dv_acc[kPerThread][COLS];
#pragma unroll
    for (int a = 0; a < kPerThread; ++a)
#pragma unroll
        for (int c = 0; c < COLS; ++c) dk_acc[a][c] = dv_acc[a][c] = 0.0f;

    // Causal: queries before key_first see none of this tile's keys.
    const int query_begin = p.is_causal ? key_first : 0;
    for (int query_first = query_begin; query_first < p.seq_q; query_first += kTile) {
        __syncthreads();  // everyone is done with the previous q, do and score tiles
        load_tile(q_tile, ld, q + q_base, query_first, p.seq_q, head_dim);
        load_tile(do_tile, ld, d_o + q_base, query_first, p.seq_q, head_dim);
        if (threadIdx.x < kTile) {
            const int i = query_first + threadIdx.x;
            lse_tile[threadIdx.x] = i < p.seq_q ? lse[row_base + i] : -INFINITY;
            delta_tile[threadIdx.x] = i < p.seq_q ? delta[row_base + i] : 0.0f;
        }
        __syncthreads();

        float scores[kPerThread][kPerThread], d_probs[kPerThread][kPerThread];
        tile_dot(k_tile, q_tile, ld, head_dim, t, scores);
        tile_dot(v_tile, do_tile, ld, head_dim, t, d_probs);
        float d_scores[kPerThread][kPerThread];
#pragma unroll
        for (int a = 0; a < kPerThread; ++a) {
            const int j = key_first + t.ty + kLanesPerRow * a;
#pragma unroll
            for (int b = 0; b < kPerThread; ++b) {
                const int query_local = t.tx + kLanesPerRow * b;
                const float score = masked_score(scores[a][b], query_first + query_local, j, bh, p);
                const float prob = probability(score, lse_tile[query_local]);
                d_scores[a][b] = prob * (d_probs[a][b] - delta_tile[query_local]);
                score_tile[(t.ty + kLanesPerRow * a) * kScoreStride + query_local] = prob;
            }
        }
        __syncthreads();
        tile_accumulate(score_tile, do_tile, ld, head_dim, t, dv_acc);
        __syncthreads();
#pragma unroll
        for (int a = 0; a < kPerThread; ++a)
#pragma unroll
            for (int b = 0; b < kPerThread; ++b)
                score_tile[(t.ty + kLanesPerRow * a) * kScoreStride + t.tx + kLanesPerRow * b] = d_scores[a][b];
        __syncthreads();
        tile_accumulate(score_tile, q_tile, ld, head_dim, t, dk_acc);
    }

#pragma unroll
    for (int a = 0; a < kPerThread; ++a) {
        const int j = key_first + t.ty + kLanesPerRow * a;
        if (j >= p.seq_k) continue;
#pragma unroll
        for (int c = 0; c < COLS; ++c) {
            const int col = t.tx + kLanesPerRow * c;
            if (col < head_dim) {
                const long long offset = k_base + static_cast<long long>(j) * head_dim + col;
                dk[offset] = from_float<T>(dk_acc[a][c] * p.scale);
                dv[offset] = from_float<T>(dv_acc[a][c]);
            }
        }
    }
}

// grid (ceil(L / 64), BH), 256 threads; dynamic shared memory (4 * 64 * (D + 1) + 64 * 65) floats.
template <typename T, int HEAD_DIM_MAX>
__device__ void backward_dq(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                            const T* __restrict__ d_o, const float* __restrict__ lse, const float* __restrict__ delta,
                            T* __restrict__ dq, const Problem& p) {
    constexpr int COLS = HEAD_DIM_MAX / kLanesPerRow;
    const ThreadCoords t = thread_coords();
    const int bh = blockIdx.y;
    const int query_first = blockIdx.x * kTile;
    const int head_dim = p.head_dim;
    const int ld = head_dim + 1;
    const long long q_base = static_cast<long long>(bh) * p.seq_q * head_dim;
    const long long k_base = static_cast<long long>(bh) * p.seq_k * head_dim;

    AVILA_DYNAMIC_SHARED_BYTES(shared_bytes);
    float* q_tile = reinterpret_cast<float*>(shared_bytes);
    float* do_tile = q_tile + kTile * ld;
    float* k_tile = do_tile + kTile * ld;
    float* v_tile = k_tile + kTile * ld;
    float* ds_tile = v_tile + kTile * ld;  // [query][key]

    load_tile(q_tile, ld, q + q_base, query_first, p.seq_q, head_dim);
    load_tile(do_tile, ld, d_o + q_base, query_first, p.seq_q, head_dim);

    float row_lse[kPerThread], row_delta[kPerThread], dq_acc[kPerThread][COLS];
#pragma unroll
    for (int a = 0; a < kPerThread; ++a) {
        const int i = query_first + t.ty + kLanesPerRow * a;
        row_lse[a] = i < p.seq_q ? lse[static_cast<long long>(bh) * p.seq_q + i] : -INFINITY;
        row_delta[a] = i < p.seq_q ? delta[static_cast<long long>(bh) * p.seq_q + i] : 0.0f;
#pragma unroll
        for (int c = 0; c < COLS; ++c) dq_acc[a][c] = 0.0f;
    }

    const int key_end = key_tiles_end(p, query_first);
    for (int key_first = 0; key_first < key_end; key_first += kTile) {
        __syncthreads();  // everyone is done with the previous k, v and ds tiles
        load_tile(k_tile, ld, k + k_base, key_first, p.seq_k, head_dim);
        load_tile(v_tile, ld, v + k_base, key_first, p.seq_k, head_dim);
        __syncthreads();

        float scores[kPerThread][kPerThread], d_probs[kPerThread][kPerThread];
        tile_dot(q_tile, k_tile, ld, head_dim, t, scores);
        tile_dot(do_tile, v_tile, ld, head_dim, t, d_probs);
#pragma unroll
        for (int a = 0; a < kPerThread; ++a) {
            const int i = query_first + t.ty + kLanesPerRow * a;
#pragma unroll
            for (int b = 0; b < kPerThread; ++b) {
                const int key_local = t.tx + kLanesPerRow * b;
                const float prob = probability(masked_score(scores[a][b], i, key_first + key_local, bh, p), row_lse[a]);
                ds_tile[(t.ty + kLanesPerRow * a) * kScoreStride + key_local] = prob * (d_probs[a][b] - row_delta[a]);
            }
        }
        __syncthreads();
        tile_accumulate(ds_tile, k_tile, ld, head_dim, t, dq_acc);
    }

#pragma unroll
    for (int a = 0; a < kPerThread; ++a) {
        const int i = query_first + t.ty + kLanesPerRow * a;
        if (i >= p.seq_q) continue;
#pragma unroll
        for (int c = 0; c < COLS; ++c) {
            const int col = t.tx + kLanesPerRow * c;
            if (col < head_dim) dq[q_base + static_cast<long long>(i) * head_dim + col] = from_float<T>(dq_acc[a][c] * p.scale);
        }
    }
}

}  // namespace attention_detail

#define AVILA_ATTENTION_MASK_PARAMS \
    const float *__restrict__ mask, long long mask_stride_bh, long long mask_stride_l, long long mask_stride_s, int has_mask
#define AVILA_ATTENTION_SHAPE_PARAMS int seq_q, int seq_k, int head_dim, float scale, int is_causal
#define AVILA_ATTENTION_PROBLEM                                                                              \
    attention_detail::Problem {                                                                              \
        seq_q, seq_k, head_dim, scale, is_causal, mask, mask_stride_bh, mask_stride_l, mask_stride_s, has_mask \
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
AVILA_DEFINE_ATTENTION_PREPROCESS(__half, f16)
AVILA_DEFINE_ATTENTION_KERNELS(float, f32, 32)
AVILA_DEFINE_ATTENTION_KERNELS(float, f32, 64)
AVILA_DEFINE_ATTENTION_KERNELS(float, f32, 128)
AVILA_DEFINE_ATTENTION_KERNELS(__half, f16, 32)
AVILA_DEFINE_ATTENTION_KERNELS(__half, f16, 64)
AVILA_DEFINE_ATTENTION_KERNELS(__half, f16, 128)
