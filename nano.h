// nano: shared types of the loader, the engines and the command line.
// Ownership: a Model owns its file mappings; every Tensor borrows bytes from them and dies with
// model_free(). Engines borrow the Model.
#ifndef NANO_H
#define NANO_H

#include <stddef.h>
#include <stdint.h>

#include "half.h"
#include "kv.h"

// ---------------------------------------------------------------------------------------------
// Errors: one line on stderr naming what and where, exit status 1.

#if defined(__GNUC__)
#define NANO_NORETURN __attribute__((noreturn))
#define NANO_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define NANO_NORETURN
#define NANO_PRINTF(a, b)
#endif

NANO_NORETURN NANO_PRINTF(1, 2) void fatal(const char *fmt, ...);
// An error for the caller to report: the message into buf (len bytes); returns -1.
NANO_PRINTF(3, 4) int error_into(char *buf, size_t len, const char *fmt, ...);
void *xmalloc(size_t n);              // fatal on failure; never returns NULL
void *xcalloc(size_t count, size_t size);

// ---------------------------------------------------------------------------------------------
// JSON (json.c): strict RFC 8259 parser over a bounded buffer. Strings are decoded into an arena
// owned by the Json; nodes link first-child / next-sibling. More than JSON_MAX_DEPTH nested arrays
// or objects are rejected, so hostile input cannot exhaust the stack.

#define JSON_MAX_DEPTH 64

typedef enum { JSON_NULL, JSON_FALSE, JSON_TRUE, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } JsonType;

typedef struct {
    JsonType type;
    int child;        // first element or member, -1 if none
    int next;         // next sibling, -1 at the end
    int count;        // elements in an array, members in an object
    const char *key;  // member of an object: its decoded key, else NULL
    size_t key_len;
    const char *str;  // JSON_STRING: decoded, NUL-terminated (\u0000 is rejected)
    size_t len;       // JSON_STRING: decoded length in bytes
    double num;       // JSON_NUMBER
    int is_integer;   // JSON_NUMBER written without fraction or exponent
} JsonNode;

typedef struct {
    JsonNode *nodes;
    int n_nodes, cap_nodes;
    char *arena;  // decoded strings and keys
    size_t arena_used;
    char err[160];
} Json;

// Parses len bytes at src. Returns 0, or -1 with j->err describing the problem and its byte offset.
int json_parse(Json *j, const char *src, size_t len);
void json_free(Json *j);
const JsonNode *json_root(const Json *j);
// Object member lookup (first match); NULL if obj is not an object or has no such key.
const JsonNode *json_get(const Json *j, const JsonNode *obj, const char *key);
// Children of an array or object in order (members carry ->key); NULL past the end.
const JsonNode *json_first(const Json *j, const JsonNode *container);
const JsonNode *json_next(const Json *j, const JsonNode *node);

// A JSON file whose top level is an object (model.c). json_file_open returns 0 if the file does not
// exist and required is 0; anything else wrong (unreadable, bad JSON, not an object) is fatal.
typedef struct {
    const char *path;
    Json json;
    const JsonNode *root;
} JsonFile;
int json_file_open(JsonFile *f, const char *path, int required);
void json_file_close(JsonFile *f);
char *path_join(const char *dir, const char *name);  // "dir/name", malloc'd

// ---------------------------------------------------------------------------------------------
// safetensors (model.c)

typedef enum { DT_F32, DT_F16, DT_BF16, DT_OTHER } DType;

#define ST_MAX_DIMS 8

typedef struct {
    const char *name;    // borrowed from the Json arena of its SafeTensors
    DType dtype;
    const char *dtype_name;  // as written in the header ("BF16", "I64", ...)
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const uint8_t *data;     // into the mapping
    size_t nbytes;
} TensorEntry;

typedef struct {
    const char *path;     // owned copy
    uint8_t *map;         // whole file, read-only mapping
    size_t size;
    Json header;
    TensorEntry *tensors;
    int n_tensors;
} SafeTensors;

