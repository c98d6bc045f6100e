// 4-D convolution on tensor cores: forward, grad-input and grad-weight as implicit GEMMs
// (mma.sync, float32 accumulation) for float16, bfloat16 and TF32 (float32 storage, each operand
// rounded to TF32 with cvt.rna). Same definition and layout as conv4d.cu:
//   x (N, C_in, T, X, Y, Z), w (C_out, C_in, kT, kX, kY, kZ) -> y (N, C_out, oT, oX, oY, oZ).
//
// Each pass is D (M x N) = A (M x K) . B (K x N) where A and B are never materialised (no
// im2col in global memory): a k-tile of 32 reduction indices is gathered straight from x, w or
// dy into shared memory with cp.async, two stages in flight (double buffering), and every
// warp multiplies its fragments from shared memory with mma.sync:
//
//   pass         M (rows)                N (columns)              K (reduction)
//   forward      N*oT*oX*oY*oZ outputs   C_out                    C_in*kT*kX*kY*kZ     A: x gathered, B: w
//   grad_input   N*T*X*Y*Z inputs        C_in                     C_out*kT*kX*kY*kZ    A: dy gathered, B: w
//   grad_weight  C_out                   C_in*kT*kX*kY*kZ         N*oT*oX*oY*oZ        A: dy, B: x gathered
//
// grad_input is the transposed convolution as a gather (dy[(i + p - k*d) / s] where that is an
// exact multiple inside dy, zero otherwise), so each dx element is written once (no atomics).
// grad_weight splits its long reduction over grid.z and sums the partial tiles with float32
// atomicAdd into a zero-filled float32 buffer (rounded to the storage type by a second launch
// for float16/bfloat16), so its last bits vary from run to run, as cuDNN's do.
//
// Block: 4 warps (2 x 2) over a BM x BN tile; warp tile (BM/2) x (BN/2) = MF x NF fragments of
// 16 x 8. Shared tiles are stored [row][k] with the k-tile padded (16-bit: 32 + 8 elements = 20
// words, TF32: 32 + 4 words per row), which makes the fragment loads conflict-free: the 8 rows
// x 4 column-words a warp reads fall into 32 different banks.
//
// Copies: TF32 moves each 4-byte element with its own cp.async (zero-filled where the tap falls
// into padding). 16-bit types move pairs of reduction indices: one 4-byte cp.async when both are
// inside the tensor and adjacent and aligned in memory (or both outside: zero fill), else the pair
// is loaded and stored synchronously (still before the stage's barrier, so still correct).
#include "avila_mma.cuh"  // mma.sync, cp.async, TF32 and bfloat16 helpers (host-emulated off the GPU)
#include "conv4d_geometry.cuh"
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define AVILA_DYNAMIC_SHARED_BYTES(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace conv4d_mma {

using conv4d_detail::Geometry;
using conv4d_detail::volume_offset;

constexpr int kThreads = 128;  // 4 warps
constexpr int kTileK = 32;     // reduction indices per pipeline stage

enum Pass { kForward = 0, kGradInput = 1, kGradWeight = 2 };

// Storage type -> tensor-core instruction, k step, row padding and the storage rounding.
template <typename T>
struct Operand;

template <>
struct Operand<avila_half> {
    static constexpr int kMmaK = 16;
    static constexpr int kPad = 8;
    __device__ __forceinline__ static void mma(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2],
                                               const float (&c)[4]) {
        avila_mma_f16(d, a, b, c);
    }
    __device__ __forceinline__ static avila_half narrow(float value) { return avila_float_to_half(value); }
    __device__ __forceinline__ static avila_half zero() { return avila_float_to_half(0.0f); }
};

template <>
struct Operand<avila_bf16> {
    static constexpr int kMmaK = 16;
    static constexpr int kPad = 8;
    __device__ __forceinline__ static void mma(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2],
                                               const float (&c)[4]) {
        avila_mma_bf16(d, a, b, c);
    }
    __device__ __forceinline__ static avila_bf16 narrow(float value) { return avila_float_to_bf16(value); }
    __device__ __forceinline__ static avila_bf16 zero() { return avila_bf16{0}; }
};

