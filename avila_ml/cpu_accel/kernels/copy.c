/* A strided copy between two arrays of one shape whose last axis is contiguous in both
 * (avila_kernels.h has the build and the conventions; avila_ml/cpu_accel/_native.py's
 * copy_strided the Python side):
 *
 *   copy_nd   dst[i_0, ..., i_{d-1}] = src[i_0, ..., i_{d-1}]
 *
 * meta (int64): d, shape[d], src_strides[d - 1], dst_strides[d - 1] (in elements; the last axis
 * has stride 1 in both). The leading d - 1 axes form `rows` runs of shape[d - 1] elements; the
 * runs are split into one contiguous range per thread of the OpenMP team, each thread walking its
 * multi-index like an odometer and copying its runs with memcpy. NumPy's assignment into a
 * strided view runs on one thread: the q / k / v split's gradient of the small GPT (three (16, 4,
 * 128, 32) float32 arrays into their (16, 128, 3, 4, 32) layout) took 0.22 ms there.
 */
#include <stdint.h>
#include <string.h>
#include "avila_kernels.h"

#define COPY_MAX_DIMS 16

/* an odometer over the leading d - 1 axes of `shape`, with the element offsets of two arrays */
typedef struct {
    ptrdiff_t d, idx[COPY_MAX_DIMS], a, b;
    const int64_t *shape, *sa, *sb;
} odometer;

/* positioned at run `lo` (runs counted in C order over the leading axes) */
static inline void odo_start(odometer *o, ptrdiff_t d, const int64_t *shape, const int64_t *sa, const int64_t *sb,
                             ptrdiff_t lo) {
    o->d = d, o->shape = shape, o->sa = sa, o->sb = sb, o->a = 0, o->b = 0;
    ptrdiff_t rest = lo;
    for (ptrdiff_t k = d - 2; k >= 0; k--) {
        o->idx[k] = rest % shape[k];
        rest /= shape[k];
        o->a += o->idx[k] * sa[k];
        o->b += o->idx[k] * (sb != NULL ? sb[k] : 0);
    }
}

static inline void odo_step(odometer *o) {
    for (ptrdiff_t k = o->d - 2; k >= 0; k--) {
        o->idx[k]++;
        o->a += o->sa[k];
        if (o->sb != NULL) o->b += o->sb[k];
        if (o->idx[k] < o->shape[k]) return;
        o->a -= o->sa[k] * o->shape[k];
        if (o->sb != NULL) o->b -= o->sb[k] * o->shape[k];
        o->idx[k] = 0;
    }
}

static void copy_runs(const char *src, char *dst, const int64_t *meta, size_t elem, ptrdiff_t lo, ptrdiff_t hi) {
    ptrdiff_t d = meta[0];
    const int64_t *shape = meta + 1;
    size_t run = (size_t)shape[d - 1] * elem;
    odometer o;
    odo_start(&o, d, shape, meta + 1 + d, meta + 1 + d + (d - 1), lo);
    for (ptrdiff_t r = lo; r < hi; r++) {
        memcpy(dst + o.b * (ptrdiff_t)elem, src + o.a * (ptrdiff_t)elem, run);
        odo_step(&o);
    }
}

#define DEFINE_COPY(T, SUF)                                                                     \
    AVILA_EXPORT void avila_copy_nd_##SUF(const T *src, T *dst, const int64_t *meta, ptrdiff_t rows, \
                                          int threads) {                                        \
        if (meta[0] < 1 || meta[0] > COPY_MAX_DIMS) return;                                     \
        if (meta[0] == 1) { memcpy(dst, src, (size_t)meta[1] * sizeof(T)); return; }            \
        AVILA_FOR_ROW_BLOCKS(rows, copy_runs((const char *)src, (char *)dst, meta, sizeof(T), lo_, hi_)); \
    }

DEFINE_COPY(float, f32)
DEFINE_COPY(double, f64)

/* augment_rows: the fused attention's augmented operands [a scale, c] (avila_ml/ops/
 * _attention_fused.py's _augment): for every run r of the source (its last axis, n elements,
 * contiguous), dst[r, :n] = src_run * scale and dst[r, n] = c, dst C-contiguous (rows, n + 1);
 * with sq non-NULL also sq[r] = the sum of squares of dst[r, :n] (the row norms the short path
 * bounds its scores with). meta: d, shape[d], src_strides[d - 1] (elements). Runs split over the
 * team like copy_nd's. */
#define DEFINE_AUGMENT(T, SUF)                                                                  \
    AVILA_CLONES static void augment_part_##SUF(const T *restrict src, T *restrict dst, T *restrict sq, \
                                                const int64_t *meta, T scale, T c, ptrdiff_t lo, \
                                                ptrdiff_t hi) {                                 \
        ptrdiff_t d = meta[0], n = meta[d];                                                     \
        odometer o;                                                                             \
        odo_start(&o, d, meta + 1, meta + 1 + d, NULL, lo);                                     \
        for (ptrdiff_t r = lo; r < hi; r++) {                                                   \
            const T *restrict a = src + o.a;                                                    \
            T *restrict out = dst + r * (n + 1);                                                \
            for (ptrdiff_t j = 0; j < n; j++) out[j] = a[j] * scale;                            \
            out[n] = c;                                                                         \
            if (sq != NULL) {                                                                   \
                T acc = 0;                                                                      \
                for (ptrdiff_t j = 0; j < n; j++) acc += out[j] * out[j];                       \
                sq[r] = acc;                                                                    \
            }                                                                                   \
            odo_step(&o);                                                                       \
        }                                                                                       \
    }                                                                                           \
    AVILA_EXPORT void avila_augment_rows_##SUF(const T *src, T *dst, T *sq, const int64_t *meta, T scale, \
                                               T c, ptrdiff_t rows, int threads) {              \
        if (meta[0] < 1 || meta[0] > COPY_MAX_DIMS) return;                                    \
        AVILA_FOR_ROW_BLOCKS(rows, augment_part_##SUF(src, dst, sq, meta, scale, c, lo_, hi_)); \
    }

DEFINE_AUGMENT(float, f32)
DEFINE_AUGMENT(double, f64)
