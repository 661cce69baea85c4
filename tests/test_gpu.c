// GPU suite: the GPU engine (kernels.cu) against the reference path. ref.c is included for its ops
// (ref_qkv, ref_attention, ref_o_proj, ref_mlp, ref_head), the oracle of every stage kernel on the
// fixtures' own tensors, in every KV format the GPU has.
//   build/test_gpu                   stage kernels, whole forwards, greedy streams, determinism (make test-gpu)
//   build/test_gpu --hf DIR...       real-shape checkpoints against transformers' fp32 logits
//                                    (hf_logits.bin, written by tests/gen_gpu_checkpoints.py)
//   build/test_gpu --bench DIR...    decode and prefill speed; a measurement, not a test
//   build/test_gpu --bench-kv DIR... decode speed per KV format at 4k and 32k context
// Without a CUDA GPU it says so and exits 0, with no verdict line.
#include "ref.c"
#include "gpu/hooks.h"
#include "tests/golden.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static int n_pass, n_fail;

static void check(int ok, const char *fmt, ...) NANO_PRINTF(2, 3);
static void check(int ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%s ", ok ? "ok  " : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    fflush(stdout);
    va_end(ap);
    if (ok) n_pass++;
    else n_fail++;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

// The tests' pseudo-random numbers: a 32-bit LCG (Numerical Recipes' constants), its next state, and
// that state's top 24 bits as a float in [0, 1).
static uint32_t lcg(uint32_t *r) { return *r = *r * 1664525u + 1013904223u; }
static float lcg_unit(uint32_t *r) { return (float)(lcg(r) >> 8) / 16777216.0f; }

// max |got - want| / max |want| over n values; NaN gives infinity.
static double rel_diff(const float *got, const float *want, size_t n) {
    double d = 0, w = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - want[i]);
        if (!(e <= d)) d = isnan(e) ? INFINITY : e;
        if (fabs(want[i]) > w) w = fabs(want[i]);
    }
    return w > 0 ? d / w : d;
}

