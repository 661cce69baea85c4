// The scalar reference forward: plain fp32 loops over weights in their stored dtype, in the order of
// transformers' modeling_qwen3.py / modeling_qwen2.py. It is the oracle for the GPU kernels and the
// fallback without a GPU, so clarity wins over speed; the one concession is that a linear layer
// converts a few weight rows at a time and applies them to every token of the chunk.
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "nano.h"

#define REF_ROWS 8  // weight rows converted to fp32 together in linear()
#define REF_MAX_THREADS 256

// ---------------------------------------------------------------------------------------------
// Scratch state

struct RefState {
    int max_batch;   // tokens per chunk
    float *x;        // [B,H] residual stream
    float *h;        // [B,H] normalized input of attention / MLP
    float *q;        // [B,Hq*D]
    float *k, *v;    // [B,Hkv*D]
    float *attn;     // [B,Hq*D] attention output before o_proj
    float *gate, *up;  // [B,I]
    float *proj;     // [B,max(H)] o_proj / down_proj output before the residual add
    float *scores;   // [capacity] one query's attention weights
    float *krow;     // [D] a cached K or V row as fp32
    float *wrows;    // [REF_ROWS, max in-features] weight rows as fp32
    float *inv_freq; // [D/2] RoPE frequencies (YaRN already folded in)
    float rope_scale;  // multiplies cos and sin (YaRN attention factor, else 1)
    int capacity;
    LayerHook hook;    // residual after each layer's attention and MLP (--check), or NULL
    void *hook_ctx;
};

// HF's rotary embedding init, in fp32 like torch: default 1/theta^(2i/D); YaRN blends interpolated
// (1/(factor*theta^(2i/D))) and extrapolated frequencies with a linear ramp between the correction
// dims of beta_fast and beta_slow (modeling_rope_utils.py, _compute_yarn_parameters).
float rope_frequencies(const Config *c, float *inv_freq) {
    int half = c->head_dim / 2;
    float D = (float)c->head_dim;
    for (int i = 0; i < half; i++) inv_freq[i] = 1.0f / powf(c->rope_theta, (float)(2 * i) / D);
    if (c->rope_type != ROPE_YARN) return 1.0f;
    double base = c->rope_theta, orig = c->rope_orig_max_pos;
    double lo = floor(D * log(orig / (c->yarn_beta_fast * 2 * M_PI)) / (2 * log(base)));
    double hi = ceil(D * log(orig / (c->yarn_beta_slow * 2 * M_PI)) / (2 * log(base)));
    if (lo < 0) lo = 0;
    if (hi > D - 1) hi = D - 1;
    if (lo == hi) hi += 0.001;
    for (int i = 0; i < half; i++) {
        float pos_freq = powf(c->rope_theta, (float)(2 * i) / D);
        float ramp = ((float)i - (float)lo) / (float)(hi - lo);
        ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
        float extrap = 1.0f - ramp;
        float inv_extrap = 1.0f / pos_freq, inv_interp = 1.0f / (c->rope_factor * pos_freq);
        inv_freq[i] = inv_interp * (1.0f - extrap) + inv_extrap * extrap;
    }
    return c->yarn_attention_factor;
}

RefState *ref_create(const Model *m, int max_batch, int capacity) {
    const Config *c = &m->cfg;
    RefState *s = xcalloc(1, sizeof *s);
    size_t B = (size_t)max_batch, QD = (size_t)c->n_heads * c->head_dim, KVD = (size_t)c->n_kv_heads * c->head_dim;
    size_t widest = (size_t)c->hidden;
    if ((size_t)c->intermediate > widest) widest = (size_t)c->intermediate;
    if (QD > widest) widest = QD;
    s->max_batch = max_batch;
    s->capacity = capacity;
    s->x = xmalloc(B * c->hidden * sizeof(float));
    s->h = xmalloc(B * c->hidden * sizeof(float));
    s->proj = xmalloc(B * c->hidden * sizeof(float));
    s->q = xmalloc(B * QD * sizeof(float));
    s->attn = xmalloc(B * QD * sizeof(float));
    s->k = xmalloc(B * KVD * sizeof(float));
    s->v = xmalloc(B * KVD * sizeof(float));
    s->gate = xmalloc(B * c->intermediate * sizeof(float));
    s->up = xmalloc(B * c->intermediate * sizeof(float));
    s->scores = xmalloc((size_t)capacity * sizeof(float));
    s->krow = xmalloc((size_t)c->head_dim * sizeof(float));
    s->wrows = xmalloc(REF_ROWS * widest * sizeof(float));
    s->inv_freq = xmalloc((size_t)c->head_dim / 2 * sizeof(float));
    s->rope_scale = rope_frequencies(c, s->inv_freq);
    return s;
}

