/* Element-wise activation kernels of Avila ML (avila_kernels.h has the build and the
 * conventions; avila_ml/cpu_accel/_native.py the Python side, which calls each through ctypes
 * with the GIL released and splits nothing itself: large arrays are cut into one contiguous
 * range per OpenMP thread here).
 *
 * Why C: each kernel here is one pass over memory where the NumPy formula needs two to four
 * (a compare, a cast, a multiply, a NaN scan), and these arrays are bandwidth-bound: ReLU's
 * backward on a (32, 32, 32, 32) float32 gradient took 0.88 ms per call in the residual CNN step
 * as NumPy passes and 0.35 ms here (per-op profile of benchmarks/bench_programs.py's step, two
 * threads, AMD EPYC, 2026-12-07; bench_core.py's ReLU rows time the ops).
 *
 * Semantics are PyTorch's CPU kernels', NaN and infinities included:
 *   relu_fwd         y = x <= 0 ? 0 : x           (NaN stays NaN; -0 -> 0)
 *   relu_bwd         dx = y <= 0 ? 0 : g          (at::threshold_backward(g, y, 0))
 *   leaky_bwd        dx = x > 0 ? g : g * slope   (at::leaky_relu_backward)
 * Each has a float32 (_f32) and a float64 (_f64) form.
 */
#include "avila_kernels.h"

#define DEFINE_KERNELS(T, SUF)                                                                  \
    AVILA_CLONES static void relu_fwd_##SUF(const T *x, T *y, ptrdiff_t lo, ptrdiff_t hi) {     \
        for (ptrdiff_t i = lo; i < hi; i++) {                                                   \
            T v = x[i];                                                                         \
            y[i] = (v <= (T)0) ? (T)0 : v;                                                      \
        }                                                                                       \
    }                                                                                           \
    AVILA_CLONES static void relu_bwd_##SUF(const T *restrict g, const T *restrict y,           \
                                            T *restrict dx, ptrdiff_t lo, ptrdiff_t hi) {       \
        for (ptrdiff_t i = lo; i < hi; i++) {                                                   \
            T gi = g[i]; /* read unconditionally: a plain vector load, not a masked one */     \
            dx[i] = (y[i] <= (T)0) ? (T)0 : gi;                                                 \
        }                                                                                       \
    }                                                                                           \
    AVILA_CLONES static void leaky_bwd_##SUF(const T *restrict g, const T *restrict x,          \
                                             T *restrict dx, T slope, ptrdiff_t lo, ptrdiff_t hi) { \
        for (ptrdiff_t i = lo; i < hi; i++) {                                                   \
            T gi = g[i];                                                                        \
            dx[i] = (x[i] > (T)0) ? gi : gi * slope; /* a blend (-fno-trapping-math) */        \
        }                                                                                       \
    }                                                                                           \
    AVILA_EXPORT void avila_relu_fwd_##SUF(const T *x, T *y, ptrdiff_t n, int threads) {        \
        AVILA_FOR_PARTS(n, relu_fwd_##SUF(x, y, lo_, hi_));                                     \
    }                                                                                           \
    AVILA_EXPORT void avila_relu_bwd_##SUF(const T *g, const T *y, T *dx, ptrdiff_t n, int threads) { \
        AVILA_FOR_PARTS(n, relu_bwd_##SUF(g, y, dx, lo_, hi_));                                 \
    }                                                                                           \
    AVILA_EXPORT void avila_leaky_bwd_##SUF(const T *g, const T *x, T *dx, T slope, ptrdiff_t n, \
                                            int threads) {                                      \
        AVILA_FOR_PARTS(n, leaky_bwd_##SUF(g, x, dx, slope, lo_, hi_));                         \
    }

DEFINE_KERNELS(float, f32)
DEFINE_KERNELS(double, f64)