static int argmax_f(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

// Agreement of logit rows with a reference: KL(ref || got), top-1 where the reference's top two are
// more than 5% of its logits' std apart ("decided"), and overall.
typedef struct {
    double kld, max_diff;
    int rows, top1, decided, top1_decided;
} Agree;

static void agree_row(Agree *a, const float *ref, const float *got, int V) {
    int r, g, second = -1;
    double kl = logits_kld(ref, got, (size_t)V, &r, &g), mean = 0, var = 0;
    for (int i = 0; i < V; i++) mean += ref[i];
    mean /= V;
    for (int i = 0; i < V; i++) {
        var += (ref[i] - mean) * (ref[i] - mean);
        if (i != r && (second < 0 || ref[i] > ref[second])) second = i;
        double d = fabs((double)got[i] - ref[i]);
        if (!(d <= a->max_diff)) a->max_diff = isnan(d) ? INFINITY : d;
    }
    a->kld += isnan(kl) ? INFINITY : kl;
    a->rows++;
    a->top1 += r == g;
    if (ref[r] - ref[second] > 0.05 * sqrt(var / V)) a->decided++, a->top1_decided += r == g;
}

static int near_tie(const float *ref, int V) {
    Agree a = {0};
    agree_row(&a, ref, ref, V);
    return a.decided == 0;
}

// ---------------------------------------------------------------------------------------------
// Fixtures: HF goldens give the prompt (and transformers' logits, for information)


// The reference's residual after every layer's attention and MLP, for all tokens of one forward.
typedef struct {
    int H;
    float **res;  // [layer * 2 + stage] -> [T][H]
} Capture;

static void capture_hook(void *ctx, int layer, int stage, const float *x, int T) {
    Capture *c = ctx;
    memcpy(c->res[layer * 2 + stage], x, (size_t)T * c->H * sizeof(float));
}

// One quantization step of element i of a row as the format stores it: what a different rounding of
// nearly the same input can move it by.
static float kv_step(KVCodec c, const float *row, int D, int i) {
    float lo = INFINITY, hi = -INFINITY;
    int g0 = c == KVC_Q8 ? 0 : i / KV_GROUP * KV_GROUP, n = c == KVC_Q8 ? D : KV_GROUP;
    for (int k = g0; k < g0 + n && k < D; k++) lo = fminf(lo, row[k]), hi = fmaxf(hi, row[k]);
    switch (c) {
    case KVC_BF16: return fabsf(row[i]) / 128;
    case KVC_F16: return fabsf(row[i]) / 1024;
    case KVC_Q8: return fmaxf(-lo, hi) / 127;
    case KVC_Q4: return (hi - lo) / 15;
    default: return fmaxf(-lo, hi) / 7;
    }
}

// The GPU cache's rows of layer l, positions [p0, p1), decoded, against the reference cache's: the
// number of elements further apart than one quantization step plus 2^-12 of the row's largest
// |element| (the GPU's K and V come from fp32 sums in another order, so a rounding may differ).
static int kv_mismatches(Engine *e, const KVCache *ref, int l, int p0, int p1) {
    KVCache g;
    Config c = {0};
    c.n_layers = ref->n_layers, c.n_kv_heads = ref->n_kv_heads, c.head_dim = ref->head_dim;
    kv_init(&g, &c, ref->capacity, ref->format, ref->n_wide, ref->wide);
    cuda_engine_kv_copy(e, &g, p1, 0);
    int bad = 0, D = ref->head_dim;
    float *want = xmalloc((size_t)D * 4), *have = xmalloc((size_t)D * 4);
    for (int p = p0; p < p1; p++)
        for (int h = 0; h < ref->n_kv_heads; h++)
            for (int part = 0; part < 2; part++) {
                kv_read(ref, part, l, h, p, want);
                kv_read(&g, part, l, h, p, have);
                float scale = 0;
                for (int i = 0; i < D; i++) scale = fmaxf(scale, fabsf(want[i]));
                for (int i = 0; i < D; i++)
                    bad += !(fabsf(have[i] - want[i]) <= kv_step(ref->codec[part], want, D, i) * 1.01f + scale / 4096);
            }
    free(want), free(have);
    kv_free(&g);
    return bad;
}

// The GPU's K/V row store (kv_store_row) against the reference's kv_write on the same fp32 rows:
// the same bytes in every plane. Rows: the fixture's own scale plus, on wide channels, values in the
// hundreds (Qwen2's key biases); a few exact zeros and ties, and all-zero rows (as -0).
static void test_kv_store(const char *name, Engine *e, const KVCache *ref_shape, int T) {
    int Hkv = ref_shape->n_kv_heads, D = ref_shape->head_dim;
    Config c = {0};
    c.n_layers = ref_shape->n_layers, c.n_kv_heads = Hkv, c.head_dim = D;
    KVCache want, have;
    kv_init(&want, &c, ref_shape->capacity, ref_shape->format, ref_shape->n_wide, ref_shape->wide);
    kv_init(&have, &c, ref_shape->capacity, ref_shape->format, ref_shape->n_wide, ref_shape->wide);
    float *rows = xmalloc((size_t)T * 2 * Hkv * D * 4);
    uint32_t r = 4242;
    for (size_t i = 0; i < (size_t)T * 2 * Hkv * D; i++) {
        float u = lcg_unit(&r) - 0.5f;
        rows[i] = i % 97 == 0 ? 0.0f : i % 89 == 0 ? 0.5f : u * 6;
    }
    for (size_t i = (size_t)3 * Hkv * D; T > 1 && i < (size_t)4 * Hkv * D; i++) rows[i] = -0.0f;  // token 1's V rows: all zero
    for (int t = 0; t < T; t++)
        for (int h = 0; h < Hkv; h++) {
            const int16_t *w = kv_wide_at(&want, 0, 0, h);
            for (int s = 0; s < want.n_wide; s++)
                if (w[s] >= 0) rows[(((size_t)t * 2) * Hkv + h) * D + w[s]] = (s % 2 ? -300.0f : 420.0f) + t;
            for (int part = 0; part < 2; part++) kv_write(&want, part, 0, h, t, rows + (((size_t)t * 2 + part) * Hkv + h) * D);
        }
    CudaStage st = {ST_KV_STORE, 0, 0, T, rows, NULL, NULL, NULL, 0};
    cuda_engine_run_stage(e, &st);
    cuda_engine_kv_copy(e, &have, T, 0);
    int differ = 0;
    for (int h = 0; h < Hkv; h++)
        for (int part = 0; part < 2; part++) {
            size_t db = kv_data_bytes(want.codec[part], D), ab = kv_aux_bytes(want.codec[part], D, kv_part_wide(&want, part));
            differ += memcmp(kv_data_at(&want, part, 0, h, 0), kv_data_at(&have, part, 0, h, 0), db * T) != 0;
            differ += ab && memcmp(kv_aux_at(&want, part, 0, h, 0), kv_aux_at(&have, part, 0, h, 0), ab * T) != 0;
        }
    check(differ == 0, "%s %s KV rows stored by the GPU = kv_write's bytes (%d positions, %d wide key channels): %s", name,
          kv_format_name(want.format), T, want.n_wide, differ ? "DIFFER" : "identical");
    free(rows);
    kv_free(&want), kv_free(&have);
}

#define STAGE_TOL 1e-4  // max|diff| / max|ref| of one stage; fp32 sums in another order land near 1e-6

// Each stage of each layer, through the decode kernel (the prompt's last token) and the prefill path
// (the whole prompt), on the reference's activations and KV cache in format kvf.
static void test_stages(const char *name, const Model *m, const int *ids, int n, KVFormat kvf) {
    const Config *c = &m->cfg;
    int H = c->hidden, QD = c->n_heads * c->head_dim, V = c->vocab, L = c->n_layers;
    int cap = n + 8, t = n - 1;
    RefState *s = ref_create(m, n, cap);
    KVCache kv;
    int16_t *wide;
    int n_wide = kv_wide_channels(m, kvf, &wide);
    if (!kv_gpu_holds(kvf, n_wide)) {  // the GPU engine refuses it (README)
        printf("info %s %s: not on the GPU (%d wide key channels)\n", name, kv_format_name(kvf), n_wide);
        free(wide), ref_free(s);
        return;
    }
    kv_init(&kv, c, cap, kvf, n_wide, wide);
    free(wide);
    Capture capt = {H, xcalloc((size_t)L * 2, sizeof(float *))};
    for (int k = 0; k < L * 2; k++) capt.res[k] = xmalloc((size_t)n * H * sizeof(float));
    s->hook = capture_hook, s->hook_ctx = &capt;
    ref_forward(s, m, &kv, ids, n, 0, NULL, 0);
    s->hook = NULL;
    float *emb = xmalloc((size_t)n * H * sizeof(float));
    for (int i = 0; i < n; i++) tensor_row(&m->embed, ids[i], emb + (size_t)i * H);

    char why[512];
    Engine *e = cuda_engine_create(m, cap, kvf, n, 0, why, sizeof why);
    if (!e) {
        check(0, "%s: GPU engine: %s", name, why);
        return;
    }
    const char *fmt = kv_format_name(kvf);
    const int rotated = kv_formats[kvf].k == KVC_Q4H;  // the GPU's q (and attention output) come rotated per head
    test_kv_store(name, e, &kv, n < 8 ? n : 8);
    float *q = xmalloc((size_t)n * QD * 4), *o = xmalloc((size_t)n * QD * 4), *xr = xmalloc((size_t)n * H * 4);
    float *got = xmalloc((size_t)n * (V > QD ? V : QD) * 4 + (size_t)n * H * 4), *lr = xmalloc((size_t)n * V * 4);
    for (int l = 0; l < L; l++) {
        const float *xin = l == 0 ? emb : capt.res[(l - 1) * 2 + 1], *xattn = capt.res[l * 2];
        for (int T = 1; T <= n; T = T == 1 && n > 1 ? n : n + 1) {  // the decode kernel (last token), then the prefill path (all)
            int p0 = T == 1 ? t : 0;
            const char *path = T == 1 ? "decode" : "prefill";
            // QKV: norm, projections, bias, q/k norm, RoPE, K/V into the cache
            cuda_engine_kv_copy(e, &kv, n, 1);
            CudaStage st = {ST_QKV, l, p0, T, xin + (size_t)p0 * H, NULL, NULL, got, 0};
            cuda_engine_run_stage(e, &st);
            for (int i = 0; rotated && i < T * c->n_heads; i++) kv_hadamard(got + (size_t)i * c->head_dim, c->head_dim);
            ref_qkv(s, m, &kv, l, xin + (size_t)p0 * H, T, p0);
            memcpy(q, s->q, (size_t)T * QD * 4);
            double rq = rel_diff(got, q, (size_t)T * QD);
            int bad = kv_mismatches(e, &kv, l, p0, p0 + T);
            check(rq <= STAGE_TOL && bad == 0,
                  "%s %s layer %d %s RMSNorm-QKV x%d: q max|diff|/max|q| %.2e; K/V cache elements off by more than one step: %d",
                  name, fmt, l, path, T, rq, bad);
            // Attention over the reference's cache
            cuda_engine_kv_copy(e, &kv, n, 1);
            memcpy(o, q, (size_t)T * QD * 4);  // the GPU's q: rotated for kv4h
            for (int i = 0; rotated && i < T * c->n_heads; i++) kv_hadamard(o + (size_t)i * c->head_dim, c->head_dim);
            st = (CudaStage){ST_ATT, l, p0, T, NULL, o, NULL, got, 0};
            cuda_engine_run_stage(e, &st);
            for (int i = 0; rotated && i < T * c->n_heads; i++) kv_hadamard(got + (size_t)i * c->head_dim, c->head_dim);
            ref_attention(s, c, &kv, l, T, p0);
            memcpy(o, s->attn, (size_t)T * QD * 4);
            double ra = rel_diff(got, o, (size_t)T * QD);
            check(ra <= STAGE_TOL, "%s %s layer %d %s attention x%d (context %d): max|diff|/max|o| %.2e", name, fmt, l, path, T,
                  p0 + T, ra);
            if (kvf != KV_BF16) continue;  // the stages below do not read the cache
            // o_proj + residual, every wo_split (decode), twice each
            memcpy(xr, xin + (size_t)p0 * H, (size_t)T * H * 4);
            ref_o_proj(s, m, l, xr, T);
            float *first = xmalloc((size_t)T * H * 4), *again = xmalloc((size_t)T * H * 4);
            for (int split = 1; split <= (T == 1 ? 8 : 1); split *= 2) {
                if (T == 1) cuda_engine_set_wo_split(e, split);
                st = (CudaStage){ST_WO, l, p0, T, xin + (size_t)p0 * H, NULL, o, got, 0};
                cuda_engine_run_stage(e, &st);
                st.out = again;
                cuda_engine_run_stage(e, &st);
                double rw = rel_diff(got, xr, (size_t)T * H), rs = 0;
                if (split == 1) memcpy(first, got, (size_t)T * H * 4);
                else rs = rel_diff(got, first, (size_t)T * H);
                int same = memcmp(got, again, (size_t)T * H * 4) == 0;
                check(rw <= STAGE_TOL && same && rs <= 1e-5, "%s layer %d %s o_proj x%d wo_split %d: max|diff|/max|x| %.2e, vs wo_split 1 %.2e, repeat %s",
                      name, l, path, T, T == 1 ? split : 0, rw, rs, same ? "identical" : "DIFFERS");
            }
            free(first);
            free(again);
            // MLP + residual
            memcpy(xr, xattn + (size_t)p0 * H, (size_t)T * H * 4);
            ref_mlp(s, m, l, xr, T);
            st = (CudaStage){ST_MLP | ST_DOWN, l, p0, T, xattn + (size_t)p0 * H, NULL, NULL, got, 0};
            cuda_engine_run_stage(e, &st);
            double rm = rel_diff(got, xr, (size_t)T * H);
            check(rm <= STAGE_TOL, "%s layer %d %s RMSNorm-gate/up-SiLU-down x%d: max|diff|/max|x| %.2e", name, l, path, T, rm);
            if (l == L - 1) {  // final norm + lm_head (+ the decode kernel's greedy pick)
                const float *xf = capt.res[l * 2 + 1] + (size_t)p0 * H;
                ref_head(s, m, xf, T, lr);
                st = (CudaStage){ST_FINAL, l, p0, T, xf, NULL, NULL, got, 0};
                cuda_engine_run_stage(e, &st);
                double rf = rel_diff(got, lr, (size_t)T * V);
                int pick_ok = T > 1 || st.argmax == argmax_f(got, V);
                check(rf <= STAGE_TOL && pick_ok, "%s %s final norm + lm_head x%d: max|diff|/max|logit| %.2e%s", name, path, T, rf,
                      T == 1 ? (pick_ok ? ", GPU argmax = host argmax" : ", GPU argmax DIFFERS") : "");
            }
        }
    }
    e->free(e);
    free(q), free(o), free(xr), free(got), free(lr), free(emb);
    for (int i = 0; i < L * 2; i++) free(capt.res[i]);
    free(capt.res);
    kv_free(&kv);
    ref_free(s);
}

// The prefill path's attention deep into a cache: T queries at positions p0.. over p0 + T keys of
// random K and V (the wide key channels at hundreds, as Qwen2's key biases put them), crossing key
// and query tiles and ending in a part tile, against the reference's attention over the same cache.
static void test_attention_depth(const char *name, const Model *m, KVFormat kvf) {
    const Config *c = &m->cfg;
    const int D = c->head_dim, QD = c->n_heads * D, p0 = 200, T = 130, n = p0 + T, l = c->n_layers - 1;
    int16_t *wide;
    int n_wide = kv_wide_channels(m, kvf, &wide);
    if (!kv_gpu_holds(kvf, n_wide)) return free(wide);  // refused by the engine (test_stages says so)
    KVCache kv;
    kv_init(&kv, c, n, kvf, n_wide, wide);
    free(wide);
    uint32_t r = 12345;
    float *row = xmalloc((size_t)D * 4), *q = xmalloc((size_t)T * QD * 4), *got = xmalloc((size_t)T * QD * 4);
    for (int part = 0; part < 2; part++)
        for (int h = 0; h < c->n_kv_heads; h++)
            for (int j = 0; j < n; j++) {
                for (int i = 0; i < D; i++) row[i] = 4.0f * lcg_unit(&r) - 2.0f;
                const int16_t *w = kv_part_wide(&kv, part) ? kv_wide_at(&kv, part, l, h) : NULL;
                for (int k = 0; w && k < n_wide; k++)
                    if (w[k] >= 0) row[w[k]] = (k & 1 ? -300.0f : 600.0f) + row[w[k]];
                kv_write(&kv, part, l, h, j, row);
            }
    for (int i = 0; i < T * QD; i++) q[i] = 2.0f * lcg_unit(&r) - 1.0f;
    RefState *s = ref_create(m, T, n);
    memcpy(s->q, q, (size_t)T * QD * 4);
    ref_attention(s, c, &kv, l, T, p0);
    char why[512];
    Engine *e = cuda_engine_create(m, n, kvf, T, 0, why, sizeof why);
    if (!e) {
        check(0, "%s: GPU engine: %s", name, why);
    } else {
        const int rotated = kv_formats[kvf].k == KVC_Q4H;  // the GPU's q and output come rotated per head
        for (int i = 0; rotated && i < T * c->n_heads; i++) kv_hadamard(q + (size_t)i * D, D);
        cuda_engine_kv_copy(e, &kv, n, 1);
        for (int groups = 1; groups <= 2; groups++) {  // the tensor-core kernel's key-tile groups a block (others: ignored)
            cuda_engine_set_attn_groups(e, groups);
            CudaStage st = {ST_ATT, l, p0, T, NULL, q, NULL, got, 0};
            cuda_engine_run_stage(e, &st);
            for (int i = 0; rotated && i < T * c->n_heads; i++) kv_hadamard(got + (size_t)i * D, D);
            double ra = rel_diff(got, s->attn, (size_t)T * QD);
            check(ra <= STAGE_TOL, "%s %s prefill attention x%d at depth %d (head_dim %d, %d wide key channels, %d group%s): max|diff|/max|o| %.2e",
                  name, kv_format_name(kvf), T, p0, D, n_wide, groups, groups > 1 ? "s" : "", ra);
        }
        e->free(e);
    }
    ref_free(s);
    kv_free(&kv);
    free(row), free(q), free(got);
}

#define FWD_STEPS 256

// Whole forwards on prompt + FWD_STEPS more ids: the prefill path in chunks, every token through the
// decode kernel, greedy streams, repeatability and the wo_split sweep; all against the reference.
static void test_forwards(const char *name, const Model *m, const Model *orig, const Golden *g, KVFormat kvf) {
    const Config *c = &m->cfg;
    int V = c->vocab, n = g->n_prompt, N = n + FWD_STEPS;
    int *ids = xmalloc((size_t)N * sizeof(int));
    memcpy(ids, g->prompt, (size_t)n * sizeof(int));
    uint32_t r = 12345;
    for (int i = n; i < N; i++) ids[i] = (int)((lcg(&r) >> 8) % (uint32_t)V);
    float *ref = xmalloc((size_t)N * V * 4), *gp = xmalloc((size_t)N * V * 4), *gd = xmalloc((size_t)N * V * 4),
          *gd2 = xmalloc((size_t)N * V * 4);
    int16_t *wide;
    int n_wide = kv_wide_channels(m, kvf, &wide);
    free(wide);
    if (!kv_gpu_holds(kvf, n_wide)) {  // the GPU engine refuses it (README)
        free(ids), free(ref), free(gp), free(gd), free(gd2);
        return;
    }
    Engine *re = ref_engine_create(m, N, kvf, 64);
    re->forward(re, ids, N, 0, ref, 1);
    char why[512];
    Engine *pre = cuda_engine_create(m, N, kvf, 64, 0, why, sizeof why), *dec = cuda_engine_create(m, N, kvf, 1, 0, why, sizeof why);
    const char *fmt = kv_format_name(kvf);
    if (!pre || !dec) {
        check(0, "%s: GPU engine: %s", name, why);
        return;
    }
    pre->forward(pre, ids, N, 0, gp, 1);
    dec->forward(dec, ids, N, 0, gd, 1);
    // A quantized format's rounding can land on the other side of a step where the GPU's K or V differ
    // from the reference's in the last bits (the prefill's hi/lo GEMMs keep ~16 mantissa bits): the
    // GPU may be off the reference by up to half the format's own error against f32 KV.
    double limit = 1e-4;
    if (kv_formats[kvf].k == KVC_Q8 || kv_formats[kvf].v == KVC_Q4 || kv_formats[kvf].v == KVC_Q4H) {
        Engine *exact = ref_engine_create(m, N, KV_F32, 64);
        exact->forward(exact, ids, N, 0, gd2, 1);
        exact->free(exact);
        Agree fe = {0};
        for (int t = 0; t < N; t++) agree_row(&fe, gd2 + (size_t)t * V, ref + (size_t)t * V, V);
        if (fe.kld / fe.rows / 2 > limit) limit = fe.kld / fe.rows / 2;
        printf("info %s %s: reference with %s KV vs f32 KV: mean KLD %.2e, top-1 %d/%d\n", name, fmt, fmt, fe.kld / fe.rows, fe.top1, fe.rows);
    }
    // kv4h: the GPU's o_proj columns carry the rotation, rounded to bf16 once more, so 1% of the decided
    // top-1s may go (measured: 1 of 237 on qwen3-tiny-random, none elsewhere).
    double may_lose = kvf == KV_KV4H ? 0.01 : 0;
    Agree ap = {0}, ad = {0};
    for (int t = 0; t < N; t++) agree_row(&ap, ref + (size_t)t * V, gp + (size_t)t * V, V);
    for (int t = 0; t < N; t++) agree_row(&ad, ref + (size_t)t * V, gd + (size_t)t * V, V);
    check(ap.kld / ap.rows <= limit && ap.top1_decided >= ap.decided * (1 - may_lose),
          "%s %s prefill (-b 64) %d tokens: mean KLD %.2e, top-1 %d/%d (decided %d/%d), max|diff| %.2e", name, fmt, N,
          ap.kld / ap.rows, ap.top1, ap.rows, ap.top1_decided, ap.decided, ap.max_diff);
    check(ad.kld / ad.rows <= limit && ad.top1_decided >= ad.decided * (1 - may_lose),
          "%s %s decode (-b 1) %d teacher-forced steps: mean KLD %.2e, top-1 %d/%d (decided %d/%d), max|diff| %.2e", name, fmt, N,
          ad.kld / ad.rows, ad.top1, ad.rows, ad.top1_decided, ad.decided, ad.max_diff);
    // Repeatability, and the wo_split sweep on the decode kernel. Across splits only the order of fp32
    // sums differs, but over hundreds of steps a changed rounding can flip a bf16 K/V rounding and
    // grow: 1e-3 of the largest logit (measured up to 2.1e-4).
    for (int split = 1; split <= (kvf == KV_BF16 ? 8 : 1); split *= 2) {
        cuda_engine_set_wo_split(dec, split);
        dec->forward(dec, ids, N, 0, gd, 1);
        dec->forward(dec, ids, N, 0, gd2, 1);
        int same = memcmp(gd, gd2, (size_t)N * V * 4) == 0;
        Agree a = {0};
        for (int t = 0; t < N; t++) agree_row(&a, ref + (size_t)t * V, gd + (size_t)t * V, V);
        if (split == 1) memcpy(gp, gd, (size_t)N * V * 4);
        double vs1 = rel_diff(gd, gp, (size_t)N * V);
        check(same && a.kld / a.rows <= limit && a.top1_decided >= a.decided * (1 - may_lose) && vs1 <= 1e-3,
              "%s %s decode wo_split %d: mean KLD %.2e, top-1 decided %d/%d, vs wo_split 1 max|diff|/max|logit| %.2e, repeat %s", name,
              fmt, split, a.kld / a.rows, a.top1_decided, a.decided, vs1, same ? "bit-identical" : "DIFFERS");
    }
    // Greedy streams from the prompt: the GPU (prefill, then decode with the host's argmax) against the
    // reference up to the first near-tie; then the GPU's own argmax, chained on the device.
    enum { NG = 48 };
    int gr[NG], gg[NG], gc[NG];
    float *lg = xmalloc((size_t)V * 4), *lrf = xmalloc((size_t)V * 4);
    re->forward(re, ids, n, 0, lrf, 0);
    pre->forward(pre, ids, n, 0, lg, 0);
    int agree_to = NG, tie_at = NG;
    for (int k = 0; k < NG; k++) {
        gr[k] = argmax_f(lrf, V), gg[k] = argmax_f(lg, V);
        if (tie_at == NG && near_tie(lrf, V)) tie_at = k;
        if (agree_to == NG && gr[k] != gg[k]) agree_to = k;
        if (k + 1 < NG) {
            re->forward(re, &gr[k], 1, n + k, lrf, 0);
            pre->forward(pre, &gg[k], 1, n + k, lg, 0);
        }
    }
    // kv4h: the GPU's o_proj weights carry the rotation (rounded to bf16 again), so its logits differ
    // from the reference's by more than a near-tie can absorb.
    if (kvf == KV_KV4H)
        printf("info %s %s greedy: GPU = reference for %d of %d ids (first near-tie at %d)\n", name, fmt, agree_to, NG, tie_at);
    else
        check(agree_to >= tie_at, "%s %s greedy: GPU = reference for %d of %d ids (first near-tie at %d)", name, fmt, agree_to, NG, tie_at);
    cuda_engine_bench_decode(pre, gg[0], n, NG - 1, gc);
    check(memcmp(gc, gg + 1, (NG - 1) * sizeof(int)) == 0, "%s %s greedy chained on the GPU (device argmax) = host argmax, %d ids", name,
          fmt, NG - 1);
    // transformers' logits on the checkpoint's own weights, for information
    Engine *oe = kvf == KV_BF16 ? cuda_engine_create(orig, n, KV_BF16, 64, 0, why, sizeof why) : NULL;
    if (oe) {
        oe->forward(oe, g->prompt, n, 0, gp, 1);
        Agree ah = {0};
        for (int t = 0; t < n; t++) agree_row(&ah, g->logits + (size_t)t * V, gp + (size_t)t * V, V);
        printf("info %s vs transformers (fp32, %s weights): mean KLD %.2e, top-1 %d/%d, max|diff| %.2e\n", name,
               orig->embed.dtype == DT_BF16 ? "bf16" : "unrounded", ah.kld / ah.rows, ah.top1, ah.rows, ah.max_diff);
        oe->free(oe);
    }
    free(lg), free(lrf), free(ids), free(ref), free(gp), free(gd), free(gd2);
    re->free(re), pre->free(pre), dec->free(dec);
}

// The logits ranked on the device (forward_top, gpu/top.cuh) against top_logits() on the same logits
// copied whole, after a prefill and after decode steps, over fewer ids than the vocabulary; a NaN in
// lm_head's row 5 found as the first non-finite logit; and tokens picked from the device's ranking
// against tokens picked from all logits, greedy and seeded top-k with a penalty.
static int same_ranking(const TopLogits *a, const TopLogits *b) {
    return a->n == b->n && !memcmp(a->id, b->id, (size_t)a->n * sizeof *a->id) && !memcmp(a->logit, b->logit, (size_t)a->n * sizeof *a->logit) &&
           !memcmp(&a->next, &b->next, sizeof a->next) && a->bad_id == b->bad_id;
}

static void picked(Engine *e, const Model *m, const SamplerConfig *sc, const int *prompt, int n, int *out, int n_out) {
    Sampler s;
    sampler_init(&s, sc, m->cfg.vocab, 11);
    Picker p;
    picker_init(&p, e, &s, m->cfg.vocab);
    int *hist = xmalloc((size_t)(n + n_out) * sizeof *hist);
    memcpy(hist, prompt, (size_t)n * sizeof *hist);
    picker_forward(&p, prompt, n, 0);
    for (int k = 0; k < n_out; k++) {
        hist[n + k] = out[k] = picker_sample(&p, hist, n + k);
        if (k + 1 < n_out) picker_forward(&p, &out[k], 1, n + k);
    }
    free(hist);
    picker_free(&p);
    sampler_free(&s);
}

// An engine over m with head (bf16, lm_head's shape) as its own lm_head, the embedding unharmed; copy
// holds the model it reads.
static Engine *engine_with_head(const Model *m, Model *copy, const uint16_t *head, int capacity, char *why, size_t whylen) {
    *copy = *m;
    copy->lm_head.data = head;
    copy->cfg.tied = 0;
    return cuda_engine_create(copy, capacity, KV_F16, 64, 0, why, whylen);
}

static void test_ranking(const char *name, const Model *m, const int *ids, int n) {
    int V = m->cfg.vocab, n_ids = V - 7;
    char why[512];
    Engine *pre = cuda_engine_create(m, n + 64, KV_F16, 64, 0, why, sizeof why), *dec = cuda_engine_create(m, n + 64, KV_F16, 1, 0, why, sizeof why);
    if (!pre || !dec) {
        check(0, "%s: GPU engine: %s", name, why);
        return;
    }
    float *lg = xmalloc((size_t)V * 4), *kept = xmalloc((size_t)V * 4);
    TopLogits want, got;
    Engine *engines[2] = {pre, dec};
    for (int i = 0; i < 2; i++) {
        engines[i]->forward(engines[i], ids, n, 0, lg, 0);
        top_logits(lg, V, n_ids, &want);
        engines[i]->forward_top(engines[i], ids, n, 0, n_ids, 0, &got);
        engines[i]->last_logits(engines[i], kept);
        check(same_ranking(&want, &got) && got.bad_id == -1 && !memcmp(kept, lg, (size_t)V * 4),
              "%s: the %s's logits ranked on the GPU = top_logits() on the host over %d of %d ids (first %d, %d, next %g); the "
              "logits kept = those copied", name, i ? "decode steps" : "prefill", n_ids, V, got.id[0], got.id[1], got.next);
    }
    SamplerConfig configs[] = {{.temp = 0, .top_k = 0, .top_p = 1, .min_p = 0, .repeat_penalty = 1},
                               {.temp = 0.8f, .top_k = 20, .top_p = 0.95f, .min_p = 0, .repeat_penalty = 1.3f}};
    enum { NP = 32 };
    for (int i = 0; i < 2; i++) {
        int a[NP], b[NP];
        picked(pre, m, &configs[i], ids, n, a, NP);
        void (*forward_top)(Engine *, const int *, int, int, int, int, TopLogits *) = pre->forward_top;
        pre->forward_top = NULL;  // all logits to the host, as the reference path does
        picked(pre, m, &configs[i], ids, n, b, NP);
        pre->forward_top = forward_top;
        check(!memcmp(a, b, sizeof a), "%s: %d %s tokens picked from the GPU's ranking = picked from all logits", name, NP,
              i ? "seeded top-k 20, penalty 1.3" : "greedy");
    }
    // Fewer ids ranked than kept (the ranking's select runs out of keys and pads with none)
    pre->forward(pre, ids, n, 0, lg, 0);
    top_logits(lg, V, 10, &want);
    pre->forward_top(pre, ids, n, 0, 10, 0, &got);
    check(same_ranking(&want, &got) && got.n == 10 && got.next == -INFINITY,
          "%s: 10 ids ranked on the GPU = top_logits() on the host (%d listed, next %g)", name, got.n, got.next);
    pre->free(pre), dec->free(dec);
    // An lm_head of zeros: every logit 0, ranked by id alone (the select goes down to the ids' bytes).
    Model copy;
    const size_t head_bytes = (size_t)m->lm_head.rows * m->lm_head.cols * 2;
    uint16_t *head = xmalloc(head_bytes);
    memset(head, 0, head_bytes);
    Engine *fe = engine_with_head(m, &copy, head, n + 1, why, sizeof why);
    if (fe) {
        memset(lg, 0, (size_t)V * 4);
        top_logits(lg, V, n_ids, &want);
        fe->forward_top(fe, ids, n, 0, n_ids, 0, &got);
        check(same_ranking(&want, &got) && got.id[0] == 0 && got.id[TOP_LOGITS_MAX - 1] == TOP_LOGITS_MAX - 1,
              "%s: equal logits ranked on the GPU by id = top_logits() on the host (ids %d .. %d, next %g)", name, got.id[0],
              got.id[got.n - 1], got.next);
        fe->free(fe);
    } else check(0, "%s: GPU engine: %s", name, why);
    // A NaN in lm_head's row 5 (rounded_model's matrices are bf16): every position's logit 5 is NaN.
    memcpy(head, m->lm_head.data, head_bytes);
    head[5 * m->lm_head.cols + 3] = 0x7FC0;  // bf16 NaN
    Engine *e = engine_with_head(m, &copy, head, n + 1, why, sizeof why);
    if (e) {
        e->forward_top(e, ids, n, 0, n_ids, 0, &got);
        check(got.bad_id == 5 && isnan(got.bad_logit), "%s: a NaN in lm_head row 5: the GPU's ranking reports id %d (%g) first non-finite", name,
              got.bad_id, got.bad_logit);
        TopLogits pick;  // a greedy step at the cache's last position (nothing queued ahead)
        e->forward_top(e, &got.id[0], 1, n, n_ids, 1, &pick);
        check(pick.n == 1 && pick.bad_id == 5 && isnan(pick.bad_logit), "%s: a NaN in lm_head row 5: a greedy step on the GPU reports id %d (%g) first non-finite",
              name, pick.bad_id, pick.bad_logit);
        e->free(e);
    } else check(0, "%s: GPU engine: %s", name, why);
    free(head), free(lg), free(kept);
}

// Greedy steps (forward_top with greedy: the pick made on the device, the next step queued ahead)
// against the ranking of the same steps on a second engine: the same id and logit, step by step; a
// token other than the pick (the step queued ahead wasted), a ranked forward between greedy ones, and
// the cache's last position; the pick among n_ids only, when an id above them has the largest logit.
static void test_greedy(const char *name, const Model *m, const int *ids, int n) {
    enum { STEPS = 24 };
    int V = m->cfg.vocab, n_ids = V - 7, cap = n + STEPS;
    char why[512];
    Engine *g = cuda_engine_create(m, cap, KV_F16, 64, 0, why, sizeof why), *r = cuda_engine_create(m, cap, KV_F16, 64, 0, why, sizeof why);
    if (!g || !r) {
        check(0, "%s: GPU engine: %s", name, why);
        return;
    }
    TopLogits a, b;
    g->forward_top(g, ids, n, 0, n_ids, 1, &a);
    r->forward_top(r, ids, n, 0, n_ids, 0, &b);
    const int best = b.id[0];
    const float best_logit = b.logit[0];
    int same = a.id[0] == b.id[0], steps = 0, id = b.id[0];
    for (int pos = n; pos < cap && same; pos++, steps++) {
        int tok = pos == n + 5 ? (id + 1) % n_ids : id;  // one token the caller did not pick
        g->forward_top(g, &tok, 1, pos, n_ids, pos != n + 9, &a);  // and one ranked step between greedy ones
        r->forward_top(r, &tok, 1, pos, n_ids, 0, &b);
        same = (pos == n + 9 || (a.n == 1 && a.next == a.logit[0])) && a.id[0] == b.id[0] && a.logit[0] == b.logit[0] && a.bad_id == -1 &&
               b.bad_id == -1;
        id = b.id[0];
    }
    check(same && steps == STEPS, "%s: greedy steps on the GPU (picked there, the next queued ahead) = the ranking's best id and logit for %d of %d steps, "
          "with a token not picked, a ranked step between and the cache's last position", name, steps, STEPS);
    g->free(g), r->free(r);
    // lm_head's row V - 3 the row of the pick after the prompt times 4 (or -4 for a negative logit): the
    // largest logit, beyond n_ids.
    Model copy;
    const size_t cols = (size_t)m->lm_head.cols, head_bytes = (size_t)m->lm_head.rows * cols * 2;
    const float scale = best_logit > 0 ? 4 : -4;
    uint16_t *head = xmalloc(head_bytes);
    memcpy(head, m->lm_head.data, head_bytes);
    for (size_t k = 0; k < cols; k++) head[(V - 3) * cols + k] = f32_to_bf16(scale * bf16_to_f32(head[(size_t)best * cols + k]));
    Engine *e = engine_with_head(m, &copy, head, n + 2, why, sizeof why);
    if (e) {
        int want[2], got[2];
        e->forward_top(e, ids, n - 1, 0, V, 0, &a);
        for (int k = 0; k < 2; k++) {  // the prompt's last position ranked, then greedy, over n_ids and then V ids
            e->forward_top(e, &ids[n - 1], 1, n - 1, k ? V : n_ids, 0, &a);
            want[k] = a.id[0];
            e->forward_top(e, &ids[n - 1], 1, n - 1, k ? V : n_ids, 1, &a);
            got[k] = a.id[0];
        }
        check(want[1] == V - 3 && got[1] == V - 3 && got[0] == want[0] && got[0] < n_ids,
              "%s: a greedy step on the GPU picks among the ids asked for: %d of the first %d (ranked: %d), %d of all %d (ranked: %d)", name, got[0],
              n_ids, want[0], got[1], V, want[1]);
        e->free(e);
    } else check(0, "%s: GPU engine: %s", name, why);
    free(head);
}

// Batched generation (forward_seqs): a sequence X generates the same logits, bit for bit, and so the
// same greedy ids, alone, beside one other sequence, in the 5th of 7 rows and in the last of 32 rows,
// whatever the others do (their prompts of 1 to 40 ids, starting and finishing at other steps); X's
// context is long enough for the batched attention to split it into more chunks (ROWS_MIN_CHUNK) than
// a kv head has blocks with 32 rows on a GPU of 132 SMs (2 or 3 for 4 or 2 kv heads); and
// its greedy ids equal the reference's up to the first near-tie, with its logits close to the
// reference's on the same ids.
enum { SEQ_ROWS = 32, SEQ_STEPS = 24, SEQ_X_PROMPT = 800, SEQ_SPAN = SEQ_X_PROMPT + SEQ_STEPS };

// Runs the sequences (prompt k: prompts[k][0..lens[k]), in row slots[k], starting at step start[k],
// generating until step stop[k]) greedily from the GPU's ranking; X (k = 0) starts at step 0 and runs
// every step: its picks into ids, each step's logits into logits [SEQ_STEPS][V].
static void run_seqs(Engine *e, int V, int n, int **prompts, const int *lens, const int *slots, const int *start, const int *stop,
                     int *ids, float *logits) {
    SeqRow rows[SEQ_ROWS];
    TopLogits tops[SEQ_ROWS];
    int at[SEQ_ROWS] = {0}, next[SEQ_ROWS] = {0}, which[SEQ_ROWS];
    for (int step = 0; step < SEQ_STEPS; step++) {
        int nr = 0;
        for (int k = 0; k < n; k++) {
            if (step < start[k] || step >= stop[k]) continue;
            int first = step == start[k];
            rows[nr] = (SeqRow){.seq = slots[k], .base = slots[k] * SEQ_SPAN, .ids = first ? prompts[k] : &next[k], .n = first ? lens[k] : 1,
                                .pos = first ? 0 : at[k]};
            which[nr++] = k;
        }
        e->forward_seqs(e, rows, nr, V, tops);
        for (int r = 0; r < nr; r++) {
            int k = which[r];
            at[k] = rows[r].pos + rows[r].n;
            next[k] = tops[r].id[0];
            if (k == 0) {
                ids[step] = next[k];
                e->row_logits(e, r, logits + (size_t)step * V);
            }
        }
    }
}

static void test_seqs(const char *name, const Model *m, const int *prompt, int n_prompt, KVFormat kvf) {
    int V = m->cfg.vocab;
    int16_t *wide;
    int n_wide = kv_wide_channels(m, kvf, &wide);
    free(wide);
    if (!kv_gpu_holds(kvf, n_wide)) return;
    char why[512];
    Engine *e = cuda_engine_create(m, -SEQ_ROWS * SEQ_SPAN, kvf, 64, 0, why, sizeof why);
    if (!e || e->seqs(e, SEQ_ROWS, why, sizeof why)) {
        check(0, "%s: GPU engine for %d sequences: %s", name, SEQ_ROWS, why);
        if (e) e->free(e);
        return;
    }
    const char *fmt = kv_format_name(kvf);
    int *prompts[SEQ_ROWS], lens[SEQ_ROWS];
    uint32_t r = 777;
    lens[0] = SEQ_X_PROMPT;  // the fixture's prompt, then random ids
    prompts[0] = xmalloc(SEQ_X_PROMPT * sizeof(int));
    for (int i = 0; i < SEQ_X_PROMPT; i++) {
        uint32_t x = lcg(&r);  // drawn for every position, the prompt's too
        prompts[0][i] = i < n_prompt ? prompt[i] : (int)((x >> 8) % (uint32_t)V);
    }
    for (int k = 1; k < SEQ_ROWS; k++) {
        lens[k] = 1 + (k * 13) % 40;
        prompts[k] = xmalloc(40 * sizeof(int));
        for (int i = 0; i < lens[k]; i++) prompts[k][i] = (int)((lcg(&r) >> 8) % (uint32_t)V);
    }
    // The runs: X's row and the company it keeps.
    enum { RUNS = 4 };
    const int sizes[RUNS] = {1, 2, 7, 32}, x_slot[RUNS] = {0, 0, 4, 31};
    int ids[RUNS][SEQ_STEPS];
    float *logits = xmalloc((size_t)RUNS * SEQ_STEPS * V * 4);
    for (int run = 0; run < RUNS; run++) {
        int slots[SEQ_ROWS], start[SEQ_ROWS], stop[SEQ_ROWS];
        for (int k = 0; k < sizes[run]; k++) {
            slots[k] = k == 0 ? x_slot[run] : k <= x_slot[run] ? k - 1 : k;
            start[k] = k ? k % 3 : 0;
            stop[k] = k ? SEQ_STEPS - k % 5 : SEQ_STEPS;
        }
        run_seqs(e, V, sizes[run], prompts, lens, slots, start, stop, ids[run], logits + (size_t)run * SEQ_STEPS * V);
    }
    for (int run = 1; run < RUNS; run++)
        check(!memcmp(ids[run], ids[0], sizeof ids[0]) && !memcmp(logits + (size_t)run * SEQ_STEPS * V, logits, (size_t)SEQ_STEPS * V * 4),
              "%s %s batched: a sequence's %d steps of logits in row %d of %d = alone, bit for bit (ids too)", name, fmt, SEQ_STEPS,
              x_slot[run] + 1, sizes[run]);
    // Against the reference: the same ids teacher-forced, and the reference's own greedy stream.
    Engine *re = ref_engine_create(m, SEQ_SPAN, kvf, 64);
    float *ref = xmalloc((size_t)V * 4);
    Agree a = {0};
    int agree_to = SEQ_STEPS, tie_at = SEQ_STEPS, pos = 0, rid = 0;
    for (int step = 0; step < SEQ_STEPS; step++) {
        re->forward(re, step ? &ids[0][step - 1] : prompts[0], step ? 1 : lens[0], pos, ref, 0);
        pos += step ? 1 : lens[0];
        agree_row(&a, ref, logits + (size_t)step * V, V);
        rid = argmax_f(ref, V);
        if (tie_at == SEQ_STEPS && near_tie(ref, V)) tie_at = step;
        if (agree_to == SEQ_STEPS && rid != ids[0][step]) agree_to = step;
    }
    // Quantized formats: a rounding step the GPU's K or V cross in the last bits (as test_forwards
    // allows); kv4h's o_proj columns carry the rotation, rounded to bf16 again (measured 8.2e-3 on
    // qwen3-tiny-random, whose kv4h cache alone is 8.1e-2 from f32).
    double limit = kvf == KV_BF16 || kvf == KV_F16 ? 1e-4 : kvf == KV_KV4H ? 2e-2 : 5e-3;
    check(a.kld / a.rows <= limit && agree_to >= tie_at,
          "%s %s batched vs reference: mean KLD %.2e over %d steps, greedy ids equal for %d (first near-tie at %d)", name, fmt,
          a.kld / a.rows, a.rows, agree_to, tie_at);
    for (int k = 0; k < SEQ_ROWS; k++) free(prompts[k]);
    free(ref), free(logits);
    re->free(re), e->free(e);
}

static int test_fixture_dir(const char *root) {
    char *names[64];
    int n = fixture_names(root, names, 64), found = 0;
    for (int i = 0; i < n; i++) {
        char dir[600], golden[700];
        snprintf(dir, sizeof dir, "%s/%s", root, names[i]);
        snprintf(golden, sizeof golden, "%s/golden.bin", dir);
        Golden g;
        if (access(golden, F_OK) == 0 && load_golden(golden, &g) == 0) {
            found++;
            Model m;
            model_load(&m, dir);
            Model *rm = rounded_model(&m);
            test_ranking(names[i], rm, g.prompt, g.n_prompt);
            test_greedy(names[i], rm, g.prompt, g.n_prompt);
            for (int f = 0; f < KV_N_FORMATS; f++)
                if (kv_formats[f].gpu) {
                    test_stages(names[i], rm, g.prompt, g.n_prompt, (KVFormat)f);
                    test_attention_depth(names[i], rm, (KVFormat)f);
                    test_forwards(names[i], rm, &m, &g, (KVFormat)f);
                    test_seqs(names[i], rm, g.prompt, g.n_prompt, (KVFormat)f);
                }
            rounded_model_free(rm);
            model_free(&m);
            golden_free(&g);
        }
        free(names[i]);
    }
    return found;
}

// ---------------------------------------------------------------------------------------------
// Real shapes against transformers (hf_logits.bin)

static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = n > 0 ? malloc((size_t)n) : NULL;
    *len = buf ? fread(buf, 1, (size_t)n, f) : 0;
    fclose(f);
    return buf;
}