void ref_free(RefState *s) {
    if (!s) return;
    float *bufs[] = {s->x, s->h, s->proj, s->q, s->attn, s->k, s->v, s->gate, s->up, s->scores, s->krow, s->wrows, s->inv_freq};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    free(s);
}

// ---------------------------------------------------------------------------------------------
// Ops

static float dot(const float *a, const float *b, int n) {
    float acc[8] = {0};  // independent partial sums let the compiler vectorize without -ffast-math
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) acc[k] += a[i + k] * b[i + k];
    float sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; i < n; i++) sum += a[i] * b[i];
    return sum;
}

// x . W[row] reading a bf16 row in place (decode: each weight is used once, so skip the fp32 copy).
static float dot_bf16(const float *x, const uint8_t *w, int n) {
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) {
            uint16_t h;
            memcpy(&h, w + 2 * (i + k), 2);
            acc[k] += x[i + k] * bf16_to_f32(h);
        }
    float sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; i < n; i++) {
        uint16_t h;
        memcpy(&h, w + 2 * i, 2);
        sum += x[i] * bf16_to_f32(h);
    }
    return sum;
}

static float bias_at(const Tensor *b, int o) { return b && b->data ? tensor_get(b, (size_t)o) : 0.0f; }

// y[t] = x[t] W^T (+ b) for T tokens; W is [out, in] in its stored dtype. Output rows [r0, r1), with
// wrows as scratch for REF_ROWS converted weight rows.
typedef struct {
    float *y, *wrows;
    const float *x;
    const Tensor *w, *b;
    int T, r0, r1;
} LinearRows;

static void linear_rows(const LinearRows *j) {
    int out = (int)j->w->rows, in = (int)j->w->cols;
    if (j->T == 1 && j->w->dtype == DT_BF16) {
        for (int o = j->r0; o < j->r1; o++)
            j->y[o] = dot_bf16(j->x, (const uint8_t *)j->w->data + (size_t)o * in * 2, in) + bias_at(j->b, o);
        return;
    }
    for (int o0 = j->r0; o0 < j->r1; o0 += REF_ROWS) {
        int nr = j->r1 - o0 < REF_ROWS ? j->r1 - o0 : REF_ROWS;
        for (int r = 0; r < nr; r++) tensor_row(j->w, o0 + r, j->wrows + (size_t)r * in);
        for (int t = 0; t < j->T; t++)
            for (int r = 0; r < nr; r++)
                j->y[(size_t)t * out + o0 + r] = dot(j->x + (size_t)t * in, j->wrows + (size_t)r * in, in) + bias_at(j->b, o0 + r);
    }
}

static void *linear_thread(void *arg) {
    LinearRows *j = arg;
    j->wrows = xmalloc(REF_ROWS * (size_t)j->w->cols * sizeof(float));
    linear_rows(j);
    free(j->wrows);
    return NULL;
}

static int ref_threads = 1;
void ref_set_threads(int n) { ref_threads = n < 1 ? 1 : n > REF_MAX_THREADS ? REF_MAX_THREADS : n; }

