/* Shared macros of the element-wise CPU kernels compiled with Avila ML (the optional extension
 * avila_ml.cpu_accel._kernels, built by setup.py from every .c file in this directory; Python
 * binds the exported functions by name through ctypes, avila_ml/cpu_accel/_native.py).
 *
 * Conventions for a kernel file:
 *   - export with AVILA_EXPORT a function named avila_<name>_f32 and avila_<name>_f64 (float and
 *     double forms), pointers first, then scalars, then the element count(s), then `int threads`;
 *   - inner loops are plain C that GCC vectorises, marked AVILA_CLONES (an AVX2 clone besides the
 *     baseline one on x86-64 Linux, picked at load time);
 *   - split work over the OpenMP team with AVILA_FOR_PARTS (contiguous element ranges) or an
 *     `omp parallel for` over rows/channels guarded by `if (threads > 1)`; with threads <= 1 no
 *     OpenMP region is entered (a forked child must not enter one: see _dnnl.guard_fork);
 *   - results are PyTorch's CPU kernels', NaN and infinities included. The file is compiled with
 *     -O3 -fno-trapping-math -fopenmp (setup.py): selects between two computed values vectorise.
 */
#ifndef AVILA_KERNELS_H
#define AVILA_KERNELS_H
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

/* CALL (an expression using the item index it_) for every it_ in [0, n): items (channels,
 * planes) split statically over an OpenMP team of `threads` threads, or in the calling thread
 * alone when threads <= 1 */
#ifdef _OPENMP
#define AVILA_FOR_ITEMS(n, CALL)                                                                \
    do {                                                                                        \
        if (threads > 1) {                                                                      \
            _Pragma("omp parallel for schedule(static) num_threads(threads)")                   \
            for (ptrdiff_t it_ = 0; it_ < (n); it_++) CALL;                                     \
        } else {                                                                                \
            for (ptrdiff_t it_ = 0; it_ < (n); it_++) CALL;                                     \
        }                                                                                       \
    } while (0)
#else
#define AVILA_FOR_ITEMS(n, CALL)                                                                \
    do {                                                                                        \
        (void)threads;                                                                          \
        for (ptrdiff_t it_ = 0; it_ < (n); it_++) CALL;                                         \
    } while (0)
#endif

/* CALL (an expression using lo_, hi_ and the thread index t_) over rows [0, rows): on an OpenMP
 * team of `threads` threads, one contiguous block of rows each (block t_ of T_: rows t_/T_ to
 * (t_+1)/T_), or in the calling thread alone (t_ = 0, all rows) when threads <= 1 */
#ifdef _OPENMP
#define AVILA_FOR_ROW_BLOCKS(rows, CALL)                                                        \
    do {                                                                                        \
        if (threads > 1) {                                                                      \
            _Pragma("omp parallel num_threads(threads)")                                        \
            {                                                                                   \
                ptrdiff_t t_ = omp_get_thread_num(), T_ = omp_get_num_threads();                \
                ptrdiff_t lo_ = (rows) * t_ / T_, hi_ = (rows) * (t_ + 1) / T_;                  \
                if (hi_ > lo_) CALL;                                                            \
            }                                                                                   \
        } else {                                                                                \
            ptrdiff_t t_ = 0, lo_ = 0, hi_ = (rows);                                            \
            (void)t_;                                                                           \
            CALL;                                                                               \
        }                                                                                       \
    } while (0)
#else
#define AVILA_FOR_ROW_BLOCKS(rows, CALL)                                                        \
    do {                                                                                        \
        (void)threads;                                                                          \
        ptrdiff_t t_ = 0, lo_ = 0, hi_ = (rows);                                                \
        (void)t_;                                                                               \
        CALL;                                                                                   \
    } while (0)
#endif

#endif /* AVILA_KERNELS_H */