typedef struct {
    char *buf;
    int N, V, first, rows;
    const int *ids;
    const float *logits;
} HfLogits;

static int load_hf(const char *path, HfLogits *h) {
    size_t len;
    uint32_t hd[5];
    h->buf = read_all(path, &len);
    if (!h->buf || len < 28 || memcmp(h->buf, "NANOHFLG", 8) != 0) return free(h->buf), -1;
    memcpy(hd, h->buf + 8, 20);
    h->N = (int)hd[1], h->V = (int)hd[2], h->first = (int)hd[3], h->rows = (int)hd[4];
    if (hd[0] != 1 || len != 28 + 4 * ((size_t)h->N + (size_t)h->rows * h->V)) return free(h->buf), -1;
    h->ids = (const int *)(h->buf + 28);
    h->logits = (const float *)(h->buf + 28 + 4 * (size_t)h->N);
    return 0;
}

// The GPU engine over transformers' sequence: prefill up to the stored rows, then the stored prefill
// rows in one chunk, then the last rows / 2 positions one token at a time through the decode kernel;
// compared with transformers' fp32 logits (the check), and with its logits over bf16-rounded K/V
// (hf_logits_kvbf16.bin, where present: the engine's own error, apart from the cache format's).
// Agreement limits against transformers' fp32 logits, per KV format: mean KLD and the share of
// decided top-1s kept. The model's default format (kv_default) must meet the strictest: KLD <= 1e-4
// and every decided top-1.
typedef struct {
    KVFormat f;
    double kld, top1;
} HfLimit;
static const HfLimit hf_limits[] = {{KV_BF16, 1e-2, 0.97}, {KV_F16, 1e-4, 0.995}, {KV_INT8, 1e-3, 0.99}, {KV_K8V4, 5e-3, 0.97},
                                    {KV_KV4H, 1e-2, 0.95}};

