/* The gradient of amax / amin over the trailing axes of a C-contiguous array, seen as rows of
 * S values (avila_kernels.h has the build and the conventions; avila_ml/cpu_accel/_native.py's
 * amax_backward the Python side).
 *
 *   amax_bwd  per row r with result o[r] and gradient g[r]: the matches are the x == o[r]
 *             (with nan_ties also the NaN x where o[r] is NaN: max()/min() of all elements);
 *             dx = (g[r] / count) * (match ? 1 : 0), NaN over the whole row when nothing
 *             matches (amax's NaN result: (g / 0) * 0)  -- PyTorch's scale_grad_by_count,
 *             in the element type
 *
 * One pass counts a row's matches, a second writes it (the row stays in cache between them);
 * rows are split over the OpenMP team.
 */
#include "avila_kernels.h"

#define DEFINE_AMAX(T, SUF)                                                                     \
    AVILA_CLONES static void amax_bwd_row_##SUF(const T *restrict x, T o, T g, T *restrict dx,  \
                                                ptrdiff_t s, int nan_ties) {                    \
        int nan_o = nan_ties && o != o;                                                         \
        ptrdiff_t count = 0;                                                                    \
        for (ptrdiff_t i = 0; i < s; i++) {                                                     \
            T v = x[i];                                                                         \
            count += (v == o) | (nan_o & (v != v));                                             \
        }                                                                                       \
        /* PyTorch's (g / count) * mask: g / 0 is inf or NaN, times 0 NaN, where nothing matched */ \
        T q = g / (T)count;                                                                     \
        T gw = q, gz = q * (T)0;                                                                \
        for (ptrdiff_t i = 0; i < s; i++) {                                                     \
            T v = x[i];                                                                         \
            int m = (v == o) | (nan_o & (v != v));                                              \
            dx[i] = m ? gw : gz;                                                                \
        }                                                                                       \
    }                                                                                           \
    AVILA_EXPORT void avila_amax_bwd_##SUF(const T *x, const T *o, const T *g, T *dx,           \
                                           ptrdiff_t rows, ptrdiff_t s, int nan_ties,           \
                                           int threads) {                                       \
        AVILA_FOR_ITEMS(rows, amax_bwd_row_##SUF(x + it_ * s, o[it_], g[it_], dx + it_ * s, s,  \
                                                 nan_ties));                                    \
    }

DEFINE_AMAX(float, f32)
DEFINE_AMAX(double, f64)
