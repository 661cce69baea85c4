// Tokenizer: byte-level BPE as Hugging Face tokenizers runs Qwen's tokenizer.json, a streaming UTF-8
// decoder, and the chat templates of the Qwen families rendered without a Jinja engine.
//
// Encoding, in HF's order: added tokens are cut out of the raw text first (leftmost-longest); each
// remaining segment is NFC-normalized, split by the Qwen pre-tokenizer regex, mapped byte by byte to
// GPT-2's printable characters, and merged by BPE in merge-rank order.
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nano.h"
// stb_ds spells GNU C's typeof, which strict -std=c11 only knows as __typeof__ (used for integer keys).
#define typeof __typeof__
#include "stb_ds.h"

// The pre-tokenizer regex of every Qwen tokenizer.json; piece_end() implements exactly this pattern.
static const char QWEN_SPLIT_REGEX[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

#define BPE_CACHE_MAX 65536  // distinct pieces remembered before the cache starts over

typedef struct {
    int rank, merged;
} Merge;

typedef struct {
    int start, n;  // a span of Tokenizer.cache_ids
} IdSpan;

typedef struct {
    char *content;  // the literal text
    int id, special;
} AddedToken;

// A node of the Aho-Corasick automaton over the added tokens written backwards (see added_matches).
typedef struct {
    int child, sibling;  // first child, next sibling; -1: none
    int fail;            // the node of the longest proper suffix of this node's string (0: the root)
    int added;           // index in Tokenizer.added of the token spelled by this node, or -1
    int longest;         // the longest token that is a suffix of this node's string (itself or fail's), or -1
    unsigned char byte;
} TrieNode;

struct Tokenizer {
    char *path;
    int n_ids, cap_ids;
    char **bytes;         // [n_ids] what each id decodes to (NULL: no such id)
    int *bytes_len;       // [n_ids]
    unsigned char *special;  // [n_ids] added tokens marked special
    struct { char *key; int value; } *vocab;        // token text (byte-level form) -> id
    struct { uint64_t key; Merge value; } *merges;  // (left id << 32 | right id) -> rank, result
    int byte_id[256];     // id of each single byte's token
    AddedToken *added;    // stb_ds array
    // Added tokens as an Aho-Corasick automaton (stb_ds array, node 0 the root), so finding them costs
    // a bounded number of steps per text byte, whatever their number and length.
    TrieNode *trie;
    size_t trie_steps;  // node visits while matching, summed over encodes (tokenizer_added_steps)
    int *prefix, *suffix;  // stb_ds arrays: ids the post-processor adds around the text
    // BPE results of pieces seen before: piece bytes -> (start, count) in cache_ids.
    struct { char *key; IdSpan value; } *cache;
    int *cache_ids;
    char *joined;  // stb_ds array: load_merges' scratch, here so that an error frees it with the rest
};

// ---------------------------------------------------------------------------------------------
// GPT-2's byte <-> character table: printable bytes stand for themselves, the other 68 move to
// U+0100 and up in byte order, so every byte has a visible character.

static uint32_t byte_char[256];

static void init_byte_chars(void) {
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        byte_char[b] = printable ? (uint32_t)b : 0x100u + (uint32_t)extra++;
    }
}

static int char_byte(uint32_t cp) {  // inverse of byte_char, -1 if cp stands for no byte
    if (cp < 256 && byte_char[cp] == cp) return (int)cp;
    if (cp >= 0x100 && cp < 0x100 + 68)
        for (int b = 0; b < 256; b++)
            if (byte_char[b] == cp) return b;
    return -1;
}

// What a token's text decodes to, as HF's ByteLevel decoder does it: each character back to its byte,
// or, if some character stands for no byte, the text's own UTF-8 bytes.
static char *token_bytes(const char *text, size_t len, int *out_len) {
    char *out = xmalloc(len + 1);
    int n = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        int l = utf8_decode((const unsigned char *)text + i, len - i, &cp);
        int b = l ? char_byte(cp) : -1;
        if (b < 0) {
            memcpy(out, text, len);
            *out_len = (int)len;
            return out;
        }
        out[n++] = (char)b;
        i += (size_t)l;
    }
    *out_len = n;
    return out;
}

// ---------------------------------------------------------------------------------------------
// Loading tokenizer.json

NANO_NORETURN NANO_PRINTF(2, 3) static void tok_fail(const Tokenizer *t, const char *fmt, ...);
static void tok_fail(const Tokenizer *t, const char *fmt, ...) {
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fatal("%s: %s", t->path, msg);
}

static const JsonNode *need(const Tokenizer *t, const JsonFile *f, const JsonNode *obj, const char *key, JsonType type,
                            const char *where) {
    const JsonNode *n = json_get(&f->json, obj, key);
    static const char *names[] = {"null", "false", "true", "a number", "a string", "an array", "an object"};
    const char *want = type == JSON_TRUE ? "a boolean" : names[type];
    if (!n) tok_fail(t, "missing '%s%s'", where, key);
    int ok = type == JSON_TRUE ? (n->type == JSON_TRUE || n->type == JSON_FALSE) : n->type == type;
    if (!ok) tok_fail(t, "'%s%s' must be %s", where, key, want);
    return n;
}

static int is_true(const Json *j, const JsonNode *obj, const char *key) {
    const JsonNode *n = json_get(j, obj, key);
    return n && n->type == JSON_TRUE;
}

static int valid_id(const Tokenizer *t, const JsonNode *n, const char *what) {
    if (n->type != JSON_NUMBER || !n->is_integer || n->num < 0 || n->num >= (1 << 24))
        tok_fail(t, "%s must be an integer in [0, 2^24)", what);
    return (int)n->num;
}

