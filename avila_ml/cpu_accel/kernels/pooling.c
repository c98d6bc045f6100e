/* 2-d max pooling of (N, C, H, W) C-contiguous arrays: the forward with each window's argmax
 * code, and its adjoint (avila_kernels.h has the build and the conventions;
 * avila_ml/cpu_accel/_native_pool.py the Python side).
 *
 *   maxpool2d_fwd  y[p, i, j] = max over the window's positions inside the input, scanned in
 *                  row-major order (branchless selects: on random data a compare-and-branch
 *                  per position mispredicts half the time) with PyTorch's CPU rule: a value replaces the running maximum
 *                  when it is greater or NaN (so the first maximum on ties, the last NaN when
 *                  there is one), starting from -inf at the window's first inside position;
 *                  code[p, i, j] = the row-major kernel offset a kw + b of that position
 *   maxpool2d_bwd  gx = 0, then gx[p, argmax of window (i, j)] += g[p, i, j]
 *                  (PyTorch's max_pool2d_with_indices_backward; overlapping windows add)
 *
 * Planes p = (n, c) are split over the OpenMP team: each thread writes only its planes. The
 * code is stored in 1, 2 or 4 bytes (code_size), the dtype ops/pooling.py keeps.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "avila_kernels.h"

typedef struct {
    ptrdiff_t h, w, oh, ow;
    int kh, kw, sh, sw, ph, pw, dh, dw;
} pool2d_geom;

/* the first and one-past-last kernel offsets along one axis whose positions lie inside [0, n) */
static inline void inside(ptrdiff_t start, int k, int d, ptrdiff_t n, int *a0, int *a1) {
    int lo = 0, hi = k;
    while (lo < k && start + (ptrdiff_t)lo * d < 0) lo++;
    while (hi > lo && start + (ptrdiff_t)(hi - 1) * d >= n) hi--;
    *a0 = lo;
    *a1 = hi;
}

/* [lo, hi) of the output columns j whose position j s - p + b d lies inside [0, n) */
static inline void columns_inside(ptrdiff_t ow, int s, int p, int off, ptrdiff_t n, ptrdiff_t *lo, ptrdiff_t *hi) {
    ptrdiff_t first = off < p ? (p - off + s - 1) / s : 0;          /* j s >= p - off */
    ptrdiff_t last = (n - 1 + p - off) >= 0 ? (n - 1 + p - off) / s + 1 : 0; /* j s <= n - 1 + p - off */
    *lo = first < ow ? first : ow;
    *hi = last < ow ? last : ow;
    if (*hi < *lo) *hi = *lo;
}

#define DEFINE_CODES(CT)                                                                        \
    static void store_codes_##CT(CT *dst, const int *arg, ptrdiff_t n) {                        \
        for (ptrdiff_t j = 0; j < n; j++) dst[j] = (CT)arg[j];                                  \
    }
typedef signed char code8;
typedef short code16;
typedef int code32;
DEFINE_CODES(code8)
DEFINE_CODES(code16)
DEFINE_CODES(code32)