// Parses an in-memory safetensors file (the mapping, or a test buffer). path is used in messages.
// Returns 0, or -1 with err filled. On success st->tensors point into buf.
int st_parse(SafeTensors *st, const uint8_t *buf, size_t size, const char *path, char *err, size_t errlen);
void st_free(SafeTensors *st);  // frees what st_parse allocated; unmaps if st->map is set

// ---------------------------------------------------------------------------------------------
// Model

typedef struct {
    const void *data;  // borrowed; NULL for an absent optional tensor
    DType dtype;
    int64_t rows, cols;  // a vector is rows=1 x cols
} Tensor;

typedef enum { FAMILY_QWEN2, FAMILY_QWEN3 } Family;
typedef enum { ROPE_DEFAULT, ROPE_YARN } RopeType;

// Sampling settings (sampler.c applies them); a model's defaults come from generation_config.json.
typedef struct {
    float temp;            // 0: greedy (argmax after the repetition penalty)
    int top_k;             // 0: off
    float top_p;           // 1: off
    float min_p;           // 0: off
    float repeat_penalty;  // 1: off; > 1 makes ids already in the context less likely
} SamplerConfig;

typedef struct {
    Family family;
    int hidden;          // H
    int intermediate;    // I
    int n_layers;        // L
    int n_heads;         // Hq
    int n_kv_heads;      // Hkv (Hq / Hkv query heads share one kv head)
    int head_dim;        // D (Qwen3: explicit, Hq*D may differ from H)
    int vocab;           // rows of embed_tokens / lm_head
    float rms_eps;
    float rope_theta;
    RopeType rope_type;
    float rope_factor;        // YaRN scale factor
    int rope_orig_max_pos;    // YaRN original_max_position_embeddings
    float yarn_beta_fast, yarn_beta_slow;
    float yarn_attention_factor;  // multiplies cos and sin
    int max_pos;         // max_position_embeddings
    int tied;            // lm_head = embed_tokens
    int qkv_bias;        // q/k/v carry a bias (Qwen2 always; Qwen3 with attention_bias)
    int o_bias;          // o_proj carries a bias (Qwen3 with attention_bias)
    int qk_norm;         // Qwen3: per-head RMSNorm of q and k before RoPE
    int eos[8];          // stop ids (generation_config.json, else config.json)
    int n_eos;
    SamplerConfig sampling;  // generation_config.json's defaults, else nano's
} Config;

typedef struct {
    Tensor input_norm;          // [H]
    Tensor wq, wk, wv;          // [Hq*D,H] [Hkv*D,H] [Hkv*D,H]
    Tensor bq, bk, bv;          // [Hq*D] [Hkv*D] [Hkv*D]   Qwen2, or Qwen3 with attention_bias
    Tensor q_norm, k_norm;      // [D]                      Qwen3 only
    Tensor wo;                  // [H,Hq*D]
    Tensor bo;                  // [H]                      Qwen3 with attention_bias only
    Tensor post_norm;           // [H]
    Tensor w_gate, w_up;        // [I,H]
    Tensor w_down;              // [H,I]
} LayerWeights;

typedef struct {
    Config cfg;
    Tensor embed;       // [V,H]
    LayerWeights *layers;
    Tensor final_norm;  // [H]
    Tensor lm_head;     // [V,H] (= embed when tied)
    SafeTensors *shards;  // the mappings every Tensor points into
    int n_shards;
} Model;

void model_load(Model *m, const char *dir);  // fatal on any problem
void model_dir_check(const char *dir);       // fatal, with a hint, unless dir looks like a checkpoint directory
void model_free(Model *m);
// What model_load makes of config.json and generation_config.json, fatal naming the file and key;
// config_parse comes first (it also sets nano's own sampling defaults).
void config_parse(Config *c, const JsonFile *config);
void generation_config_parse(Config *c, const JsonFile *generation);
// The distinct shard files of model.safetensors.index.json's weight_map, in order of first mention:
// their count, and in *names a malloc'd array of names borrowed from f. Fatal for a malformed index.
int index_shards(const JsonFile *f, const char ***names);
// Reads every weight page once (a progress line on a terminal for checkpoints of 256 MB and more).
void model_prefetch(const Model *m, const char *dir);