static void set_token(Tokenizer *t, int id, const char *text, size_t len, const char *what) {
    if (id >= t->cap_ids) {  // ids arrive in any order: grow geometrically
        int cap = id + 1 > 2 * t->cap_ids ? id + 1 : 2 * t->cap_ids;
        t->bytes = realloc(t->bytes, (size_t)cap * sizeof *t->bytes);
        t->bytes_len = realloc(t->bytes_len, (size_t)cap * sizeof *t->bytes_len);
        t->special = realloc(t->special, (size_t)cap);
        if (!t->bytes || !t->bytes_len || !t->special) fatal("out of memory");
        for (int i = t->cap_ids; i < cap; i++) t->bytes[i] = NULL, t->bytes_len[i] = 0, t->special[i] = 0;
        t->cap_ids = cap;
    }
    if (id >= t->n_ids) t->n_ids = id + 1;
    if (t->bytes[id]) tok_fail(t, "%s: id %d is used twice", what, id);
    t->bytes[id] = token_bytes(text, len, &t->bytes_len[id]);
}

// The normalizer, pre-tokenizer and decoder must be the ones Qwen uses; anything else would be
// tokenized differently from HF, silently, so it is refused.
static void check_pipeline(Tokenizer *t, const JsonFile *f) {
    const Json *j = &f->json;
    const JsonNode *norm = json_get(j, f->root, "normalizer");
    const JsonNode *type = norm && norm->type == JSON_OBJECT ? json_get(j, norm, "type") : NULL;
    if (norm && norm->type != JSON_NULL && !(type && type->type == JSON_STRING && !strcmp(type->str, "NFC")))
        tok_fail(t, "'normalizer' must be NFC or null (nano implements Qwen's pipeline only)");

    const JsonNode *pre = need(t, f, f->root, "pre_tokenizer", JSON_OBJECT, "");
    const JsonNode *seq = json_get(j, pre, "pretokenizers");
    const JsonNode *split = seq && seq->type == JSON_ARRAY && seq->count == 2 ? json_first(j, seq) : NULL;
    const JsonNode *bytelevel = split ? json_next(j, split) : NULL;
    const JsonNode *pattern = split ? json_get(j, split, "pattern") : NULL;
    const JsonNode *regex = pattern && pattern->type == JSON_OBJECT ? json_get(j, pattern, "Regex") : NULL;
    const JsonNode *behavior = split ? json_get(j, split, "behavior") : NULL;
    const JsonNode *bl_type = bytelevel ? json_get(j, bytelevel, "type") : NULL;
    if (!regex || regex->type != JSON_STRING || strcmp(regex->str, QWEN_SPLIT_REGEX) || !behavior ||
        behavior->type != JSON_STRING || strcmp(behavior->str, "Isolated") || is_true(j, split, "invert") || !bl_type ||
        bl_type->type != JSON_STRING || strcmp(bl_type->str, "ByteLevel") || is_true(j, bytelevel, "add_prefix_space") ||
        is_true(j, bytelevel, "use_regex"))
        tok_fail(t, "'pre_tokenizer' must be Qwen's: Split on the Qwen regex (Isolated), then ByteLevel without prefix space or regex");

    const JsonNode *dec = need(t, f, f->root, "decoder", JSON_OBJECT, "");
    const JsonNode *dec_type = json_get(j, dec, "type");
    if (!dec_type || dec_type->type != JSON_STRING || strcmp(dec_type->str, "ByteLevel"))
        tok_fail(t, "'decoder.type' must be ByteLevel");
}

static void load_vocab(Tokenizer *t, const JsonFile *f, const JsonNode *model) {
    const Json *j = &f->json;
    const JsonNode *type = need(t, f, model, "type", JSON_STRING, "model.");
    if (strcmp(type->str, "BPE")) tok_fail(t, "'model.type' is '%s', expected BPE", type->str);
    if (is_true(j, model, "byte_fallback")) tok_fail(t, "'model.byte_fallback' must be false (byte-level BPE needs no fallback)");
    if (is_true(j, model, "ignore_merges")) tok_fail(t, "'model.ignore_merges' must be false");
    // Fields that would change HF's result: refused rather than ignored.
    const JsonNode *dropout = json_get(j, model, "dropout");
    if (dropout && dropout->type != JSON_NULL) tok_fail(t, "'model.dropout' must be null (BPE dropout is not supported)");
    static const char *affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int k = 0; k < 2; k++) {
        const JsonNode *a = json_get(j, model, affixes[k]);
        if (a && a->type != JSON_NULL && (a->type != JSON_STRING || a->len))
            tok_fail(t, "'model.%s' must be empty or null (byte-level BPE uses none)", affixes[k]);
    }
    const JsonNode *vocab = need(t, f, model, "vocab", JSON_OBJECT, "model.");
    for (const JsonNode *e = json_first(j, vocab); e; e = json_next(j, e)) {
        int id = valid_id(t, e, "'model.vocab' values");
        set_token(t, id, e->key, e->key_len, "'model.vocab'");
        shput(t->vocab, e->key, id);
    }
    for (int b = 0; b < 256; b++) {
        char s[4];
        int n = utf8_encode(byte_char[b], s);
        char key[5] = {0};
        memcpy(key, s, (size_t)n);
        t->byte_id[b] = shget(t->vocab, key);
        if (shgeti(t->vocab, key) < 0) tok_fail(t, "'model.vocab' lacks the token for byte 0x%02x ('%s')", b, key);
    }
}

static int vocab_id(Tokenizer *t, const char *s, long merge) {
    ptrdiff_t i = shgeti(t->vocab, s);
    if (i < 0) tok_fail(t, "'model.merges'[%ld]: '%s' is not in 'model.vocab'", merge, s);
    return t->vocab[i].value;
}

