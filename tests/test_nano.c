// CPU test suite: parser and number-format units in process, then the nano binaries end to end —
// HF transformers' golden logits on checkpoint fixtures, and every kind of bad input.
//   build/san/test_nano NANO [NANO ...]     (make test passes the release and the ASan+UBSan builds)
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "nano.h"
#include "tests/check.h"
#include "tests/golden.h"

int n_pass, n_fail;

void check(int ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%s ", ok ? "ok  " : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    if (ok) n_pass++;
    else n_fail++;
}

char tmpdir[64];

// A path in the test's scratch directory; the result lives until the fourth call after it.
char *tmp_path(const char *name) {
    static char buf[4][512];
    static int k;
    char *p = buf[k++ % 4];
    snprintf(p, sizeof buf[0], "%s/%s", tmpdir, name);
    return p;
}

void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n || fclose(f)) {
        fprintf(stderr, "test: cannot write %s\n", path);
        exit(2);
    }
}

void write_text(const char *path, const char *text) { write_bytes(path, text, strlen(text)); }

// ---------------------------------------------------------------------------------------------
// JSON

static int json_ok(const char *text) {
    Json j;
    int rc = json_parse(&j, text, strlen(text));
    json_free(&j);
    return rc == 0;
}

static void test_json(void) {
    const char *good[] = {"{}", "[]", " {\"a\": [1, -2.5e3, true, false, null, \"x\"]} ", "0", "-0.0E+1", "\"\\u00e9\\ud83d\\ude00\"",
                          "{\"a\":{\"b\":{\"c\":[[[]]]}}}", "\"caf\xc3\xa9\""};
    const char *bad[] = {"", "{", "[1,]", "{\"a\":1,}", "{'a':1}", "01", "1.", ".5", "1e", "-", "tru", "nul", "[1 2]",
                         "{\"a\" 1}", "\"abc", "\"\\x\"", "\"\\ud83d\"", "\"\\ude00\"", "\"\\u12g4\"", "\"a\tb\"",
                         "{} x", "\"\xff\"", "\"\xc0\xaf\"", "\"\xed\xa0\x80\"", "\"\\u0000\"", "[1]]", "NaN", "Infinity"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) check(json_ok(good[i]), "json accepts %s", good[i]);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) check(!json_ok(bad[i]), "json rejects '%s'", bad[i]);

    // Depth: 64 nested arrays parse, 65 do not.
    char deep[200];
    for (int d = JSON_MAX_DEPTH; d <= JSON_MAX_DEPTH + 1; d++) {
        memset(deep, '[', (size_t)d);
        memset(deep + d, ']', (size_t)d);
        deep[2 * d] = 0;
        check(json_ok(deep) == (d <= JSON_MAX_DEPTH), "json %s %d nested arrays", d <= JSON_MAX_DEPTH ? "accepts" : "rejects", d);
    }
    size_t big = 1 << 20;
    char *flood = malloc(big + 1);
    memset(flood, '[', big);
    flood[big] = 0;
    check(!json_ok(flood), "json rejects 1 MiB of '['");
    free(flood);

    // Values and lookups, and that parsing never reads past len (the buffer is not NUL-terminated).
    check(!json_ok("{\"n\": 1, \"m\": 2, \"n\": 3}") && !json_ok("[{\"a\": {}, \"a\": 1}]"), "json rejects duplicate keys");
    check(json_ok("[{\"a\": 1}, {\"a\": 1, \"b\": {\"a\": 2}}]"), "json accepts equal keys in different objects");
    const char *doc = "{\"n\": 12, \"f\": 0.5, \"s\": \"a\\nb\", \"l\": [3, 4]}";
    Json j;
    int rc = json_parse(&j, doc, strlen(doc));
    const JsonNode *root = json_root(&j);
    const JsonNode *n = json_get(&j, root, "n"), *f = json_get(&j, root, "f"), *s = json_get(&j, root, "s"),
                   *l = json_get(&j, root, "l");
    check(rc == 0 && n && n->is_integer && n->num == 12 && f && !f->is_integer && f->num == 0.5,
          "json numbers");
    check(s && s->type == JSON_STRING && s->len == 3 && strcmp(s->str, "a\nb") == 0, "json string escapes");
    check(l && l->count == 2 && json_first(&j, l)->num == 3 && json_next(&j, json_first(&j, l))->num == 4, "json arrays");
    check(!json_get(&j, root, "missing") && !json_get(&j, n, "x"), "json lookup of absent keys");
    json_free(&j);
    char nonterm[3] = {'1', '2', '3'};
    rc = json_parse(&j, nonterm, 2);
    check(rc == 0 && json_root(&j)->num == 12, "json respects the length of an unterminated buffer");
    json_free(&j);
}

// ---------------------------------------------------------------------------------------------
// Number formats and RoPE frequencies