// Element i of a weight row, as fp32; and a whole row converted.
float tensor_get(const Tensor *t, size_t i);
void tensor_row(const Tensor *t, int64_t row, float *out);

// ---------------------------------------------------------------------------------------------
// KV caches on the host (kv.c; the formats themselves are in kv.h)

const char *kv_format_name(KVFormat f);
int kv_format_parse(const char *s, KVFormat *out);  // 0 ok, -1 unknown
const char *kv_format_list(void);                   // "f32, bf16, ..." for messages
KVFormat kv_default(const Config *c);               // the format a model runs with unless --kv says
// NULL when format can hold rows of head_dim, else what it needs ("head_dim a multiple of 32").
const char *kv_check_shape(KVFormat f, int head_dim);
// The wide key channels (kv.h) a format keeps for a checkpoint: their count per row, and a malloc'd
// [layer][kv_head][count] table of channel indices (-1: unused) in *channels; 0 and NULL for none.
int kv_wide_channels(const Model *m, KVFormat format, int16_t **channels);
// Bytes one position takes in every layer's K and V rows.
size_t kv_bytes_per_token(KVFormat f, int n_layers, int n_kv_heads, int head_dim, int n_wide);
size_t kv_model_bytes_per_token(const Model *m, KVFormat f);  // the same for m, its wide channels counted
// A host cache; wide: n_wide channels per (layer, kv head) (kv_wide_channels), copied. Fatal when
// the format cannot hold this head_dim.
void kv_init(KVCache *kv, const Config *c, int capacity, KVFormat format, int n_wide, const int16_t *wide);
void kv_free(KVCache *kv);
// One row of src[0..D) into its data and aux bytes, and back (the decoded row includes the wide channels).
void kv_encode_row(KVCodec c, const float *src, int D, int n_wide, const int16_t *wide, uint8_t *data, uint8_t *aux);
void kv_decode_row(KVCodec c, const uint8_t *data, const uint8_t *aux, int D, int n_wide, const int16_t *wide, float *dst);
// The row of part (0: K, 1: V) at (layer, head, pos) of a host cache.
void kv_write(const KVCache *kv, int part, int layer, int head, int pos, const float *src);
void kv_read(const KVCache *kv, int part, int layer, int head, int pos, float *dst);
void kv_hadamard(float *x, int D);  // the normalized Walsh-Hadamard rotation, in place (D a power of two)

#define MAX_PARALLEL 256  // most sequences an engine serves at once (-f --parallel, --bench -np)

// A pool of positions shared by sequences (batched generation): each sequence holds one extent, a run
// of positions of the engine's cache (kv_view), from the first gap that fits. A short prompt takes a
// short extent, so short and long prompts share the memory.
typedef struct {
    int capacity;      // positions in all
    int n, max;        // extents in use, and room for max of them
    int *start, *len;  // [max] the extents in use, in order of start
} KVPool;
void kv_pool_init(KVPool *p, int capacity, int max_extents);
void kv_pool_free(KVPool *p);
int kv_pool_take(KVPool *p, int n);          // the start of n free positions (n >= 1), or -1 when no gap fits now
void kv_pool_give(KVPool *p, int start);     // the extent that starts there is free again (fatal for an unknown one)
int kv_pool_used(const KVPool *p);           // positions held

// ---------------------------------------------------------------------------------------------
// The reference engine (ref.c)

// RoPE inverse frequencies [head_dim/2] as HF computes them in fp32 (YaRN blended in); returns the
// factor that multiplies cos and sin (YaRN's attention factor, else 1).
float rope_frequencies(const Config *c, float *inv_freq);

typedef struct RefState RefState;  // scratch buffers of the reference forward

// max_batch: tokens per prefill chunk; capacity: the KV cache's, in tokens.
RefState *ref_create(const Model *m, int max_batch, int capacity);
void ref_free(RefState *s);
// Runs tokens ids[0..n) at positions pos..pos+n-1 (pos + n <= capacity), appending their K/V to the
// cache, in chunks of max_batch. logits: n x vocab when all_logits, else vocab (last position only).
void ref_forward(RefState *s, const Model *m, KVCache *kv, const int *ids, int n, int pos, float *logits,
                 int all_logits);
