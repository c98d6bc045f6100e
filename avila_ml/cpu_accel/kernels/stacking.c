/* The kernel-time stacking of a 4-d convolution written straight into the channel-blocked
 * layout of oneDNN's 3-d convolution, and the way back (avila_kernels.h has the build and the
 * conventions; avila_ml/cpu_accel/_native_stacking.py the Python side, _conv._Stacking the
 * stacking itself).
 *
 * A plain (N, C, T, R) array x (R the product of the trailing spatial sizes) and a block of
 * frames f = (n, i), n0 <= n < n0 + nn, i0 <= i < i0 + ni (f = (n - n0) ni + (i - i0)), seen
 * as the stacked rows
 *
 *     row(f, ch) = x[n, c, i s + k d - lo, :]   for ch = c P + k < real (P offsets k),
 *                = 0                            when that time is outside [0, T) or ch >= real,
 *
 * are reordered to / from oneDNN's blocked layout (nCdhw8c for B = 8):
 *
 *   to_blocked:  blocked[f, ch / B, r, ch % B] = row(f, ch)[r]       (zero rows included)
 *   else:        x[n, c, i s + k d - lo, r] = blocked[f, ch / B, r, ch % B]  for the rows that
 *                exist (zero rows are skipped); meant for P = 1, s = d = 1, lo = 0, where each
 *                row of x is written once (the frames of a convolution's output)
 *
 * That is the NumPy stacking copy and oneDNN's reorder of it in one pass (the same for the
 * output-gradient frames with P = 1). Each (frame, block) pair is a transpose of B rows of
 * length R into (R x B), done in 8 x 8 tiles in AVX registers where the CPU has AVX (scalar
 * otherwise); pairs and chunks of positions are split statically over the OpenMP team.
 *
 * g: C, T, R, P, s, d, lo, real, n0, nn, i0, ni, B, nb (nb B >= real: the blocks).
 *
 * unstack_add (the input gradient): x[n, c, i s + k d - lo, r] += blocked[f, ch / B, r, ch % B]
 * for every row of the block that exists, ch = c P + k; each (n, c) pair is one work item, so
 * no two threads add into one row of x, and its sums run offset by offset (k outermost), the
 * order of _conv._Stacking's NumPy adds, so both give the same bits.
 *
 * B = 0 asks for the plain stacked array instead (oneDNN's layout when it takes the input as
 * is, e.g. 3 stacked channels): plain[f, ch, r] = row(f, ch)[r] for ch < nb (to_blocked only),
 * one row copy each, where NumPy's stacking took a strided copy per offset and a zeroing pass.
 */
#include <stdint.h>
#include <string.h>
#include "avila_kernels.h"

enum { G_C, G_T, G_R, G_P, G_S, G_D, G_LO, G_REAL, G_N0, G_NN, G_I0, G_NI, G_B, G_NB };

#define CHUNK 256 /* positions per work item */

/* row(f, ch) of x as an offset in elements, or -1 for a zero row */
static inline ptrdiff_t row_offset(const int64_t *g, ptrdiff_t f, ptrdiff_t ch) {
    if (ch >= g[G_REAL]) return -1;
    ptrdiff_t n = g[G_N0] + f / g[G_NI], i = g[G_I0] + f % g[G_NI];
    ptrdiff_t c = ch / g[G_P], k = ch % g[G_P];
    ptrdiff_t t = i * g[G_S] + k * g[G_D] - g[G_LO];
    if (t < 0 || t >= g[G_T]) return -1;
    return ((n * g[G_C] + c) * g[G_T] + t) * g[G_R];
}

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define AVILA_STACK_AVX 1