// Threads split the output rows in blocks of REF_ROWS; each row is computed exactly as with one thread,
// so the results are the same bits for any count. Small layers stay on one thread: starting threads
// would cost more than the work.
static void linear(RefState *s, float *y, const float *x, const Tensor *w, const Tensor *b, int T) {
    int blocks = (int)((w->rows + REF_ROWS - 1) / REF_ROWS);
    int n = (double)w->rows * w->cols * T < (1 << 20) ? 1 : ref_threads < blocks ? ref_threads : blocks;
    LinearRows jobs[REF_MAX_THREADS];
    pthread_t threads[REF_MAX_THREADS];
    for (int i = 0; i < n; i++) {
        int r0 = (int)((int64_t)blocks * i / n * REF_ROWS), r1 = (int)((int64_t)blocks * (i + 1) / n * REF_ROWS);
        jobs[i] = (LinearRows){y, s->wrows, x, w, b, T, r0, r1 < w->rows ? r1 : (int)w->rows};
    }
    int started = 1;
    for (; started < n; started++)
        if (pthread_create(&threads[started], NULL, linear_thread, &jobs[started]) != 0) break;
    for (int i = started; i < n; i++) linear_thread(&jobs[i]);  // threads the system would not start
    linear_rows(&jobs[0]);
    for (int i = 1; i < started; i++) pthread_join(threads[i], NULL);
}

// y = w * (x / sqrt(mean(x^2) + eps)), variance in fp32 (double here) as HF's Qwen3RMSNorm.
static void rmsnorm(float *y, const float *x, const Tensor *w, int n, float eps) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float inv = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int i = 0; i < n; i++) y[i] = tensor_get(w, (size_t)i) * (x[i] * inv);
}

// Non-interleaved ("rotate_half") rotary embedding of one head vector at position pos.
static void rope(const RefState *s, float *v, int D, int pos) {
    int half = D / 2;
    for (int i = 0; i < half; i++) {
        float f = (float)pos * s->inv_freq[i];
        float c = cosf(f) * s->rope_scale, sn = sinf(f) * s->rope_scale;
        float a = v[i], b = v[i + half];
        v[i] = a * c - b * sn;
        v[i + half] = b * c + a * sn;
    }
}

static float silu(float z) { return z / (1.0f + expf(-z)); }

// Causal attention of one chunk: token t (position pos+t) attends to cache positions 0..pos+t.
// s->q (normalized, roped) in, s->attn out.
void ref_attention(RefState *s, const Config *c, const KVCache *kv, int layer, int T, int pos) {
    int D = c->head_dim, group = c->n_heads / c->n_kv_heads;
    float scale = 1.0f / sqrtf((float)D);
    for (int t = 0; t < T; t++) {
        int n_ctx = pos + t + 1;
        for (int h = 0; h < c->n_heads; h++) {
            int kvh = h / group;  // repeat_kv: consecutive query heads share a kv head
            const float *q = s->q + ((size_t)t * c->n_heads + h) * D;
            float *out = s->attn + ((size_t)t * c->n_heads + h) * D;
            float max = -INFINITY;
            for (int j = 0; j < n_ctx; j++) {
                kv_read(kv, 0, layer, kvh, j, s->krow);
                s->scores[j] = dot(q, s->krow, D) * scale;
                if (s->scores[j] > max) max = s->scores[j];
            }
            double sum = 0;
            for (int j = 0; j < n_ctx; j++) {
                s->scores[j] = expf(s->scores[j] - max);
                sum += s->scores[j];
            }
            memset(out, 0, (size_t)D * sizeof(float));
            for (int j = 0; j < n_ctx; j++) {
                float p = (float)(s->scores[j] / sum);
                kv_read(kv, 1, layer, kvh, j, s->krow);
                for (int d = 0; d < D; d++) out[d] += p * s->krow[d];
            }
        }
    }
}