#define DEFINE_POOL(T, SUF)                                                                     \
    /* one window: positions a0 <= a < a1, b0 <= b < b1 in row-major order, PyTorch's rule */  \
    static inline T window_##SUF(const T *xp, ptrdiff_t w, ptrdiff_t r0, ptrdiff_t c0, int a0,  \
                                 int a1, int b0, int b1, int kw, int dh, int dw, int *arg) {    \
        T best = -(T)INFINITY;                                                                  \
        int at = a0 * kw + b0; /* an all -inf window: its first inside position */             \
        for (int a = a0; a < a1; a++) {                                                         \
            const T *row = xp + (r0 + (ptrdiff_t)a * dh) * w + c0;                              \
            for (int b = b0; b < b1; b++) {                                                     \
                T v = row[(ptrdiff_t)b * dw];                                                   \
                int take = (v > best) | (v != v);                                               \
                best = take ? v : best;                                                         \
                at = take ? a * kw + b : at;                                                    \
            }                                                                                   \
        }                                                                                       \
        *arg = at;                                                                              \
        return best;                                                                            \
    }                                                                                           \
    /* one output row: border windows (partly in the padding) one by one; the interior ones   \
       with their columns known inside, and 2x2 stride-2 windows (the common case) as a      \
       branchless body GCC vectorises */                                                        \
    AVILA_CLONES static void maxpool2d_row_##SUF(const T *xp, T *yrow, int *arg, const pool2d_geom *g, \
                                                 ptrdiff_t i) {                                 \
        ptrdiff_t r0 = i * g->sh - g->ph;                                                       \
        int a0, a1;                                                                             \
        inside(r0, g->kh, g->dh, g->h, &a0, &a1);                                               \
        ptrdiff_t jlo, jhi, lo2, hi2;                                                           \
        columns_inside(g->ow, g->sw, g->pw, 0, g->w, &jlo, &hi2);                               \
        columns_inside(g->ow, g->sw, g->pw, (g->kw - 1) * g->dw, g->w, &lo2, &jhi);             \
        if (lo2 > jlo) jlo = lo2;                                                               \
        if (jhi < jlo) jhi = jlo;                                                               \
        for (ptrdiff_t j = 0; j < g->ow; j++) {                                                 \
            if (j == jlo) j = jhi;                                                              \
            if (j >= g->ow) break;                                                              \
            ptrdiff_t c0 = j * g->sw - g->pw;                                                   \
            int b0, b1;                                                                         \
            inside(c0, g->kw, g->dw, g->w, &b0, &b1);                                           \
            yrow[j] = window_##SUF(xp, g->w, r0, c0, a0, a1, b0, b1, g->kw, g->dh, g->dw, arg + j); \
        }                                                                                       \
        if (g->kh == 2 && g->kw == 2 && g->sw == 2 && g->dw == 1 && a0 == 0 && a1 == 2) {       \
            const T *u = xp + r0 * g->w - g->pw, *d = u + g->dh * g->w;                        \
            for (ptrdiff_t j = jlo; j < jhi; j++) {                                             \
                T v0 = u[2 * j], v1 = u[2 * j + 1], v2 = d[2 * j], v3 = d[2 * j + 1];           \
                T best = v0;                                                                    \
                int at = 0, take;                                                               \
                take = (v1 > best) | (v1 != v1); best = take ? v1 : best; at = take ? 1 : at;   \
                take = (v2 > best) | (v2 != v2); best = take ? v2 : best; at = take ? 2 : at;   \
                take = (v3 > best) | (v3 != v3); best = take ? v3 : best; at = take ? 3 : at;   \
                /* v0 first: a NaN v0 stays unless a later NaN replaces it (PyTorch: -inf < NaN \
                   is false but isnan(NaN) takes it, the same) */                               \
                yrow[j] = best;                                                                 \
                arg[j] = at;                                                                    \
            }                                                                                   \
        } else {                                                                                \
            for (ptrdiff_t j = jlo; j < jhi; j++)                                               \
                yrow[j] = window_##SUF(xp, g->w, r0, j * g->sw - g->pw, a0, a1, 0, g->kw, g->kw, \
                                       g->dh, g->dw, arg + j);                                  \
        }                                                                                       \
    }                                                                                           \
    static void maxpool2d_fwd_plane_##SUF(const T *x, T *y, void *code, int code_size,          \
                                          const pool2d_geom *g, ptrdiff_t p) {                  \
        int small[256]; /* the row's argmax codes, before they are stored in the code's size */ \
        int *arg = g->ow <= 256 ? small : malloc(sizeof(int) * (size_t)g->ow);                  \
        if (!arg) return; /* (out of memory: the caller's y and code stay unwritten) */         \
        const T *xp = x + p * g->h * g->w;                                                      \
        for (ptrdiff_t i = 0; i < g->oh; i++) {                                                 \
            ptrdiff_t o = (p * g->oh + i) * g->ow;                                              \
            maxpool2d_row_##SUF(xp, y + o, arg, g, i);                                          \
            if (code_size == 1) store_codes_code8((code8 *)code + o, arg, g->ow);               \
            else if (code_size == 2) store_codes_code16((code16 *)code + o, arg, g->ow);        \
            else store_codes_code32((code32 *)code + o, arg, g->ow);                            \
        }                                                                                       \
        if (arg != small) free(arg);                                                            \
    }                                                                                           \
    /* the adjoint of one plane: each output's value added at its argmax, whose flat offset    \
       from the window start is looked up per code (no division per element) */               \
    static void maxpool2d_bwd_plane_##SUF(const T *gy, const void *code, int code_size, T *gx,  \
                                          const pool2d_geom *g, ptrdiff_t p, const ptrdiff_t *off) { \
        T *gp = gx + p * g->h * g->w;                                                           \
        memset(gp, 0, sizeof(T) * (size_t)(g->h * g->w));                                       \
        ptrdiff_t out0 = p * g->oh * g->ow;                                                     \
        for (ptrdiff_t i = 0; i < g->oh; i++) {                                                 \
            T *base = gp + (i * g->sh - g->ph) * g->w - g->pw;                                  \
            const T *gr = gy + out0 + i * g->ow;                                                \
            ptrdiff_t o = out0 + i * g->ow;                                                     \
            if (code_size == 1) {                                                               \
                const code8 *cr = (const code8 *)code + o;                                      \
                for (ptrdiff_t j = 0; j < g->ow; j++) base[j * g->sw + off[cr[j]]] += gr[j];    \
            } else if (code_size == 2) {                                                        \
                const code16 *cr = (const code16 *)code + o;                                    \
                for (ptrdiff_t j = 0; j < g->ow; j++) base[j * g->sw + off[cr[j]]] += gr[j];    \
            } else {                                                                            \
                const code32 *cr = (const code32 *)code + o;                                    \
                for (ptrdiff_t j = 0; j < g->ow; j++) base[j * g->sw + off[cr[j]]] += gr[j];    \
            }                                                                                   \
        }                                                                                       \
    }                                                                                           \
    AVILA_EXPORT void avila_maxpool2d_fwd_##SUF(const T *x, T *y, void *code, int code_size,    \
                                                const long long *geom, ptrdiff_t planes,        \
                                                int threads) {                                  \
        pool2d_geom g = {geom[0], geom[1], geom[2], geom[3], (int)geom[4], (int)geom[5],        \
                         (int)geom[6], (int)geom[7], (int)geom[8], (int)geom[9], (int)geom[10], \
                         (int)geom[11]};                                                        \
        AVILA_FOR_ITEMS(planes, maxpool2d_fwd_plane_##SUF(x, y, code, code_size, &g, it_));     \
    }                                                                                           \
    AVILA_EXPORT void avila_maxpool2d_bwd_##SUF(const T *gy, const void *code, int code_size,   \
                                                T *gx, const long long *geom, ptrdiff_t planes, \
                                                int threads) {                                  \
        pool2d_geom g = {geom[0], geom[1], geom[2], geom[3], (int)geom[4], (int)geom[5],        \
                         (int)geom[6], (int)geom[7], (int)geom[8], (int)geom[9], (int)geom[10], \
                         (int)geom[11]};                                                        \
        ptrdiff_t *off = malloc(sizeof(ptrdiff_t) * (size_t)(g.kh * g.kw));                    \
        for (int c = 0; c < g.kh * g.kw; c++)                                                   \
            off[c] = (ptrdiff_t)(c / g.kw) * g.dh * g.w + (ptrdiff_t)(c % g.kw) * g.dw;          \
        AVILA_FOR_ITEMS(planes, maxpool2d_bwd_plane_##SUF(gy, code, code_size, gx, &g, it_, off)); \
        free(off);                                                                              \
    }

DEFINE_POOL(float, f32)
DEFINE_POOL(double, f64)