// The ops a forward is made of, each for T tokens at positions pos.. (the GPU tests' oracles):
// x: [T][hidden] residual rows. ref_qkv leaves q in the state and writes K/V into the cache;
// ref_attention reads that q and the cache; ref_o_proj adds its output to x.
void ref_qkv(RefState *s, const Model *m, KVCache *kv, int layer, const float *x, int T, int pos);
void ref_attention(RefState *s, const Config *c, const KVCache *kv, int layer, int T, int pos);
void ref_o_proj(RefState *s, const Model *m, int layer, float *x, int T);
void ref_mlp(RefState *s, const Model *m, int layer, float *x, int T);
void ref_head(RefState *s, const Model *m, const float *x, int T, float *logits);

// ---------------------------------------------------------------------------------------------
// Engines: a forward pass over a KV cache the engine owns. The reference path (ref.c) and the GPU
// (kernels.cu) both provide one; the modes in nano.c only see this interface.

// The largest logits of one position, ranked where they were computed (an engine that keeps its
// logits to itself, or top_logits() on the host): largest first, equal logits smaller id first.
#define TOP_LOGITS_MAX 64
#define TOP_LOGITS_RANKED (TOP_LOGITS_MAX + 1)  // what a ranking finds: the listed ids and the best one left out

// The one ranking of (logit, id) pairs, for the sampler and the engines alike: a larger key ranks
// higher. The logit's bits made order-preserving as an unsigned int, above the id's complement, so
// equal logits rank the smaller id first; -0 counts as +0 (they compare equal). Key 0 lies below
// every finite logit.
HOST_DEVICE static inline uint64_t rank_key(float logit, int id) {
    uint32_t u = f32_bits(logit + 0.0f);
    u = (u & 0x80000000u) ? ~u : u | 0x80000000u;
    return (uint64_t)u << 32 | (0xFFFFFFFFu - (uint32_t)id);
}
HOST_DEVICE static inline int rank_key_id(uint64_t k) { return (int)(0xFFFFFFFFu - (uint32_t)k); }
HOST_DEVICE static inline float rank_key_logit(uint64_t k) {
    uint32_t u = (uint32_t)(k >> 32);
    return bits_f32((u & 0x80000000u) ? u & 0x7FFFFFFFu : ~u);
}

typedef struct {
    int n;                        // min(TOP_LOGITS_MAX, the ids ranked)
    int id[TOP_LOGITS_MAX];
    float logit[TOP_LOGITS_MAX];
    float next;                   // the largest logit of the ids not listed; -INFINITY when none are left
    int bad_id;                   // the first id (of the whole vocabulary) whose logit is not finite, or -1
    float bad_logit;
} TopLogits;

// A row of a batched forward: ids[0..n) at positions pos.. of one sequence, whose cache is the extent of
// the engine's cache that starts at position base (kv_view; a KVPool hands the extents out).
typedef struct {
    int seq;  // 0 .. n_seqs - 1: the sequence's row of the batch, the same for its whole life
    int base;
    const int *ids;
    int n, pos;
} SeqRow;

