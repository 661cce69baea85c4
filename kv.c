// KV cache formats on the host: the table, the wide key channels a checkpoint needs, and whole-row
// encode/decode for the reference path. The per-chunk codecs live in kv.h, shared with the GPU.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nano.h"

// f32 keeps every channel exactly anyway; bf16 stays the plain format it always was.
const KVFormatInfo kv_formats[KV_N_FORMATS] = {
    [KV_F32] = {"f32", KVC_F32, KVC_F32, 0, 0},
    [KV_BF16] = {"bf16", KVC_BF16, KVC_BF16, 0, 1},
    [KV_F16] = {"f16", KVC_F16, KVC_F16, 1, 1},
    [KV_INT8] = {"int8", KVC_Q8, KVC_Q8, 1, 1},
    [KV_K8V4] = {"k8v4", KVC_Q8, KVC_Q4, 1, 1},
    [KV_KV4H] = {"kv4h", KVC_Q4H, KVC_Q4H, 1, 1},
};

const char *kv_format_name(KVFormat f) { return kv_formats[f].name; }

int kv_format_parse(const char *s, KVFormat *out) {
    for (int f = 0; f < KV_N_FORMATS; f++)
        if (!strcmp(s, kv_formats[f].name)) return *out = (KVFormat)f, 0;
    return -1;
}

// The default format, by measurement (README, "KV cache formats"): f16 holds 3 more mantissa bits
// than bf16 in the same bytes and, with the wide key channels, Qwen2's key-bias outliers exactly.
KVFormat kv_default(const Config *c) {
    (void)c;
    return KV_F16;
}

const char *kv_format_list(void) { return "f32, bf16, f16, int8, k8v4, kv4h"; }

// ---------------------------------------------------------------------------------------------
// Wide key channels. A Qwen2-family k_proj bias (added before RoPE, with no k_norm after it) is a
// constant per channel; RoPE mixes channel i with i + D/2, so a large bias makes both large at every
// position. A pair is wide when its bias magnitude is above KV_WIDE_MIN and 8x the median pair of
// its head; at most KV_MAX_WIDE / 2 (and head_dim / 16) pairs per head, the largest first.

#define KV_WIDE_MIN 4.0f  // a bias within the usual size of a key element does not stretch a row's scale

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

int kv_wide_channels(const Model *m, KVFormat format, int16_t **channels) {
    const Config *c = &m->cfg;
    int D = c->head_dim, half = D / 2, max_pairs = KV_MAX_WIDE / 2 < D / 16 ? KV_MAX_WIDE / 2 : D / 16;
    *channels = NULL;
    if (!kv_formats[format].wide || !c->qkv_bias || c->qk_norm || max_pairs < 1) return 0;
    size_t heads = (size_t)c->n_layers * c->n_kv_heads;
    int *pairs = xcalloc(heads * max_pairs, sizeof(int)), most = 0;
    float *mag = xmalloc((size_t)half * sizeof(float)), *sorted = xmalloc((size_t)half * sizeof(float));
    for (size_t lh = 0; lh < heads; lh++) {
        const Tensor *b = &m->layers[lh / c->n_kv_heads].bk;
        size_t h0 = (lh % c->n_kv_heads) * (size_t)D;
        for (int i = 0; i < half; i++) mag[i] = hypotf(tensor_get(b, h0 + i), tensor_get(b, h0 + i + half));
        memcpy(sorted, mag, (size_t)half * sizeof(float));
        qsort(sorted, (size_t)half, sizeof(float), cmp_float);
        float threshold = fmaxf(KV_WIDE_MIN, 8 * sorted[half / 2]);
        int n = 0;
        for (; n < max_pairs; n++) {  // the largest remaining pair above the threshold
            int best = -1;
            for (int i = 0; i < half; i++)
                if (mag[i] > threshold && (best < 0 || mag[i] > mag[best])) best = i;
            if (best < 0) break;
            pairs[lh * max_pairs + n] = best;
            mag[best] = 0;
        }
        for (int k = n; k < max_pairs; k++) pairs[lh * max_pairs + k] = -1;
        if (n > most) most = n;
    }
    int n_wide = 2 * most;
    if (n_wide) {
        int16_t *ch = xmalloc(heads * n_wide * sizeof(int16_t));
        for (size_t lh = 0; lh < heads; lh++)
            for (int k = 0; k < most; k++) {
                int p = pairs[lh * max_pairs + k];
                ch[lh * n_wide + 2 * k] = (int16_t)p;
                ch[lh * n_wide + 2 * k + 1] = (int16_t)(p < 0 ? -1 : p + half);
            }
        *channels = ch;
    }
    free(pairs), free(mag), free(sorted);
    return n_wide;
}

// ---------------------------------------------------------------------------------------------
// Sizes and the host cache