/* the 8 x 8 transpose of v[0..7] in place (v[j] becomes column j) */
__attribute__((target("avx"))) static inline void transpose8(__m256 *v) {
    __m256 t0 = _mm256_unpacklo_ps(v[0], v[1]), t1 = _mm256_unpackhi_ps(v[0], v[1]),
           t2 = _mm256_unpacklo_ps(v[2], v[3]), t3 = _mm256_unpackhi_ps(v[2], v[3]),
           t4 = _mm256_unpacklo_ps(v[4], v[5]), t5 = _mm256_unpackhi_ps(v[4], v[5]),
           t6 = _mm256_unpacklo_ps(v[6], v[7]), t7 = _mm256_unpackhi_ps(v[6], v[7]);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE),
           s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE),
           s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE),
           s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    v[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
    v[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    v[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
    v[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    v[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
    v[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    v[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
    v[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

/* positions [p0, p0 + 8 m) of 8 rows (row[j] NULL: zeros) into out[p B + j], p relative */
__attribute__((target("avx"))) static void gather8(const float *const *row, float *out, ptrdiff_t B, ptrdiff_t m) {
    __m256 v[8];
    for (ptrdiff_t p = 0; p < 8 * m; p += 8) {
        for (int j = 0; j < 8; j++) v[j] = row[j] ? _mm256_loadu_ps(row[j] + p) : _mm256_setzero_ps();
        transpose8(v);
        for (int q = 0; q < 8; q++) _mm256_storeu_ps(out + (p + q) * B, v[q]);
    }
}

/* the adjoint: in[p B + j] for 8 rows to row[j] + p (NULL rows skipped) */
__attribute__((target("avx"))) static void scatter8(const float *in, float *const *row, ptrdiff_t B, ptrdiff_t m) {
    __m256 v[8];
    for (ptrdiff_t p = 0; p < 8 * m; p += 8) {
        for (int q = 0; q < 8; q++) v[q] = _mm256_loadu_ps(in + (p + q) * B);
        transpose8(v);
        for (int j = 0; j < 8; j++)
            if (row[j]) _mm256_storeu_ps(row[j] + p, v[j]);
    }
}

static int stack_avx(void) {
    static int have = -1;
    if (have < 0) have = __builtin_cpu_supports("avx") ? 1 : 0;
    return have;
}
#endif

#define DEFINE_STACK(T, SUF, GATHER8, SCATTER8)                                                 \
    /* work item: frame f, block cb, positions [r0, r0 + len) */                                \
    static void stack_item_##SUF(T *x, T *blocked, const int64_t *g, int to_blocked, ptrdiff_t it) { \
        ptrdiff_t R = g[G_R], B = g[G_B], nb = g[G_NB], chunks = (R + CHUNK - 1) / CHUNK;       \
        ptrdiff_t r0 = (it % chunks) * CHUNK, q = it / chunks, cb = q % nb, f = q / nb;         \
        ptrdiff_t len = R - r0 < CHUNK ? R - r0 : CHUNK;                                        \
        T *out = blocked + ((f * nb + cb) * R + r0) * B;                                        \
        T *row[64];                                                                             \
        for (ptrdiff_t j = 0; j < B; j++) {                                                     \
            ptrdiff_t off = row_offset(g, f, cb * B + j);                                       \
            row[j] = off < 0 ? NULL : x + off + r0;                                             \
        }                                                                                       \
        ptrdiff_t done = 0; /* positions done by the vector tiles, for every row */             \
        if (len >= 8) {                                                                         \
            ptrdiff_t m = len / 8;                                                              \
            int tiled = 1;                                                                      \
            for (ptrdiff_t j0 = 0; j0 + 8 <= B && tiled; j0 += 8) {                             \
                if (to_blocked) tiled = GATHER8((const T *const *)(row + j0), out + j0, B, m);  \
                else tiled = SCATTER8(out + j0, row + j0, B, m);                                \
            }                                                                                   \
            if (tiled && B % 8 == 0) done = 8 * m;                                              \
        }                                                                                       \
        for (ptrdiff_t p = done; p < len; p++)                                                  \
            for (ptrdiff_t j = 0; j < B; j++) {                                                 \
                if (to_blocked) out[p * B + j] = row[j] ? row[j][p] : (T)0;                     \
                else if (row[j]) row[j][p] = out[p * B + j];                                    \
            }                                                                                   \
    }                                                                                           \
    /* work item of the plain form: the rows of frame f */                                     \
    static void stack_plain_##SUF(const T *x, T *out, const int64_t *g, ptrdiff_t f) {          \
        ptrdiff_t R = g[G_R], chans = g[G_NB];                                                  \
        for (ptrdiff_t ch = 0; ch < chans; ch++) {                                              \
            ptrdiff_t off = row_offset(g, f, ch);                                               \
            T *o = out + (f * chans + ch) * R;                                                  \
            if (off < 0) memset(o, 0, (size_t)R * sizeof(T));                                   \
            else memcpy(o, x + off, (size_t)R * sizeof(T));                                     \
        }                                                                                       \
    }                                                                                           \
    /* work item of unstack_add: sample n0 + q / C, channel q % C */                          \
    AVILA_CLONES static void unstack_item_##SUF(T *x, const T *blocked, const int64_t *g, ptrdiff_t q) { \
        ptrdiff_t C = g[G_C], R = g[G_R], P = g[G_P], B = g[G_B], nb = g[G_NB], ni = g[G_NI];      \
        ptrdiff_t nl = q / C, c = q % C;                                                        \
        for (ptrdiff_t k = 0; k < P; k++) { /* offsets outermost: NumPy's order of the sums */  \
            for (ptrdiff_t il = 0; il < ni; il++) {                                             \
                ptrdiff_t f = nl * ni + il, ch = c * P + k, off = row_offset(g, f, ch);         \
                if (off < 0) continue;                                                          \
                T *row = x + off;                                                               \
                const T *src = blocked + (f * nb + ch / B) * R * B + ch % B;                    \
                for (ptrdiff_t r = 0; r < R; r++) row[r] += src[r * B];                         \
            }                                                                                   \
        }                                                                                       \
    }                                                                                           \
    AVILA_EXPORT void avila_unstack_add_##SUF(T *x, const T *blocked, const int64_t *g, int threads) { \
        if (g[G_B] > 64 || g[G_B] < 1) return;                                                  \
        AVILA_FOR_ITEMS(g[G_NN] * g[G_C], unstack_item_##SUF(x, blocked, g, it_));              \
    }                                                                                           \
    AVILA_EXPORT void avila_stack_blocked_##SUF(T *x, T *blocked, const int64_t *g, int to_blocked, \
                                                int threads) {                                  \
        ptrdiff_t chunks = (g[G_R] + CHUNK - 1) / CHUNK;                                        \
        if (g[G_B] == 0 && to_blocked) {                                                        \
            AVILA_FOR_ITEMS(g[G_NN] * g[G_NI], stack_plain_##SUF(x, blocked, g, it_));          \
            return;                                                                             \
        }                                                                                       \
        if (g[G_B] > 64 || g[G_B] < 1) return;                                                  \
        AVILA_FOR_ITEMS(g[G_NN] * g[G_NI] * g[G_NB] * chunks, stack_item_##SUF(x, blocked, g, to_blocked, it_)); \
    }

#ifdef AVILA_STACK_AVX
static inline int gather8_f32(const float *const *row, float *out, ptrdiff_t B, ptrdiff_t m) {
    if (!stack_avx()) return 0;
    gather8(row, out, B, m);
    return 1;
}
static inline int scatter8_f32(const float *in, float *const *row, ptrdiff_t B, ptrdiff_t m) {
    if (!stack_avx()) return 0;
    scatter8(in, row, B, m);
    return 1;
}
DEFINE_STACK(float, f32, gather8_f32, scatter8_f32)
#else
#define NO_TILES(a, b, c, d) 0
DEFINE_STACK(float, f32, NO_TILES, NO_TILES)
#endif
#ifndef NO_TILES
#define NO_TILES(a, b, c, d) 0
#endif
DEFINE_STACK(double, f64, NO_TILES, NO_TILES)
