/* Layer normalization over rows (avila_kernels.h has the build and the conventions;
 * avila_ml/cpu_accel/_native_norm.py the Python side). x is (rows, D), C-contiguous: each row
 * is normalised over its D values.
 *
 *   forward   mean = sum(x) / D,  var = sum((x - mean)^2) / D  (biased, two passes, as PyTorch)
 *             rstd = 1 / sqrt(var + eps),  y = (x - mean) rstd w + b   (w, b optional: NULL)
 *   backward  xhat = (x - mean) rstd (recomputed from the saved statistics, as PyTorch),
 *             gw = g w,  dx = rstd (gw - sum(gw) / D - xhat sum(gw xhat) / D)
 *             dw = sum over rows of g xhat,  db = sum over rows of g
 *
 * Why C: per row the statistics and the output are two reads and one write of a row that sits
 * in L1, against five to seven whole-array NumPy passes; the backward reads each block of rows
 * twice (the column sums, then the row sums and dx), also from cache.
 *
 * Accuracy: the mean is summed in double, for float32 too, and kept as two values of the
 * element type, mean (PyTorch's saved mean) + mlo (what rounding mean lost): x - mean is exact
 * near the mean, so (x - mean) - mlo keeps rows with a large mean (1e4 + N(0, 1) in float32)
 * accurate, where x - round(mean) alone is off by up to half an ulp of the mean (5e-4 there).
 * The variance is the second pass over (x - mean)^2 (non-negative terms, no cancellation); the
 * backward's row sums are in T vector lanes added in double; dw, db are summed over blocks of
 * LN_BLOCK rows in T, then in double. y and dx use x - mean, never x rstd - mean rstd.
 *
 * Threads: rows are cut into one contiguous block per thread of the OpenMP team. dw and db are
 * summed per thread into its own rows of `work` ((threads, 2 D) doubles, from the caller), then
 * added in thread order: deterministic for a given thread count. With threads <= 1 no OpenMP
 * region is entered. NaN and infinities propagate: a NaN or infinity in a row makes that row's
 * outputs NaN, as in PyTorch's kernel.
 */
#include "avila_kernels.h"



/* Row sums in GCC vector types (32 bytes: one AVX2 register, two SSE ones in the baseline clone)
 * with two to four independent accumulators. Plain C reductions are not vectorised without
 * -ffast-math; `omp simd reduction` and lane arrays were, but with one accumulator (its add
 * latency bounded the loop) or unpredictably per clone: these measured 1.5-3x faster on rows
 * of 64-512 values. The helpers are inlined into each target clone of the row functions (one
 * left out of line is compiled for the baseline ISA only). */
#define LN_INLINE static inline __attribute__((always_inline))
#define LN_BLOCK 16 /* rows per block of the backward: the column sums, then dx, over one block */
typedef double v4d __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));
typedef float v8f __attribute__((vector_size(32)));

/* (-Wpsabi: 32-byte vectors passed by value change the ABI in the baseline clone; these
 * helpers are always inlined, so no call crosses it) */
#pragma GCC diagnostic ignored "-Wpsabi"
LN_INLINE v4d ln_load4d(const double *p) { v4d v; __builtin_memcpy(&v, p, sizeof v); return v; }
LN_INLINE void ln_store4d(double *p, v4d v) { __builtin_memcpy(p, &v, sizeof v); }
LN_INLINE v4f ln_load4fv(const float *p) { v4f v; __builtin_memcpy(&v, p, sizeof v); return v; }
LN_INLINE v4d ln_load4f(const float *p) { v4f v; __builtin_memcpy(&v, p, sizeof v); return __builtin_convertvector(v, v4d); }
LN_INLINE v8f ln_load8f(const float *p) { v8f v; __builtin_memcpy(&v, p, sizeof v); return v; }
/* the sum of a vector's lanes, pairwise (macros: a function taking a 32-byte vector by value
 * draws a -Wpsabi note) */
#define ln_hsum4d(V) ({ v4d v_ = (V); (v_[0] + v_[2]) + (v_[1] + v_[3]); })
#define ln_hsum8f(V) \
    ({ v8f v_ = (V); (double)(((v_[0] + v_[4]) + (v_[2] + v_[6])) + ((v_[1] + v_[5]) + (v_[3] + v_[7]))); })

