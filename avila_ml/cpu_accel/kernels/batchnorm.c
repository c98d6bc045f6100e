/* Batch normalisation (training mode) of an (N, C, S) C-contiguous array, statistics per channel
 * over the M = N S values of the batch and the positions (avila_kernels.h has the build and the
 * conventions; avila_ml/cpu_accel/_native_batchnorm.py the Python side).
 *
 *   bn_fwd   mean = sum(x) / M,  var = sum((x - mean)^2) / M  (two passes, biased),
 *            rstd = 1 / sqrt(var + eps),  y = x a + b'  with  a = rstd w,  b' = bias - mean a
 *            (PyTorch's batch_norm_cpu_transform_input form)
 *   bn_bwd   sg = sum(g),  sgx = rstd sum(g (x - mean))  (= sum(g xhat): dweight = sgx, dbias = sg)
 *            dx = (g - (x - mean) rstd sgx / M - sg / M) a   (native_batch_norm_backward's order)
 *   chan_sum out = sum(x) per channel (a convolution's bias gradient)
 *
 * Sums are accumulated in double (PyTorch's CPU accumulation type for float), over 16
 * independent lanes, so GCC vectorises them without reassociating anything: the result does not
 * depend on the thread count (each channel is summed by one thread, in one order). Channels are
 * split over the OpenMP team, and a channel's passes follow each other, so its N S values (128
 * KiB for (32, 32, 32, 32) float32) can still be in the core's 512 KiB L2 for the second and
 * third (a design choice, not measured separately; the whole kernel's figures are at
 * ops/normalization.py's _NATIVE_MIN_S).
 * Without the input's saved copy of x - mean the backward needs no full-size temporary.
 */
#include <math.h>
#include "avila_kernels.h"

#define LANES 16

