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
#include <mutex>
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
    // mma.sync fragments (4 A registers, 2 B registers, 4 C floats per lane), two sets used alternately.
    std::array<std::array<std::array<std::uint32_t, 10>, kWarpSize>, 2> mma_slots{};
    std::atomic<unsigned int> live_lanes{0};  // lanes that have not returned from the kernel yet
};

// A cp.async copy: destination, the source bytes read when it was issued, its size.
struct PendingCopy {
    unsigned char* destination;
    std::array<unsigned char, 16> bytes;
    int size;
};

struct BlockState;
// Completion step of the block barrier: writes the cp.async copies waited for before it.
struct LandCopies {
    BlockState* block;
    void operator()() noexcept;
};

struct BlockState {
    std::optional<std::barrier<LandCopies>> block_barrier;
    std::mutex copies_mutex;
    std::vector<PendingCopy> waited_copies;
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
        block_barrier.emplace(static_cast<std::ptrdiff_t>(threads), LandCopies{this});
        waited_copies.clear();
        for (std::size_t w = 0; w < warps.size(); ++w) {
            const unsigned int first = static_cast<unsigned int>(w) * kWarpSize;
            const unsigned int lanes = std::min(kWarpSize, threads - first);
            warps[w]->barrier.emplace(static_cast<std::ptrdiff_t>(lanes));
            warps[w]->live_lanes.store(lanes);
        }
        if (dynamic_shared_bytes > 0) {
            std::memset(dynamic_shared, 0xFF, dynamic_shared_bytes);
        }
    }
};

inline void LandCopies::operator()() noexcept {
    for (const PendingCopy& copy : block->waited_copies) {
        std::memcpy(copy.destination, copy.bytes.data(), static_cast<std::size_t>(copy.size));
    }
    block->waited_copies.clear();
}

inline thread_local BlockState* current_block = nullptr;
inline thread_local unsigned int thread_rank = 0;
inline thread_local unsigned int shuffle_parity = 0;
inline thread_local unsigned int mma_parity = 0;

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


// ---------------------------------------------------------------------------------------------
// cp.async (sm_80+): an asynchronous global -> shared copy, grouped by commit_group and waited
// for by wait_group<N> (all but the newest N groups of this thread are complete). Emulation: the
// source bytes are read when the copy is issued (inputs do not change during a kernel), and the
// destination is written only when BOTH hold: the thread waited for the copy's group, and then a
// __syncthreads it took part in completed (the write happens in the barrier's completion step,
// between the last arrival and the first departure). So a kernel that forgets the wait, waits
// for too few groups, or reads the staged tile without the barrier reads poisoned (NaN) or stale
// shared memory in every run, where the GPU would fail only sometimes. This is stricter than the hardware in one respect: a
// thread does not see even its own copies before the barrier (the kernels here never rely on
// that; other threads' copies need the barrier on the GPU too).
struct AsyncCopies {
    std::vector<PendingCopy> open;                   // issued since the last commit_group
    std::vector<std::vector<PendingCopy>> committed;  // committed groups, oldest first
    std::vector<PendingCopy> waited;                  // complete; written when the next __syncthreads completes
    // Hands the waited copies to the block: the barrier's completion step writes them, after every
    // thread arrived and before any leaves, so no thread sees them early and every thread after.
    void hand_over(BlockState& block) {
        if (waited.empty()) return;
        std::lock_guard<std::mutex> lock(block.copies_mutex);
        block.waited_copies.insert(block.waited_copies.end(), waited.begin(), waited.end());
        waited.clear();
    }
    void reset() {
        open.clear();
        committed.clear();
        waited.clear();
    }
};
inline thread_local AsyncCopies async_copies;

inline void cp_async(void* shared_destination, const void* global_source, int bytes, int source_bytes) {
    BlockState& block = *current_block;
    auto* destination = static_cast<unsigned char*>(shared_destination);
    const bool in_shared = destination >= block.dynamic_shared &&
                           destination + bytes <= block.dynamic_shared + block.dynamic_shared_bytes;
    if (!in_shared) {
        block.report("cp.async destination outside the block's dynamic shared memory (thread " +
                     std::to_string(thread_rank) + ")");
        return;
    }
    if (reinterpret_cast<std::uintptr_t>(destination) % bytes != 0 ||
        reinterpret_cast<std::uintptr_t>(global_source) % bytes != 0) {
        block.report("misaligned " + std::to_string(bytes) + "-byte cp.async (thread " + std::to_string(thread_rank) +
                     ")");
        return;
    }
    PendingCopy copy{destination, {}, bytes};
    // src-size < cp-size: the remaining bytes are zero-filled (how padding taps become zeros)
    std::memcpy(copy.bytes.data(), global_source, static_cast<std::size_t>(source_bytes));
    async_copies.open.push_back(copy);
}

inline void cp_async_commit() {
    async_copies.committed.push_back(std::move(async_copies.open));
    async_copies.open.clear();
}

inline void cp_async_wait(std::size_t newest_pending) {
    while (async_copies.committed.size() > newest_pending) {
        auto& group = async_copies.committed.front();
        async_copies.waited.insert(async_copies.waited.end(), group.begin(), group.end());
        async_copies.committed.erase(async_copies.committed.begin());
    }
}