static void test_numbers(void) {
    check(f32_to_bf16(1.0f) == 0x3F80 && bf16_to_f32(0x3F80) == 1.0f, "bf16 1.0");
    check(f32_to_bf16(bf16_to_f32(0x3F80) + ldexpf(1, -8)) == 0x3F80, "bf16 rounds a tie to even (down)");
    check(f32_to_bf16(bf16_to_f32(0x3F81) + ldexpf(1, -8)) == 0x3F82, "bf16 rounds a tie to even (up)");
    check(isnan(bf16_to_f32(f32_to_bf16(NAN))) && f32_to_bf16(INFINITY) == 0x7F80, "bf16 NaN and Inf");
    check(f16_to_f32(0x3C00) == 1.0f && f16_to_f32(0xC000) == -2.0f && f16_to_f32(0x7BFF) == 65504.0f, "f16 normals");
    check(f16_to_f32(0x0001) == ldexpf(1, -24) && f16_to_f32(0x03FF) == ldexpf(1023, -24), "f16 subnormals");
    check(isinf(f16_to_f32(0x7C00)) && isnan(f16_to_f32(0x7E00)), "f16 Inf and NaN");

    // Check values from the spec: D=128, theta=1e6; YaRN factor 4 over 32768 positions.
    Config c = {0};
    c.head_dim = 128;
    c.rope_theta = 1e6f;
    float inv[64];
    float scale = rope_frequencies(&c, inv);
    check(fabsf(inv[1] - 0.80584f) < 1e-5f && scale == 1.0f, "rope inv_freq[1] = %.6f (0.80584)", inv[1]);
    c.rope_type = ROPE_YARN;
    c.rope_factor = 4;
    c.rope_orig_max_pos = 32768;
    c.yarn_beta_fast = 32;
    c.yarn_beta_slow = 1;
    c.yarn_attention_factor = 0.1f * logf(4) + 1;
    scale = rope_frequencies(&c, inv);
    check(fabsf(inv[23] / 0.0069783f - 1) < 1e-4f && fabsf(inv[40] / 4.4457e-5f - 1) < 1e-4f && fabsf(scale - 1.13863f) < 1e-5f,
          "yarn inv_freq[23] = %.7g (0.0069783), [40] = %.5g (4.4457e-5), mscale %.5f", inv[23], inv[40], scale);
    check(inv[0] == 1.0f && fabsf(inv[63] * 4 * powf(1e6f, 126.0f / 128) - 1) < 1e-5f, "yarn keeps high frequencies, divides low ones by the factor");
}

// ---------------------------------------------------------------------------------------------
// safetensors writer for synthetic files

typedef struct {
    const char *name, *dtype;
    int ndim;
    int64_t shape[3];
    long long begin, end;  // -1: computed contiguously
} Spec;

static size_t dtype_size(const char *dt) { return !strcmp(dt, "F32") ? 4 : !strcmp(dt, "I64") ? 8 : 2; }

static int64_t spec_bytes(const Spec *s) {
    int64_t n = (int64_t)dtype_size(s->dtype);
    for (int i = 0; i < s->ndim; i++) n *= s->shape[i];
    return n;
}

// Writes n tensors of small random values at their offsets (-1: contiguous); the data section holds
// end - begin bytes for each tensor, as a writer would have written. Returns the file's size.
// data_extra: bytes added (or, negative, removed) after the data; hlen_extra: added to the header length field.
static long poison_offset = -1;  // write_st stores a NaN at this byte offset of the data