typedef struct Engine Engine;
struct Engine {
    const char *name;  // "ref" or "cuda", for the timings line
    // Runs ids[0..n) at positions pos..pos+n-1 (pos + n <= capacity), writing their K/V into the cache
    // (entries at pos and later are overwritten, so a caller rewinds by passing a smaller pos).
    // logits: n x vocab when all_logits, else vocab for the last position only.
    void (*forward)(Engine *e, const int *ids, int n, int pos, float *logits, int all_logits);
    // Optional (NULL where absent): forward of ids whose last logits stay on the engine; only their
    // ranking over ids [0, n_ids) comes back in top, and last_logits copies them whole (vocab floats)
    // when asked, until the next forward. Sampling on the host then costs a few hundred bytes a token.
    // greedy: the caller takes the best-ranked id (temperature 0, no penalty), so the engine may give
    // that one alone (top->n 1, top->next its logit) and keep no logits; it may also run the step that
    // id starts at pos + n before it is asked for (anything else asked instead then waits for it).
    void (*forward_top)(Engine *e, const int *ids, int n, int pos, int n_ids, int greedy, TopLogits *top);
    void (*last_logits)(Engine *e, float *logits);
    // Batched generation: seqs(e, n) readies the engine for up to n sequences in its cache (0, or -1 with
    // the reason in why). forward_seqs runs every row in its own sequence's extent and ranks each row's
    // last logits over ids [0, n_ids) into tops[r]; row_logits copies row r's whole (vocab floats) until
    // the next forward_seqs. No row's logits depend on the other rows of the step, nor on their number.
    // forward and forward_seqs share the cache: an engine serves one or the other.
    int (*seqs)(Engine *e, int n_seqs, char *why, size_t whylen);
    void (*forward_seqs)(Engine *e, const SeqRow *rows, int n_rows, int n_ids, TopLogits *tops);
    void (*row_logits)(Engine *e, int row, float *logits);
    void (*free)(Engine *e);
    int capacity;  // positions its KV cache holds
};

// forward_seqs' rows for an engine of n_seqs sequences and capacity positions: fatal, naming the engine
// and the row, unless each row has tokens, its own sequence, and positions within the cache.
void seq_rows_check(const char *engine, const SeqRow *rows, int n_rows, int n_seqs, int capacity);

// max_batch: tokens per prefill chunk; capacity: KV cache size in tokens.
void ref_set_threads(int n);  // threads for the reference path's linear layers (1 to 256; default 1)
Engine *ref_engine_create(const Model *m, int capacity, KVFormat kv, int max_batch);

// ---------------------------------------------------------------------------------------------
// Unicode (unicode.c; tables in unicode_data.c, generated by tools/gen_unicode.py from unicode-data)

enum { UC_LETTER = 1, UC_NUMBER = 2, UC_SPACE = 4 };  // \p{L}, \p{N}, \s (White_Space)
int uc_class(uint32_t cp);  // bit set of UC_*; 0 for anything else, including unassigned code points

// Decodes one UTF-8 sequence from s[0..n): its length (1..4) with *cp set, or 0 when the bytes there
// are not valid UTF-8 (overlong, surrogate, > U+10FFFF, truncated, stray continuation byte).
int utf8_decode(const unsigned char *s, size_t n, uint32_t *cp);
int utf8_encode(uint32_t cp, char out[4]);  // bytes written (1..4)
// Offset of the first invalid byte of s[0..n), or -1 when it is all valid UTF-8.
long utf8_invalid_offset(const char *s, size_t n);
// NFC (canonical decomposition, canonical ordering, canonical composition) of valid UTF-8 s[0..n):
// a malloc'd NUL-terminated string, its length in *out_len.
char *utf8_nfc(const char *s, size_t n, size_t *out_len);

// ---------------------------------------------------------------------------------------------
// Sampling (sampler.c), in transformers' order: repetition penalty, temperature, top-k, top-p, min-p


typedef struct {
    SamplerConfig c;
    int n_ids;            // only ids [0, n_ids) are ever drawn (the tokenizer's, not padding rows)
    uint64_t rng;
    float *prob;          // [n_ids] scratch
    int *order;           // [n_ids] scratch
    unsigned char *seen;  // [n_ids] scratch
} Sampler;

void sampler_init(Sampler *s, const SamplerConfig *c, int n_ids, uint64_t seed);
void sampler_free(Sampler *s);
void sampler_seed(Sampler *s, uint64_t seed);
// The distribution sampling draws from: probs[0..n_ids) sums to 1 over the ids the filters keep and is
// 0 elsewhere; returns how many are kept. logits is modified. history: the ids in the context so far.
int sampler_probs(Sampler *s, float *logits, const int *history, int n_history, float *probs);
// Picks the next id (argmax when temp is 0); logits is modified.
int sampler_sample(Sampler *s, float *logits, const int *history, int n_history);
// The same pick from the ranked candidates alone, or -1 (nothing drawn) when they cannot decide it: the
// settings want more than TOP_LOGITS_MAX ids (no top-k, or a bigger one; a penalty below 1), or the
// penalty moved candidates below an id that was not listed. Equal to sampler_sample, draw for draw.
int sampler_sample_top(Sampler *s, const TopLogits *top, const int *history, int n_history);
int sampler_uses_top(const Sampler *s);  // whether sampler_sample_top can decide with these settings
int sampler_greedy(const Sampler *s);    // whether the pick is the best-ranked id (temperature 0, no penalty)
// The ranking of logits[0..n_ids) (and the finiteness of logits[0..vocab)) as an engine gives it.
void top_logits(const float *logits, int vocab, int n_ids, TopLogits *top);