template <>
struct Operand<float> {  // TF32
    static constexpr int kMmaK = 8;
    static constexpr int kPad = 4;
    __device__ __forceinline__ static void mma(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2],
                                               const float (&c)[4]) {
        avila_mma_tf32(d, a, b, c);
    }
    __device__ __forceinline__ static float narrow(float value) { return value; }
    __device__ __forceinline__ static float zero() { return 0.0f; }
};

// Sizes of the three GEMMs.
struct GemmShape {
    long long m, n, k;
};

__device__ __forceinline__ long long output_positions(const Geometry& g) {
    return static_cast<long long>(g.out_t) * g.out_x * g.out_y * g.out_z;
}
__device__ __forceinline__ long long input_positions(const Geometry& g) {
    return static_cast<long long>(g.in_t) * g.in_x * g.in_y * g.in_z;
}
__device__ __forceinline__ int kernel_taps(const Geometry& g) { return g.k_t * g.k_x * g.k_y * g.k_z; }

template <int kPass>
__device__ __forceinline__ GemmShape gemm_shape(const Geometry& g) {
    const long long taps = kernel_taps(g);
    if (kPass == kForward) return GemmShape{g.batch * output_positions(g), g.out_channels, g.in_channels * taps};
    if (kPass == kGradInput) return GemmShape{g.batch * input_positions(g), g.in_channels, g.out_channels * taps};
    return GemmShape{g.out_channels, g.in_channels * taps, g.batch * output_positions(g)};
}

struct Tap {
    int t, x, y, z;
};
__device__ __forceinline__ Tap split_tap(const Geometry& g, int tap) {
    Tap result;
    result.z = tap % g.k_z;
    tap /= g.k_z;
    result.y = tap % g.k_y;
    tap /= g.k_y;
    result.x = tap % g.k_x;
    result.t = tap / g.k_x;
    return result;
}

// x offset of output position `position` of sample n, channel ci, through tap `tap`; -1 in padding.
__device__ __forceinline__ long long gather_input(const Geometry& g, long long n, int ci, long long position, Tap tap) {
    const int oz = static_cast<int>(position % g.out_z);
    position /= g.out_z;
    const int oy = static_cast<int>(position % g.out_y);
    position /= g.out_y;
    const int ox = static_cast<int>(position % g.out_x);
    const int ot = static_cast<int>(position / g.out_x);
    const int it = ot * g.stride_t - g.pad_t + tap.t * g.dil_t;
    const int ix = ox * g.stride_x - g.pad_x + tap.x * g.dil_x;
    const int iy = oy * g.stride_y - g.pad_y + tap.y * g.dil_y;
    const int iz = oz * g.stride_z - g.pad_z + tap.z * g.dil_z;
    if (it < 0 || it >= g.in_t || ix < 0 || ix >= g.in_x || iy < 0 || iy >= g.in_y || iz < 0 || iz >= g.in_z) return -1;
    return volume_offset(static_cast<int>(n), ci, g.in_channels, it, ix, iy, iz, g.in_t, g.in_x, g.in_y, g.in_z);
}

// The output index reached from input index i by tap k along one axis; -1 if none (the transposed
// convolution's gather: (i + p - k*d) must be an exact multiple of s inside the output).
__device__ __forceinline__ int transposed_index(int i, int pad, int k, int dil, int stride, int out_size) {
    const int numerator = i + pad - k * dil;
    if (numerator < 0 || numerator % stride != 0) return -1;
    const int o = numerator / stride;
    return o < out_size ? o : -1;
}