// The GPU engine over transformers' sequence, in every GPU KV format: prefill up to the stored rows,
// then the stored prefill rows in one chunk, then the last rows / 2 positions one token at a time
// through the decode kernel; compared with transformers' fp32 logits (the check), and for bf16 with
// its logits over bf16-rounded K/V (hf_logits_kvbf16.bin, where present: the engine's own error,
// apart from the cache format's, when the model has no wide key channels).
static void test_hf(const char *dir) {
    char path[700], path_kv[700];
    snprintf(path, sizeof path, "%s/hf_logits.bin", dir);
    snprintf(path_kv, sizeof path_kv, "%s/hf_logits_kvbf16.bin", dir);
    HfLogits hf, hk;
    if (load_hf(path, &hf)) {
        check(0, "%s: no readable hf_logits.bin", dir);
        return;
    }
    int have_kv = load_hf(path_kv, &hk) == 0 && hk.N == hf.N && hk.V == hf.V && hk.first == hf.first && hk.rows == hf.rows;
    int N = hf.N, V = hf.V, first = hf.first, rows = hf.rows;
    const int *ids = hf.ids;
    Model m;
    model_load(&m, dir);
    if (m.cfg.vocab != V) fatal("%s: vocab %d, hf_logits.bin %d", dir, m.cfg.vocab, V);
    int dstart = N - rows / 2;  // the last rows / 2 positions go through the decode kernel one by one
    float *lg = xmalloc((size_t)(dstart - first) * V * 4);
    KVFormat fdefault = kv_default(&m.cfg);
    for (size_t li = 0; li < sizeof hf_limits / sizeof hf_limits[0]; li++) {
        HfLimit lim_f = hf_limits[li];
        if (lim_f.f == fdefault) lim_f.kld = 1e-4, lim_f.top1 = 1;
        const HfLimit *lim = &lim_f;
        char fmt[32];
        snprintf(fmt, sizeof fmt, "%s%s", kv_format_name(lim->f), lim->f == fdefault ? " (default)" : "");
        char why[512];
        double t0 = now_s();
        int16_t *wide;
        int n_wide = kv_wide_channels(&m, lim->f, &wide);
        free(wide);
        Engine *e = cuda_engine_create(&m, N, lim->f, 256, 0, why, sizeof why);
        if (!kv_gpu_holds(lim->f, n_wide)) {  // refused on the GPU (README)
            check(!e, "%s %s: refused by the GPU engine (%d wide key channels): %s", dir, fmt, n_wide, e ? "accepted" : why);
            if (e) e->free(e);
            continue;
        }
        if (!e) {
            check(0, "%s: GPU engine: %s", dir, why);
            continue;
        }
        double t_load = now_s() - t0;
        e->forward(e, ids, first, 0, NULL, 0);
        e->forward(e, ids + first, dstart - first, first, lg, 1);
        Agree ap = {0}, ad = {0}, kp = {0}, kd = {0};
        for (int t = first; t < dstart; t++) {
            agree_row(&ap, hf.logits + (size_t)(t - first) * V, lg + (size_t)(t - first) * V, V);
            if (have_kv) agree_row(&kp, hk.logits + (size_t)(t - first) * V, lg + (size_t)(t - first) * V, V);
        }
        for (int t = dstart; t < N; t++) {
            e->forward(e, ids + t, 1, t, lg, 0);
            agree_row(&ad, hf.logits + (size_t)(t - first) * V, lg, V);
            if (have_kv) agree_row(&kd, hk.logits + (size_t)(t - first) * V, lg, V);
        }
        e->free(e);
        check(ap.kld / ap.rows <= lim->kld && ap.top1_decided >= lim->top1 * ap.decided,
              "%s %s KV vs transformers, prefill positions %d..%d: mean KLD %.2e, top-1 %d/%d, decided %d/%d, max|diff| %.2e", dir, fmt,
              first, dstart - 1, ap.kld / ap.rows, ap.top1, ap.rows, ap.top1_decided, ap.decided, ap.max_diff);
        check(ad.kld / ad.rows <= lim->kld && ad.top1_decided >= lim->top1 * ad.decided,
              "%s %s KV vs transformers, %d teacher-forced decode steps at %d..%d: mean KLD %.2e, top-1 %d/%d, decided %d/%d, "
              "max|diff| %.2e (load %.1f s)",
              dir, fmt, N - dstart, dstart, N - 1, ad.kld / ad.rows, ad.top1, ad.rows, ad.top1_decided, ad.decided, ad.max_diff, t_load);
        if (have_kv && lim->f == KV_BF16)
            check(kp.kld / kp.rows <= 1e-4 && kp.top1_decided == kp.decided && kd.kld / kd.rows <= 1e-4 && kd.top1_decided == kd.decided,
                  "%s vs transformers with bf16-rounded K/V: prefill mean KLD %.2e, top-1 %d/%d, max|diff| %.2e; decode mean KLD %.2e, "
                  "top-1 %d/%d, max|diff| %.2e",
                  dir, kp.kld / kp.rows, kp.top1, kp.rows, kp.max_diff, kd.kld / kd.rows, kd.top1, kd.rows, kd.max_diff);
    }
    if (have_kv) {
        Agree floor = {0};  // what the cache format alone does: transformers with bf16 K/V against itself in fp32
        for (int t = 0; t < rows; t++) agree_row(&floor, hf.logits + (size_t)t * V, hk.logits + (size_t)t * V, V);
        printf("info %s: transformers with bf16 K/V vs fp32 K/V: mean KLD %.2e, top-1 %d/%d, decided %d/%d, max|diff| %.2e\n", dir,
               floor.kld / floor.rows, floor.top1, floor.rows, floor.top1_decided, floor.decided, floor.max_diff);
        free(hk.buf);
    }
    free(lg);
    model_free(&m);
    free(hf.buf);
}

