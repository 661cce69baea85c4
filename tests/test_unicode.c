// Unicode units: UTF-8, character classes and NFC against unicode-data's NormalizationTest.txt.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/check.h"

#define NORM_TEST "/usr/share/unicode/NormalizationTest.txt.bz2"

// ---------------------------------------------------------------------------------------------
// UTF-8

static void test_utf8(void) {
    struct {
        const char *s;
        size_t n;
        int len;  // 0: invalid
        uint32_t cp;
        const char *what;
    } cases[] = {
        {"\x00", 1, 1, 0, "U+0000"},
        {"\x7f", 1, 1, 0x7F, "U+007F"},
        {"\xc2\x80", 2, 2, 0x80, "U+0080"},
        {"\xdf\xbf", 2, 2, 0x7FF, "U+07FF"},
        {"\xe0\xa0\x80", 3, 3, 0x800, "U+0800"},
        {"\xed\x9f\xbf", 3, 3, 0xD7FF, "U+D7FF"},
        {"\xee\x80\x80", 3, 3, 0xE000, "U+E000"},
        {"\xef\xbf\xbf", 3, 3, 0xFFFF, "U+FFFF"},
        {"\xf0\x90\x80\x80", 4, 4, 0x10000, "U+10000"},
        {"\xf4\x8f\xbf\xbf", 4, 4, 0x10FFFF, "U+10FFFF"},
        {"\xe4\xb8\xad!", 4, 3, 0x4E2D, "U+4E2D before more bytes"},
        {"\x80", 1, 0, 0, "stray continuation 80"},
        {"\xbf\x41", 2, 0, 0, "stray continuation BF"},
        {"\xc0\x80", 2, 0, 0, "overlong U+0000 (C0 80)"},
        {"\xc1\xbf", 2, 0, 0, "overlong U+007F (C1 BF)"},
        {"\xe0\x9f\xbf", 3, 0, 0, "overlong U+07FF (E0 9F BF)"},
        {"\xf0\x8f\xbf\xbf", 4, 0, 0, "overlong U+FFFF (F0 8F BF BF)"},
        {"\xed\xa0\x80", 3, 0, 0, "surrogate U+D800"},
        {"\xed\xbf\xbf", 3, 0, 0, "surrogate U+DFFF"},
        {"\xf4\x90\x80\x80", 4, 0, 0, "U+110000"},
        {"\xf5\x80\x80\x80", 4, 0, 0, "lead F5"},
        {"\xff", 1, 0, 0, "byte FF"},
        {"\xc3", 1, 0, 0, "truncated 2-byte"},
        {"\xe4\xb8", 2, 0, 0, "truncated 3-byte"},
        {"\xf0\x9f\x98", 3, 0, 0, "truncated 4-byte"},
        {"\xe4\xb8\xad", 2, 0, 0, "3-byte cut by n"},
        {"", 0, 0, 0, "empty"},
        {"\xc3\x41", 2, 0, 0, "ASCII where a continuation belongs"},
        {"\xe4\xb8\xc3\xa9", 4, 0, 0, "lead byte where a continuation belongs"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        uint32_t cp = 0xDEAD;
        int len = utf8_decode((const unsigned char *)cases[i].s, cases[i].n, &cp);
        int ok = len == cases[i].len && (!len || cp == cases[i].cp);
        if (ok && len) {  // and back
            char out[4];
            ok = utf8_encode(cp, out) == len && !memcmp(out, cases[i].s, (size_t)len);
        }
        check(ok, "utf8_decode/encode %s: length %d, expected %d", cases[i].what, len, cases[i].len);
    }

    // Every scalar value round-trips; surrogates and values past U+10FFFF encode as U+FFFD.
    uint32_t bad = 0;
    for (uint32_t c = 0; c < 0x110000 && !bad; c++) {
        if (c >= 0xD800 && c < 0xE000) continue;
        char out[4];
        uint32_t back;
        int len = utf8_encode(c, out);
        if (len != (c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4) || utf8_decode((unsigned char *)out, 4, &back) != len ||
            back != c)
            bad = c ? c : 0x110000;
    }
    if (bad) check(0, "utf8 round trip of all scalar values: first failure U+%04X", (unsigned)bad);
    else check(1, "utf8 round trip of all scalar values");
    uint32_t odd[] = {0xD800, 0xDFFF, 0x110000, 0xFFFFFFFF};
    for (size_t i = 0; i < 4; i++) {
        char out[4];
        check(utf8_encode(odd[i], out) == 3 && !memcmp(out, "\xef\xbf\xbd", 3), "utf8_encode(0x%X) writes U+FFFD", (unsigned)odd[i]);
    }

    struct {
        const char *s;
        size_t n;
        long off;
    } offs[] = {
        {"", 0, -1},
        {"plain ASCII, longer than a word", 31, -1},
        {"h\xc3\xa9llo \xe4\xb8\xad \xf0\x9f\x98\x80", 15, -1},
        {"\x80", 1, 0},
        {"ab\xc0\xaf", 4, 2},
        {"abcdefghijklmnop\xff", 17, 16},
        {"abcdefgh\xc3\xa9\xed\xa0\x80z", 14, 10},
        {"\xe4\xb8\xad\xe4\xb8", 5, 3},
        {"a\0b\xf4\x90\x80\x80", 7, 3},
        {"\xe4\xb8\xad\xe4\xb8", 4, 3},  // n cuts the second character
    };
    for (size_t i = 0; i < sizeof offs / sizeof *offs; i++) {
        long got = utf8_invalid_offset(offs[i].s, offs[i].n);
        check(got == offs[i].off, "utf8_invalid_offset case %zu: %ld, expected %ld", i, got, offs[i].off);
    }
}

// ---------------------------------------------------------------------------------------------
// Character classes

static void test_classes(void) {
    const int L = UC_LETTER, N = UC_NUMBER, S = UC_SPACE;
    struct {
        uint32_t cp;
        int cls;
        const char *what;
    } cases[] = {
        {'A', L, "A"}, {'z', L, "z"}, {'0', N, "0"}, {'9', N, "9"}, {'_', 0, "_"}, {'!', 0, "!"},
        {' ', S, "space"}, {'\t', S, "tab"}, {'\n', S, "LF"}, {'\v', S, "VT"}, {'\f', S, "FF"}, {'\r', S, "CR"},
        {0, 0, "NUL"}, {0x7F, 0, "DEL"},
        {0xE9, L, "e acute (Ll)"}, {0xAA, L, "feminine ordinal (Lo)"}, {0x1C5, L, "Dz with caron (Lt)"},
        {0x2B0, L, "modifier small h (Lm)"}, {0xB5, L, "micro sign"}, {0x4E2D, L, "CJK 中"}, {0x9FFF, L, "CJK U+9FFF"},
        {0x20000, L, "CJK ext B first"}, {0x31350, L, "CJK ext H first"}, {0xAC00, L, "Hangul GA"}, {0xD7A3, L, "Hangul HIH"},
        {0x627, L, "Arabic alef"}, {0x915, L, "Devanagari KA"},
        {0x93E, 0, "Devanagari vowel sign AA (Mc)"}, {0x301, 0, "combining acute (Mn)"},
        {0x663, N, "Arabic-Indic three (Nd)"}, {0xB2, N, "superscript two (No)"}, {0xBD, N, "one half (No)"},
        {0x216B, N, "Roman numeral twelve (Nl)"}, {0x3007, N, "ideographic zero (Nl)"},
        {0xA0, S, "no-break space"}, {0x85, S, "NEL"}, {0x1680, S, "Ogham space"}, {0x2028, S, "line separator"},
        {0x2029, S, "paragraph separator"}, {0x202F, S, "narrow no-break space"}, {0x3000, S, "ideographic space"},
        {0x200B, 0, "zero width space (not White_Space)"}, {0x180E, 0, "Mongolian vowel separator (Cf)"},
        {0xFEFF, 0, "BOM"}, {0x1F600, 0, "emoji 😀"}, {0x1F44D, 0, "emoji 👍"}, {0x378, 0, "unassigned U+0378"},
        {0xD800, 0, "surrogate"}, {0xE000, 0, "private use"}, {0x10FFFF, 0, "U+10FFFF"}, {0x110000, 0, "U+110000"},
        {0xFFFFFFFF, 0, "0xFFFFFFFF"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int got = uc_class(cases[i].cp);
        check(got == cases[i].cls, "uc_class(U+%04X %s) = %d, expected %d", (unsigned)cases[i].cp, cases[i].what, got, cases[i].cls);
    }
}

// ---------------------------------------------------------------------------------------------
// NFC

// Is NFC(s[0..n)) exactly want[0..wn)?
static int nfc_is(const char *s, size_t n, const char *want, size_t wn) {
    size_t len = 12345;
    char *r = utf8_nfc(s, n, &len);
    int ok = len == wn && !memcmp(r, want, wn) && r[len] == 0;
    free(r);
    return ok;
}

// A field of NormalizationTest.txt ("0044 0307") as UTF-8; 0 when it does not fit.
static size_t field_utf8(const char *f, char *out, size_t cap) {
    size_t n = 0;
    for (char *end;; f = end) {
        unsigned long cp = strtoul(f, &end, 16);
        if (end == f) return n;
        if (n + 4 > cap) return 0;
        n += (size_t)utf8_encode((uint32_t)cp, out + n);
    }
}

static void test_normalization_file(void) {
    if (access(NORM_TEST, R_OK)) {
        check(0, "NFC: %s is missing; install the unicode-data package (apt-get install unicode-data)", NORM_TEST);
        return;
    }
    FILE *f = popen("bzcat " NORM_TEST, "r");
    if (!f) {
        check(0, "NFC: cannot run bzcat on %s (apt-get install bzip2)", NORM_TEST);
        return;
    }
    enum { PARTS = 4 };
    int lines[PARTS] = {0}, fail_line[PARTS] = {0}, part = -1, lineno = 0;
    char fail_text[PARTS][256] = {{0}};
    uint8_t *listed = xcalloc(0x110000 / 8, 1);  // Part 1's code points
    char line[4096], raw[4096], c[5][256];
    size_t cn[5];
    while (fgets(line, sizeof line, f)) {
        lineno++;
        if (!strncmp(line, "@Part", 5)) {
            part = atoi(line + 5);
            continue;
        }
        if (line[0] == '#' || line[0] == '\n' || part < 0 || part >= PARTS) continue;
        memcpy(raw, line, sizeof raw);
        int ok = 1;
        char *p = line;
        for (int k = 0; k < 5; k++) {
            char *semi = strchr(p, ';');
            if (!semi) ok = 0;
            else *semi = 0;
            cn[k] = ok ? field_utf8(p, c[k], sizeof c[k]) : 0;
            if (!cn[k]) ok = 0;
            p = semi ? semi + 1 : p;
        }
        if (ok && part == 1) {
            uint32_t cp;
            utf8_decode((unsigned char *)c[0], cn[0], &cp);
            listed[cp / 8] |= (uint8_t)(1 << (cp % 8));
        }
        // c2 == NFC(c1) == NFC(c2) == NFC(c3), c4 == NFC(c4) == NFC(c5)
        ok = ok && nfc_is(c[0], cn[0], c[1], cn[1]) && nfc_is(c[1], cn[1], c[1], cn[1]) && nfc_is(c[2], cn[2], c[1], cn[1]) &&
             nfc_is(c[3], cn[3], c[3], cn[3]) && nfc_is(c[4], cn[4], c[3], cn[3]);
        lines[part]++;
        if (!ok && !fail_line[part]) {
            fail_line[part] = lineno;
            raw[strcspn(raw, "#\n")] = 0;  // the comment holds non-ASCII that could be cut mid-character
            snprintf(fail_text[part], sizeof fail_text[part], "%s", raw);
        }
    }
    int status = pclose(f);
    int total = lines[0] + lines[1] + lines[2] + lines[3];
    check(status == 0 && total > 0, "NFC: read %d test lines from %s (bzcat status %d)", total, NORM_TEST, status);
    const char *names[PARTS] = {"specific cases", "character by character", "canonical order", "PRI #29"};
    for (int k = 0; k < PARTS; k++) {
        if (fail_line[k])
            check(0, "NFC: NormalizationTest Part%d (%s): %d lines, first failure at line %d: %s", k, names[k], lines[k], fail_line[k],
                  fail_text[k]);
        else check(lines[k] > 0, "NFC: NormalizationTest Part%d (%s): %d lines", k, names[k], lines[k]);
    }

    // Part 1 says every code point it does not list is its own NFC.
    long first_bad = -1, tried = 0;
    for (uint32_t cp = 0; cp < 0x110000; cp++) {
        if ((cp >= 0xD800 && cp < 0xE000) || ((listed[cp / 8] >> (cp % 8)) & 1)) continue;
        char s[4];
        size_t n = (size_t)utf8_encode(cp, s);
        tried++;
        if (!nfc_is(s, n, s, n) && first_bad < 0) first_bad = cp;
    }
    if (first_bad >= 0) check(0, "NFC: a code point Part1 does not list changes: U+%04lX", (unsigned long)first_bad);
    else check(lines[1] > 0, "NFC: the %ld code points Part1 does not list are unchanged", tried);
    free(listed);
}

// Deterministic xorshift, so failures reproduce.
static uint32_t rng = 2463534242u;
static uint32_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}

static void test_nfc_edges(void) {
    check(nfc_is("", 0, "", 0), "NFC of the empty string");
    check(nfc_is("plain ASCII text.\n", 18, "plain ASCII text.\n", 18), "NFC leaves ASCII alone");
    check(nfc_is("caf\x65\xcc\x81 \xe4\xb8\xad", 10, "caf\xc3\xa9 \xe4\xb8\xad", 9), "NFC composes e + U+0301 into U+00E9");
    check(nfc_is("\xe2\x84\xab", 3, "\xc3\x85", 2), "NFC maps the Angstrom sign U+212B to U+00C5");
    check(nfc_is("\xe1\x84\x80\xe1\x85\xa1\xe1\x86\xa8", 9, "\xea\xb0\x81", 3), "NFC composes Hangul L+V+T into U+AC01");
    check(nfc_is("\xea\xb0\x80\xe1\x86\xa8", 6, "\xea\xb0\x81", 3), "NFC composes Hangul LV+T into U+AC01");
    // Invalid bytes are kept, and nothing composes across them.
    check(nfc_is("e\xff\xcc\x81\xc3", 5, "e\xff\xcc\x81\xc3", 5), "NFC keeps invalid bytes and does not compose across them");

    // A change deep inside a long text; the rest is copied.
    char big[4100], want[4100];
    memset(big, 'x', 4000);
    memcpy(big + 2000, "e\xcc\x81", 3);
    memcpy(want, big, 2000);
    memcpy(want + 2000, "\xc3\xa9", 2);
    memcpy(want + 2002, big + 2003, 1997);
    check(nfc_is(big, 4000, want, 3999), "NFC composes in the middle of a 4000-byte text");

    // A long run of marks takes the counting sort, which must be stable too: a + (U+0301 U+0316
    // U+0300) x 20 becomes U+00E1, U+0316 x 20, U+0300, (U+0301 U+0300) x 19.
    char run[256], out[256];
    size_t n = 1, m = 2;
    run[0] = 'a';
    memcpy(out, "\xc3\xa1", 2);
    for (int i = 0; i < 20; i++) memcpy(run + n, "\xcc\x81\xcc\x96\xcc\x80", 6), n += 6;
    for (int i = 0; i < 20; i++) memcpy(out + m, "\xcc\x96", 2), m += 2;
    memcpy(out + m, "\xcc\x80", 2), m += 2;
    for (int i = 0; i < 19; i++) memcpy(out + m, "\xcc\x81\xcc\x80", 4), m += 4;
    check(nfc_is(run, n, out, m), "NFC reorders and composes a run of 60 marks");

    // Random text from tricky code points: NFC is valid UTF-8 and idempotent. Random bytes: no crash.
    static const uint32_t pool[] = {'a', 'e', 'A', ' ', 0x300, 0x301, 0x316, 0x327, 0x334, 0x345, 0x5B0, 0x5BC, 0x5C1, 0x1100,
                                    0x1161, 0x11A8, 0xAC00, 0xAC01, 0x212B, 0x344, 0xF73, 0xF71, 0xF72, 0x1E0A, 0x1D15E,
                                    0x1D165, 0x1D16E, 0x4E2D, 0x3099, 0x304B, 0x0CC6, 0x0CC2, 0x0CD5, 0x1B05, 0x1B35};
    int bad = -1;
    for (int t = 0; t < 3000 && bad < 0; t++) {
        char s[200];
        size_t len = 0, k = next() % 40;
        for (size_t i = 0; i < k; i++) len += (size_t)utf8_encode(pool[next() % (sizeof pool / sizeof *pool)], s + len);
        size_t n1, n2;
        char *a = utf8_nfc(s, len, &n1), *b = utf8_nfc(a, n1, &n2);
        if (utf8_invalid_offset(a, n1) != -1 || n1 != n2 || memcmp(a, b, n1)) bad = t;
        free(a);
        free(b);
    }
    check(bad < 0, "NFC of 3000 random combining texts is valid and idempotent (%d: first failing case)", bad);
    for (int t = 0; t < 3000; t++) {
        unsigned char s[64];
        size_t len = next() % 64, n1;
        for (size_t i = 0; i < len; i++) s[i] = (unsigned char)(next() % 4 ? 0x80 | next() % 0x80 : next());
        free(utf8_nfc((char *)s, len, &n1));
    }
    check(1, "NFC survives 3000 random byte strings");
}

void test_unicode(void) {
    test_utf8();
    test_classes();
    test_nfc_edges();
    test_normalization_file();
}
