// nano: command line, generation loop and sampler.
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "nano.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "nano reads little-endian safetensors in place and needs a little-endian host"
#endif

#define DEFAULT_CTX 4096
#define DEFAULT_BATCH 128

typedef struct {
    const char *model_dir;
    const char *prompt_ids;   // "1 2 3"
    const char *dump_logits;  // path
    const char *tokenize;       // text
    const char *tokenize_file;  // path
    int n_predict;
    int ctx;                  // 0: default
    int batch;
    float temp;
    unsigned long long seed;
    int print_ids;
    int force_ref;
    KVFormat kv;
} Options;

static void usage(FILE *out) {
    fprintf(out,
            "Usage: nano -m DIR --prompt-ids \"ID ID ...\" [options]\n"
            "Runs a Hugging Face Qwen2/2.5/3 or DeepSeek-R1-Distill-Qwen checkpoint directory as downloaded.\n"
            "Example: nano -m models/qwen3-tiny-random --prompt-ids \"1 2 3\" -n 16 --temp 0 --print-ids\n"
            "\n"
            "Model and prompt:\n"
            "  -m, --model DIR         checkpoint directory (config.json + *.safetensors)\n"
            "      --prompt-ids IDS    prompt as token ids, space or comma separated\n"
            "Generation:\n"
            "  -n, --n-predict N       max new tokens (default 128; 0 runs only the prompt)\n"
            "      --temp T            sampling temperature; 0 = greedy (default 0.7)\n"
            "  -s, --seed S            sampling seed (default 42)\n"
            "  -c, --ctx N             KV cache capacity in tokens (default min(%d, max_position_embeddings))\n"
            "  -b, --batch N           prefill the prompt in chunks of N tokens (default %d)\n"
            "      --kv FORMAT         KV cache format: bf16 (default) or f32 (exact, for checking)\n"
            "      --ref               use the scalar reference path (the default without a GPU)\n"
            "Output:\n"
            "      --print-ids         print generated token ids on stdout\n"
            "      --dump-logits PATH  write fp32 logits for every prompt position, [n_prompt x vocab], little endian\n"
            "  -h, --help              this text\n",
            DEFAULT_CTX, DEFAULT_BATCH);
}

static long parse_long(const char *flag, const char *s, long lo, long hi) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) fatal("%s: expected an integer in [%ld, %ld], got '%s'", flag, lo, hi, s);
    return v;
}

static float parse_float(const char *flag, const char *s, float lo, float hi) {
    char *end;
    double v = strtod(s, &end);  // range errors are left to the bounds: a tiny value underflowing to 0 is fine
    if (end == s || *end || !(v >= lo && v <= hi)) fatal("%s: expected a number in [%g, %g], got '%s'", flag, lo, hi, s);
    return (float)v;
}

static void parse_args(Options *o, int argc, char **argv) {
    memset(o, 0, sizeof *o);
    o->n_predict = 128;
    o->batch = DEFAULT_BATCH;
    o->temp = 0.7f;
    o->seed = 42;
    o->kv = KV_BF16;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); exit(0); }
        if (!strcmp(a, "--print-ids")) { o->print_ids = 1; continue; }
        if (!strcmp(a, "--ref")) { o->force_ref = 1; continue; }
        if (a[0] != '-') fatal("unexpected argument '%s' (see --help)", a);
        if (i + 1 >= argc) fatal("%s: missing value", a);
        const char *v = argv[++i];
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) o->model_dir = v;
        else if (!strcmp(a, "--prompt-ids")) o->prompt_ids = v;
        else if (!strcmp(a, "--dump-logits")) o->dump_logits = v;
        else if (!strcmp(a, "--tokenize")) o->tokenize = v;
        else if (!strcmp(a, "--tokenize-file")) o->tokenize_file = v;
        else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) o->n_predict = (int)parse_long(a, v, 0, 1 << 30);
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx")) o->ctx = (int)parse_long(a, v, 1, 1 << 24);
        else if (!strcmp(a, "-b") || !strcmp(a, "--batch")) o->batch = (int)parse_long(a, v, 1, 1 << 16);
        else if (!strcmp(a, "--temp")) o->temp = parse_float(a, v, 0.0f, 100.0f);
        else if (!strcmp(a, "-s") || !strcmp(a, "--seed")) o->seed = (unsigned long long)parse_long(a, v, 0, 0x7fffffffffffffffL);
        else if (!strcmp(a, "--kv")) {
            if (kv_format_parse(v, &o->kv)) fatal("--kv: unknown format '%s' (expected bf16 or f32)", v);
        } else if (!strcmp(a, "-p") || !strcmp(a, "--prompt") || !strcmp(a, "-i") || !strcmp(a, "-f"))
            fatal("%s: text prompts need the tokenizer, which nano does not have yet; give the prompt with --prompt-ids", a);
        else fatal("unknown option '%s' (see --help)", a);
    }
    if (!o->model_dir) fatal("no model: pass -m DIR (see --help)");
    if (o->tokenize || o->tokenize_file) return;
    if (!o->prompt_ids) fatal("no prompt: pass --prompt-ids \"ID ID ...\" (see --help)");
}