// ---------------------------------------------------------------------------------------------
// Speed (not a test)

// Seconds per token of chained greedy decode from position pos: the best of 3 runs of steps, after a
// short warm-up.
static double best_decode(Engine *e, int id, int pos, int steps) {
    cuda_engine_bench_decode(e, id, pos, 16, NULL);
    double best = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        double s = cuda_engine_bench_decode(e, id, pos, steps, NULL);
        if (s < best) best = s;
    }
    return best;
}

static void bench(const char *dir, double copy_bw) {
    Model m;
    model_load(&m, dir);
    const Config *c = &m.cfg;
    int V = c->vocab, deep = 4096, steps = 128, cap = deep + steps + 8;
    char why[512];
    Engine *e = cuda_engine_create(&m, cap, KV_BF16, 2048, 0, why, sizeof why);
    if (!e) {
        printf("bench %s: no GPU engine: %s\n", dir, why);
        model_free(&m);
        return;
    }
    int *ids = xmalloc((size_t)cap * sizeof(int));
    uint32_t r = 777;
    for (int i = 0; i < cap; i++) ids[i] = (int)((lcg(&r) >> 8) % (uint32_t)(V < 150000 ? V : 150000));
    float *lg = xmalloc((size_t)V * 4);
    double wbytes, kvpos;
    cuda_engine_bytes(e, &wbytes, &kvpos);
    const char *name = strrchr(dir, '/') ? strrchr(dir, '/') + 1 : dir;
    for (int pp = 512; pp <= 2048; pp *= 4) {
        double best = 1e30;
        for (int rep = 0; rep < 4; rep++) {
            double t0 = now_s();
            e->forward(e, ids, pp, 0, lg, 0);
            double dt = now_s() - t0;
            if (rep > 0 && dt < best) best = dt;  // the first run warms up
        }
        printf("| %s | prefill pp%d | %.0f tok/s | %.2f ms |\n", name, pp, pp / best, best * 1e3);
    }
    // Decode, chained greedy steps on the GPU, short context and 4k deep, per wo_split.
    for (int split = 1; split <= 8; split *= 2) {
        cuda_engine_set_wo_split(e, split);
        for (int depth = 0; depth <= deep; depth += deep) {
            if (depth) e->forward(e, ids, depth, 0, NULL, 0);
            double best = best_decode(e, ids[depth], depth, steps);
            double bytes = wbytes + kvpos * (depth + steps / 2.0);
            printf("| %s | decode wo_split %d, context %d..%d | %.1f tok/s | %.3f ms | %.0f GB/s | %.0f%% of copy |\n", name, split,
                   depth, depth + steps, 1 / best, best * 1e3, bytes / best / 1e9, 100 * bytes / best / copy_bw);
            if (split == 2) {
                cuda_engine_set_prefetch(e, 1);
                double on = 1e30;
                for (int rep = 0; rep < 3; rep++) {
                    double s = cuda_engine_bench_decode(e, ids[depth], depth, steps, NULL);
                    if (s < on) on = s;
                }
                cuda_engine_set_prefetch(e, 0);
                printf("| %s | decode wo_split 2, context %d..%d, with the L2 prefetch before barriers | %.1f tok/s | %.3f ms | %.0f GB/s | %.0f%% of copy |\n",
                       name, depth, depth + steps, 1 / on, on * 1e3, bytes / on / 1e9, 100 * bytes / on / copy_bw);
                double us[6];
                cuda_engine_stage_times(e, ids[depth], depth + steps / 2, 8, us);
                printf("| %s | stages at context %d, us per layer: QKV %.1f, attention %.1f, o_proj %.1f, gate/up %.1f, down %.1f; "
                       "lm_head + pick %.1f us | | | | |\n",
                       name, depth + steps / 2, us[0], us[1], us[2], us[3], us[4], us[5]);
                if (!depth) {
                    cuda_engine_barrier_us(e, 100);  // warm-up
                    printf("| %s | a grid barrier of the decode grid, alone | | %.2f us | | |\n", name, cuda_engine_barrier_us(e, 5000));
                }
            }
        }
    }
    // What a caller of the Engine API sees: logits copied to the host every step; graph replay, then
    // direct cooperative launches. The host's argmax over the vocabulary is timed apart.
    cuda_engine_set_wo_split(e, 2);
    for (int g = 1; g >= 0; g--) {
        cuda_engine_use_graph(e, g);
        for (int k = 0; k < 4; k++) e->forward(e, ids + k, 1, k, lg, 0);
        double t0 = now_s();
        for (int k = 0; k < steps; k++) e->forward(e, ids + k, 1, 16 + k, lg, 0);
        double dt = (now_s() - t0) / steps;
        printf("| %s | decode through the Engine API, logits to the host, %s | %.1f tok/s | %.3f ms | | |\n", name,
               g ? "CUDA graph" : "direct launches", 1 / dt, dt * 1e3);
    }
    // Greedy steps as the modes run them (forward_top: picked on the GPU, the next step queued ahead).
    TopLogits top;
    int id = ids[16];
    for (int pass = 0; pass < 2; pass++) {  // the first warms up
        double t0 = now_s();
        for (int k = 0; k < steps; k++) {
            e->forward_top(e, &id, 1, 16 + k, V, 1, &top);
            id = top.id[0];
        }
        double dt = (now_s() - t0) / steps;
        if (pass) printf("| %s | decode through the Engine API, greedy steps (forward_top) | %.1f tok/s | %.3f ms | | |\n", name, 1 / dt, dt * 1e3);
        id = ids[16];
    }
    double t0 = now_s();
    volatile int sink = 0;
    for (int k = 0; k < 100; k++) sink += argmax_f(lg, V);
    printf("| %s | host argmax over %d logits | | %.3f ms | | |\n", name, V, (now_s() - t0) / 100 * 1e3);
    fflush(stdout);
    free(ids), free(lg);
    e->free(e);
    model_free(&m);
}

