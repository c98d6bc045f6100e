/* Fused optimizer updates (avila_kernels.h has the build and the conventions;
 * avila_ml/cpu_accel/_native_optim.py the Python side, avila_ml/optim/_fused.py the NumPy
 * reference these replace on float32/float64 CPU arrays).
 *
 * Each update reads the parameter, its gradient and its state once and writes the parameter
 * and the state once, where the NumPy formula makes 6-12 ufunc passes; the array is cut into one
 * contiguous range per thread of the OpenMP team.
 *
 * The arithmetic is PyTorch's _single_tensor_sgd / _single_tensor_rmsprop operation by
 * operation, in the element type, each product rounded before the following sum (the same
 * order as _fused.py's NumPy calls, so the two paths agree bitwise): neither target clone
 * (baseline x86-64, AVX2) has FMA, so GCC cannot contract a*b + c.
 *
 *   sgd      d = maximize ? -g : g;  if wd: d = p wd + d (as  p wd - g  when maximizing)
 *            momentum: b = d at the first step, else b = b mom + d (1 - dampening)
 *                      d = nesterov ? d + b mom : b
 *            p = p + d (-lr)
 *   rmsprop  d as above;  v = v alpha + (d (1 - alpha)) d
 *            centered: ga = lerp(ga, d, 1 - alpha);  a = sqrt(v - ga ga) + eps,  else sqrt(v) + eps
 *            momentum: b = b mom + d / a;  p = p + b (-lr),  else  p = p + (d (-lr)) / a
 *
 *   adam     see ADAM_LOOP (Adam and AdamW, amsgrad)
 *
 * lerp(x, d, w) is PyTorch's: x + w (d - x) when w < 0.5 (lerp_low), else d - (d - x)(1 - w).
 */
#include "avila_kernels.h"

/* The square roots vectorise because setup.py compiles with -fno-math-errno (a negative operand
 * still gives NaN, as NumPy's sqrt; only errno is left unset): with errno GCC calls sqrtf for
 * every element that could set it. */

/* SGD's update over [lo, hi) for one momentum case, named sgd_NAME_SUF. The buffer's update
 * b mom + d (1 - dampening) multiplies by 1 - dampening even when it is 1 (the NumPy path skips
 * that pass): d * 1 == d exactly, NaN and infinities included. */
#define SGD_LOOP(T, SUF, NAME, MOMENTUM, FIRST, NESTEROV)                                       \
    AVILA_CLONES static void sgd_##NAME##_##SUF(T *restrict p, const T *restrict g,             \
                                                T *restrict buf, T lr, T mom, T omd, T wd,      \
                                                int maximize, ptrdiff_t lo, ptrdiff_t hi) {     \
        const T neg_lr = -lr;                                                                   \
        (void)buf; (void)mom; (void)omd;                                                        \
        for (ptrdiff_t i = lo; i < hi; i++) {                                                   \
            T gi = g[i], pi = p[i];                                                             \
            T d = maximize ? -gi : gi;                                                          \
            if (wd != 0) d = maximize ? pi * wd - gi : pi * wd + gi;                            \
            if (MOMENTUM) {                                                                     \
                T b = FIRST ? d : buf[i] * mom + d * omd;                                       \
                buf[i] = b;                                                                     \
                d = NESTEROV ? d + b * mom : b;                                                 \
            }                                                                                   \
            p[i] = pi + d * neg_lr;                                                             \
        }                                                                                       \
    }

/* RMSprop's update over [lo, hi) for one (CENTERED, MOMENTUM) pair, named rmsprop_NAME_SUF */
#define RMSPROP_LOOP(T, SUF, SQRT, NAME, CENTERED, MOMENTUM)                                    \
    AVILA_CLONES static void rmsprop_##NAME##_##SUF(                                            \
        T *restrict p, const T *restrict g, T *restrict sq, T *restrict ga, T *restrict buf,    \
        T lr, T alpha, T oma, T weight, T omw, T eps, T wd, T mom, int lerp_low, int maximize,  \
        ptrdiff_t lo, ptrdiff_t hi) {                                                           \
        const T neg_lr = -lr;                                                                   \
        (void)ga; (void)buf; (void)weight; (void)omw; (void)mom; (void)lerp_low;                \
        for (ptrdiff_t i = lo; i < hi; i++) {                                                   \
            T gi = g[i], pi = p[i];                                                             \
            T d = maximize ? -gi : gi;                                                          \
            if (wd != 0) d = maximize ? pi * wd - gi : pi * wd + gi;                            \
            T v = sq[i] * alpha + (d * oma) * d;                                                \
            sq[i] = v;                                                                          \
            T a;                                                                                \
            if (CENTERED) {                                                                     \
                T x = ga[i], diff = d - x;                                                      \
                x = lerp_low ? x + diff * weight : d - diff * omw;                              \
                ga[i] = x;                                                                      \
                a = SQRT(v - x * x) + eps;                                                      \
            } else {                                                                            \
                a = SQRT(v) + eps;                                                              \
            }                                                                                   \
            if (MOMENTUM) {                                                                     \
                T b = buf[i] * mom + d / a;                                                     \
                buf[i] = b;                                                                     \
                p[i] = pi + b * neg_lr;                                                         \
            } else {                                                                            \
                p[i] = pi + (d * neg_lr) / a;                                                   \
            }                                                                                   \
        }                                                                                       \
    }

