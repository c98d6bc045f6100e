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

static void copy_runs(const char *src, char *dst, const int64_t *meta, size_t elem, ptrdiff_t lo, ptrdiff_t hi) {
    ptrdiff_t d = meta[0];
    const int64_t *shape = meta + 1, *ss = meta + 1 + d, *ds = meta + 1 + d + (d - 1);
    size_t run = (size_t)shape[d - 1] * elem;
    ptrdiff_t idx[COPY_MAX_DIMS];
    /* the multi-index of run lo over the leading d - 1 axes, and its offsets */
    ptrdiff_t rest = lo, so = 0, dof = 0;
    for (ptrdiff_t a = d - 2; a >= 0; a--) {
        idx[a] = rest % shape[a];
        rest /= shape[a];
        so += idx[a] * ss[a];
        dof += idx[a] * ds[a];
    }
    for (ptrdiff_t r = lo; r < hi; r++) {
        memcpy(dst + dof * (ptrdiff_t)elem, src + so * (ptrdiff_t)elem, run);
        for (ptrdiff_t a = d - 2; a >= 0; a--) { /* odometer step */
            idx[a]++;
            so += ss[a];
            dof += ds[a];
            if (idx[a] < shape[a]) break;
            so -= ss[a] * shape[a];
            dof -= ds[a] * shape[a];
            idx[a] = 0;
        }
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
