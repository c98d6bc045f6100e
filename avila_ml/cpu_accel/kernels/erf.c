/* The float32 rational error function of avila_ml/backends/_erf_float32.py in one pass
 * (avila_kernels.h has the build and the conventions; that module calls it through
 * avila_ml/cpu_accel/_native.py's erf_rational, and keeps its NumPy passes as the fallback):
 *
 *   erf_rational  out = (a P(a^2) / Q(a^2) + add) * (x if times_x else 1),   a = clip(x, -c, c)
 *                 (add = 0: no addition at all, as the NumPy form without one: -0 stays -0)
 *
 * P and Q of degree 5 (coefficients p[0..5], q[0..5], ascending), evaluated by Horner in the
 * same operations and order as the NumPy passes (t = a a; u = t p5; u += p4; u *= t; ...; u +=
 * p0; the same for Q; u *= a; o = u / v; o += add; o *= x), each rounded to the array's type, so
 * the results are bitwise those of the NumPy form (no fused multiply-add: the clones target
 * AVX2, which has none). NaN stays NaN (the clip keeps it), +-inf clip to +-c. Where NumPy made
 * ~25 passes over a chunk in L2, this makes one, split over the OpenMP team.
 */
#include "avila_kernels.h"

#define DEFINE_ERF(T, SUF)                                                                      \
    AVILA_CLONES static void erf_part_##SUF(const T *x, T *out, const T *p, const T *q, T c, T add, \
                                            int times_x, ptrdiff_t lo, ptrdiff_t hi) {          \
        for (ptrdiff_t i = lo; i < hi; i++) {                                                   \
            T v = x[i];                                                                         \
            T a = v < -c ? -c : (v > c ? c : v);                                                \
            T t = a * a;                                                                        \
            T u = t * p[5], w = t * q[5];                                                       \
            u += p[4]; u *= t; u += p[3]; u *= t; u += p[2]; u *= t; u += p[1]; u *= t; u += p[0]; \
            w += q[4]; w *= t; w += q[3]; w *= t; w += q[2]; w *= t; w += q[1]; w *= t; w += q[0]; \
            u *= a;                                                                             \
            T o = u / w;                                                                        \
            o = add != 0 ? o + add : o; /* add = 0: none (the NumPy form skips it; -0 stays -0) */ \
            out[i] = times_x ? o * v : o;                                                       \
        }                                                                                       \
    }                                                                                           \
    AVILA_EXPORT void avila_erf_rational_##SUF(const T *x, T *out, const T *coefs, T c, T add, int times_x, \
                                               ptrdiff_t n, int threads) {                      \
        AVILA_FOR_PARTS(n, erf_part_##SUF(x, out, coefs, coefs + 6, c, add, times_x, lo_, hi_)); \
    }

DEFINE_ERF(float, f32)
DEFINE_ERF(double, f64)