size_t kv_bytes_per_token(KVFormat f, int n_layers, int n_kv_heads, int head_dim, int n_wide) {
    const KVFormatInfo *fi = &kv_formats[f];
    size_t k = kv_data_bytes(fi->k, head_dim) + kv_aux_bytes(fi->k, head_dim, n_wide);
    size_t v = kv_data_bytes(fi->v, head_dim) + kv_aux_bytes(fi->v, head_dim, 0);
    return (k + v) * (size_t)n_layers * n_kv_heads;
}

const char *kv_check_shape(KVFormat f, int head_dim) {
    const KVFormatInfo *fi = &kv_formats[f];
    int grouped = fi->k == KVC_Q4 || fi->k == KVC_Q4H || fi->v == KVC_Q4 || fi->v == KVC_Q4H;
    if (fi->k == KVC_Q8 && head_dim % 8) return "head_dim a multiple of 8";
    if (grouped && head_dim % KV_GROUP) return "head_dim a multiple of 32";
    if ((fi->k == KVC_Q4H || fi->v == KVC_Q4H) && (head_dim & (head_dim - 1))) return "head_dim a power of two";
    return NULL;
}

size_t kv_model_bytes_per_token(const Model *m, KVFormat f) {
    int16_t *wide;
    int n_wide = kv_wide_channels(m, f, &wide);
    free(wide);
    return kv_bytes_per_token(f, m->cfg.n_layers, m->cfg.n_kv_heads, m->cfg.head_dim, n_wide);
}

void kv_init(KVCache *kv, const Config *c, int capacity, KVFormat format, int n_wide, const int16_t *wide) {
    const char *need = kv_check_shape(format, c->head_dim);
    if (need) fatal("--kv %s needs %s (this model's head_dim is %d)", kv_format_name(format), need, c->head_dim);
    memset(kv, 0, sizeof *kv);
    kv->format = format;
    kv->codec[0] = kv_formats[format].k;
    kv->codec[1] = kv_formats[format].v;
    kv->n_layers = c->n_layers;
    kv->n_kv_heads = c->n_kv_heads;
    kv->head_dim = c->head_dim;
    kv->capacity = capacity;
    kv->n_wide = n_wide;
    if (kv->n_wide) {
        size_t n = (size_t)c->n_layers * c->n_kv_heads * n_wide * sizeof(int16_t);
        int16_t *w = xmalloc(n);
        memcpy(w, wide, n);
        kv->wide = w;
    }
    size_t rows = (size_t)c->n_layers * c->n_kv_heads * capacity;
    kv->k = xcalloc(rows, kv_row_bytes(kv, 0, 0));
    kv->v = xcalloc(rows, kv_row_bytes(kv, 1, 0));
    kv->k_aux = xcalloc(rows, kv_row_bytes(kv, 0, 1) + 1);  // + 1: never a 0-byte calloc
    kv->v_aux = xcalloc(rows, kv_row_bytes(kv, 1, 1) + 1);
}

void kv_free(KVCache *kv) {
    free(kv->k), free(kv->v), free(kv->k_aux), free(kv->v_aux), free((void *)kv->wide);
    memset(kv, 0, sizeof *kv);
}

void kv_hadamard(float *x, int D) {
    for (int h = 1; h < D; h *= 2)
        for (int i = 0; i < D / 2; i++) kv_hadamard_step(x, h, i);
    float s = kv_hadamard_norm(D);
    for (int i = 0; i < D; i++) x[i] *= s;
}

static int kv_plain(KVCodec c) { return c == KVC_F32 || c == KVC_BF16 || c == KVC_F16; }

void kv_encode_row(KVCodec c, const float *src, int D, int n_wide, const int16_t *wide, uint8_t *data, uint8_t *aux) {
    float x[KV_MAX_HEAD_DIM];  // config.json's head_dim is at most this
    memcpy(x, src, (size_t)D * sizeof(float));
    for (int s = 0; s < n_wide; s++) {  // wide channels: exact in aux, 0 in the data row
        float w = wide[s] >= 0 ? x[wide[s]] : 0.0f;
        memcpy(aux + kv_wide_offset(c, D) + 4 * s, &w, 4);
        if (wide[s] >= 0) x[wide[s]] = 0;
    }
    if (c == KVC_Q4H) kv_hadamard(x, D);
    if (kv_plain(c)) {  // element by element: any even head_dim
        for (int i = 0; i < D; i++) {
            uint16_t h = c == KVC_BF16 ? f32_to_bf16(x[i]) : f32_to_f16(x[i]);
            if (c == KVC_F32) memcpy(data + 4 * (size_t)i, &x[i], 4);
            else memcpy(data + 2 * (size_t)i, &h, 2);
        }
        return;
    }
    for (int li = 0; li < D / 8; li++) {
        int g0 = c == KVC_Q8 ? 0 : li / (KV_GROUP / 8) * KV_GROUP, n = c == KVC_Q8 ? D : KV_GROUP;
        float lo = INFINITY, hi = -INFINITY;
        for (int i = g0; i < g0 + n; i++) lo = fminf(lo, x[i]), hi = fmaxf(hi, x[i]);
        kv_encode8(c, x + 8 * li, kv_params(c, lo, hi), data, aux, li);
    }
}