// dy offset feeding dx at input position `position` of sample n through output channel co, tap `tap`.
__device__ __forceinline__ long long gather_grad_output(const Geometry& g, long long n, int co, long long position,
                                                        Tap tap) {
    const int iz = static_cast<int>(position % g.in_z);
    position /= g.in_z;
    const int iy = static_cast<int>(position % g.in_y);
    position /= g.in_y;
    const int ix = static_cast<int>(position % g.in_x);
    const int it = static_cast<int>(position / g.in_x);
    const int ot = transposed_index(it, g.pad_t, tap.t, g.dil_t, g.stride_t, g.out_t);
    const int ox = transposed_index(ix, g.pad_x, tap.x, g.dil_x, g.stride_x, g.out_x);
    const int oy = transposed_index(iy, g.pad_y, tap.y, g.dil_y, g.stride_y, g.out_y);
    const int oz = transposed_index(iz, g.pad_z, tap.z, g.dil_z, g.stride_z, g.out_z);
    if (ot < 0 || ox < 0 || oy < 0 || oz < 0) return -1;
    return volume_offset(static_cast<int>(n), co, g.out_channels, ot, ox, oy, oz, g.out_t, g.out_x, g.out_y, g.out_z);
}

// Offset of A[m][k] in `a` (x, dy or dy), or -1 where A is zero (padding, tile edge).
template <int kPass>
__device__ __forceinline__ long long a_offset(const Geometry& g, const GemmShape& shape, long long m, long long k) {
    if (m >= shape.m || k >= shape.k) return -1;
    const int taps = kernel_taps(g);
    if (kPass == kForward) {
        const long long positions = output_positions(g);
        return gather_input(g, m / positions, static_cast<int>(k / taps), m % positions,
                            split_tap(g, static_cast<int>(k % taps)));
    }
    if (kPass == kGradInput) {
        const long long positions = input_positions(g);
        return gather_grad_output(g, m / positions, static_cast<int>(k / taps), m % positions,
                                  split_tap(g, static_cast<int>(k % taps)));
    }
    const long long positions = output_positions(g);  // grad_weight: A = dy (C_out x positions)
    return ((k / positions) * g.out_channels + m) * positions + k % positions;
}

// Offset of B[k][n] (stored per column n, k contiguous in shared memory) in `b`, or -1.
template <int kPass>
__device__ __forceinline__ long long b_offset(const Geometry& g, const GemmShape& shape, long long n, long long k) {
    if (n >= shape.n || k >= shape.k) return -1;
    const int taps = kernel_taps(g);
    if (kPass == kForward) return n * shape.k + k;  // w[co][ci, tap]: a row of w is contiguous in k
    if (kPass == kGradInput) {                      // w[co, ci, tap] with k = (co, tap), n = ci
        return ((k / taps) * g.in_channels + n) * taps + k % taps;
    }
    const long long positions = output_positions(g);  // grad_weight: B = x gathered, n = (ci, tap)
    return gather_input(g, k / positions, static_cast<int>(n / taps), k % positions,
                        split_tap(g, static_cast<int>(n % taps)));
}

