/* 2-d max pooling of (N, C, H, W) C-contiguous arrays: the forward with each window's argmax
 * code, and its adjoint (avila_kernels.h has the build and the conventions;
 * avila_ml/cpu_accel/_native_pool.py the Python side).
 *
 *   maxpool2d_fwd  y[p, i, j] = max over the window's positions inside the input, scanned in
 *                  row-major order with PyTorch's CPU rule: a value replaces the running maximum
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
#include <string.h>
#include "avila_kernels.h"

typedef struct {
    ptrdiff_t h, w, oh, ow;
    int kh, kw, sh, sw, ph, pw, dh, dw;
} pool2d_geom;

static inline void put_code(void *code, ptrdiff_t i, int size, int v) {
    if (size == 1) ((signed char *)code)[i] = (signed char)v;
    else if (size == 2) ((short *)code)[i] = (short)v;
    else ((int *)code)[i] = v;
}

static inline int get_code(const void *code, ptrdiff_t i, int size) {
    if (size == 1) return ((const signed char *)code)[i];
    if (size == 2) return ((const short *)code)[i];
    return ((const int *)code)[i];
}

/* the first and one-past-last kernel offsets along one axis whose positions lie inside [0, n) */
static inline void inside(ptrdiff_t start, int k, int d, ptrdiff_t n, int *a0, int *a1) {
    int lo = 0, hi = k;
    while (lo < k && start + (ptrdiff_t)lo * d < 0) lo++;
    while (hi > lo && start + (ptrdiff_t)(hi - 1) * d >= n) hi--;
    *a0 = lo;
    *a1 = hi;
}

#define DEFINE_POOL(T, SUF)                                                                     \
    static void maxpool2d_fwd_plane_##SUF(const T *x, T *y, void *code, int code_size,          \
                                          const pool2d_geom *g, ptrdiff_t p) {                  \
        const T *xp = x + p * g->h * g->w;                                                      \
        ptrdiff_t out0 = p * g->oh * g->ow;                                                     \
        for (ptrdiff_t i = 0; i < g->oh; i++) {                                                 \
            ptrdiff_t r0 = i * g->sh - g->ph;                                                   \
            int a0, a1;                                                                         \
            inside(r0, g->kh, g->dh, g->h, &a0, &a1);                                           \
            for (ptrdiff_t j = 0; j < g->ow; j++) {                                             \
                ptrdiff_t c0 = j * g->sw - g->pw;                                               \
                int b0, b1;                                                                     \
                inside(c0, g->kw, g->dw, g->w, &b0, &b1);                                       \
                T best = -(T)INFINITY;                                                          \
                int arg = a0 * g->kw + b0;                                                      \
                for (int a = a0; a < a1; a++) {                                                 \
                    const T *row = xp + (r0 + (ptrdiff_t)a * g->dh) * g->w + c0;                \
                    for (int b = b0; b < b1; b++) {                                             \
                        T v = row[(ptrdiff_t)b * g->dw];                                        \
                        if (v > best || v != v) {                                               \
                            best = v;                                                           \
                            arg = a * g->kw + b;                                                \
                        }                                                                       \
                    }                                                                           \
                }                                                                               \
                y[out0 + i * g->ow + j] = best;                                                 \
                put_code(code, out0 + i * g->ow + j, code_size, arg);                           \
            }                                                                                   \
        }                                                                                       \
    }                                                                                           \
    static void maxpool2d_bwd_plane_##SUF(const T *gy, const void *code, int code_size, T *gx,  \
                                          const pool2d_geom *g, ptrdiff_t p) {                  \
        T *gp = gx + p * g->h * g->w;                                                           \
        memset(gp, 0, sizeof(T) * (size_t)(g->h * g->w));                                       \
        ptrdiff_t out0 = p * g->oh * g->ow;                                                     \
        for (ptrdiff_t i = 0; i < g->oh; i++)                                                   \
            for (ptrdiff_t j = 0; j < g->ow; j++) {                                             \
                int c = get_code(code, out0 + i * g->ow + j, code_size);                        \
                ptrdiff_t r = i * g->sh - g->ph + (ptrdiff_t)(c / g->kw) * g->dh;               \
                ptrdiff_t q = j * g->sw - g->pw + (ptrdiff_t)(c % g->kw) * g->dw;               \
                gp[r * g->w + q] += gy[out0 + i * g->ow + j];                                   \
            }                                                                                   \
    }                                                                                           \
    AVILA_EXPORT void avila_maxpool2d_fwd_##SUF(const T *x, T *y, void *code, int code_size,    \
                                                const long long *geom, ptrdiff_t planes,        \
                                                int threads) {                                  \
        pool2d_geom g = {geom[0], geom[1], geom[2], geom[3], (int)geom[4], (int)geom[5],        \
                         (int)geom[6], (int)geom[7], (int)geom[8], (int)geom[9], (int)geom[10], \
                         (int)geom[11]};                                                        \
        if (threads > 1) {                                                                      \
            _Pragma("omp parallel for schedule(static) num_threads(threads)")                   \
            for (ptrdiff_t p = 0; p < planes; p++) maxpool2d_fwd_plane_##SUF(x, y, code, code_size, &g, p); \
        } else {                                                                                \
            for (ptrdiff_t p = 0; p < planes; p++) maxpool2d_fwd_plane_##SUF(x, y, code, code_size, &g, p); \
        }                                                                                       \
    }                                                                                           \
    AVILA_EXPORT void avila_maxpool2d_bwd_##SUF(const T *gy, const void *code, int code_size,   \
                                                T *gx, const long long *geom, ptrdiff_t planes, \
                                                int threads) {                                  \
        pool2d_geom g = {geom[0], geom[1], geom[2], geom[3], (int)geom[4], (int)geom[5],        \
                         (int)geom[6], (int)geom[7], (int)geom[8], (int)geom[9], (int)geom[10], \
                         (int)geom[11]};                                                        \
        if (threads > 1) {                                                                      \
            _Pragma("omp parallel for schedule(static) num_threads(threads)")                   \
            for (ptrdiff_t p = 0; p < planes; p++) maxpool2d_bwd_plane_##SUF(gy, code, code_size, gx, &g, p); \
        } else {                                                                                \
            for (ptrdiff_t p = 0; p < planes; p++) maxpool2d_bwd_plane_##SUF(gy, code, code_size, gx, &g, p); \
        }                                                                                       \
    }

DEFINE_POOL(float, f32)
DEFINE_POOL(double, f64)
