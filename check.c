// --check: the GPU engine against the reference path, layer by layer, through the Engine API and the
// engines' layer hooks; and the bf16-rounded weights both compute with.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nano.h"

typedef struct {
    Model m;          // first, so a Model * is this struct
    void **bufs;
    int n_bufs;
} RoundedModel;

static void round_tensor(RoundedModel *r, Tensor *t, const Tensor *src) {
    *t = *src;
    if (!src->data || src->dtype == DT_BF16) return;
    size_t n = (size_t)src->rows * src->cols;
    uint16_t *b = xmalloc(n * 2);
    for (size_t i = 0; i < n; i++) b[i] = f32_to_bf16(tensor_get(src, i));
    r->bufs[r->n_bufs++] = b;
    t->data = b;
    t->dtype = DT_BF16;
}

Model *rounded_model(const Model *m) {
    RoundedModel *r = xcalloc(1, sizeof *r);
    int L = m->cfg.n_layers;
    r->m = *m;
    r->m.shards = NULL, r->m.n_shards = 0;
    r->bufs = xcalloc((size_t)L * 7 + 2, sizeof(void *));
    r->m.layers = xcalloc((size_t)L, sizeof(LayerWeights));
    for (int l = 0; l < L; l++) {
        const LayerWeights *s = &m->layers[l];
        LayerWeights *t = &r->m.layers[l];
        *t = *s;
        round_tensor(r, &t->wq, &s->wq);
        round_tensor(r, &t->wk, &s->wk);
        round_tensor(r, &t->wv, &s->wv);
        round_tensor(r, &t->wo, &s->wo);
        round_tensor(r, &t->w_gate, &s->w_gate);
        round_tensor(r, &t->w_up, &s->w_up);
        round_tensor(r, &t->w_down, &s->w_down);
    }
    round_tensor(r, &r->m.embed, &m->embed);
    if (m->lm_head.data == m->embed.data) r->m.lm_head = r->m.embed;
    else round_tensor(r, &r->m.lm_head, &m->lm_head);
    return &r->m;
}

void rounded_model_free(Model *model) {
    RoundedModel *r = (RoundedModel *)model;
    if (!r) return;
    for (int i = 0; i < r->n_bufs; i++) free(r->bufs[i]);
    free(r->bufs);
    free(r->m.layers);
    free(r);
}

typedef struct {
    int L, H;
    float *ref[2];       // per layer and stage: the reference's residual rows of the current call
    size_t cap;          // floats per entry of ref
    double *diff, *mag;  // [L][2] largest |gpu - ref| and largest |ref|
} CheckState;

static void check_ref_hook(void *ctx, int layer, int stage, const float *x, int T) {
    CheckState *s = ctx;
    size_t n = (size_t)T * s->H;
    float *dst = s->ref[stage] + (size_t)layer * s->cap;
    if (n > s->cap) fatal("--check: %d tokens beyond the check buffers", T);
    memcpy(dst, x, n * sizeof(float));
}

static void check_gpu_hook(void *ctx, int layer, int stage, const float *x, int T) {
    CheckState *s = ctx;
    const float *r = s->ref[stage] + (size_t)layer * s->cap;
    double *diff = s->diff + layer * 2 + stage, *mag = s->mag + layer * 2 + stage;
    for (size_t i = 0; i < (size_t)T * s->H; i++) {
        double dd = fabs((double)x[i] - r[i]);
        if (!(dd <= *diff)) *diff = dd;  // NaN sticks
        if (fabs(r[i]) > *mag) *mag = fabs(r[i]);
    }
}

double log_sum_exp(const float *x, size_t n) {
    double max = x[0], sum = 0;
    for (size_t i = 1; i < n; i++) max = x[i] > max ? x[i] : max;
    for (size_t i = 0; i < n; i++) sum += exp(x[i] - max);
    return max + log(sum);
}

double logits_kld(const float *ref, const float *got, size_t n, int *ref_top, int *got_top) {
    double lr = log_sum_exp(ref, n), lg = log_sum_exp(got, n), kl = 0;
    int a = 0, b = 0;
    for (size_t i = 0; i < n; i++) {
        double p = ref[i] - lr;
        kl += exp(p) * (p - (got[i] - lg));
        if (ref[i] > ref[a]) a = (int)i;
        if (got[i] > got[b]) b = (int)i;
    }
    *ref_top = a, *got_top = b;
    return kl;
}

