// 4-D convolution (cross-correlation, as torch.nn.functional.conv3d does in 3-D) for
//   x (N, C_in, T, X, Y, Z), w (C_out, C_in, kT, kX, kY, kZ) -> y (N, C_out, oT, oX, oY, oZ)
// with stride, zero padding (bounds-checked taps contribute 0) and dilation; groups=1 only,
// grouped convolutions take the generic path in avila_ml/ops/conv.py.
//
// Tiling (all three kernels, no im2col buffer in global memory):
//   * a "stage" is one (reduction channel, kt) pair; per stage the block copies into shared memory
//     the 3-D input patch [kx][rows][cols] its outputs need and the weights of a tile of
//     CONV4D_CHANNEL_TILE channels for all (kx, ky, kz) taps, stored [tap][channel];
//   * threads are laid out (blockDim.x along z, blockDim.y along y), so global loads and stores
//     are coalesced over the innermost z axis and patch reads are bank-conflict free;
//   * each thread keeps CONV4D_CHANNEL_TILE accumulators in registers: one patch value is reused
//     for a whole channel tile, and every thread of the block reads the same weight (broadcast).
// Stages whose time slice falls into the padding are skipped as a whole (the branch is uniform
// over the block, so the __syncthreads inside stay convergent).
//
// Precision: every kernel is a template on the storage type T and sums in Acc = Accumulate<T>:
// float32 -> float32, float64 -> float64, float16 -> float32. For float16 the values that are
// reused from shared memory across a channel tile (weights, dy in grad_weight) are widened to
// float once when staged; patch values are widened once per tap; each output is rounded to
// float16 once. grad_weight of float16 sums (atomically) into a float32 buffer, rounded to
// float16 once at the end by conv4d_round_f32_to_f16.
#include "avila_half.cuh"  // avila_half and its float conversions (no <cuda_fp16.h> under NVRTC)
#include "conv4d_geometry.cuh"  // Geometry, index helpers and the kernels' geometry parameters
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define AVILA_DYNAMIC_SHARED_BYTES(name) extern __shared__ __align__(16) unsigned char name[]
#endif

#ifndef AVILA_CONV4D_CHANNEL_TILE
#define AVILA_CONV4D_CHANNEL_TILE 16
#endif

