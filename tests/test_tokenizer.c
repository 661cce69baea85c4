// Tokenizer: ids against the HF Rust tokenizer's goldens (tests/tokenizer/, made by
// tests/gen_tokenizer_golden.mjs), decoding and streaming, chat templates against @huggingface/jinja
// renderings of the real templates, and the command line's --tokenize and tokenizer errors.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/check.h"

typedef struct {
    JsonFile f;
    const JsonNode *cases, *decode;
} Golden;

static int golden_open(Golden *g, const char *path) {
    if (!json_file_open(&g->f, path, 0)) {
        check(0, "%s: missing", path);
        return 0;
    }
    g->cases = json_get(&g->f.json, g->f.root, "cases");
    g->decode = json_get(&g->f.json, g->f.root, "decode");
    return 1;
}

// ids of a JSON array, malloc'd.
static int *json_ids(const Json *j, const JsonNode *arr, int *n) {
    int *ids = xmalloc((size_t)(arr->count ? arr->count : 1) * sizeof *ids);
    *n = 0;
    for (const JsonNode *e = json_first(j, arr); e; e = json_next(j, e)) ids[(*n)++] = (int)e->num;
    return ids;
}

static char *ids_str(const int *ids, int n) {
    static char buf[400];
    size_t o = 0;
    buf[0] = 0;
    for (int i = 0; i < n && o < sizeof buf - 16; i++) o += (size_t)snprintf(buf + o, sizeof buf - o, "%s%d", i ? " " : "", ids[i]);
    return buf;
}

// Every golden case: encode gives HF's ids, and decode(encode(x)) is NFC(x).
static void check_encode(Tokenizer *t, const char *golden_path) {
    Golden g;
    if (!golden_open(&g, golden_path)) return;
    const Json *j = &g.f.json;
    const JsonNode *add = json_get(j, g.f.root, "add_special_tokens");
    int add_special = add && add->type == JSON_TRUE;
    int n_cases = 0, id_bad = 0, round_bad = 0;
    char first_id_bad[600] = "", first_round_bad[300] = "";
    for (const JsonNode *c = json_first(j, g.cases); c; c = json_next(j, c), n_cases++) {
        const JsonNode *text = json_get(j, c, "text");
        int n_want, n_got;
        int *want = json_ids(j, json_get(j, c, "ids"), &n_want);
        char err[160];
        int *got = tokenizer_encode(t, text->str, text->len, add_special, &n_got, err, sizeof err);
        if (!got || n_got != n_want || memcmp(got, want, (size_t)n_got * sizeof *got)) {
            if (!id_bad++) {
                int k = 0;  // first differing id
                while (got && k < n_got && k < n_want && got[k] == want[k]) k++;
                snprintf(first_id_bad, sizeof first_id_bad, "case %d '%.60s': ids differ at %d: got [%s]", n_cases, text->str, k,
                         got ? ids_str(got + k, n_got - k < 8 ? n_got - k : 8) : err);
            }
        } else {
            size_t len, nfc_len;
            char *back = tokenizer_decode(t, got, n_got, 0, &len);
            char *nfc = utf8_nfc(text->str, text->len, &nfc_len);
            // The BOS a post-processor adds decodes to its own text in front.
            size_t skip = 0;
            for (int i = 0; add_special && i < n_got && tokenizer_is_special(t, got[i]) && i < 1; i++) tokenizer_bytes(t, got[i], &skip);
            if (len - skip != nfc_len || memcmp(back + skip, nfc, nfc_len))
                if (!round_bad++) snprintf(first_round_bad, sizeof first_round_bad, "case %d '%.60s'", n_cases, text->str);
            free(back);
            free(nfc);
        }
        free(want);
        free(got);
    }
    check(n_cases >= 100 && id_bad == 0, "%s: %d/%d cases give HF's ids %s", golden_path, n_cases - id_bad, n_cases, first_id_bad);
    check(n_cases >= 100 && round_bad == 0, "%s: decode(encode(x)) == NFC(x) for %d/%d cases %s", golden_path, n_cases - round_bad,
          n_cases, first_round_bad);

    // HF's decode, with and without special tokens, and the same text streamed token by token.
    int n_dec = 0, dec_bad = 0, stream_bad = 0;
    char first_dec_bad[300] = "";
    for (const JsonNode *c = json_first(j, g.decode); c; c = json_next(j, c), n_dec++) {
        int n;
        int *ids = json_ids(j, json_get(j, c, "ids"), &n);
        int skip = json_get(j, c, "skip_special")->type == JSON_TRUE;
        const JsonNode *want = json_get(j, c, "text");
        size_t len;
        char *got = tokenizer_decode(t, ids, n, skip, &len);
        if (len != want->len || memcmp(got, want->str, len))
            if (!dec_bad++) snprintf(first_dec_bad, sizeof first_dec_bad, "case %d [%s] -> '%.60s'", n_dec, ids_str(ids, n), got);
        // Streaming: every chunk is whole UTF-8, and the chunks add up to the same text.
        Utf8Stream st = {{0}, 0};
        char *streamed = xmalloc(len + 16), chunk[3 * (256 + 4)];
        size_t o = 0;
        int ok = 1;
        for (int i = 0; i < n; i++) {
            size_t bl;
            const char *b = tokenizer_bytes(t, ids[i], &bl);
            if (!b || (skip && tokenizer_is_special(t, ids[i])) || bl > 256) continue;
            size_t k = utf8_stream_push(&st, b, bl, chunk);
            ok &= utf8_invalid_offset(chunk, k) < 0 && o + k <= len;
            if (o + k <= len) memcpy(streamed + o, chunk, k);
            o += k;
        }
        size_t k = utf8_stream_finish(&st, chunk);
        if (o + k <= len) memcpy(streamed + o, chunk, k);
        o += k;
        if (!ok || o != len || memcmp(streamed, got, len)) stream_bad++;
        free(streamed);
        free(got);
        free(ids);
    }
    if (g.decode) {
        check(n_dec >= 100 && dec_bad == 0, "%s: %d/%d decode cases give HF's text %s", golden_path, n_dec - dec_bad, n_dec, first_dec_bad);
        check(n_dec >= 100 && stream_bad == 0, "%s: streamed decoding matches for %d/%d cases, in whole characters", golden_path,
              n_dec - stream_bad, n_dec);
    }
    json_file_close(&g.f);
}

