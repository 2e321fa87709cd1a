/* The kernel for one floating type: included by dense_relax.c with REAL and SFX defined. */

typedef REAL SFX(vec) __attribute__((vector_size(32)));
typedef REAL SFX(uvec) __attribute__((vector_size(32), aligned(sizeof(REAL)), may_alias));  /* unaligned access */
#define SFX_L ((int64_t)(32 / sizeof(REAL)))

static inline SFX(vec) SFX(ld)(const REAL *a) { return *(const SFX(uvec) *)a; }
static inline void SFX(st)(REAL *a, SFX(vec) v) { *(SFX(uvec) *)a = v; }
static inline REAL SFX(hsum)(SFX(vec) v)
{
    REAL s = 0;
    for (int l = 0; l < SFX_L; l++)
        s += v[l];
    return s;
}

/* out[r] = w . s[r] for 4 rows: 8 independent FMA chains, one load of w per 4 FMAs */
static inline void SFX(dot4)(const REAL *w, const REAL *s0, const REAL *s1, const REAL *s2,
                             const REAL *s3, int64_t n, REAL *out)
{
    const int64_t L = SFX_L;
    SFX(vec) a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0};
    int64_t j = 0;
    for (; j + 2 * L <= n; j += 2 * L) {
        const SFX(vec) x = SFX(ld)(w + j), y = SFX(ld)(w + j + L);
        a0 += x * SFX(ld)(s0 + j); b0 += y * SFX(ld)(s0 + j + L);
        a1 += x * SFX(ld)(s1 + j); b1 += y * SFX(ld)(s1 + j + L);
        a2 += x * SFX(ld)(s2 + j); b2 += y * SFX(ld)(s2 + j + L);
        a3 += x * SFX(ld)(s3 + j); b3 += y * SFX(ld)(s3 + j + L);
    }
    REAL r0 = SFX(hsum)(a0 + b0), r1 = SFX(hsum)(a1 + b1), r2 = SFX(hsum)(a2 + b2), r3 = SFX(hsum)(a3 + b3);
    for (; j < n; j++) {
        r0 += w[j] * s0[j]; r1 += w[j] * s1[j]; r2 += w[j] * s2[j]; r3 += w[j] * s3[j];
    }
    out[0] = r0; out[1] = r1; out[2] = r2; out[3] = r3;
}

static inline REAL SFX(dot)(const REAL *w, const REAL *s, int64_t n)
{
    const int64_t L = SFX_L;
    SFX(vec) a = {0}, b = {0};
    int64_t j = 0;
    for (; j + 2 * L <= n; j += 2 * L) {
        a += SFX(ld)(w + j) * SFX(ld)(s + j);
        b += SFX(ld)(w + j + L) * SFX(ld)(s + j + L);
    }
    REAL r = SFX(hsum)(a + b);
    for (; j < n; j++)
        r += w[j] * s[j];
    return r;
}

/* o = sigmoid(o - shift) = 1 / (1 + exp(shift - o)), the form of torch's sigmoid */
static inline void SFX(sigmoid)(REAL *o, int64_t n, REAL shift)
{
    int64_t i = 0;
#ifdef SFX_VEXP
    for (; i + SFX_L <= n; i += SFX_L)
        SFX(st)(o + i, (REAL)1 / ((REAL)1 + SFX_VEXP(shift - SFX(ld)(o + i))));
#endif
    for (; i < n; i++)
        o[i] = (REAL)1 / ((REAL)1 + exp(shift - o[i]));
}

/* o = tanh(o); vectorised as 1 - 2 / (exp(2 o) + 1) (exact limits at +-inf, NaN passes) */
static inline void SFX(tanh)(REAL *o, int64_t n)
{
    int64_t i = 0;
#ifdef SFX_VEXP
    for (; i + SFX_L <= n; i += SFX_L) {
        const SFX(vec) v = SFX(ld)(o + i);
        SFX(st)(o + i, (REAL)1 - (REAL)2 / (SFX_VEXP(v + v) + (REAL)1));
    }
#endif
    for (; i < n; i++)
        o[i] = tanh(o[i]);
}

/* o[i] += sum_j a[j] F[j, i] for i < w: strips of 8 vectors of o stay in registers over all j
 * (8 independent FMA chains: enough to hide the FMA latency at two FMAs per cycle) */
static inline void SFX(gemv_t)(REAL *o, const REAL *a, const REAL *F, int64_t nj, int64_t w)
{
    const int64_t L = SFX_L;
    int64_t i = 0;
    for (; i + 8 * L <= w; i += 8 * L) {
        SFX(vec) acc[8];
        for (int q = 0; q < 8; q++)
            acc[q] = SFX(ld)(o + i + q * L);
        for (int64_t j = 0; j < nj; j++) {
            const REAL *f = F + j * w + i;
            const REAL c = a[j];
            for (int q = 0; q < 8; q++)
                acc[q] += c * SFX(ld)(f + q * L);
        }
        for (int q = 0; q < 8; q++)
            SFX(st)(o + i + q * L, acc[q]);
    }
    for (; i + L <= w; i += L) {
        SFX(vec) o0 = SFX(ld)(o + i);
        for (int64_t j = 0; j < nj; j++)
            o0 += a[j] * SFX(ld)(F + j * w + i);
        SFX(st)(o + i, o0);
    }
    for (; i < w; i++) {
        REAL acc = o[i];
        for (int64_t j = 0; j < nj; j++)
            acc += a[j] * F[j * w + i];
        o[i] = acc;
    }
}

