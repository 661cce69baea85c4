// Loading a Hugging Face checkpoint directory: config.json -> Config, safetensors (one file or
// shards + index) memory-mapped -> tensors bound by name, dtype and shape into Model.
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define STB_DS_IMPLEMENTATION
#include <stb_ds.h>

#include "nano.h"

// ---------------------------------------------------------------------------------------------
// Errors, memory, files

int error_into(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) fatal("out of memory allocating %zu bytes", n);
    return p;
}

void *xcalloc(size_t count, size_t size) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) fatal("out of memory allocating %zu x %zu bytes", count, size);
    return p;
}

#define PREFETCH_PROGRESS_BYTES (256u << 20)  // smaller checkpoints load too fast to need a progress line
#define MAX_JSON_FILE (64u << 20)  // config and index files are kilobytes; refuse anything absurd

// ---------------------------------------------------------------------------------------------
// Weights as fp32 (bf16/f16 conversions: half.h)

float tensor_get(const Tensor *t, size_t i) {
    const uint8_t *p = (const uint8_t *)t->data;
    uint16_t h;
    float f;
    switch (t->dtype) {
    case DT_F32: memcpy(&f, p + 4 * i, 4); return f;
    case DT_BF16: memcpy(&h, p + 2 * i, 2); return bf16_to_f32(h);
    case DT_F16: memcpy(&h, p + 2 * i, 2); return f16_to_f32(h);
    default: return NAN;
    }
}

// memcpy keeps unaligned tensors (safetensors does not promise alignment) well defined.
void tensor_row(const Tensor *t, int64_t row, float *out) {
    size_t n = (size_t)t->cols, base = (size_t)row * n;
    const uint8_t *p = (const uint8_t *)t->data;
    if (t->dtype == DT_F32) {
        memcpy(out, p + 4 * base, 4 * n);
        return;
    }
    p += 2 * base;
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        out[i] = t->dtype == DT_BF16 ? bf16_to_f32(h) : f16_to_f32(h);
    }
}

// ---------------------------------------------------------------------------------------------
// safetensors

#define ST_MAX_HEADER 100000000u  // the format's own limit
#define ST_MAX_TENSORS 200000     // the JSON parser's value limit allows about 260k tensor entries

static const struct { const char *name; int bits; DType dtype; } st_dtypes[] = {
    {"F32", 32, DT_F32},       {"F16", 16, DT_F16},       {"BF16", 16, DT_BF16},    {"F64", 64, DT_OTHER},
    {"I64", 64, DT_OTHER},     {"U64", 64, DT_OTHER},     {"I32", 32, DT_OTHER},    {"U32", 32, DT_OTHER},
    {"I16", 16, DT_OTHER},     {"U16", 16, DT_OTHER},     {"I8", 8, DT_OTHER},      {"U8", 8, DT_OTHER},
    {"BOOL", 8, DT_OTHER},     {"F8_E4M3", 8, DT_OTHER},  {"F8_E5M2", 8, DT_OTHER}, {"F8_E8M0", 8, DT_OTHER},
    {"F8_E4M3FNUZ", 8, DT_OTHER}, {"F8_E5M2FNUZ", 8, DT_OTHER}, {"C64", 64, DT_OTHER},
    {"F4", 4, DT_OTHER},       {"F6_E2M3", 6, DT_OTHER},  {"F6_E3M2", 6, DT_OTHER},
};

static int cmp_by_offset(const void *a, const void *b) {
    const TensorEntry *x = a, *y = b;
    return x->data < y->data ? -1 : x->data > y->data ? 1 : (x->nbytes > y->nbytes) - (x->nbytes < y->nbytes);
}

// A non-negative integer JSON value that fits in 2^53; -2 for a larger integer, -1 for anything else.
static int64_t json_index(const JsonNode *n) {
    if (!n || n->type != JSON_NUMBER || !n->is_integer || n->num < 0) return -1;
    return n->num > 9007199254740992.0 ? -2 : (int64_t)n->num;
}

