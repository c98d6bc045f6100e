// Host emulation of the CUDA built-ins used by Avila ML's kernels.
//
// The same .cu source is compiled by nvcc/NVRTC for the GPU and by g++ -std=c++20 for the host,
// so CPU-only CI runs the real indexing, tiling and reductions against NumPy. Emulation model:
//   * one OS thread per CUDA thread; all threads of one block run concurrently, blocks run one
//     after another (so function-local `static` storage is a faithful stand-in for __shared__);
//   * __syncthreads() is a std::barrier over the block, warp shuffles exchange through a per-warp
//     buffer guarded by a per-warp barrier;
//   * a thread that returns from the kernel leaves the barriers (arrive_and_drop), mirroring how
//     exited threads stop counting towards bar.sync on the hardware;
//   * dynamic shared memory is poisoned with 0xFF bytes (NaN for float/double) before each block,
//     so a kernel that reads shared memory it never wrote produces NaN instead of stale data;
//   * the launch limits of an sm_80/sm_90 device are enforced, so a bad grid/block/shared-memory
//     plan fails here exactly as it would fail on the GPU, and so are the alignment rules of vector
//     loads (AVILA_CHECK_ALIGNED), which x86 would otherwise forgive.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <barrier>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

// Deliberately only float-aligned (CUDA's are 8/16): g++ then emits unaligned loads, so a misaligned
// vector access is reported by AVILA_CHECK_ALIGNED instead of crashing the test process.
struct float2 {
    float x, y;
};
struct float4 {
    float x, y, z, w;
};

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local dim3 threadIdx{0, 0, 0};
inline thread_local dim3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};

// IEEE binary16 with the same bit layout as CUDA's __half and numpy.float16.
using __half = _Float16;

inline float __half2float(__half value) { return static_cast<float>(value); }
inline __half __float2half(float value) { return static_cast<__half>(value); }
inline __half __float2half_rn(float value) { return static_cast<__half>(value); }

inline float __int_as_float(int bits) { return std::bit_cast<float>(bits); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }

template <typename T>
inline T atomicAdd(T* address, T value) {
    return std::atomic_ref<T>(*address).fetch_add(value, std::memory_order_relaxed);
}

namespace avila_host {

constexpr unsigned int kWarpSize = 32;
constexpr unsigned int kMaxThreadsPerBlock = 1024;
constexpr unsigned int kMaxBlockDimZ = 64;
constexpr unsigned int kMaxGridDimYZ = 65535;
constexpr unsigned long long kMaxGridDimX = 2147483647ULL;
// Opt-in dynamic shared memory per block on sm_90 (227 KiB); sm_80 allows 163 KiB.
constexpr std::size_t kMaxDynamicSharedBytes = 227 * 1024;

struct WarpState {
    std::optional<std::barrier<>> barrier;
    // Two slot sets used alternately: a lane can only come back to a slot set after every lane
    // has passed the next shuffle's barrier, i.e. after every lane has read the previous values.
    std::array<std::array<std::uint64_t, kWarpSize>, 2> slots{};
};

struct BlockState {
    std::optional<std::barrier<>> block_barrier;
    std::vector<std::unique_ptr<WarpState>> warps;
    unsigned char* dynamic_shared = nullptr;
    std::size_t dynamic_shared_bytes = 0;
    unsigned int threads = 0;
    std::atomic<bool> failed{false};
    std::string failure;  // written once, by the thread that flipped `failed`

    void report(std::string message) {
        bool expected = false;
        if (failed.compare_exchange_strong(expected, true)) failure = std::move(message);
    }

    void start_block() {
        block_barrier.emplace(static_cast<std::ptrdiff_t>(threads));
        for (std::size_t w = 0; w < warps.size(); ++w) {
            const unsigned int first = static_cast<unsigned int>(w) * kWarpSize;
            const unsigned int lanes = std::min(kWarpSize, threads - first);
            warps[w]->barrier.emplace(static_cast<std::ptrdiff_t>(lanes));
        }
        if (dynamic_shared_bytes > 0) {
            std::memset(dynamic_shared, 0xFF, dynamic_shared_bytes);
        }
    }
};

inline thread_local BlockState* current_block = nullptr;
inline thread_local unsigned int thread_rank = 0;
inline thread_local unsigned int shuffle_parity = 0;

inline unsigned char* dynamic_shared_memory() { return current_block->dynamic_shared; }

// The GPU faults on a vector access that is not aligned to its size; x86 would silently allow it.
inline void check_aligned(const void* pointer, std::size_t bytes, const char* file, int line) {
    if (reinterpret_cast<std::uintptr_t>(pointer) % bytes != 0) {
        current_block->report(std::string("misaligned ") + std::to_string(bytes) + "-byte access at " + file + ":" +
                              std::to_string(line) + " (block " + std::to_string(blockIdx.x) + ", thread " +
                              std::to_string(thread_rank) + ")");
    }
}

template <typename T>
inline T warp_exchange(T value, int source_lane_in_warp) {
    static_assert(sizeof(T) <= sizeof(std::uint64_t) && std::is_trivially_copyable_v<T>,
                  "warp shuffles move at most 8 bytes of trivially copyable data");
    WarpState& warp = *current_block->warps[thread_rank / kWarpSize];
    const unsigned int lane = thread_rank % kWarpSize;
    auto& slots = warp.slots[shuffle_parity];
    shuffle_parity ^= 1U;
    std::uint64_t raw = 0;
    std::memcpy(&raw, &value, sizeof(T));
    slots[lane] = raw;
    warp.barrier->arrive_and_wait();
    T result;
    std::memcpy(&result, &slots[static_cast<unsigned int>(source_lane_in_warp)], sizeof(T));
    return result;
}

}  // namespace avila_host