namespace conv4d_detail {

constexpr int kChannelTile = AVILA_CONV4D_CHANNEL_TILE;

template <typename T>
struct Accumulate {
    using type = T;
};
template <>
struct Accumulate<avila_half> {
    using type = float;
};

__device__ __forceinline__ float widen(float value) { return value; }
__device__ __forceinline__ double widen(double value) { return value; }
__device__ __forceinline__ float widen(avila_half value) { return avila_half_to_float(value); }

// The storage value of an accumulator (round to nearest even for float16).
template <typename T>
__device__ __forceinline__ T narrow(typename Accumulate<T>::type value);
template <>
__device__ __forceinline__ float narrow<float>(float value) {
    return value;
}
template <>
__device__ __forceinline__ double narrow<double>(double value) {
    return value;
}
template <>
__device__ __forceinline__ avila_half narrow<avila_half>(float value) {
    return avila_float_to_half(value);
}

template <typename T>
__device__ __forceinline__ T zero() {
    return narrow<T>(0);
}

// Copies the input rows a (tile_y x tile_z) block of outputs needs for one (channel, time) slice:
// planes [kx_first, kx_first + planes), rows starting at in_y0, cols starting at in_z0.
template <typename T>
__device__ void load_input_patch(T* patch, const T* __restrict__ x, const Geometry& g, int n, int channel, int in_t,
                                 int in_x_base, int kx_first, int planes, int in_y0, int rows, int in_z0, int cols) {
    const int thread = threadIdx.y * blockDim.x + threadIdx.x;
    const int threads = blockDim.x * blockDim.y;
    const int plane_size = rows * cols;
    for (int index = thread; index < planes * plane_size; index += threads) {
        const int plane = index / plane_size;
        const int row = (index - plane * plane_size) / cols;
        const int col = index - plane * plane_size - row * cols;
        const int in_x = in_x_base + (kx_first + plane) * g.dil_x;
        const int in_y = in_y0 + row;
        const int in_z = in_z0 + col;
        T value = zero<T>();
        if (in_x >= 0 && in_x < g.in_x && in_y >= 0 && in_y < g.in_y && in_z >= 0 && in_z < g.in_z) {
            value = x[volume_offset(n, channel, g.in_channels, in_t, in_x, in_y, in_z, g.in_t, g.in_x, g.in_y,
                                    g.in_z)];
        }
        patch[index] = value;
    }
}

// y[n, co, ot, ox, oy, oz] = sum_{ci, kt, kx, ky, kz} w[co, ci, kt, kx, ky, kz] *
//                            x[n, ci, ot*st - pt + kt*dt, ox*sx - px + kx*dx, oy*sy - py + ky*dy, oz*sz - pz + kz*dz]
// grid.x: (n, ot, ox, y tile, z tile) flattened; grid.y: tiles of output channels.
template <typename T>
__device__ void forward(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y, const Geometry& g) {
    using Acc = typename Accumulate<T>::type;
    const int tile_z = blockDim.x;
    const int tile_y = blockDim.y;
    const int tiles_z = ceil_div(g.out_z, tile_z);
    const int tiles_y = ceil_div(g.out_y, tile_y);
    int block = blockIdx.x;
    const int z_tile = block % tiles_z;
    block /= tiles_z;
    const int y_tile = block % tiles_y;
    block /= tiles_y;
    const int out_x = block % g.out_x;
    block /= g.out_x;
    const int out_t = block % g.out_t;
    const int n = block / g.out_t;
    const int co_first = blockIdx.y * kChannelTile;

    const int out_y = y_tile * tile_y + threadIdx.y;
    const int out_z = z_tile * tile_z + threadIdx.x;
    const int in_y0 = y_tile * tile_y * g.stride_y - g.pad_y;
    const int in_z0 = z_tile * tile_z * g.stride_z - g.pad_z;
    const int in_t_base = out_t * g.stride_t - g.pad_t;
    const int in_x_base = out_x * g.stride_x - g.pad_x;
    const int rows = (tile_y - 1) * g.stride_y + (g.k_y - 1) * g.dil_y + 1;
    const int cols = (tile_z - 1) * g.stride_z + (g.k_z - 1) * g.dil_z + 1;
    const int taps = g.taps_per_time_slice();

    AVILA_DYNAMIC_SHARED_BYTES(shared_bytes);
    Acc* weights = reinterpret_cast<Acc*>(shared_bytes);               // [tap][channel], first: 16-byte aligned
    T* patch = reinterpret_cast<T*>(weights + taps * kChannelTile);  // [kx][row][col]

    Acc acc[kChannelTile];
#pragma unroll
    for (int c = 0; c < kChannelTile; ++c) acc[c] = Acc(0);

    const int thread = threadIdx.y * blockDim.x + threadIdx.x;
    const int threads = blockDim.x * blockDim.y;
    const int row_base = threadIdx.y * g.stride_y;
    const int col_base = threadIdx.x * g.stride_z;

    for (int ci = 0; ci < g.in_channels; ++ci) {
        for (int kt = 0; kt < g.k_t; ++kt) {
            const int in_t = in_t_base + kt * g.dil_t;
            if (in_t < 0 || in_t >= g.in_t) continue;
            __syncthreads();  // the previous stage's readers are done with shared memory
            load_input_patch(patch, x, g, n, ci, in_t, in_x_base, 0, g.k_x, in_y0, rows, in_z0, cols);
            for (int index = thread; index < kChannelTile * taps; index += threads) {
                const int channel = index / taps;
                const int tap = index - channel * taps;
                const int co = co_first + channel;
                weights[tap * kChannelTile + channel] =
                    co < g.out_channels
                        ? widen(w[((static_cast<long long>(co) * g.in_channels + ci) * g.k_t + kt) * taps + tap])
                        : Acc(0);
            }
            __syncthreads();
            for (int kx = 0; kx < g.k_x; ++kx) {
                const int in_x = in_x_base + kx * g.dil_x;
                if (in_x < 0 || in_x >= g.in_x) continue;
                for (int ky = 0; ky < g.k_y; ++ky) {
                    const T* patch_row = patch + (kx * rows + row_base + ky * g.dil_y) * cols + col_base;
                    const Acc* tap_weights = weights + ((kx * g.k_y + ky) * g.k_z) * kChannelTile;
                    for (int kz = 0; kz < g.k_z; ++kz) {
                        const Acc value = widen(patch_row[kz * g.dil_z]);
#pragma unroll
                        for (int c = 0; c < kChannelTile; ++c) acc[c] += value * tap_weights[kz * kChannelTile + c];
                    }
                }
            }
        }
    }

    if (out_y < g.out_y && out_z < g.out_z) {
#pragma unroll
        for (int c = 0; c < kChannelTile; ++c) {
            const int co = co_first + c;
            if (co < g.out_channels) {
                y[volume_offset(n, co, g.out_channels, out_t, out_x, out_y, out_z, g.out_t, g.out_x, g.out_y,
                                g.out_z)] = narrow<T>(acc[c]);
            }
        }
    }
}

// The output index o = (i + p - k*d) / s reached by tap k of input index i, walked over k = 0, 1, ...
// without a division per tap: quotient and remainder of (i + p - k*d) by s are updated by
// subtracting d = (d / s) * s + d % s. The tap contributes iff the remainder is 0 (then the
// quotient is the exact output index, possibly out of range). Two divisions per walk, not two per
// tap: the inner loop of grad_input had an integer modulo and divide per 16 FMAs.
struct TapWalk {
    int quotient, remainder;  // floor((i + p - k*d) / s) and the remainder in [0, s)
    int step_quotient, step_remainder, stride;