// Merges come as "left right" strings (Qwen2/2.5 files) or ["left", "right"] pairs (Qwen3 files).
static void load_merges(Tokenizer *t, const JsonFile *f, const JsonNode *model) {
    const Json *j = &f->json;
    const JsonNode *merges = need(t, f, model, "merges", JSON_ARRAY, "model.");
    long rank = 0;
    for (const JsonNode *e = json_first(j, merges); e; e = json_next(j, e), rank++) {
        const char *left, *right;
        size_t left_len, right_len;
        char *space = NULL;
        if (e->type == JSON_STRING && (space = strchr(e->str, ' ')) && !strchr(space + 1, ' ')) {
            left = e->str, left_len = (size_t)(space - e->str);
            right = space + 1, right_len = strlen(right);
        } else if (e->type == JSON_ARRAY && e->count == 2 && json_first(j, e)->type == JSON_STRING &&
                   json_next(j, json_first(j, e))->type == JSON_STRING) {
            const JsonNode *a = json_first(j, e), *b = json_next(j, a);
            left = a->str, left_len = a->len, right = b->str, right_len = b->len;
        } else {
            tok_fail(t, "'model.merges'[%ld] must be a \"left right\" string or a [\"left\", \"right\"] pair", rank);
        }
        arrsetlen(t->joined, left_len + right_len + 1);
        memcpy(t->joined, left, left_len);
        t->joined[left_len] = 0;
        int l = vocab_id(t, t->joined, rank);
        memcpy(t->joined, right, right_len);
        t->joined[right_len] = 0;
        int r = vocab_id(t, t->joined, rank);
        memcpy(t->joined, left, left_len);
        memcpy(t->joined + left_len, right, right_len);
        t->joined[left_len + right_len] = 0;
        Merge m = {(int)rank, vocab_id(t, t->joined, rank)};
        uint64_t key = (uint64_t)l << 32 | (uint32_t)r;
        if (hmgeti(t->merges, key) < 0) hmput(t->merges, key, m);  // a repeated pair keeps its first rank
    }
}

static int trie_child(const Tokenizer *t, int node, unsigned char byte) {
    for (int c = t->trie[node].child; c >= 0; c = t->trie[c].sibling)
        if (t->trie[c].byte == byte) return c;
    return -1;
}

// Adds a token backwards: the text is scanned right to left (added_matches).
static void trie_add(Tokenizer *t, const char *content, int added) {
    if (!t->trie) arrput(t->trie, ((TrieNode){-1, -1, 0, -1, -1, 0}));
    int node = 0;
    for (const unsigned char *p = (const unsigned char *)content + strlen(content); p-- > (const unsigned char *)content;) {
        int c = trie_child(t, node, *p);
        if (c < 0) {
            c = (int)arrlen(t->trie);
            arrput(t->trie, ((TrieNode){-1, t->trie[node].child, 0, -1, -1, *p}));
            t->trie[node].child = c;
        }
        node = c;
    }
    if (t->trie[node].added < 0) t->trie[node].added = added;  // a repeated content keeps its first entry
}

// The automaton's next node after byte b: a child of node, else of its ever shorter suffixes (failure links).
static int trie_next(Tokenizer *t, int node, unsigned char b) {
    for (;;) {
        t->trie_steps++;
        int c = trie_child(t, node, b);
        if (c >= 0) return c;
        if (!node) return 0;
        node = t->trie[node].fail;
    }
}

// Failure links and longest tokens, breadth first, so a node's shorter suffixes are done before it.
static void trie_link(Tokenizer *t) {
    if (!t->trie) return;
    int *queue = NULL;
    arrput(queue, 0);
    for (ptrdiff_t q = 0; q < arrlen(queue); q++) {
        int u = queue[q];
        for (int c = t->trie[u].child; c >= 0; c = t->trie[c].sibling) {
            TrieNode *n = &t->trie[c];
            n->fail = u ? trie_next(t, t->trie[u].fail, n->byte) : 0;
            n->longest = n->added >= 0 ? n->added : t->trie[n->fail].longest;
            arrput(queue, c);
        }
    }
    arrfree(queue);
    t->trie_steps = 0;
}

static void load_added(Tokenizer *t, const JsonFile *f) {
    const Json *j = &f->json;
    const JsonNode *added = json_get(j, f->root, "added_tokens");
    if (!added || added->type == JSON_NULL) return;
    if (added->type != JSON_ARRAY) tok_fail(t, "'added_tokens' must be an array");
    int k = 0;
    for (const JsonNode *e = json_first(j, added); e; e = json_next(j, e), k++) {
        char where[32];
        snprintf(where, sizeof where, "added_tokens[%d].", k);
        if (e->type != JSON_OBJECT) tok_fail(t, "'added_tokens[%d]' must be an object", k);
        char id_field[48];
        snprintf(id_field, sizeof id_field, "'added_tokens[%d].id'", k);
        int id = valid_id(t, need(t, f, e, "id", JSON_NUMBER, where), id_field);
        const JsonNode *content = need(t, f, e, "content", JSON_STRING, where);
        if (!content->len) tok_fail(t, "'%scontent' is empty", where);
        if (id < t->n_ids && t->bytes[id]) {  // also in the vocab: it must say the same
            ptrdiff_t v = shgeti(t->vocab, content->str);
            if (v < 0 || t->vocab[v].value != id) tok_fail(t, "'%sid' %d is already a different vocab token", where, id);
        } else {
            set_token(t, id, content->str, content->len, "'added_tokens'");
        }
        static const char *unsupported[] = {"lstrip", "rstrip", "single_word"};
        for (int u = 0; u < 3; u++)
            if (is_true(j, e, unsupported[u])) tok_fail(t, "'%s%s' must be false (not supported)", where, unsupported[u]);
        // HF finds such a token in the NFC-normalized text, after the raw text's other added tokens.
        if (is_true(j, e, "normalized")) tok_fail(t, "'%snormalized' must be false (tokens matched after NFC are not supported)", where);
        t->special[id] = (unsigned char)is_true(j, e, "special");
        AddedToken a = {strdup(content->str), id, t->special[id]};
        if (!a.content) fatal("out of memory");
        arrput(t->added, a);
        trie_add(t, a.content, (int)arrlen(t->added) - 1);
    }
    trie_link(t);
}

