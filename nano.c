// nano: the command line and its modes — one prompt, interactive chat, a batch file, perplexity,
// tokenizing — on top of one generation loop over an Engine.
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "lineedit.h"
#include "nano.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "nano reads little-endian safetensors in place and needs a little-endian host"
#endif

#define NANO_VERSION "0.1.0"
#define DEFAULT_CTX 4096
#define DEFAULT_BATCH 128
#define DEFAULT_N_PREDICT 256
#define DEFAULT_PARALLEL 64     // -f on the GPU: sequences decoding together (H200: 1.5-1.6x 32's tok/s)
#define MAX_POOL (1 << 30)      // positions of a KV pool
#define BATCH_FAILED 3  // exit status of -f when some prompts failed (their results carry the error)

// The sampling settings, as flags and as keys of a batch JSON line, with their ranges and their field.
typedef struct {
    const char *flag, *key;
    double lo, hi;
    size_t offset;  // in SamplerConfig
    int integer;
} Setting;
static const Setting settings[] = {
    {"--temp", "temperature", 0, 100, offsetof(SamplerConfig, temp), 0},
    {"--top-k", "top_k", 0, 1 << 24, offsetof(SamplerConfig, top_k), 1},
    {"--top-p", "top_p", 0, 1, offsetof(SamplerConfig, top_p), 0},
    {"--min-p", "min_p", 0, 1, offsetof(SamplerConfig, min_p), 0},
    {"--repeat-penalty", "repeat_penalty", 0.01, 100, offsetof(SamplerConfig, repeat_penalty), 0},
};
#define N_SETTINGS (int)(sizeof settings / sizeof *settings)

static void setting_apply(SamplerConfig *c, int i, double v) {
    char *field = (char *)c + settings[i].offset;
    if (settings[i].integer) *(int *)field = (int)v;
    else *(float *)field = (float)v;
}

typedef struct {
    const char *model_dir;
    const char *prompt;         // -p text
    const char *prompt_ids;     // "1 2 3"
    const char *file, *out;     // batch prompts and results
    const char *perplexity;     // text file
    const char *tokenize;       // text
    const char *tokenize_file;  // path
    const char *dump_logits;    // path
    const char *system;
    int interactive, resume, raw;
    int think;  // 1 --think, 0 --no-think, -1 the template's default
    int n_predict;
    int ctx;     // 0: default
    int stride;  // perplexity; 0: ctx / 2
    int batch;
    int parallel;  // -f: sequences at once; 0 picks
    int kv_pool;   // -f with --parallel: positions of the shared KV pool; 0: parallel x ctx (or what fits)
    double sampling[N_SETTINGS];  // the flags of settings[]; NAN: not given, so generation_config.json decides
    int64_t seed;         // -1: random, drawn once at start
    const char **stops;   // --stop strings, in order given
    int n_stops;
    int threads;          // reference path; 0: every core
    int verbose_prompt, quiet;
    int print_ids;
    int force_ref;
    KVFormat kv;
    int wo_split;  // GPU: o_proj reduction slices; 0 picks from the shape
    int check;     // --check
    int help;      // 'h': -h or --help, 'v': --version
} Options;

static void usage(FILE *out) {
    fprintf(out,
            "Usage: nano -m DIR [-p TEXT | -i | -f PROMPTS | --perplexity FILE | --tokenize TEXT | --prompt-ids IDS] [options]\n"
            "Runs a Hugging Face Qwen2/2.5/3 or DeepSeek-R1-Distill-Qwen checkpoint directory as downloaded.\n"
            "Examples:\n"
            "  nano -m DIR -p \"Why is the sky blue?\"          one reply, streamed, chat template applied\n"
            "  nano -m DIR -i                                 chat (/help lists its commands, /exit or Ctrl-D quits)\n"
            "  nano -m DIR -f prompts.txt -o results.jsonl    one result per line of prompts.txt\n"
            "\n"
            "Modes:\n"
            "  -m, --model DIR         checkpoint directory (config.json, *.safetensors, tokenizer.json)\n"
            "  -p, --prompt TEXT       generate one reply to TEXT\n"
            "  -i, --interactive       chat REPL; the KV cache is kept between turns; Ctrl-C stops a reply,\n"
            "                          Ctrl-C at the prompt or Ctrl-D exits; with stdin not a terminal, one turn per line\n"
            "  -f, --file PATH         batch: one prompt per line (- reads stdin), plain text or a JSON object {\"prompt\": ...}\n"
            "                          with optional n_predict, system, seed, temperature, top_k, top_p, min_p,\n"
            "                          repeat_penalty, stop; results as JSON lines; exit status %d when some prompts failed\n"
            "  -o, --output PATH       where -f writes its JSON lines (default: stdout)\n"
            "      --resume            -f: keep the results already in -o and run only the prompts missing there\n"
            "  -np, --parallel N       -f: decode up to N prompts together, each in its own part of a shared KV pool\n"
            "                          of N x -c positions (on the GPU: as many as fit); default %d on the GPU, 1 otherwise\n"
            "      --kv-pool N         -f --parallel: the KV pool's size in positions; a prompt waits until its prompt and\n"
            "                          reply (-n) fit in what is free\n"
            "      --perplexity PATH   perplexity of a text file, in windows of -c tokens moved by --stride\n"
            "      --stride N          --perplexity window step (default: half of -c)\n"
            "      --tokenize TEXT     print TEXT's token ids and exit (needs only tokenizer.json)\n"
            "      --tokenize-file P   the same for a file's contents\n"
            "      --prompt-ids IDS    prompt as token ids, space or comma separated; no template; @PATH reads them from a file\n"
            "Chat:\n"
            "      --system TEXT       system prompt (default: the template's own, if it has one)\n"
            "      --think, --no-think Qwen3: reason before answering (the template's default) or not\n"
            "      --raw               no chat template: the prompt text goes to the model as is\n"
            "Generation (defaults from the model's generation_config.json, else the values shown):\n"
            "  -n, --n-predict N       max new tokens (default %d; 0 runs only the prompt)\n"
            "      --temp T            temperature; 0 = greedy (default 0.7)\n"
            "      --top-k K           keep the K most likely ids; 0 = off (default 40)\n"
            "      --top-p P           keep the most likely ids up to mass P; 1 = off (default 0.95)\n"
            "      --min-p P           drop ids below P x the top probability; 0 = off (default 0)\n"
            "      --repeat-penalty R  penalize ids already in the context; 1 = off (default 1)\n"
            "  -s, --seed S            sampling seed; -1 = random (default: random, shown with the timings)\n"
            "      --stop STR          end the reply before STR in the generated text (repeatable)\n"
            "Engine:\n"
            "  -c, --ctx N             KV cache capacity in tokens (default min(%d, max_position_embeddings))\n"
            "  -b, --batch N           prefill the prompt in chunks of N tokens (default %d)\n"
            "      --kv FORMAT         KV cache format (default f16): f32 (exact; reference path only), bf16, f16 (3 more\n"
            "                          mantissa bits), int8 (~half the bytes), k8v4 (8-bit K, 4-bit V), kv4h (4-bit after a\n"
            "                          Hadamard rotation; reference path only). README: bytes, accuracy and speed of each\n"
            "      --ref               use the scalar reference path (the default without a GPU)\n"
            "  -t, --threads N         reference path threads (default: every core, %ld here)\n"
            "      --wo-split N        GPU decode: split o_proj's reduction over N = 1, 2, 4 or 8 slots (default: from the shape)\n"
            "      --check             with --prompt-ids: run the GPU and the reference side by side on the prompt and -n\n"
            "                          decode steps; print each layer's largest residual difference\n"
            "Benchmark (nano --bench --help lists its flags):\n"
            "      --bench             prefill and decode tok/s in one process, like llama-bench: -p 512 -n 128 -d 0 -r 5,\n"
            "                          comma lists swept, with --kv and --wo-split lists; -o md|csv|json; --save PREFIX\n"
            "Output:\n"
            "      --print-ids         print generated token ids instead of text\n"
            "      --dump-logits PATH  --prompt-ids: write fp32 logits for every prompt position, [n_prompt x vocab]\n"
            "      --verbose-prompt    print the prompt as the model gets it (template, special tokens) and its ids\n"
            "  -q, --quiet             no sampling-settings, timings, batch or perplexity progress lines on stderr\n"
            "      --version           version, commit, and whether the GPU engine is compiled in\n"
            "  -h, --help              this text\n",
            BATCH_FAILED, DEFAULT_PARALLEL, DEFAULT_N_PREDICT, DEFAULT_CTX, DEFAULT_BATCH, sysconf(_SC_NPROCESSORS_ONLN));
}

// The value after a flag; NULL when the flag was the last argument.
static const char *need(const char *flag, const char *v) {
    if (!v) fatal("%s: missing value", flag);
    return v;
}

static long parse_long(const char *flag, const char *s, long lo, long hi) {
    need(flag, s);
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) fatal("%s: expected an integer in [%ld, %ld], got '%s'", flag, lo, hi, s);
    return v;
}

static float parse_float(const char *flag, const char *s, float lo, float hi) {
    need(flag, s);
    char *end;
    double v = strtod(s, &end);  // range errors are left to the bounds: a tiny value underflowing to 0 is fine
    if (end == s || *end || !(v >= lo && v <= hi)) fatal("%s: expected a number in [%g, %g], got '%s'", flag, lo, hi, s);
    return (float)v;
}

#define SEED_MAX 0x7fffffffffffffffL

// A seed nobody chose: printed with the timings, so the run can be repeated with -s.
static int64_t random_seed(void) {
    uint32_t r;
    if (getentropy(&r, sizeof r) != 0) r = (uint32_t)time(NULL) ^ (uint32_t)getpid() << 16;
    return r;
}

static void print_version(void) {
    printf("nano %s (commit %s), GPU engine: %s\n", NANO_VERSION, nano_commit, nano_gpu_build() ? nano_gpu_build() : "compiled out");
}

static int is_flag(const char *a, const char *s, const char *l) { return (s && !strcmp(a, s)) || !strcmp(a, l); }

// The setting named by a flag (by_flag) or a batch key; -1 if none.
static int setting_index(const char *name, int by_flag) {
    for (int k = 0; k < N_SETTINGS; k++)
        if (!strcmp(name, by_flag ? settings[k].flag : settings[k].key)) return k;
    return -1;
}