// Stages k-tile `k0` of A (BM rows) and B (BN columns) into shared memory.
template <int kPass, typename T, int BM, int BN>
__device__ __forceinline__ void load_stage(T* a_tile, T* b_tile, const T* __restrict__ a, const T* __restrict__ b,
                                           const Geometry& g, const GemmShape& shape, long long m0, long long n0,
                                           long long k0) {
    constexpr int kStride = kTileK + Operand<T>::kPad;
    constexpr int kVector = sizeof(T) == 4 ? 1 : 2;  // elements per 4-byte cp.async
    constexpr int kVectorsPerRow = kTileK / kVector;
    for (int index = threadIdx.x; index < (BM + BN) * kVectorsPerRow; index += kThreads) {
        const int row = index / kVectorsPerRow;
        const int kk = (index % kVectorsPerRow) * kVector;
        const bool is_a = row < BM;
        const T* source = is_a ? a : b;
        T* destination = is_a ? a_tile + row * kStride + kk : b_tile + (row - BM) * kStride + kk;
        const long long first = is_a ? a_offset<kPass>(g, shape, m0 + row, k0 + kk)
                                     : b_offset<kPass>(g, shape, n0 + row - BM, k0 + kk);
        if (kVector == 1) {
            // zero fill where A/B is zero; the source pointer stays a valid address either way
            avila_cp_async<4>(destination, source + (first < 0 ? 0 : first), first >= 0);
            continue;
        }
        const long long second = is_a ? a_offset<kPass>(g, shape, m0 + row, k0 + kk + 1)
                                      : b_offset<kPass>(g, shape, n0 + row - BM, k0 + kk + 1);
        const bool adjacent = first >= 0 && second == first + 1 &&
                              (reinterpret_cast<unsigned long long>(source + first) & 3ULL) == 0ULL;
        if (adjacent || (first < 0 && second < 0)) {
            avila_cp_async<4>(destination, source + (first < 0 ? 0 : first), adjacent);
        } else {
            destination[0] = first >= 0 ? source[first] : Operand<T>::zero();
            destination[1] = second >= 0 ? source[second] : Operand<T>::zero();
        }
    }
}

// A fragment register: two 16-bit values (lower k in the low half) or one TF32 value.
template <typename T>
__device__ __forceinline__ unsigned int fragment_register(const T* tile, int row, int k, int stride) {
    return avila_load_u32(tile + row * stride + k);
}
template <>
__device__ __forceinline__ unsigned int fragment_register<float>(const float* tile, int row, int k, int stride) {
    return avila_float_to_tf32(tile[row * stride + k]);
}

// acc += A_tile . B_tile for this warp's (BM/2) x (BN/2) part, with the PTX fragment layouts
// (group = lane / 4, thread_in_group = lane % 4):
//   16-bit m16n8k16: a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..); b0 (k 2t.., n g), b1 (k 2t+8.., n g)
//   TF32 m16n8k8:    a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4); b0 (k t, n g), b1 (k t+4, n g)
template <typename T, int MF, int NF>
__device__ __forceinline__ void multiply_stage(float (&acc)[MF][NF][4], const T* a_tile, const T* b_tile, int warp_m,
                                               int warp_n, int lane) {
    constexpr int kStride = kTileK + Operand<T>::kPad;
    constexpr int kMmaK = Operand<T>::kMmaK;
    constexpr int kHalfK = kMmaK / 2;  // k offset of the second register pair: 8 (16-bit) or 4 (TF32)
    constexpr int kPerRegister = sizeof(T) == 4 ? 1 : 2;
    const int group = lane >> 2;
    const int in_group = (lane & 3) * kPerRegister;
#pragma unroll
    for (int ks = 0; ks < kTileK; ks += kMmaK) {
        unsigned int a_frag[MF][4];
        unsigned int b_frag[NF][2];
#pragma unroll
        for (int mi = 0; mi < MF; ++mi) {
            const int row = warp_m + mi * 16 + group;
            a_frag[mi][0] = fragment_register(a_tile, row, ks + in_group, kStride);
            a_frag[mi][1] = fragment_register(a_tile, row + 8, ks + in_group, kStride);
            a_frag[mi][2] = fragment_register(a_tile, row, ks + in_group + kHalfK, kStride);
            a_frag[mi][3] = fragment_register(a_tile, row + 8, ks + in_group + kHalfK, kStride);
        }
#pragma unroll
        for (int ni = 0; ni < NF; ++ni) {
            const int column = warp_n + ni * 8 + group;
            b_frag[ni][0] = fragment_register(b_tile, column, ks + in_group, kStride);
            b_frag[ni][1] = fragment_register(b_tile, column, ks + in_group + kHalfK, kStride);
        }
#pragma unroll
        for (int mi = 0; mi < MF; ++mi) {
#pragma unroll
            for (int ni = 0; ni < NF; ++ni) Operand<T>::mma(acc[mi][ni], a_frag[mi], b_frag[ni], acc[mi][ni]);
        }
    }
}