static size_t write_st(const char *path, const Spec *specs, int n, long data_extra, long long hlen_extra) {
    char header[16384];
    size_t hl = 0;
    long long off = 0, data_end = 0;  // data_end: what a writer of these shapes would have written
    hl += (size_t)snprintf(header + hl, sizeof header - hl, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = 0; i < n; i++) {
        const Spec *s = &specs[i];
        long long b = s->begin >= 0 ? s->begin : off, e = s->end >= 0 ? s->end : b + spec_bytes(s);
        if (s->begin >= 0 && s->end < 0) e = b + spec_bytes(s);
        hl += (size_t)snprintf(header + hl, sizeof header - hl, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", s->name, s->dtype);
        for (int d = 0; d < s->ndim; d++) hl += (size_t)snprintf(header + hl, sizeof header - hl, "%s%lld", d ? "," : "", (long long)s->shape[d]);
        hl += (size_t)snprintf(header + hl, sizeof header - hl, "],\"data_offsets\":[%lld,%lld]}", b, e);
        off = e;
        data_end += e - b;
    }
    hl += (size_t)snprintf(header + hl, sizeof header - hl, "}");
    while (hl % 8) header[hl++] = ' ';
    long long data_len = data_end + data_extra;
    size_t total = 8 + hl + (size_t)(data_len > 0 ? data_len : 0);
    uint8_t *buf = calloc(1, total);
    uint64_t field = (uint64_t)((long long)hl + hlen_extra);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(field >> (8 * i));
    memcpy(buf + 8, header, hl);
    // Random F32 values in [-0.5, 0.5); other dtypes get zeros, since only their layout matters here.
    uint32_t r = 12345;
    for (size_t i = 8 + hl; i + 4 <= total; i += 4) {
        r = r * 1664525u + 1013904223u;
        float v = (float)(r >> 8) / 16777216.0f - 0.5f;
        memcpy(buf + i, &v, 4);
    }
    if (poison_offset >= 0) memcpy(buf + 8 + hl + poison_offset, &(float){NAN}, 4);
    write_bytes(path, buf, total);
    free(buf);
    return total;
}

static void test_safetensors(void) {
    Spec ok[] = {{"a", "F32", 2, {2, 3}, -1, -1}, {"b", "BF16", 1, {4}, -1, -1}, {"c", "I64", 0, {0}, -1, -1}};
    const char *path = tmp_path("unit.safetensors");
    size_t size = write_st(path, ok, 3, 0, 0);
    size_t len;
    uint8_t *buf = (uint8_t *)read_file(path, READ_ANY_SIZE, &len);
    SafeTensors st = {0};
    char err[512] = "";
    int rc = st_parse(&st, buf, size, path, err, sizeof err);
    check(rc == 0 && st.n_tensors == 3 && st.tensors[0].dtype == DT_F32 && st.tensors[0].shape[1] == 3 &&
              st.tensors[1].dtype == DT_BF16 && st.tensors[2].ndim == 0 && st.tensors[2].nbytes == 8,
          "safetensors parses dtypes, shapes and a scalar (%s)", err);
    st_free(&st);
    free(buf);

    struct { const char *what, *expect; Spec s[2]; int n; long extra; long long hextra; } bad[] = {
        {"truncated data", "reach beyond", {{"a", "F32", 2, {2, 3}, -1, -1}}, 1, -4, 0},
        {"trailing data", "after the last tensor", {{"a", "F32", 2, {2, 3}, -1, -1}}, 1, 4, 0},
        {"header length beyond the file", "beyond the end of the file", {{"a", "F32", 1, {2}, -1, -1}}, 1, 0, 1000},
        {"offsets out of bounds", "reach beyond", {{"a", "F32", 1, {2}, 0, 8}, {"b", "F32", 1, {2}, 1000, 1008}}, 2, 0, 0},
        {"overlapping offsets", "overlap", {{"a", "F32", 1, {4}, 0, 16}, {"b", "F32", 1, {2}, 8, 16}}, 2, 0, 0},
        {"gap between tensors", "unused data bytes", {{"a", "F32", 1, {2}, 0, 8}, {"b", "F32", 1, {2}, 12, 20}}, 2, 4, 0},
        {"begin after end", "begin <= end", {{"a", "F32", 1, {2}, 8, 0}}, 1, 0, 0},
        {"unknown dtype", "unknown dtype 'Q4'", {{"a", "Q4", 1, {2}, 0, 4}}, 1, 0, 0},
        {"shape does not match bytes", "need a different number", {{"a", "F32", 1, {3}, 0, 8}}, 1, 0, 0},
        {"duplicate tensor", "duplicate key 'a'", {{"a", "F32", 1, {2}, -1, -1}, {"a", "F32", 1, {2}, -1, -1}}, 2, 0, 0},
        {"shape overflow", "too many", {{"a", "F32", 3, {1LL << 40, 1LL << 40, 1LL << 40}, 0, 8}}, 1, 0, 0},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        size = write_st(path, bad[i].s, bad[i].n, bad[i].extra, bad[i].hextra);
        buf = (uint8_t *)read_file(path, READ_ANY_SIZE, &len);
        memset(&st, 0, sizeof st);
        err[0] = 0;
        rc = st_parse(&st, buf, size, path, err, sizeof err);
        check(rc != 0 && strstr(err, bad[i].expect), "safetensors rejects %s: %s", bad[i].what, err);
        st_free(&st);
        free(buf);
    }
    uint8_t tiny[5] = {1, 2, 3, 4, 5};
    memset(&st, 0, sizeof st);
    check(st_parse(&st, tiny, sizeof tiny, "tiny", err, sizeof err) != 0 && strstr(err, "too short"), "safetensors rejects a 5-byte file: %s", err);
    st_free(&st);
    uint8_t huge[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    memset(&st, 0, sizeof st);
    check(st_parse(&st, huge, sizeof huge, "huge", err, sizeof err) != 0 && strstr(err, "limit"), "safetensors rejects a 2^64 header length: %s", err);
    st_free(&st);
}

// ---------------------------------------------------------------------------------------------
// Running nano


void run_free(Run *r) {
    free(r->out);
    free(r->err);
}

char *slurp(const char *path) {
    size_t len;
    char *s = read_file(path, READ_ANY_SIZE, &len);
    return s ? s : calloc(1, 1);
}

// The files of a run's stdout and stderr (not through tmp_path: its buffers are the callers').
static void run_files(const char *tag, char out[512], char err[512]) {
    snprintf(out, 512, "%s/%sstdout.txt", tmpdir, tag);
    snprintf(err, 512, "%s/%sstderr.txt", tmpdir, tag);
}

// Starts argv with stdout/stderr into the files named by tag; a run past 120 s is killed (SIGALRM
// survives exec). Returns its process id for run_wait.
int run_start(char *const argv[], int expect_failure, const char *tag) {
    char out[512], err[512];
    run_files(tag, out, err);
    pid_t pid = fork();
    if (pid == 0) {
        int fo = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644), fe = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fo, 1);
        dup2(fe, 2);
        // fatal() exits without freeing by design: leak checks only judge successful runs.
        if (expect_failure) setenv("ASAN_OPTIONS", "detect_leaks=0", 1);
        alarm(120);
        execv(argv[0], argv);
        _exit(127);
    }
    return (int)pid;
}

Run run_wait(int pid, const char *tag) {
    char out[512], err[512];
    run_files(tag, out, err);
    int ws;
    waitpid((pid_t)pid, &ws, 0);
    Run r = {WIFEXITED(ws) ? WEXITSTATUS(ws) : -WTERMSIG(ws), slurp(out), slurp(err)};
    size_t n = strlen(r.out);
    if (n && r.out[n - 1] == '\n') r.out[n - 1] = 0;  // the one line of ids, for messages and comparisons
    return r;
}

Run run(char *const argv[], int expect_failure) { return run_wait(run_start(argv, expect_failure, ""), ""); }

Run run_nano(const char *nano, char **args, const char *stdin_path) {
    char *argv[40];
    int n = 0;
    argv[n++] = (char *)nano;
    while (*args && n < 39) argv[n++] = *args++;
    argv[n] = NULL;
    if (!stdin_path) return run(argv, 0);
    // Interactive runs read a file as stdin: the child inherits descriptor 0.
    int saved = dup(0), fd = open(stdin_path, O_RDONLY);
    dup2(fd, 0);
    close(fd);
    Run r = run(argv, 0);
    dup2(saved, 0);
    close(saved);
    return r;
}