typedef struct {
    const Plan *p;
    int64_t row0, row1;   /* this worker's examples */
    double residual;      /* max |s_T - s_{T-1}| over its examples */
    int failed;
} SFX(Job);

/* Layer k of a block of `rows` examples starting at r0: nxt[k] from cur (block buffers, row-major). */
static void SFX(layer)(const Plan *p, int k, int64_t r0, int rows, REAL **cur, REAL **nxt, REAL *g, REAL *z)
{
    const int64_t n = p->n, w = p->width[k];
    REAL *o = nxt[k];
    if (k == 0) {
        const REAL *base = (const REAL *)p->base0;
        for (int r = 0; r < rows; r++) {
            const REAL *src = base + (r0 + r) * p->base_sb;
            if (p->base_sj == 1)
                __builtin_memcpy(o + r * w, src, sizeof(REAL) * w);
            else
                for (int64_t i = 0; i < w; i++)
                    o[r * w + i] = src[i * p->base_sj];
        }
    } else {
        const int64_t win = p->width[k - 1];
        const REAL *W = (const REAL *)p->w[k], *bias = (const REAL *)p->b[k], *src = cur[k - 1];
        for (int64_t i = 0; i < w; i++) {
            const REAL *wi = W + i * win;
            const REAL bi = bias ? bias[i] : (REAL)0;
            int r = 0;
            REAL d[4];
            for (; r + 4 <= rows; r += 4) {
                SFX(dot4)(wi, src + r * win, src + (r + 1) * win, src + (r + 2) * win, src + (r + 3) * win, win, d);
                for (int q = 0; q < 4; q++)
                    o[(r + q) * w + i] = d[q] + bi;
            }
            for (; r < rows; r++)
                o[r * w + i] = SFX(dot)(wi, src + r * win, win) + bi;
        }
    }
    if (k < n - 1) {  /* feedback from layer k + 1: o += s_{k+1} F */
        const int64_t wup = p->width[k + 1];
        const REAL *F = (const REAL *)p->f[k], *up = cur[k + 1];
        for (int r = 0; r < rows; r++)
            SFX(gemv_t)(o + r * w, up + r * wup, F, wup, w);
    } else if (p->nudged) {  /* o += -beta * scale * dC/ds, from the pre-step top layer */
        const REAL *nb = (const REAL *)p->neg_beta, *tg = (const REAL *)p->target;
        const REAL *rw = (const REAL *)p->rw, *rbias = (const REAL *)p->rb;
        const int64_t od = p->out_dim;
        for (int r = 0; r < rows; r++) {
            const REAL *s = cur[k] + r * w, *t = tg + (r0 + r) * od;
            REAL *orow = o + r * w;
            const REAL c = nb[r0 + r];
            if (rw) {  /* logits z = Wr s + br; g = Wr^T (softmax(z) - t) */
                for (int64_t m = 0; m < od; m++) {
                    REAL acc = 0;
                    const REAL *wm = rw + m * w;
#pragma omp simd reduction(+ : acc)
                    for (int64_t i = 0; i < w; i++)
                        acc += wm[i] * s[i];
                    z[m] = acc + (rbias ? rbias[m] : (REAL)0);
                }
            } else {
                for (int64_t m = 0; m < od; m++)
                    z[m] = s[m];
            }
            if (p->loss == LOSS_SOFTMAX) {
                REAL mx = z[0], sum = 0;
                for (int64_t m = 1; m < od; m++)
                    mx = z[m] > mx ? z[m] : mx;
                for (int64_t m = 0; m < od; m++) {
                    z[m] = exp(z[m] - mx);
                    sum += z[m];
                }
                for (int64_t m = 0; m < od; m++)
                    z[m] = z[m] / sum - t[m];
            } else {
                for (int64_t m = 0; m < od; m++)
                    z[m] -= t[m];
            }
            if (rw) {
                for (int64_t i = 0; i < w; i++)
                    g[i] = 0;
                for (int64_t m = 0; m < od; m++) {
                    const REAL *wm = rw + m * w;
                    const REAL zm = z[m];
#pragma omp simd
                    for (int64_t i = 0; i < w; i++)
                        g[i] += zm * wm[i];
                }
                for (int64_t i = 0; i < w; i++)
                    orow[i] += c * g[i];
            } else {
                for (int64_t i = 0; i < w; i++)
                    orow[i] += c * z[i];
            }
        }
    }
    const REAL lo = (REAL)p->lo[k], hi = (REAL)p->hi[k];
    const int64_t total = (int64_t)rows * w;
    switch (p->post[k]) {
    case POST_CLAMP:  /* NaN passes through, as in torch.clamp */
#pragma omp simd
        for (int64_t i = 0; i < total; i++)
            o[i] = o[i] < lo ? lo : (o[i] > hi ? hi : o[i]);
        break;
    case POST_SIGMOID:
        SFX(sigmoid)(o, total, lo);
        break;
    case POST_TANH:
        SFX(tanh)(o, total);
        break;
    default:
        break;
    }
}