// Forward, then pick, as every generating mode does (the sessions of nano.c, --bench): from the
// engine's candidates when it ranks them itself and they decide the draw, else from the whole logits.
// A non-finite logit is fatal either way, naming the id and the position.
typedef struct {
    Engine *e;
    Sampler *s;
    int vocab;
    float *logits;   // [vocab]: the last forward's, when they came back whole (on_engine is 0)
    TopLogits top;   // the last forward's candidates, when the logits stayed on the engine
    int on_engine;
    int row;         // the candidates are row `row` of a forward_seqs (its logits: row_logits), or -1
} Picker;
void picker_init(Picker *p, Engine *e, Sampler *s, int vocab);  // p->logits is malloc'd
void picker_free(Picker *p);
void picker_forward(Picker *p, const int *ids, int n, int pos);
void picker_set_logits(Picker *p, const float *logits);  // the next pick from these (a forward the caller ran)
// The next pick from row `row` of the forward_seqs the caller ran (top: its candidates; pos: the row's
// last position, for the message about a non-finite logit).
void picker_set_row(Picker *p, const TopLogits *top, int row, int pos);
int picker_sample(Picker *p, const int *history, int n_history);
// Garbage must never be printed silently: fatal at the first non-finite value of rows x vocab logits,
// the rows being positions first_pos, first_pos + 1, ...
void logits_check(const float *logits, int rows, int vocab, int first_pos);

// ---------------------------------------------------------------------------------------------
// Tokenizer (tokenizer.c): byte-level BPE from tokenizer.json, encoding exactly as HF tokenizers does

typedef struct Tokenizer Tokenizer;

Tokenizer *tokenizer_load(const char *path);  // tokenizer.json; fatal naming the file and field
// tokenizer_load in two steps, for tokenizer.json text already parsed: an empty tokenizer, then f read
// into it (fatal naming f->path and the field; tokenizer_free frees what was read up to there).
Tokenizer *tokenizer_new(void);
void tokenizer_read(Tokenizer *t, const JsonFile *f);
void tokenizer_free(Tokenizer *t);
int tokenizer_n_ids(const Tokenizer *t);      // one past the largest id
// Encodes text[0..len): added tokens, NFC, the Qwen split regex, byte-level BPE; add_special also
// adds the post-processor's tokens (R1-Distill's BOS). Returns a malloc'd array of *n ids, or NULL
// with err naming the problem (invalid UTF-8 and its byte offset).
int *tokenizer_encode(Tokenizer *t, const char *text, size_t len, int add_special, int *n, char *err, size_t errlen);
int tokenizer_find(const Tokenizer *t, const char *token);  // id of a vocab or added token, -1 if none
// The bytes a token stands for (possibly part of a UTF-8 sequence); NULL for an id the tokenizer lacks.
const char *tokenizer_bytes(const Tokenizer *t, int id, size_t *len);
int tokenizer_is_special(const Tokenizer *t, int id);  // an added token marked special
// Automaton steps spent finding added tokens by all encodes so far: the tests' measure of linear time.
size_t tokenizer_added_steps(const Tokenizer *t);
// Decodes ids to text (malloc'd, NUL-terminated, length in *len); skip_special drops special tokens.
char *tokenizer_decode(const Tokenizer *t, const int *ids, int n, int skip_special, size_t *len);