// Decode speed per KV format at 4k and 32k context: chained greedy steps, best of 3 runs of 128.
static void bench_kv(const char *dir, double copy_bw) {
    Model m;
    model_load(&m, dir);
    int V = m.cfg.vocab, steps = 128, depths[] = {4096, 32768}, cap = 32768 + steps + 8;
    int *ids = xmalloc((size_t)cap * sizeof(int));
    uint32_t r = 777;
    for (int i = 0; i < cap; i++) ids[i] = (int)((lcg(&r) >> 8) % (uint32_t)(V < 150000 ? V : 150000));
    const char *name = strrchr(dir, '/') ? strrchr(dir, '/') + 1 : dir;
    for (int f = 0; f < KV_N_FORMATS; f++) {
        if (!kv_formats[f].gpu) continue;
        char why[512];
        Engine *e = cuda_engine_create(&m, cap, (KVFormat)f, 2048, 0, why, sizeof why);
        if (!e) {
            printf("bench %s %s: no GPU engine: %s\n", dir, kv_format_name((KVFormat)f), why);
            continue;
        }
        double wbytes, kvpos;
        cuda_engine_bytes(e, &wbytes, &kvpos);
        int done = 0;
        for (int k = 0; k < 2; k++) {
            e->forward(e, ids + done, depths[k] - done, done, NULL, 0);
            done = depths[k];
            double best = best_decode(e, ids[done], done, steps);
            double bytes = wbytes + kvpos * (done + steps / 2.0);
            printf("| %s | %s | %.0f B/token | decode at %d | %.1f tok/s | %.0f GB/s | %.0f%% of copy |\n", name,
                   kv_format_name((KVFormat)f), kvpos, done, 1 / best, bytes / best / 1e9, 100 * bytes / best / copy_bw);
        }
        e->free(e);
    }
    free(ids);
    model_free(&m);
}