static void parse_args(Options *o, int argc, char **argv) {
    memset(o, 0, sizeof *o);
    o->n_predict = DEFAULT_N_PREDICT;
    o->batch = DEFAULT_BATCH;
    for (int k = 0; k < N_SETTINGS; k++) o->sampling[k] = NAN;
    o->think = -1;
    o->seed = -1;
    o->kv = KV_N_FORMATS;  // the model's default (kv_default)
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (is_flag(a, "-h", "--help") || !strcmp(a, "--version")) {  // main prints it; the rest is not read
            o->help = strcmp(a, "--version") ? 'h' : 'v';
            return;
        }
        if (!strcmp(a, "--print-ids")) o->print_ids = 1;
        else if (!strcmp(a, "--verbose-prompt")) o->verbose_prompt = 1;
        else if (is_flag(a, "-q", "--quiet")) o->quiet = 1;
        else if (!strcmp(a, "--ref")) o->force_ref = 1;
        else if (!strcmp(a, "--check")) o->check = 1;
        else if (is_flag(a, "-i", "--interactive")) o->interactive = 1;
        else if (!strcmp(a, "--resume")) o->resume = 1;
        else if (!strcmp(a, "--raw")) o->raw = 1;
        else if (!strcmp(a, "--think")) o->think = 1;
        else if (!strcmp(a, "--no-think")) o->think = 0;
        else {
            if (a[0] != '-') fatal("unexpected argument '%s' (see --help)", a);
            const char *v = argv[i + 1];  // NULL after the last argument; an unknown flag is named first
            int k;
            if (is_flag(a, "-m", "--model")) o->model_dir = need(a, v);
            else if (is_flag(a, "-p", "--prompt")) o->prompt = need(a, v);
            else if (!strcmp(a, "--prompt-ids")) o->prompt_ids = need(a, v);
            else if (is_flag(a, "-f", "--file")) o->file = need(a, v);
            else if (is_flag(a, "-o", "--output")) o->out = need(a, v);
            else if (!strcmp(a, "--perplexity")) o->perplexity = need(a, v);
            else if (!strcmp(a, "--tokenize")) o->tokenize = need(a, v);
            else if (!strcmp(a, "--tokenize-file")) o->tokenize_file = need(a, v);
            else if (!strcmp(a, "--dump-logits")) o->dump_logits = need(a, v);
            else if (!strcmp(a, "--system")) o->system = need(a, v);
            else if (is_flag(a, "-n", "--n-predict")) o->n_predict = (int)parse_long(a, v, 0, 1 << 30);
            else if (is_flag(a, "-c", "--ctx")) o->ctx = (int)parse_long(a, v, 1, 1 << 24);
            else if (!strcmp(a, "--stride")) o->stride = (int)parse_long(a, v, 1, 1 << 24);
            else if (is_flag(a, "-b", "--batch")) o->batch = (int)parse_long(a, v, 1, 1 << 16);
            else if (is_flag(a, "-np", "--parallel")) o->parallel = (int)parse_long(a, v, 1, MAX_PARALLEL);
            else if (!strcmp(a, "--kv-pool")) o->kv_pool = (int)parse_long(a, v, 1, MAX_POOL);
            else if ((k = setting_index(a, 1)) >= 0) {
                const Setting *t = &settings[k];
                o->sampling[k] = t->integer ? parse_long(a, v, (long)t->lo, (long)t->hi) : parse_float(a, v, (float)t->lo, (float)t->hi);
            }
            else if (is_flag(a, "-s", "--seed")) o->seed = parse_long(a, v, -1, SEED_MAX);
            else if (is_flag(a, "-t", "--threads")) o->threads = (int)parse_long(a, v, 1, 256);
            else if (!strcmp(a, "--stop")) {
                if (!need(a, v)[0]) fatal("--stop: expected a non-empty string");
                o->stops = realloc(o->stops, (size_t)(o->n_stops + 1) * sizeof *o->stops);
                if (!o->stops) fatal("out of memory");
                o->stops[o->n_stops++] = v;
            }
            else if (!strcmp(a, "--wo-split")) {
                o->wo_split = (int)parse_long(a, v, 1, 8);
                if (!wo_split_valid(o->wo_split)) fatal("--wo-split: expected 1, 2, 4 or 8, got '%s'", v);
            } else if (!strcmp(a, "--kv")) {
                if (kv_format_parse(need(a, v), &o->kv)) fatal("--kv: unknown format '%s' (expected one of %s)", v, kv_format_list());
            } else fatal("unknown option '%s' (see --help)", a);
            i++;
        }
    }
    if (!o->model_dir) fatal("no model: pass -m DIR (see --help)");
    int modes = !!o->prompt + !!o->prompt_ids + o->interactive + !!o->file + !!o->perplexity + !!o->tokenize + !!o->tokenize_file;
    if (modes == 0) fatal("nothing to do: pass -p TEXT, -i, -f FILE, --perplexity FILE, --tokenize TEXT or --prompt-ids IDS (see --help)");
    if (modes > 1) fatal("choose one of -p, -i, -f, --perplexity, --tokenize, --tokenize-file and --prompt-ids");
    if (o->out && !o->file) fatal("-o names the results file of -f; there is no -f");
    if (o->resume && !o->out) fatal("--resume needs -o: it continues the results file of an earlier run");
    if (o->parallel && !o->file) fatal("--parallel sets how many prompts of -f run together; there is no -f");
    if (o->kv_pool && (!o->file || o->parallel == 1)) fatal("--kv-pool sizes the KV pool of -f's --parallel sequences; there is %s", o->file ? "--parallel 1" : "no -f");
    if (o->dump_logits && !o->prompt_ids) fatal("--dump-logits works with --prompt-ids");
    if (o->check && !o->prompt_ids) fatal("--check works with --prompt-ids");
    if (o->n_stops && o->print_ids) fatal("--stop matches generated text; it does not combine with --print-ids");
    if (o->seed < 0) o->seed = random_seed();
}

#define ID_SEPARATORS " ,\t\r\n"

// Ids separated by spaces or commas; each must index the embedding.
// The ids of --prompt-ids: the argument itself, or the file it names after '@' (a long prompt does not
// fit in one command-line argument: Linux allows 128 KB).
static int *parse_prompt_ids(const char *arg, int vocab, int *n_out) {
    size_t len;
    char *text = arg[0] == '@' ? read_file(arg + 1, READ_ANY_SIZE, &len) : strdup(arg);
    if (!text) fatal("--prompt-ids %s: %s", arg, arg[0] == '@' ? file_error(arg + 1) : "out of memory");
    const char *where = arg[0] == '@' ? arg : "--prompt-ids";
    int n = 0, cap = 16;
    int *ids = xmalloc((size_t)cap * sizeof *ids);
    for (const char *p = text;;) {
        while (*p && strchr(ID_SEPARATORS, *p)) p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || (*end && !strchr(ID_SEPARATORS, *end))) fatal("%s: '%.20s' at token %d is not an integer", where, p, n);
        if (v < 0 || v >= vocab) fatal("%s: id %ld at token %d is outside the vocabulary [0, %d)", where, v, n, vocab);
        if (n == cap) ids = realloc(ids, (size_t)(cap *= 2) * sizeof *ids);
        if (!ids) fatal("out of memory");
        ids[n++] = (int)v;
        p = end;
    }
    if (!n) fatal("%s: no ids given", where);
    free(text);
    *n_out = n;
    return ids;
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

// Ctrl-C: the generation loop polls this and ends the reply; the modes decide what comes next.
static volatile sig_atomic_t interrupted;
static void on_sigint(int sig) {
    (void)sig;
    interrupted = 1;
}

// ---------------------------------------------------------------------------------------------
// A session: the model, its engine and KV cache, and the tokens the cache holds.

typedef struct {
    Model m;
    Engine *engine;
    Tokenizer *tok;      // NULL when the model directory has no tokenizer.json
    ChatTemplate chat;
    Sampler sampler;
    int ctx;             // positions a sequence may hold
    int n_seqs;          // sequences the engine serves at once (-f --parallel)
    int *tokens;         // [ctx] the ids in the KV cache
    int pos;             // how many
    Picker next;         // the last token fed's logits (or their ranking), and the pick from them
    KVFormat kv;
    uint64_t seed;       // the sampler's, for the timings line
    int quiet;           // -q: no settings or timings lines
    double load_s;
} Session;

typedef enum { FINISH_STOP, FINISH_LENGTH, FINISH_CONTEXT, FINISH_INTERRUPT } Finish;
static const char *finish_name[] = {"stop", "length", "length", "stop"};

typedef struct {
    int n_prompt, n_gen;
    double prompt_s, gen_s;
    Finish finish;
} GenStats;

static Tokenizer *load_tokenizer(const char *dir, int required) {
    char *path = path_join(dir, "tokenizer.json");
    if (access(path, F_OK) != 0) {
        if (required) fatal("%s: no tokenizer.json, which text needs (--prompt-ids and --print-ids work without it)", dir);
        free(path);
        return NULL;
    }
    Tokenizer *t = tokenizer_load(path);
    free(path);
    return t;
}

// The KV format: --kv, else the model's default.
static KVFormat kv_format_of(const Options *o, const Config *c) { return o->kv == KV_N_FORMATS ? kv_default(c) : o->kv; }

// n_seqs (NULL: one): how many sequences the engine serves at once (-f's --parallel); *n_seqs 0 picks,
// on the GPU DEFAULT_PARALLEL or the prompts to run if fewer (most), else 1 (the reference path runs
// rows one after another anyway; -b 1 has no prefill path for them), and *n_seqs gets the choice.
// Several sequences share a KV pool of --kv-pool or n_seqs x ctx positions, on the GPU as many as fit
// if fewer.
static Engine *open_engine(const Options *o, const Model *m, int ctx, KVFormat kv, int *n_seqs, int most) {
    char why[512];
    int gpu = 0;
    if (!o->force_ref) {
        gpu = cuda_device_count(why, sizeof why) > 0;
        if (!gpu) fprintf(stderr, "nano: no CUDA GPU (%s); using the reference path\n", why);
    }
    if (most < (o->kv_pool ? 2 : 1)) most = o->kv_pool ? 2 : 1;  // --kv-pool asks for a pool (check_arguments)
    int n = !n_seqs ? 1 : *n_seqs ? *n_seqs : gpu && o->batch > 1 ? (most < DEFAULT_PARALLEL ? most : DEFAULT_PARALLEL) : 1;
    long long want = n == 1 ? ctx : o->kv_pool ? o->kv_pool : (long long)n * ctx;
    int pool = want < MAX_POOL ? (int)want : MAX_POOL;
    Engine *e;
    if (gpu) {
        e = cuda_engine_create(m, n > 1 ? -pool : ctx, kv, o->batch, o->wo_split, why, sizeof why);
        if (!e) fatal("GPU engine: %s; add --ref to run on the reference path", why);
        if (o->kv_pool && e->capacity < pool)
            fprintf(stderr, "nano: warning: --kv-pool %d: %d positions fit on the GPU; the pool holds those\n", pool, e->capacity);
    } else e = ref_engine_create(m, pool, kv, o->batch);
    if (n > 1 && e->seqs(e, n, why, sizeof why)) fatal("--parallel %d: %s", n, why);
    if (n_seqs) *n_seqs = n;
    return e;
}