// U+FFFD rules of the stream on raw bytes.
static void test_stream(void) {
    static const struct { const char *in, *out; } cases[] = {
        {"a\xe4\xb8", "a\xef\xbf\xbd"},                 // truncated at the end: one U+FFFD
        {"\xe4\xb8" "a", "\xef\xbf\xbd" "a"},           // maximal subpart, then the next character
        {"\xc0\xaf", "\xef\xbf\xbd\xef\xbf\xbd"},       // overlong lead: each byte
        {"\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},  // surrogate: lead, then two strays
        {"\xf0\x9f\x98\x80", "\xf0\x9f\x98\x80"},       // a whole emoji
        {"\xf4\x90\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},  // above U+10FFFF
        {"\x80x", "\xef\xbf\xbdx"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        // Byte by byte, as tokens arrive.
        Utf8Stream st = {{0}, 0};
        char out[64];
        size_t o = 0;
        for (const char *p = cases[i].in; *p; p++) o += utf8_stream_push(&st, p, 1, out + o);
        o += utf8_stream_finish(&st, out + o);
        check(o == strlen(cases[i].out) && !memcmp(out, cases[i].out, o), "utf8 stream case %zu: %zu bytes out", i, o);
    }
}

// Chat templates: the real ones rendered by @huggingface/jinja.
static void test_chat(void) {
    static const struct { const char *name, *file, *bos; ChatFormat format; } templates[] = {
        {"qwen3", "tests/tokenizer/templates/qwen3.jinja", NULL, CHAT_QWEN3},
        {"qwen2.5-instruct", "tests/tokenizer/templates/qwen2.5-instruct.jinja", NULL, CHAT_CHATML},
        {"r1-distill-qwen", "tests/tokenizer/templates/r1-distill-qwen.jinja", "<｜begin▁of▁sentence｜>", CHAT_DEEPSEEK},
    };
    ChatTemplate ct[3];
    for (int i = 0; i < 3; i++) {
        // A model directory with chat_template.jinja (and the BOS in tokenizer_config.json).
        char dir[600], cmd[1400];
        snprintf(dir, sizeof dir, "%s/chat-%s", tmpdir, templates[i].name);
        snprintf(cmd, sizeof cmd, "mkdir -p '%s' && cp '%s' '%s/chat_template.jinja'", dir, templates[i].file, dir);
        if (system(cmd) != 0) check(0, "cannot set up %s", dir);
        if (templates[i].bos) {
            char path[700], text[200];
            snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
            snprintf(text, sizeof text, "{\"bos_token\": \"%s\"}", templates[i].bos);
            write_text(path, text);
        }
        chat_template_load(&ct[i], dir);
        check(ct[i].format == templates[i].format, "%s template is recognized as %s", templates[i].name, chat_format_name(ct[i].format));
    }
    check(ct[1].default_system && !strcmp(ct[1].default_system, "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
          "qwen2.5-instruct default system prompt: %s", ct[1].default_system ? ct[1].default_system : "(none)");
    check(ct[2].think_in_prompt, "r1-distill-qwen generation prompt opens <think>");

    // The golden file is a JSON array, so it is parsed here rather than through json_file_open.
    JsonFile f = {"tests/tokenizer/chat_golden.json", {0}, NULL};
    size_t len;
    char *text = read_file(f.path, READ_ANY_SIZE, &len);
    if (!text || json_parse(&f.json, text, len)) {
        check(0, "%s: missing or not JSON", f.path);
        free(text);
        return;
    }
    free(text);
    f.root = json_root(&f.json);
    const Json *j = &f.json;
    int n_cases[3] = {0}, bad[3] = {0};
    for (const JsonNode *c = json_first(j, f.root); c; c = json_next(j, c)) {
        const char *name = json_get(j, c, "template")->str;
        int k = 0;
        while (k < 3 && strcmp(name, templates[k].name)) k++;
        if (k == 3) continue;
        const JsonNode *msgs = json_get(j, c, "messages"), *think = json_get(j, c, "enable_thinking");
        ChatMessage m[16];
        int n = 0;
        for (const JsonNode *e = json_first(j, msgs); e && n < 16; e = json_next(j, e))
            m[n++] = (ChatMessage){json_get(j, e, "role")->str, json_get(j, e, "content")->str};
        int thinking = think->type == JSON_TRUE ? 1 : think->type == JSON_FALSE ? 0 : -1;
        char *got = chat_render(&ct[k], m, n, json_get(j, c, "add_generation_prompt")->type == JSON_TRUE, thinking);
        const char *want = json_get(j, c, "text")->str;
        n_cases[k]++;
        if (strcmp(got, want)) {
            if (!bad[k]++) {
                size_t d = 0;
                while (got[d] && got[d] == want[d]) d++;
                check(0, "%s case %d (%d messages, thinking %d) differs at byte %zu: got '%.40s', want '%.40s'", name, n_cases[k], n,
                      thinking, d, got + d, want + d);
            }
        }
        free(got);
    }
    for (int k = 0; k < 3; k++)
        check(n_cases[k] >= 10 && bad[k] == 0, "%s: %d/%d chats rendered as jinja renders them", templates[k].name, n_cases[k] - bad[k],
              n_cases[k]);
    json_file_close(&f);

    // A ChatML chat grows by appending: first turn + reply + chat_render_next == the whole chat. (Qwen3
    // and DeepSeek drop earlier replies' reasoning, so there the cache holds more than a re-render.)
    ChatMessage m[4] = {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello!"}, {"user", "Bye"}};
    char *first = chat_render(&ct[1], m, 2, 1, -1), *next = chat_render_next(&ct[1], "Bye", -1);
    char *whole = chat_render(&ct[1], m, 4, 1, -1), grown[2000];
    snprintf(grown, sizeof grown, "%s%s%s", first, "Hello!", next);
    check(!strcmp(grown, whole), "chatml: first turn + reply + chat_render_next == the whole chat rendered at once");
    free(first), free(next), free(whole);
    for (int k = 0; k < 3; k++) chat_template_free(&ct[k]);

    // The real Qwen3 tokenizer_config.json selects its template from the file itself.
    ChatTemplate q;
    chat_template_load(&q, "tests/tokenizer/qwen3");
    check(q.format == CHAT_QWEN3, "tests/tokenizer/qwen3/tokenizer_config.json: %s template", chat_format_name(q.format));
    chat_template_free(&q);
}

// 50,000 added tokens, some prefixes of others, over 1 MB of text: the longest one at each position
// wins (HF's leftmost-longest), found through the automaton.
static void test_many_added(void) {
    char *small = slurp("tests/tokenizer/small/tokenizer.json");
    char *at = strstr(small, "\"added_tokens\": [") + strlen("\"added_tokens\": [");
    size_t cap = strlen(small) + 50000 * 128, n = 0;
    char *json = xmalloc(cap);
    n += (size_t)snprintf(json + n, cap - n, "%.*s", (int)(at - small), small);
    for (int k = 0; k < 50000; k++)
        n += (size_t)snprintf(json + n, cap - n, "{\"id\":%d,\"content\":\"<t%d%s\",\"special\":true},", 4000 + k, k / 2,
                              k % 2 ? ">>" : ">");
    snprintf(json + n, cap - n, "%s", at);
    const char *path = tmp_path("many_added.json");
    write_text(path, json);
    free(json);
    free(small);
    Tokenizer *t = tokenizer_load(path);
    // "<t7>>" is one token (id 4015), longer than "<t7>" (id 4014), repeated to 1 MB.
    size_t len = 1 << 20;
    char *text = xmalloc(len + 1);
    for (size_t i = 0; i < len; i += 5) memcpy(text + i, "<t7>>", len - i < 5 ? len - i : 5);
    text[len] = 0;
    char err[200];
    int n_ids;
    int *ids = tokenizer_encode(t, text, len - len % 5, 0, &n_ids, err, sizeof err);
    int ok = ids && n_ids == (int)(len / 5);
    for (int i = 0; ok && i < n_ids; i++) ok = ids[i] == 4015;
    check(ok, "tokenizer: 50,000 added tokens over 1 MB of text, the longest match at every position (%d ids)", n_ids);
    free(ids);
    int *two = tokenizer_encode(t, "x<t3><t3>>", 10, 0, &n_ids, err, sizeof err);
    check(two && n_ids == 3 && two[1] == 4006 && two[2] == 4007, "tokenizer: '<t3>' then '<t3>>' as two added tokens");
    free(two);
    free(text);
    tokenizer_free(t);
}

// The added-token json of tests/tokenizer/small/tokenizer.json with tokens[0..n) added at ids 5000...
static Tokenizer *small_with_added(const char *name, char *const *tokens, int n) {
    char *small = slurp("tests/tokenizer/small/tokenizer.json");
    char *at = strstr(small, "\"added_tokens\": [") + strlen("\"added_tokens\": [");
    size_t cap = strlen(small) + 100, len = 0;
    for (int k = 0; k < n; k++) cap += strlen(tokens[k]) + 64;
    char *json = xmalloc(cap);
    len += (size_t)snprintf(json + len, cap - len, "%.*s", (int)(at - small), small);
    for (int k = 0; k < n; k++)
        len += (size_t)snprintf(json + len, cap - len, "{\"id\":%d,\"content\":\"%s\",\"special\":false},", 5000 + k, tokens[k]);
    snprintf(json + len, cap - len, "%s", at);
    const char *path = tmp_path(name);
    write_text(path, json);
    free(json);
    free(small);
    return tokenizer_load(path);
}

static unsigned rng_next(unsigned *s) { return *s = *s * 1103515245u + 12345u, *s >> 16; }

// Added tokens that overlap every way (prefixes, suffixes, a 1 KB one and near misses of it) against a
// brute-force leftmost-longest cut: at each position the longest token that starts there, else one
// byte on; the text between cuts is encoded by the same file without these tokens.
static void test_added_overlaps(void) {
    char *long_a = xmalloc(1026), *long_d = xmalloc(1026);
    memset(long_a, 'a', 1024), long_a[1024] = 'b', long_a[1025] = 0;  // a^1024 b
    memset(long_d + 1, 'd', 1024), long_d[0] = 'c', long_d[1025] = 0;  // c d^1024
    char *tokens[] = {"ab", "abc", "bcd", "b", "cdab", "dd", "dab", "bcda", "abcdabcd", "ca", long_a, long_d};
    int n_tok = (int)(sizeof tokens / sizeof *tokens);
    Tokenizer *t = small_with_added("overlaps.json", tokens, n_tok);
    Tokenizer *plain = tokenizer_load("tests/tokenizer/small/tokenizer.json");
    unsigned seed = 12345;
    char err[200];
    int bad = 0, cases = 400, cuts = 0, long_cuts = 0;
    char *text = xmalloc(4096);
    for (int c = 0; c < cases; c++) {
        // Random letters of {a,b,c,d}, now and then a run of a or d near the long tokens' length.
        size_t n = 0, want = 1 + rng_next(&seed) % 60;
        while (n < want) {
            unsigned r = rng_next(&seed) % 40;
            if (r == 0 || r == 1) {
                size_t run = 1020 + rng_next(&seed) % 8;
                memset(text + n, r ? 'd' : 'a', run);
                n += run;
            } else {
                text[n++] = (char)('a' + rng_next(&seed) % 4);
            }
        }
        text[n] = 0;
        int *expect = xmalloc((n + 1) * sizeof *expect), n_expect = 0;
        size_t seg = 0;
        for (size_t i = 0; i < n;) {
            int best = -1;
            size_t best_len = 0;
            for (int k = 0; k < n_tok; k++) {
                size_t l = strlen(tokens[k]);
                if (l <= n - i && l > best_len && !memcmp(text + i, tokens[k], l)) best = k, best_len = l;
            }
            if (best < 0) {
                i++;
                continue;
            }
            int n_seg, *seg_ids = tokenizer_encode(plain, text + seg, i - seg, 0, &n_seg, err, sizeof err);
            for (int k = 0; k < n_seg; k++) expect[n_expect++] = seg_ids[k];
            free(seg_ids);
            expect[n_expect++] = 5000 + best;
            cuts++, long_cuts += best_len > 1000;
            i += best_len;
            seg = i;
        }
        int n_seg, *seg_ids = tokenizer_encode(plain, text + seg, n - seg, 0, &n_seg, err, sizeof err);
        for (int k = 0; k < n_seg; k++) expect[n_expect++] = seg_ids[k];
        free(seg_ids);
        int n_ids, *ids = tokenizer_encode(t, text, n, 0, &n_ids, err, sizeof err);
        int same = ids && n_ids == n_expect && !memcmp(ids, expect, (size_t)n_ids * sizeof *ids);
        if (!same && bad++ < 3) fprintf(stderr, "  added tokens cut differently in '%.80s' (%zu bytes)\n", text, n);
        free(ids);
        free(expect);
    }
    check(bad == 0 && long_cuts > 0, "tokenizer: overlapping added tokens, leftmost-longest on %d random texts (%d cuts, %d of 1 KB): %d differ",
          cases, cuts, long_cuts, bad);
    free(text);

    // Near misses of the 1 KB tokens over 1 MB: a bounded number of automaton steps per byte (each byte
    // one step, plus at most one failure step for every step taken down), where the longest
    // token's length per position would be about 10^9.
    size_t len = 1 << 20;
    char *near = xmalloc(len);
    const char *fill[] = {"a^n", "d^n", "(a^1023 b)^n", "(c d^1023)^n"};  // each a byte short of a token
    for (int f = 0; f < 4; f++) {
        for (size_t i = 0; i < len; i++) {
            size_t r = i % 1024;
            near[i] = f == 0 ? 'a' : f == 1 ? 'd' : f == 2 ? (r == 1023 ? 'b' : 'a') : (r == 0 ? 'c' : 'd');
        }
        size_t before = tokenizer_added_steps(t);
        int n_ids, *ids = tokenizer_encode(t, near, len, 0, &n_ids, err, sizeof err);
        size_t steps = tokenizer_added_steps(t) - before;
        check(ids && n_ids > 0 && steps >= len && steps <= 2 * len, "tokenizer: 1 MB of near misses of a 1 KB added token ('%s'): %zu automaton steps, at most 2 per byte",
              fill[f], steps);
        free(ids);
    }
    free(near);
    tokenizer_free(plain);
    tokenizer_free(t);
    free(long_a);
    free(long_d);
}

// An R1 template without a BOS text renders from an empty start (a NULL array once reached memcpy).
static void test_empty_bos(void) {
    ChatTemplate ct;
    chat_template_select(&ct, "{{'<｜Assistant｜>'}}", NULL);
    ChatMessage m = {"user", "Hi"};
    char *s = chat_render(&ct, &m, 1, 1, -1);
    check(ct.format == CHAT_DEEPSEEK && !strcmp(s, "<｜User｜>Hi<｜Assistant｜>"),
          "R1 template without bos_token: '%s'", s);
    free(s);
    chat_template_free(&ct);
}

void test_tokenizer(void) {
    test_many_added();
    test_added_overlaps();
    test_empty_bos();
    test_stream();
    Tokenizer *qwen3 = tokenizer_load("tests/tokenizer/qwen3/tokenizer.json");
    check(tokenizer_n_ids(qwen3) == 151669, "qwen3 tokenizer: %d ids", tokenizer_n_ids(qwen3));
    check(tokenizer_find(qwen3, "<|im_end|>") == 151645 && tokenizer_is_special(qwen3, 151645) && !tokenizer_is_special(qwen3, 151667),
          "qwen3 tokenizer: <|im_end|> is special 151645, <think> is not special");
    check_encode(qwen3, "tests/tokenizer/golden_qwen3.json");
    char err[160];
    int n;
    int *ids = tokenizer_encode(qwen3, "ok\xe4\xb8", 4, 0, &n, err, sizeof err);
    check(!ids && strstr(err, "offset 2"), "invalid UTF-8 is refused with its offset: %s", err);
    tokenizer_free(qwen3);

    Tokenizer *small = tokenizer_load("tests/tokenizer/small/tokenizer.json");
    check_encode(small, "tests/tokenizer/golden_small.json");
    tokenizer_free(small);
    test_chat();
}

// ---------------------------------------------------------------------------------------------
// The command line


// A model directory holding only a tokenizer.json with the given text.
static char *tokenizer_dir(const char *name, const char *json) {
    char *dir = tmp_path(name), cmd[700];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", dir);
    if (system(cmd) != 0) check(0, "cannot make %s", dir);
    char path[600];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    write_text(path, json);
    return dir;
}

void test_tokenizer_cli(const char *nano) {
    {
        char *args[] = {"-m", "tests/tokenizer/qwen3", "--tokenize", "Hello, world! <think>x</think>", NULL};
        Run r = run_nano(nano, args, NULL);
        check(r.status == 0 && !strcmp(r.out, "9707 11 1879 0 220 151667 87 151668"), "%s --tokenize: %s", nano, r.out);
        run_free(&r);
    }
    {
        const char *path = tmp_path("text.txt");
        write_text(path, "12345\n\n  leading spaces and trailing   ");
        char *args[] = {"-m", "tests/tokenizer/qwen3", "--tokenize-file", (char *)path, NULL};
        Run r = run_nano(nano, args, NULL);
        check(r.status == 0 && !strcmp(r.out, "16 17 18 19 20 271 220 6388 12621 323 27748 262"), "%s --tokenize-file: %s", nano, r.out);
        run_free(&r);
    }
    {
        Tokenizer *small = tokenizer_load("tests/tokenizer/small/tokenizer.json");
        char want[32];
        snprintf(want, sizeof want, "%d ", tokenizer_find(small, "<｜begin▁of▁sentence｜>"));
        tokenizer_free(small);
        char *args[] = {"-m", "tests/tokenizer/small", "--tokenize", "Hi", NULL};  // R1-style BOS from the post-processor
        Run r = run_nano(nano, args, NULL);
        check(r.status == 0 && !strncmp(r.out, want, strlen(want)), "%s --tokenize adds the post-processor's BOS (%s): %s", nano, want, r.out);
        run_free(&r);
    }
    {
        const char *path = tmp_path("nul.txt");  // NUL bytes are text too, and must not share a cache entry
        write_bytes(path, "\0\0\0 1\0", 6);
        char *args[] = {"-m", "tests/tokenizer/qwen3", "--tokenize-file", (char *)path, NULL};
        Run r = run_nano(nano, args, NULL);
        check(r.status == 0 && !strcmp(r.out, "188 188 188 220 16 188"), "%s --tokenize-file with NUL bytes (HF: 188 188 188 220 16 188): %s",
              nano, r.out);
        run_free(&r);
    }
    // Bad input: the file and the field.
    char *bad_utf8[] = {"-m", "tests/tokenizer/qwen3", "--tokenize", "ab\xff", NULL};
    expect_error(nano, "invalid UTF-8 in --tokenize", "invalid UTF-8 at byte offset 2", bad_utf8);
    char *no_tok[] = {"-m", tmpdir, "--tokenize", "x", NULL};
    expect_error(nano, "no tokenizer.json", "no tokenizer.json", no_tok);
    static const struct { const char *what, *json, *expect; } broken[] = {
        {"not JSON", "{\"model\": ", "bad JSON"},
        {"null pre_tokenizer", "{\"pre_tokenizer\": null}", "'pre_tokenizer' must be"},
        {"no model",
         "{\"normalizer\": {\"type\": \"NFC\"}, \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", "
         "\"pattern\": {\"Regex\": \"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}| "
         "?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"}, \"behavior\": \"Isolated\"}, "
         "{\"type\": \"ByteLevel\"}]}, \"decoder\": {\"type\": \"ByteLevel\"}}",
         "missing 'model'"},
        {"wrong regex",
         "{\"normalizer\": {\"type\": \"NFC\"}, \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", "
         "\"pattern\": {\"Regex\": \"\\\\s+\"}, \"behavior\": \"Isolated\"}, {\"type\": \"ByteLevel\"}]}, \"decoder\": {\"type\": "
         "\"ByteLevel\"}, \"model\": {}}",
         "'pre_tokenizer' must be Qwen's"},
        {"wrong normalizer", "{\"normalizer\": {\"type\": \"NFKC\"}}", "'normalizer' must be NFC"},
    };
    for (size_t i = 0; i < sizeof broken / sizeof *broken; i++) {
        char name[32];
        snprintf(name, sizeof name, "badtok%zu", i);
        char *dir = tokenizer_dir(name, broken[i].json);
        char *args[] = {"-m", dir, "--tokenize", "x", NULL};
        expect_error(nano, broken[i].what, broken[i].expect, args);
    }
    // Fields that change HF's encoding, set in an otherwise good tokenizer.json: refused, not ignored.
    static const struct { const char *what, *from, *to, *expect; } fields[] = {
        {"BPE dropout", "\"dropout\": null", "\"dropout\": 0.1", "'model.dropout' must be null"},
        {"end_of_word_suffix", "\"end_of_word_suffix\": \"\"", "\"end_of_word_suffix\": \"</w>\"", "'model.end_of_word_suffix' must be empty"},
        {"continuing_subword_prefix", "\"continuing_subword_prefix\": \"\"", "\"continuing_subword_prefix\": \"##\"",
         "'model.continuing_subword_prefix' must be empty"},
        {"added token lstrip", "\"lstrip\":false", "\"lstrip\":true", "'added_tokens[0].lstrip' must be false"},
        {"added token rstrip", "\"rstrip\":false", "\"rstrip\":true", "'added_tokens[0].rstrip' must be false"},
        {"added token single_word", "\"single_word\":false", "\"single_word\":true", "'added_tokens[0].single_word' must be false"},
        {"added token normalized", "\"normalized\":false", "\"normalized\":true", "'added_tokens[0].normalized' must be false"},
        {"post-processor id not a token", "\"ids\":[3259]", "\"ids\":[99999]",
         "'post_processor.special_tokens' id 99999 of '<｜begin▁of▁sentence｜>' is not a token of the vocabulary"},
    };
    char *small = slurp("tests/tokenizer/small/tokenizer.json");
    for (size_t i = 0; i < sizeof fields / sizeof *fields; i++) {
        char *at = strstr(small, fields[i].from), name[32];
        size_t n = strlen(small) + 64;
        char *edited = xmalloc(n);
        snprintf(edited, n, "%.*s%s%s", (int)(at ? at - small : 0), small, fields[i].to, at ? at + strlen(fields[i].from) : "");
        snprintf(name, sizeof name, "fieldtok%zu", i);
        char *args[] = {"-m", tokenizer_dir(name, edited), "--tokenize", "x", NULL};
        expect_error(nano, fields[i].what, fields[i].expect, args);
        free(edited);
    }
    free(small);
}