// Self-attention up to the cache for T tokens at positions pos..: input RMSNorm, q/k/v projections
// (+ bias), Qwen3's q_norm/k_norm, RoPE. q stays in s->q; K and V (as computed, before the cache's
// rounding) in s->k and s->v, and are written into the cache.
void ref_qkv(RefState *s, const Model *m, KVCache *kv, int l, const float *x, int T, int pos) {
    const Config *c = &m->cfg;
    const LayerWeights *w = &m->layers[l];
    int H = c->hidden, D = c->head_dim, QD = c->n_heads * D, KVD = c->n_kv_heads * D;
    for (int t = 0; t < T; t++) rmsnorm(s->h + (size_t)t * H, x + (size_t)t * H, &w->input_norm, H, c->rms_eps);
    linear(s, s->q, s->h, &w->wq, &w->bq, T);
    linear(s, s->k, s->h, &w->wk, &w->bk, T);
    linear(s, s->v, s->h, &w->wv, &w->bv, T);
    for (int t = 0; t < T; t++) {
        for (int h = 0; h < c->n_heads; h++) {
            float *q = s->q + (size_t)t * QD + (size_t)h * D;
            if (c->qk_norm) rmsnorm(q, q, &w->q_norm, D, c->rms_eps);
            rope(s, q, D, pos + t);
        }
        for (int h = 0; h < c->n_kv_heads; h++) {
            float *k = s->k + (size_t)t * KVD + (size_t)h * D;
            if (c->qk_norm) rmsnorm(k, k, &w->k_norm, D, c->rms_eps);
            rope(s, k, D, pos + t);
            kv_write(kv, 0, l, h, pos + t, k);
            kv_write(kv, 1, l, h, pos + t, s->v + (size_t)t * KVD + (size_t)h * D);
        }
    }
}

// x += o_proj(s->attn) (+ bias) for T tokens.
void ref_o_proj(RefState *s, const Model *m, int l, float *x, int T) {
    const LayerWeights *w = &m->layers[l];
    linear(s, s->proj, s->attn, &w->wo, &w->bo, T);
    for (size_t i = 0; i < (size_t)T * m->cfg.hidden; i++) x[i] += s->proj[i];
}

// x += down_proj(SiLU(gate_proj(h)) * up_proj(h)), h = post-attention RMSNorm of x, for T tokens.
void ref_mlp(RefState *s, const Model *m, int l, float *x, int T) {
    const Config *c = &m->cfg;
    const LayerWeights *w = &m->layers[l];
    int H = c->hidden, I = c->intermediate;
    for (int t = 0; t < T; t++) rmsnorm(s->h + (size_t)t * H, x + (size_t)t * H, &w->post_norm, H, c->rms_eps);
    linear(s, s->gate, s->h, &w->w_gate, NULL, T);
    linear(s, s->up, s->h, &w->w_up, NULL, T);
    for (size_t i = 0; i < (size_t)T * I; i++) s->gate[i] = silu(s->gate[i]) * s->up[i];
    linear(s, s->proj, s->gate, &w->w_down, NULL, T);
    for (size_t i = 0; i < (size_t)T * H; i++) x[i] += s->proj[i];
}

// Final RMSNorm and lm_head: logits [T][vocab] of the T rows of x.
void ref_head(RefState *s, const Model *m, const float *x, int T, float *logits) {
    const Config *c = &m->cfg;
    int H = c->hidden;
    for (int t = 0; t < T; t++) rmsnorm(s->h + (size_t)t * H, x + (size_t)t * H, &m->final_norm, H, c->rms_eps);
    linear(s, logits, s->h, &m->lm_head, NULL, T);
}

// One chunk of T <= max_batch tokens at positions pos..pos+T-1. logits: T rows (all_logits), one row, or NULL.
static void forward_chunk(RefState *s, const Model *m, KVCache *kv, const int *ids, int T, int pos, float *logits,
                          int all_logits) {
    const Config *c = &m->cfg;
    int H = c->hidden;
    for (int t = 0; t < T; t++) tensor_row(&m->embed, ids[t], s->x + (size_t)t * H);
    for (int l = 0; l < c->n_layers; l++) {
        ref_qkv(s, m, kv, l, s->x, T, pos);
        ref_attention(s, c, kv, l, T, pos);
        ref_o_proj(s, m, l, s->x, T);
        if (s->hook) s->hook(s->hook_ctx, l, 0, s->x, T);
        ref_mlp(s, m, l, s->x, T);
        if (s->hook) s->hook(s->hook_ctx, l, 1, s->x, T);
    }
    // Final norm and lm_head, for every token or only the last; none for a chunk that only fills the cache.
    if (!logits) return;
    int first = all_logits ? 0 : T - 1;
    ref_head(s, m, s->x + (size_t)first * H, T - first, logits);
}