// --check: the GPU engine against the reference, layer by layer, on the --prompt-ids tokens.
static int check_mode(const Options *o) {
    Model m;
    model_load(&m, o->model_dir);
    int n;
    int *ids = parse_prompt_ids(o->prompt_ids, m.cfg.vocab, &n);
    int ctx = o->ctx ? o->ctx : n + o->n_predict;
    if (n > ctx) fatal("prompt of %d tokens is longer than the context of %d tokens (-c)", n, ctx);
    int rc = gpu_check(&m, ids, n, o->n_predict, ctx, o->batch, o->wo_split, kv_format_of(o, &m.cfg));
    free(ids);
    model_free(&m);
    return rc;
}

// Flags override the model's generation_config.json.
static SamplerConfig sampling_settings(const Options *o, const Config *c) {
    SamplerConfig s = c->sampling;
    for (int k = 0; k < N_SETTINGS; k++)
        if (!isnan(o->sampling[k])) setting_apply(&s, k, o->sampling[k]);
    return s;
}

// prompts: how many -f will run (they bound the default --parallel), 0 otherwise.
static void session_open(Session *s, const Options *o, int need_tokenizer, int prompts) {
    memset(s, 0, sizeof *s);
    double t0 = now_seconds();
    s->tok = load_tokenizer(o->model_dir, need_tokenizer);
    model_load(&s->m, o->model_dir);
    model_prefetch(&s->m, o->model_dir);
    const Config *c = &s->m.cfg;
    if (s->tok) chat_template_load(&s->chat, o->model_dir);
    s->ctx = o->ctx ? o->ctx : (c->max_pos < DEFAULT_CTX ? c->max_pos : DEFAULT_CTX);
    if (s->ctx > c->max_pos)
        fprintf(stderr, "nano: warning: -c %d exceeds max_position_embeddings %d; positions past it were never trained\n", s->ctx, c->max_pos);
    s->kv = kv_format_of(o, c);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    ref_set_threads(o->threads ? o->threads : cores > 0 ? (int)cores : 1);
    s->n_seqs = o->file ? o->parallel : 1;
    s->engine = open_engine(o, &s->m, s->ctx, s->kv, &s->n_seqs, prompts);
    s->tokens = xmalloc((size_t)s->ctx * sizeof *s->tokens);
    // Never sample an id the tokenizer cannot print: the embedding usually has padding rows past it.
    int n_ids = s->tok && tokenizer_n_ids(s->tok) < c->vocab ? tokenizer_n_ids(s->tok) : c->vocab;
    SamplerConfig sc = sampling_settings(o, c);
    s->seed = (uint64_t)o->seed;
    s->quiet = o->quiet;
    sampler_init(&s->sampler, &sc, n_ids, s->seed);
    picker_init(&s->next, s->engine, &s->sampler, c->vocab);
    s->load_s = now_seconds() - t0;
}

// The sampling settings in force, once, when a mode has checked its input and starts generating.
static void show_settings(const Session *s, const char *note) {
    const SamplerConfig *c = &s->sampler.c;
    if (s->quiet) return;
    fprintf(stderr, "nano: sampling: temp %g%s, top-k %d, top-p %g, min-p %g, repeat-penalty %g, seed %llu%s\n", c->temp,
            c->temp == 0 ? " (greedy)" : "", c->top_k, c->top_p, c->min_p, c->repeat_penalty, (unsigned long long)s->seed, note);
}

static void session_close(Session *s) {
    sampler_free(&s->sampler);
    s->engine->free(s->engine);
    chat_template_free(&s->chat);
    tokenizer_free(s->tok);
    model_free(&s->m);
    free(s->tokens);
    picker_free(&s->next);
}

// Whether ids[0..n) can follow pos tokens of a context: 0, or -1 with err saying why not.
static int tokens_fit(const Session *s, const int *ids, int n, int pos, char *err, size_t errlen) {
    if (n == 0 && pos == 0) {  // nothing to compute logits from
        snprintf(err, errlen, "the prompt is empty (0 tokens)");
        return -1;
    }
    if (pos + n > s->ctx) {
        snprintf(err, errlen, "%d prompt tokens do not fit: %d of the context's %d are in use (-c)", n, pos, s->ctx);
        return -1;
    }
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= s->m.cfg.vocab) {
            snprintf(err, errlen, "token id %d is outside the model's vocabulary of %d", ids[i], s->m.cfg.vocab);
            return -1;
        }
    return 0;
}

// Appends ids to the cache and runs them, leaving the last one's logits (and every position's in
// all_logits, n x vocab, when not NULL). Returns 0, or -1 with err set when they do not fit or an id is
// outside the embedding (nothing is run then).
static int session_feed(Session *s, const int *ids, int n, float *all_logits, char *err, size_t errlen) {
    if (tokens_fit(s, ids, n, s->pos, err, errlen)) return -1;
    if (n == 0) return 0;
    size_t V = (size_t)s->m.cfg.vocab;
    if (all_logits) {
        s->engine->forward(s->engine, ids, n, s->pos, all_logits, 1);
        logits_check(all_logits, n, (int)V, s->pos);
        picker_set_logits(&s->next, all_logits + (size_t)(n - 1) * V);
    } else picker_forward(&s->next, ids, n, s->pos);
    memcpy(s->tokens + s->pos, ids, (size_t)n * sizeof *ids);
    s->pos += n;
    return 0;
}

static int is_eos(const Config *c, int id) {
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos[i] == id) return 1;
    return 0;
}

// Where generated text goes: a stream (stdout, as it comes) or a growing buffer (batch results).
// With stop strings, text that could be the start of one is held back until it is known not to be;
// a stop string found in the text ends the reply there, unprinted.
typedef struct {
    FILE *stream;
    char *buf;
    size_t len, cap;
    int print_ids;  // ids instead of text
    int n_written;
    Utf8Stream utf8;
    const char *const *stops;
    int n_stops;
    char *held;  // text not yet written: it may begin a stop string
    size_t held_len;
    int stopped;  // a stop string was found
} Sink;

static void buf_append(char **buf, size_t *len, size_t *cap, const char *s, size_t n) {
    if (*len + n + 1 > *cap) {
        *cap = (*len + n + 1) * 2;
        *buf = realloc(*buf, *cap);
        if (!*buf) fatal("out of memory");
    }
    if (n) memcpy(*buf + *len, s, n);  // s may be NULL when n is 0
    *len += n;
    (*buf)[*len] = 0;
}

static void sink_write(Sink *k, const char *s, size_t n) {
    if (!k->stream) {
        buf_append(&k->buf, &k->len, &k->cap, s, n);
        return;
    }
    if (!n) return;
    fwrite(s, 1, n, k->stream);
    out_check(k->stream, "stdout");
}

// Text for the output: written up to the first stop string, or up to where one might begin.
static void sink_text(Sink *k, const char *s, size_t n) {
    if (k->stopped) return;
    if (!k->n_stops) {
        sink_write(k, s, n);
        return;
    }
    size_t cap = k->held_len + 1;
    buf_append(&k->held, &k->held_len, &cap, s, n);
    size_t cut = k->held_len;  // the earliest stop string's start
    for (int i = 0; i < k->n_stops; i++) {
        const char *at = memmem(k->held, k->held_len, k->stops[i], strlen(k->stops[i]));
        if (at && (size_t)(at - k->held) < cut) cut = (size_t)(at - k->held);
    }
    size_t keep = 0;  // the longest tail that a stop string begins with
    if (cut < k->held_len) k->stopped = 1;
    else
        for (int i = 0; i < k->n_stops; i++) {
            size_t l = strlen(k->stops[i]);
            for (size_t t = l - 1 < k->held_len ? l - 1 : k->held_len; t > keep; t--)
                if (!memcmp(k->held + k->held_len - t, k->stops[i], t)) {
                    keep = t;
                    break;
                }
        }
    if (k->stopped) keep = 0;
    else cut = k->held_len - keep;
    sink_write(k, k->held, cut);
    memmove(k->held, k->held + k->held_len - keep, keep);
    k->held_len = keep;
}

static void sink_token(Sink *k, const Tokenizer *tok, int id) {
    char text[3 * (64 + 4)];
    if (k->print_ids || !tok) {
        int n = snprintf(text, sizeof text, "%s%d", k->n_written++ ? " " : "", id);
        sink_write(k, text, (size_t)n);
        return;
    }
    size_t len;
    const char *bytes = tokenizer_bytes(tok, id, &len);
    if (!bytes || tokenizer_is_special(tok, id)) return;
    for (size_t done = 0; done < len; done += 64) {  // text[] holds the output of 64 bytes
        size_t n = len - done < 64 ? len - done : 64;
        sink_text(k, text, utf8_stream_push(&k->utf8, bytes + done, n, text));
    }
}

static void sink_finish(Sink *k) {
    char text[16];
    sink_text(k, text, utf8_stream_finish(&k->utf8, text));
    if (!k->stopped) sink_write(k, k->held, k->held_len);
    free(k->held);
    k->held = NULL;
    k->held_len = 0;
}

// One generated id into a reply: the stop token ends it, unprinted (ids mode shows it); any other id
// is printed, and ends the reply when a stop string completes or the context is full. Returns how
// the reply finished, or -1 when it goes on.
static int reply_take(const Session *s, Sink *out, GenStats *st, int id, int context_full) {
    st->n_gen++;
    if (is_eos(&s->m.cfg, id)) {
        if (out->print_ids) sink_token(out, s->tok, id);
        return FINISH_STOP;
    }
    sink_token(out, s->tok, id);
    return out->stopped ? FINISH_STOP : context_full ? FINISH_CONTEXT : -1;
}