int count_lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

// A bad input must give exit status 1 and exactly one stderr line that contains expect.
void expect_error(const char *nano, const char *what, const char *expect, char **args) {
    char *argv[32];
    int n = 0;
    argv[n++] = (char *)nano;
    while (*args && n < 31) argv[n++] = *args++;
    argv[n] = NULL;
    Run r = run(argv, 1);
    char *nl = strchr(r.err, '\n');
    if (nl && nl[1] == 0) *nl = 0;
    check(r.status == 1 && count_lines(r.err) == 0 && strstr(r.err, expect) != NULL, "%s: %s -> status %d, stderr: %s", nano,
          what, r.status, r.err);
    run_free(&r);
}

// ---------------------------------------------------------------------------------------------
// A tiny synthetic Qwen3 model, then broken copies of it

#define TINY_CONFIG                                                                                                     \
    "{\"model_type\": \"qwen3\", \"hidden_size\": 8, \"intermediate_size\": 16, \"num_hidden_layers\": 1,"              \
    " \"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"head_dim\": 4, \"vocab_size\": 32,"                    \
    " \"tie_word_embeddings\": true, \"rope_theta\": 10000.0, \"rms_norm_eps\": 1e-6, \"max_position_embeddings\": 64}"

static Spec tiny_specs[] = {
    {"model.embed_tokens.weight", "F32", 2, {32, 8}, -1, -1},
    {"model.layers.0.input_layernorm.weight", "F32", 1, {8}, -1, -1},
    {"model.layers.0.self_attn.q_proj.weight", "F32", 2, {8, 8}, -1, -1},
    {"model.layers.0.self_attn.k_proj.weight", "F32", 2, {4, 8}, -1, -1},
    {"model.layers.0.self_attn.v_proj.weight", "F32", 2, {4, 8}, -1, -1},
    {"model.layers.0.self_attn.q_norm.weight", "F32", 1, {4}, -1, -1},
    {"model.layers.0.self_attn.k_norm.weight", "F32", 1, {4}, -1, -1},
    {"model.layers.0.self_attn.o_proj.weight", "F32", 2, {8, 8}, -1, -1},
    {"model.layers.0.post_attention_layernorm.weight", "F32", 1, {8}, -1, -1},
    {"model.layers.0.mlp.gate_proj.weight", "F32", 2, {16, 8}, -1, -1},
    {"model.layers.0.mlp.up_proj.weight", "F32", 2, {16, 8}, -1, -1},
    {"model.layers.0.mlp.down_proj.weight", "F32", 2, {8, 16}, -1, -1},
    {"model.norm.weight", "F32", 1, {8}, -1, -1},
};
#define N_TINY ((int)(sizeof tiny_specs / sizeof *tiny_specs))

// Makes tmpdir/name holding config (NULL: none) and the given tensors; returns the directory.
static char *make_model(const char *name, const char *config, const Spec *specs, int n, long extra, long long hextra) {
    char *dir = tmp_path(name);
    mkdir(dir, 0755);
    char path[600];
    if (config) {
        snprintf(path, sizeof path, "%s/config.json", dir);
        write_text(path, config);
    }
    if (specs) {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        write_st(path, specs, n, extra, hextra);
    }
    return dir;
}

static char *config_with(const char *from, const char *to) {
    static char buf[2048];
    const char *at = strstr(TINY_CONFIG, from);
    snprintf(buf, sizeof buf, "%.*s%s%s", (int)(at - TINY_CONFIG), TINY_CONFIG, to, at + strlen(from));
    return buf;
}

