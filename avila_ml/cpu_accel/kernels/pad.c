/* Reflect / replicate / circular padding of a C-contiguous array over any of its axes, and its
 * adjoint (avila_kernels.h has the build and the conventions; avila_ml/cpu_accel/_native_pad.py
 * the Python side, avila_ml/ops/shape.py's BorderPad / BorderPadAdjoint the ops):
 *
 *   border_pad      out[p_0, ..., p_{d-1}] = x[m_0(p_0), ..., m_{d-1}(p_{d-1})]
 *   border_pad_adj  gx[j] = sum of g[p] over every p with m(p) = j
 *
 * with one index map m_a per axis (the padded position's source, ops/shape.py's _pad_index).
 * Both walk planes of the last two axes: the forward copies each output row from its source
 * row (the run of the last axis's map that steps by one as a block copy, the border elements one
 * by one); the adjoint gives each plane of gx to one thread, which sums every g plane that maps
 * onto it -- the preimages along the leading axes from the inverse maps -- scattering rows and
 * elements within its own plane only, so no two threads write one element. Planes are split
 * statically over the OpenMP team.
 *
 * meta (int64): d, in_shape[d], out_shape[d], run[3] (the last axis's run: first output
 * position, length, first source position), the maps m_a (out_shape[a] entries each, axis
 * after axis), then per axis a < d - 2 the inverse map as CSR: start[in_shape[a] + 1] and the
 * output positions pos[out_shape[a]], sorted by source.
 */
#include <stdint.h>
#include <string.h>
#include "avila_kernels.h"

#define MAX_DIMS 16

typedef struct {
    ptrdiff_t d, in[MAX_DIMS], out[MAX_DIMS], in_stride[MAX_DIMS], out_stride[MAX_DIMS];
    ptrdiff_t run0, run_len, run_src;
    const int64_t *map[MAX_DIMS], *start[MAX_DIMS], *pos[MAX_DIMS];
} pad_geom;

/* meta as a pad_geom; 0 when it does not describe a padding (too many dims, a 0-d array) */
static int read_meta(const int64_t *meta, pad_geom *g) {
    ptrdiff_t d = meta[0];
    if (d < 1 || d > MAX_DIMS) return 0;
    g->d = d;
    for (ptrdiff_t a = 0; a < d; a++) {
        g->in[a] = meta[1 + a];
        g->out[a] = meta[1 + d + a];
    }
    g->in_stride[d - 1] = g->out_stride[d - 1] = 1;
    for (ptrdiff_t a = d - 2; a >= 0; a--) {
        g->in_stride[a] = g->in_stride[a + 1] * g->in[a + 1];
        g->out_stride[a] = g->out_stride[a + 1] * g->out[a + 1];
    }
    const int64_t *p = meta + 1 + 2 * d;
    g->run0 = p[0];
    g->run_len = p[1];
    g->run_src = p[2];
    p += 3;
    for (ptrdiff_t a = 0; a < d; a++) {
        g->map[a] = p;
        p += g->out[a];
    }
    for (ptrdiff_t a = 0; a + 2 < d; a++) {
        g->start[a] = p;
        p += g->in[a] + 1;
        g->pos[a] = p;
        p += g->out[a];
    }
    return 1;
}

/* planes: the product of all but the last two axes (1 for d <= 2) */
static ptrdiff_t planes(const ptrdiff_t *shape, ptrdiff_t d) {
    ptrdiff_t n = 1;
    for (ptrdiff_t a = 0; a + 2 < d; a++) n *= shape[a];
    return n;
}

