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
#include <stdint.h>
#include <stdlib.h>

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

/* CALL (using the thread index t_ of a team of T_) on a team of `threads` threads, recording the
 * team's real size in `used`; in the calling thread alone (t_ = 0, T_ = 1) when threads <= 1 */
#ifdef _OPENMP
#define COLSUM_TEAM(CALL)                                                                       \
    do {                                                                                        \
        if (threads > 1) {                                                                      \
            _Pragma("omp parallel num_threads(threads)")                                        \
            {                                                                                   \
                ptrdiff_t t_ = omp_get_thread_num(), T_ = omp_get_num_threads();                \
                if (t_ == 0) used = (int)T_;                                                    \
                CALL;                                                                           \
            }                                                                                   \
        } else {                                                                                \
            ptrdiff_t t_ = 0, T_ = 1;                                                           \
            CALL;                                                                               \
        }                                                                                       \
    } while (0)
#else
#define COLSUM_TEAM(CALL)                                                                       \
    do {                                                                                        \
        ptrdiff_t t_ = 0, T_ = 1;                                                               \
        CALL;                                                                                   \
    } while (0)
#endif

/* colsum: out[j] = sum over rows i of g[i, j] for a C-contiguous (m, n) array -- the bias
 * gradient of a linear layer, PyTorch's g.sum(0). Each thread of the team sums a contiguous
 * block of rows: chunks of COLSUM_CHUNK rows are summed into a chunk buffer (the inner loop
 * runs along a row, so it is vectorised and reads memory in order), and each chunk's sums are
 * added to the thread's total (a two-level sum: the rounding error grows with
 * COLSUM_CHUNK + m / COLSUM_CHUNK additions, not m). The threads' totals are added in thread
 * order after the team, so a given team size gives the same bits every time. */
#define COLSUM_CHUNK 64
#define COLSUM_COLUMNS 65536 /* columns summed per pass: 256 KiB of float32 sums */

#define DEFINE_COLSUM(T, SUF)                                                                   \
    AVILA_CLONES static void colsum_rows_##SUF(const T *restrict g, T *restrict total,          \
                                               T *restrict chunk, ptrdiff_t lo, ptrdiff_t hi,   \
                                               ptrdiff_t n) {                                   \
        for (ptrdiff_t j = 0; j < n; j++) total[j] = 0;                                         \
        for (ptrdiff_t c0 = 0; c0 < n; c0 += COLSUM_COLUMNS) { /* chunk sums stay in L2 */      \
            ptrdiff_t w = n - c0 < COLSUM_COLUMNS ? n - c0 : COLSUM_COLUMNS;                     \
            T *restrict c = chunk + c0, *restrict t = total + c0;                               \
            for (ptrdiff_t r0 = lo; r0 < hi; r0 += COLSUM_CHUNK) {                              \
                ptrdiff_t r1 = r0 + COLSUM_CHUNK < hi ? r0 + COLSUM_CHUNK : hi, r = r0;         \
                for (ptrdiff_t j = 0; j < w; j++) c[j] = 0;                                     \
                for (; r + 4 <= r1; r += 4) { /* four rows a pass: one load and store of c */   \
                    const T *a = g + r * n + c0, *b = a + n, *d = b + n, *e = d + n;            \
                    for (ptrdiff_t j = 0; j < w; j++) c[j] += (a[j] + b[j]) + (d[j] + e[j]);    \
                }                                                                               \
                for (; r < r1; r++) {                                                           \
                    const T *a = g + r * n + c0;                                                \
                    for (ptrdiff_t j = 0; j < w; j++) c[j] += a[j];                             \
                }                                                                               \
                for (ptrdiff_t j = 0; j < w; j++) t[j] += c[j];                                 \
            }                                                                                   \
        }                                                                                       \
    }                                                                                           \
    AVILA_EXPORT void avila_colsum_##SUF(const T *g, T *out, ptrdiff_t m, ptrdiff_t n,          \
                                         int threads) {                                         \
        if (threads < 1 || m < 2) threads = 1;                                                  \
        /* two buffers of n per thread: its total (thread 0's is out) and its chunk sums */    \
        T *scratch = (T *)malloc(sizeof(T) * (size_t)(n > 0 ? n : 1) * (size_t)(2 * threads));  \
        if (scratch == NULL) { /* no memory for the buffers: one-level sums, one thread */      \
            for (ptrdiff_t j = 0; j < n; j++) out[j] = 0;                                       \
            for (ptrdiff_t r = 0; r < m; r++)                                                   \
                for (ptrdiff_t j = 0; j < n; j++) out[j] += g[r * n + j];                       \
            return;                                                                             \
        }                                                                                       \
        int used = 1;                                                                           \
        COLSUM_TEAM(colsum_rows_##SUF(g, t_ == 0 ? out : scratch + 2 * t_ * n,                  \
                                      scratch + (2 * t_ + 1) * n, m * t_ / T_,                  \
                                      m * (t_ + 1) / T_, n));                                   \
        for (int t = 1; t < used; t++)                                                          \
            for (ptrdiff_t j = 0; j < n; j++) out[j] += scratch[2 * t * n + j];                 \
        free(scratch);                                                                          \
    }

DEFINE_COLSUM(float, f32)
DEFINE_COLSUM(double, f64)

/* index_add_rows: out[index[i], :] += values[i, :] for i = 0 .. m-1, out (n, D) and values (m, D)
 * C-contiguous, index int64 in [0, n) (checked by the caller) -- the embedding gradient and
 * index_add along the first axis. Each thread of the team owns a contiguous block of out's rows
 * and walks the whole index, adding the entries that fall in its block: no two threads write one
 * row, and each row receives its entries in index order, as np.add.at adds them (the same
 * bits). */
#define DEFINE_INDEX_ADD(T, SUF)                                                                \
    AVILA_CLONES static void index_add_block_##SUF(T *restrict out, const int64_t *restrict index, \
                                                   const T *restrict values, ptrdiff_t m,       \
                                                   ptrdiff_t d, ptrdiff_t lo, ptrdiff_t hi) {   \
        for (ptrdiff_t i = 0; i < m; i++) {                                                     \
            int64_t r = index[i];                                                               \
            if (r < lo || r >= hi) continue;                                                    \
            T *restrict o = out + r * d;                                                        \
            const T *restrict v = values + i * d;                                               \
            for (ptrdiff_t j = 0; j < d; j++) o[j] += v[j];                                     \
        }                                                                                       \
    }                                                                                           \
    AVILA_EXPORT void avila_index_add_rows_##SUF(T *out, const int64_t *index, const T *values, \
                                                 ptrdiff_t n, ptrdiff_t m, ptrdiff_t d,         \
                                                 int threads) {                                 \
        AVILA_FOR_ROW_BLOCKS(n, index_add_block_##SUF(out, index, values, m, d, lo_, hi_));     \
    }

DEFINE_INDEX_ADD(float, f32)
DEFINE_INDEX_ADD(double, f64)