// The post-processor decides what encode(add_special) adds: nothing for Qwen (ByteLevel), the BOS for
// R1-Distill (TemplateProcessing "single": [BOS, $A]).
static void load_post_processor(Tokenizer *t, const JsonFile *f, const JsonNode *pp) {
    const Json *j = &f->json;
    if (!pp || pp->type == JSON_NULL) return;
    const JsonNode *type = need(t, f, pp, "type", JSON_STRING, "post_processor.");
    if (!strcmp(type->str, "ByteLevel")) return;  // offsets only
    if (!strcmp(type->str, "Sequence")) {
        const JsonNode *list = need(t, f, pp, "processors", JSON_ARRAY, "post_processor.");
        for (const JsonNode *e = json_first(j, list); e; e = json_next(j, e)) load_post_processor(t, f, e);
        return;
    }
    if (strcmp(type->str, "TemplateProcessing")) tok_fail(t, "'post_processor.type' %s is not supported", type->str);
    const JsonNode *single = need(t, f, pp, "single", JSON_ARRAY, "post_processor.");
    const JsonNode *specials = need(t, f, pp, "special_tokens", JSON_OBJECT, "post_processor.");
    int seen_text = 0;
    for (const JsonNode *e = json_first(j, single); e; e = json_next(j, e)) {
        const JsonNode *sp = e->type == JSON_OBJECT ? json_get(j, e, "SpecialToken") : NULL;
        if (e->type == JSON_OBJECT && json_get(j, e, "Sequence")) {
            seen_text = 1;
            continue;
        }
        const JsonNode *name = sp ? json_get(j, sp, "id") : NULL;
        if (!name || name->type != JSON_STRING) tok_fail(t, "'post_processor.single' items must be SpecialToken or Sequence");
        const JsonNode *tok = json_get(j, specials, name->str);
        const JsonNode *ids = tok && tok->type == JSON_OBJECT ? json_get(j, tok, "ids") : NULL;
        if (!ids || ids->type != JSON_ARRAY) tok_fail(t, "'post_processor.special_tokens' lacks ids for '%s'", name->str);
        for (const JsonNode *i = json_first(j, ids); i; i = json_next(j, i)) {
            int id = valid_id(t, i, "'post_processor.special_tokens' ids");
            if (id >= t->n_ids || !t->bytes[id])
                tok_fail(t, "'post_processor.special_tokens' id %d of '%s' is not a token of the vocabulary", id, name->str);
            if (seen_text) arrput(t->suffix, id);
            else arrput(t->prefix, id);
        }
    }
}

Tokenizer *tokenizer_new(void) {
    if (!byte_char[255]) init_byte_chars();
    Tokenizer *t = xcalloc(1, sizeof *t);
    sh_new_strdup(t->vocab);
    sh_new_strdup(t->cache);
    return t;
}

void tokenizer_read(Tokenizer *t, const JsonFile *f) {
    free(t->path);
    t->path = strdup(f->path);
    if (!t->path) fatal("out of memory");
    check_pipeline(t, f);
    const JsonNode *model = need(t, f, f->root, "model", JSON_OBJECT, "");
    load_vocab(t, f, model);
    load_merges(t, f, model);
    load_added(t, f);
    load_post_processor(t, f, json_get(&f->json, f->root, "post_processor"));
}

Tokenizer *tokenizer_load(const char *path) {
    JsonFile f;
    json_file_open(&f, path, 1);
    Tokenizer *t = tokenizer_new();
    tokenizer_read(t, &f);
    json_file_close(&f);
    return t;
}

void tokenizer_free(Tokenizer *t) {
    if (!t) return;
    for (int i = 0; i < t->n_ids; i++) free(t->bytes[i]);
    for (ptrdiff_t i = 0; i < arrlen(t->added); i++) free(t->added[i].content);
    free(t->bytes);
    free(t->bytes_len);
    free(t->special);
    shfree(t->vocab);
    hmfree(t->merges);
    arrfree(t->added);
    arrfree(t->trie);
    arrfree(t->prefix);
    arrfree(t->suffix);
    shfree(t->cache);
    arrfree(t->cache_ids);
    arrfree(t->joined);
    free(t->path);
    free(t);
}

int tokenizer_n_ids(const Tokenizer *t) { return t->n_ids; }

int tokenizer_find(const Tokenizer *t, const char *token) {
    for (ptrdiff_t i = 0; i < arrlen(t->added); i++)
        if (!strcmp(t->added[i].content, token)) return t->added[i].id;
    ptrdiff_t i = shgeti(((Tokenizer *)t)->vocab, token);  // stb_ds lookups take a non-const map
    return i < 0 ? -1 : t->vocab[i].value;
}

const char *tokenizer_bytes(const Tokenizer *t, int id, size_t *len) {
    if (id < 0 || id >= t->n_ids || !t->bytes[id]) return NULL;
    *len = (size_t)t->bytes_len[id];
    return t->bytes[id];
}

int tokenizer_is_special(const Tokenizer *t, int id) { return id >= 0 && id < t->n_ids && t->special[id]; }

// ---------------------------------------------------------------------------------------------
// Pre-tokenizer: the Qwen split regex, alternative by alternative in the regex's order (the first
// alternative that matches at a position wins, as in a backtracking engine).

typedef struct {
    const char *s;
    size_t n;
} Text;

static int cp_at(Text x, size_t i, uint32_t *cp) {  // length of the character at i, 0 at the end
    if (i >= x.n) return 0;
    int l = utf8_decode((const unsigned char *)x.s + i, x.n - i, cp);
    if (!l) *cp = 0xFFFD, l = 1;  // callers pass valid UTF-8; stay in bounds regardless
    return l;
}

static int is_letter(uint32_t c) { return uc_class(c) & UC_LETTER; }
static int is_space(uint32_t c) { return uc_class(c) & UC_SPACE; }
static int is_other(uint32_t c) { return !(uc_class(c) & (UC_LETTER | UC_NUMBER | UC_SPACE)); }  // [^\s\p{L}\p{N}]