// One BM x BN output tile of pass kPass; grid (ceil(M/BM), ceil(N/BN), k splits).
// out: y (forward), dx (grad_input), both of type T; or the float32 dw sum (grad_weight).
template <int kPass, typename T, int BM, int BN, typename Out>
__device__ void implicit_gemm(const T* __restrict__ a, const T* __restrict__ b, Out* __restrict__ out,
                              const Geometry& g, int k_tiles_per_split) {
    constexpr int MF = BM / 32;  // 16-row fragments per warp (2 warps along M)
    constexpr int NF = BN / 16;  // 8-column fragments per warp (2 warps along N)
    constexpr int kStride = kTileK + Operand<T>::kPad;
    constexpr int kStageElements = (BM + BN) * kStride;
    static_assert(MF >= 1 && NF >= 1, "block tile must be at least 32 x 16");

    const GemmShape shape = gemm_shape<kPass>(g);
    const long long m0 = static_cast<long long>(blockIdx.x) * BM;
    const long long n0 = static_cast<long long>(blockIdx.y) * BN;
    const long long k_tiles = (shape.k + kTileK - 1) / kTileK;
    const long long tile_begin = static_cast<long long>(blockIdx.z) * k_tiles_per_split;
    const long long tile_end = tile_begin + k_tiles_per_split < k_tiles ? tile_begin + k_tiles_per_split : k_tiles;

    AVILA_DYNAMIC_SHARED_BYTES(shared_bytes);
    T* stages = reinterpret_cast<T*>(shared_bytes);  // [stage][A rows, then B columns][k]

    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int warp_m = (warp % 2) * (BM / 2);
    const int warp_n = (warp / 2) * (BN / 2);

    float acc[MF][NF][4];
#pragma unroll
    for (int mi = 0; mi < MF; ++mi)
#pragma unroll
        for (int ni = 0; ni < NF; ++ni)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[mi][ni][i] = 0.0f;

    if (tile_begin < tile_end) {
        load_stage<kPass, T, BM, BN>(stages, stages + BM * kStride, a, b, g, shape, m0, n0, tile_begin * kTileK);
    }
    avila_cp_async_commit();
    for (long long tile = tile_begin; tile < tile_end; ++tile) {
        const int stage = static_cast<int>((tile - tile_begin) & 1);
        T* current = stages + stage * kStageElements;
        if (tile + 1 < tile_end) {  // prefetch the next k-tile into the other stage
            T* next = stages + (stage ^ 1) * kStageElements;
            load_stage<kPass, T, BM, BN>(next, next + BM * kStride, a, b, g, shape, m0, n0, (tile + 1) * kTileK);
        }
        avila_cp_async_commit();      // (an empty group on the last tile keeps the count uniform)
        avila_cp_async_wait<1>();     // everything but the prefetch has landed: this tile's copies
        __syncthreads();              // ... and every other thread's
        multiply_stage<T, MF, NF>(acc, current, current + BM * kStride, warp_m, warp_n, lane);
        __syncthreads();              // all warps are done with `current` before it is refilled
    }

    // C/D fragment: c0 (g, 2t), c1 (g, 2t+1), c2 (g+8, 2t), c3 (g+8, 2t+1)
    const int group = lane >> 2;
    const int in_group = lane & 3;
#pragma unroll
    for (int mi = 0; mi < MF; ++mi) {
#pragma unroll
        for (int ni = 0; ni < NF; ++ni) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const long long m = m0 + warp_m + mi * 16 + group + (i >= 2 ? 8 : 0);
                const long long n = n0 + warp_n + ni * 8 + 2 * in_group + (i & 1);
                if (m >= shape.m || n >= shape.n) continue;
                if constexpr (kPass == kGradWeight) {
                    atomicAdd(&out[m * shape.n + n], acc[mi][ni][i]);
                } else {
                    // row m = (sample, position), column n = channel: out[sample][channel][position]
                    const long long positions = kPass == kGradInput ? input_positions(g) : output_positions(g);
                    out[((m / positions) * shape.n + n) * positions + m % positions] = Operand<T>::narrow(acc[mi][ni][i]);
                }
            }
        }
    }
}