// Generates up to n_predict tokens after what the cache holds. The stop token ends the reply and is
// neither printed nor fed; every other token is printed and fed.
static Finish session_generate(Session *s, int n_predict, Sink *out, GenStats *st) {
    double t0 = now_seconds();
    Finish finish = FINISH_LENGTH;
    for (int n = 0; n < n_predict; n++) {
        if (interrupted) {
            finish = FINISH_INTERRUPT;
            break;
        }
        int id = picker_sample(&s->next, s->tokens, s->pos);
        int f = reply_take(s, out, st, id, s->pos == s->ctx);
        if (f >= 0) {
            finish = (Finish)f;
            break;
        }
        picker_forward(&s->next, &id, 1, s->pos);
        s->tokens[s->pos++] = id;
    }
    sink_finish(out);
    st->gen_s += now_seconds() - t0;
    st->finish = finish;
    return finish;
}

// Like llama.cpp's timings: load, prompt and generation speed, on stderr after every generation.
// The seed is there so that a sampled reply can be had again with -s.
static void print_timings(const Session *s, const GenStats *st) {
    out_check(stdout, "stdout");  // the reply first, when both go to one place
    if (s->quiet) return;
    fprintf(stderr,
            "nano: load %.0f ms | prompt %d tok, %.1f ms, %.2f tok/s | generated %d tok, %.1f ms, %.2f tok/s | %s, %s KV | seed %llu\n",
            s->load_s * 1e3, st->n_prompt, st->prompt_s * 1e3, st->prompt_s > 0 ? st->n_prompt / st->prompt_s : 0.0, st->n_gen,
            st->gen_s * 1e3, st->gen_s > 0 && st->n_gen > 1 ? (st->n_gen - 1) / st->gen_s : 0.0, s->engine->name,
            kv_format_name(s->kv), (unsigned long long)s->seed);
}

// --verbose-prompt: the exact text the model is given (special tokens included) and its ids, on stderr.
static void show_prompt(const Session *s, const int *ids, int n) {
    if (s->tok) {
        size_t len;
        char *text = tokenizer_decode(s->tok, ids, n, 0, &len);
        fprintf(stderr, "nano: prompt, %d tokens:\n%s\nnano: prompt ids:", n, text);
        free(text);
    } else fprintf(stderr, "nano: prompt ids (%d):", n);
    for (int i = 0; i < n; i++) fprintf(stderr, " %d", ids[i]);
    fprintf(stderr, "\n");
}

// The ids of a user's text: the chat template around it unless --raw (or the model has none).
// What the user typed must be valid UTF-8; checked before templating, so the offset is theirs.
static int valid_utf8(const char *text, char *err, size_t errlen) {
    long bad = utf8_invalid_offset(text, strlen(text));
    if (bad >= 0) snprintf(err, errlen, "invalid UTF-8 at byte offset %ld", bad);
    return bad < 0;
}

static int *prompt_tokens(Session *s, const Options *o, const char *system, const char *text, int *n, char *err, size_t errlen) {
    if (!valid_utf8(text, err, errlen)) return NULL;
    if (o->raw || s->chat.format == CHAT_NONE) return tokenizer_encode(s->tok, text, strlen(text), 1, n, err, errlen);
    if (s->chat.format == CHAT_UNSUPPORTED) {
        snprintf(err, errlen, "the model's chat_template is not ChatML, Qwen3's or DeepSeek's; pass --raw for plain text");
        return NULL;
    }
    ChatMessage msgs[2];
    int k = 0;
    if (system) msgs[k++] = (ChatMessage){"system", system};
    msgs[k++] = (ChatMessage){"user", text};
    char *rendered = chat_render(&s->chat, msgs, k, 1, o->think);
    int *ids = tokenizer_encode(s->tok, rendered, strlen(rendered), 0, n, err, errlen);
    free(rendered);
    return ids;
}

// A chat turn's ids: the first as a whole prompt, later ones as what follows the previous reply.
static int *turn_tokens(Session *s, const Options *o, const char *line, int first, int *n, char *err, size_t errlen) {
    if (o->raw || first) return prompt_tokens(s, o, o->system, line, n, err, errlen);
    if (!valid_utf8(line, err, errlen)) return NULL;
    char *text = chat_render_next(&s->chat, line, o->think);
    int *ids = tokenizer_encode(s->tok, text, strlen(text), 0, n, err, errlen);
    free(text);
    return ids;
}

// ---------------------------------------------------------------------------------------------
// Arguments checked before a model loads, so a typo costs no loading time and no output is lost: the
// model directory, the text given on the command line, every input file (readable, not UTF-16), every
// output (writable, and not one of the inputs: -f X -o X would replace the prompts by the results).

typedef struct {
    const char *name;
    dev_t dev;
    ino_t ino;
} InputFile;

static void check_input(const char *flag, const char *path, InputFile *in) {
    struct stat sb;
    int fd = open_regular(path, &sb);
    if (fd < 0) fatal("%s %s: %s", flag, path, file_error(path));
    unsigned char head[4];
    ssize_t n = read(fd, head, sizeof head);
    close(fd);
    const char *why = n > 0 ? text_encoding_problem(head, (size_t)n) : NULL;
    if (why) fatal("%s %s: the file %s", flag, path, why);
    *in = (InputFile){flag, sb.st_dev, sb.st_ino};
}

static void check_output(const char *flag, const char *path, const InputFile *in, int n_in) {
    struct stat sb;
    if (stat(path, &sb) == 0) {
        if (S_ISDIR(sb.st_mode)) fatal("%s %s: is a directory", flag, path);
        for (int i = 0; i < n_in; i++)
            if (sb.st_dev == in[i].dev && sb.st_ino == in[i].ino)
                fatal("%s %s: is also an input (%s); writing would destroy it", flag, path, in[i].name);  // same inode
        if (access(path, W_OK) != 0) fatal("%s %s: %s", flag, path, strerror(errno));
        return;
    }
    if (errno != ENOENT) fatal("%s %s: %s", flag, path, file_error(path));
    char *dir = strdup(path), *slash = strrchr(dir, '/');
    if (!dir) fatal("out of memory");
    if (slash) slash[slash == dir] = 0;  // "/x" -> "/"
    if (access(slash ? dir : ".", W_OK) != 0)
        fatal("%s %s: cannot be created: %s", flag, path, errno == ENOENT ? "its directory does not exist" : strerror(errno));
    free(dir);
}

static void check_text(const char *flag, const char *text) {
    long bad = text ? utf8_invalid_offset(text, strlen(text)) : -1;
    if (bad >= 0) fatal("%s: invalid UTF-8 at byte offset %ld", flag, bad);
}

static void check_arguments(const Options *o) {
    model_dir_check(o->model_dir);
    check_text("-p", o->prompt);
    check_text("--system", o->system);
    check_text("--tokenize", o->tokenize);
    char why[256];
    if (o->kv_pool && !o->parallel && (o->force_ref || o->batch < 2 || !cuda_device_count(why, sizeof why)))
        fatal("--kv-pool: this run decodes one prompt at a time (%s), without a KV pool; pass --parallel N",
              o->batch < 2 && !o->force_ref ? "-b 1" : "the reference path's default");
    // Inputs: the files of the model directory (links followed) and the files named by flags.
    InputFile *in = NULL;
    int n_in = 0;
    DIR *d = opendir(o->model_dir);
    for (struct dirent *e; d && (e = readdir(d));) {
        char *path = path_join(o->model_dir, e->d_name);
        struct stat sb;
        if (e->d_name[0] != '.' && stat(path, &sb) == 0 && S_ISREG(sb.st_mode)) {
            in = realloc(in, (size_t)(n_in + 1) * sizeof *in);
            if (!in) fatal("out of memory");
            in[n_in++] = (InputFile){"a file of the model directory", sb.st_dev, sb.st_ino};
        }
        free(path);
    }
    if (d) closedir(d);
    in = realloc(in, (size_t)(n_in + 4) * sizeof *in);
    if (!in) fatal("out of memory");
    if (o->prompt_ids && o->prompt_ids[0] == '@') check_input("--prompt-ids", o->prompt_ids + 1, &in[n_in++]);
    if (o->file && strcmp(o->file, "-")) check_input("-f", o->file, &in[n_in++]);
    if (o->perplexity) check_input("--perplexity", o->perplexity, &in[n_in++]);
    if (o->tokenize_file) check_input("--tokenize-file", o->tokenize_file, &in[n_in++]);
    if (o->out) check_output("-o", o->out, in, n_in);
    if (o->dump_logits) check_output("--dump-logits", o->dump_logits, in, n_in);
    free(in);
    // A closed stdout would be taken by the next file opened: refuse when the mode prints there,
    // else hold it with /dev/null.
    if (fcntl(1, F_GETFD) < 0) {
        if (!(o->file && o->out)) fatal("stdout is closed: what nano prints would be lost");
        if (open("/dev/null", O_WRONLY) != 1) fatal("stdout is closed and cannot be held: %s", strerror(errno));
    }
}