/* T: the element type; VT / NV / LOADV / HSUM: its 32-byte vector, lanes, load, lane sum; LOAD4D:
 * four elements as doubles; HT / LOAD4: a vector of four elements and its load */
#define DEFINE_LAYERNORM(T, SUF, VT, NV, LOADV, HSUM, LOAD4D, HT, LOAD4)                                   \
    /* sum of x in double (the mean: its error would enter every xhat) */                       \
    LN_INLINE double layer_sum_##SUF(const T *restrict x, ptrdiff_t D) {                        \
        v4d a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};                                             \
        ptrdiff_t j = 0;                                                                        \
        for (; j + 16 <= D; j += 16) {                                                          \
            a0 += LOAD4D(x + j);                                                                \
            a1 += LOAD4D(x + j + 4);                                                            \
            a2 += LOAD4D(x + j + 8);                                                            \
            a3 += LOAD4D(x + j + 12);                                                           \
        }                                                                                       \
        for (; j + 4 <= D; j += 4) a0 += LOAD4D(x + j);                                         \
        double s = ln_hsum4d((a0 + a1) + (a2 + a3));                                            \
        for (; j < D; j++) s += (double)x[j];                                                   \
        return s;                                                                               \
    }                                                                                           \
    /* sum of (x - m)^2 (non-negative terms: no cancellation, T accumulators suffice) */        \
    LN_INLINE double layer_sqdev_##SUF(const T *restrict x, T m, T ml, ptrdiff_t D) {         \
        VT a0 = {0}, a1 = {0};                                                                  \
        ptrdiff_t j = 0;                                                                        \
        for (; j + 2 * NV <= D; j += 2 * NV) {                                                  \
            VT d0 = (LOADV(x + j) - m) - ml, d1 = (LOADV(x + j + NV) - m) - ml;                \
            a0 += d0 * d0;                                                                      \
            a1 += d1 * d1;                                                                      \
        }                                                                                       \
        double s = HSUM(a0 + a1);                                                               \
        for (; j < D; j++) s += (double)(((x[j] - m) - ml) * ((x[j] - m) - ml));                \
        return s;                                                                               \
    }                                                                                           \
    /* *s1 = sum(gw), *s2 = sum(gw xhat) with gw = g w (w NULL: g), xhat = (x - m - ml) r */   \
    LN_INLINE void layer_gsums_##SUF(const T *restrict g, const T *restrict x,                  \
                                     const T *restrict w, T m, T ml, T r, ptrdiff_t D,          \
                                     double *s1, double *s2) {                                  \
        VT a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0};                                              \
        ptrdiff_t j = 0;                                                                        \
        for (; j + 2 * NV <= D; j += 2 * NV) {                                                  \
            VT g0 = LOADV(g + j), g1 = LOADV(g + j + NV);                                       \
            if (w) {                                                                            \
                g0 *= LOADV(w + j);                                                             \
                g1 *= LOADV(w + j + NV);                                                        \
            }                                                                                   \
            a0 += g0;                                                                           \
            a1 += g1;                                                                           \
            b0 += g0 * (((LOADV(x + j) - m) - ml) * r);                                        \
            b1 += g1 * (((LOADV(x + j + NV) - m) - ml) * r);                                   \
        }                                                                                       \
        double t1 = HSUM(a0 + a1), t2 = HSUM(b0 + b1);                                          \
        for (; j < D; j++) {                                                                    \
            T gw = w ? g[j] * w[j] : g[j];                                                      \
            t1 += (double)gw;                                                                   \
            t2 += (double)(gw * (((x[j] - m) - ml) * r));                                      \
        }                                                                                       \
        *s1 = t1;                                                                               \
        *s2 = t2;                                                                               \
    }                                                                                           \
    /* aw += sum of g xhat, ab += sum of g over rows [r0, r1) (at most LN_BLOCK): the column   \
     * sums of dweight and dbias. Four columns at a time down the block, summed in T in         \
     * registers, then added to the double sums once per block: a per-row update of aw, ab in   \
     * double (a conversion and a read-modify-write per element) was the slowest part of the   \
     * backward; a block of 16 terms in T loses at most ~16 ulp before the double sum. */       \
    LN_INLINE void layer_colsums_##SUF(const T *restrict g, const T *restrict x,                \
                                       const T *restrict mean, const T *restrict mlo,           \
                                       const T *restrict rstd,                                  \
                                       double *restrict aw, double *restrict ab, ptrdiff_t D,   \
                                       ptrdiff_t r0, ptrdiff_t r1) {                            \
        ptrdiff_t j = 0;                                                                        \
        for (; j + 4 <= D; j += 4) {                                                            \
            HT sw = {0}, sb = {0};                                                              \
            for (ptrdiff_t r = r0; r < r1; r++) {                                               \
                HT g4 = LOAD4(g + r * D + j);                                                   \
                sw += g4 * (((LOAD4(x + r * D + j) - mean[r]) - mlo[r]) * rstd[r]);            \
                sb += g4;                                                                       \
            }                                                                                   \
            ln_store4d(aw + j, ln_load4d(aw + j) + __builtin_convertvector(sw, v4d));           \
            ln_store4d(ab + j, ln_load4d(ab + j) + __builtin_convertvector(sb, v4d));           \
        }                                                                                       \
        for (; j < D; j++) {                                                                    \
            T sw = 0, sb = 0;                                                                   \
            for (ptrdiff_t r = r0; r < r1; r++) {                                               \
                T gj = g[r * D + j];                                                            \
                sw += gj * (((x[r * D + j] - mean[r]) - mlo[r]) * rstd[r]);                    \
                sb += gj;                                                                       \
            }                                                                                   \
            aw[j] += (double)sw;                                                                \
            ab[j] += (double)sb;                                                                \
        }                                                                                       \
    }                                                                                           \
    AVILA_CLONES static void layer_fwd_rows_##SUF(const T *restrict x, const T *restrict w,     \
                                                  const T *restrict b, T *restrict y,           \
                                                  T *restrict mean, T *restrict mlo,            \
                                                  T *restrict rstd, double eps,                 \
                                                  ptrdiff_t D, ptrdiff_t lo, ptrdiff_t hi) {    \
        for (ptrdiff_t r = lo; r < hi; r++) {                                                   \
            const T *xr = x + r * D;                                                            \
            T *yr = y + r * D;                                                                  \
            double m = layer_sum_##SUF(xr, D) / (double)D;                                      \
            T mt = (T)m, ml = (T)(m - (double)mt);                                              \
            double var = layer_sqdev_##SUF(xr, mt, ml, D) / (double)D;                          \
            T rt = (T)(1.0 / __builtin_sqrt(var + eps));                                        \
            mean[r] = mt;                                                                       \
            mlo[r] = ml;                                                                        \
            rstd[r] = rt;                                                                       \
            if (w && b) {                                                                       \
                for (ptrdiff_t j = 0; j < D; j++) yr[j] = ((xr[j] - mt) - ml) * rt * w[j] + b[j]; \
            } else if (w) {                                                                     \
                for (ptrdiff_t j = 0; j < D; j++) yr[j] = ((xr[j] - mt) - ml) * rt * w[j];      \
            } else if (b) {                                                                     \
                for (ptrdiff_t j = 0; j < D; j++) yr[j] = ((xr[j] - mt) - ml) * rt + b[j];      \
            } else {                                                                            \
                for (ptrdiff_t j = 0; j < D; j++) yr[j] = ((xr[j] - mt) - ml) * rt;             \
            }                                                                                   \
        }                                                                                       \
    }                                                                                           \
    /* rows [lo, hi): dx (when dx != NULL) and, into acc (2 D doubles, when not NULL), the    \
     * column sums of g xhat (acc[:D]) and of g (acc[D:]) */                                    \
    AVILA_CLONES static void layer_bwd_rows_##SUF(const T *restrict g, const T *restrict x,     \
                                                  const T *restrict mean, const T *restrict mlo, \
                                                  const T *restrict rstd,                       \
                                                  const T *restrict w, T *restrict dx,          \
                                                  double *restrict acc, ptrdiff_t D,            \
                                                  ptrdiff_t lo, ptrdiff_t hi) {                 \
        for (ptrdiff_t r0 = lo; r0 < hi; r0 += LN_BLOCK) {                                      \
            ptrdiff_t r1 = r0 + LN_BLOCK < hi ? r0 + LN_BLOCK : hi;                             \
            if (acc) layer_colsums_##SUF(g, x, mean, mlo, rstd, acc, acc + D, D, r0, r1);       \
            if (!dx) continue;                                                                  \
            for (ptrdiff_t r = r0; r < r1; r++) {                                               \
                const T *gr = g + r * D, *xr = x + r * D;                                       \
                const T mt = mean[r], ml = mlo[r], rt = rstd[r];                                \
                double s1, s2;                                                                  \
                layer_gsums_##SUF(gr, xr, w, mt, ml, rt, D, &s1, &s2);                          \
                const T c1 = (T)(s1 / (double)D), c2 = (T)(s2 / (double)D);                     \
                T *dr = dx + r * D;                                                             \
                if (w) {                                                                        \
                    for (ptrdiff_t j = 0; j < D; j++)                                           \
                        dr[j] = rt * (gr[j] * w[j] - c1 - (((xr[j] - mt) - ml) * rt) * c2);    \
                } else {                                                                        \
                    for (ptrdiff_t j = 0; j < D; j++)                                           \
                        dr[j] = rt * (gr[j] - c1 - (((xr[j] - mt) - ml) * rt) * c2);           \
                }                                                                               \
            }                                                                                   \
        }                                                                                       \
    }                                                                                           \
    AVILA_EXPORT void avila_layer_fwd_##SUF(const T *x, const T *w, const T *b, T *y, T *mean,  \
                                            T *mlo,                                             \
                                            T *rstd, double eps, ptrdiff_t rows, ptrdiff_t D,   \
                                            int threads) {                                      \
        AVILA_FOR_ROW_BLOCKS(rows, layer_fwd_rows_##SUF(x, w, b, y, mean, mlo, rstd, eps, D, lo_, hi_)); \
    }                                                                                           \
    /* dx, dw, db: each NULL when not wanted; w NULL for no weight. work: (threads, 2 D)        \
     * doubles when dw or db is wanted (zeroed here). */                                        \
    AVILA_EXPORT void avila_layer_bwd_##SUF(const T *g, const T *x, const T *mean, const T *mlo, \
                                            const T *rstd,                                      \
                                            const T *w, T *dx, T *dw, T *db, double *work,      \
                                            ptrdiff_t rows, ptrdiff_t D, int threads) {         \
        int team = threads > 1 ? threads : 1;                                                   \
        int sums = (dw || db) && work;                                                          \
        if (sums)                                                                               \
            for (ptrdiff_t i = 0; i < (ptrdiff_t)team * 2 * D; i++) work[i] = 0.0;              \
        AVILA_FOR_ROW_BLOCKS(rows, layer_bwd_rows_##SUF(g, x, mean, mlo, rstd, w, dx,              \
                                                    sums ? work + t_ * 2 * D : NULL, D, lo_, hi_)); \
        if (!sums) return;                                                                      \
        /* the per-thread column sums, added in thread order (a team smaller than asked for    \
         * left its rows of work at zero) */                                                    \
        for (ptrdiff_t j = 0; j < D; j++) {                                                     \
            double sw = 0.0, sb = 0.0;                                                          \
            for (int t = 0; t < team; t++) {                                                    \
                sw += work[(ptrdiff_t)t * 2 * D + j];                                           \
                sb += work[(ptrdiff_t)t * 2 * D + D + j];                                       \
            }                                                                                   \
            if (dw) dw[j] = (T)sw;                                                              \
            if (db) db[j] = (T)sb;                                                              \
        }                                                                                       \
    }

DEFINE_LAYERNORM(float, f32, v8f, 8, ln_load8f, ln_hsum8f, ln_load4f, v4f, ln_load4fv)
DEFINE_LAYERNORM(double, f64, v4d, 4, ln_load4d, ln_hsum4d, ln_load4d, v4d, ln_load4d)