#define CHECK_TOL 1e-2  // max |gpu - ref| over max |ref| of a layer's residual; the fixtures measure <= 6e-4 (README)

int gpu_check(const Model *m, const int *ids, int n, int n_decode, int capacity, int batch, int wo_split, KVFormat kv) {
    const Config *cf = &m->cfg;
    char why[256];
    if (batch < 1) batch = 1;
    if (n + n_decode > capacity) n_decode = capacity - n;
    Model *rm = rounded_model(m);
    Engine *gpu = cuda_engine_create(m, capacity, kv, batch, wo_split, why, sizeof why);
    if (!gpu) fatal("--check: no GPU engine: %s", why);
    Engine *ref = ref_engine_create(rm, capacity, kv, batch);
    CheckState s;
    memset(&s, 0, sizeof s);
    s.L = cf->n_layers, s.H = cf->hidden, s.cap = (size_t)batch * cf->hidden;
    for (int k = 0; k < 2; k++) s.ref[k] = xmalloc((size_t)s.L * s.cap * sizeof(float));
    s.diff = xcalloc((size_t)s.L * 2, sizeof(double));
    s.mag = xcalloc((size_t)s.L * 2, sizeof(double));
    ref_engine_set_hook(ref, check_ref_hook, &s);
    cuda_engine_set_hook(gpu, check_gpu_hook, &s);
    size_t V = (size_t)cf->vocab;
    float *lr = xmalloc((size_t)batch * V * 4), *lg = xmalloc((size_t)batch * V * 4);
    double max_logit_diff = 0, kld = 0;
    int rows = 0, top1 = 0, tok = 0;
    for (int done = 0; done < n + n_decode;) {
        int T = done < n ? (batch < n - done ? batch : n - done) : 1;
        const int *in = done < n ? ids + done : &tok;
        ref->forward(ref, in, T, done, lr, 1);
        gpu->forward(gpu, in, T, done, lg, 1);
        for (int t = 0; t < T; t++) {
            const float *a = lr + t * V, *b = lg + t * V;
            for (size_t i = 0; i < V; i++) {
                double dd = fabs((double)a[i] - b[i]);
                if (!(dd <= max_logit_diff)) max_logit_diff = dd;
            }
            int ar, ag;
            kld += logits_kld(a, b, V, &ar, &ag);
            top1 += ar == ag;
            rows++;
            tok = ar;
        }
        done += T;
    }
    printf("--check: %d prompt tokens (chunks of %d) + %d decode steps, GPU vs reference (bf16 weights, %s KV)\n", n, batch,
           n_decode, kv_format_name(kv));
    printf("layer   after attention: max|diff|  relative    after MLP: max|diff|  relative\n");
    int first = -1, first_stage = 0;
    for (int l = 0; l < s.L; l++) {
        double r0 = s.diff[l * 2] / (s.mag[l * 2] > 0 ? s.mag[l * 2] : 1), r1 = s.diff[l * 2 + 1] / (s.mag[l * 2 + 1] > 0 ? s.mag[l * 2 + 1] : 1);
        printf("%5d   %26.3e  %9.2e  %20.3e  %9.2e\n", l, s.diff[l * 2], r0, s.diff[l * 2 + 1], r1);
        if (first < 0 && !(r0 <= CHECK_TOL)) first = l, first_stage = 0;
        if (first < 0 && !(r1 <= CHECK_TOL)) first = l, first_stage = 1;
    }
    printf("logits: max|diff| %.3e, mean KLD %.3e, top-1 agreement %d/%d\n", max_logit_diff, kld / rows, top1, rows);
    if (first >= 0) printf("first layer beyond %.0e: %d (after %s)\n", CHECK_TOL, first, first_stage ? "the MLP" : "attention");
    else printf("every layer within %.0e\n", CHECK_TOL);
    free(lr);
    free(lg);
    free(s.ref[0]);
    free(s.ref[1]);
    free(s.diff);
    free(s.mag);
    ref->free(ref);
    gpu->free(gpu);
    rounded_model_free(rm);
    return first >= 0;
}