    __device__ __forceinline__ static TapWalk start(int numerator, int dilation, int stride) {
        const int q = floor_div(numerator, stride);
        return TapWalk{q, numerator - q * stride, dilation / stride, dilation % stride, stride};
    }
    __device__ __forceinline__ bool hits() const { return remainder == 0; }
    __device__ __forceinline__ void next() {
        quotient -= step_quotient;
        remainder -= step_remainder;
        if (remainder < 0) {
            remainder += stride;
            quotient -= 1;
        }
    }
};

// dx[n, ci, it, ix, iy, iz] = sum over (co, kt, kx, ky, kz) with it = ot*st - pt + kt*dt (same in x, y, z)
// of dy[n, co, ot, ox, oy, oz] * w[co, ci, kt, kx, ky, kz]: the transposed convolution, written as a
// gather so every dx element is owned by one thread (no atomics). A tap contributes only when
// (i + p - k*d) is a multiple of the stride; for t and x that test is uniform over the block.
// grid.x: (n, it, ix, y tile, z tile) flattened; grid.y: tiles of input channels.
template <typename T>
__device__ void grad_input(const T* __restrict__ dy, const T* __restrict__ w, T* __restrict__ dx, const Geometry& g) {
    using Acc = typename Accumulate<T>::type;
    const int tile_z = blockDim.x;
    const int tile_y = blockDim.y;
    const int tiles_z = ceil_div(g.in_z, tile_z);
    const int tiles_y = ceil_div(g.in_y, tile_y);
    int block = blockIdx.x;
    const int z_tile = block % tiles_z;
    block /= tiles_z;
    const int y_tile = block % tiles_y;
    block /= tiles_y;
    const int in_x = block % g.in_x;
    block /= g.in_x;
    const int in_t = block % g.in_t;
    const int n = block / g.in_t;
    const int ci_first = blockIdx.y * kChannelTile;

    const int in_y = y_tile * tile_y + threadIdx.y;
    const int in_z = z_tile * tile_z + threadIdx.x;
    const int y_first = y_tile * tile_y;
    const int z_first = z_tile * tile_z;
    // Output rows this tile can reach: oy in [floor((y_first + py - (ky-1)*dy) / sy), floor((y_last + py) / sy)].
    // The patch height is the largest such range over all tiles, so every launch uses one size.
    const int rows = (tile_y - 1 + (g.k_y - 1) * g.dil_y) / g.stride_y + 2;
    const int cols = (tile_z - 1 + (g.k_z - 1) * g.dil_z) / g.stride_z + 2;
    const int oy_first = floor_div(y_first + g.pad_y - (g.k_y - 1) * g.dil_y, g.stride_y);
    const int oz_first = floor_div(z_first + g.pad_z - (g.k_z - 1) * g.dil_z, g.stride_z);
    const int taps = g.taps_per_time_slice();

    AVILA_DYNAMIC_SHARED_BYTES(shared_bytes);
    Acc* weights = reinterpret_cast<Acc*>(shared_bytes);               // [tap][input channel]
    T* patch = reinterpret_cast<T*>(weights + taps * kChannelTile);  // [kx][row][col] of dy

    Acc acc[kChannelTile];
#pragma unroll
    for (int c = 0; c < kChannelTile; ++c) acc[c] = Acc(0);

    const int thread = threadIdx.y * blockDim.x + threadIdx.x;
    const int threads = blockDim.x * blockDim.y;
    const int plane_size = rows * cols;
    // The y and z tap walks depend on this thread's position only: set up once, outside every loop.
    const TapWalk start_y = TapWalk::start(in_y + g.pad_y, g.dil_y, g.stride_y);
    const TapWalk start_z = TapWalk::start(in_z + g.pad_z, g.dil_z, g.stride_z);

    for (int co = 0; co < g.out_channels; ++co) {
        for (int kt = 0; kt < g.k_t; ++kt) {
            const int t_numerator = in_t + g.pad_t - kt * g.dil_t;
            if (t_numerator < 0 || t_numerator % g.stride_t != 0) continue;
            const int out_t = t_numerator / g.stride_t;
            if (out_t >= g.out_t) continue;
            __syncthreads();  // the previous stage's readers are done with shared memory
            for (int index = thread; index < g.k_x * plane_size; index += threads) {
                const int kx = index / plane_size;
                const int row = (index - kx * plane_size) / cols;
                const int col = index - kx * plane_size - row * cols;
                const int x_numerator = in_x + g.pad_x - kx * g.dil_x;
                const int out_x = x_numerator / g.stride_x;
                const int out_y = oy_first + row;
                const int out_z = oz_first + col;
                T value = zero<T>();
                if (x_numerator >= 0 && x_numerator % g.stride_x == 0 && out_x < g.out_x && out_y >= 0 &&
                    out_y < g.out_y && out_z >= 0 && out_z < g.out_z) {
                    value = dy[volume_offset(n, co, g.out_channels, out_t, out_x, out_y, out_z, g.out_t, g.out_x,
                                             g.out_y, g.out_z)];
                }
                patch[index] = value;
            }
            for (int index = thread; index < kChannelTile * taps; index += threads) {
                const int channel = index / taps;
                const int tap = index - channel * taps;
                const int ci = ci_first + channel;
                weights[tap * kChannelTile + channel] =
                    ci < g.in_channels
                        ? widen(w[((static_cast<long long>(co) * g.in_channels + ci) * g.k_t + kt) * taps + tap])
                        : Acc(0);
            }
            __syncthreads();
            TapWalk walk_x = TapWalk::start(in_x + g.pad_x, g.dil_x, g.stride_x);
            for (int kx = 0; kx < g.k_x; ++kx, walk_x.next()) {
                if (!walk_x.hits() || walk_x.quotient < 0 || walk_x.quotient >= g.out_x) continue;
                TapWalk walk_y = start_y;
                for (int ky = 0; ky < g.k_y; ++ky, walk_y.next()) {
                    // A hit is an exact multiple, so the row lies inside the patch; rows outside
                    // dy were loaded as zeros.
                    if (!walk_y.hits()) continue;
                    const T* patch_row = patch + (kx * rows + walk_y.quotient - oy_first) * cols;
                    const Acc* tap_weights = weights + ((kx * g.k_y + ky) * g.k_z) * kChannelTile;
                    TapWalk walk_z = start_z;
                    for (int kz = 0; kz < g.k_z; ++kz, walk_z.next()) {
                        if (!walk_z.hits()) continue;
                        const Acc value = widen(patch_row[walk_z.quotient - oz_first]);
#pragma unroll
                        for (int c = 0; c < kChannelTile; ++c) acc[c] += value * tap_weights[kz * kChannelTile + c];
                    }
                }
            }
        }
    }

    if (in_y < g.in_y && in_z < g.in_z) {
#pragma unroll
        for (int c = 0; c < kChannelTile; ++c) {
            const int ci = ci_first + c;
            if (ci < g.in_channels) {
                dx[volume_offset(n, ci, g.in_channels, in_t, in_x, in_y, in_z, g.in_t, g.in_x, g.in_y, g.in_z)] =
                    narrow<T>(acc[c]);
            }
        }
    }
}

// dw[co, ci, kt, kx, ky, kz] = sum_{n, ot, ox, oy, oz} dy[n, co, ot, ox, oy, oz] *
//                              x[n, ci, ot*st - pt + kt*dt, ox*sx - px + kx*dx, oy*sy - py + ky*dy, oz*sz - pz + kz*dz]
// A GEMM dW (C_out x taps) = dY (C_out x positions) . X (positions x taps) with a huge reduction:
//   threadIdx.x -> one (kx, ky, kz) tap of a chunk of blockDim.x taps (fixed for the whole block),
//   threadIdx.y -> one output row of the (tile_y x tile_z) position tile staged per step,
//   grid.x      -> split of the position tiles (split-K), partial sums combined with atomicAdd,
//   grid.y      -> (ci, kt, tap chunk), grid.z -> tiles of output channels.
// The block first reduces its rows through shared memory, so each dw element receives one
// atomicAdd per block; dw must be zero on entry. Float atomics make the summation order, and so
// the last bits of dw, vary from run to run. dw is in the accumulation type (float32 for float16
// inputs: half-precision atomics would round every partial sum).
template <typename T>
__device__ void grad_weight(const T* __restrict__ x, const T* __restrict__ dy,
                            typename Accumulate<T>::type* __restrict__ dw, const Geometry& g, int tile_z) {
    using Acc = typename Accumulate<T>::type;
    const int tap_lanes = blockDim.x;
    const int tile_y = blockDim.y;
    const int taps = g.taps_per_time_slice();
    const int tap_chunks = ceil_div(taps, tap_lanes);
    const int plane_taps = g.k_y * g.k_z;

    int slice = blockIdx.y;
    const int tap_chunk = slice % tap_chunks;
    slice /= tap_chunks;
    const int kt = slice % g.k_t;
    const int ci = slice / g.k_t;
    const int co_first = blockIdx.z * kChannelTile;

    const int tap_first = tap_chunk * tap_lanes;
    const int tap = tap_first + threadIdx.x;
    const bool tap_valid = tap < taps;
    const int kx_first = tap_first / plane_taps;
    const int kx_last = min_int(taps, tap_first + tap_lanes) - 1;
    const int planes = kx_last / plane_taps - kx_first + 1;
    const int my_kx = (tap_valid ? tap : tap_first) / plane_taps;
    const int my_ky = ((tap_valid ? tap : tap_first) % plane_taps) / g.k_z;
    const int my_kz = (tap_valid ? tap : tap_first) % g.k_z;

    const int rows = (tile_y - 1) * g.stride_y + (g.k_y - 1) * g.dil_y + 1;
    const int cols = (tile_z - 1) * g.stride_z + (g.k_z - 1) * g.dil_z + 1;
    const int tiles_z = ceil_div(g.out_z, tile_z);
    const int tiles_y = ceil_div(g.out_y, tile_y);
    const long long tiles_total = static_cast<long long>(g.batch) * g.out_t * g.out_x * tiles_y * tiles_z;
    const long long tiles_per_block = (tiles_total + gridDim.x - 1) / gridDim.x;
    const long long tile_begin = blockIdx.x * tiles_per_block;
    const long long tile_end = tile_begin + tiles_per_block < tiles_total ? tile_begin + tiles_per_block : tiles_total;

    AVILA_DYNAMIC_SHARED_BYTES(shared_bytes);
    // dy is staged [position][channel] with an odd row stride: consecutive threads store
    // consecutive positions (coalesced dy loads), and a stride of 16 words would put all those
    // stores in 2 banks (16-way conflicts); 17 words spreads them over all 32 banks.
    constexpr int kGradStride = kChannelTile + 1;
    Acc* grads = reinterpret_cast<Acc*>(shared_bytes);                      // [row][col][channel] of dy
    T* patch = reinterpret_cast<T*>(grads + tile_y * tile_z * kGradStride);  // [plane][row][col] of x

    Acc acc[kChannelTile];
#pragma unroll
    for (int c = 0; c < kChannelTile; ++c) acc[c] = Acc(0);

    const int thread = threadIdx.y * blockDim.x + threadIdx.x;
    const int threads = blockDim.x * blockDim.y;
    const int row = threadIdx.y;
    const int patch_offset = ((my_kx - kx_first) * rows + row * g.stride_y + my_ky * g.dil_y) * cols + my_kz * g.dil_z;

    for (long long tile = tile_begin; tile < tile_end; ++tile) {
        long long rest = tile;
        const int z_tile = static_cast<int>(rest % tiles_z);
        rest /= tiles_z;
        const int y_tile = static_cast<int>(rest % tiles_y);
        rest /= tiles_y;
        const int out_x = static_cast<int>(rest % g.out_x);
        rest /= g.out_x;
        const int out_t = static_cast<int>(rest % g.out_t);
        const int n = static_cast<int>(rest / g.out_t);
        const int in_t = out_t * g.stride_t - g.pad_t + kt * g.dil_t;
        if (in_t < 0 || in_t >= g.in_t) continue;  // uniform: the whole tile reads zero padding

        const int out_y0 = y_tile * tile_y;
        const int out_z0 = z_tile * tile_z;
        __syncthreads();  // the previous tile's readers are done with shared memory
        load_input_patch(patch, x, g, n, ci, in_t, out_x * g.stride_x - g.pad_x, kx_first, planes,
                         out_y0 * g.stride_y - g.pad_y, rows, out_z0 * g.stride_z - g.pad_z, cols);
        for (int index = thread; index < kChannelTile * tile_y * tile_z; index += threads) {
            const int channel = index / (tile_y * tile_z);
            const int position = index - channel * tile_y * tile_z;
            const int tile_row = position / tile_z;
            const int tile_col = position - tile_row * tile_z;
            const int co = co_first + channel;
            const int out_y = out_y0 + tile_row;
            const int out_z = out_z0 + tile_col;
            Acc value = Acc(0);
            if (co < g.out_channels && out_y < g.out_y && out_z < g.out_z) {
                value = widen(dy[volume_offset(n, co, g.out_channels, out_t, out_x, out_y, out_z, g.out_t, g.out_x,
                                               g.out_y, g.out_z)]);
            }
            grads[position * kGradStride + channel] = value;
        }
        __syncthreads();
        const Acc* grad_row = grads + row * tile_z * kGradStride;
        for (int col = 0; col < tile_z; ++col) {
            const Acc value = widen(patch[patch_offset + col * g.stride_z]);
#pragma unroll
            for (int c = 0; c < kChannelTile; ++c) acc[c] += value * grad_row[col * kGradStride + c];
        }
    }

    // Sum the tile_y row partials in shared memory, then one atomicAdd per (tap, channel).
    __syncthreads();
    Acc* partials = reinterpret_cast<Acc*>(shared_bytes);  // [row][tap lane][channel]
#pragma unroll
    for (int c = 0; c < kChannelTile; ++c) partials[(row * tap_lanes + threadIdx.x) * kChannelTile + c] = acc[c];
    __syncthreads();
    for (int index = thread; index < tap_lanes * kChannelTile; index += threads) {
        const int lane = index / kChannelTile;
        const int channel = index - lane * kChannelTile;
        const int out_tap = tap_first + lane;
        const int co = co_first + channel;
        if (out_tap >= taps || co >= g.out_channels) continue;
        Acc total = Acc(0);
        for (int r = 0; r < tile_y; ++r) total += partials[(r * tap_lanes + lane) * kChannelTile + channel];
        atomicAdd(&dw[((static_cast<long long>(co) * g.in_channels + ci) * g.k_t + kt) * taps + out_tap], total);
    }
}

// dst[i] = float16(src[i]): the one rounding of a float16 grad_weight summed in float32.
__device__ void round_to_half(const float* __restrict__ src, avila_half* __restrict__ dst, long long count) {
    const long long step = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += step) {
        dst[i] = avila_float_to_half(src[i]);
    }
}

}  // namespace conv4d_detail

