/* exp_f32 / exp_f64: an exp that GCC vectorises (glibc's expf/exp calls are not vectorised
 * without -ffast-math, which this build must not use: it changes NaN/inf handling). Shared by
 * softmax.c (the accuracy notes are there) and erf.c. Inline range reduction and polynomial:
 * exp(x) = 2^n e^r, n = round(x / ln 2), r = x - n ln 2 in two parts (Cody-Waite), e^r by a
 * polynomial on |r| <= ln(2)/2, 2^n built in the exponent bits as two factors. NaN stays NaN,
 * +inf and overflow give +inf, -inf and underflow give 0. */
#ifndef AVILA_EXP_H
#define AVILA_EXP_H
#include <stdint.h>
#include <string.h>

static inline float bits_to_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t f32_to_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline double bits_to_f64(uint64_t u) { double f; memcpy(&f, &u, 8); return f; }
static inline uint64_t f64_to_bits(double f) { uint64_t u; memcpy(&u, &f, 8); return u; }

/* round-to-nearest of |v| < 2^22 by the 1.5 * 2^23 trick (valid without -ffast-math) */
#define RND_F32 12582912.0f
#define RND_F64 6755399441055744.0

static inline float exp_f32(float x) {
    /* beyond these e^x is 0 or +inf in float32; clamping keeps n in range (NaN passes through:
     * both compares are false) */
    float xc = x < -104.0f ? -104.0f : x;
    xc = xc > 89.0f ? 89.0f : xc;
    float n = (xc * 1.44269504088896341f + RND_F32) - RND_F32;
    float r = xc - n * 0.693359375f;  /* ln 2 split: the high part has 9 bits, n r exact */
    r = r - n * -2.12194440e-4f;
    /* e^r - 1 - r on |r| <= ln(2)/2 (Cephes expf's minimax coefficients) */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    /* 2^n = 2^n1 2^n2, each a valid float exponent; the bits from the rounding trick */
    float n1 = (n * 0.5f + RND_F32) - RND_F32, n2 = n - n1;
    float s1 = bits_to_f32(f32_to_bits(n1 + (RND_F32 + 127.0f)) << 23);
    float s2 = bits_to_f32(f32_to_bits(n2 + (RND_F32 + 127.0f)) << 23);
    float v = p * s1 * s2;
    return x < -104.0f ? 0.0f : v; /* the clamp's e^-104 rounds to 0 already; explicit for -inf */
}

static inline double exp_f64(double x) {
    double xc = x < -746.0 ? -746.0 : x;
    xc = xc > 710.0 ? 710.0 : xc;
    double n = (xc * 1.4426950408889634074 + RND_F64) - RND_F64;
    double r = xc - n * 6.93147180369123816490e-01; /* fdlibm's ln 2 split: n r_hi exact */
    r = r - n * 1.90821492927058770002e-10;
    /* (e^r - 1 - r) / r^2 on |r| <= ln(2)/2: a degree-9 least-squares fit on Chebyshev nodes
     * against long-double expm1 (error 1.7e-17 relative to e^r; Taylor needs terms to 1/13!) */
    double p = 2.5105405452654892e-08;
    p = p * r + 2.7620080971863934e-07;
    p = p * r + 2.7557254895258852e-06;
    p = p * r + 2.4801521318366146e-05;
    p = p * r + 1.9841269875255234e-04;
    p = p * r + 1.3888888917191666e-03;
    p = p * r + 8.3333333333260057e-03;
    p = p * r + 4.1666666666624205e-02;
    p = p * r + 1.6666666666666671e-01;
    p = p * r + 5.0000000000000011e-01;
    p = p * (r * r) + r + 1.0;
    double n1 = (n * 0.5 + RND_F64) - RND_F64, n2 = n - n1;
    double s1 = bits_to_f64(f64_to_bits(n1 + (RND_F64 + 1023.0)) << 52);
    double s2 = bits_to_f64(f64_to_bits(n2 + (RND_F64 + 1023.0)) << 52);
    double v = p * s1 * s2;
    return x < -746.0 ? 0.0 : v;
}

#endif /* AVILA_EXP_H */