static void test_bad_input(const char *nano) {
    char dir[600];
    snprintf(dir, sizeof dir, "%s", make_model("tiny", TINY_CONFIG, tiny_specs, N_TINY, 0, 0));
    {  // an extra tensor is reported on stderr, and the model still runs
        Spec s[N_TINY + 1];
        memcpy(s, tiny_specs, sizeof tiny_specs);
        s[N_TINY] = (Spec){"model.layers.0.self_attn.o_proj.bias", "F32", 1, {8}, -1, -1};
        char *extra = make_model("extra", TINY_CONFIG, s, N_TINY + 1, 0, 0);
        char *argv[] = {(char *)nano, "-m", extra, "--prompt-ids", "1 2 3", "-n", "2", "--print-ids", "--ref", NULL};
        Run r = run(argv, 0);
        check(r.status == 0 && strstr(r.err, "1 tensor(s) in the checkpoint are not used, e.g. 'model.layers.0.self_attn.o_proj.bias'"),
              "%s: unused tensors are reported (status %d)", nano, r.status);
        run_free(&r);
    }
    {  // the positive control: the same tiny model runs
        char *argv[] = {(char *)nano, "-m", dir, "--prompt-ids", "1 2 3", "-n", "4", "--temp", "0", "--print-ids", "--ref", NULL};
        Run r = run(argv, 0);
        int a, b, c, d;
        check(r.status == 0 && sscanf(r.out, "%d %d %d %d", &a, &b, &c, &d) == 4, "%s: tiny synthetic model runs (status %d): %s",
              nano, r.status, r.out);
        run_free(&r);
    }
#define BAD(what, expect, ...)                                  \
    do {                                                        \
        char *args_[] = {__VA_ARGS__, NULL};                    \
        expect_error(nano, what, expect, args_);                \
    } while (0)
#define RUN_ON(d) "-m", (d), "--prompt-ids", "1 2 3", "-n", "2", "--print-ids", "--ref"

    BAD("missing model directory", "No such file", RUN_ON(tmp_path("does-not-exist")));
    BAD("model path is a file", "not a directory", RUN_ON(tmp_path("stdout.txt")));
    BAD("missing config.json", "config.json", RUN_ON(make_model("noconfig", NULL, tiny_specs, N_TINY, 0, 0)));
    BAD("missing safetensors", "no model.safetensors", RUN_ON(make_model("noweights", TINY_CONFIG, NULL, 0, 0, 0)));
    BAD("truncated safetensors", "truncated", RUN_ON(make_model("truncated", TINY_CONFIG, tiny_specs, N_TINY, -100, 0)));
    BAD("header length beyond the file", "beyond the end of the file",
        RUN_ON(make_model("hlen", TINY_CONFIG, tiny_specs, N_TINY, 0, 1 << 20)));
    {
        Spec s[N_TINY];
        memcpy(s, tiny_specs, sizeof s);
        s[N_TINY - 1].begin = 4000, s[N_TINY - 1].end = 4032;
        BAD("offsets out of bounds", "reach beyond", RUN_ON(make_model("oob", TINY_CONFIG, s, N_TINY, 0, 0)));
        memcpy(s, tiny_specs, sizeof s);
        s[2].begin = 0, s[2].end = 256;  // q_proj on top of the embedding
        BAD("overlapping offsets", "overlap", RUN_ON(make_model("overlap", TINY_CONFIG, s, N_TINY, 0, 0)));
        memcpy(s, tiny_specs, sizeof s);
        s[1].dtype = "F7";
        s[1].end = -1;
        BAD("unknown dtype", "unknown dtype 'F7'", RUN_ON(make_model("dtype", TINY_CONFIG, s, N_TINY, 0, 0)));
        memcpy(s, tiny_specs, sizeof s);
        s[1].dtype = "I64";
        s[1].ndim = 1, s[1].shape[0] = 4;  // same byte size as 8 F32
        BAD("unsupported dtype", "dtype I64, expected BF16, F16 or F32", RUN_ON(make_model("i64", TINY_CONFIG, s, N_TINY, 0, 0)));
        memcpy(s, tiny_specs, sizeof s);
        s[3].shape[0] = 8;  // k_proj [8,8] where [4,8] is expected
        BAD("wrong shape", "'model.layers.0.self_attn.k_proj.weight' has shape [8, 8], expected [4, 8]",
            RUN_ON(make_model("shape", TINY_CONFIG, s, N_TINY, 0, 0)));
    }
    BAD("missing tensor", "'model.norm.weight' is missing", RUN_ON(make_model("missing", TINY_CONFIG, tiny_specs, N_TINY - 1, 0, 0)));
    BAD("missing q_norm of Qwen3", "q_norm.weight' is missing",
        RUN_ON(make_model("noqnorm", TINY_CONFIG, (Spec[]){tiny_specs[0], tiny_specs[1], tiny_specs[2], tiny_specs[3], tiny_specs[4]}, 5, 0, 0)));
    BAD("bad JSON in config", "bad JSON", RUN_ON(make_model("badjson", "{\"model_type\": \"qwen3\",}", tiny_specs, N_TINY, 0, 0)));
    {
        char deep[400] = "{\"model_type\": \"qwen3\", \"x\": ";
        size_t n = strlen(deep);
        for (int i = 0; i < 100; i++) deep[n++] = '[';
        for (int i = 0; i < 100; i++) deep[n++] = ']';
        strcpy(deep + n, "}");
        BAD("deeply nested config", "nesting deeper than", RUN_ON(make_model("deep", deep, tiny_specs, N_TINY, 0, 0)));
    }
    // Configs that differ from the tiny one by one edit: {what, expected message, dir, from, to}.
    static const char *config_edits[][5] = {
        {"unsupported model_type", "unsupported model_type 'llama'", "llama", "\"qwen3\"", "\"llama\""},
        {"model_type not a string", "'model_type' must be a string (\"qwen2\" or \"qwen3\")", "mtnum", "\"qwen3\"", "3"},
        {"missing config field", "missing 'hidden_size'", "nohidden", "\"hidden_size\"", "\"hidden_sizes\""},
        {"config field of the wrong type", "'num_hidden_layers' must be an integer", "layerstr", "\"num_hidden_layers\": 1", "\"num_hidden_layers\": \"1\""},
        {"heads not a multiple of kv heads", "not a multiple of num_key_value_heads", "gqa", "\"num_key_value_heads\": 1", "\"num_key_value_heads\": 3"},
        {"unsupported rope type", "unsupported rope type 'longrope'", "longrope", "\"rope_theta\": 10000.0", "\"rope_scaling\": {\"rope_type\": \"longrope\", \"factor\": 2}"},
        {"sliding-window layers", "only full_attention is supported", "swa", "\"rope_theta\"", "\"layer_types\": [\"sliding_attention\"], \"rope_theta\""},
        {"duplicate key in config", "duplicate key 'hidden_size'", "dupkey", "\"hidden_size\": 8", "\"hidden_size\": 8, \"hidden_size\": 16"},
        {"Qwen3 attention_bias needs biases", "'model.layers.0.self_attn.q_proj.bias' is missing", "qwen3bias", "\"rope_theta\"", "\"attention_bias\": true, \"rope_theta\""},
        {"Qwen3 without head_dim", "missing 'head_dim'", "nohd", "\"head_dim\"", "\"head_dims\""},
        {"Qwen2 head_dim from hidden_size beyond 4096", "hidden_size 8192 / num_attention_heads 1 gives head_dim 8192, more than 4096",
         "hd8k", "\"qwen3\", \"hidden_size\": 8, \"intermediate_size\": 16, \"num_hidden_layers\": 1, \"num_attention_heads\": 2, "
                 "\"num_key_value_heads\": 1, \"head_dim\": 4,",
         "\"qwen2\", \"hidden_size\": 8192, \"intermediate_size\": 16, \"num_hidden_layers\": 1, \"num_attention_heads\": 1, "
         "\"num_key_value_heads\": 1,"},
        {"yarn with rope_theta 1", "yarn needs rope_theta > 1", "theta1", "\"rope_theta\": 10000.0", "\"rope_theta\": 1, \"rope_scaling\": {\"type\": \"yarn\", \"factor\": 2}"},
        {"nested config field out of range", "'rope_scaling.factor' must be a number", "factor", "\"rope_theta\": 10000.0", "\"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 0.5}"},
    };
    BAD("BOM before config.json", "a UTF-8 byte order mark (EF BB BF) before the JSON text",
        RUN_ON(make_model("bomconfig", "\xEF\xBB\xBF" TINY_CONFIG, tiny_specs, N_TINY, 0, 0)));
    {  // model.safetensors as a link to nothing, and as a loop of links
        char *dangling = make_model("dangling", TINY_CONFIG, NULL, 0, 0, 0), link[600];
        snprintf(link, sizeof link, "%s/model.safetensors", dangling);
        if (symlink("gone.safetensors", link) != 0) perror("symlink");
        BAD("dangling link as model.safetensors", "model.safetensors: a symbolic link to a file that does not exist", RUN_ON(tmp_path("dangling")));
        char *loop = make_model("looping", TINY_CONFIG, NULL, 0, 0, 0);
        snprintf(link, sizeof link, "%s/model.safetensors", loop);
        if (symlink("model.safetensors", link) != 0) perror("symlink");
        BAD("link loop as model.safetensors", "model.safetensors: a loop of symbolic links", RUN_ON(tmp_path("looping")));
    }
    {
        Spec s[N_TINY];
        memcpy(s, tiny_specs, sizeof s);
        s[N_TINY - 1].begin = 1LL << 60, s[N_TINY - 1].end = (1LL << 60) + 32;
        BAD("offsets beyond 2^53", "'model.norm.weight': data_offsets beyond 2^53 bytes", RUN_ON(make_model("huge_off", TINY_CONFIG, s, N_TINY, 0, 0)));
    }
    for (size_t i = 0; i < sizeof config_edits / sizeof *config_edits; i++) {
        const char *const *e = config_edits[i];
        BAD(e[0], e[1], RUN_ON(make_model(e[2], config_with(e[3], e[4]), tiny_specs, N_TINY, 0, 0)));
    }
    {  // a sharded checkpoint: an index and one shard, no model.safetensors
        char *sharded = make_model("index", TINY_CONFIG, NULL, 0, 0, 0), index[600], shard[600];
        snprintf(index, sizeof index, "%s/model.safetensors.index.json", sharded);
        snprintf(shard, sizeof shard, "%s/model-00001-of-00001.safetensors", sharded);
        write_st(shard, tiny_specs, N_TINY, 0, 0);
        write_text(index, "{\"metadata\": {}, \"weight_map\": {\"model.norm.weight\": \"../tiny/model.safetensors\"}}");
        BAD("shard path escaping the directory", "plain file name", RUN_ON(tmp_path("index")));
        write_text(index, "{\"metadata\": {}, \"weight_map\": {\"model.norm.weight\": \"model-00002-of-00002.safetensors\"}}");
        BAD("missing shard file", "model-00002-of-00002.safetensors: No such file", RUN_ON(tmp_path("index")));
        write_text(index, "{\"metadata\": {}, \"weight_map\": {\"model.nope.weight\": \"model-00001-of-00001.safetensors\"}}");
        BAD("index names a tensor its shard lacks", "lists tensor 'model.nope.weight'", RUN_ON(tmp_path("index")));
        write_text(index, "{\"metadata\": {}, \"weight_map\": []}");
        BAD("index without a weight_map object", "'weight_map'", RUN_ON(tmp_path("index")));
    }
    {
        char *fifo_dir = make_model("fifo", NULL, tiny_specs, N_TINY, 0, 0), fifo[600];
        snprintf(fifo, sizeof fifo, "%s/config.json", fifo_dir);
        mkfifo(fifo, 0644);
        BAD("config.json is a FIFO", "config.json: not a regular file", RUN_ON(fifo_dir));
    }
    {  // hostile names cannot break the one-line error
        Spec s[N_TINY + 1];
        memcpy(s, tiny_specs, sizeof tiny_specs);
        s[N_TINY] = (Spec){"evil\\nname", "F7", 1, {2}, -1, -1};  // a JSON escape: the decoded name holds a newline
        BAD("tensor name with a newline", "'evil?name' has unknown dtype", RUN_ON(make_model("evil", TINY_CONFIG, s, N_TINY + 1, 0, 0)));
    }
    BAD("prompt id >= vocab", "id 32 at token 1 is outside the vocabulary [0, 32)", "-m", dir, "--prompt-ids", "1 32", "--print-ids", "--ref");
    BAD("negative prompt id", "outside the vocabulary", "-m", dir, "--prompt-ids", "-1", "--print-ids", "--ref");
    BAD("prompt id not a number", "is not an integer", "-m", dir, "--prompt-ids", "1 2x", "--print-ids", "--ref");
    BAD("empty prompt", "no ids given", "-m", dir, "--prompt-ids", " ", "--print-ids", "--ref");
    BAD("prompt longer than ctx", "prompt of 3 tokens is longer than the context of 2 tokens", "-m", dir, "--prompt-ids", "1 2 3",
        "-c", "2", "--print-ids", "--ref");
    BAD("bad -n", "-n: expected an integer", "-m", dir, "--prompt-ids", "1", "-n", "ten", "--print-ids");
    BAD("bad --temp", "--temp: expected a number", "-m", dir, "--prompt-ids", "1", "--temp", "nan", "--print-ids");
    BAD("bad --kv", "--kv: unknown format 'q3'", "-m", dir, "--prompt-ids", "1", "--kv", "q3");
    BAD("unknown option", "unknown option '--frobnicate'", "-m", dir, "--frobnicate", "1");
    BAD("missing option value", "-c: missing value", "-m", dir, "--prompt-ids", "1", "-c");
    BAD("missing string value", "--system: missing value", "-m", dir, "--prompt-ids", "1", "--system");
    BAD("no model", "no model", "--prompt-ids", "1");
    BAD("unwritable --dump-logits", "--dump-logits", "-m", dir, "--prompt-ids", "1", "--dump-logits", tmp_path("no/such/dir/x.f32"),
        "--ref");
}