// The trained tiny model through the nano binary on the GPU engine: transformers' held-out perplexity
// within 0.5% and transformers' greedy ids (tests/fixtures/tiny_ppl/expected.json).
static char *run_nano_gpu(const char *args) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "./nano -m models/qwen3-tiny-classics %s 2>&1", args);
    FILE *p = popen(cmd, "r");
    static char out[1 << 20];
    size_t n = p ? fread(out, 1, sizeof out - 1, p) : 0;
    out[n] = 0;
    if (p) pclose(p);
    return out;
}

static void test_tiny_model(void) {
    JsonFile f;
    if (!json_file_open(&f, "tests/fixtures/tiny_ppl/expected.json", 0)) {
        check(0, "tests/fixtures/tiny_ppl/expected.json is missing");
        return;
    }
    const Json *j = &f.json;
    double want_ppl = json_get(j, f.root, "ppl")->num;
    const JsonNode *g = json_get(j, f.root, "greedy");
    char args[512], want_ids[400] = "";
    size_t o = 0;
    for (const JsonNode *id = json_first(j, json_get(j, g, "ids")); id; id = json_next(j, id))
        o += (size_t)snprintf(want_ids + o, sizeof want_ids - o, "%s%d", o ? " " : "", (int)id->num);
    snprintf(args, sizeof args, "-p '%s' --raw --temp 0 --repeat-penalty 1 -n 24 --print-ids", json_get(j, g, "prompt")->str);
    char *out = run_nano_gpu(args);
    check(strstr(out, want_ids) && strstr(out, "| cuda, f16 KV"), "tiny model on the GPU: greedy ids = transformers' [%s]", want_ids);
    snprintf(args, sizeof args, "--perplexity tests/fixtures/tiny_ppl/heldout.txt -c %d --stride %d",
             (int)json_get(j, f.root, "ctx")->num, (int)json_get(j, f.root, "stride")->num);
    out = run_nano_gpu(args);
    double ppl = 0;
    const char *line = strstr(out, "perplexity: ");
    if (line) sscanf(line, "perplexity: %lf", &ppl);
    check(fabs(ppl / want_ppl - 1) < 5e-3 && strstr(out, "| cuda, f16 KV"), "tiny model on the GPU: held-out perplexity %.4f, transformers %.4f",
          ppl, want_ppl);
    json_file_close(&f);
    // -f --parallel 32 end to end: a seeded sampled line gives the same reply alone, as the 5th of 7
    // lines and as the last of 32, and greedy lines give --parallel 1's replies.
    const char *x = "{\"prompt\": \"Call me Ishmael.\", \"temperature\": 0.8, \"top_k\": 40, \"seed\": 5, \"n_predict\": 40}";
    const int sizes[3] = {1, 7, 32}, x_at[3] = {0, 4, 31};
    char reply[3][400];
    for (int k = 0; k < 3; k++) {
        FILE *pf = fopen("/tmp/nano-gpu-prompts.txt", "w");
        for (int i = 0; i < sizes[k]; i++) {
            if (i == x_at[k]) fprintf(pf, "%s\n", x);
            else fprintf(pf, "{\"prompt\": \"Line %d of the book\", \"temperature\": 0, \"n_predict\": %d}\n", i, 8 + 5 * i);
        }
        fclose(pf);
        out = run_nano_gpu("-f /tmp/nano-gpu-prompts.txt --raw --parallel 32 -q");
        char want[32];
        snprintf(want, sizeof want, "\"id\": %d,", x_at[k] + 1);
        const char *at = strstr(out, want), *rep = at ? strstr(at, "\"output\": ") : NULL, *end = rep ? strstr(rep, "\", \"n_prompt") : NULL;
        snprintf(reply[k], sizeof reply[k], "%.*s", end ? (int)(end - rep) : 0, rep ? rep : "");
    }
    check(reply[0][0] && !strcmp(reply[0], reply[1]) && !strcmp(reply[0], reply[2]),
          "nano -f --parallel 32 on the GPU: a seeded line's reply alone = as line 5 of 7 = as line 32 of 32 (%s | %s | %s)", reply[0],
          reply[1], reply[2]);
    // Greedy lines through the batched rows (cuBLAS) and through the decode kernel (--parallel 1) are
    // two GPU paths close to the reference; how many replies come out the same, for information.
    char *par = strdup(run_nano_gpu("-f /tmp/nano-gpu-prompts.txt --raw -s 1 --parallel 32 -q 2>/dev/null | sed 's/.ms.: [0-9.]*//'"));
    out = run_nano_gpu("-f /tmp/nano-gpu-prompts.txt --raw -s 1 --parallel 1 -q 2>/dev/null | sed 's/.ms.: [0-9.]*//'");
    int lines = 0, same = 0;
    for (const char *pa = par, *pb = out, *ea, *eb; (ea = strchr(pa, '\n')) && (eb = strchr(pb, '\n')); pa = ea + 1, pb = eb + 1) {
        lines++;
        same += ea - pa == eb - pb && !memcmp(pa, pb, (size_t)(ea - pa));
    }
    check(lines == 32 && !strstr(par, "\"error\""), "nano -f --parallel 32: 32 results, none an error (%d)", lines);
    printf("info nano -f: %d of 32 replies with --parallel 32 = with --parallel 1 (the decode kernel)\n", same);
    free(par);
}