// dst[i] = T(src[i]): the one rounding of a 16-bit grad_weight summed in float32.
template <typename T>
__device__ void round_from_float(const float* __restrict__ src, T* __restrict__ dst, long long count) {
    const long long step = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += step) {
        dst[i] = Operand<T>::narrow(src[i]);
    }
}

}  // namespace conv4d_mma

// Entry points: conv4d_mma_<pass>_<type>_<BM>x<BN>, one per autotuning configuration.
#define AVILA_DEFINE_CONV4D_MMA_KERNELS(T, suffix, BM, BN)                                                         \
    extern "C" __global__ void __launch_bounds__(conv4d_mma::kThreads)                                            \
        conv4d_mma_forward_##suffix##_##BM##x##BN(const T* __restrict__ x, const T* __restrict__ w,              \
                                                  T* __restrict__ y, AVILA_CONV4D_GEOMETRY_PARAMS) {             \
        conv4d_mma::implicit_gemm<conv4d_mma::kForward, T, BM, BN>(x, w, y, AVILA_CONV4D_GEOMETRY, 1 << 30);     \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(conv4d_mma::kThreads)                                            \
        conv4d_mma_grad_input_##suffix##_##BM##x##BN(const T* __restrict__ dy, const T* __restrict__ w,          \
                                                     T* __restrict__ dx, AVILA_CONV4D_GEOMETRY_PARAMS) {         \
        conv4d_mma::implicit_gemm<conv4d_mma::kGradInput, T, BM, BN>(dy, w, dx, AVILA_CONV4D_GEOMETRY, 1 << 30); \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(conv4d_mma::kThreads)                                            \
        conv4d_mma_grad_weight_##suffix##_##BM##x##BN(const T* __restrict__ dy, const T* __restrict__ x,         \
                                                      float* __restrict__ dw, AVILA_CONV4D_GEOMETRY_PARAMS,      \
                                                      int k_tiles_per_split) {                                    \
        conv4d_mma::implicit_gemm<conv4d_mma::kGradWeight, T, BM, BN>(dy, x, dw, AVILA_CONV4D_GEOMETRY,          \
                                                                      k_tiles_per_split);                        \
    }

#define AVILA_DEFINE_CONV4D_MMA_CONFIGS(T, suffix)     \
    AVILA_DEFINE_CONV4D_MMA_KERNELS(T, suffix, 32, 32)  \
    AVILA_DEFINE_CONV4D_MMA_KERNELS(T, suffix, 64, 32)  \
    AVILA_DEFINE_CONV4D_MMA_KERNELS(T, suffix, 64, 64)  \
    AVILA_DEFINE_CONV4D_MMA_KERNELS(T, suffix, 128, 64)

AVILA_DEFINE_CONV4D_MMA_CONFIGS(avila_half, f16)
AVILA_DEFINE_CONV4D_MMA_CONFIGS(avila_bf16, bf16)
AVILA_DEFINE_CONV4D_MMA_CONFIGS(float, tf32)

extern "C" __global__ void conv4d_mma_round_f32_to_f16(const float* __restrict__ src, avila_half* __restrict__ dst,
                                                       long long count) {
    conv4d_mma::round_from_float(src, dst, count);
}
extern "C" __global__ void conv4d_mma_round_f32_to_bf16(const float* __restrict__ src, avila_bf16* __restrict__ dst,
                                                        long long count) {
    conv4d_mma::round_from_float(src, dst, count);
}