#define DEFINE_BATCHNORM(T, SUF)                                                                \
    /* sum of x[k] over one row of S values, into 16 double lanes */                            \
    AVILA_CLONES static void bn_sum_##SUF(const T *restrict x, ptrdiff_t s, double *restrict acc) { \
        ptrdiff_t i = 0;                                                                        \
        for (; i + LANES <= s; i += LANES)                                                      \
            for (int j = 0; j < LANES; j++) acc[j] += (double)x[i + j];                         \
        for (; i < s; i++) acc[i % LANES] += (double)x[i];                                      \
    }                                                                                           \
    /* sum of (x - m)^2 over one row */                                                         \
    AVILA_CLONES static void bn_sqdev_##SUF(const T *restrict x, ptrdiff_t s, double m,         \
                                            double *restrict acc) {                             \
        ptrdiff_t i = 0;                                                                        \
        for (; i + LANES <= s; i += LANES)                                                      \
            for (int j = 0; j < LANES; j++) {                                                   \
                double d = (double)x[i + j] - m;                                                \
                acc[j] += d * d;                                                                \
            }                                                                                   \
        for (; i < s; i++) {                                                                    \
            double d = (double)x[i] - m;                                                        \
            acc[i % LANES] += d * d;                                                            \
        }                                                                                       \
    }                                                                                           \
    /* y = x a + b over one row */                                                              \
    AVILA_CLONES static void bn_affine_##SUF(const T *restrict x, T *restrict y, ptrdiff_t s,    \
                                             T a, T b) {                                        \
        for (ptrdiff_t i = 0; i < s; i++) y[i] = x[i] * a + b;                                  \
    }                                                                                           \
    /* sum of g and of g (x - m) over one row */                                                \
    AVILA_CLONES static void bn_gsums_##SUF(const T *restrict g, const T *restrict x, ptrdiff_t s, \
                                            double m, double *restrict acc_g,                   \
                                            double *restrict acc_gx) {                          \
        ptrdiff_t i = 0;                                                                        \
        for (; i + LANES <= s; i += LANES)                                                      \
            for (int j = 0; j < LANES; j++) {                                                   \
                double gj = (double)g[i + j];                                                   \
                acc_g[j] += gj;                                                                 \
                acc_gx[j] += gj * ((double)x[i + j] - m);                                       \
            }                                                                                   \
        for (; i < s; i++) {                                                                    \
            double gj = (double)g[i];                                                           \
            acc_g[i % LANES] += gj;                                                             \
            acc_gx[i % LANES] += gj * ((double)x[i] - m);                                       \
        }                                                                                       \
    }                                                                                           \
    /* dx = (g - (x - m) k - gm) a over one row (PyTorch's order: x - m first, no cancellation \
       against a large mean) */                                                                 \
    AVILA_CLONES static void bn_dx_##SUF(const T *restrict g, const T *restrict x, T *restrict dx, \
                                         ptrdiff_t s, T m, T k, T gm, T a) {                    \
        for (ptrdiff_t i = 0; i < s; i++) dx[i] = (g[i] - (x[i] - m) * k - gm) * a;             \
    }                                                                                           \
    static inline double bn_total_##SUF(const double *acc) {                                                 \
        double t = 0.0;                                                                         \
        for (int j = 0; j < LANES; j++) t += acc[j];                                            \
        return t;                                                                               \
    }                                                                                           \
    static void bn_fwd_channel_##SUF(const T *x, const T *w, const T *b, T *y, T *mean, T *var,  \
                                     T *rstd, ptrdiff_t n, ptrdiff_t c, ptrdiff_t s, ptrdiff_t ch, \
                                     double eps) {                                              \
        double acc[LANES] = {0};                                                                \
        double m_count = (double)n * (double)s;                                                 \
        for (ptrdiff_t k = 0; k < n; k++) bn_sum_##SUF(x + (k * c + ch) * s, s, acc);           \
        double mu = bn_total_##SUF(acc) / m_count;                                                    \
        for (int j = 0; j < LANES; j++) acc[j] = 0.0;                                           \
        for (ptrdiff_t k = 0; k < n; k++) bn_sqdev_##SUF(x + (k * c + ch) * s, s, mu, acc);     \
        double v = bn_total_##SUF(acc) / m_count;                                                     \
        double r = 1.0 / sqrt(v + eps);                                                         \
        double a = w ? r * (double)w[ch] : r;                                                   \
        double bb = (b ? (double)b[ch] : 0.0) - mu * a;                                         \
        mean[ch] = (T)mu;                                                                       \
        var[ch] = (T)v;                                                                         \
        rstd[ch] = (T)r;                                                                        \
        for (ptrdiff_t k = 0; k < n; k++)                                                       \
            bn_affine_##SUF(x + (k * c + ch) * s, y + (k * c + ch) * s, s, (T)a, (T)bb);        \
    }                                                                                           \
    AVILA_EXPORT void avila_bn_fwd_##SUF(const T *x, const T *w, const T *b, T *y, T *mean, T *var, \
                                         T *rstd, double eps, ptrdiff_t n, ptrdiff_t c,         \
                                         ptrdiff_t s, int threads) {                            \
        AVILA_FOR_ITEMS(c, bn_fwd_channel_##SUF(x, w, b, y, mean, var, rstd, n, c, s, it_, eps)); \
    }                                                                                           \
    static void bn_bwd_channel_##SUF(const T *g, const T *x, const T *mean, const T *rstd,      \
                                     const T *w, T *dx, T *sg, T *sgx, ptrdiff_t n, ptrdiff_t c, \
                                     ptrdiff_t s, ptrdiff_t ch) {                               \
        double acc_g[LANES] = {0}, acc_gx[LANES] = {0};                                         \
        double mu = (double)mean[ch], r = (double)rstd[ch];                                     \
        for (ptrdiff_t k = 0; k < n; k++)                                                       \
            bn_gsums_##SUF(g + (k * c + ch) * s, x + (k * c + ch) * s, s, mu, acc_g, acc_gx);   \
        double tg = bn_total_##SUF(acc_g), tgx = bn_total_##SUF(acc_gx) * r;                                \
        sg[ch] = (T)tg;                                                                         \
        sgx[ch] = (T)tgx;                                                                       \
        if (!dx) return;                                                                        \
        double inv_m = 1.0 / ((double)n * (double)s);                                           \
        double a = w ? r * (double)w[ch] : r;                                                   \
        /* dx = a (g - (x - mu) r tgx / M - tg / M) */                                          \
        for (ptrdiff_t k = 0; k < n; k++)                                                       \
            bn_dx_##SUF(g + (k * c + ch) * s, x + (k * c + ch) * s, dx + (k * c + ch) * s, s,   \
                        (T)mu, (T)(r * tgx * inv_m), (T)(tg * inv_m), (T)a);                    \
    }                                                                                           \
    AVILA_EXPORT void avila_bn_bwd_##SUF(const T *g, const T *x, const T *mean, const T *rstd,  \
                                         const T *w, T *dx, T *sg, T *sgx, ptrdiff_t n,         \
                                         ptrdiff_t c, ptrdiff_t s, int threads) {               \
        AVILA_FOR_ITEMS(c, bn_bwd_channel_##SUF(g, x, mean, rstd, w, dx, sg, sgx, n, c, s, it_)); \
    }

/* chan_sum: out[c] = sum over n and s of x[n, c, s] (a convolution's bias gradient), the same
 * double lanes as the statistics above, one thread per channel */
#define DEFINE_CHAN_SUM(T, SUF)                                                                 \
    static void chan_sum_channel_##SUF(const T *x, T *out, ptrdiff_t n, ptrdiff_t c, ptrdiff_t s, \
                                       ptrdiff_t ch) {                                          \
        double acc[LANES] = {0};                                                                \
        for (ptrdiff_t k = 0; k < n; k++) bn_sum_##SUF(x + (k * c + ch) * s, s, acc);           \
        out[ch] = (T)bn_total_##SUF(acc);                                                       \
    }                                                                                           \
    AVILA_EXPORT void avila_chan_sum_##SUF(const T *x, T *out, ptrdiff_t n, ptrdiff_t c,        \
                                           ptrdiff_t s, int threads) {                          \
        AVILA_FOR_ITEMS(c, chan_sum_channel_##SUF(x, out, n, c, s, it_));                    \
    }

DEFINE_BATCHNORM(float, f32)
DEFINE_BATCHNORM(double, f64)
DEFINE_CHAN_SUM(float, f32)
DEFINE_CHAN_SUM(double, f64)