// ---------------------------------------------------------------------------------------------
// HF transformers goldens


// Compares nano's dumped logits with HF's: max |diff| <= tol * max|logit| and the same argmax at every
// position whose top two HF logits are further apart than that bound. Returns max|diff| / max|logit|.
static double compare_logits(const Golden *g, const float *got, double tol, int *argmax_mismatch) {
    double max_abs = 0, max_diff = 0;
    size_t n = (size_t)g->n_prompt * g->vocab;
    for (size_t i = 0; i < n; i++) {
        if (fabs(g->logits[i]) > max_abs) max_abs = fabs(g->logits[i]);
        double d = fabs((double)got[i] - g->logits[i]);
        if (!(d <= max_diff)) max_diff = d;  // NaN propagates as a failure
    }
    *argmax_mismatch = 0;
    for (int t = 0; t < g->n_prompt; t++) {
        const float *ref = g->logits + (size_t)t * g->vocab, *x = got + (size_t)t * g->vocab;
        int a = 0, b = 0, second = -1;
        for (int i = 1; i < g->vocab; i++) {
            if (ref[i] > ref[a]) a = i;
            if (x[i] > x[b]) b = i;
        }
        for (int i = 0; i < g->vocab; i++)
            if (i != a && (second < 0 || ref[i] > ref[second])) second = i;
        if (a != b && ref[a] - ref[second] > tol * max_abs) (*argmax_mismatch)++;
    }
    return max_diff / max_abs;
}

