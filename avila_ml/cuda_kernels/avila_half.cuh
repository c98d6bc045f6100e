// float16 storage for the kernels without <cuda_fp16.h>, shared by attention.cu and conv4d.cu.
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

#endif  // AVILA_HALF_CUH
