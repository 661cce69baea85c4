// Unicode for the tokenizer: strict UTF-8, the \p{L} \p{N} \s classes of the pre-tokenizer regex,
// and NFC (UAX #15). Tables come from unicode_data.c (tools/gen_unicode.py); Hangul syllables are
// decomposed and composed arithmetically.
#include <stdlib.h>
#include <string.h>

#include "nano.h"

// unicode_data.c. Two-stage tables: blocks[index[cp >> 8]][cp & 255].
extern const uint8_t uc_flags_index[], uc_flags_blocks[][256], uc_ccc_index[], uc_ccc_blocks[][256];
extern const int uc_n_decomp, uc_n_comp;
extern const uint32_t uc_decomp_cp[], uc_decomp_seq[], uc_comp[][3];
extern const uint16_t uc_decomp_off[];

// Flag bits above the UC_* class bits, as tools/gen_unicode.py writes them.
enum { F_CLASS = 7, F_QC_NO = 8, F_QC_MAYBE = 16, F_DECOMP = 32, F_CCC = 64 };

enum {
    S_BASE = 0xAC00, L_BASE = 0x1100, V_BASE = 0x1161, T_BASE = 0x11A7,
    L_COUNT = 19, V_COUNT = 21, T_COUNT = 28, N_COUNT = V_COUNT * T_COUNT, S_COUNT = L_COUNT * N_COUNT,
};

static inline int flags(uint32_t cp) { return uc_flags_blocks[uc_flags_index[cp >> 8]][cp & 255]; }
static inline uint32_t ccc(uint32_t cp) { return uc_ccc_blocks[uc_ccc_index[cp >> 8]][cp & 255]; }

int uc_class(uint32_t cp) { return cp < 0x110000 ? flags(cp) & F_CLASS : 0; }

// ---------------------------------------------------------------------------------------------
// UTF-8

int utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
    static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (!n) return 0;
    uint32_t c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    // C0, C1 can only start overlongs, F5..FF only values past U+10FFFF; 80..BF are continuations.
    if (c < 0xC2 || c > 0xF4) return 0;
    int len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
    if (n < (size_t)len) return 0;
    c &= 0x7Fu >> len;
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        c = c << 6 | (s[i] & 0x3F);
    }
    if (c < min[len] || c > 0x10FFFF || (c >= 0xD800 && c < 0xE000)) return 0;
    *cp = c;
    return len;
}

// Surrogates and values past U+10FFFF have no UTF-8 form; they become U+FFFD.
int utf8_encode(uint32_t cp, char out[4]) {
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp < 0xE000)) cp = 0xFFFD;
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12);
        out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18);
    out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

// Length of the ASCII prefix of s[0..n), eight bytes at a time.
static size_t ascii_run(const unsigned char *s, size_t n) {
    size_t i = 0;
    for (uint64_t w; i + 8 <= n; i += 8) {
        memcpy(&w, s + i, 8);
        if (w & 0x8080808080808080u) break;
    }
    while (i < n && s[i] < 0x80) i++;
    return i;
}

// The offset is where the first ill-formed sequence starts (its lead byte for a truncated one).
long utf8_invalid_offset(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    uint32_t cp;
    for (size_t i = 0; i < n;) {
        i += ascii_run(u + i, n - i);
        if (i == n) break;
        int len = utf8_decode(u + i, n - i, &cp);
        if (!len) return (long)i;
        i += (size_t)len;
    }
    return -1;
}

// ---------------------------------------------------------------------------------------------
// NFC
//
// The quick check of UAX #15 runs over the input: a code point with NFC_QC=Yes whose combining
// class does not go down from its predecessor's (or is 0) leaves NFC text NFC. Where it fails, only
// the segment from the last code point with ccc 0 and NFC_QC=Yes up to the next one is decomposed,
// reordered and recomposed; nothing composes or reorders across such a code point. Everything else
// is copied as is, so ASCII and NFC text cost one scan and a memcpy.
//
// While a segment is worked on, each code point carries its combining class in its top byte.