// The last write error on stdout, or its close, decides the exit status: output must not vanish silently.
static int close_stdout(void) {
    out_check(stdout, "stdout");
    if (fclose(stdout) != 0) fatal("stdout: write failed: %s", strerror(errno));
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Modes

// --tokenize / --tokenize-file: ids on one line, space separated; no weights are loaded.
static void tokenize_mode(const Options *o) {
    Tokenizer *tok = load_tokenizer(o->model_dir, 1);
    size_t len = 0;
    char *text = o->tokenize ? strdup(o->tokenize) : read_file(o->tokenize_file, READ_ANY_SIZE, &len);
    if (!text) fatal("--tokenize-file %s: %s", o->tokenize_file, file_error(o->tokenize_file));
    if (o->tokenize) len = strlen(text);
    char err[160];
    int n;
    double t0 = now_seconds();
    int *ids = tokenizer_encode(tok, text, len, 1, &n, err, sizeof err);
    double dt = now_seconds() - t0;
    if (!ids) fatal("%s: %s", o->tokenize ? "--tokenize" : o->tokenize_file, err);
    for (int i = 0; i < n; i++) printf("%s%d", i ? " " : "", ids[i]);
    printf("\n");
    out_check(stdout, "stdout");
    if (o->tokenize_file)
        fprintf(stderr, "nano: %zu bytes -> %d ids in %.1f ms (%.1f MB/s)\n", len, n, dt * 1e3, dt > 0 ? len / dt / 1e6 : 0.0);
    free(ids);
    free(text);
    tokenizer_free(tok);
}

static void write_logits(const char *path, const float *logits, size_t count) {
    FILE *f = fopen(path, "wb");
    if (!f) fatal("--dump-logits %s: %s", path, strerror(errno));
    size_t n = fwrite(logits, sizeof(float), count, f);
    if (fclose(f) != 0 || n != count) fatal("--dump-logits %s: write failed", path);
}

// --prompt-ids: ids in, no template; --dump-logits keeps every prompt position's logits.
static void prompt_ids_mode(Session *s, const Options *o) {
    const Config *c = &s->m.cfg;
    int n_prompt;
    int *prompt = parse_prompt_ids(o->prompt_ids, c->vocab, &n_prompt);
    if (n_prompt > s->ctx) fatal("prompt of %d tokens is longer than the context of %d tokens (-c)", n_prompt, s->ctx);
    if (!s->tok && !o->print_ids && o->n_predict > 0 && !o->dump_logits)
        fatal("%s has no tokenizer.json to print text with: pass --print-ids", o->model_dir);
    if (o->verbose_prompt) show_prompt(s, prompt, n_prompt);
    GenStats st = {.n_prompt = n_prompt};
    double t0 = now_seconds();
    size_t n_all = o->dump_logits ? (size_t)n_prompt * c->vocab : 0;
    float *all = n_all ? xmalloc(n_all * sizeof *all) : NULL;
    char err[160];
    if (session_feed(s, prompt, n_prompt, all, err, sizeof err)) fatal("%s", err);
    if (all) write_logits(o->dump_logits, all, n_all);
    free(all);
    st.prompt_s = now_seconds() - t0;
    Sink out = {.stream = stdout, .print_ids = o->print_ids, .stops = o->stops, .n_stops = o->n_stops};
    if (o->n_predict) show_settings(s, "");
    if (session_generate(s, o->n_predict, &out, &st) == FINISH_CONTEXT)
        fprintf(stderr, "\nnano: context of %d tokens is full; stopping\n", s->ctx);
    if (st.n_gen) printf("\n");
    print_timings(s, &st);
    free(prompt);
}

// -p: one reply, streamed.
static void prompt_mode(Session *s, const Options *o) {
    char err[200];
    int n;
    int *ids = prompt_tokens(s, o, o->system, o->prompt, &n, err, sizeof err);
    if (!ids) fatal("-p: %s", err);
    if (o->verbose_prompt) show_prompt(s, ids, n);
    GenStats st = {.n_prompt = n};
    double t0 = now_seconds();
    if (session_feed(s, ids, n, NULL, err, sizeof err)) fatal("-p: %s", err);
    st.prompt_s = now_seconds() - t0;
    Sink out = {.stream = stdout, .print_ids = o->print_ids, .stops = o->stops, .n_stops = o->n_stops};
    show_settings(s, "");
    Finish f = session_generate(s, o->n_predict, &out, &st);
    printf("\n");
    if (f == FINISH_CONTEXT) fprintf(stderr, "nano: context of %d tokens is full; stopping\n", s->ctx);
    print_timings(s, &st);
    free(ids);
}

// The turns of a chat as text, so that it can be rendered again without its oldest turns.
typedef struct {
    char **user, **reply;
    int n;
} Turns;

static void turns_drop(Turns *t, int k) {  // the k oldest
    if (!k) return;
    for (int i = 0; i < k; i++) free(t->user[i]), free(t->reply[i]);
    memmove(t->user, t->user + k, (size_t)(t->n - k) * sizeof *t->user);
    memmove(t->reply, t->reply + k, (size_t)(t->n - k) * sizeof *t->reply);
    t->n -= k;
}

// The whole chat without its k oldest turns, then line: the system prompt and the template around it
// (or, with --raw, the texts one after the other).
static int *chat_tokens(Session *s, const Options *o, const Turns *t, int k, const char *line, int *n, char *err, size_t errlen) {
    if (o->raw) {
        char *text = NULL;
        size_t len = 0, cap = 0;
        for (int i = k; i < t->n; i++) {
            buf_append(&text, &len, &cap, t->user[i], strlen(t->user[i]));
            buf_append(&text, &len, &cap, t->reply[i], strlen(t->reply[i]));
        }
        buf_append(&text, &len, &cap, line, strlen(line));
        int *ids = tokenizer_encode(s->tok, text, len, 1, n, err, errlen);
        free(text);
        return ids;
    }
    ChatMessage *msgs = xmalloc((size_t)(2 * (t->n - k) + 2) * sizeof *msgs);
    int m = 0;
    if (o->system) msgs[m++] = (ChatMessage){"system", o->system};
    for (int i = k; i < t->n; i++) {
        msgs[m++] = (ChatMessage){"user", t->user[i]};
        msgs[m++] = (ChatMessage){"assistant", t->reply[i]};
    }
    msgs[m++] = (ChatMessage){"user", line};
    char *rendered = chat_render(&s->chat, msgs, m, 1, o->think);
    int *ids = tokenizer_encode(s->tok, rendered, strlen(rendered), 0, n, err, errlen);
    free(rendered);
    free(msgs);
    return ids;
}

// A turn that does not fit: the chat rendered again without as few of its oldest turns as leave a
// quarter of the context for the reply (all of them, if need be). Returns the ids to run from position
// 0, or NULL when even the turn alone does not fit.
static int *drop_oldest(Session *s, const Options *o, Turns *t, const char *line, int *n, char *err, size_t errlen) {
    int *ids = NULL;
    int k = 0;
    for (k = 1; k <= t->n; k++) {
        free(ids);
        if (!(ids = chat_tokens(s, o, t, k, line, n, err, errlen))) return NULL;
        if (*n <= s->ctx - s->ctx / 4) break;
    }
    if (k > t->n) k = t->n;
    if (*n > s->ctx) {
        snprintf(err, errlen, "the turn of %d tokens does not fit in the context of %d tokens (-c)", *n, s->ctx);
        free(ids);
        return NULL;
    }
    fprintf(stderr, "nano: the context of %d tokens is full: dropped the oldest %d turn%s (", s->ctx, k, k == 1 ? "" : "s");
    for (int i = 0; i < k; i++) {  // each as its first 24 bytes or so, on one line
        size_t cut = strlen(t->user[i]) > 24 ? 24 : strlen(t->user[i]);
        while (cut && (t->user[i][cut] & 0xC0) == 0x80) cut--;
        fprintf(stderr, "%s\"", i ? ", " : "");
        for (size_t c = 0; c < cut; c++) fputc(t->user[i][c] == '\n' ? ' ' : t->user[i][c], stderr);
        fprintf(stderr, "%s\"", t->user[i][cut] ? "..." : "");
    }
    fprintf(stderr, "); %d kept%s\n", t->n - k, o->raw ? "" : ", and the system prompt");
    turns_drop(t, k);
    s->pos = 0;
    return ids;
}

static const char chat_help[] =
    "  /help    this list\n"
    "  /reset   start a new conversation (the system prompt stays)\n"
    "  /exit    quit (also Ctrl-D, or Ctrl-C at the prompt)\n"
    "  Ctrl-C during a reply stops it. A line ending in \\ continues on the next; a paste is one turn.\n"
    "  Up/Down recall earlier lines. Start a line with // to send one that begins with /.\n";

// -i: a chat. Each turn prefills only its own tokens; the cache keeps the whole conversation, and
// when it is full the oldest turns make room.
static void interactive_mode(Session *s, const Options *o) {
    if ((s->chat.format == CHAT_NONE || s->chat.format == CHAT_UNSUPPORTED) && !o->raw)
        fatal("-i: %s has %s chat template; pass --raw to chat with plain text continuation", o->model_dir,
              s->chat.format == CHAT_NONE ? "no" : "an unsupported");
    LineEdit lr;
    line_edit_init(&lr);
    struct sigaction sa = {0};
    sa.sa_handler = on_sigint;
    // The editor reads Ctrl-C as a key, so on a terminal the signal only stops replies, and restarting
    // keeps it from failing a write to the terminal; reading a pipe, Ctrl-C must interrupt the read.
    sa.sa_flags = lr.tty ? SA_RESTART : 0;
    sigaction(SIGINT, &sa, NULL);
    if (isatty(0))
        fprintf(stderr, "nano: chatting with %s (%s template, %d-token context). /help lists the commands, /exit or Ctrl-D quits,\n"
                        "      Ctrl-C stops a reply.\n",
                o->model_dir, o->raw ? "no" : chat_format_name(s->chat.format), s->ctx);
    show_settings(s, "");
    Turns turns = {0};
    for (;;) {
        interrupted = 0;
        char *line = line_edit_read(&lr, "> ");
        if (!line) break;  // Ctrl-D, end of input, or Ctrl-C at the prompt
        line_edit_history(&lr, line);
        const char *text = line[0] == '/' && line[1] == '/' ? line + 1 : line;
        if (text == line && line[0] == '/') {
            if (!strcmp(line, "/exit")) {
                free(line);
                break;
            }
            if (!strcmp(line, "/reset")) {
                s->pos = 0;
                turns_drop(&turns, turns.n);
                fprintf(stderr, "nano: conversation cleared\n");
            } else if (!strcmp(line, "/help")) {
                fputs(chat_help, stderr);
            } else {
                fprintf(stderr, "nano: unknown command '%.40s' (/help lists them; // sends a line that begins with /)\n", line);
            }
            free(line);
            continue;
        }
        if (!text[0]) {
            free(line);
            continue;
        }
        char err[200];
        int n = 0, *ids = turn_tokens(s, o, text, s->pos == 0, &n, err, sizeof err);
        if (ids && s->pos + n > s->ctx) {
            free(ids);
            ids = drop_oldest(s, o, &turns, text, &n, err, sizeof err);
        }
        GenStats st = {.n_prompt = n};
        double t0 = now_seconds();
        if (ids && o->verbose_prompt) show_prompt(s, ids, n);
        if (!ids || session_feed(s, ids, n, NULL, err, sizeof err)) {
            fprintf(stderr, "nano: %s\n", err);
            free(ids);
            free(line);
            continue;
        }
        free(ids);
        st.prompt_s = now_seconds() - t0;
        int reply_start = s->pos;
        Sink out = {.stream = stdout, .print_ids = o->print_ids, .stops = o->stops, .n_stops = o->n_stops};
        Finish f = session_generate(s, o->n_predict, &out, &st);
        printf("\n");
        fflush(stdout);
        if (f == FINISH_CONTEXT) fprintf(stderr, "nano: the context of %d tokens is full; the next turn drops the oldest ones\n", s->ctx);
        if (f == FINISH_INTERRUPT) fprintf(stderr, "nano: reply stopped\n");
        turns.user = realloc(turns.user, (size_t)(turns.n + 1) * sizeof *turns.user);
        turns.reply = realloc(turns.reply, (size_t)(turns.n + 1) * sizeof *turns.reply);
        if (!turns.user || !turns.reply) fatal("out of memory");
        size_t len;
        turns.user[turns.n] = strdup(text);
        turns.reply[turns.n++] = tokenizer_decode(s->tok, s->tokens + reply_start, s->pos - reply_start, 1, &len);
        free(line);
        print_timings(s, &st);
    }
    turns_drop(&turns, turns.n);
    free(turns.user);
    free(turns.reply);
    line_edit_free(&lr);
}

// JSON string with the escapes RFC 8259 needs; invalid UTF-8 is written as U+FFFD.
static void json_string(FILE *f, const char *s) {
    Utf8Stream u = {{0}, 0};
    char text[16];
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p < 0x80) fwrite(text, 1, utf8_stream_finish(&u, text), f);  // a cut sequence ends here
        if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
        else if (*p == '\n') fputs("\\n", f);
        else if (*p == '\t') fputs("\\t", f);
        else if (*p == '\r') fputs("\\r", f);
        else if (*p < 0x20) fprintf(f, "\\u%04x", *p);
        else fwrite(text, 1, utf8_stream_push(&u, (const char *)p, 1, text), f);
    }
    fwrite(text, 1, utf8_stream_finish(&u, text), f);
    fputc('"', f);
}