static char *ids_text(const int *ids, int n) {
    char *s = malloc((size_t)n * 12 + 1);
    size_t len = 0;
    s[0] = 0;
    for (int i = 0; i < n; i++) len += (size_t)sprintf(s + len, "%s%d", i ? " " : "", ids[i]);
    return s;
}

// One fixture, one way of running it: --kv FORMAT, prefill chunk -b BATCH.
// greedy: the greedy ids must be transformers' (not for int8: a wider rounding flips near-ties of these
// random fixtures, and one flip changes every id after it).
static void check_fixture(const char *nano, const char *dir, const char *name, const Golden *g, const char *kv, const char *batch,
                          double tol, int greedy) {
    char *prompt = ids_text(g->prompt, g->n_prompt), *want = ids_text(g->greedy, g->n_greedy);
    char n_arg[16];
    snprintf(n_arg, sizeof n_arg, "%d", g->n_greedy);
    const char *dump = tmp_path("logits.f32");
    unlink(dump);
    char *argv[] = {(char *)nano, "-m", (char *)dir, "--prompt-ids", prompt, "-n", n_arg, "--temp", "0", "--print-ids",
                    "--dump-logits", (char *)dump, "--kv", (char *)kv, "-b", (char *)batch, "--ref", NULL};
    Run r = run(argv, 0);
    size_t len = 0;
    float *got = (float *)read_file(dump, READ_ANY_SIZE, &len);
    int mismatch = -1;
    double rel = -1;
    if (r.status == 0 && got && len == 4 * (size_t)g->n_prompt * g->vocab) rel = compare_logits(g, got, tol, &mismatch);
    check(rel >= 0 && rel <= tol && mismatch == 0, "%s %s --kv %s -b %s: logits max|diff|/max|logit| = %.2e (<= %.0e), argmax mismatches %d, status %d%s%s",
          nano, name, kv, batch, rel, tol, mismatch, r.status, r.status ? ": " : "", r.status ? r.err : "");
    if (greedy)
        check(r.status == 0 && strcmp(r.out, want) == 0, "%s %s --kv %s -b %s: greedy ids [%s] (HF [%s])", nano, name, kv, batch, r.out, want);
    free(got);
    free(prompt);
    free(want);
    run_free(&r);
}

static int test_fixtures_in(const char *nano, const char *root) {
    char *names[64];
    int n = fixture_names(root, names, 64), found = 0;
    for (int i = 0; i < n; i++) {
        char dir[600], golden[700];
        snprintf(dir, sizeof dir, "%s/%s", root, names[i]);
        snprintf(golden, sizeof golden, "%s/golden.bin", dir);
        Golden g;
        if (access(golden, F_OK) == 0) {
            found++;
            if (load_golden(golden, &g)) {
                check(0, "%s: unreadable golden file", golden);
            } else {
                // f32 KV holds exactly what HF attends over: HF's fp32 tolerance applies, for prefill in one
                // chunk and for every token through the decode path (-b 1).
                check_fixture(nano, dir, names[i], &g, "f32", "128", 1e-4, 1);
                check_fixture(nano, dir, names[i], &g, "f32", "1", 1e-4, 1);
                // bf16 KV rounds K and V to 8 mantissa bits, f16 to 11, int8 to a 127th of a row's largest
                // element; measured bounds (up to 1.6e-2, 5.8e-4 and 1.7e-2), see README. (The 4-bit formats
                // are checked on the trained model's perplexity: on random weights every logit moves.)
                check_fixture(nano, dir, names[i], &g, "bf16", "7", 2e-2, 1);
                check_fixture(nano, dir, names[i], &g, "f16", "7", 1e-3, 1);
                check_fixture(nano, dir, names[i], &g, "int8", "7", 3e-2, 0);
                golden_free(&g);
            }
        }
        free(names[i]);
    }
    return found;
}

