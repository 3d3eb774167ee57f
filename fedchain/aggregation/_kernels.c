/* fedchain's compiled sweeps: the float64 loops of SPEC §8.5 (clip) and §8.15 (align), for
 * float32 and float64 layers, one block (SPEC §8.2) at a time.
 *
 * Every value is what the SPEC's arithmetic gives, bit for bit: each operation is one IEEE
 * 754 double operation (conversion, subtraction, multiplication, division, addition), in the
 * SPEC's order, and sums are the SPEC's halving sums. The build (fedchain/aggregation/native.py)
 * forbids the compiler to fuse a multiplication and an addition (-ffp-contract=off) or to
 * reorder anything (no -ffast-math). Loops over elements may run on vector registers of any
 * width: a lane computes the same correctly rounded operation as a scalar would, so an AVX2
 * clone (x86-64) and the baseline give the same bits. Nothing here reads a reduction across
 * lanes.
 *
 * `xs` are the addresses of a group of updates' elements of the block, `p` the previous
 * model's, `m` the block's length (1 … 65 536).
 */
#include <stddef.h>
#include <stdint.h>

#if defined(__x86_64__) && defined(__has_attribute) && !defined(FEDCHAIN_NO_CLONES)
#if __has_attribute(target_clones)
#define CLONES __attribute__((target_clones("avx2", "default")))
#endif
#endif
#ifndef CLONES
#define CLONES
#endif

/* SPEC §8.2's halving sum of v[0 .. n), in place; 0.0 when n = 0. */
static inline double halve(double *v, size_t n) {
    if (n == 0) return 0.0;
    while (n > 1) {
        size_t h = (n + 1) / 2;
        double *restrict a = v;
        const double *restrict b = v + h; /* [h, n) and [0, n - h) do not overlap */
        for (size_t i = 0; i < n - h; i++) a[i] = a[i] + b[i];
        n = h;
    }
    return v[0];
}

#define KERNELS(T, S)                                                                      \
    /* halving sum of (F64(x_i) ⊖ F64(p_i))² (§8.5 step 1, one block of one update); the  \
     * first level as the values are made: buf[i] = v_i ⊕ v_(i+h), h = ⌈m/2⌉ */        \
    static inline double sqsum_##S(const T *restrict x, const T *restrict p, size_t m,     \
                                   double *restrict buf) {                                 \
        if (m == 0) return 0.0;                                                            \
        size_t h = (m + 1) / 2;                                                            \
        for (size_t i = 0; i < m - h; i++) {                                               \
            double a = (double)x[i] - (double)p[i];                                        \
            double b = (double)x[i + h] - (double)p[i + h];                                \
            buf[i] = (a * a) + (b * b);                                                    \
        }                                                                                  \
        if (m - h < h) {                                                                   \
            double a = (double)x[h - 1] - (double)p[h - 1];                                \
            buf[h - 1] = a * a;                                                            \
        }                                                                                  \
        return halve(buf, h);                                                              \
    }                                                                                      \
    /* out[k] = sqsum of update k, k = 0 … n − 1 */                                        \
    CLONES void fc_sqsums_##S(int n, const T *const *xs, const T *p, size_t m,             \
                              double *buf, double *out) {                                  \
        for (int k = 0; k < n; k++) out[k] = sqsum_##S(xs[k], p, m, buf);                  \
    }                                                                                      \
    /* r ← r ⊕ ((F64(x_k) ⊖ F64(p)) ⊘ ν_k) for k = 0 … n − 1 in order (§8.15 step 2) */    \
    static inline void direction1_##S(const T *restrict x, const T *restrict p, size_t m,         \
                               double nu, double *restrict r) {                            \
        for (size_t i = 0; i < m; i++) r[i] = r[i] + (((double)x[i] - (double)p[i]) / nu); \
    }                                                                                      \
    CLONES void fc_direction_##S(int n, const T *const *xs, const T *p, size_t m,          \
                                 const double *norms, double *r) {                         \
        for (int k = 0; k < n; k++) direction1_##S(xs[k], p, m, norms[k], r);              \
    }                                                                                      \
    /* out[k] = halving sum of (F64(x_k) ⊖ F64(p)) ⊗ r (§8.15 step 4) */                   \
    static inline double dot_##S(const T *restrict x, const T *restrict p,                 \
                                 const double *restrict r, size_t m, double *restrict buf) { \
        if (m == 0) return 0.0;                                                            \
        size_t h = (m + 1) / 2;                                                            \
        for (size_t i = 0; i < m - h; i++) {                                               \
            double a = ((double)x[i] - (double)p[i]) * r[i];                               \
            double b = ((double)x[i + h] - (double)p[i + h]) * r[i + h];                   \
            buf[i] = a + b;                                                                \
        }                                                                                  \
        if (m - h < h) buf[h - 1] = ((double)x[h - 1] - (double)p[h - 1]) * r[h - 1];      \
        return halve(buf, h);                                                              \
    }                                                                                      \
    CLONES void fc_dots_##S(int n, const T *const *xs, const T *p, size_t m,               \
                            const double *r, double *buf, double *out) {                   \
        for (int k = 0; k < n; k++) out[k] = dot_##S(xs[k], p, r, m, buf);                 \
    }                                                                                      \
    /* acc ← acc ⊕ ((F64(x_k) ⊖ F64(p)) ⊗ σ_k) for each k with σ_k ≠ 0, in order (§8.5     \
     * step 4, §8.15 step 6; a product by σ_k = 1 is the difference itself) */             \
    static inline void fold1_##S(const T *restrict x, const T *restrict p, size_t m, double s,   \
                          double *restrict acc) {                                          \
        for (size_t i = 0; i < m; i++) acc[i] = acc[i] + (((double)x[i] - (double)p[i]) * s); \
    }                                                                                      \
    CLONES void fc_fold_##S(int n, const T *const *xs, const T *p, size_t m,               \
                            const double *scales, double *acc) {                           \
        for (int k = 0; k < n; k++)                                                        \
            if (scales[k] != 0.0) fold1_##S(xs[k], p, m, scales[k], acc);                  \
    }                                                                                      \
    /* out = cast_T((acc ⊘ W) ⊕ F64(p)) (§8.5 step 4, §8.15 step 6) */                     \
    CLONES void fc_finish_##S(const double *restrict acc, const T *restrict p, size_t m,   \
                              double divisor, T *restrict out) {                           \
        for (size_t i = 0; i < m; i++) out[i] = (T)((acc[i] / divisor) + (double)p[i]);    \
    }

KERNELS(float, f32)
KERNELS(double, f64)

/* halving sum of r ⊗ r (§8.15 step 3, one block) */
CLONES double fc_squares(const double *restrict r, size_t m, double *restrict buf) {
    if (m == 0) return 0.0;
    size_t h = (m + 1) / 2;
    for (size_t i = 0; i < m - h; i++) buf[i] = (r[i] * r[i]) + (r[i + h] * r[i + h]);
    if (m - h < h) buf[h - 1] = r[h - 1] * r[h - 1];
    return halve(buf, h);
}

/* The version the Python side checks it loaded. */
int fc_version(void) { return 1; }