typedef struct {
    char *prompt, *system;
    int n_predict;
    uint64_t seed;
    SamplerConfig sampling;
    char **stops;  // the line's "stop", else --stop's (borrowed then)
    int n_stops, own_stops;
} BatchItem;

static void batch_item_free(BatchItem *it) {
    free(it->prompt);
    free(it->system);
    if (it->own_stops)
        for (int i = 0; i < it->n_stops; i++) free(it->stops[i]);
    if (it->own_stops) free(it->stops);
}

// A JSON number that must be in [lo, hi] (and whole when integer); else err names the key.
static int json_number_in(const JsonNode *v, const char *key, double lo, double hi, int integer, char *err, size_t errlen) {
    if (v->type == JSON_NUMBER && v->num >= lo && v->num <= hi && (!integer || v->num == floor(v->num))) return 1;
    snprintf(err, errlen, "\"%s\" must be %s in [%g, %g]", key, integer ? "an integer" : "a number", lo, hi);
    return 0;
}

// "stop": one string or an array of them, none empty.
static int json_stops(const Json *j, const JsonNode *v, BatchItem *it, char *err, size_t errlen) {
    int n = v->type == JSON_STRING ? 1 : v->type == JSON_ARRAY ? v->count : -1;
    const JsonNode *e = v->type == JSON_STRING ? v : n > 0 ? json_first(j, v) : NULL;
    it->stops = xcalloc((size_t)(n > 0 ? n : 1), sizeof *it->stops);
    it->n_stops = 0;  // the line's own replace --stop's
    it->own_stops = 1;
    for (; e && it->n_stops < n; e = json_next(j, e)) {
        if (e->type != JSON_STRING || !e->len) break;
        it->stops[it->n_stops++] = strdup(e->str);
    }
    if (n >= 0 && it->n_stops == n) return 1;
    snprintf(err, errlen, "\"stop\" must be a non-empty string or an array of them");
    return 0;
}

// A line of the prompts file: plain text, or a JSON object with "prompt" and optional settings. Any
// other key is an error, so a misspelt setting is never silently ignored.
static int parse_batch_line(const char *line, const Options *o, const SamplerConfig *sampling, BatchItem *it, char *err,
                            size_t errlen) {
    *it = (BatchItem){.n_predict = o->n_predict, .seed = (uint64_t)o->seed, .sampling = *sampling, .stops = (char **)o->stops,
                      .n_stops = o->n_stops};
    if (line[0] != '{') {
        it->prompt = strdup(line);
        return 0;
    }
    Json j;
    int ok = json_parse(&j, line, strlen(line)) == 0;
    if (!ok) snprintf(err, errlen, "bad JSON: %s", j.err);
    const JsonNode *p = ok ? json_get(&j, json_root(&j), "prompt") : NULL;
    if (ok && (!p || p->type != JSON_STRING)) {
        snprintf(err, errlen, "a JSON line needs a \"prompt\" string");
        ok = 0;
    }
    for (const JsonNode *v = ok ? json_first(&j, json_root(&j)) : NULL; v && ok; v = json_next(&j, v)) {
        int k = setting_index(v->key, 0);
        if (k >= 0) {
            if ((ok = json_number_in(v, v->key, settings[k].lo, settings[k].hi, settings[k].integer, err, errlen)))
                setting_apply(&it->sampling, k, v->num);
        } else if (!strcmp(v->key, "n_predict")) {
            if ((ok = json_number_in(v, v->key, 0, 1 << 30, 1, err, errlen))) it->n_predict = (int)v->num;
        } else if (!strcmp(v->key, "seed")) {
            if ((ok = json_number_in(v, v->key, 0, 9007199254740992.0, 1, err, errlen))) it->seed = (uint64_t)v->num;
        } else if (!strcmp(v->key, "system")) {
            if (!(ok = v->type == JSON_STRING)) snprintf(err, errlen, "\"system\" must be a string");
            else it->system = strdup(v->str);
        } else if (!strcmp(v->key, "stop")) {
            ok = json_stops(&j, v, it, err, errlen);
        } else if (strcmp(v->key, "prompt")) {
            snprintf(err, errlen, "unknown key \"%.40s\" (expected prompt, system, n_predict, seed, temperature, top_k, top_p, "
                                  "min_p, repeat_penalty or stop)", v->key);
            ok = 0;
        }
    }
    it->prompt = strdup(ok ? p->str : line);  // a bad line is reported back as written
    json_free(&j);
    return ok ? 0 : -1;
}

static int is_blank(const char *line, size_t len) {
    for (size_t i = 0; i < len; i++)
        if (line[i] != ' ' && line[i] != '\t') return 0;
    return 1;
}

// A batch: the prompts file is read as a stream twice, once before the model loads (line hashes, the
// count for the progress line) and once to run it; -o is opened, locked and, with --resume, cleaned
// before the model loads too.
typedef struct {
    FILE *out;
    long n_lines;
    int total;             // non-blank lines
    uint64_t *hash;        // [n_lines + 1] hash64 of each line as read (ids count from 1)
    unsigned char *done;   // [n_lines + 1] a result for this line is in -o already (--resume)
} Batch;

// -f -: stdin is copied once into an unlinked temporary file, which the batch then reads like any file.
static FILE *stdin_copy;

static void open_prompts(LineReader *r, const char *path) {
    if (strcmp(path, "-")) {
        if (lines_open(r, path)) fatal("-f %s: %s", path, file_error(path));
        return;
    }
    if (!stdin_copy) {
        char chunk[65536];
        size_t n;
        if (!(stdin_copy = tmpfile())) fatal("-f -: no temporary file for stdin: %s", strerror(errno));
        while ((n = fread(chunk, 1, sizeof chunk, stdin)) > 0)
            if (fwrite(chunk, 1, n, stdin_copy) != n) fatal("-f -: copying stdin: %s", strerror(errno));
        if (ferror(stdin) || fflush(stdin_copy) != 0) fatal("-f -: reading stdin: %s", strerror(errno));
    }
    FILE *f = fdopen(dup(fileno(stdin_copy)), "rb");
    if (!f) fatal("-f -: %s", strerror(errno));
    rewind(f);
    lines_from(r, f);
}

static int open_locked(const char *path, int flags) {
    int fd = open(path, flags, 0644);
    if (fd < 0) fatal("-o %s: %s", path, strerror(errno));
    if (lock_output(fd) != 0 && errno == EWOULDBLOCK)
        fatal("-o %s: another process is writing it (the file is locked); wait for that run or choose another -o", path);
    return fd;
}

// One result line of -o, checked; returns its id, and its line_hash (0 when absent: an older nano's).
static long result_id(const char *path, const LineReader *r, uint64_t *hash) {
    Json j;
    int ok = json_parse(&j, r->buf, r->len) == 0;
    const JsonNode *root = ok ? json_root(&j) : NULL, *id = json_get(&j, root, "id"), *output = json_get(&j, root, "output"),
                   *finish = json_get(&j, root, "finish_reason"), *h = json_get(&j, root, "line_hash");
    ok = ok && id && id->type == JSON_NUMBER && id->is_integer && id->num >= 1 && id->num < 1e15 && output &&
         output->type == JSON_STRING && finish && finish->type == JSON_STRING;
    char *end;
    if (ok && h && h->type == JSON_STRING && h->len == 16 && (*hash = strtoull(h->str, &end, 16), *end)) *hash = 0;
    long v = ok ? (long)id->num : -1;
    json_free(&j);
    if (v < 0) fatal("--resume %s: line %ld is not a nano result; move the file away or drop --resume", path, r->no);
    return v;
}

// --resume: keeps each result whose id and line hash match a line of the prompts file, once. The rest
// (changed, moved or repeated lines, a line cut short by an interruption) is dropped by writing the kept
// lines to a new file that replaces -o; returns the descriptor to append to.
typedef struct {
    unsigned char *keep;  // [lines read] 1: the line is a result kept
    long n_keep, n_drop;
    int cut;              // the last line has no line end (an interrupted write)
    char ids[80];         // the first dropped ids, for the message
} ResumeScan;

// Reads the results of an earlier run (r), marks b->done for each one kept and fills s.
static void resume_scan(Batch *b, const char *path, LineReader *r, ResumeScan *s) {
    while (line_next(r)) {
        uint64_t h = 0;
        long id = r->ended ? result_id(path, r, &h) : -1;
        int k = id > 0 && id <= b->n_lines && h == b->hash[id] && !b->done[id];
        if (k) b->done[id] = 1;
        else if (r->ended) {
            size_t l = strlen(s->ids);
            if (l < sizeof s->ids - 24) snprintf(s->ids + l, sizeof s->ids - l, "%s%ld", s->n_drop ? ", " : "", id);
            else if (!strstr(s->ids, "...")) strcat(s->ids, ", ...");
            s->n_drop++;
        }
        if (r->no % 4096 == 1) {
            s->keep = realloc(s->keep, (size_t)(r->no + 4096));
            if (!s->keep) fatal("out of memory");
        }
        s->keep[r->no - 1] = (unsigned char)k;
        s->n_keep += k;
        s->cut = !r->ended;  // only a last line can lack its line end
    }
}