// Streaming UTF-8 for token-by-token output: bytes in, whole characters out. Invalid sequences become
// U+FFFD as in HF's decode (each maximal invalid subpart, like Rust's from_utf8_lossy); an incomplete
// sequence waits for the next bytes.
typedef struct {
    unsigned char pending[4];
    int n;
} Utf8Stream;
// Writes at most 3 * (n + 4) bytes to out; returns how many.
size_t utf8_stream_push(Utf8Stream *s, const char *bytes, size_t n, char *out);
size_t utf8_stream_finish(Utf8Stream *s, char *out);  // what is still pending, as U+FFFD; at most 12 bytes

// Chat templates, rendered without a Jinja engine: the template text in tokenizer_config.json (or
// chat_template.jinja) only selects one of the formats below and its parameters.
typedef enum { CHAT_NONE, CHAT_CHATML, CHAT_QWEN3, CHAT_DEEPSEEK, CHAT_UNSUPPORTED } ChatFormat;
typedef struct {
    ChatFormat format;
    char *default_system;  // ChatML: system prompt used when the chat has none (NULL: none)
    char *bos;             // DeepSeek: the BOS token's text, which the template writes first
    int think_in_prompt;   // DeepSeek: the generation prompt opens "<think>\n"
} ChatTemplate;
typedef struct {
    const char *role;  // "system", "user" or "assistant"
    const char *content;
} ChatMessage;
// CHAT_NONE when the model has none; CHAT_UNSUPPORTED for a template that is none of the formats.
void chat_template_load(ChatTemplate *ct, const char *model_dir);
// chat_template_load in two steps: tokenizer_config.json's template and BOS text, malloc'd or NULL (fatal
// when chat_template is neither a string nor a list of named templates); then the format a template
// text selects (NULL: CHAT_NONE), bos copied.
char *chat_template_config(const JsonFile *f, char **bos);
void chat_template_select(ChatTemplate *ct, const char *tmpl, const char *bos);
void chat_template_free(ChatTemplate *ct);
const char *chat_format_name(ChatFormat f);
// The prompt text for msgs[0..n); thinking: 1 on, 0 off (Qwen3's enable_thinking=false), -1 unset.
char *chat_render(const ChatTemplate *ct, const ChatMessage *msgs, int n, int add_generation_prompt, int thinking);
// The text that follows an assistant reply in the KV cache to add the next user turn and the
// generation prompt: the reply's end-of-turn marker first, since the stop token is never fed back.
char *chat_render_next(const ChatTemplate *ct, const char *user, int thinking);

// ---------------------------------------------------------------------------------------------
// GPU engine (kernels.cu)

#ifdef __cplusplus
extern "C" {
#endif
// What --version says of the GPU engine: "CUDA 12.4" (cublas_lazy.c), or NULL in a build without nvcc,
// where gpu_none.c stands in for kernels.cu and cuda_device_count() reports no GPU.
const char *nano_gpu_build(void);
extern const char nano_commit[];  // build/version.c, written by make from git
// Number of usable CUDA devices; 0 with a reason in why (no driver, no device) otherwise.
int cuda_device_count(char *why, size_t whylen);

// The GPU engine on device 0: weights as bf16 (f16/f32 checkpoints are rounded at upload), a KV cache
// in a GPU format of kv.h, fp32 activations. A forward of one token is one cooperative kernel launch;
// longer chunks (up to max_batch tokens) go through cuBLAS and a tiled attention kernel. capacity: the
// cache's positions; -N asks for a pool of N, or as many as fit if fewer (batched generation;
// Engine.capacity says how many). wo_split: 1, 2, 4 or 8 slices of o_proj's reduction (0 picks one from
// the shape). Returns NULL with the reason in why when there is no usable GPU, the shape or KV format is
// not supported, or the model does not fit. Prints one line on stderr with the GPU memory in use. Other
// CUDA failures are fatal.
Engine *cuda_engine_create(const Model *m, int capacity, KVFormat kv, int max_batch, int wo_split, char *why,
                           size_t whylen);
void cuda_engine_set_wo_split(Engine *e, int wo_split);  // 1, 2, 4 or 8
static inline int wo_split_valid(int s) { return s == 1 || s == 2 || s == 4 || s == 8; }

// Residual stream after each layer's attention (stage 0) and MLP (stage 1): x holds T rows of hidden
// floats, one per token of the forward call. For --check and the tests; NULL turns it off.
typedef void (*LayerHook)(void *ctx, int layer, int stage, const float *x, int T);
void cuda_engine_set_hook(Engine *e, LayerHook hook, void *ctx);
void ref_engine_set_hook(Engine *e, LayerHook hook, void *ctx);  // ref.c



#ifdef __cplusplus
}
#endif

