/* The causal mask of the fused CPU attention (avila_ml/ops/_attention_fused.py), where NumPy
 * took a slice store and a masked copy per tile (avila_kernels.h has the build and the
 * conventions; the wrapper is avila_ml/cpu_accel/_native.py's causal_zero):
 *
 *   causal_zero  p[b, r, c] = 0 where key j0 + c lies after query i0 + r   (is_causal)
 *                p is (nb, n, m) C-contiguous; row r keeps its first max(0, i0 + r + 1 - j0)
 *                columns. A store of zeros, not a product with a 0/1 mask: a masked entry
 *                may have overflowed to inf, and inf * 0 is NaN.
 *
 * Rows are split statically over the OpenMP team.
 */
#include <string.h>
#include "avila_kernels.h"

#define DEFINE_ATTN(T, SUF)                                                                     \
    static inline void causal_row_##SUF(T *p, ptrdiff_t n, ptrdiff_t m, ptrdiff_t i0, ptrdiff_t j0, \
                                        ptrdiff_t row) {                                        \
        ptrdiff_t r = row % n, keep = i0 + r + 1 - j0;                                          \
        keep = keep < 0 ? 0 : (keep > m ? m : keep);                                            \
        if (keep < m) memset(p + row * m + keep, 0, (size_t)(m - keep) * sizeof(T));            \
    }                                                                                           \
    AVILA_EXPORT void avila_causal_zero_##SUF(T *p, ptrdiff_t nb, ptrdiff_t n, ptrdiff_t m, ptrdiff_t i0, \
                                              ptrdiff_t j0, int threads) {                      \
        AVILA_FOR_ITEMS(nb * n, causal_row_##SUF(p, n, m, i0, j0, it_));                        \
    }

DEFINE_ATTN(float, f32)
DEFINE_ATTN(double, f64)