static int resume_results(Batch *b, const Options *o, int fd) {
    LineReader r;
    if (lines_open(&r, o->out)) fatal("--resume %s: %s", o->out, file_error(o->out));
    ResumeScan s = {0};
    resume_scan(b, o->out, &r, &s);
    lines_close(&r);
    unsigned char *keep = s.keep;
    if (s.n_drop)
        fprintf(stderr, "nano: --resume %s: %ld result(s) no longer match their line of %s (changed, moved or repeated: id %s); they run again\n",
                o->out, s.n_drop, o->file, s.ids);
    if (s.n_drop || s.cut) {
        size_t n = strlen(o->out) + 8;
        char *tmp = xmalloc(n);
        snprintf(tmp, n, "%s.resume", o->out);
        int nfd = open_locked(tmp, O_WRONLY | O_CREAT | O_TRUNC);
        FILE *f = fdopen(dup(nfd), "w");
        if (!f || lines_open(&r, o->out)) fatal("--resume %s: %s", o->out, strerror(errno));
        while (line_next(&r))
            if (keep[r.no - 1]) fprintf(f, "%s\n", r.buf);
        lines_close(&r);
        out_check(f, tmp);
        if (fsync(nfd) != 0 || fclose(f) != 0 || rename(tmp, o->out) != 0) fatal("--resume %s: %s", tmp, strerror(errno));
        close(fd);
        fd = nfd;
        free(tmp);
    }
    free(keep);
    return fd;
}

// Prompts -f has left to run: the non-blank lines without a result in -o (--resume).
static int batch_remaining(const Batch *b) {
    int done = 0;
    for (long i = 1; i <= b->n_lines; i++) done += b->done[i];
    return b->total - done;
}

static void batch_prepare(Batch *b, const Options *o) {
    memset(b, 0, sizeof *b);
    LineReader r;
    open_prompts(&r, o->file);
    while (line_next(&r)) {
        if (r.no % 4096 == 1) {
            b->hash = realloc(b->hash, (size_t)(r.no + 4096) * sizeof *b->hash);
            if (!b->hash) fatal("out of memory");
        }
        b->hash[r.no] = hash64(r.buf, r.len);
        b->total += !is_blank(r.buf, r.len);
    }
    b->n_lines = r.no;
    lines_close(&r);
    b->done = xcalloc((size_t)b->n_lines + 1, 1);
    if (!o->out) {
        b->out = stdout;
        return;
    }
    int fd = open_locked(o->out, O_RDWR | O_CREAT);
    struct stat sb;
    if (o->resume) fd = resume_results(b, o, fd);
    else if (fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && ftruncate(fd, 0) != 0) fatal("-o %s: %s", o->out, strerror(errno));
    b->out = fdopen(fd, "a");
    if (!b->out) fatal("-o %s: %s", o->out, strerror(errno));
}

// -f runs up to s->n_seqs prompts at a time (--parallel): each line becomes a sequence with its own
// sampler, picker and extent of the KV pool; every step runs each sequence's next tokens (its whole
// prompt when it starts, then one token), in one forward_seqs when there are several. Results go out
// in input order, each line written and flushed as soon as the lines before it are.
typedef struct {
    long id;              // line number; 0: a free slot
    uint64_t hash;        // of the line as read
    BatchItem it;
    Sink gen;
    GenStats st;
    char err[200];
    double t0;
    int *ids, n_ids;      // the prompt's ids until they have run
    int base, pos;        // the extent of the KV pool (-1: none yet) and how many positions are in use
    int next;             // the id to run next, once the prompt has run
    Sampler sampler;      // the line's settings and seed (scratch shared with the session's)
    Picker picker;
    int *tokens;          // [ctx] the ids in its cache
    long order;           // its place among the lines run, for writing results in input order
} Seq;

// The results not yet written: result k (counting the lines run) is line[k - first], NULL until its
// sequence is done; written ones leave the front, so memory holds only those waiting for an earlier one.
typedef struct {
    char **line;
    long first, n, cap;  // results first .. n - 1 are held
} ResultQueue;

static long results_add(ResultQueue *q) {
    if (q->n - q->first == q->cap) {
        q->cap = q->cap ? 2 * q->cap : 64;
        q->line = realloc(q->line, (size_t)q->cap * sizeof *q->line);
        if (!q->line) fatal("out of memory");
    }
    q->line[q->n - q->first] = NULL;
    return q->n++;
}

// The finished result of q as one JSON line into its place; then every line whose turn has come to out.
static void seq_result(Seq *q, ResultQueue *rq, FILE *out, const char *out_name) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) fatal("out of memory");
    fprintf(f, "{\"id\": %ld, \"line_hash\": \"%016llx\", \"prompt\": ", q->id, (unsigned long long)q->hash);
    json_string(f, q->it.prompt ? q->it.prompt : "");
    fprintf(f, ", \"output\": ");
    json_string(f, q->gen.buf ? q->gen.buf : "");
    fprintf(f, ", \"n_prompt_tokens\": %d, \"n_gen_tokens\": %d, \"finish_reason\": \"%s\", \"seed\": %llu, \"ms\": %.1f",
            q->st.n_prompt, q->st.n_gen, q->err[0] ? "error" : finish_name[q->st.finish], (unsigned long long)q->it.seed,
            (now_seconds() - q->t0) * 1e3);
    if (q->err[0]) {
        fprintf(f, ", \"error\": ");
        json_string(f, q->err);
    }
    fprintf(f, "}\n");
    if (fclose(f) != 0) fatal("out of memory");
    rq->line[q->order - rq->first] = text;
    long k = 0, held = rq->n - rq->first;
    for (; k < held && rq->line[k]; k++) {
        fputs(rq->line[k], out);
        out_check(out, out_name);
        free(rq->line[k]);
    }
    memmove(rq->line, rq->line + k, (size_t)(held - k) * sizeof *rq->line);
    rq->first += k;
}

// A line of the prompts file into slot q: parsed and tokenized, or q->err set.
static void seq_start(Session *s, const Options *o, const SamplerConfig *defaults, const LineReader *r, Seq *q, long order) {
    q->id = r->no, q->hash = hash64(r->buf, r->len), q->order = order, q->t0 = now_seconds();
    q->base = -1, q->pos = 0;
    long nul = line_nul(r);
    if (nul >= 0) {
        snprintf(q->err, sizeof q->err, "NUL byte at byte offset %ld", nul);
        q->it.prompt = strdup(r->buf);
        return;
    }
    if (parse_batch_line(r->buf, o, defaults, &q->it, q->err, sizeof q->err)) return;
    q->gen = (Sink){.stops = (const char *const *)q->it.stops, .n_stops = q->it.n_stops};
    q->ids = prompt_tokens(s, o, q->it.system ? q->it.system : o->system, q->it.prompt, &q->n_ids, q->err, sizeof q->err);
    if (!q->ids) return;
    if (o->verbose_prompt) show_prompt(s, q->ids, q->n_ids);
    if (tokens_fit(s, q->ids, q->n_ids, 0, q->err, sizeof q->err)) return;
    q->st.n_prompt = q->n_ids;
    q->sampler.c = q->it.sampling;
    sampler_seed(&q->sampler, q->it.seed);
}

// The result of slot q written (in turn), and the slot freed.
static void seq_end(Seq *q, KVPool *pool, ResultQueue *rq, FILE *out, const char *out_name) {
    sink_finish(&q->gen);
    seq_result(q, rq, out, out_name);
    if (q->base >= 0) kv_pool_give(pool, q->base);
    batch_item_free(&q->it);
    free(q->gen.buf);
    free(q->ids);
    Sampler sampler = q->sampler;
    Picker picker = q->picker;
    int *tokens = q->tokens;
    memset(q, 0, sizeof *q);
    q->sampler = sampler, q->picker = picker, q->tokens = tokens;
}

// After a forward: the next id of slot q picked and taken into its reply; returns 1 when the reply is done.
static int seq_pick(Session *s, Seq *q) {
    if (q->it.n_predict == 0) {  // the prompt only
        q->st.finish = FINISH_LENGTH;
        return 1;
    }
    int id = picker_sample(&q->picker, q->tokens, q->pos);
    int f = reply_take(s, &q->gen, &q->st, id, q->pos == s->ctx);
    if (f < 0 && q->st.n_gen == q->it.n_predict) f = FINISH_LENGTH;
    if (f >= 0) {
        q->st.finish = (Finish)f;
        return 1;
    }
    q->next = id;
    return 0;
}