#define ID_SEPARATORS " ,\t\r\n"

// Ids separated by spaces or commas; each must index the embedding.
static int *parse_prompt_ids(const char *s, int vocab, int *n_out) {
    int n = 0, cap = 16;
    int *ids = xmalloc((size_t)cap * sizeof *ids);
    for (const char *p = s;;) {
        while (*p && strchr(ID_SEPARATORS, *p)) p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || (*end && !strchr(ID_SEPARATORS, *end)))
            fatal("--prompt-ids: '%.20s' at token %d is not an integer", p, n);
        if (v < 0 || v >= vocab) fatal("--prompt-ids: id %ld at token %d is outside the vocabulary [0, %d)", v, n, vocab);
        if (n == cap) ids = realloc(ids, (size_t)(cap *= 2) * sizeof *ids);
        if (!ids) fatal("out of memory");
        ids[n++] = (int)v;
        p = end;
    }
    if (!n) fatal("--prompt-ids: no ids given");
    *n_out = n;
    return ids;
}

// ---------------------------------------------------------------------------------------------
// Sampling

static unsigned long long rng_state;

static float rng_uniform(void) {  // xorshift64*, 24 random bits in [0, 1)
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (float)((rng_state * 0x2545F4914F6CDD1DULL) >> 40) / 16777216.0f;
}

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

// Samples from softmax(logits / temp) over ids [0, n); greedy when temp == 0. Clobbers logits.
static int sample(float *logits, int n, float temp) {
    int best = argmax(logits, n);
    if (temp == 0.0f) return best;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += logits[i] = expf((logits[i] - logits[best]) / temp);
    double r = rng_uniform() * sum, acc = 0;
    for (int i = 0; i < n; i++)
        if ((acc += logits[i]) > r) return i;
    return best;
}

// Garbage must never be printed silently: NaN/Inf logits stop the run.
// logits holds rows x vocab values for positions first_pos, first_pos+1, ...
static void check_logits(const float *logits, int rows, int vocab, int first_pos) {
    for (size_t i = 0; i < (size_t)rows * vocab; i++)
        if (!isfinite(logits[i]))
            fatal("non-finite logit (%g) for id %zu at position %d", logits[i], i % (size_t)vocab, first_pos + (int)(i / (size_t)vocab));
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int is_eos(const Config *c, int id) {
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos[i] == id) return 1;
    return 0;
}

static void write_logits(const char *path, const float *logits, size_t count) {
    FILE *f = fopen(path, "wb");
    if (!f) fatal("--dump-logits %s: %s", path, strerror(errno));
    size_t n = fwrite(logits, sizeof(float), count, f);
    if (fclose(f) != 0 || n != count) fatal("--dump-logits %s: write failed", path);
}

static Tokenizer *load_tokenizer(const char *dir) {
    char *path = path_join(dir, "tokenizer.json");
    if (access(path, F_OK) != 0) fatal("%s: no tokenizer.json; text needs it (use --prompt-ids and --print-ids without one)", dir);
    return tokenizer_load(path);
}