static void *SFX(worker)(void *arg)
{
    SFX(Job) *job = (SFX(Job) *)arg;
    const Plan *p = job->p;
    const int n = (int)p->n;
    int64_t per_block = 0, wmax = 1;
    for (int k = 0; k < n; k++) {
        per_block += 2 * RB * p->width[k];
        if (p->width[k] > wmax)
            wmax = p->width[k];
    }
    REAL *mem = (REAL *)malloc(sizeof(REAL) * (per_block + wmax + (p->out_dim > 0 ? p->out_dim : 1)));
    if (!mem) {
        job->failed = 1;
        return NULL;
    }
    REAL *bufA[MAXL], *bufB[MAXL], *cur[MAXL], *nxt[MAXL];
    REAL *q = mem;
    for (int k = 0; k < n; k++) {
        bufA[k] = q;
        q += RB * p->width[k];
        bufB[k] = q;
        q += RB * p->width[k];
    }
    REAL *g = q, *z = q + wmax;
    double res = 0.0;
    for (int64_t r0 = job->row0; r0 < job->row1; r0 += RB) {
        const int rows = (int)(job->row1 - r0 < RB ? job->row1 - r0 : RB);
        for (int k = 0; k < n; k++) {
            const REAL *src = (const REAL *)p->cur[k];
            const int64_t w = p->width[k];
            cur[k] = bufA[k];
            nxt[k] = bufB[k];
            for (int r = 0; r < rows; r++)
                for (int64_t i = 0; i < w; i++)
                    cur[k][r * w + i] = src[(r0 + r) * p->sb[k] + i * p->sj[k]];
        }
        for (int64_t t = 0; t < p->steps; t++) {
            for (int parity = 0; parity < (p->async_ ? 2 : 1); parity++) {
                for (int k = 0; k < n; k++)
                    if (!p->async_ || k % 2 == parity)
                        SFX(layer)(p, k, r0, rows, cur, nxt, g, z);
                for (int k = 0; k < n; k++)
                    if (!p->async_ || k % 2 == parity) {
                        REAL *tmp = cur[k];
                        cur[k] = nxt[k];
                        nxt[k] = tmp;
                    }
            }
        }
        /* the final state into cur, the one before into nxt (FastStepper's ping-pong contract) */
        for (int k = 0; k < n; k++) {
            REAL *dc = (REAL *)p->cur[k], *dn = (REAL *)p->nxt[k];
            const int64_t w = p->width[k];
            for (int r = 0; r < rows; r++)
                for (int64_t i = 0; i < w; i++) {
                    const REAL a = cur[k][r * w + i], b = nxt[k][r * w + i];
                    const double d = fabs((double)a - (double)b);
                    if (!(d <= res))
                        res = d;  /* NaN sticks */
                    dc[(r0 + r) * p->sb[k] + i * p->sj[k]] = a;
                    dn[(r0 + r) * p->sb[k] + i * p->sj[k]] = b;
                }
        }
    }
    free(mem);
    job->residual = res;
    return NULL;
}

/* Runs p->steps steps on every example; returns the largest |change| of the last step, or -1 when
 * a worker could not allocate its scratch. The threads are the process's OpenMP pool: torch's own
 * (the library links the libgomp torch loaded), so they do not fight torch's spinning workers. */
double SFX(eqprop_dense_relax)(const Plan *p)
{
    const int64_t blocks = (p->batch + RB - 1) / RB;
    if (blocks == 0 || p->steps <= 0)
        return 0.0;
    int64_t threads = p->threads < 1 ? 1 : p->threads;
    if (threads > blocks)
        threads = blocks;
    if (threads > MAXT)
        threads = MAXT;
    SFX(Job) jobs[MAXT];
    int used = 1;
#pragma omp parallel num_threads((int)threads)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        SFX(Job) *job = &jobs[t];
        job->p = p;
        job->row0 = (blocks * t / nt) * RB;
        job->row1 = (blocks * (t + 1) / nt) * RB;
        if (job->row1 > p->batch)
            job->row1 = p->batch;
        job->residual = 0.0;
        job->failed = 0;
        SFX(worker)(job);
        if (t == 0)
            used = nt;
    }
    double res = 0.0;
    for (int t = 0; t < used; t++) {
        if (jobs[t].failed)
            return -1.0;
        if (!(jobs[t].residual <= res))
            res = jobs[t].residual;
    }
    return res;
}