inline void __syncthreads() { avila_host::current_block->block_barrier->arrive_and_wait(); }

inline void __syncwarp(unsigned int = 0xffffffffU) {
    avila_host::current_block->warps[avila_host::thread_rank / avila_host::kWarpSize]->barrier->arrive_and_wait();
}

template <typename T>
inline T __shfl_xor_sync(unsigned int, T value, int lane_mask, int width = 32) {
    const int lane = static_cast<int>(avila_host::thread_rank % avila_host::kWarpSize);
    const int segment_start = lane & ~(width - 1);
    int source = lane ^ lane_mask;
    // CUDA returns the caller's own value when the source lies outside its width segment.
    if (source < segment_start || source >= segment_start + width) source = lane;
    return avila_host::warp_exchange(value, source);
}

template <typename T>
inline T __shfl_down_sync(unsigned int, T value, unsigned int delta, int width = 32) {
    const int lane = static_cast<int>(avila_host::thread_rank % avila_host::kWarpSize);
    const int segment_start = lane & ~(width - 1);
    int source = lane + static_cast<int>(delta);
    if (source >= segment_start + width) source = lane;
    return avila_host::warp_exchange(value, source);
}

template <typename T>
inline T __shfl_sync(unsigned int, T value, int source_lane, int width = 32) {
    const int lane = static_cast<int>(avila_host::thread_rank % avila_host::kWarpSize);
    const int segment_start = lane & ~(width - 1);
    return avila_host::warp_exchange(value, segment_start + (source_lane % width));
}

// Dynamic shared memory: on the GPU `extern __shared__`, here the per-block buffer of the launch.
#define AVILA_DYNAMIC_SHARED_BYTES(name) unsigned char* const name = avila_host::dynamic_shared_memory()
#define AVILA_CHECK_ALIGNED(pointer, bytes) avila_host::check_aligned(pointer, bytes, __FILE__, __LINE__)

namespace avila_host {

inline void check_launch_configuration(dim3 grid, dim3 block, std::size_t dynamic_shared_bytes) {
    const unsigned long long threads = 1ULL * block.x * block.y * block.z;
    if (threads == 0 || threads > kMaxThreadsPerBlock || block.z > kMaxBlockDimZ) {
        throw std::invalid_argument("invalid block dimensions (" + std::to_string(block.x) + ", " +
                                    std::to_string(block.y) + ", " + std::to_string(block.z) +
                                    "): CUDA allows at most 1024 threads per block and blockDim.z <= 64");
    }
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > kMaxGridDimX || grid.y > kMaxGridDimYZ ||
        grid.z > kMaxGridDimYZ) {
        throw std::invalid_argument("invalid grid dimensions (" + std::to_string(grid.x) + ", " +
                                    std::to_string(grid.y) + ", " + std::to_string(grid.z) +
                                    "): each must be >= 1, y and z at most 65535");
    }
    if (dynamic_shared_bytes > kMaxDynamicSharedBytes) {
        throw std::invalid_argument("dynamic shared memory of " + std::to_string(dynamic_shared_bytes) +
                                    " bytes exceeds the 227 KiB per-block limit of sm_90");
    }
}

// Runs `kernel<<<grid, block, dynamic_shared_bytes>>>(args...)`: one OS thread per CUDA thread,
// blocks in x-fastest order, each block started only after every thread finished the previous one.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t dynamic_shared_bytes, Args... args) {
    static_assert(sizeof...(Params) == sizeof...(Args), "kernel launched with the wrong number of arguments");
    check_launch_configuration(grid, block, dynamic_shared_bytes);

    BlockState state;
    state.threads = block.x * block.y * block.z;
    const unsigned int warp_count = (state.threads + kWarpSize - 1) / kWarpSize;
    for (unsigned int w = 0; w < warp_count; ++w) state.warps.push_back(std::make_unique<WarpState>());
    // max_align_t storage gives the 16-byte alignment that __align__(16) promises on the GPU.
    std::vector<std::max_align_t> shared_storage((dynamic_shared_bytes + sizeof(std::max_align_t) - 1) /
                                                 sizeof(std::max_align_t));
    state.dynamic_shared = reinterpret_cast<unsigned char*>(shared_storage.data());
    state.dynamic_shared_bytes = dynamic_shared_bytes;
    state.start_block();

    auto start_next_block = [&state]() noexcept { state.start_block(); };
    std::barrier between_blocks(static_cast<std::ptrdiff_t>(state.threads), start_next_block);

    auto run_thread = [&](unsigned int rank) {
        current_block = &state;
        thread_rank = rank;
        shuffle_parity = 0;
        blockDim = block;
        gridDim = grid;
        threadIdx = dim3(rank % block.x, (rank / block.x) % block.y, rank / (block.x * block.y));
        for (unsigned int bz = 0; bz < grid.z; ++bz) {
            for (unsigned int by = 0; by < grid.y; ++by) {
                for (unsigned int bx = 0; bx < grid.x; ++bx) {
                    blockIdx = dim3(bx, by, bz);
                    kernel(static_cast<Params>(args)...);
                    state.block_barrier->arrive_and_drop();
                    state.warps[rank / kWarpSize]->barrier->arrive_and_drop();
                    between_blocks.arrive_and_wait();
                }
            }
        }
    };

    std::vector<std::thread> threads;
    threads.reserve(state.threads);
    for (unsigned int rank = 0; rank < state.threads; ++rank) threads.emplace_back(run_thread, rank);
    for (auto& thread : threads) thread.join();
    if (state.failed) throw std::runtime_error(state.failure);
}

}  // namespace avila_host