// -f: every prompt from a fresh cache of its own. Returns 0 when every prompt succeeded, else BATCH_FAILED.
static int batch_mode(Session *s, const Options *o, Batch *b) {
    FILE *out = b->out;
    const char *out_name = o->out ? o->out : "stdout";
    int progress = isatty(2) && !o->quiet, n_done = b->total - batch_remaining(b), n_err = 0, N = s->n_seqs;
    long n_tok = 0;
    double t_start = now_seconds();
    int skipped = n_done;
    SamplerConfig defaults = s->sampler.c;
    char failed[64] = "";  // the first failing ids, for the summary
    show_settings(s, o->n_stops ? ", --stop; lines may override" : "; lines may override");
    KVPool pool;
    kv_pool_init(&pool, s->engine->capacity, N);
    if (N > 1 && !o->quiet) {
        double bytes = (double)kv_model_bytes_per_token(&s->m, s->kv) * pool.capacity;
        int gib = bytes >= 1073741824.0;
        fprintf(stderr, "nano: batch: up to %d prompts at once in a KV pool of %d positions (%.2f %s, %s)\n", N, pool.capacity,
                bytes / (gib ? 1073741824.0 : 1048576.0), gib ? "GiB" : "MiB", kv_format_name(s->kv));
    }
    Seq *seqs = xcalloc((size_t)N, sizeof *seqs);
    for (int k = 0; k < N; k++) {
        seqs[k].sampler = s->sampler;
        picker_init(&seqs[k].picker, s->engine, &seqs[k].sampler, s->m.cfg.vocab);
        seqs[k].tokens = xmalloc((size_t)s->ctx * sizeof *seqs[k].tokens);
    }
    SeqRow *rows = xcalloc((size_t)N, sizeof *rows);
    TopLogits *tops = xcalloc((size_t)N, sizeof *tops);
    ResultQueue rq = {0};
    LineReader r;
    open_prompts(&r, o->file);
    int lines_left = 1;
    Seq *waiting = NULL;  // a prompt ready to start once the pool has room for it
    for (;;) {
        // Start prompts while slots are free and the pool has room, in input order.
        while (lines_left) {
            Seq *q = waiting;
            if (!q) {
                int k = 0;
                while (k < N && seqs[k].id) k++;
                if (k == N) break;
                while ((lines_left = line_next(&r)) && (is_blank(r.buf, r.len) || (r.no <= b->n_lines && b->done[r.no]))) {}
                if (!lines_left) break;
                q = &seqs[k];
                seq_start(s, o, &defaults, &r, q, results_add(&rq));
            }
            waiting = NULL;
            if (!q->err[0]) {
                // The prompt and every generated id but the last, which is never fed.
                long long want = (long long)q->n_ids + (q->it.n_predict > 0 ? q->it.n_predict - 1 : 0);
                int need = want < s->ctx ? (int)want : s->ctx;
                if (need > pool.capacity)
                    snprintf(q->err, sizeof q->err, "the prompt and its reply need %d positions; the KV pool holds %d (--kv-pool, or -c x --parallel)",
                             need, pool.capacity);
                else if ((q->base = kv_pool_take(&pool, need)) < 0) {
                    waiting = q;  // the lines after it wait too
                    break;
                }
            }
            if (q->err[0]) {
                if (n_err < 5) snprintf(failed + strlen(failed), sizeof failed - strlen(failed), "%s%ld", n_err ? ", " : "", q->id);
                n_err++, n_done++;
                seq_end(q, &pool, &rq, out, out_name);
            }
        }
        // One step: the prompts that start, and one token of every other sequence.
        int n_rows = 0;
        for (int k = 0; k < N; k++) {
            Seq *q = &seqs[k];
            if (!q->id || q->base < 0) continue;
            int prompt = q->pos == 0;
            rows[n_rows++] = (SeqRow){.seq = k, .base = q->base, .ids = prompt ? q->ids : &q->next, .n = prompt ? q->n_ids : 1, .pos = q->pos};
        }
        if (!n_rows) break;
        if (N > 1) s->engine->forward_seqs(s->engine, rows, n_rows, s->sampler.n_ids, tops);
        else picker_forward(&seqs[rows[0].seq].picker, rows[0].ids, rows[0].n, rows[0].pos);
        for (int i = 0; i < n_rows; i++) {
            const SeqRow *w = &rows[i];
            Seq *q = &seqs[w->seq];
            if (N > 1) picker_set_row(&q->picker, &tops[i], i, w->pos + w->n - 1);
            memcpy(q->tokens + q->pos, w->ids, (size_t)w->n * sizeof *w->ids);
            q->pos += w->n;
            if (w->pos == 0) n_tok += w->n;
            int before = q->st.n_gen, done = seq_pick(s, q);
            n_tok += q->st.n_gen - before;
            if (!done) continue;
            n_done++;
            seq_end(q, &pool, &rq, out, out_name);
        }
        if (progress) {
            double el = now_seconds() - t_start;
            int ran = n_done - skipped;
            fprintf(stderr, "\rnano: %d/%d prompts, %.1f tok/s, ETA %.0f s   ", n_done, b->total, el > 0 ? n_tok / el : 0.0,
                    ran ? el / ran * (b->total - n_done) : 0.0);
        }
    }
    lines_close(&r);
    if (progress) fprintf(stderr, "\n");
    double dt = now_seconds() - t_start;
    fprintf(stderr, "nano: %d prompts done (%d skipped as already in %s), %d errors, %ld tokens in %.1f s\n", n_done - skipped,
            skipped, o->out ? o->out : "the output", n_err, n_tok, dt);
    if (n_err)
        fprintf(stderr, "nano: %d of %d prompts failed (id %s%s); their results say why in \"error\"; exit status %d\n", n_err,
                n_done - skipped, failed, n_err > 5 ? ", ..." : "", BATCH_FAILED);
    if (out != stdout && fclose(out) != 0) fatal("-o %s: write failed: %s", o->out, strerror(errno));
    for (int k = 0; k < N; k++) {
        picker_free(&seqs[k].picker);
        free(seqs[k].tokens);
    }
    free(seqs), free(rows), free(tops), free(rq.line);
    kv_pool_free(&pool);
    free(b->done);
    free(b->hash);
    return n_err ? BATCH_FAILED : 0;
}

// --perplexity: windows of ctx tokens, each starting stride after the last; a window scores only the
// tokens no earlier window scored, so every token after the first is predicted exactly once.
static void perplexity_mode(Session *s, const Options *o) {
    size_t len;
    char *text = read_file(o->perplexity, READ_ANY_SIZE, &len);
    if (!text) fatal("--perplexity %s: %s", o->perplexity, file_error(o->perplexity));
    char err[160];
    int n;
    int *ids = tokenizer_encode(s->tok, text, len, 0, &n, err, sizeof err);
    if (!ids) fatal("--perplexity %s: %s", o->perplexity, err);
    if (n < 2) fatal("--perplexity %s: %d tokens; at least 2 are needed", o->perplexity, n);
    for (int i = 0; i < n; i++)
        if (ids[i] >= s->m.cfg.vocab) fatal("--perplexity %s: token id %d is outside the model's vocabulary", o->perplexity, ids[i]);
    int C = s->ctx, S = o->stride ? o->stride : C / 2;
    if (C < 2) fatal("--perplexity: a window (-c) of %d token predicts nothing; use -c 2 or more", C);
    if (S > C) fatal("--stride %d is longer than the window (-c %d): tokens would go unscored", S, C);
    size_t V = (size_t)s->m.cfg.vocab;
    int B = o->batch;
    // Quality of a KV format: the same windows through the exact cache (f32, reference path) or, on the
    // GPU, bf16; llama-perplexity --kl-divergence's figures against it.
    KVFormat base_kv = strcmp(s->engine->name, "ref") ? KV_BF16 : KV_F32;
    Engine *base = s->kv == base_kv ? NULL : open_engine(o, &s->m, s->ctx, base_kv, NULL, 0);
    float *logits = xmalloc((size_t)B * V * sizeof(float)), *base_logits = base ? xmalloc((size_t)B * V * sizeof(float)) : NULL;
    double nll = 0, base_nll = 0, kld = 0, max_kld = 0, t0 = now_seconds();
    int scored = 0, scored_end = 1, same_top = 0;  // the first token is never predicted
    int progress = isatty(2) && !o->quiet;
    for (int begin = 0;; begin += S) {
        int end = begin + C < n ? begin + C : n;
        for (int k = begin; k < end - 1; k += B) {  // rows predict ids[k+1 ...]
            int T = end - 1 - k < B ? end - 1 - k : B;
            s->engine->forward(s->engine, ids + k, T, k - begin, logits, 1);
            logits_check(logits, T, (int)V, k - begin);
            if (base) base->forward(base, ids + k, T, k - begin, base_logits, 1);
            for (int r = 0; r < T; r++) {
                int target = k + r + 1;
                if (target < scored_end) continue;
                const float *row = logits + (size_t)r * V;
                double lse = log_sum_exp(row, V);
                nll += lse - row[ids[target]];
                scored++;
                if (!base) continue;
                const float *brow = base_logits + (size_t)r * V;
                int top, btop;
                double kl = logits_kld(brow, row, V, &btop, &top);
                base_nll += log_sum_exp(brow, V) - brow[ids[target]];
                kld += kl;
                max_kld = kl > max_kld ? kl : max_kld;
                same_top += top == btop;
            }
        }
        scored_end = end;
        if (progress) {  // \r: the line is rewritten in place
            double dt = now_seconds() - t0;
            fprintf(stderr, "\rnano: perplexity %d/%d tokens scored, %.4f so far, ETA %.0f s   ", scored, n - 1, exp(nll / scored),
                    dt / scored * (n - 1 - scored));
        }
        if (end == n) break;
    }
    if (progress) fprintf(stderr, "\n");
    double dt = now_seconds() - t0;
    printf("perplexity: %.4f over %d scored tokens of %d (ctx %d, stride %d), mean nll %.6f\n", exp(nll / scored), scored, n, C, S,
           nll / scored);
    if (base)
        printf("vs %s KV: perplexity %.4f, change %+.3f%%, mean KLD %.3e, max KLD %.3e, same top-1 %.2f%% (%d of %d)\n",
               kv_format_name(base_kv), exp(base_nll / scored), 100 * (exp((nll - base_nll) / scored) - 1), kld / scored, max_kld,
               100.0 * same_top / scored, same_top, scored);
    out_check(stdout, "stdout");
    fprintf(stderr, "nano: perplexity took %.1f s, %.1f tok/s | %s, %s KV\n", dt, dt > 0 ? scored / dt : 0.0, s->engine->name,
            kv_format_name(s->kv));
    if (base) base->free(base);
    free(base_logits);
    free(logits);
    free(ids);
    free(text);
}

#ifndef TESTING
int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++)  // --bench takes its own flags (-p and -n are lists there)
        if (!strcmp(argv[i], "--bench")) return bench_main(argc, argv);
    Options o;
    parse_args(&o, argc, argv);
    if (o.help) {
        if (o.help == 'h') usage(stdout);
        else print_version();
        return 0;
    }
    check_arguments(&o);
    if (o.tokenize || o.tokenize_file) {
        tokenize_mode(&o);
        return close_stdout();
    }
    if (o.check) return check_mode(&o);
    Batch b;
    if (o.file) batch_prepare(&b, &o);
    Session s;
    session_open(&s, &o, !o.prompt_ids, o.file ? batch_remaining(&b) : 0);
    int rc = 0;
    if (o.prompt_ids) prompt_ids_mode(&s, &o);
    else if (o.prompt) prompt_mode(&s, &o);
    else if (o.interactive) interactive_mode(&s, &o);
    else if (o.file) rc = batch_mode(&s, &o, &b);
    else perplexity_mode(&s, &o);
    session_close(&s);
    free(o.stops);
    close_stdout();
    return rc;
}
#endif