int st_parse(SafeTensors *st, const uint8_t *buf, size_t size, const char *path, char *err, size_t errlen) {
    if (size < 8) return error_into(err, errlen, "%s: file is %zu bytes, too short for a safetensors header", path, size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | buf[i];
    if (hlen > ST_MAX_HEADER)
        return error_into(err, errlen, "%s: header length %llu exceeds the format's limit of %u bytes", path,
                       (unsigned long long)hlen, ST_MAX_HEADER);
    if (hlen > size - 8)
        return error_into(err, errlen, "%s: header length %llu reaches beyond the end of the file (%zu bytes)", path,
                       (unsigned long long)hlen, size);
    if (json_parse(&st->header, (const char *)buf + 8, (size_t)hlen))
        return error_into(err, errlen, "%s: bad JSON header (byte offsets count from the header's start, file byte 8): %s", path,
                       st->header.err);
    const JsonNode *root = json_root(&st->header);
    if (root->type != JSON_OBJECT) return error_into(err, errlen, "%s: header is not a JSON object", path);
    if (root->count > ST_MAX_TENSORS) return error_into(err, errlen, "%s: more than %d tensors", path, ST_MAX_TENSORS);

    const uint8_t *data = buf + 8 + hlen;
    size_t data_size = size - 8 - (size_t)hlen;
    st->tensors = xcalloc((size_t)root->count, sizeof *st->tensors);
    st->n_tensors = 0;
    for (const JsonNode *n = json_first(&st->header, root); n; n = json_next(&st->header, n)) {
        if (strcmp(n->key, "__metadata__") == 0) {
            int strings = n->type == JSON_OBJECT;
            for (const JsonNode *v = json_first(&st->header, n); v; v = json_next(&st->header, v)) strings &= v->type == JSON_STRING;
            if (!strings) return error_into(err, errlen, "%s: __metadata__ must map strings to strings", path);
            continue;
        }
        TensorEntry *t = &st->tensors[st->n_tensors];
        t->name = n->key;
        const JsonNode *dt = json_get(&st->header, n, "dtype"), *shape = json_get(&st->header, n, "shape"),
                       *offs = json_get(&st->header, n, "data_offsets");
        if (n->type != JSON_OBJECT || !dt || dt->type != JSON_STRING || !shape || shape->type != JSON_ARRAY || !offs ||
            offs->type != JSON_ARRAY || offs->count != 2)
            return error_into(err, errlen, "%s: tensor '%s': expected {\"dtype\": string, \"shape\": [..], \"data_offsets\": [begin, end]}",
                    path, n->key);
        int bits = -1;
        for (size_t k = 0; k < sizeof st_dtypes / sizeof st_dtypes[0]; k++)
            if (strcmp(dt->str, st_dtypes[k].name) == 0) {
                bits = st_dtypes[k].bits;
                t->dtype = st_dtypes[k].dtype;
                t->dtype_name = st_dtypes[k].name;
            }
        if (bits < 0) return error_into(err, errlen, "%s: tensor '%s' has unknown dtype '%s'", path, n->key, dt->str);
        if (shape->count > ST_MAX_DIMS)
            return error_into(err, errlen, "%s: tensor '%s' has %d dimensions, at most %d supported", path, n->key, shape->count, ST_MAX_DIMS);
        uint64_t numel = 1;
        int overflow = 0;
        t->ndim = 0;
        for (const JsonNode *d = json_first(&st->header, shape); d; d = json_next(&st->header, d)) {
            int64_t v = json_index(d);
            if (v == -2) return error_into(err, errlen, "%s: tensor '%s': shape entry beyond 2^53", path, n->key);
            if (v < 0) return error_into(err, errlen, "%s: tensor '%s': shape entries must be non-negative integers", path, n->key);
            t->shape[t->ndim++] = v;
            if (v && numel > UINT64_MAX / (uint64_t)v) overflow = 1;
            numel *= (uint64_t)v;
        }
        int64_t begin = json_index(json_first(&st->header, offs)), end = json_index(json_next(&st->header, json_first(&st->header, offs)));
        if (begin == -2 || end == -2)
            return error_into(err, errlen, "%s: tensor '%s': data_offsets beyond 2^53 bytes, more than any file holds", path, n->key);
        if (begin < 0 || end < 0 || end < begin)
            return error_into(err, errlen, "%s: tensor '%s': data_offsets must be two non-negative integers with begin <= end", path, n->key);
        if ((uint64_t)end > data_size)
            return error_into(err, errlen, "%s: tensor '%s': data_offsets [%lld, %lld] reach beyond the %zu data bytes in the file (truncated?)",
                    path, n->key, (long long)begin, (long long)end, data_size);
        if (overflow || numel > UINT64_MAX / (uint64_t)bits || numel * (uint64_t)bits != 8 * (uint64_t)(end - begin))
            return error_into(err, errlen, "%s: tensor '%s': shape and dtype %s need %s bytes but data_offsets give %lld", path, n->key,
                    dt->str, overflow ? "too many" : "a different number of", (long long)(end - begin));
        t->data = data + begin;
        t->nbytes = (size_t)(end - begin);
        st->n_tensors++;
    }
    // The tensors must tile the data buffer exactly: no overlap, no gap, nothing left over.
    TensorEntry *sorted = xmalloc((size_t)st->n_tensors * sizeof *sorted + 1);
    memcpy(sorted, st->tensors, (size_t)st->n_tensors * sizeof *sorted);
    qsort(sorted, (size_t)st->n_tensors, sizeof *sorted, cmp_by_offset);
    size_t expect = 0;
    char problem[400] = "";
    for (int i = 0; i < st->n_tensors && !problem[0]; i++) {
        size_t b = (size_t)(sorted[i].data - data);
        if (b < expect)
            snprintf(problem, sizeof problem, "tensors '%s' and '%s' overlap (data bytes %zu..%zu)", sorted[i - 1].name,
                     sorted[i].name, b, expect);
        else if (b > expect)
            snprintf(problem, sizeof problem, "%zu unused data bytes before tensor '%s' (offsets must be contiguous)",
                     b - expect, sorted[i].name);
        expect = b + sorted[i].nbytes;
    }
    free(sorted);
    if (problem[0]) return error_into(err, errlen, "%s: %s", path, problem);
    if (expect != data_size)
        return error_into(err, errlen, "%s: %zu data bytes after the last tensor (offsets must end at the end of the file)", path,
                       data_size - expect);
    return 0;
}

// A mapped file that shrinks under the running process turns reads past its new end into SIGBUS; the
// handler names the file from the faulting address and exits like any other error.
static struct {
    const char *path;
    const uint8_t *lo, *hi;
} *mapped;
static int n_mapped;

static void on_sigbus(int sig, siginfo_t *si, void *uctx) {
    (void)sig, (void)uctx;
    const char *path = "a memory-mapped model file";
    for (int i = 0; i < n_mapped; i++)
        if ((const uint8_t *)si->si_addr >= mapped[i].lo && (const uint8_t *)si->si_addr < mapped[i].hi) path = mapped[i].path;
    const char *parts[] = {"nano: ", path, ": the file shrank while nano was reading it (replaced or truncated under the running process)\n"};
    for (int i = 0; i < 3; i++)
        if (write(2, parts[i], strlen(parts[i])) < 0) break;
    _exit(1);
}

static void watch_mapping(const char *path, const void *map, size_t size) {
    if (!mapped) {
        struct sigaction sa = {0};
        sa.sa_sigaction = on_sigbus;
        sa.sa_flags = SA_SIGINFO;
        sigaction(SIGBUS, &sa, NULL);
    }
    void *grown = realloc(mapped, (size_t)(n_mapped + 1) * sizeof *mapped);
    if (!grown) fatal("out of memory");
    mapped = grown;
    mapped[n_mapped].path = path;
    mapped[n_mapped].lo = map;
    mapped[n_mapped++].hi = (const uint8_t *)map + size;
}

static void unwatch_mapping(const void *map) {
    for (int i = 0; i < n_mapped; i++)
        if (mapped[i].lo == map) mapped[i] = mapped[--n_mapped];
}

void st_free(SafeTensors *st) {
    if (st->map) unwatch_mapping(st->map);
    json_free(&st->header);
    free(st->tensors);
    if (st->map) munmap(st->map, st->size);
    free((void *)st->path);
    memset(st, 0, sizeof *st);
}

// Maps path and parses it; fatal on any problem.
static void st_open(SafeTensors *st, const char *path) {
    memset(st, 0, sizeof *st);
    st->path = path;
    struct stat sb;
    int fd = open_regular(path, &sb);
    if (fd < 0) fatal("%s: %s", path, file_error(path));
    st->size = (size_t)sb.st_size;
    if (st->size < 8) fatal("%s: file is %zu bytes, too short for a safetensors header", path, st->size);
    void *map = mmap(NULL, st->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) fatal("%s: mmap failed: %s", path, strerror(errno));
    st->map = map;
    watch_mapping(path, map, st->size);
    char err[512] = {0};
    if (st_parse(st, st->map, st->size, path, err, sizeof err)) fatal("%s", err);
}

// ---------------------------------------------------------------------------------------------
// config.json

int json_file_open(JsonFile *f, const char *path, int required) {
    size_t len = 0;
    char *text = read_file(path, MAX_JSON_FILE, &len);
    f->path = path;
    if (!text) {
        if (errno == ENOENT && !required && !is_link(path)) return 0;
        if (errno == EFBIG) fatal("%s: larger than %u MB; the JSON files of a checkpoint are far smaller", path, MAX_JSON_FILE >> 20);
        fatal("%s: %s", path, file_error(path));
    }
    if (json_parse(&f->json, text, len)) fatal("%s: bad JSON: %s", path, f->json.err);
    free(text);
    f->root = json_root(&f->json);
    if (f->root->type != JSON_OBJECT) fatal("%s: expected a JSON object at the top level", path);
    return 1;
}

void json_file_close(JsonFile *f) { json_free(&f->json); }

// Present and not null.
static const JsonNode *cfg_find(const JsonFile *f, const JsonNode *obj, const char *key) {
    const JsonNode *n = json_get(&f->json, obj, key);
    return n && n->type != JSON_NULL ? n : NULL;
}

static int cfg_int_in(const JsonFile *f, const JsonNode *n, const char *key, int lo, int hi) {
    if (n->type != JSON_NUMBER || !n->is_integer || n->num < lo || n->num > hi)
        fatal("%s: '%s' must be an integer in [%d, %d]", f->path, key, lo, hi);
    return (int)n->num;
}

static int cfg_int(const JsonFile *f, const char *key, int lo, int hi) {
    const JsonNode *n = cfg_find(f, f->root, key);
    if (!n) fatal("%s: missing '%s'", f->path, key);
    return cfg_int_in(f, n, key, lo, hi);
}

// A number in [lo, hi], or def when absent. obj_name names a nested object in messages (NULL: top level).
static double cfg_num_in(const JsonFile *f, const JsonNode *obj, const char *obj_name, const char *key, double def, double lo,
                         double hi) {
    const JsonNode *n = cfg_find(f, obj, key);
    if (!n) return def;
    if (n->type != JSON_NUMBER || !(n->num >= lo && n->num <= hi))
        fatal("%s: '%s%s%s' must be a number in [%g, %g]", f->path, obj_name ? obj_name : "", obj_name ? "." : "", key, lo, hi);
    return n->num;
}

static int cfg_bool(const JsonFile *f, const char *key, int def) {
    const JsonNode *n = cfg_find(f, f->root, key);
    if (!n) return def;
    if (n->type != JSON_TRUE && n->type != JSON_FALSE) fatal("%s: '%s' must be true or false", f->path, key);
    return n->type == JSON_TRUE;
}

// eos_token_id: an int or a list of ints. Returns 1 if the key was present.
static int cfg_eos(const JsonFile *f, Config *c) {
    const JsonNode *n = cfg_find(f, f->root, "eos_token_id");
    if (!n) return 0;
    c->n_eos = 0;
    if (n->type == JSON_ARRAY) {
        for (const JsonNode *e = json_first(&f->json, n); e; e = json_next(&f->json, e)) {
            if (c->n_eos == (int)(sizeof c->eos / sizeof c->eos[0])) fatal("%s: more than 8 eos_token_id entries", f->path);
            c->eos[c->n_eos++] = cfg_int_in(f, e, "eos_token_id", 0, INT32_MAX);
        }
    } else {
        c->eos[c->n_eos++] = cfg_int_in(f, n, "eos_token_id", 0, INT32_MAX);
    }
    return 1;
}

// HF's get_mscale (modeling_rope_utils.py): YaRN's attention temperature.
static double yarn_mscale(double scale, double mscale) { return scale <= 1 ? 1.0 : 0.1 * mscale * log(scale) + 1.0; }

// Rope settings: transformers v5 writes "rope_parameters" (with rope_theta inside); older configs have
// top-level "rope_theta" and "rope_scaling" whose type is under "rope_type" or the legacy "type".
static void parse_rope(const JsonFile *f, Config *c) {
    const JsonNode *params = cfg_find(f, f->root, "rope_parameters");
    const JsonNode *scaling = params ? params : cfg_find(f, f->root, "rope_scaling");
    const char *where = params ? "rope_parameters" : "rope_scaling";
    if (scaling && scaling->type != JSON_OBJECT) fatal("%s: '%s' must be an object or null", f->path, where);
    double theta = cfg_num_in(f, f->root, NULL, "rope_theta", 10000.0, 1.0, 1e12);
    if (params) theta = cfg_num_in(f, params, where, "rope_theta", theta, 1.0, 1e12);
    c->rope_theta = (float)theta;
    c->rope_type = ROPE_DEFAULT;
    if (!scaling) return;
    const char *type_key = "rope_type";
    const JsonNode *type = cfg_find(f, scaling, type_key);
    if (!type) type = cfg_find(f, scaling, type_key = "type");
    if (!type) {
        if (params) return;  // v5 always names the type; tolerate a bare {rope_theta}
        fatal("%s: '%s' has no \"rope_type\"", f->path, where);
    }
    if (type->type != JSON_STRING) fatal("%s: '%s.%s' must be a string", f->path, where, type_key);
    if (strcmp(type->str, "default") == 0) return;
    if (strcmp(type->str, "yarn") != 0)
        fatal("%s: unsupported rope type '%s' in %s (expected default or yarn)", f->path, type->str, where);
    // transformers v5 semantics (modeling_rope_utils.py): factor as given (some 4.x releases replaced it
    // by max_position_embeddings / original_max_position_embeddings); beta_fast, beta_slow, mscale and
    // mscale_all_dim of 0 mean "default", as Python's `or` makes them.
    c->rope_type = ROPE_YARN;
    if (theta <= 1) fatal("%s: yarn needs rope_theta > 1, got %g", f->path, theta);
    if (!cfg_find(f, scaling, "factor")) fatal("%s: '%s' of type yarn needs \"factor\"", f->path, where);
    c->rope_factor = (float)cfg_num_in(f, scaling, where, "factor", 1.0, 1.0, 1e6);
    c->rope_orig_max_pos = (int)cfg_num_in(f, scaling, where, "original_max_position_embeddings", c->max_pos, 1, 1 << 30);
    double beta_fast = cfg_num_in(f, scaling, where, "beta_fast", 32.0, 0.0, 1e6);
    double beta_slow = cfg_num_in(f, scaling, where, "beta_slow", 1.0, 0.0, 1e6);
    c->yarn_beta_fast = (float)(beta_fast ? beta_fast : 32.0);
    c->yarn_beta_slow = (float)(beta_slow ? beta_slow : 1.0);
    double mscale = cfg_num_in(f, scaling, where, "mscale", 0, 0, 1e6);
    double mscale_all = cfg_num_in(f, scaling, where, "mscale_all_dim", 0, 0, 1e6);
    double attn = mscale && mscale_all ? yarn_mscale(c->rope_factor, mscale) / yarn_mscale(c->rope_factor, mscale_all)
                                       : yarn_mscale(c->rope_factor, 1.0);
    c->yarn_attention_factor = (float)cfg_num_in(f, scaling, where, "attention_factor", attn, 1e-6, 1e6);  // 0 would zero every q and k
    const JsonNode *truncate = cfg_find(f, scaling, "truncate");
    if (truncate && truncate->type != JSON_TRUE) fatal("%s: yarn with \"truncate\": false is not supported", f->path);
}

void config_parse(Config *c, const JsonFile *f) {
    const char *path = f->path;
    memset(c, 0, sizeof *c);

    const JsonNode *mt = cfg_find(f, f->root, "model_type");
    if (!mt) fatal("%s: missing 'model_type' (expected \"qwen2\" or \"qwen3\")", path);
    if (mt->type != JSON_STRING) fatal("%s: 'model_type' must be a string (\"qwen2\" or \"qwen3\")", path);
    if (strcmp(mt->str, "qwen2") == 0) c->family = FAMILY_QWEN2;
    else if (strcmp(mt->str, "qwen3") == 0) c->family = FAMILY_QWEN3;
    else fatal("%s: unsupported model_type '%s' (expected qwen2 or qwen3)", path, mt->str);

    const int big = 1 << 20;
    c->hidden = cfg_int(f, "hidden_size", 1, big);
    c->intermediate = cfg_int(f, "intermediate_size", 1, big);
    c->n_layers = cfg_int(f, "num_hidden_layers", 1, 4096);
    c->n_heads = cfg_int(f, "num_attention_heads", 1, 4096);
    c->n_kv_heads = cfg_find(f, f->root, "num_key_value_heads") ? cfg_int(f, "num_key_value_heads", 1, 4096) : c->n_heads;
    if (c->n_heads % c->n_kv_heads) fatal("%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", path, c->n_heads, c->n_kv_heads);
    // Qwen3 configs always state head_dim (Hq*D may differ from hidden); never guess it.
    if (cfg_find(f, f->root, "head_dim") || c->family == FAMILY_QWEN3) c->head_dim = cfg_int(f, "head_dim", 2, 4096);
    else if (c->hidden % c->n_heads) fatal("%s: hidden_size %d is not a multiple of num_attention_heads %d (and no head_dim)", path, c->hidden, c->n_heads);
    else if ((c->head_dim = c->hidden / c->n_heads) > 4096)
        fatal("%s: hidden_size %d / num_attention_heads %d gives head_dim %d, more than 4096", path, c->hidden, c->n_heads, c->head_dim);
    if (c->head_dim % 2) fatal("%s: head_dim %d must be even for RoPE", path, c->head_dim);
    c->vocab = cfg_int(f, "vocab_size", 1, 1 << 24);
    c->rms_eps = (float)cfg_num_in(f, f->root, NULL, "rms_norm_eps", 1e-6, 0.0, 1.0);
    c->max_pos = cfg_find(f, f->root, "max_position_embeddings") ? cfg_int(f, "max_position_embeddings", 1, 1 << 30) : 32768;
    c->tied = cfg_bool(f, "tie_word_embeddings", 0);
    // Qwen2Attention always has q/k/v biases (an attention_bias key is ignored, as in transformers);
    // Qwen3's attention_bias puts a bias on q, k, v and o_proj.
    c->qkv_bias = c->family == FAMILY_QWEN2 || cfg_bool(f, "attention_bias", 0);
    c->o_bias = c->family == FAMILY_QWEN3 && c->qkv_bias;
    c->qk_norm = c->family == FAMILY_QWEN3;
    if (cfg_bool(f, "use_sliding_window", 0)) fatal("%s: use_sliding_window is true; sliding-window attention is not supported", path);
    const JsonNode *types = cfg_find(f, f->root, "layer_types");
    if (types && types->type != JSON_ARRAY) fatal("%s: 'layer_types' must be an array", path);
    for (const JsonNode *t = json_first(&f->json, types); t; t = json_next(&f->json, t))
        if (t->type != JSON_STRING || strcmp(t->str, "full_attention") != 0)
            fatal("%s: layer_types holds '%s'; only full_attention is supported", path, t->type == JSON_STRING ? t->str : "?");
    const JsonNode *act = cfg_find(f, f->root, "hidden_act");
    if (act && (act->type != JSON_STRING || strcmp(act->str, "silu") != 0)) fatal("%s: hidden_act must be \"silu\"", path);
    parse_rope(f, c);
    cfg_eos(f, c);
    c->sampling = (SamplerConfig){.temp = 0.7f, .top_k = 40, .top_p = 0.95f, .min_p = 0.0f, .repeat_penalty = 1.0f};
}

// generation_config.json's stop ids take precedence (instruct models list both im_end and endoftext).
// Its sampling settings are the model's defaults, read as transformers' GenerationConfig does: absent
// keys take transformers' defaults, and without do_sample true decoding is greedy.
void generation_config_parse(Config *c, const JsonFile *gen) {
    cfg_eos(gen, c);
    SamplerConfig *sc = &c->sampling;
    *sc = (SamplerConfig){.temp = 1.0f, .top_k = 50, .top_p = 1.0f, .min_p = 0.0f, .repeat_penalty = 1.0f};
    sc->temp = (float)cfg_num_in(gen, gen->root, NULL, "temperature", sc->temp, 0, 100);
    sc->top_k = (int)cfg_num_in(gen, gen->root, NULL, "top_k", sc->top_k, 0, 1 << 24);
    sc->top_p = (float)cfg_num_in(gen, gen->root, NULL, "top_p", sc->top_p, 0, 1);
    sc->min_p = (float)cfg_num_in(gen, gen->root, NULL, "min_p", sc->min_p, 0, 1);
    sc->repeat_penalty = (float)cfg_num_in(gen, gen->root, NULL, "repetition_penalty", sc->repeat_penalty, 0.01, 100);
    if (!cfg_bool(gen, "do_sample", 0)) sc->temp = 0;
}

static void parse_config(Config *c, const char *dir) {
    char *path = path_join(dir, "config.json"), *gen_path = path_join(dir, "generation_config.json");
    JsonFile f;
    json_file_open(&f, path, 1);
    config_parse(c, &f);
    json_file_close(&f);
    if (json_file_open(&f, gen_path, 0)) {
        generation_config_parse(c, &f);
        json_file_close(&f);
    }
    free(gen_path);
    free(path);
}

// ---------------------------------------------------------------------------------------------
// Weights: bind each tensor by name, dtype and shape

typedef struct {
    char *key;  // the name, in its shard's header arena
    TensorEntry *value;
    int used;   // bound by model_load
} TensorMapEntry;

typedef struct {
    TensorMapEntry *map;  // stb_ds string hash map: name -> entry in one of m's shards
    Model *m;
} Binder;

static const char *owner_path(const Model *m, const TensorEntry *t) {
    for (int i = 0; i < m->n_shards; i++) {
        const SafeTensors *st = &m->shards[i];
        if (t >= st->tensors && t < st->tensors + st->n_tensors) return st->path;
    }
    return "?";
}

static const char *shard_list(const Model *m) { return m->n_shards == 1 ? m->shards[0].path : "the shards"; }

// Binds name with shape [rows, cols] (cols = 0: a vector of rows elements).
static Tensor bind(Binder *b, const char *name, int64_t rows, int64_t cols) {
    TensorMapEntry *e = shgetp_null(b->map, name);
    if (!e) fatal("tensor '%s' is missing from %s", name, shard_list(b->m));
    TensorEntry *t = e->value;
    e->used = 1;
    const char *file = owner_path(b->m, t);
    if (t->dtype == DT_OTHER) fatal("%s: tensor '%s' has dtype %s, expected BF16, F16 or F32", file, name, t->dtype_name);
    int ok = cols ? (t->ndim == 2 && t->shape[0] == rows && t->shape[1] == cols) : (t->ndim == 1 && t->shape[0] == rows);
    if (!ok) {
        char got[128] = "[", want[64];
        for (int i = 0; i < t->ndim; i++) {
            size_t n = strlen(got);
            snprintf(got + n, sizeof got - n, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
        }
        strncat(got, "]", sizeof got - strlen(got) - 1);
        if (cols) snprintf(want, sizeof want, "[%lld, %lld]", (long long)rows, (long long)cols);
        else snprintf(want, sizeof want, "[%lld]", (long long)rows);
        fatal("%s: tensor '%s' has shape %s, expected %s", file, name, got, want);
    }
    Tensor out = {t->data, t->dtype, cols ? rows : 1, cols ? cols : rows};
    return out;
}

static Tensor bindf(Binder *b, int64_t rows, int64_t cols, const char *fmt, int layer) NANO_PRINTF(4, 0);
static Tensor bindf(Binder *b, int64_t rows, int64_t cols, const char *fmt, int layer) {
    char name[256];
    snprintf(name, sizeof name, fmt, layer);
    return bind(b, name, rows, cols);
}

// Shard names come from the index file: keep them inside the model directory.
static void check_shard_name(const char *index_path, const char *name) {
    if (!name[0] || strchr(name, '/') || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
        fatal("%s: shard file name '%s' must be a plain file name in the model directory", index_path, name);
}

int index_shards(const JsonFile *f, const char ***names) {
    const JsonNode *wm = cfg_find(f, f->root, "weight_map");
    if (!wm || wm->type != JSON_OBJECT || wm->count == 0) fatal("%s: missing or empty 'weight_map' object", f->path);
    for (const JsonNode *e = json_first(&f->json, wm); e; e = json_next(&f->json, e)) {
        if (e->type != JSON_STRING) fatal("%s: weight_map['%s'] must be a file name string", f->path, e->key);
        check_shard_name(f->path, e->str);
    }
    // Distinct shard files, in order of first mention.
    struct { char *key; int value; } *seen = NULL;
    int n = 0;
    *names = xmalloc((size_t)wm->count * sizeof **names);
    for (const JsonNode *e = json_first(&f->json, wm); e; e = json_next(&f->json, e)) {
        if (shgeti(seen, e->str) >= 0) continue;
        shput(seen, (char *)e->str, 1);
        (*names)[n++] = e->str;
    }
    shfree(seen);
    return n;
}

static void add_tensors(Model *m, const SafeTensors *st, TensorMapEntry **map) {
    for (int k = 0; k < st->n_tensors; k++) {
        TensorEntry *t = &st->tensors[k];
        if (shgeti(*map, t->name) >= 0) fatal("%s: tensor '%s' is also in %s", st->path, t->name, owner_path(m, shget(*map, t->name)));
        TensorMapEntry e = {(char *)t->name, t, 0};
        shputs(*map, e);
    }
}

// model.safetensors if present (transformers looks for it first), else the shards of the index.
static void open_shards(Model *m, const char *dir, TensorMapEntry **map) {
    char *single = path_join(dir, "model.safetensors");
    if (access(single, F_OK) == 0 || is_link(single)) {  // a broken link is reported by st_open, not passed over
        m->n_shards = 1;
        m->shards = xcalloc(1, sizeof *m->shards);
        st_open(&m->shards[0], single);
        add_tensors(m, &m->shards[0], map);
        return;
    }
    free(single);
    char *index_path = path_join(dir, "model.safetensors.index.json");
    JsonFile f;
    if (!json_file_open(&f, index_path, 0)) fatal("%s: no model.safetensors or model.safetensors.index.json", dir);
    const char **names;
    m->n_shards = index_shards(&f, &names);
    m->shards = xcalloc((size_t)m->n_shards, sizeof *m->shards);
    for (int i = 0; i < m->n_shards; i++) {
        st_open(&m->shards[i], path_join(dir, names[i]));
        add_tensors(m, &m->shards[i], map);
    }
    free(names);
    // The index must agree with the shards' own headers.
    const JsonNode *wm = json_get(&f.json, f.root, "weight_map");
    for (const JsonNode *e = json_first(&f.json, wm); e; e = json_next(&f.json, e)) {
        TensorEntry *t = shget(*map, e->key);
        const char *file = t ? owner_path(m, t) : NULL;
        if (!t || strcmp(strrchr(file, '/') + 1, e->str) != 0)
            fatal("%s: lists tensor '%s' in %s, but that file does not hold it", index_path, e->key, e->str);
    }
    json_file_close(&f);
    free(index_path);
}

// -m names a checkpoint directory as downloaded; the usual mistakes get a hint: a GGUF file, or the
// root of a Hub cache entry (models--org--name) where one of its snapshots is meant.
void model_dir_check(const char *dir) {
    struct stat sb;
    if (stat(dir, &sb) != 0) fatal("model directory %s: %s", dir, file_error(dir));
    if (!S_ISDIR(sb.st_mode)) {
        char magic[4] = {0};
        int fd = open(dir, O_RDONLY | O_NONBLOCK);
        if (fd >= 0 && read(fd, magic, 4) < 0) magic[0] = 0;
        if (fd >= 0) close(fd);
        size_t n = strlen(dir);
        if (!memcmp(magic, "GGUF", 4) || (n > 5 && !strcmp(dir + n - 5, ".gguf")))
            fatal("model directory %s: a GGUF file; nano reads Hugging Face checkpoint directories (config.json and "
                  "*.safetensors), e.g. from huggingface-cli download", dir);
        fatal("model directory %s: not a directory", dir);
    }
    char *config = path_join(dir, "config.json"), *snapshots = path_join(dir, "snapshots");
    DIR *d = access(config, F_OK) != 0 && !is_link(config) ? opendir(snapshots) : NULL;
    if (d) {
        const char *hash = "<hash>";
        for (struct dirent *e; (e = readdir(d));)
            if (e->d_name[0] != '.') {
                hash = e->d_name;
                break;
            }
        fatal("model directory %s: the root of a Hugging Face cache entry; pass one of its snapshots, e.g. %s/snapshots/%s",
              dir, dir, hash);
    }
    free(config);
    free(snapshots);
}

void model_load(Model *m, const char *dir) {
    memset(m, 0, sizeof *m);
    model_dir_check(dir);
    parse_config(&m->cfg, dir);
    const Config *c = &m->cfg;

    Binder b = {NULL, m};
    open_shards(m, dir, &b.map);

    const int64_t H = c->hidden, I = c->intermediate, D = c->head_dim, V = c->vocab;
    const int64_t QD = (int64_t)c->n_heads * D, KVD = (int64_t)c->n_kv_heads * D;
    m->embed = bind(&b, "model.embed_tokens.weight", V, H);
    m->layers = xcalloc((size_t)c->n_layers, sizeof *m->layers);
    for (int i = 0; i < c->n_layers; i++) {
        LayerWeights *l = &m->layers[i];
        l->input_norm = bindf(&b, H, 0, "model.layers.%d.input_layernorm.weight", i);
        l->wq = bindf(&b, QD, H, "model.layers.%d.self_attn.q_proj.weight", i);
        l->wk = bindf(&b, KVD, H, "model.layers.%d.self_attn.k_proj.weight", i);
        l->wv = bindf(&b, KVD, H, "model.layers.%d.self_attn.v_proj.weight", i);
        if (c->qkv_bias) {
            l->bq = bindf(&b, QD, 0, "model.layers.%d.self_attn.q_proj.bias", i);
            l->bk = bindf(&b, KVD, 0, "model.layers.%d.self_attn.k_proj.bias", i);
            l->bv = bindf(&b, KVD, 0, "model.layers.%d.self_attn.v_proj.bias", i);
        }
        if (c->qk_norm) {
            l->q_norm = bindf(&b, D, 0, "model.layers.%d.self_attn.q_norm.weight", i);
            l->k_norm = bindf(&b, D, 0, "model.layers.%d.self_attn.k_norm.weight", i);
        }
        l->wo = bindf(&b, H, QD, "model.layers.%d.self_attn.o_proj.weight", i);
        if (c->o_bias) l->bo = bindf(&b, H, 0, "model.layers.%d.self_attn.o_proj.bias", i);
        l->post_norm = bindf(&b, H, 0, "model.layers.%d.post_attention_layernorm.weight", i);
        l->w_gate = bindf(&b, I, H, "model.layers.%d.mlp.gate_proj.weight", i);
        l->w_up = bindf(&b, I, H, "model.layers.%d.mlp.up_proj.weight", i);
        l->w_down = bindf(&b, H, I, "model.layers.%d.mlp.down_proj.weight", i);
    }
    m->final_norm = bind(&b, "model.norm.weight", H, 0);
    // Tied checkpoints may still store lm_head.weight (Qwen3-0.6B does, a copy of the embedding); the
    // embedding is the head, as the config says.
    m->lm_head = c->tied ? m->embed : bind(&b, "lm_head.weight", V, H);
    TensorMapEntry *head = shgetp_null(b.map, "lm_head.weight");
    if (head) head->used = 1;
    // Tensors nobody reads usually mean a config that does not describe the checkpoint.
    int unused = 0;
    const char *first = NULL;
    for (ptrdiff_t i = 0; i < shlen(b.map); i++)
        if (!b.map[i].used && unused++ == 0) first = b.map[i].key;
    if (unused) fprintf(stderr, "nano: warning: %d tensor(s) in the checkpoint are not used, e.g. '%s'\n", unused, first);
    shfree(b.map);
}

// Reads the weights into memory up front, with a progress line for big checkpoints, so the first
// tokens are not slowed by page faults and a slow disk shows as loading time, not as generation time.
void model_prefetch(const Model *m, const char *dir) {
    size_t total = 0, done = 0;
    for (int i = 0; i < m->n_shards; i++) total += m->shards[i].size;
    int show = total >= PREFETCH_PROGRESS_BYTES && isatty(2);
    long page = sysconf(_SC_PAGESIZE);
    volatile uint8_t sink = 0;
    int last_pct = -1;
    for (int i = 0; i < m->n_shards; i++) {
        const SafeTensors *st = &m->shards[i];
        madvise(st->map, st->size, MADV_WILLNEED);
        for (size_t off = 0; off < st->size; off += (size_t)page, done += (size_t)page) {
            sink ^= st->map[off];
            int pct = (int)(100.0 * (double)done / (double)total);
            if (show && pct != last_pct) {
                fprintf(stderr, "\rnano: loading %s: %d%% of %.2f GB", dir, pct, total / 1e9);
                last_pct = pct;
            }
        }
    }
    if (show) fprintf(stderr, "\rnano: loaded %s: %.2f GB            \n", dir, total / 1e9);
}

void model_free(Model *m) {
    if (!m) return;
    for (int i = 0; i < m->n_shards; i++) st_free(&m->shards[i]);
    free(m->shards);
    free(m->layers);
    memset(m, 0, sizeof *m);
}