void ref_forward(RefState *s, const Model *m, KVCache *kv, const int *ids, int n, int pos, float *logits, int all_logits) {
    size_t V = (size_t)m->cfg.vocab;
    for (int done = 0; done < n; done += s->max_batch) {
        int T = n - done < s->max_batch ? n - done : s->max_batch;
        float *out = all_logits ? logits + (size_t)done * V : done + T == n ? logits : NULL;
        forward_chunk(s, m, kv, ids + done, T, pos + done, out, all_logits);
    }
}

// The reference path as an Engine: the scratch state, its KV cache and the model it reads.
typedef struct {
    Engine base;
    const Model *m;
    RefState *s;
    KVCache kv;
    int n_seqs;
    float *row_logits;  // [n_seqs][vocab] the last forward_seqs' rows
} RefEngine;

static int ref_engine_seqs(Engine *e, int n_seqs, char *why, size_t whylen) {
    RefEngine *r = (RefEngine *)e;
    (void)why, (void)whylen;
    free(r->row_logits);
    r->n_seqs = n_seqs;
    r->row_logits = xmalloc((size_t)n_seqs * r->m->cfg.vocab * sizeof(float));
    return 0;
}

// The rows one after another, each in its sequence's view of the cache.
static void ref_engine_forward_seqs(Engine *e, const SeqRow *rows, int n_rows, int n_ids, TopLogits *tops) {
    RefEngine *r = (RefEngine *)e;
    size_t V = (size_t)r->m->cfg.vocab;
    seq_rows_check("reference", rows, n_rows, r->n_seqs, r->kv.capacity);
    for (int i = 0; i < n_rows; i++) {
        const SeqRow *w = &rows[i];
        KVCache view = kv_view(&r->kv, w->base);
        ref_forward(r->s, r->m, &view, w->ids, w->n, w->pos, r->row_logits + i * V, 0);
        top_logits(r->row_logits + i * V, (int)V, n_ids, &tops[i]);
    }
}

static void ref_engine_row_logits(Engine *e, int row, float *logits) {
    RefEngine *r = (RefEngine *)e;
    memcpy(logits, r->row_logits + (size_t)row * r->m->cfg.vocab, (size_t)r->m->cfg.vocab * sizeof(float));
}

static void ref_engine_forward(Engine *e, const int *ids, int n, int pos, float *logits, int all_logits) {
    RefEngine *r = (RefEngine *)e;
    ref_forward(r->s, r->m, &r->kv, ids, n, pos, logits, all_logits);
}

static void ref_engine_free(Engine *e) {
    RefEngine *r = (RefEngine *)e;
    ref_free(r->s);
    kv_free(&r->kv);
    free(r->row_logits);
    free(r);
}

void ref_engine_set_hook(Engine *e, LayerHook hook, void *ctx) {
    RefEngine *r = (RefEngine *)e;
    r->s->hook = hook;
    r->s->hook_ctx = ctx;
}

Engine *ref_engine_create(const Model *m, int capacity, KVFormat kv, int max_batch) {
    RefEngine *r = xcalloc(1, sizeof *r);
    r->base.name = "ref";
    r->base.forward = ref_engine_forward;
    r->base.free = ref_engine_free;
    r->base.seqs = ref_engine_seqs;
    r->base.forward_seqs = ref_engine_forward_seqs;
    r->base.row_logits = ref_engine_row_logits;
    r->base.capacity = capacity;
    r->m = m;
    r->s = ref_create(m, max_batch, capacity);
    int16_t *wide;
    int n_wide = kv_wide_channels(m, kv, &wide);
    kv_init(&r->kv, &m->cfg, capacity, kv, n_wide, wide);
    free(wide);
    return &r->base;
}