// (?i:...) folds case: ASCII letters, and U+017F LATIN SMALL LETTER LONG S, whose case fold is 's'.
static uint32_t fold(uint32_t c) { return c >= 'A' && c <= 'Z' ? c + 32 : c == 0x17F ? 's' : c; }

static size_t run_end(Text x, size_t i, int (*in_class)(uint32_t)) {
    uint32_t c;
    int l;
    while ((l = cp_at(x, i, &c)) && in_class(c)) i += (size_t)l;
    return i;
}

static int is_newline(uint32_t c) { return c == '\r' || c == '\n'; }

// End of the piece that starts at i (< x.n).
static size_t piece_end(Text x, size_t i) {
    uint32_t c, d, e;
    int lc = cp_at(x, i, &c);
    int ld = cp_at(x, i + (size_t)lc, &d);
    // (?i:'s|'t|'re|'ve|'m|'ll|'d)
    if (c == '\'' && ld) {
        uint32_t a = fold(d);
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + (size_t)(lc + ld);
        int le = cp_at(x, i + (size_t)(lc + ld), &e);
        if (le) {
            uint32_t b = fold(e);
            if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + (size_t)(lc + ld + le);
        }
    }
    int cls = uc_class(c);
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if (cls & UC_LETTER) return run_end(x, i, is_letter);
    if (!(cls & UC_NUMBER) && !is_newline(c) && ld && is_letter(d)) return run_end(x, i + (size_t)lc, is_letter);
    // \p{N}
    if (cls & UC_NUMBER) return i + (size_t)lc;
    // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
    size_t j = c == ' ' && ld && is_other(d) ? i + (size_t)lc : i;
    uint32_t first;
    cp_at(x, j, &first);
    if (is_other(first)) return run_end(x, run_end(x, j, is_other), is_newline);
    // Whitespace from here on.
    // \s*[\r\n]+ : up to and including the run's last newline
    size_t end = i, after_newline = 0, last_start = i;
    int l;
    while ((l = cp_at(x, end, &e)) && is_space(e)) {
        last_start = end;
        end += (size_t)l;
        if (is_newline(e)) after_newline = end;
    }
    if (after_newline) return after_newline;
    // \s+(?!\S) : the whole run at the end of the text, else all but its last character
    if (end == x.n || last_start == i) return end;  // the last alternative, \s+, takes a single one
    return last_start;
}

// ---------------------------------------------------------------------------------------------
// BPE

// A merge that may apply: the pair of symbols starting at pos, and its rank.
typedef struct {
    int rank, pos;
} Candidate;

static int cand_before(Candidate a, Candidate b) { return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos); }

static void heap_push(Candidate *h, int *n, Candidate c) {
    int i = (*n)++;
    for (; i > 0 && cand_before(c, h[(i - 1) / 2]); i = (i - 1) / 2) h[i] = h[(i - 1) / 2];
    h[i] = c;
}

