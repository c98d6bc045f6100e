/* Element-wise binary arithmetic of two same-shaped C-contiguous arrays (avila_kernels.h has the
 * build and the conventions; avila_ml/cpu_accel/_native.py's add/sub/mul/div the Python side).
 *
 *   add   out = a + b      sub   out = a - b      mul   out = a * b      div   out = a / b
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

#define DEFINE_ALL(T, SUF)                                                                      \
    DEFINE_BINARY(add, +, T, SUF)                                                               \
    DEFINE_BINARY(sub, -, T, SUF)                                                               \
    DEFINE_BINARY(mul, *, T, SUF)                                                               \
    DEFINE_BINARY(div, /, T, SUF)

DEFINE_ALL(float, f32)
DEFINE_ALL(double, f64)
