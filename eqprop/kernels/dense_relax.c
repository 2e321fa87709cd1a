/* Relaxation of a layered dense energy-based net, one block of examples at a time.
 *
 * Why a compiled kernel: an MLP's examples relax independently, and one example's state (a few
 * hundred units) and the weights between state layers (the input synapse's drive is precomputed)
 * fit in L1/L2. Torch runs each step as batch-wide GEMMs and clamps that stream every state
 * buffer through memory several times per step; here a block of RB examples runs all its steps
 * in cache. Same arithmetic as FastStepper.step (eqprop/models/fast.py), summed in another order.
 *
 * Built by eqprop/kernels/build.py; the Plan layout is mirrored by eqprop/kernels/dense.py. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

#define MAXL 16   /* state layers */
#define RB 8      /* examples per block: each weight row loaded is used RB times */
#define MAXT 256  /* threads */

enum { POST_NONE = 0, POST_CLAMP = 1, POST_SIGMOID = 2, POST_TANH = 3 };
enum { LOSS_MSE = 0, LOSS_SOFTMAX = 1 };

typedef struct {
    int64_t n, batch, steps, async_, threads, nudged, loss, out_dim;
    int64_t width[MAXL];
    void *cur[MAXL], *nxt[MAXL];          /* state buffers, element (b, i) at b * sb + i * sj */
    int64_t sb[MAXL], sj[MAXL];
    void *base0;                          /* layer 0's scaled input drive, same indexing */
    int64_t base_sb, base_sj;
    void *w[MAXL], *b[MAXL];              /* k >= 1: scaled W_k (width[k] x width[k-1]), bias or NULL */
    void *f[MAXL];                        /* k < n-1: scaled feedback weight (width[k+1] x width[k]) */
    int64_t post[MAXL];
    double lo[MAXL], hi[MAXL];            /* CLAMP: [lo, hi]; SIGMOID: sigmoid(x - lo) */
    void *neg_beta;                       /* (batch): -beta * scale per example */
    void *target;                         /* (batch x out_dim) one-hot, contiguous */
    void *rw, *rb;                        /* softmax read-out (out_dim x width[n-1]) and bias, or NULL */
} Plan;

/* Vector exp for the sigmoid and tanh activations: glibc's libmvec (AVX2 variants, glibc >= 2.22);
 * a libm call per unit would cost more than the unit's whole update. */
#if defined(__x86_64__) && defined(__AVX2__) && defined(EQPROP_MVEC)
#include <immintrin.h>
__m256 _ZGVdN8v_expf(__m256);
__m256d _ZGVdN4v_exp(__m256d);
#define VEXP_f32(v) ((vec_f32)_ZGVdN8v_expf((__m256)(v)))
#define VEXP_f64(v) ((vec_f64)_ZGVdN4v_exp((__m256d)(v)))
#endif

#define REAL float
#define SFX(name) name##_f32
#ifdef VEXP_f32
#define SFX_VEXP VEXP_f32
#endif
#include "dense_relax_body.h"
#undef REAL
#undef SFX
#undef SFX_VEXP

#define REAL double
#define SFX(name) name##_f64
#ifdef VEXP_f64
#define SFX_VEXP VEXP_f64
#endif
#include "dense_relax_body.h"
#undef REAL
#undef SFX
#undef SFX_VEXP
