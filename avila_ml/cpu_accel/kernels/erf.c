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
 *
 *   gelu_bwd      exact GELU's input gradient dx = g (Phi(x) + x phi(x)), phi(x) = exp(-x^2/2) /
 *                 sqrt(2 pi): float32 takes Phi from the rational form above (coefficients of
 *                 _erf_float32's normal CDF, add = 1/2) and exp from avila_exp.h, in the order
 *                 of GELU.backward's NumPy passes (p = x x; p *= -1/2; p = exp(p); p *= x;
 *                 p *= 1/sqrt(2 pi); d = Phi + p; dx = d g); float64 takes Phi = (1 + erf(x /
 *                 sqrt 2)) / 2 with libm's erf (its coefficients unused), as the float64 formula
 *                 of GELU.backward. Beyond the clip (|x| >= c) Phi is exactly 0 or 1, as float32's
 *                 erf rounds to -+1 there (the FMA-contracted clones would leave a ~3e-7 residue
 *                 the NumPy form does not have). x = +-inf gives NaN (inf times exp(-inf) = 0),
 *                 as PyTorch's.
 */
#include <math.h>

#include "avila_kernels.h"
#include "avila_exp.h"

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

/* gelu_bwd's clones: x86-64-v4 (AVX-512) and x86-64-v3 (AVX2 with FMA) beside the baseline */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && defined(__x86_64__) && defined(__linux__)
#define GELU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define GELU_CLONES AVILA_CLONES
#endif
#define INV_SQRT_2PI 0.3989422804014327
#define INV_SQRT_2 0.7071067811865476

/* Phi(v) by the rational form (coefficients of _erf_float32's normal CDF, add = 1/2), exactly 0
 * or 1 beyond the clip: float32's erf rounds to -+1 there, and the FMA-contracted clones would
 * leave a ~3e-7 residue the NumPy form does not have (PyTorch's GELU gives -0.0 / x there) */
static inline float normal_cdf_f32(float v, const float *p, const float *q, float c) {
    float a = v < -c ? -c : (v > c ? c : v);
    float t = a * a;
    float u = t * p[5], w = t * q[5];
    u += p[4]; u *= t; u += p[3]; u *= t; u += p[2]; u *= t; u += p[1]; u *= t; u += p[0];
    w += q[4]; w *= t; w += q[3]; w *= t; w += q[2]; w *= t; w += q[1]; w *= t; w += q[0];
    u *= a;
    float cdf = u / w;
    cdf += 0.5f;
    return v <= -c ? 0.0f : (v >= c ? 1.0f : cdf);
}

GELU_CLONES static void gelu_bwd_part_f32(const float *restrict g, const float *restrict x, float *restrict dx,
                                           const float *p, const float *q, float c, ptrdiff_t lo, ptrdiff_t hi) {
    for (ptrdiff_t i = lo; i < hi; i++) {
        float v = x[i];
        float cdf = normal_cdf_f32(v, p, q, c);
        float e = v * v;
        e *= -0.5f;
        e = exp_f32(e);
        e *= v;
        e *= (float)INV_SQRT_2PI;
        cdf += e;
        dx[i] = cdf * g[i];
    }
}

GELU_CLONES static void gelu_bwd_part_f64(const double *restrict g, const double *restrict x, double *restrict dx,
                                           ptrdiff_t lo, ptrdiff_t hi) {
    for (ptrdiff_t i = lo; i < hi; i++) {
        double v = x[i];
        double d = 0.5 * (1.0 + erf(v * INV_SQRT_2)) + v * exp_f64(-0.5 * (v * v)) * INV_SQRT_2PI;
        dx[i] = g[i] * d;
    }
}

AVILA_EXPORT void avila_gelu_bwd_f32(const float *g, const float *x, float *dx, const float *coefs, float c,
                                     ptrdiff_t n, int threads) {
    AVILA_FOR_PARTS(n, gelu_bwd_part_f32(g, x, dx, coefs, coefs + 6, c, lo_, hi_));
}

AVILA_EXPORT void avila_gelu_bwd_f64(const double *g, const double *x, double *dx, const double *coefs, double c,
                                     ptrdiff_t n, int threads) {
    (void)coefs;
    (void)c;
    AVILA_FOR_PARTS(n, gelu_bwd_part_f64(g, x, dx, lo_, hi_));
}

/* gelu_fwd: exact GELU y = x Phi(x): float32 with the rational normal CDF (coefficients as
 * gelu_bwd's), float64 with libm's erf (coefficients unused); the clones of gelu_bwd. */
GELU_CLONES static void gelu_fwd_part_f32(const float *restrict x, float *restrict y, const float *p, const float *q,
                                          float c, ptrdiff_t lo, ptrdiff_t hi) {
    for (ptrdiff_t i = lo; i < hi; i++) {
        float v = x[i];
        y[i] = normal_cdf_f32(v, p, q, c) * v;
    }
}

GELU_CLONES static void gelu_fwd_part_f64(const double *restrict x, double *restrict y, ptrdiff_t lo, ptrdiff_t hi) {
    for (ptrdiff_t i = lo; i < hi; i++) {
        double v = x[i];
        y[i] = v * (0.5 * (1.0 + erf(v * INV_SQRT_2)));
    }
}

AVILA_EXPORT void avila_gelu_fwd_f32(const float *x, float *y, const float *coefs, float c, ptrdiff_t n, int threads) {
    AVILA_FOR_PARTS(n, gelu_fwd_part_f32(x, y, coefs, coefs + 6, c, lo_, hi_));
}

AVILA_EXPORT void avila_gelu_fwd_f64(const double *x, double *y, const double *coefs, double c, ptrdiff_t n,
                                     int threads) {
    (void)coefs;
    (void)c;
    AVILA_FOR_PARTS(n, gelu_fwd_part_f64(x, y, lo_, hi_));
}
