// The geometry of a 4-D convolution and the index helpers shared by conv4d.cu (exact CUDA-core
// kernels) and conv4d_mma.cu (tensor-core implicit GEMM): one definition, one parameter list.
#ifndef AVILA_CONV4D_GEOMETRY_CUH
#define AVILA_CONV4D_GEOMETRY_CUH

namespace conv4d_detail {

struct Geometry {
    int batch, in_channels, out_channels;
    int in_t, in_x, in_y, in_z;
    int out_t, out_x, out_y, out_z;
    int k_t, k_x, k_y, k_z;
    int stride_t, stride_x, stride_y, stride_z;
    int pad_t, pad_x, pad_y, pad_z;
    int dil_t, dil_x, dil_y, dil_z;

    __device__ __forceinline__ int taps_per_time_slice() const { return k_x * k_y * k_z; }
};

__device__ __forceinline__ int ceil_div(int a, int b) { return (a + b - 1) / b; }

__device__ __forceinline__ int min_int(int a, int b) { return a < b ? a : b; }

// Rounds towards minus infinity (C's / truncates towards zero); b > 0.
__device__ __forceinline__ int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

__device__ __forceinline__ long long volume_offset(int n, int c, int channels, int t, int x, int y, int z, int size_t_,
                                                   int size_x, int size_y, int size_z) {
    return ((((static_cast<long long>(n) * channels + c) * size_t_ + t) * size_x + x) * size_y + y) * size_z + z;
}

}  // namespace conv4d_detail

#define AVILA_CONV4D_GEOMETRY_PARAMS                                                                              \
    int batch, int in_channels, int out_channels, int in_t, int in_x, int in_y, int in_z, int out_t, int out_x,     \
        int out_y, int out_z, int k_t, int k_x, int k_y, int k_z, int stride_t, int stride_x, int stride_y,         \
        int stride_z, int pad_t, int pad_x, int pad_y, int pad_z, int dil_t, int dil_x, int dil_y, int dil_z

#define AVILA_CONV4D_GEOMETRY                                                                                     \
    conv4d_detail::Geometry {                                                                                     \
        batch, in_channels, out_channels, in_t, in_x, in_y, in_z, out_t, out_x, out_y, out_z, k_t, k_x, k_y, k_z, \
            stride_t, stride_x, stride_y, stride_z, pad_t, pad_x, pad_y, pad_z, dil_t, dil_x, dil_y, dil_z        \
    }

#endif  // AVILA_CONV4D_GEOMETRY_CUH