#define DEFINE_PAD(T, SUF)                                                                      \
    /* one output row from its source row */                                                    \
    static inline void pad_row_##SUF(const T *src, T *dst, const pad_geom *g) {                 \
        const int64_t *m = g->map[g->d - 1];                                                    \
        ptrdiff_t n = g->out[g->d - 1], r0 = g->run0, r1 = g->run0 + g->run_len;                 \
        for (ptrdiff_t q = 0; q < r0; q++) dst[q] = src[m[q]];                                  \
        memcpy(dst + r0, src + g->run_src, (size_t)g->run_len * sizeof(T));                     \
        for (ptrdiff_t q = r1; q < n; q++) dst[q] = src[m[q]];                                  \
    }                                                                                           \
    /* output plane k: rows of the last two axes (one row for d = 1) */                        \
    static void pad_plane_##SUF(const T *x, T *out, const pad_geom *g, ptrdiff_t k) {           \
        ptrdiff_t d = g->d, src = 0, rem = k;                                                   \
        for (ptrdiff_t a = d - 3; a >= 0; a--) {                                                \
            src += g->map[a][rem % g->out[a]] * g->in_stride[a];                                \
            rem /= g->out[a];                                                                   \
        }                                                                                       \
        if (d == 1) {                                                                           \
            pad_row_##SUF(x, out, g);                                                           \
            return;                                                                             \
        }                                                                                       \
        ptrdiff_t rows = g->out[d - 2], len = g->out[d - 1];                                    \
        T *o = out + k * rows * len;                                                            \
        for (ptrdiff_t p = 0; p < rows; p++)                                                    \
            pad_row_##SUF(x + src + g->map[d - 2][p] * g->in_stride[d - 2], o + p * len, g);     \
    }                                                                                           \
    /* gx plane k: the sum of every g plane that maps onto it */                                \
    static void pad_adj_plane_##SUF(const T *gin, T *gx, const pad_geom *g, ptrdiff_t k) {      \
        ptrdiff_t d = g->d, lead = d > 2 ? d - 2 : 0;                                           \
        ptrdiff_t j[MAX_DIMS], idx[MAX_DIMS], rem = k;                                          \
        ptrdiff_t rows = d >= 2 ? g->in[d - 2] : 1, len = g->in[d - 1];                         \
        ptrdiff_t orows = d >= 2 ? g->out[d - 2] : 1, olen = g->out[d - 1];                     \
        T *acc = gx + k * rows * len;                                                           \
        memset(acc, 0, (size_t)(rows * len) * sizeof(T));                                       \
        for (ptrdiff_t a = lead - 1; a >= 0; a--) {                                             \
            j[a] = rem % g->in[a];                                                              \
            rem /= g->in[a];                                                                    \
            idx[a] = g->start[a][j[a]];                                                         \
            if (idx[a] == g->start[a][j[a] + 1]) return; /* no preimage: the plane stays 0 */   \
        }                                                                                       \
        const int64_t *m = g->map[d - 1];                                                       \
        ptrdiff_t r0 = g->run0, r1 = g->run0 + g->run_len, rs = g->run_src;                      \
        for (;;) {                                                                              \
            ptrdiff_t off = 0;                                                                  \
            for (ptrdiff_t a = 0; a < lead; a++) off += g->pos[a][idx[a]] * g->out_stride[a];   \
            const T *plane = gin + off;                                                         \
            for (ptrdiff_t p = 0; p < orows; p++) {                                             \
                const T *src = plane + p * olen;                                                \
                T *dst = acc + (d >= 2 ? g->map[d - 2][p] : 0) * len;                           \
                for (ptrdiff_t q = 0; q < r0; q++) dst[m[q]] += src[q];                         \
                for (ptrdiff_t t = 0; t < r1 - r0; t++) dst[rs + t] += src[r0 + t];             \
                for (ptrdiff_t q = r1; q < olen; q++) dst[m[q]] += src[q];                      \
            }                                                                                   \
            /* the next combination of preimages along the leading axes (odometer) */          \
            ptrdiff_t a = lead - 1;                                                             \
            while (a >= 0) {                                                                    \
                if (++idx[a] < g->start[a][j[a] + 1]) break;                                    \
                idx[a] = g->start[a][j[a]];                                                     \
                a--;                                                                            \
            }                                                                                   \
            if (a < 0) break;                                                                   \
        }                                                                                       \
    }                                                                                           \
    AVILA_EXPORT void avila_border_pad_##SUF(const T *x, T *out, const int64_t *meta, int threads) { \
        pad_geom g;                                                                             \
        if (!read_meta(meta, &g)) return;                                                       \
        AVILA_FOR_ITEMS(planes(g.out, g.d), pad_plane_##SUF(x, out, &g, it_));                  \
    }                                                                                           \
    AVILA_EXPORT void avila_border_pad_adj_##SUF(const T *gin, T *gx, const int64_t *meta, int threads) { \
        pad_geom g;                                                                             \
        if (!read_meta(meta, &g)) return;                                                       \
        AVILA_FOR_ITEMS(planes(g.in, g.d), pad_adj_plane_##SUF(gin, gx, &g, it_));              \
    }

DEFINE_PAD(float, f32)
DEFINE_PAD(double, f64)