int main(int argc, char **argv) {
    char why[256];
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (cuda_device_count(why, sizeof why) == 0) {
        printf("test-gpu: skipped, no CUDA GPU here (%s)\n", why);
        return 0;
    }
    if (argc > 1 && !strcmp(argv[1], "--bench-kv")) {
        double bw = cuda_copy_bandwidth((size_t)1 << 30);
        printf("device-to-device copy: %.0f GB/s (read + written)\n\n| model | KV | bytes | context | speed | GB/s | |\n|---|---|---|---|---|---|---|\n",
               bw / 1e9);
        for (int i = 2; i < argc; i++) bench_kv(argv[i], bw);
        return 0;
    }
    if (argc > 1 && !strcmp(argv[1], "--bench")) {
        double bw = cuda_copy_bandwidth((size_t)1 << 30);
        printf("device-to-device copy: %.0f GB/s (read + written)\n\n| model | what | speed | time | GB/s | |\n|---|---|---|---|---|---|\n", bw / 1e9);
        for (int i = 2; i < argc; i++) bench(argv[i], bw);
        return 0;
    }
    if (argc > 1 && !strcmp(argv[1], "--hf")) {
        for (int i = 2; i < argc; i++) test_hf(argv[i]);
    } else {
        int found = test_fixture_dir("tests/fixtures") + test_fixture_dir("models");
        check(found >= 7, "found %d HF fixtures (expected at least 7)", found);
        test_tiny_model();
    }
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
