// C ABI of the host-emulated kernels, loaded from Python with ctypes.
//
// One entry point launches any kernel by name with the argument convention of cudaLaunchKernel:
// `args[i]` points at the value of the i-th kernel parameter. Python also passes the byte size it
// packed for each argument; a mismatch with the kernel's real signature (an int32 passed where the
// kernel takes a long long, a missing argument) is reported instead of silently reading garbage,
// which is exactly the class of launcher bug that the GPU path cannot detect.
#include "cuda_host.h"

// AVILA_HOST_TENSOR_CORE_ONLY builds the tensor-core kernels alone (the mutation tests compile
// edited copies of them; the other kernels would only add build time).
#ifndef AVILA_HOST_TENSOR_CORE_ONLY
#include "../attention.cu"
#include "../conv4d.cu"
#endif
#include "../attention_mma.cu"
#include "../conv4d_mma.cu"

#include <cstdio>
#include <exception>
#include <string_view>

namespace {

using PackedLauncher = void (*)(void** args, dim3 grid, dim3 block, std::size_t shared_bytes);

struct KernelEntry {
    const char* name;
    PackedLauncher launch;
    int parameter_count;
    const std::size_t* parameter_sizes;
};

template <typename Param>
Param unpack_argument(void* source) {
    Param value;
    std::memcpy(&value, source, sizeof(Param));
    return value;
}

template <typename... Params, std::size_t... I>
void launch_unpacked(void (*kernel)(Params...), void** args, dim3 grid, dim3 block, std::size_t shared_bytes,
                     std::index_sequence<I...>) {
    avila_host::launch(kernel, grid, block, shared_bytes, unpack_argument<Params>(args[I])...);
}

template <auto Kernel>
struct KernelTraits;

template <typename... Params, void (*Kernel)(Params...)>
struct KernelTraits<Kernel> {
    static constexpr std::size_t sizes[sizeof...(Params) + 1] = {sizeof(Params)..., 0};
    static void launch(void** args, dim3 grid, dim3 block, std::size_t shared_bytes) {
        launch_unpacked(Kernel, args, grid, block, shared_bytes, std::index_sequence_for<Params...>{});
    }
    static KernelEntry entry(const char* name) {
        return KernelEntry{name, &launch, static_cast<int>(sizeof...(Params)), sizes};
    }
};

#define AVILA_HOST_KERNEL(name) KernelTraits<&name>::entry(#name)

#define AVILA_HOST_ATTENTION_KERNELS(suffix)                                                               \
    AVILA_HOST_KERNEL(flash_attention_forward_##suffix), AVILA_HOST_KERNEL(flash_attention_backward_dkdv_##suffix), \
        AVILA_HOST_KERNEL(flash_attention_backward_dq_##suffix)

#define AVILA_HOST_CONV4D_MMA_TILE(precision, tile)                                                           \
    AVILA_HOST_KERNEL(conv4d_mma_forward_##precision##_##tile),                                                 \
        AVILA_HOST_KERNEL(conv4d_mma_grad_input_##precision##_##tile),                                          \
        AVILA_HOST_KERNEL(conv4d_mma_grad_weight_##precision##_##tile)

#define AVILA_HOST_CONV4D_MMA_KERNELS(precision)                                                              \
    AVILA_HOST_CONV4D_MMA_TILE(precision, 32x32), AVILA_HOST_CONV4D_MMA_TILE(precision, 64x32),               \
        AVILA_HOST_CONV4D_MMA_TILE(precision, 64x64), AVILA_HOST_CONV4D_MMA_TILE(precision, 128x64)

#define AVILA_HOST_ATTENTION_MMA_KERNELS(precision, hd)                                                       \
    AVILA_HOST_KERNEL(attention_mma_forward_##precision##_hd##hd),                                              \
        AVILA_HOST_KERNEL(attention_mma_backward_dkdv_##precision##_hd##hd),                                    \
        AVILA_HOST_KERNEL(attention_mma_backward_dq_##precision##_hd##hd)

const KernelEntry kKernels[] = {
    AVILA_HOST_CONV4D_MMA_KERNELS(f16),
    AVILA_HOST_CONV4D_MMA_KERNELS(bf16),
    AVILA_HOST_CONV4D_MMA_KERNELS(tf32),
    AVILA_HOST_KERNEL(conv4d_mma_round_f32_to_f16),
    AVILA_HOST_KERNEL(conv4d_mma_round_f32_to_bf16),
    AVILA_HOST_KERNEL(attention_mma_delta_f16),
    AVILA_HOST_KERNEL(attention_mma_delta_bf16),
    AVILA_HOST_ATTENTION_MMA_KERNELS(f16, 32),
    AVILA_HOST_ATTENTION_MMA_KERNELS(f16, 64),
    AVILA_HOST_ATTENTION_MMA_KERNELS(f16, 128),
    AVILA_HOST_ATTENTION_MMA_KERNELS(f16, 256),
    AVILA_HOST_ATTENTION_MMA_KERNELS(bf16, 32),
    AVILA_HOST_ATTENTION_MMA_KERNELS(bf16, 64),
    AVILA_HOST_ATTENTION_MMA_KERNELS(bf16, 128),
    AVILA_HOST_ATTENTION_MMA_KERNELS(bf16, 256),
#ifndef AVILA_HOST_TENSOR_CORE_ONLY
    AVILA_HOST_KERNEL(conv4d_forward_f32),
    AVILA_HOST_KERNEL(conv4d_forward_f64),
    AVILA_HOST_KERNEL(conv4d_grad_input_f32),
    AVILA_HOST_KERNEL(conv4d_grad_input_f64),
    AVILA_HOST_KERNEL(conv4d_grad_weight_f32),
    AVILA_HOST_KERNEL(conv4d_grad_weight_f64),
    AVILA_HOST_KERNEL(conv4d_forward_f16),
    AVILA_HOST_KERNEL(conv4d_grad_input_f16),
    AVILA_HOST_KERNEL(conv4d_grad_weight_f16),
    AVILA_HOST_KERNEL(conv4d_round_f32_to_f16),
    AVILA_HOST_KERNEL(flash_attention_backward_preprocess_f32),
    AVILA_HOST_KERNEL(flash_attention_backward_preprocess_f16),
    AVILA_HOST_ATTENTION_KERNELS(f32_hd32),
    AVILA_HOST_ATTENTION_KERNELS(f32_hd64),
    AVILA_HOST_ATTENTION_KERNELS(f32_hd128),
    AVILA_HOST_ATTENTION_KERNELS(f16_hd32),
    AVILA_HOST_ATTENTION_KERNELS(f16_hd64),
    AVILA_HOST_ATTENTION_KERNELS(f16_hd128),
#endif
};

void write_error(char* error, std::size_t error_size, const std::string& message) {
    if (error_size > 0) std::snprintf(error, error_size, "%s", message.c_str());
}

}  // namespace

// Returns 0 on success; otherwise 1 and a message in `error`.
extern "C" int avila_host_launch(const char* kernel_name, void** args, int arg_count, const std::size_t* arg_sizes,
                                 const unsigned int* grid, const unsigned int* block, std::size_t shared_bytes,
                                 char* error, std::size_t error_size) {
    for (const KernelEntry& entry : kKernels) {
        if (std::string_view(entry.name) != kernel_name) continue;
        if (arg_count != entry.parameter_count) {
            write_error(error, error_size,
                        std::string(kernel_name) + " takes " + std::to_string(entry.parameter_count) +
                            " arguments, the launch plan passed " + std::to_string(arg_count));
            return 1;
        }
        for (int i = 0; i < arg_count; ++i) {
            if (arg_sizes[i] != entry.parameter_sizes[i]) {
                write_error(error, error_size,
                            std::string(kernel_name) + ": argument " + std::to_string(i) + " is " +
                                std::to_string(entry.parameter_sizes[i]) +
                                " bytes in the kernel, the launch plan packed " + std::to_string(arg_sizes[i]));
                return 1;
            }
        }
        try {
            entry.launch(args, dim3(grid[0], grid[1], grid[2]), dim3(block[0], block[1], block[2]), shared_bytes);
        } catch (const std::exception& exc) {
            write_error(error, error_size, std::string(kernel_name) + ": " + exc.what());
            return 1;
        }
        return 0;
    }
    write_error(error, error_size, std::string("no host-emulated kernel named ") + kernel_name);
    return 1;
}
