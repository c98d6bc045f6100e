// Tensor-core and asynchronous-copy primitives of sm_80+ as small inline functions, so that one
// kernel source runs on the GPU (inline PTX) and in the host emulation (cuda_host.h).
//
// Warp-level matrix API: PTX mma.sync with its documented per-thread fragment layouts, not WMMA.
// Why: WMMA fragments have an unspecified element-to-lane mapping, so an epilogue cannot know
// which output a register holds without a store through shared memory; mma.sync's layouts are
// specified (PTX ISA, "Matrix fragments for mma.m16n8k16/m16n8k8"), which lets a kernel apply
// masks, softmax or scatter stores straight from registers (what FlashAttention-2 does) and lets
// the emulation check every lane's mapping. Shapes used: m16n8k16 for float16/bfloat16 and m16n8k8
// for TF32, float32 accumulation. Fragment registers are 32-bit: two 16-bit values (the lower
// column/row in the low half) or one TF32 value.
//
// cp.async: 4-, 8- or 16-byte global -> shared copies with zero fill (src-size 0 writes zeros,
// which is how padding enters a tile), commit_group, wait_group<N>.
#ifndef AVILA_MMA_CUH
#define AVILA_MMA_CUH

#include "avila_half.cuh"

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)

__device__ __forceinline__ unsigned int avila_shared_address(const void* pointer) {
    unsigned int address;
    asm("{ .reg .u64 generic_address;\n"
        "  cvta.to.shared.u64 generic_address, %1;\n"
        "  cvt.u32.u64 %0, generic_address; }"
        : "=r"(address)
        : "l"(pointer));
    return address;
}

// kBytes in {4, 8, 16}; valid == false copies nothing and zero-fills the destination.
template <int kBytes>
__device__ __forceinline__ void avila_cp_async(void* shared_destination, const void* global_source, bool valid) {
    static_assert(kBytes == 4 || kBytes == 8 || kBytes == 16, "cp.async moves 4, 8 or 16 bytes");
    const int source_bytes = valid ? kBytes : 0;
    if (kBytes == 16) {
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(avila_shared_address(shared_destination)),
                     "l"(global_source), "r"(source_bytes));
    } else {
        asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(avila_shared_address(shared_destination)),
                     "l"(global_source), "n"(kBytes), "r"(source_bytes));
    }
}

__device__ __forceinline__ void avila_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int kNewestPending>
__device__ __forceinline__ void avila_cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kNewestPending));
}

// Rounds to TF32 (10 mantissa bits), to nearest with ties away from zero, as cuBLAS/cuDNN do.
__device__ __forceinline__ unsigned int avila_float_to_tf32(float value) {
    unsigned int result;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(result) : "f"(value));
    return result;
}

__device__ __forceinline__ unsigned int avila_load_u32(const void* shared_pointer) {
    return *reinterpret_cast<const unsigned int*>(shared_pointer);
}

__device__ __forceinline__ void avila_mma_f16(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2],
                                              const float (&c)[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
}

__device__ __forceinline__ void avila_mma_bf16(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2],
                                               const float (&c)[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
}

__device__ __forceinline__ void avila_mma_tf32(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2],
                                               const float (&c)[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
}

#else  // host emulation

template <int kBytes>
inline void avila_cp_async(void* shared_destination, const void* global_source, bool valid) {
    static_assert(kBytes == 4 || kBytes == 8 || kBytes == 16, "cp.async moves 4, 8 or 16 bytes");
    avila_host::cp_async(shared_destination, global_source, kBytes, valid ? kBytes : 0);
}

inline void avila_cp_async_commit() { avila_host::cp_async_commit(); }

template <int kNewestPending>
inline void avila_cp_async_wait() {
    avila_host::cp_async_wait(kNewestPending);
}

inline unsigned int avila_float_to_tf32(float value) {
    const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
    if ((bits & 0x7F800000U) == 0x7F800000U) return bits;  // inf and NaN pass through
    return (bits + 0x1000U) & 0xFFFFE000U;  // half an ulp of TF32 added to the magnitude: ties away from zero
}

inline unsigned int avila_load_u32(const void* shared_pointer) {
    AVILA_CHECK_ALIGNED(shared_pointer, 4);
    unsigned int value;
    std::memcpy(&value, shared_pointer, sizeof(value));
    return value;
}

inline void avila_mma_f16(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2], const float (&c)[4]) {
    avila_host::mma_sync(avila_host::MmaKind::f16_m16n8k16, d, a, b, c);
}
inline void avila_mma_bf16(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2], const float (&c)[4]) {
    avila_host::mma_sync(avila_host::MmaKind::bf16_m16n8k16, d, a, b, c);
}
inline void avila_mma_tf32(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2], const float (&c)[4]) {
    avila_host::mma_sync(avila_host::MmaKind::tf32_m16n8k8, d, a, b, c);
}

#endif

#endif  // AVILA_MMA_CUH