// Stopping and sampling, on the tiny synthetic model and a fixture.
static void test_generation(const char *nano) {
    char dir[600];
    snprintf(dir, sizeof dir, "%s", tmp_path("tiny"));
    {  // a stop id from generation_config.json ends the run and is printed
        char *argv[] = {(char *)nano, "-m", dir, "--prompt-ids", "1 2 3", "-n", "6", "--temp", "0", "--print-ids", "--ref", NULL};
        Run r = run(argv, 0);
        int ids[6], n = sscanf(r.out, "%d %d %d %d %d %d", &ids[0], &ids[1], &ids[2], &ids[3], &ids[4], &ids[5]);
        char gen[700], text[64];
        snprintf(gen, sizeof gen, "%s/generation_config.json", dir);
        snprintf(text, sizeof text, "{\"eos_token_id\": [%d]}", n >= 3 ? ids[2] : 0);
        write_text(gen, text);
        // The first earlier id equal to the stop id ends the run there.
        int stop = 0;
        while (stop < 2 && ids[stop] != ids[2]) stop++;
        Run r2 = run(argv, 0);
        int got[6], m = sscanf(r2.out, "%d %d %d %d %d %d", &got[0], &got[1], &got[2], &got[3], &got[4], &got[5]);
        check(n == 6 && m == stop + 1 && got[stop] == ids[2], "%s: generation stops at and prints the eos id %d: [%s]", nano, ids[2], r2.out);
        unlink(gen);
        run_free(&r);
        run_free(&r2);
    }
    {  // a full context stops generation with a note
        char *argv[] = {(char *)nano, "-m", dir, "--prompt-ids", "1 2 3", "-n", "10", "-c", "5", "--temp", "0", "--print-ids", "--ref", NULL};
        Run r = run(argv, 0);
        int a, b, c, d;
        check(r.status == 0 && sscanf(r.out, "%d %d %d %d", &a, &b, &c, &d) == 3 && strstr(r.err, "context of 5 tokens is full"),
              "%s: -c 5 with a 3-token prompt gives 3 tokens, then stops: [%s]", nano, r.out);
        run_free(&r);
    }
    {  // sampling: a seed reproduces its output, ids stay in the vocabulary
        char *argv[] = {(char *)nano, "-m", dir, "--prompt-ids", "1 2 3", "-n", "24", "--temp", "1.5", "-s", "7", "--print-ids", "--ref", NULL};
        Run r1 = run(argv, 0), r2 = run(argv, 0);
        int n = 0, in_vocab = 1;
        for (char *p = r1.out, *end; *p && *p != '\n'; p = end, n++) {
            long v = strtol(p, &end, 10);
            if (end == p) break;
            in_vocab &= v >= 0 && v < 32;
        }
        check(r1.status == 0 && n == 24 && in_vocab && strcmp(r1.out, r2.out) == 0, "%s: --temp 1.5 -s 7 is reproducible and in range: %s",
              nano, r1.out);
        run_free(&r1);
        run_free(&r2);
    }
    {  // NaN weights stop the run instead of printing token 0 forever. The embedding is the tied head,
       // so a NaN in row 5 makes the logit of id 5 NaN from the first position on.
        poison_offset = 5 * 8 * 4;
        char bad[600];
        snprintf(bad, sizeof bad, "%s", make_model("nan", TINY_CONFIG, tiny_specs, N_TINY, 0, 0));
        poison_offset = -1;
        char *args[] = {"-m", bad, "--prompt-ids", "1 2", "--print-ids", "--ref", NULL};
        expect_error(nano, "NaN in the embedding", "non-finite logit", args);
        char *dump_args[] = {"-m", bad, "--prompt-ids", "1 2 3", "--dump-logits", tmp_path("nan.f32"), "--ref", NULL};
        expect_error(nano, "NaN with --dump-logits", "for id 5 at position 0", dump_args);
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s NANO_BINARY [NANO_BINARY ...]\n", argv[0]);
        return 2;
    }
    snprintf(tmpdir, sizeof tmpdir, "/tmp/nano-test-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 2;
    }
    test_json();
    test_numbers();
    test_safetensors();
    test_unicode();
    test_tokenizer();
    test_sampling();
    test_kv();
    test_fuzz();
    for (int i = 1; i < argc; i++) {
        test_bad_input(argv[i]);
        test_generation(argv[i]);
        test_tokenizer_cli(argv[i]);
        test_modes(argv[i], i == 1);
        test_files(argv[i], i == 1);
        test_usage(argv[i], i == 1);
        test_bench(argv[i], i == 1);
        int found = test_fixtures_in(argv[i], "tests/fixtures") + test_fixtures_in(argv[i], "models");
        check(found >= 7, "%s: found %d HF fixtures (expected at least 7)", argv[i], found);
    }
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "test: could not remove %s\n", tmpdir);
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