static Candidate heap_pop(Candidate *h, int *n) {
    Candidate top = h[0], last = h[--*n];
    int i = 0;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && cand_before(h[c + 1], h[c])) c++;
        if (!cand_before(h[c], last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = last;
    return top;
}

static const Merge *merge_of(Tokenizer *t, int left, int right) {
    ptrdiff_t m = hmgeti(t->merges, (uint64_t)left << 32 | (uint32_t)right);
    return m < 0 ? NULL : &t->merges[m].value;
}

// BPE on len symbols (byte ids in sym[]): repeatedly merge the lowest-ranked adjacent pair, the
// leftmost among equals, as HF does. The symbols form a linked list and the candidate merges a heap,
// so a long piece costs n log n, not n^2. Returns the number of symbols left, compacted in sym[].
static int bpe_merge(Tokenizer *t, int *sym, int len) {
    int *next = xmalloc((size_t)len * sizeof *next), *prev = xmalloc((size_t)len * sizeof *prev);
    Candidate *heap = xmalloc((size_t)len * 2 * sizeof *heap);  // each merge adds at most two
    int n_heap = 0;
    for (int i = 0; i < len; i++) next[i] = i + 1 < len ? i + 1 : -1, prev[i] = i - 1;
    for (int i = 0; i + 1 < len; i++) {
        const Merge *m = merge_of(t, sym[i], sym[i + 1]);
        if (m) heap_push(heap, &n_heap, (Candidate){m->rank, i});
    }
    while (n_heap) {
        Candidate c = heap_pop(heap, &n_heap);
        int right = next[c.pos];
        // Stale candidates: a side was merged away, or the pair there changed (ranks name pairs).
        if (sym[c.pos] < 0 || right < 0) continue;
        const Merge *m = merge_of(t, sym[c.pos], sym[right]);
        if (!m || m->rank != c.rank) continue;
        sym[c.pos] = m->merged;
        sym[right] = -1;
        next[c.pos] = next[right];
        if (next[right] >= 0) prev[next[right]] = c.pos;
        if (prev[c.pos] >= 0 && (m = merge_of(t, sym[prev[c.pos]], sym[c.pos])))
            heap_push(heap, &n_heap, (Candidate){m->rank, prev[c.pos]});
        if (next[c.pos] >= 0 && (m = merge_of(t, sym[c.pos], sym[next[c.pos]])))
            heap_push(heap, &n_heap, (Candidate){m->rank, c.pos});
    }
    int n = 0;
    for (int i = 0; i >= 0; i = next[i]) sym[n++] = sym[i];
    free(next);
    free(prev);
    free(heap);
    return n;
}

// Appends the BPE ids of one piece (raw bytes) to *out, through the cache (keys are C strings, so a
// piece with a NUL byte is not cached).
static void bpe_piece(Tokenizer *t, const char *piece, size_t len, int **out) {
    char key[256];
    int cacheable = len < sizeof key && !memchr(piece, 0, len);
    if (cacheable) {
        memcpy(key, piece, len);
        key[len] = 0;
        ptrdiff_t k = shgeti(t->cache, key);
        if (k >= 0) {
            for (int i = 0; i < t->cache[k].value.n; i++) arrput(*out, t->cache_ids[t->cache[k].value.start + i]);
            return;
        }
    }
    int *sym = xmalloc(len * sizeof *sym);
    for (size_t i = 0; i < len; i++) sym[i] = t->byte_id[(unsigned char)piece[i]];
    int n = bpe_merge(t, sym, (int)len);
    if (cacheable) {
        if (shlen(t->cache) >= BPE_CACHE_MAX) {
            shfree(t->cache);
            sh_new_strdup(t->cache);
            arrfree(t->cache_ids);
        }
        IdSpan span = {(int)arrlen(t->cache_ids), n};
        for (int i = 0; i < n; i++) arrput(t->cache_ids, sym[i]);
        shput(t->cache, key, span);
    }
    for (int i = 0; i < n; i++) arrput(*out, sym[i]);
    free(sym);
}

// A segment between added tokens: NFC, split, BPE.
static void encode_segment(Tokenizer *t, const char *s, size_t len, int **out) {
    if (!len) return;
    size_t n;
    char *nfc = utf8_nfc(s, len, &n);
    Text x = {nfc, n};
    for (size_t i = 0; i < n;) {
        size_t end = piece_end(x, i);
        bpe_piece(t, nfc + i, end - i, out);
        i = end;
    }
    free(nfc);
}

typedef struct {
    size_t at;  // byte offset in the text
    int added;  // index in Tokenizer.added
} AddedMatch;

// The longest added token starting at each position that starts one, last position first. Read right
// to left over the reversed tokens, the automaton's node spells the longest text from i on that begins
// some token, so its longest suffix token is the longest token starting at i: one pass, linear time.
static AddedMatch *added_matches(Tokenizer *t, const char *text, size_t len) {
    AddedMatch *m = NULL;
    if (!t->trie) return NULL;
    int node = 0;
    for (size_t i = len; i-- > 0;) {
        node = trie_next(t, node, (unsigned char)text[i]);
        if (t->trie[node].longest >= 0) arrput(m, ((AddedMatch){i, t->trie[node].longest}));
    }
    return m;
}

size_t tokenizer_added_steps(const Tokenizer *t) { return t->trie_steps; }

int *tokenizer_encode(Tokenizer *t, const char *text, size_t len, int add_special, int *n_out, char *err, size_t errlen) {
    long bad = utf8_invalid_offset(text, len);
    if (bad >= 0) {
        snprintf(err, errlen, "invalid UTF-8 at byte offset %ld (byte 0x%02x)", bad, (unsigned char)text[bad]);
        return NULL;
    }
    int *ids = NULL;
    if (add_special)
        for (ptrdiff_t i = 0; i < arrlen(t->prefix); i++) arrput(ids, t->prefix[i]);
    // Leftmost-longest, as HF: left to right, each token that starts at or past the end of the last cut.
    AddedMatch *m = added_matches(t, text, len);
    size_t seg = 0;
    for (ptrdiff_t k = arrlen(m) - 1; k >= 0; k--) {
        if (m[k].at < seg) continue;
        const AddedToken *a = &t->added[m[k].added];
        encode_segment(t, text + seg, m[k].at - seg, &ids);
        arrput(ids, a->id);
        seg = m[k].at + strlen(a->content);
    }
    arrfree(m);
    encode_segment(t, text + seg, len - seg, &ids);
    if (add_special)
        for (ptrdiff_t i = 0; i < arrlen(t->suffix); i++) arrput(ids, t->suffix[i]);
    // Hand back plain malloc'd memory, not an stb_ds array.
    int n = (int)arrlen(ids);
    int *out = xmalloc((size_t)(n ? n : 1) * sizeof *out);
    if (n) memcpy(out, ids, (size_t)n * sizeof *out);
    arrfree(ids);
    *n_out = n;
    return out;
}

// ---------------------------------------------------------------------------------------------
// Decoding

// Bytes of a valid sequence so far: how many of s[0..n) continue the sequence led by s[0] validly
// (Unicode Table 3-7), and the full length that lead byte needs (0 if it can lead nothing).
static int utf8_prefix(const unsigned char *s, int n, int *need) {
    unsigned char b = s[0];
    unsigned char lo = 0x80, hi = 0xBF;
    if (b < 0x80) return *need = 1, 1;
    if (b >= 0xC2 && b <= 0xDF) *need = 2;
    else if (b >= 0xE0 && b <= 0xEF) *need = 3, lo = b == 0xE0 ? 0xA0 : 0x80, hi = b == 0xED ? 0x9F : 0xBF;
    else if (b >= 0xF0 && b <= 0xF4) *need = 4, lo = b == 0xF0 ? 0x90 : 0x80, hi = b == 0xF4 ? 0x8F : 0xBF;
    else return *need = 0, 0;
    int k = 1;
    if (k < n && s[k] >= lo && s[k] <= hi) k++;
    else return k;
    while (k < n && k < *need && s[k] >= 0x80 && s[k] <= 0xBF) k++;
    return k;
}

static const char REPLACEMENT[] = "\xEF\xBF\xBD";  // U+FFFD

size_t utf8_stream_push(Utf8Stream *s, const char *bytes, size_t n, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        s->pending[s->n++] = (unsigned char)bytes[i];
        // Emit every character or invalid subpart the pending bytes settle.
        while (s->n) {
            int need, ok = utf8_prefix(s->pending, s->n, &need);
            if (need && ok == need) {  // a whole character
                memcpy(out + o, s->pending, (size_t)need);
                o += (size_t)need;
            } else if (need && ok == s->n) {  // valid so far: wait for more
                break;
            } else {  // s->pending[0..max(ok,1)) can start no character: one U+FFFD for it
                memcpy(out + o, REPLACEMENT, 3);
                o += 3;
                need = ok ? ok : 1;
            }
            memmove(s->pending, s->pending + need, (size_t)(s->n - need));
            s->n -= need;
        }
    }
    return o;
}