// --tokenize / --tokenize-file: ids on one line, space separated; no weights are loaded.
static void tokenize_mode(const Options *o) {
    Tokenizer *tok = load_tokenizer(o->model_dir);
    size_t len;
    char *text = o->tokenize ? strdup(o->tokenize) : read_file(o->tokenize_file, &len);
    if (!text) fatal("--tokenize-file %s: %s", o->tokenize_file, strerror(errno));
    len = strlen(text);  // NUL bytes end the text
    char err[160];
    int n;
    int *ids = tokenizer_encode(tok, text, len, 1, &n, err, sizeof err);
    if (!ids) fatal("%s: %s", o->tokenize ? "--tokenize" : o->tokenize_file, err);
    for (int i = 0; i < n; i++) printf("%s%d", i ? " " : "", ids[i]);
    printf("\n");
    free(ids);
    free(text);
    tokenizer_free(tok);
}

#ifndef TESTING
int main(int argc, char **argv) {
    Options o;
    parse_args(&o, argc, argv);
    if (o.tokenize || o.tokenize_file) {
        tokenize_mode(&o);
        return 0;
    }

    if (!o.force_ref) {
        char why[160];
        int n_gpus = cuda_device_count(why, sizeof why);
        if (n_gpus == 0) fprintf(stderr, "nano: no CUDA GPU (%s); using the reference path\n", why);
        else fprintf(stderr, "nano: found %d CUDA GPU(s), but the GPU engine is not written yet; using the reference path\n", n_gpus);
    }

    Model m;
    model_load(&m, o.model_dir);
    const Config *c = &m.cfg;
    int n_prompt;
    int *prompt = parse_prompt_ids(o.prompt_ids, c->vocab, &n_prompt);
    int ctx = o.ctx ? o.ctx : (c->max_pos < DEFAULT_CTX ? c->max_pos : DEFAULT_CTX);
    if (ctx > c->max_pos)
        fprintf(stderr, "nano: warning: -c %d exceeds max_position_embeddings %d; positions past it were never trained\n", ctx, c->max_pos);
    if (n_prompt > ctx) fatal("prompt of %d tokens is longer than the context of %d tokens (-c)", n_prompt, ctx);
    if (!o.print_ids && o.n_predict > 0 && !o.dump_logits)
        fatal("nothing to print: pass --print-ids (text output needs the tokenizer, which nano does not have yet)");

    Engine *engine = ref_engine_create(&m, ctx, o.kv, o.batch < n_prompt ? o.batch : n_prompt);  // scratch sized to the chunk
    size_t V = (size_t)c->vocab;
    float *logits = xmalloc((o.dump_logits ? (size_t)n_prompt : 1) * V * sizeof(float));
    rng_state = o.seed * 2 + 1;  // xorshift needs a non-zero state

    double t0 = now_seconds();
    engine->forward(engine, prompt, n_prompt, 0, logits, o.dump_logits != NULL);
    double t_prefill = now_seconds() - t0;
    int rows = o.dump_logits ? n_prompt : 1;  // every prompt position, or the last
    check_logits(logits, rows, c->vocab, n_prompt - rows);
    if (o.dump_logits) {
        write_logits(o.dump_logits, logits, (size_t)n_prompt * V);
        memmove(logits, logits + (size_t)(n_prompt - 1) * V, V * sizeof(float));  // keep the last row for sampling
    }

    int pos = n_prompt, n_gen = 0;
    t0 = now_seconds();
    while (n_gen < o.n_predict) {
        int id = sample(logits, c->vocab, o.temp);
        n_gen++;
        if (o.print_ids) {
            printf("%s%d", n_gen > 1 ? " " : "", id);
            fflush(stdout);
        }
        if (is_eos(c, id) || n_gen == o.n_predict) break;
        if (pos == ctx) {
            fprintf(stderr, "nano: context of %d tokens is full; stopping\n", ctx);
            break;
        }
        engine->forward(engine, &id, 1, pos, logits, 0);
        check_logits(logits, 1, c->vocab, pos);
        pos++;
    }
    double t_decode = now_seconds() - t0;
    if (o.print_ids && n_gen) printf("\n");
    fprintf(stderr, "nano: prompt %d tok in %.3f s (%.2f tok/s), generated %d tok in %.3f s (%.2f tok/s), %s KV, %s\n",
            n_prompt, t_prefill, n_prompt / t_prefill, n_gen, t_decode, n_gen > 1 ? (n_gen - 1) / t_decode : 0.0,
            kv_format_name(o.kv), engine->name);

    free(logits);
    engine->free(engine);
    free(prompt);
    model_free(&m);
    return 0;
}
#endif