// ---------------------------------------------------------------------------------------------
// --check (check.c): the GPU engine against the reference path, and logit agreement

// The weights as the GPU engine computes with them: a copy of m's views whose matrices are bf16
// (f16/f32 ones rounded into new buffers; bf16 ones shared with m). Norms and biases stay as stored.
// Borrows m; free with rounded_model_free(), never model_free().
Model *rounded_model(const Model *m);
void rounded_model_free(Model *r);

// The GPU and the reference (on the rounded weights, the same KV format) side by side on the same
// tokens: the prompt in chunks of batch, then n_decode tokens one at a time (the reference's greedy
// picks fed to both). Prints on stdout, per layer, the largest |difference| of the residual after
// attention and after the MLP (and relative to the reference's largest |value| there), the logits'
// agreement, and the first layer beyond the tolerance. Returns 0 when no layer exceeds it, else 1.
int gpu_check(const Model *m, const int *ids, int n, int n_decode, int capacity, int batch, int wo_split, KVFormat kv);

// Agreement of two logit rows (--check, --perplexity against the exact cache, the GPU tests):
// KL(softmax(ref) || softmax(got)) over n logits, and each row's argmax (the first of equals).
double logits_kld(const float *ref, const float *got, size_t n, int *ref_top, int *got_top);
double log_sum_exp(const float *x, size_t n);  // log(sum(exp(x))), shifted by the largest

// ---------------------------------------------------------------------------------------------
// nano --bench (bench.c): its own arguments (argv as main got it); returns the exit status.

int bench_main(int argc, char **argv);

// ---------------------------------------------------------------------------------------------
// Files (files.c)

#include <stdio.h>
#include <sys/stat.h>

#define READ_ANY_SIZE SIZE_MAX  // read_file's max for the user's own files: memory is the only limit
// Opens a regular file for reading (a FIFO does not hang it); -1 with errno set otherwise.
int open_regular(const char *path, struct stat *sb);
// A whole file (at most max bytes, else EFBIG) in a NUL-terminated malloc'd buffer; NULL with errno set.
char *read_file(const char *path, size_t max, size_t *len);
// Why opening or reading path just failed, from errno: "a symbolic link to a file that does not exist", ...
const char *file_error(const char *path);
int is_link(const char *path);  // a symbolic link, whether or not it leads anywhere
// Why text starting with these bytes is not UTF-8 nano can read (UTF-16), or NULL.
const char *text_encoding_problem(const void *head, size_t n);

// Lines of a file or stream, ended by \n, \r\n or a lone \r; a UTF-8 byte order mark before the first
// line is dropped. buf holds the line and a NUL after it (the line itself may hold NULs).
typedef struct {
    FILE *f;
    char *buf;
    size_t cap, len;
    int ended;               // 0 only for a last line with no line end
    long no;                 // line number, from 1
    uint64_t start, pos;     // byte offset of the line, and of what comes after it
} LineReader;
int lines_open(LineReader *r, const char *path);  // 0, or -1 with errno set
void lines_from(LineReader *r, FILE *f);
int line_next(LineReader *r);  // 1 when a line was read, 0 at the end
long line_nul(const LineReader *r);  // offset of the first NUL byte in the line, or -1
void lines_close(LineReader *r);
uint64_t hash64(const void *data, size_t n);

// fatal "name: write failed: ..." when f holds a write error (a full disk, a closed stdout).
void out_check(FILE *f, const char *name);
int lock_output(int fd);  // exclusive lock without waiting; -1 when another process holds it

#endif