#define CCC(x) ((x) >> 24)
#define CP(x) ((x) & 0xFFFFFF)

typedef struct {
    char *out;       // the result
    size_t len, cap;
    uint32_t *v;     // the segment's code points, ccc << 24 | cp
    size_t n, vcap;
    uint32_t *tmp;   // scratch for sorting long runs of marks
    size_t tcap;
} Nfc;

// p resized to hold need elements of size elem (capacity doubling), or p itself when it does.
static void *grow(void *p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return p;
    size_t c = *cap ? *cap : 64;
    while (c < need) {
        if (c > SIZE_MAX / 4 / elem) fatal("out of memory normalizing %zu units", need);
        c *= 2;
    }
    p = realloc(p, c * elem);
    if (!p) fatal("out of memory allocating %zu bytes", c * elem);
    *cap = c;
    return p;
}

static void put_bytes(Nfc *z, const void *s, size_t n) {
    z->out = grow(z->out, &z->cap, z->len + n + 1, 1);
    memcpy(z->out + z->len, s, n);
    z->len += n;
}

static void put_cp(Nfc *z, uint32_t cp) {
    z->v = grow(z->v, &z->vcap, z->n + 1, sizeof *z->v);
    z->v[z->n++] = ccc(cp) << 24 | cp;
}

// Appends the full canonical decomposition of cp.
static void decompose(Nfc *z, uint32_t cp) {
    uint32_t s = cp - S_BASE;
    if (s < S_COUNT) {
        put_cp(z, L_BASE + s / N_COUNT);
        put_cp(z, V_BASE + s % N_COUNT / T_COUNT);
        if (s % T_COUNT) put_cp(z, T_BASE + s % T_COUNT);
        return;
    }
    if (flags(cp) & F_DECOMP) {
        int lo = 0, hi = uc_n_decomp;
        while (lo < hi) {
            int mid = (lo + hi) / 2;
            if (uc_decomp_cp[mid] < cp) lo = mid + 1;
            else hi = mid;
        }
        if (lo < uc_n_decomp && uc_decomp_cp[lo] == cp) {
            for (int i = uc_decomp_off[lo]; i < uc_decomp_off[lo + 1]; i++) put_cp(z, uc_decomp_seq[i]);
            return;
        }
    }
    put_cp(z, cp);
}

// Stable sort of a run of marks by combining class: insertion for the usual few, counting for the
// rare long run, which would otherwise be quadratic.
static void sort_marks(Nfc *z, uint32_t *v, size_t n) {
    if (n < 32) {
        for (size_t i = 1; i < n; i++) {
            uint32_t x = v[i];
            size_t j = i;
            for (; j > 0 && CCC(v[j - 1]) > CCC(x); j--) v[j] = v[j - 1];
            v[j] = x;
        }
        return;
    }
    size_t pos[256] = {0}, sum = 0;
    for (size_t i = 0; i < n; i++) pos[CCC(v[i])]++;
    for (int c = 0; c < 256; c++) {
        size_t k = pos[c];
        pos[c] = sum;
        sum += k;
    }
    z->tmp = grow(z->tmp, &z->tcap, n, sizeof *z->tmp);
    for (size_t i = 0; i < n; i++) z->tmp[pos[CCC(v[i])]++] = v[i];
    memcpy(v, z->tmp, n * sizeof *v);
}

// The primary composite of a + b, or 0.
static uint32_t compose(uint32_t a, uint32_t b) {
    if (a - L_BASE < L_COUNT && b - V_BASE < V_COUNT) return S_BASE + ((a - L_BASE) * V_COUNT + (b - V_BASE)) * T_COUNT;
    if (a - S_BASE < S_COUNT && (a - S_BASE) % T_COUNT == 0 && b - T_BASE - 1 < T_COUNT - 1) return a + (b - T_BASE);
    int lo = 0, hi = uc_n_comp;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        const uint32_t *e = uc_comp[mid];
        if (e[0] < a || (e[0] == a && e[1] < b)) lo = mid + 1;
        else hi = mid;
    }
    return lo < uc_n_comp && uc_comp[lo][0] == a && uc_comp[lo][1] == b ? uc_comp[lo][2] : 0;
}

