/* Softmax, log-softmax and cross-entropy kernels of Avila ML over rows: a C-contiguous
 * (rows, cols) array, the softmax axis the last one (avila_kernels.h has the build and the
 * conventions; avila_ml/cpu_accel/_native_softmax.py the Python side). Whole rows are split over
 * the OpenMP team; each row is done in one thread, its passes over it running while it is in
 * cache, so an array is read once and written once (NumPy's formula makes four to six passes over
 * memory and uses a scalar-speed float32 exp).
 *
 * Semantics are PyTorch's CPU kernels' (aten/src/ATen/native/cpu/SoftMaxKernel.cpp):
 *   softmax_fwd       m = max(x); e = exp(x - m); y = e * (1 / sum(e))
 *   softmax_bwd       dx = y * (g - sum(g * y))
 *   log_softmax_fwd   y = x - m - log(sum(exp(x - m)))
 *   log_softmax_bwd   dx = g - exp(y) * sum(g)
 *   ce_bwd            dx = exp(logp) * gs[r], then dx[r, t[r]] -= gs[r]: cross-entropy's input
 *                     gradient (log_softmax_bwd of nll_loss's one-entry-per-row gradient -gs)
 *   attn_probs        p = exp(p) (causal: later keys 0), l = sum(p), p *= 1 / l: the fused
 *                     attention's probability blocks from offset scores (no max pass: the
 *                     caller's offset bounds the scores and it checks l)
 * A NaN or +inf in a row, or a row of only -inf, makes the whole row NaN (x - m or exp gives a
 * NaN that the row sum carries): the maximum here skips NaN, the sum does not.
 *
 * exp: exp_f32/exp_f64 of avila_exp.h, an inline range reduction and polynomial that GCC
 * vectorises (glibc's expf/exp calls are not vectorised without -ffast-math, which this build
 * must not use: it changes NaN/inf handling): exp(x) = 2^n e^r, n = round(x / ln 2), r = x - n
 * ln 2 in two parts (Cody-Waite), e^r by a polynomial on |r| <= ln(2)/2, 2^n built in the
 * exponent bits as two factors (so subnormal results are rounded once and 2^128 / 2^1024 are
 * reachable). NaN stays NaN, +inf and overflow give +inf, -inf and underflow give 0. Accuracy
 * against long-double exp over the whole range (tests/test_native_softmax.py asserts 1.5 ulps):
 * 1.01 ulps float32, 1.05 ulps float64, measured 2026-12-07.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "avila_kernels.h"
#include "avila_exp.h"

/* Here the vector clones are x86-64-v4 (AVX-512) and x86-64-v3 (AVX2 with FMA) rather than the
 * header's AVX2 alone. The AVX-512 clone: softmax forward on (64, 4096) float32, 2 threads, 91 ->
 * 66.5 us (AVX-512 AMD EPYC, 2026-12-07; PyTorch 81 us). The AVX2 + FMA one: exp's
 * polynomial and the row sums are chains of multiply-adds, and GCC contracts them into FMAs
 * (-ffp-contract=fast, GCC's default for GNU C). The baseline clone rounds each step: its exp
 * measured 0.97 ulps float32 and 1.03 float64 (this file built without clones, SSE2).
 * Softmax forward on (64, 4096) float32, one thread: 310 -> 256 us with FMA (AMD EPYC,
 * 2026-12-07, under load). GCC learnt the x86-64-v3 name in version 11; older ones keep the
 * header's clones. */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && defined(__x86_64__) && defined(__linux__)
#undef AVILA_CLONES
#define AVILA_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif


/* partial maxima and sums in ACCS vectors of VBYTES bytes (GCC's vector extension: the loop
 * vectoriser does not reorder a float sum or a NaN-aware maximum without -ffast-math) */
#define VBYTES 32
#define ACCS 4
#define DOT_CHUNK 64 /* vectors per accumulator in one chunk of row_dot */
typedef float Vf32 __attribute__((vector_size(VBYTES)));
typedef int32_t VIf32 __attribute__((vector_size(VBYTES)));
typedef double Vf64 __attribute__((vector_size(VBYTES)));
typedef int64_t VIf64 __attribute__((vector_size(VBYTES)));
#define CHUNK 1024 /* a row's exponentials are summed per chunk while it is in L1 */

