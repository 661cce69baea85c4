// Strict JSON (RFC 8259) over a bounded buffer: config.json, generation_config.json, safetensors
// headers and the shard index. Recursive descent with a depth limit; strings are UTF-8-checked and
// decoded into one arena (a decoded string plus its NUL never outgrows its quoted source, so the
// arena is sized once from the input length).
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nano.h"

#define JSON_MAX_NODES (1 << 21)
#define JSON_MAX_NUMBER_LEN 64

typedef struct {
    Json *j;
    const char *s;
    size_t len, pos;
} Parser;

static int perr(Parser *p, const char *fmt, ...) NANO_PRINTF(2, 3);
static int perr(Parser *p, const char *fmt, ...) {
    char msg[120];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(p->j->err, sizeof p->j->err, "%s at byte %zu", msg, p->pos);
    return -1;
}

static void skip_ws(Parser *p) {
    while (p->pos < p->len) {
        char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

static int new_node(Parser *p, JsonType type) {
    Json *j = p->j;
    if (j->n_nodes == j->cap_nodes) {
        if (j->cap_nodes >= JSON_MAX_NODES) return perr(p, "more than %d JSON values", JSON_MAX_NODES);
        int cap = j->cap_nodes ? j->cap_nodes * 2 : 64;
        JsonNode *nodes = realloc(j->nodes, (size_t)cap * sizeof *nodes);
        if (!nodes) return perr(p, "out of memory");
        j->nodes = nodes;
        j->cap_nodes = cap;
    }
    JsonNode *n = &j->nodes[j->n_nodes];
    memset(n, 0, sizeof *n);
    n->type = type;
    n->child = n->next = -1;
    return j->n_nodes++;
}

static int hex4(Parser *p, unsigned *out) {
    if (p->len - p->pos < 4) return perr(p, "truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p->s[p->pos + i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return perr(p, "bad hex digit in \\u escape");
    }
    p->pos += 4;
    *out = v;
    return 0;
}

static size_t put_utf8(char *dst, unsigned cp) {
    if (cp < 0x80) { dst[0] = (char)cp; return 1; }
    if (cp < 0x800) { dst[0] = (char)(0xC0 | cp >> 6); dst[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        dst[0] = (char)(0xE0 | cp >> 12); dst[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        dst[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    dst[0] = (char)(0xF0 | cp >> 18); dst[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    dst[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); dst[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

// Length of the valid UTF-8 sequence at s[0..avail), or 0 if invalid (overlong, surrogate, > U+10FFFF).
static size_t utf8_seq_len(const unsigned char *s, size_t avail) {
    unsigned c = s[0];
    size_t n;
    unsigned cp, min;
    if (c < 0x80) return 1;
    if ((c & 0xE0) == 0xC0) { n = 2; cp = c & 0x1F; min = 0x80; }
    else if ((c & 0xF0) == 0xE0) { n = 3; cp = c & 0x0F; min = 0x800; }
    else if ((c & 0xF8) == 0xF0) { n = 4; cp = c & 0x07; min = 0x10000; }
    else return 0;
    if (avail < n) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return n;
}

// Parses a string at p->pos (on the opening quote) into the arena.
static int parse_string(Parser *p, const char **out, size_t *out_len) {
    Json *j = p->j;
    char *dst = j->arena + j->arena_used, *start = dst;
    p->pos++;  // opening quote
    for (;;) {
        if (p->pos >= p->len) return perr(p, "unterminated string");
        unsigned char c = (unsigned char)p->s[p->pos];
        if (c == '"') { p->pos++; break; }
        if (c < 0x20) return perr(p, "control character in string");
        if (c != '\\') {
            size_t n = utf8_seq_len((const unsigned char *)p->s + p->pos, p->len - p->pos);
            if (!n) return perr(p, "invalid UTF-8 in string");
            memcpy(dst, p->s + p->pos, n);
            dst += n;
            p->pos += n;
            continue;
        }
        if (++p->pos >= p->len) return perr(p, "unterminated escape");
        char e = p->s[p->pos++];
        switch (e) {
        case '"': *dst++ = '"'; break;
        case '\\': *dst++ = '\\'; break;
        case '/': *dst++ = '/'; break;
        case 'b': *dst++ = '\b'; break;
        case 'f': *dst++ = '\f'; break;
        case 'n': *dst++ = '\n'; break;
        case 'r': *dst++ = '\r'; break;
        case 't': *dst++ = '\t'; break;
        case 'u': {
            unsigned cp;
            if (hex4(p, &cp)) return -1;
            if (cp >= 0xDC00 && cp <= 0xDFFF) return perr(p, "lone low surrogate in \\u escape");
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                unsigned lo;
                if (p->len - p->pos < 2 || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u')
                    return perr(p, "high surrogate not followed by a low surrogate");
                p->pos += 2;
                if (hex4(p, &lo)) return -1;
                if (lo < 0xDC00 || lo > 0xDFFF) return perr(p, "high surrogate not followed by a low surrogate");
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            if (cp == 0) return perr(p, "\\u0000 in string is not supported");
            dst += put_utf8(dst, cp);
            break;
        }
        default: return perr(p, "bad escape '\\%c'", e);
        }
    }
    *dst = 0;
    *out = start;
    *out_len = (size_t)(dst - start);
    j->arena_used += *out_len + 1;
    return 0;
}

static int parse_number(Parser *p, int idx) {
    size_t start = p->pos, i = p->pos;
    const char *s = p->s;
    int integer = 1;
#define DIGIT(k) ((k) < p->len && s[k] >= '0' && s[k] <= '9')
    if (i < p->len && s[i] == '-') i++;
    if (!DIGIT(i)) return perr(p, "bad number");
    if (s[i] == '0') i++;
    else while (DIGIT(i)) i++;
    if (i < p->len && s[i] == '.') {
        integer = 0;
        i++;
        if (!DIGIT(i)) { p->pos = i; return perr(p, "bad number: digit expected after '.'"); }
        while (DIGIT(i)) i++;
    }
    if (i < p->len && (s[i] == 'e' || s[i] == 'E')) {
        integer = 0;
        i++;
        if (i < p->len && (s[i] == '+' || s[i] == '-')) i++;
        if (!DIGIT(i)) { p->pos = i; return perr(p, "bad number: digit expected in exponent"); }
        while (DIGIT(i)) i++;
    }
#undef DIGIT
    if (i - start > JSON_MAX_NUMBER_LEN) return perr(p, "number longer than %d characters", JSON_MAX_NUMBER_LEN);
    char buf[JSON_MAX_NUMBER_LEN + 1];
    memcpy(buf, s + start, i - start);
    buf[i - start] = 0;
    p->j->nodes[idx].num = strtod(buf, NULL);
    p->j->nodes[idx].is_integer = integer;
    p->pos = i;
    return 0;
}

static int parse_literal(Parser *p, const char *word) {
    size_t n = strlen(word);
    if (p->len - p->pos < n || memcmp(p->s + p->pos, word, n) != 0) return perr(p, "unexpected character");
    p->pos += n;
    return 0;
}

static int parse_value(Parser *p, int depth);

static int cmp_keys(const void *a, const void *b) {
    const JsonNode *x = *(const JsonNode *const *)a, *y = *(const JsonNode *const *)b;
    if (x->key_len != y->key_len) return x->key_len < y->key_len ? -1 : 1;
    return memcmp(x->key, y->key, x->key_len);
}

// Duplicate keys are rejected: RFC 8259 leaves their meaning open, and Python's json (which wrote
// and reads these files) keeps the last one, so no choice here could be right.
static int check_unique_keys(Parser *p, int idx) {
    const Json *j = p->j;
    int n = j->nodes[idx].count;
    if (n < 2) return 0;
    const JsonNode *small[16], **members = n <= 16 ? small : malloc((size_t)n * sizeof *members);
    if (!members) return perr(p, "out of memory");
    int k = 0;
    for (int c = j->nodes[idx].child; c >= 0; c = j->nodes[c].next) members[k++] = &j->nodes[c];
    qsort(members, (size_t)n, sizeof *members, cmp_keys);
    int rc = 0;
    for (int i = 1; i < n && !rc; i++)
        if (cmp_keys(&members[i - 1], &members[i]) == 0) rc = perr(p, "duplicate key '%.60s' in object", members[i]->key);
    if (members != small) free(members);
    return rc;
}

// Parses the members or elements of a container node idx; p->pos is just past '{' or '['.
static int parse_container(Parser *p, int idx, int depth, int is_object) {
    char close = is_object ? '}' : ']';
    int prev = -1;
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == close) { p->pos++; return 0; }
    for (;;) {
        const char *key = NULL;
        size_t key_len = 0;
        if (is_object) {
            skip_ws(p);
            if (p->pos >= p->len || p->s[p->pos] != '"') return perr(p, "object key (a string) expected");
            if (parse_string(p, &key, &key_len)) return -1;
            skip_ws(p);
            if (p->pos >= p->len || p->s[p->pos] != ':') return perr(p, "':' expected after object key");
            p->pos++;
        }
        int child = parse_value(p, depth + 1);
        if (child < 0) return -1;
        JsonNode *nodes = p->j->nodes;
        nodes[child].key = key;
        nodes[child].key_len = key_len;
        if (prev < 0) nodes[idx].child = child;
        else nodes[prev].next = child;
        prev = child;
        nodes[idx].count++;
        skip_ws(p);
        if (p->pos >= p->len) return perr(p, "unterminated %s", is_object ? "object" : "array");
        char c = p->s[p->pos++];
        if (c == close) return is_object ? check_unique_keys(p, idx) : 0;
        if (c != ',') { p->pos--; return perr(p, "',' or '%c' expected", close); }
    }
}

// Returns the new node's index, or -1.
static int parse_value(Parser *p, int depth) {
    skip_ws(p);
    if (p->pos >= p->len) return perr(p, "value expected");
    char c = p->s[p->pos];
    int idx;
    switch (c) {
    case '{':
    case '[':
        if (depth >= JSON_MAX_DEPTH) return perr(p, "nesting deeper than %d", JSON_MAX_DEPTH);
        if ((idx = new_node(p, c == '{' ? JSON_OBJECT : JSON_ARRAY)) < 0) return -1;
        p->pos++;
        return parse_container(p, idx, depth, c == '{') ? -1 : idx;
    case '"': {
        if ((idx = new_node(p, JSON_STRING)) < 0) return -1;
        const char *str;
        size_t len;
        if (parse_string(p, &str, &len)) return -1;
        p->j->nodes[idx].str = str;
        p->j->nodes[idx].len = len;
        return idx;
    }
    case 't':
        if ((idx = new_node(p, JSON_TRUE)) < 0) return -1;
        return parse_literal(p, "true") ? -1 : idx;
    case 'f':
        if ((idx = new_node(p, JSON_FALSE)) < 0) return -1;
        return parse_literal(p, "false") ? -1 : idx;
    case 'n':
        if ((idx = new_node(p, JSON_NULL)) < 0) return -1;
        return parse_literal(p, "null") ? -1 : idx;
    default:
        if (c != '-' && (c < '0' || c > '9')) return perr(p, "unexpected character");
        if ((idx = new_node(p, JSON_NUMBER)) < 0) return -1;
        return parse_number(p, idx) ? -1 : idx;
    }
}

int json_parse(Json *j, const char *src, size_t len) {
    memset(j, 0, sizeof *j);
    j->arena = malloc(len + 1);
    if (!j->arena) {
        snprintf(j->err, sizeof j->err, "out of memory for %zu bytes of JSON", len);
        return -1;
    }
    Parser p = {j, src, len, 0};
    // RFC 8259 forbids it and Python's json refuses it; name it rather than an "unexpected character".
    if (len >= 3 && !memcmp(src, "\xEF\xBB\xBF", 3)) return perr(&p, "a UTF-8 byte order mark (EF BB BF) before the JSON text; remove it");
    if (parse_value(&p, 0) < 0) return -1;
    skip_ws(&p);
    if (p.pos != len) return perr(&p, "trailing characters after the JSON value");
    return 0;
}

void json_free(Json *j) {
    free(j->nodes);
    free(j->arena);
    memset(j, 0, sizeof *j);
}

const JsonNode *json_root(const Json *j) { return j->n_nodes ? &j->nodes[0] : NULL; }

const JsonNode *json_first(const Json *j, const JsonNode *c) {
    if (!c || (c->type != JSON_ARRAY && c->type != JSON_OBJECT) || c->child < 0) return NULL;
    return &j->nodes[c->child];
}

const JsonNode *json_next(const Json *j, const JsonNode *n) { return n->next < 0 ? NULL : &j->nodes[n->next]; }

const JsonNode *json_get(const Json *j, const JsonNode *obj, const char *key) {
    if (!obj || obj->type != JSON_OBJECT) return NULL;
    size_t klen = strlen(key);
    for (const JsonNode *n = json_first(j, obj); n; n = json_next(j, n))
        if (n->key_len == klen && memcmp(n->key, key, klen) == 0) return n;
    return NULL;
}
