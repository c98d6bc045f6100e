// float16 and bfloat16 storage for the kernels without <cuda_fp16.h>/<cuda_bf16.h>, shared by the .cu files.
//
// NVRTC has no built-in copy of <cuda_fp16.h> and the CuPy wheels ship no CUDA headers, so the
// kernels carry the 16 bits themselves and convert with the PTX instructions the header's
// __half2float / __float2half_rn wrap (round to nearest even). The host emulation build uses the
// compiler's _Float16 (cuda_host.h): same 16-bit layout, same rounding. Arithmetic is never done
// on avila_half itself: values are widened to float, computed on, and rounded once when stored.
#ifndef AVILA_HALF_CUH
#define AVILA_HALF_CUH

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
struct __align__(2) avila_half {
    unsigned short bits;
};
__device__ __forceinline__ float avila_half_to_float(avila_half value) {
    float result;
    asm("cvt.f32.f16 %0, %1;" : "=f"(result) : "h"(value.bits));
    return result;
}
__device__ __forceinline__ avila_half avila_float_to_half(float value) {
    avila_half result;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(result.bits) : "f"(value));
    return result;
}
#else
#include "host_emulation/cuda_host.h"
using avila_half = __half;  // the host's _Float16
inline float avila_half_to_float(avila_half value) { return __half2float(value); }
inline avila_half avila_float_to_half(float value) { return __float2half_rn(value); }
#endif

// bfloat16 storage: the high 16 bits of a float32. Widening is a shift (exact); narrowing rounds to
// nearest even (cvt.rn.bf16.f32, sm_80+, on the GPU; the same rounding in integer arithmetic on
// the host). Like avila_half, never computed on directly.
struct avila_bf16 {
    unsigned short bits;
};
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
__device__ __forceinline__ float avila_bf16_to_float(avila_bf16 value) {
    return __int_as_float(static_cast<int>(static_cast<unsigned int>(value.bits) << 16));
}
__device__ __forceinline__ avila_bf16 avila_float_to_bf16(float value) {
    avila_bf16 result;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(result.bits) : "f"(value));
    return result;
}
#else
inline float avila_bf16_to_float(avila_bf16 value) {
    return std::bit_cast<float>(static_cast<std::uint32_t>(value.bits) << 16);
}
inline avila_bf16 avila_float_to_bf16(float value) {
    const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
    if ((bits & 0x7FFFFFFFU) > 0x7F800000U) return avila_bf16{static_cast<unsigned short>((bits >> 16) | 0x40U)};  // quiet NaN
    const std::uint32_t rounded = bits + 0x7FFFU + ((bits >> 16) & 1U);  // to nearest, ties to even
    return avila_bf16{static_cast<unsigned short>(rounded >> 16)};
}
#endif

#endif  // AVILA_HALF_CUH