size_t utf8_stream_finish(Utf8Stream *s, char *out) {
    size_t o = 0;
    if (s->n) {  // an unfinished valid prefix is one maximal subpart
        memcpy(out, REPLACEMENT, 3);
        o = 3;
    }
    s->n = 0;
    return o;
}

char *tokenizer_decode(const Tokenizer *t, const int *ids, int n, int skip_special, size_t *len) {
    size_t cap = 16, o = 0;
    for (int i = 0; i < n; i++) {
        size_t l = 0;
        if (tokenizer_bytes(t, ids[i], &l)) cap += 3 * (l + 4);
    }
    char *out = xmalloc(cap);
    Utf8Stream st = {{0}, 0};
    for (int i = 0; i < n; i++) {
        size_t l;
        const char *b = tokenizer_bytes(t, ids[i], &l);
        if (!b || (skip_special && t->special[ids[i]])) continue;
        o += utf8_stream_push(&st, b, l, out + o);
    }
    o += utf8_stream_finish(&st, out + o);
    out[o] = 0;
    *len = o;
    return out;
}

// ---------------------------------------------------------------------------------------------
// Chat templates

const char *chat_format_name(ChatFormat f) {
    static const char *names[] = {"none", "chatml", "qwen3", "deepseek-r1", "unsupported"};
    return names[f];
}

// Unescapes the Jinja string literal that starts right after s (up to its closing quote q).
static char *literal_after(const char *s, char q) {
    char *out = xmalloc(strlen(s) + 1);
    size_t o = 0;
    for (; *s && *s != q; s++) {
        if (*s == '\\' && s[1]) {
            s++;
            out[o++] = *s == 'n' ? '\n' : *s == 't' ? '\t' : *s;
        } else {
            out[o++] = *s;
        }
    }
    out[o] = 0;
    return out;
}

// The default system prompt of a ChatML template: the literal text of its
// '<|im_start|>system\n...<|im_end|>' line, where that line holds a literal rather than a variable.
static char *chatml_default_system(const char *tmpl) {
    static const char opener[] = "<|im_start|>system\\n";
    for (const char *p = strstr(tmpl, opener); p; p = strstr(p + 1, opener)) {
        const char *body = p + strlen(opener);
        if (*body == '\'' || *body == '"') continue;  // ... + messages[0]['content'] + ...
        char q = p > tmpl && (p[-1] == '"') ? '"' : '\'';
        char *text = literal_after(body, q);
        char *end = strstr(text, "<|im_end|>");
        if (end) {
            *end = 0;
            return text;
        }
        free(text);
    }
    return NULL;
}

char *chat_template_config(const JsonFile *f, char **bos) {
    char *tmpl = NULL;
    *bos = NULL;
    const JsonNode *ct = json_get(&f->json, f->root, "chat_template");
    if (ct && ct->type == JSON_STRING) tmpl = strdup(ct->str);
    else if (ct && ct->type == JSON_ARRAY)  // [{"name": "default", "template": ...}, ...]
        for (const JsonNode *e = json_first(&f->json, ct); e && !tmpl; e = json_next(&f->json, e)) {
            const JsonNode *name = json_get(&f->json, e, "name"), *body = json_get(&f->json, e, "template");
            if (name && name->type == JSON_STRING && !strcmp(name->str, "default") && body && body->type == JSON_STRING)
                tmpl = strdup(body->str);
        }
    else if (ct && ct->type != JSON_NULL) fatal("%s: 'chat_template' must be a string or a list of named templates", f->path);
    const JsonNode *b = json_get(&f->json, f->root, "bos_token");
    if (b && b->type == JSON_OBJECT) b = json_get(&f->json, b, "content");
    if (b && b->type == JSON_STRING) *bos = strdup(b->str);
    return tmpl;
}

void chat_template_select(ChatTemplate *ct, const char *tmpl, const char *bos) {
    memset(ct, 0, sizeof *ct);
    if (!tmpl) return;
    if (strstr(tmpl, "<｜Assistant｜>")) {
        ct->format = CHAT_DEEPSEEK;
        ct->bos = strdup(bos ? bos : "");
        if (!ct->bos) fatal("out of memory");
        ct->think_in_prompt = strstr(tmpl, "'<｜Assistant｜><think>\\n'") != NULL;
    } else if (strstr(tmpl, "<|im_start|>")) {
        ct->format = strstr(tmpl, "<think>") ? CHAT_QWEN3 : CHAT_CHATML;
        if (ct->format == CHAT_CHATML) ct->default_system = chatml_default_system(tmpl);
    } else {
        ct->format = CHAT_UNSUPPORTED;  // an error only where a prompt would be rendered with it
    }
}

// The template of tokenizer_config.json, else of chat_template.jinja.
void chat_template_load(ChatTemplate *ct, const char *dir) {
    char *path = path_join(dir, "tokenizer_config.json"), *bos = NULL, *tmpl = NULL;
    JsonFile f;
    if (json_file_open(&f, path, 0)) {
        tmpl = chat_template_config(&f, &bos);
        json_file_close(&f);
    }
    free(path);
    if (!tmpl) {
        path = path_join(dir, "chat_template.jinja");
        size_t len;
        tmpl = read_file(path, READ_ANY_SIZE, &len);
        if (!tmpl && (errno != ENOENT || is_link(path))) fatal("%s: %s", path, file_error(path));
        free(path);
    }
    chat_template_select(ct, tmpl, bos);
    free(bos);
    free(tmpl);
}

void chat_template_free(ChatTemplate *ct) {
    free(ct->default_system);
    free(ct->bos);
    memset(ct, 0, sizeof *ct);
}

static void put_n(char **out, const char *s, size_t n) {
    if (n) memcpy(arraddnptr(*out, n), s, n);  // an empty array may still be NULL
}

static void put(char **out, const char *s) { put_n(out, s, strlen(s)); }