/* Adam / AdamW's update over [lo, hi), named adam_NAME_SUF (AMSGRAD: with max_exp_avg_sq); the
 * operation order of _fused._adam_cpu (PyTorch's _single_tensor_adam):
 *   d = maximize ? -g : g;  L2 (not decoupled): d = p wd + d (p wd - g when maximizing)
 *   AdamW (decoupled): p = p (1 - lr wd)
 *   m = lerp(m, d, 1 - beta1);  v = v beta2 + (d (1 - beta2)) d;  amsgrad: vmax = max(vmax, v)
 *   p = p + (m (-step_size)) / (sqrt(v or vmax) / sqrt(1 - beta2^t) + eps) */
#define ADAM_LOOP(T, SUF, SQRT, NAME, AMSGRAD)                                                  \
    AVILA_CLONES static void adam_##NAME##_##SUF(                                               \
        T *restrict p, const T *restrict g, T *restrict m, T *restrict v, T *restrict vmax,     \
        T weight, T omw, T beta2, T omb2, T wd, T decay, T eps, T bc2s, T nss, int lerp_low,    \
        int decoupled, int maximize, ptrdiff_t lo, ptrdiff_t hi) {                              \
        (void)vmax;                                                                             \
        int l2 = wd != 0 && !decoupled, shrink = wd != 0 && decoupled;                          \
        for (ptrdiff_t i = lo; i < hi; i++) {                                                   \
            T gi = g[i], pi = p[i];                                                             \
            T d = maximize ? -gi : gi;                                                          \
            if (l2) d = maximize ? pi * wd - gi : pi * wd + gi;                                 \
            if (shrink) pi = pi * decay;                                                        \
            T mi = m[i], diff = d - mi;                                                         \
            mi = lerp_low ? mi + diff * weight : d - diff * omw;                                \
            m[i] = mi;                                                                          \
            T vi = v[i] * beta2 + (d * omb2) * d;                                               \
            v[i] = vi;                                                                          \
            T src = vi;                                                                         \
            if (AMSGRAD) {                                                                      \
                T mx = vmax[i];                                                                 \
                mx = (mx != mx || mx > vi) ? mx : vi; /* NaN-propagating, as np.maximum */     \
                vmax[i] = mx;                                                                   \
                src = mx;                                                                       \
            }                                                                                   \
            p[i] = pi + (mi * nss) / (SQRT(src) / bc2s + eps);                                  \
        }                                                                                       \
    }

