/* Fused element-wise CPU kernels for Avila ML, compiled with the package (setup.py builds this
 * file as the optional extension avila_ml.cpu_accel._kernels; where no C compiler is present the
 * build skips it and the NumPy formulas run instead). Python reaches the functions through
 * ctypes (avila_ml/cpu_accel/_native.py), which releases the GIL around each call, so the
 * callers split large arrays over the CPU threads (ops/_cpu_threads.over_batch) and each call
 * runs single-threaded on its own contiguous slice.
 *
 * Why C: each kernel here is one pass over memory where the NumPy formula needs two to four
 * (a compare, a cast, a multiply, a NaN scan), and these arrays are bandwidth-bound: ReLU's
 * backward on a (32, 32, 32, 32) float32 gradient took 0.88 ms in NumPy passes and 0.32 ms here
 * (two threads, AMD EPYC, 2026-12-07; benchmarks/bench_core.py has the rows).
 *
 * Semantics are PyTorch's CPU kernels', NaN and infinities included:
 *   relu_fwd         y = x <= 0 ? 0 : x           (NaN stays NaN; -0 -> 0)
 *   relu_bwd         dx = y <= 0 ? 0 : g          (at::threshold_backward(g, y, 0))
 *   leaky_bwd        dx = x > 0 ? g : g * slope   (at::leaky_relu_backward)
 * Each has a float32 (_f32) and a float64 (_f64) form. The loops are plain C that GCC
 * vectorises; on x86-64 Linux GCC also emits an AVX2 clone picked at load time
 * (target_clones), so one build runs on every x86-64 CPU.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define AVILA_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define AVILA_CLONES
#endif

#define AVILA_EXPORT __attribute__((visibility("default")))

/* [lo, hi) of part t of n elements cut into T parts, the cuts on multiples of 16 elements (a
 * 64-byte cache line of floats), so two threads never write into one line */
static inline void avila_part(ptrdiff_t n, int t, int T, ptrdiff_t *lo, ptrdiff_t *hi) {
    ptrdiff_t step = ((n + T - 1) / T + 15) & ~(ptrdiff_t)15;
    *lo = (ptrdiff_t)t * step < n ? (ptrdiff_t)t * step : n;
    *hi = *lo + step < n ? *lo + step : n;
}

/* CALL (an expression using lo_ and hi_) over [0, n): on an OpenMP team of `threads` threads
 * (the enclosing function's parameter), one contiguous part each, or in the calling thread alone
 * when threads <= 1. The team is the OpenMP runtime's pool, shared with oneDNN's kernels. */
#ifdef _OPENMP
#include <omp.h>
#define AVILA_FOR_PARTS(n, CALL)                                                                \
    do {                                                                                        \
        if (threads > 1) {                                                                      \
            _Pragma("omp parallel num_threads(threads)")                                        \
            {                                                                                   \
                ptrdiff_t lo_, hi_;                                                             \
                avila_part((n), omp_get_thread_num(), omp_get_num_threads(), &lo_, &hi_);       \
                if (hi_ > lo_) CALL;                                                            \
            }                                                                                   \
        } else {                                                                                \
            ptrdiff_t lo_ = 0, hi_ = (n);                                                       \
            CALL;                                                                               \
        }                                                                                       \
    } while (0)
#else
#define AVILA_FOR_PARTS(n, CALL)                                                                \
    do {                                                                                        \
        (void)threads;                                                                          \
        ptrdiff_t lo_ = 0, hi_ = (n);                                                           \
        CALL;                                                                                   \
    } while (0)
#endif

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

/* the version the Python side checks, so a stale build (an older .so left by an editable
 * install) is refused instead of called with the wrong arguments */
AVILA_EXPORT int avila_kernels_version(void) { return 2; }

/* an importable module (setuptools builds extensions as modules); its functions are the C
 * symbols above, reached through ctypes */
static struct PyModuleDef kernels_module = {
    PyModuleDef_HEAD_INIT, "_kernels",
    "Fused element-wise CPU kernels of Avila ML, called through ctypes (avila_ml.cpu_accel._native).",
    -1, NULL,
};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&kernels_module); }
