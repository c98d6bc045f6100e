/* Element-wise binary arithmetic of two same-shaped C-contiguous arrays (avila_kernels.h has the
 * build and the conventions; avila_ml/cpu_accel/_native.py's add/sub/mul/div the Python side).
 *
 *   add   out = a + b      sub   out = a - b      mul   out = a * b      div   out = a / b
 *   and the same with one operand a number s: add_s, sub_s (a - s), rsub_s (s - a), mul_s,
 *   div_s (a / s), rdiv_s (s / a)
 *
 * IEEE operations, each correctly rounded, so the results are bitwise NumPy's and PyTorch's;
 * `out` may be `a` or `b` (in place). What this adds over NumPy's own loops is the split over
 * the OpenMP team: NumPy runs an element-wise ufunc on one thread, PyTorch on all of them.
 */
#include "avila_kernels.h"

#define DEFINE_BINARY(NAME, OP, T, SUF)                                                         \
    AVILA_CLONES static void NAME##_##SUF(const T *a, const T *b, T *out, ptrdiff_t lo,         \
                                          ptrdiff_t hi) {                                       \
        for (ptrdiff_t i = lo; i < hi; i++) out[i] = a[i] OP b[i];                              \
    }                                                                                           \
    AVILA_EXPORT void avila_##NAME##_##SUF(const T *a, const T *b, T *out, ptrdiff_t n,         \
                                           int threads) {                                       \
        AVILA_FOR_PARTS(n, NAME##_##SUF(a, b, out, lo_, hi_));                                  \
    }

/* one operand a number (a 0-d or size-1 array broadcast over the other): out = a OP s, or
 * out = s OP a for the reversed forms (rsub_s, rdiv_s) */
#define DEFINE_SCALAR(NAME, EXPR, T, SUF)                                                       \
    AVILA_CLONES static void NAME##_##SUF(const T *a, T s, T *out, ptrdiff_t lo, ptrdiff_t hi) { \
        for (ptrdiff_t i = lo; i < hi; i++) out[i] = EXPR;                                      \
    }                                                                                           \
    AVILA_EXPORT void avila_##NAME##_##SUF(const T *a, T s, T *out, ptrdiff_t n, int threads) {  \
        AVILA_FOR_PARTS(n, NAME##_##SUF(a, s, out, lo_, hi_));                                  \
    }

#define DEFINE_ALL(T, SUF)                                                                      \
    DEFINE_BINARY(add, +, T, SUF)                                                               \
    DEFINE_BINARY(sub, -, T, SUF)                                                               \
    DEFINE_BINARY(mul, *, T, SUF)                                                               \
    DEFINE_BINARY(div, /, T, SUF)                                                               \
    DEFINE_SCALAR(add_s, a[i] + s, T, SUF)                                                      \
    DEFINE_SCALAR(sub_s, a[i] - s, T, SUF)                                                      \
    DEFINE_SCALAR(rsub_s, s - a[i], T, SUF)                                                     \
    DEFINE_SCALAR(mul_s, a[i] * s, T, SUF)                                                      \
    DEFINE_SCALAR(div_s, a[i] / s, T, SUF)                                                      \
    DEFINE_SCALAR(rdiv_s, s / a[i], T, SUF)

DEFINE_ALL(float, f32)
DEFINE_ALL(double, f64)