// An stb_ds char array as a malloc'd C string (the array is freed).
static char *to_string(char *arr) {
    size_t len = (size_t)arrlen(arr);
    char *out = xmalloc(len + 1);
    if (len) memcpy(out, arr, len);
    out[len] = 0;
    arrfree(arr);
    return out;
}

// What opens the assistant's reply. thinking 0: Qwen3's enable_thinking=false, the empty think block.
static void put_generation_prompt(const ChatTemplate *ct, char **out, int thinking) {
    if (ct->format == CHAT_DEEPSEEK) {
        put(out, ct->think_in_prompt ? "<｜Assistant｜><think>\n" : "<｜Assistant｜>");
        return;
    }
    put(out, "<|im_start|>assistant\n");
    if (ct->format == CHAT_QWEN3 && thinking == 0) put(out, "<think>\n\n</think>\n\n");
}

static const char *last_think_close(const char *content) {  // the last "</think>", or NULL
    const char *close = NULL;
    for (const char *p = strstr(content, "</think>"); p; p = strstr(p + 1, "</think>")) close = p;
    return close;
}

// Python's str.strip(chars) family on s[0..*n): returns the new start, adjusts *n.
static const char *strip_chars(const char *s, size_t *n, const char *chars, int left, int right) {
    while (left && *n && strchr(chars, *s)) s++, (*n)--;
    while (right && *n && strchr(chars, s[*n - 1])) (*n)--;
    return s;
}

// Qwen3: an assistant message's reasoning and answer, split at its last "</think>" as the template does.
static void split_reasoning(const char *content, const char **reason, size_t *reason_n, const char **answer, size_t *answer_n) {
    const char *close = last_think_close(content);
    if (!close) {
        *reason = "", *reason_n = 0, *answer = content, *answer_n = strlen(content);
        return;
    }
    // reasoning = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n')
    const char *first_close = strstr(content, "</think>");
    size_t n = (size_t)(first_close - content);
    const char *r = strip_chars(content, &n, "\n", 0, 1);
    const char *open = NULL;
    for (const char *p = r; (p = strstr(p, "<think>")) && p + 7 <= r + n; p++) open = p;
    if (open) n -= (size_t)(open + 7 - r), r = open + 7;
    *reason = strip_chars(r, &n, "\n", 1, 0);
    *reason_n = n;
    // answer = content.split('</think>')[-1].lstrip('\n')
    n = strlen(close + 8);
    *answer = strip_chars(close + 8, &n, "\n", 1, 0);
    *answer_n = n;
}

static char *render_chatml(const ChatTemplate *ct, const ChatMessage *msgs, int n, int add_generation_prompt, int thinking) {
    char *out = NULL;
    int first = 0;
    if (n && !strcmp(msgs[0].role, "system")) {
        put(&out, "<|im_start|>system\n");
        put(&out, msgs[0].content);
        put(&out, "<|im_end|>\n");
        first = 1;
    } else if (ct->default_system) {
        put(&out, "<|im_start|>system\n");
        put(&out, ct->default_system);
        put(&out, "<|im_end|>\n");
    }
    int last_user = -1;
    for (int i = 0; i < n; i++)
        if (!strcmp(msgs[i].role, "user")) last_user = i;
    for (int i = first; i < n; i++) {
        put(&out, "<|im_start|>");
        put(&out, msgs[i].role);
        put(&out, "\n");
        if (ct->format == CHAT_QWEN3 && !strcmp(msgs[i].role, "assistant")) {
            const char *reason, *answer;
            size_t reason_n, answer_n;
            split_reasoning(msgs[i].content, &reason, &reason_n, &answer, &answer_n);
            // Turns after the last user message keep their reasoning; earlier ones drop it.
            if (i > last_user && (i == n - 1 || reason_n)) {
                put(&out, "<think>\n");
                reason = strip_chars(reason, &reason_n, "\n", 1, 1);
                put_n(&out, reason, reason_n);
                put(&out, "\n</think>\n\n");
            }
            put_n(&out, answer, answer_n);
        } else {
            put(&out, msgs[i].content);
        }
        put(&out, "<|im_end|>\n");
    }
    if (add_generation_prompt) put_generation_prompt(ct, &out, thinking);
    return out;
}

static char *render_deepseek(const ChatTemplate *ct, const ChatMessage *msgs, int n, int add_generation_prompt) {
    char *out = NULL;
    const char *system = "";  // the template keeps the last system message, and puts it first
    for (int i = 0; i < n; i++)
        if (!strcmp(msgs[i].role, "system")) system = msgs[i].content;
    put(&out, ct->bos);
    put(&out, system);
    for (int i = 0; i < n; i++) {
        if (!strcmp(msgs[i].role, "user")) {
            put(&out, "<｜User｜>");
            put(&out, msgs[i].content);
        } else if (!strcmp(msgs[i].role, "assistant")) {
            const char *content = msgs[i].content, *close = last_think_close(content);
            put(&out, "<｜Assistant｜>");
            put(&out, close ? close + 8 : content);
            put(&out, "<｜end▁of▁sentence｜>");
        }
    }
    if (add_generation_prompt) put_generation_prompt(ct, &out, -1);
    return out;
}

char *chat_render(const ChatTemplate *ct, const ChatMessage *msgs, int n, int add_generation_prompt, int thinking) {
    return to_string(ct->format == CHAT_DEEPSEEK ? render_deepseek(ct, msgs, n, add_generation_prompt)
                                                 : render_chatml(ct, msgs, n, add_generation_prompt, thinking));
}

char *chat_render_next(const ChatTemplate *ct, const char *user, int thinking) {
    char *out = NULL;
    if (ct->format == CHAT_DEEPSEEK) {
        put(&out, "<｜end▁of▁sentence｜><｜User｜>");
        put(&out, user);
    } else {
        put(&out, "<|im_end|>\n<|im_start|>user\n");
        put(&out, user);
        put(&out, "<|im_end|>\n");
    }
    put_generation_prompt(ct, &out, thinking);
    return to_string(out);
}