// Normalizes the valid UTF-8 segment s[0..n) and appends it.
static void normalize(Nfc *z, const unsigned char *s, size_t n) {
    z->n = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp = 0xFFFD;
        int len = utf8_decode(s + i, n - i, &cp);
        decompose(z, cp);
        i += len ? (size_t)len : 1;  // never 0: segments stop at invalid bytes
    }
    uint32_t *v = z->v;
    for (size_t i = 0; i < z->n;) {
        size_t j = i;
        while (j < z->n && CCC(v[j])) j++;
        if (j - i > 1) sort_marks(z, v + i, j - i);
        i = j + 1;
    }
    // Compose: each code point joins the last starter unless a mark of the same or a higher class,
    // or another starter, stands between them (then it is blocked). Composites have ccc 0.
    size_t m = 0, starter = SIZE_MAX;
    uint32_t last = 0;  // ccc of the last code point kept after the starter, 0 when none
    for (size_t i = 0; i < z->n; i++) {
        uint32_t x = v[i], c = CCC(x), comp = 0;
        if (starter != SIZE_MAX && (last < c || last == 0) && (flags(CP(x)) & F_QC_MAYBE)) comp = compose(v[starter], CP(x));
        if (comp) {
            v[starter] = comp;
            continue;
        }
        if (!c) starter = m;
        last = c;
        v[m++] = x;
    }
    z->out = grow(z->out, &z->cap, z->len + 4 * m + 1, 1);
    for (size_t i = 0; i < m; i++) z->len += (size_t)utf8_encode(CP(v[i]), z->out + z->len);
}

// A code point that starts a segment: ccc 0 and NFC_QC=Yes.
static int starts_segment(uint32_t cp) { return !(flags(cp) & (F_QC_NO | F_QC_MAYBE | F_CCC)); }

char *utf8_nfc(const char *s, size_t n, size_t *out_len) {
    const unsigned char *u = (const unsigned char *)s;
    Nfc z = {0};
    z.out = grow(z.out, &z.cap, n + 1, 1);  // usually the output is the input
    size_t i = 0, done = 0;  // s[0..done) is in z.out
    size_t seg = 0;          // where the segment around i starts
    uint32_t last = 0;       // ccc of the code point before i
    while (i < n) {
        if (u[i] < 0x80) {
            i += ascii_run(u + i, n - i);
            seg = i - 1;
            last = 0;
            continue;
        }
        uint32_t cp;
        int len = utf8_decode(u + i, n - i, &cp);
        if (!len) {  // invalid byte: kept as is, and nothing combines across it
            seg = ++i;
            last = 0;
            continue;
        }
        int f = flags(cp);
        uint32_t c = f & F_CCC ? ccc(cp) : 0;
        if (!(f & (F_QC_NO | F_QC_MAYBE)) && (c == 0 || c >= last)) {
            if (!c) seg = i;
            last = c;
            i += (size_t)len;
            continue;
        }
        size_t end = i + (size_t)len;
        while (end < n) {
            int l = utf8_decode(u + end, n - end, &cp);
            if (!l || starts_segment(cp)) break;
            end += (size_t)l;
        }
        put_bytes(&z, s + done, seg - done);
        normalize(&z, u + seg, end - seg);
        done = i = seg = end;
        last = 0;
    }
    put_bytes(&z, s + done, n - done);
    z.out[z.len] = 0;
    free(z.v);
    free(z.tmp);
    if (out_len) *out_len = z.len;
    return z.out;
}