/* y[i] = exp(x[i]), exported as avila_exp_* for the accuracy test */
AVILA_CLONES static void exp_range_f32(const float *restrict x, float *restrict y, ptrdiff_t lo, ptrdiff_t hi) {
    for (ptrdiff_t i = lo; i < hi; i++) y[i] = exp_f32(x[i]);
}
AVILA_CLONES static void exp_range_f64(const double *restrict x, double *restrict y, ptrdiff_t lo, ptrdiff_t hi) {
    for (ptrdiff_t i = lo; i < hi; i++) y[i] = exp_f64(x[i]);
}

#define DEFINE_KERNELS(T, SUF, LOG, NEG_INF)                                                    \
    /* the row maximum, NaN skipped (a NaN's own exp makes the row NaN later) */                \
    static inline T row_max_##SUF(const T *restrict x, ptrdiff_t n) {                           \
        const ptrdiff_t W = VBYTES / sizeof(T);                                                 \
        V##SUF a[ACCS];                                                                         \
        for (int j = 0; j < ACCS; j++) a[j] = (V##SUF){0} + NEG_INF;                            \
        ptrdiff_t i = 0;                                                                        \
        for (; i + ACCS * W <= n; i += ACCS * W)                                                \
            for (int j = 0; j < ACCS; j++) {                                                    \
                V##SUF v;                                                                       \
                memcpy(&v, x + i + j * W, VBYTES);                                              \
                VI##SUF gt = v > a[j]; /* NaN: false, the lane keeps its maximum */             \
                a[j] = (V##SUF)(((VI##SUF)v & gt) | ((VI##SUF)a[j] & ~gt));                     \
            }                                                                                   \
        T m = NEG_INF;                                                                          \
        for (int j = 0; j < ACCS; j++)                                                          \
            for (ptrdiff_t k = 0; k < W; k++) m = a[j][k] > m ? a[j][k] : m;                    \
        for (; i < n; i++) m = x[i] > m ? x[i] : m;                                             \
        return m;                                                                               \
    }                                                                                           \
    /* sum(a * b), or sum(a) when b is NULL, in ACCS vector accumulators (no -ffast-math),     \
     * chunk by chunk of DOT_CHUNK vectors per accumulator whose sums are then added: each     \
     * lane adds at most DOT_CHUNK terms, so a long row's rounding error grows with            \
     * DOT_CHUNK + n / (DOT_CHUNK ACCS W) terms instead of n / (ACCS W). The float64          \
     * log-softmax backward of (3, 70001) rows (tests/test_native_softmax.py, Zen 4): max      \
     * error 1.64e-13 in one pass, 3.1e-14 chunked, PyTorch's 5.95e-14 */                     \
    static inline T row_dot_##SUF(const T *restrict a, const T *restrict b, ptrdiff_t n) {      \
        const ptrdiff_t W = VBYTES / sizeof(T), STEP = ACCS * W;                                \
        T s = 0;                                                                                \
        ptrdiff_t i = 0;                                                                        \
        while (i + STEP <= n) {                                                                 \
            const ptrdiff_t end = i + STEP * DOT_CHUNK < n ? i + STEP * DOT_CHUNK : n;          \
            V##SUF acc[ACCS];                                                                   \
            for (int j = 0; j < ACCS; j++) acc[j] = (V##SUF){0};                                \
            for (; i + STEP <= end; i += STEP)                                                  \
                for (int j = 0; j < ACCS; j++) {                                                \
                    V##SUF u, v;                                                                \
                    memcpy(&u, a + i + j * W, VBYTES);                                          \
                    if (b) {                                                                    \
                        memcpy(&v, b + i + j * W, VBYTES);                                      \
                        u = u * v;                                                              \
                    }                                                                           \
                    acc[j] += u;                                                                \
                }                                                                               \
            for (int j = 1; j < ACCS; j++) acc[0] += acc[j];                                    \
            T c = 0;                                                                            \
            for (ptrdiff_t k = 0; k < W; k++) c += acc[0][k];                                   \
            s += c;                                                                             \
        }                                                                                       \
        for (; i < n; i++) s += b ? a[i] * b[i] : a[i];                                         \
        return s;                                                                               \
    }                                                                                           \
    static inline T row_sum_##SUF(const T *restrict x, ptrdiff_t n) {                           \
        return row_dot_##SUF(x, NULL, n);                                                       \
    }                                                                                           \
    /* e[i] = exp(x[i] - m) */                                                                  \
    static inline void exp_shift_##SUF(const T *restrict x, T m, T *restrict e, ptrdiff_t n) {  \
        for (ptrdiff_t i = 0; i < n; i++) e[i] = exp_##SUF(x[i] - m);                           \
    }                                                                                           \
    /* sum(exp(x - m)) chunk by chunk, the exponentials in `buf` (no write to the output) */    \
    static inline T sum_exp_##SUF(const T *restrict x, T m, T *restrict buf, ptrdiff_t n) {     \
        T s = 0;                                                                                \
        for (ptrdiff_t c = 0; c < n; c += CHUNK) {                                              \
            ptrdiff_t k = n - c < CHUNK ? n - c : CHUNK;                                        \
            exp_shift_##SUF(x + c, m, buf, k);                                                  \
            s += row_sum_##SUF(buf, k);                                                         \
        }                                                                                       \
        return s;                                                                               \
    }                                                                                           \
    AVILA_CLONES static void softmax_fwd_rows_##SUF(const T *x, T *y, ptrdiff_t cols, ptrdiff_t lo, \
                                                    ptrdiff_t hi) {                             \
        for (ptrdiff_t r = lo; r < hi; r++) {                                                   \
            const T *xr = x + r * cols;                                                         \
            T *yr = y + r * cols;                                                               \
            T m = row_max_##SUF(xr, cols), s = 0;                                               \
            for (ptrdiff_t c = 0; c < cols; c += CHUNK) {                                       \
                ptrdiff_t k = cols - c < CHUNK ? cols - c : CHUNK;                              \
                exp_shift_##SUF(xr + c, m, yr + c, k);                                          \
                s += row_sum_##SUF(yr + c, k);                                                  \
            }                                                                                   \
            T inv = (T)1 / s;                                                                   \
            for (ptrdiff_t i = 0; i < cols; i++) yr[i] *= inv;                                  \
        }                                                                                       \
    }                                                                                           \
    AVILA_CLONES static void log_softmax_fwd_rows_##SUF(const T *x, T *y, ptrdiff_t cols,       \
                                                        ptrdiff_t lo, ptrdiff_t hi) {           \
        T buf[CHUNK];                                                                           \
        for (ptrdiff_t r = lo; r < hi; r++) {                                                   \
            const T *xr = x + r * cols;                                                         \
            T *yr = y + r * cols;                                                               \
            T m = row_max_##SUF(xr, cols);                                                      \
            T lse = LOG(sum_exp_##SUF(xr, m, buf, cols));                                       \
            for (ptrdiff_t i = 0; i < cols; i++) yr[i] = xr[i] - m - lse;                       \
        }                                                                                       \
    }                                                                                           \
    AVILA_CLONES static void softmax_bwd_rows_##SUF(const T *g, const T *y, T *dx, ptrdiff_t cols, \
                                                    ptrdiff_t lo, ptrdiff_t hi) {               \
        for (ptrdiff_t r = lo; r < hi; r++) {                                                   \
            const T *restrict gr = g + r * cols, *restrict yr = y + r * cols;                   \
            T *restrict dr = dx + r * cols;                                                     \
            T dot = row_dot_##SUF(gr, yr, cols);                                                \
            for (ptrdiff_t i = 0; i < cols; i++) dr[i] = yr[i] * (gr[i] - dot);                 \
        }                                                                                       \
    }                                                                                           \
    AVILA_CLONES static void log_softmax_bwd_rows_##SUF(const T *g, const T *y, T *dx, ptrdiff_t cols, \
                                                        ptrdiff_t lo, ptrdiff_t hi) {           \
        for (ptrdiff_t r = lo; r < hi; r++) {                                                   \
            const T *restrict gr = g + r * cols, *restrict yr = y + r * cols;                   \
            T *restrict dr = dx + r * cols;                                                     \
            T s = row_sum_##SUF(gr, cols);                                                      \
            for (ptrdiff_t i = 0; i < cols; i++) dr[i] = gr[i] - exp_##SUF(yr[i]) * s;          \
        }                                                                                       \
    }                                                                                           \
    AVILA_CLONES static void ce_bwd_rows_##SUF(const T *logp, const T *gs, const int64_t *t, T *dx, \
                                               ptrdiff_t cols, ptrdiff_t lo, ptrdiff_t hi) {    \
        for (ptrdiff_t r = lo; r < hi; r++) {                                                   \
            const T *restrict lr = logp + r * cols;                                             \
            T *restrict dr = dx + r * cols;                                                     \
            T s = gs[r];                                                                        \
            for (ptrdiff_t i = 0; i < cols; i++) dr[i] = exp_##SUF(lr[i]) * s;                  \
            dr[t[r]] -= s;                                                                      \
        }                                                                                       \
    }                                                                                           \
    /* the fused CPU attention's probability blocks (ops/_attention_fused.py): each row of a    \
     * C-contiguous (nb, n, m) block of offset scores S - m_i in p becomes its exponentials,    \
     * the keys after the row's query 0 when causal (key j0 + c > query i0 + r: stored zeros,   \
     * not products with a mask, as an entry may have overflowed to inf), l[row] = their sum,  \
     * then the row times 1 / l: P = softmax, while the row is in L1 */                          \
    AVILA_CLONES static void attn_probs_rows_##SUF(T *p, T *l, ptrdiff_t n, ptrdiff_t m, ptrdiff_t i0, \
                                                   ptrdiff_t j0, int causal, ptrdiff_t lo, ptrdiff_t hi) { \
        for (ptrdiff_t row = lo; row < hi; row++) {                                             \
            T *restrict pr = p + row * m;                                                       \
            ptrdiff_t keep = m;                                                                 \
            if (causal) {                                                                       \
                keep = i0 + row % n + 1 - j0;                                                   \
                keep = keep < 0 ? 0 : (keep > m ? m : keep);                                    \
            }                                                                                   \
            for (ptrdiff_t i = 0; i < keep; i++) pr[i] = exp_##SUF(pr[i]);                      \
            if (keep < m) memset(pr + keep, 0, (size_t)(m - keep) * sizeof(T));                 \
            T s = row_sum_##SUF(pr, keep);                                                      \
            l[row] = s;                                                                         \
            T inv = (T)1 / s;                                                                   \
            for (ptrdiff_t i = 0; i < keep; i++) pr[i] *= inv;                                  \
        }                                                                                       \
    }                                                                                           \
    AVILA_EXPORT void avila_attn_probs_##SUF(T *p, T *l, ptrdiff_t nb, ptrdiff_t n, ptrdiff_t m, \
                                             ptrdiff_t i0, ptrdiff_t j0, ptrdiff_t causal, int threads) { \
        AVILA_FOR_ROW_BLOCKS(nb * n, attn_probs_rows_##SUF(p, l, n, m, i0, j0, (int)causal, lo_, hi_)); \
    }                                                                                           \
    AVILA_EXPORT void avila_exp_##SUF(const T *x, T *y, ptrdiff_t n, int threads) {             \
        AVILA_FOR_PARTS(n, exp_range_##SUF(x, y, lo_, hi_));                                    \
    }                                                                                           \
    AVILA_EXPORT void avila_softmax_fwd_##SUF(const T *x, T *y, ptrdiff_t rows, ptrdiff_t cols, \
                                              int threads) {                                    \
        AVILA_FOR_ROW_BLOCKS(rows, softmax_fwd_rows_##SUF(x, y, cols, lo_, hi_));                     \
    }                                                                                           \
    AVILA_EXPORT void avila_log_softmax_fwd_##SUF(const T *x, T *y, ptrdiff_t rows, ptrdiff_t cols, \
                                                  int threads) {                                \
        AVILA_FOR_ROW_BLOCKS(rows, log_softmax_fwd_rows_##SUF(x, y, cols, lo_, hi_));                 \
    }                                                                                           \
    AVILA_EXPORT void avila_softmax_bwd_##SUF(const T *g, const T *y, T *dx, ptrdiff_t rows,    \
                                              ptrdiff_t cols, int threads) {                    \
        AVILA_FOR_ROW_BLOCKS(rows, softmax_bwd_rows_##SUF(g, y, dx, cols, lo_, hi_));                 \
    }                                                                                           \
    AVILA_EXPORT void avila_log_softmax_bwd_##SUF(const T *g, const T *y, T *dx, ptrdiff_t rows, \
                                                  ptrdiff_t cols, int threads) {                \
        AVILA_FOR_ROW_BLOCKS(rows, log_softmax_bwd_rows_##SUF(g, y, dx, cols, lo_, hi_));             \
    }                                                                                           \
    AVILA_EXPORT void avila_ce_bwd_##SUF(const T *logp, const T *gs, const int64_t *t, T *dx,   \
                                         ptrdiff_t rows, ptrdiff_t cols, int threads) {         \
        AVILA_FOR_ROW_BLOCKS(rows, ce_bwd_rows_##SUF(logp, gs, t, dx, cols, lo_, hi_));               \
    }

DEFINE_KERNELS(float, f32, logf, -INFINITY)
DEFINE_KERNELS(double, f64, log, -(double)INFINITY)