// ---------------------------------------------------------------------------------------------
// mma.sync: the warp's fragments are exchanged through per-warp slots, so every lane computes its
// own four D values from the whole A and B, decoded with the PTX ISA's per-thread fragment layouts
// (groupID = lane / 4, threadID_in_group = lane % 4). A lane that packs its registers in the wrong
// order, or a kernel that shifts the lane index, multiplies the wrong elements, as on the GPU.
// Products and sums are formed in double and rounded to float once, i.e. at least as accurate as
// the tensor cores; tests compare against float64 references of the rounded inputs.
enum class MmaKind { f16_m16n8k16, bf16_m16n8k16, tf32_m16n8k8 };

inline float decode_f16(std::uint32_t reg, int half) {
    return static_cast<float>(std::bit_cast<_Float16>(static_cast<std::uint16_t>(reg >> (16 * half))));
}
inline float decode_bf16(std::uint32_t reg, int half) {
    return std::bit_cast<float>(((reg >> (16 * half)) & 0xFFFFU) << 16);
}
// The tensor cores read only the 19 TF32 bits of a 32-bit operand: the low 13 mantissa bits are
// ignored (a kernel that skips cvt.rna.tf32.f32 gets truncation, not rounding).
inline float decode_tf32(std::uint32_t reg) { return std::bit_cast<float>(reg & 0xFFFFE000U); }

inline void mma_sync(MmaKind kind, float (&d)[4], const std::uint32_t (&a)[4], const std::uint32_t (&b)[2],
                     const float (&c)[4]) {
    WarpState& warp = *current_block->warps[thread_rank / kWarpSize];
    const unsigned int lane = thread_rank % kWarpSize;
    if (warp.live_lanes.load() != kWarpSize) {
        current_block->report("mma.sync executed by a warp with " + std::to_string(warp.live_lanes.load()) +
                              " live lanes (it needs all 32)");
    }
    auto& slots = warp.mma_slots[mma_parity];
    mma_parity ^= 1U;
    for (int i = 0; i < 4; ++i) slots[lane][i] = a[i];
    for (int i = 0; i < 2; ++i) slots[lane][4 + i] = b[i];
    for (int i = 0; i < 4; ++i) slots[lane][6 + i] = std::bit_cast<std::uint32_t>(c[i]);
    warp.barrier->arrive_and_wait();

    const int k_size = kind == MmaKind::tf32_m16n8k8 ? 8 : 16;
    double A[16][16] = {};
    double B[16][8] = {};
    for (unsigned int source = 0; source < kWarpSize; ++source) {
        const int group = static_cast<int>(source / 4), in_group = static_cast<int>(source % 4);
        const auto& regs = slots[source];
        if (kind == MmaKind::tf32_m16n8k8) {
            // A 16x8: a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4); B 8x8: b0 (t, g), b1 (t+4, g)
            A[group][in_group] = decode_tf32(regs[0]);
            A[group + 8][in_group] = decode_tf32(regs[1]);
            A[group][in_group + 4] = decode_tf32(regs[2]);
            A[group + 8][in_group + 4] = decode_tf32(regs[3]);
            B[in_group][group] = decode_tf32(regs[4]);
            B[in_group + 4][group] = decode_tf32(regs[5]);
        } else {
            auto decode = kind == MmaKind::f16_m16n8k16 ? decode_f16 : decode_bf16;
            // A 16x16, register r holds two columns: r0 (g, 2t..2t+1), r1 (g+8, 2t..), r2 (g, 2t+8..),
            // r3 (g+8, 2t+8..); B 16x8: b0 (2t..2t+1, g), b1 (2t+8..2t+9, g); low half = lower column/row
            for (int h = 0; h < 2; ++h) {
                A[group][2 * in_group + h] = decode(regs[0], h);
                A[group + 8][2 * in_group + h] = decode(regs[1], h);
                A[group][2 * in_group + 8 + h] = decode(regs[2], h);
                A[group + 8][2 * in_group + 8 + h] = decode(regs[3], h);
                B[2 * in_group + h][group] = decode(regs[4], h);
                B[2 * in_group + 8 + h][group] = decode(regs[5], h);
            }
        }
    }
    // C and D: c0 (g, 2t), c1 (g, 2t+1), c2 (g+8, 2t), c3 (g+8, 2t+1)
    const int group = static_cast<int>(lane / 4), in_group = static_cast<int>(lane % 4);
    for (int i = 0; i < 4; ++i) {
        const int row = group + (i >= 2 ? 8 : 0);
        const int col = 2 * in_group + (i & 1);
        double sum = static_cast<double>(c[i]);
        for (int k = 0; k < k_size; ++k) sum += A[row][k] * B[k][col];
        d[i] = static_cast<float>(sum);
    }
}

}  // namespace avila_host

inline void __syncthreads() {
    avila_host::async_copies.hand_over(*avila_host::current_block);
    avila_host::current_block->block_barrier->arrive_and_wait();
}

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
                    async_copies.reset();  // copies never waited for die with the block
                    state.warps[rank / kWarpSize]->live_lanes.fetch_sub(1);
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