void kv_decode_row(KVCodec c, const uint8_t *data, const uint8_t *aux, int D, int n_wide, const int16_t *wide, float *dst) {
    if (kv_plain(c))  // element by element: any even head_dim
        for (int i = 0; i < D; i++) {
            uint16_t h;
            memcpy(&h, data + 2 * (size_t)i, 2);
            if (c == KVC_F32) memcpy(&dst[i], data + 4 * (size_t)i, 4);
            else dst[i] = c == KVC_BF16 ? bf16_to_f32(h) : f16_to_f32(h);
        }
    else
        for (int li = 0; li < D / 8; li++) kv_unpack8(c, kv_fetch8(c, data, aux, li), dst + 8 * li);
    if (c == KVC_Q4H) kv_hadamard(dst, D);
    for (int s = 0; s < n_wide; s++) {  // += : the GPU adds the wide terms to the score in the same way
        float w;
        memcpy(&w, aux + kv_wide_offset(c, D) + 4 * s, 4);
        if (wide[s] >= 0) dst[wide[s]] += w;
    }
}

void kv_write(const KVCache *kv, int part, int layer, int head, int pos, const float *src) {
    kv_encode_row(kv->codec[part], src, kv->head_dim, kv_part_wide(kv, part), kv_wide_at(kv, part, layer, head),
                  kv_data_at(kv, part, layer, head, pos), kv_aux_at(kv, part, layer, head, pos));
}

void kv_read(const KVCache *kv, int part, int layer, int head, int pos, float *dst) {
    kv_decode_row(kv->codec[part], kv_data_at(kv, part, layer, head, pos), kv_aux_at(kv, part, layer, head, pos), kv->head_dim,
                  kv_part_wide(kv, part), kv_wide_at(kv, part, layer, head), dst);
}

void kv_pool_init(KVPool *p, int capacity, int max_extents) {
    memset(p, 0, sizeof *p);
    p->capacity = capacity, p->max = max_extents;
    p->start = xcalloc((size_t)max_extents + 1, sizeof *p->start);
    p->len = xcalloc((size_t)max_extents + 1, sizeof *p->len);
}

void kv_pool_free(KVPool *p) {
    free(p->start), free(p->len);
    memset(p, 0, sizeof *p);
}

int kv_pool_take(KVPool *p, int n) {
    if (n < 1 || p->n == p->max) return -1;
    int at = 0, i = 0;  // the gap before extent i starts at `at`
    for (; i <= p->n; i++) {
        int end = i < p->n ? p->start[i] : p->capacity;
        if (end - at >= n) break;
        if (i < p->n) at = p->start[i] + p->len[i];
    }
    if (i > p->n) return -1;
    memmove(p->start + i + 1, p->start + i, (size_t)(p->n - i) * sizeof *p->start);
    memmove(p->len + i + 1, p->len + i, (size_t)(p->n - i) * sizeof *p->len);
    p->start[i] = at, p->len[i] = n;
    p->n++;
    return at;
}

void kv_pool_give(KVPool *p, int start) {
    int i = 0;
    while (i < p->n && p->start[i] != start) i++;
    if (i == p->n) fatal("KV pool: no extent starts at position %d", start);
    memmove(p->start + i, p->start + i + 1, (size_t)(p->n - i - 1) * sizeof *p->start);
    memmove(p->len + i, p->len + i + 1, (size_t)(p->n - i - 1) * sizeof *p->len);
    p->n--;
}

int kv_pool_used(const KVPool *p) {
    int u = 0;
    for (int i = 0; i < p->n; i++) u += p->len[i];
    return u;
}

void seq_rows_check(const char *engine, const SeqRow *rows, int n_rows, int n_seqs, int capacity) {
    if (n_rows < 1 || n_rows > n_seqs) fatal("%s engine: %d rows for %d sequences", engine, n_rows, n_seqs);
    for (int i = 0; i < n_rows; i++) {
        const SeqRow *w = &rows[i];
        int twice = 0;
        for (int j = 0; j < i; j++) twice |= rows[j].seq == w->seq;
        if (w->seq < 0 || w->seq >= n_seqs || twice || w->n < 1 || w->base < 0 || w->pos < 0 || (long long)w->base + w->pos + w->n > capacity)
            fatal("%s engine: row %d (sequence %d, %d tokens at %d+%d) is not one of %d sequences in a KV cache of %d", engine, i, w->seq,
                  w->n, w->base, w->pos, n_seqs, capacity);
    }
}