#define DEFINE_OPTIM(T, SUF, SQRT)                                                                   \
    /* one loop per momentum case (none, first step, later steps) and nesterov: the buffer's   \
     * store is then unconditional and each loop vectorises */                                  \
    SGD_LOOP(T, SUF, plain, 0, 0, 0)                                                            \
    SGD_LOOP(T, SUF, first, 1, 1, 0)                                                            \
    SGD_LOOP(T, SUF, momentum, 1, 0, 0)                                                         \
    SGD_LOOP(T, SUF, first_nesterov, 1, 1, 1)                                                   \
    SGD_LOOP(T, SUF, momentum_nesterov, 1, 0, 1)                                                \
    static void sgd_##SUF(T *p, const T *g, T *buf, T lr, T mom, T omd, T wd, int nesterov,     \
                          int maximize, int first, ptrdiff_t lo, ptrdiff_t hi) {                \
        if (!buf)                                                                               \
            sgd_plain_##SUF(p, g, buf, lr, mom, omd, wd, maximize, lo, hi);                     \
        else if (first)                                                                         \
            (nesterov ? sgd_first_nesterov_##SUF : sgd_first_##SUF)(p, g, buf, lr, mom, omd, wd, \
                                                                    maximize, lo, hi);          \
        else                                                                                    \
            (nesterov ? sgd_momentum_nesterov_##SUF : sgd_momentum_##SUF)(p, g, buf, lr, mom,  \
                                                                          omd, wd, maximize, lo, hi); \
    }                                                                                           \
    /* one loop per (centered, momentum): the state stores are then unconditional and the loop \
     * vectorises (the flags left are selects between computed values); GCC 12 still leaves   \
     * the centered-with-momentum loop scalar ("not profitable") */                           \
    RMSPROP_LOOP(T, SUF, SQRT, plain, 0, 0)                                                     \
    RMSPROP_LOOP(T, SUF, SQRT, centered, 1, 0)                                                  \
    RMSPROP_LOOP(T, SUF, SQRT, momentum, 0, 1)                                                  \
    RMSPROP_LOOP(T, SUF, SQRT, centered_momentum, 1, 1)                                         \
    static void rmsprop_##SUF(T *p, const T *g, T *sq, T *ga, T *buf, T lr, T alpha, T oma,     \
                              T weight, T omw, T eps, T wd, T mom, int lerp_low, int maximize,  \
                              ptrdiff_t lo, ptrdiff_t hi) {                                     \
        if (ga && buf)                                                                          \
            rmsprop_centered_momentum_##SUF(p, g, sq, ga, buf, lr, alpha, oma, weight, omw,     \
                                            eps, wd, mom, lerp_low, maximize, lo, hi);          \
        else if (ga)                                                                            \
            rmsprop_centered_##SUF(p, g, sq, ga, buf, lr, alpha, oma, weight, omw, eps, wd,     \
                                   mom, lerp_low, maximize, lo, hi);                            \
        else if (buf)                                                                           \
            rmsprop_momentum_##SUF(p, g, sq, ga, buf, lr, alpha, oma, weight, omw, eps, wd,     \
                                   mom, lerp_low, maximize, lo, hi);                            \
        else                                                                                    \
            rmsprop_plain_##SUF(p, g, sq, ga, buf, lr, alpha, oma, weight, omw, eps, wd, mom,   \
                                lerp_low, maximize, lo, hi);                                    \
    }                                                                                           \
    ADAM_LOOP(T, SUF, SQRT, plain, 0)                                                           \
    ADAM_LOOP(T, SUF, SQRT, amsgrad, 1)                                                         \
    /* vmax NULL: no amsgrad */                                                                 \
    AVILA_EXPORT void avila_adam_##SUF(T *p, const T *g, T *m, T *v, T *vmax, T weight, T omw,  \
                                       T beta2, T omb2, T wd, T decay, T eps, T bc2s, T nss,    \
                                       int lerp_low, int decoupled, int maximize, ptrdiff_t n,  \
                                       int threads) {                                           \
        if (vmax)                                                                               \
            AVILA_FOR_PARTS(n, adam_amsgrad_##SUF(p, g, m, v, vmax, weight, omw, beta2, omb2,   \
                                                  wd, decay, eps, bc2s, nss, lerp_low,          \
                                                  decoupled, maximize, lo_, hi_));              \
        else                                                                                    \
            AVILA_FOR_PARTS(n, adam_plain_##SUF(p, g, m, v, vmax, weight, omw, beta2, omb2, wd, \
                                                decay, eps, bc2s, nss, lerp_low, decoupled,     \
                                                maximize, lo_, hi_));                           \
    }                                                                                           \
    /* buf NULL: no momentum */                                                                 \
    AVILA_EXPORT void avila_sgd_##SUF(T *p, const T *g, T *buf, T lr, T mom, T omd, T wd,       \
                                      int nesterov, int maximize, int first, ptrdiff_t n,       \
                                      int threads) {                                            \
        AVILA_FOR_PARTS(n, sgd_##SUF(p, g, buf, lr, mom, omd, wd, nesterov, maximize, first,    \
                                     lo_, hi_));                                                \
    }                                                                                           \
    /* ga NULL: not centered; buf NULL: no momentum */                                          \
    AVILA_EXPORT void avila_rmsprop_##SUF(T *p, const T *g, T *sq, T *ga, T *buf, T lr,         \
                                          T alpha, T oma, T weight, T omw, T eps, T wd, T mom,  \
                                          int lerp_low, int maximize, ptrdiff_t n,              \
                                          int threads) {                                        \
        AVILA_FOR_PARTS(n, rmsprop_##SUF(p, g, sq, ga, buf, lr, alpha, oma, weight, omw, eps,   \
                                         wd, mom, lerp_low, maximize, lo_, hi_));               \
    }

DEFINE_OPTIM(float, f32, __builtin_sqrtf)
DEFINE_OPTIM(double, f64, __builtin_sqrt)