#define AVILA_DEFINE_CONV4D_KERNELS(T, suffix)                                                                      \
    extern "C" __global__ void conv4d_forward_##suffix(const T* __restrict__ x, const T* __restrict__ w,            \
                                                       T* __restrict__ y, AVILA_CONV4D_GEOMETRY_PARAMS) {           \
        conv4d_detail::forward<T>(x, w, y, AVILA_CONV4D_GEOMETRY);                                                  \
    }                                                                                                               \
    extern "C" __global__ void conv4d_grad_input_##suffix(const T* __restrict__ dy, const T* __restrict__ w,        \
                                                          T* __restrict__ dx, AVILA_CONV4D_GEOMETRY_PARAMS) {       \
        conv4d_detail::grad_input<T>(dy, w, dx, AVILA_CONV4D_GEOMETRY);                                             \
    }                                                                                                               \
    extern "C" __global__ void conv4d_grad_weight_##suffix(                                                        \
        const T* __restrict__ x, const T* __restrict__ dy, conv4d_detail::Accumulate<T>::type* __restrict__ dw,    \
        AVILA_CONV4D_GEOMETRY_PARAMS, int tile_z) {                                                                 \
        conv4d_detail::grad_weight<T>(x, dy, dw, AVILA_CONV4D_GEOMETRY, tile_z);                                    \
    }

AVILA_DEFINE_CONV4D_KERNELS(float, f32)
AVILA_DEFINE_CONV4D_KERNELS(double, f64)
AVILA_DEFINE_CONV4D_KERNELS(avila_half, f16)

extern "C" __global__ void conv4d_round_f32_to_f16(const float* __restrict__ src, avila_half* __restrict__ dst,
                                                   long long count) {
    conv4d_detail::round_to_half(src, dst, count);
}
