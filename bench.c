// nano --bench: prefill and decode speed in one process, in the manner of llama-bench. Each model is
// loaded once (the load is timed and reported apart); each test runs once to warm up and then -r times;
// decode goes through the Engine API and the sampler as -p does. Results: a markdown table, CSV or
// JSON on stdout, and with --save all three plus an SVG plot of decode speed against context depth.
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gpu/hooks.h"
#include "nano.h"

#define MAX_LIST 32
#define MAX_MODELS 16
#define DEFAULT_REPS 5
#define DEFAULT_BENCH_BATCH 512  // llama-bench's micro-batch

typedef struct {
    int v[MAX_LIST], n;
} IntList;

typedef struct {
    const char *models[MAX_MODELS];
    int n_models;
    IntList pp, tg, depth, wo_split;  // wo_split empty: the engine's own pick
    IntList par;                      // -np: sequences run together; empty: one
    KVFormat kv[KV_N_FORMATS];
    int n_kv;  // 0: each model's default
    int reps, batch, threads, force_ref, quiet, greedy;
    const char *format;  // md, csv, json
    const char *save;    // PREFIX of .md, .csv, .json, .svg, or NULL
} BenchOptions;

// One result row: a test of one model, engine and setting.
typedef struct {
    char model[128];
    double size_bytes, params;
    const char *backend;
    KVFormat kv;
    int wo_split;  // 0 on the reference path
    int n_prompt, n_gen, depth;
    int n_seqs;            // sequences run together (-np), each with n_prompt or n_gen tokens; 1 for one
    double mean, std;      // tok/s over the repetitions, of all sequences together
    double bytes_per_tok;  // decode: weights + the KV cache at the steps' mean context; 0 for prefill
    double load_s;
} Row;

// What is the same for every row of a run.
typedef struct {
    char device[128], driver[32], runtime[32], date[32], sampler[96], copy_method[96];
    double copy_bw;  // bytes/s, read + written
    int threads;
} RunInfo;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void bench_usage(void) {
    printf("Usage: nano --bench -m DIR [-m DIR ...] [-p 512] [-n 128] [-d 0] [-r %d] [--kv LIST] [--wo-split LIST] [-o md|csv|json]\n"
           "Prefill (pp<N>) and decode (tg<M>) speed at context depths (@ d<D>), in one process: each model loaded once,\n"
           "each test run once to warm up, then -r times; mean and sample standard deviation of tok/s.\n"
           "Lists are comma separated and swept (every combination); -p 0 or -n 0 leaves those tests out.\n"
           "  -m, --model DIR       checkpoint directory; repeat to compare models\n"
           "  -p LIST               prompt lengths of the prefill tests (default 512)\n"
           "  -n LIST               decode tokens of the decode tests (default 128)\n"
           "  -d LIST               context depth: tokens in the KV cache before the test (default 0)\n"
           "  -r N                  repetitions of each test after its warm-up (default %d)\n"
           "      --kv LIST         KV cache formats (default: the model's default, f16)\n"
           "      --wo-split LIST   GPU: o_proj reduction splits, of 1, 2, 4, 8 (default: the engine's pick)\n"
           "  -np LIST              batched generation as -f --parallel N runs it: N sequences together, each with its own\n"
           "                        prompt of -p ids (pp<P> xN: all prompts in one step) and then -n decode steps of all of\n"
           "                        them (tg<M> xN, after the prompts); tok/s of all sequences together; -d must be 0\n"
           "  -b, --batch N         prefill chunk in tokens (default %d)\n"
           "      --sampler NAME    decode sampler: greedy, or model (generation_config.json's settings) (default greedy)\n"
           "  -o FORMAT             stdout: md, csv or json (default md)\n"
           "      --save PREFIX     also write PREFIX.md, PREFIX.csv, PREFIX.json and PREFIX.svg (decode tok/s against depth)\n"
           "      --ref             the scalar reference path; -t N its threads (default: every core)\n"
           "  -q, --quiet           no progress lines on stderr\n",
           DEFAULT_REPS, DEFAULT_REPS, DEFAULT_BENCH_BATCH);
}

static const char *value(const char *flag, const char *v) {
    if (!v) fatal("%s: missing value", flag);
    return v;
}

static int parse_int(const char *flag, const char *s, int lo, int hi) {
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || *end || v < lo || v > hi) fatal("%s: expected an integer in [%d, %d], got '%s'", flag, lo, hi, s);
    return (int)v;
}

// "512,2048": each item an integer in [lo, hi]; at most MAX_LIST.
static void parse_list(const char *flag, const char *s, int lo, int hi, IntList *out) {
    out->n = 0;
    char item[32];
    for (const char *p = s;;) {
        size_t len = strcspn(p, ",");
        if (len == 0 || len >= sizeof item) fatal("%s: expected a comma-separated list of integers, got '%s'", flag, s);
        if (out->n == MAX_LIST) fatal("%s: more than %d values", flag, MAX_LIST);
        memcpy(item, p, len), item[len] = 0;
        out->v[out->n++] = parse_int(flag, item, lo, hi);
        if (!p[len]) break;
        p += len + 1;
    }
}

static void parse_kv_list(const char *s, BenchOptions *o) {
    char item[32];
    o->n_kv = 0;
    for (const char *p = s;;) {
        size_t len = strcspn(p, ",");
        if (len >= sizeof item) len = sizeof item - 1;
        memcpy(item, p, len), item[len] = 0;
        if (kv_format_parse(item, &o->kv[o->n_kv])) fatal("--kv: unknown format '%s' (expected one of %s)", item, kv_format_list());
        if (++o->n_kv == KV_N_FORMATS && p[strcspn(p, ",")]) fatal("--kv: more formats than there are");
        p += strcspn(p, ",");
        if (!*p++) break;
    }
}

static void bench_args(BenchOptions *o, int argc, char **argv) {
    memset(o, 0, sizeof *o);
    o->pp = (IntList){{512}, 1};
    o->tg = (IntList){{128}, 1};
    o->depth = (IntList){{0}, 1};
    o->reps = DEFAULT_REPS;
    o->batch = DEFAULT_BENCH_BATCH;
    o->greedy = 1;
    o->format = "md";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = argv[i + 1];
        if (!strcmp(a, "--bench")) continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            bench_usage();
            exit(0);
        }
        if (!strcmp(a, "--ref")) o->force_ref = 1;
        else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) o->quiet = 1;
        else {
            if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
                if (o->n_models == MAX_MODELS) fatal("-m: more than %d models", MAX_MODELS);
                o->models[o->n_models++] = value(a, v);
            } else if (!strcmp(a, "-p")) parse_list(a, value(a, v), 0, 1 << 20, &o->pp);
            else if (!strcmp(a, "-n")) parse_list(a, value(a, v), 0, 1 << 20, &o->tg);
            else if (!strcmp(a, "-d")) parse_list(a, value(a, v), 0, 1 << 24, &o->depth);
            else if (!strcmp(a, "-np")) parse_list(a, value(a, v), 1, MAX_PARALLEL, &o->par);
            else if (!strcmp(a, "-r")) o->reps = parse_int(a, value(a, v), 1, 1000);
            else if (!strcmp(a, "-b") || !strcmp(a, "--batch")) o->batch = parse_int(a, value(a, v), 1, 1 << 16);
            else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) o->threads = parse_int(a, value(a, v), 1, 256);
            else if (!strcmp(a, "--kv")) parse_kv_list(value(a, v), o);
            else if (!strcmp(a, "--wo-split")) {
                parse_list(a, value(a, v), 1, 8, &o->wo_split);
                for (int k = 0; k < o->wo_split.n; k++)
                    if (!wo_split_valid(o->wo_split.v[k])) fatal("--wo-split: expected 1, 2, 4 or 8, got %d", o->wo_split.v[k]);
            } else if (!strcmp(a, "--sampler")) {
                if (!strcmp(value(a, v), "greedy")) o->greedy = 1;
                else if (!strcmp(v, "model")) o->greedy = 0;
                else fatal("--sampler: expected greedy or model, got '%s'", v);
            } else if (!strcmp(a, "-o")) {
                o->format = value(a, v);
                if (strcmp(v, "md") && strcmp(v, "csv") && strcmp(v, "json")) fatal("-o: expected md, csv or json, got '%s'", v);
            } else if (!strcmp(a, "--save")) o->save = value(a, v);
            else fatal("--bench: unknown option '%s' (see nano --bench --help)", a);
            i++;
        }
    }
    if (!o->n_models) fatal("--bench: no model: pass -m DIR (see nano --bench --help)");
    int any = 0;
    for (int k = 0; k < o->pp.n; k++) any |= o->pp.v[k] > 0;
    for (int k = 0; k < o->tg.n; k++) any |= o->tg.v[k] > 0;
    if (!any) fatal("--bench: no test: -p and -n are all 0");
    for (int k = 0; k < o->depth.n && o->par.n; k++)
        if (o->depth.v[k]) fatal("-np: batched tests start from empty caches; -d must be 0");
}

static int list_max(const IntList *l) {
    int m = 0;
    for (int k = 0; k < l->n; k++) m = l->v[k] > m ? l->v[k] : m;
    return m;
}

// A file --save writes must be creatable before any slow work starts.
static FILE *open_save(const char *prefix, const char *ext) {
    char path[4096];
    snprintf(path, sizeof path, "%s.%s", prefix, ext);
    FILE *f = fopen(path, "w");
    if (!f) fatal("--save %s: cannot create %s: %s", prefix, path, strerror(errno));
    return f;
}

// ---------------------------------------------------------------------------------------------
// Sizes, bandwidth, the machine

static double dtype_bytes(DType t) { return t == DT_F32 ? 4 : 2; }
static double tensor_bytes(const Tensor *t) { return t->data ? (double)t->rows * t->cols * dtype_bytes(t->dtype) : 0; }

// What a reference decode step reads: every weight once, as stored, and one row of the embedding.
static double ref_weight_bytes(const Model *m) {
    const Config *c = &m->cfg;
    double b = tensor_bytes(&m->final_norm) + tensor_bytes(&m->lm_head) + (double)c->hidden * dtype_bytes(m->embed.dtype);
    for (int l = 0; l < c->n_layers; l++) {
        const LayerWeights *w = &m->layers[l];
        const Tensor *t[] = {&w->input_norm, &w->wq, &w->wk, &w->wv, &w->bq, &w->bk, &w->bv, &w->q_norm,
                             &w->k_norm, &w->wo, &w->bo, &w->post_norm, &w->w_gate, &w->w_up, &w->w_down};
        for (size_t k = 0; k < sizeof t / sizeof *t; k++) b += tensor_bytes(t[k]);
    }
    return b;
}

// The checkpoint as stored: bytes and parameters of every tensor in its files.
static void checkpoint_size(const Model *m, double *bytes, double *params) {
    *bytes = *params = 0;
    for (int s = 0; s < m->n_shards; s++)
        for (int k = 0; k < m->shards[s].n_tensors; k++) {
            const TensorEntry *t = &m->shards[s].tensors[k];
            double n = 1;
            for (int d = 0; d < t->ndim; d++) n *= (double)t->shape[d];
            *bytes += (double)t->nbytes;
            *params += n;
        }
}

// Host memcpy bandwidth (read + written, like the GPU's copy figure), best of 5 over 256 MiB.
static double memcpy_bandwidth(void) {
    size_t n = (size_t)256 << 20;
    char *a = xmalloc(n), *b = xmalloc(n);
    memset(a, 1, n), memset(b, 2, n);
    double best = 0;
    for (int r = 0; r < 5; r++) {
        double t0 = now_s();
        memcpy(b, a, n);
        double t = now_s() - t0;
        a[r] = b[n - 1 - r];  // keeps the copies from being folded away
        if (t > 0 && 2.0 * n / t > best) best = 2.0 * n / t;
    }
    free(a), free(b);
    return best;
}

static void cpu_name(char *out, size_t len) {
    snprintf(out, len, "CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "model name", 10) && strchr(line, ':')) {
            char *p = strchr(line, ':') + 1;
            while (*p == ' ') p++;
            p[strcspn(p, "\n")] = 0;
            snprintf(out, len, "%s", p);
            break;
        }
    fclose(f);
}

// ---------------------------------------------------------------------------------------------
// The tests

typedef struct {
    Engine *e;
    Picker next;    // decode: forward, then pick, as -p does (its sampler is reseeded every repetition)
    int *tokens;    // [capacity] the depth's ids, then what the test feeds
    int n_prompt, n_gen, depth;
    // Batched (-np): n_seqs sequences, sequence k's ids at tokens + k span, its cache the extent at k span
    int n_seqs, span, prompt;  // prompt: ids each sequence holds before a decode test
    Sampler *samplers;         // [n_seqs] the bench's sampler, each reseeded (scratch shared)
    Picker *pickers;           // [n_seqs]
    SeqRow *rows;
    TopLogits *tops;
} Test;

// Batched: every sequence's prompt in one forward_seqs, or n_gen steps of one token of each, with each
// sequence's pick from its row's candidates, as -f --parallel runs them.
static void test_run_seqs(Test *t) {
    int N = t->n_seqs, n = t->n_prompt ? t->n_prompt : 1, pos = t->n_prompt ? 0 : t->prompt;
    for (int step = 0; step < (t->n_prompt ? 1 : t->n_gen); step++, pos += n) {
        for (int k = 0; k < N; k++) t->rows[k] = (SeqRow){.seq = k, .base = k * t->span, .ids = t->tokens + (size_t)k * t->span + pos, .n = n, .pos = pos};
        t->e->forward_seqs(t->e, t->rows, N, t->samplers[0].n_ids, t->tops);
        if (t->n_prompt) return;
        for (int k = 0; k < N; k++) {
            int *seq = t->tokens + (size_t)k * t->span;
            picker_set_row(&t->pickers[k], &t->tops[k], k, pos);
            seq[pos + 1] = picker_sample(&t->pickers[k], seq, pos + 1);
        }
    }
}

// One repetition: the prompt in one forward call, or n_gen decode steps, each a forward of the last
// pick and a draw, through the Picker as -p generates (on the GPU the host gets the logits' ranking).
static void test_run(void *ctx) {
    Test *t = ctx;
    if (t->n_seqs > 1) {
        test_run_seqs(t);
        return;
    }
    if (t->n_prompt) {
        picker_forward(&t->next, t->tokens + t->depth, t->n_prompt, t->depth);
        return;
    }
    int pos = t->depth, id = t->tokens[pos];
    for (int k = 0; k < t->n_gen; k++) {
        picker_forward(&t->next, &id, 1, pos);
        t->tokens[pos++] = id;
        id = picker_sample(&t->next, t->tokens, pos);
    }
}

// Every repetition starts from the same ids and the same sampler state.
static double time_run(Test *t, const int *ids, int gpu) {
    int n = t->n_prompt ? t->n_prompt : t->n_gen;
    if (t->n_seqs > 1) memcpy(t->tokens, ids, (size_t)t->n_seqs * t->span * sizeof *ids);
    else memcpy(t->tokens + t->depth, ids + t->depth, (size_t)n * sizeof *ids);
    for (int k = 0; k < t->n_seqs; k++) sampler_seed(&t->samplers[k], 1234 + (uint64_t)k);
    sampler_seed(t->next.s, 1234);
    if (gpu) return cuda_engine_time(t->e, test_run, t);
    double t0 = now_s();
    test_run(t);
    return now_s() - t0;
}

// ---------------------------------------------------------------------------------------------
// Output

static void fmt_size(char *out, size_t len, double bytes) {
    if (bytes >= 1073741824.0) snprintf(out, len, "%.2f GiB", bytes / 1073741824.0);
    else snprintf(out, len, "%.2f MiB", bytes / 1048576.0);
}

static void fmt_params(char *out, size_t len, double n) {
    if (n >= 1e9) snprintf(out, len, "%.2f B", n / 1e9);
    else snprintf(out, len, "%.2f M", n / 1e6);
}

static void test_name(char *out, size_t len, const Row *r) {
    int n = r->n_prompt ? snprintf(out, len, "pp%d", r->n_prompt) : snprintf(out, len, "tg%d", r->n_gen);
    if (r->n_seqs > 1) n += snprintf(out + n, len - (size_t)n, " x%d", r->n_seqs);
    if (r->depth) snprintf(out + n, len - (size_t)n, " @ d%d", r->depth);
}

static double gb_s(const Row *r) { return r->bytes_per_tok * r->mean / 1e9; }

static void md_header(FILE *f) {
    fprintf(f, "| model | size | params | backend | KV | wo_split | test | t/s | GB/s | %% of copy |\n");
    fprintf(f, "| --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |\n");
}

static void md_row(FILE *f, const Row *r, const RunInfo *ri) {
    char size[32], params[32], test[48], split[8] = "-", gb[32] = "", pct[32] = "";
    fmt_size(size, sizeof size, r->size_bytes);
    fmt_params(params, sizeof params, r->params);
    test_name(test, sizeof test, r);
    if (r->wo_split) snprintf(split, sizeof split, "%d", r->wo_split);
    if (r->bytes_per_tok) {
        snprintf(gb, sizeof gb, "%.2f", gb_s(r));
        snprintf(pct, sizeof pct, "%.1f%%", 100 * gb_s(r) * 1e9 / ri->copy_bw);
    }
    fprintf(f, "| %s | %s | %s | %s | %s | %s | %s | %.2f ± %.2f | %s | %s |\n", r->model, size, params, r->backend,
            kv_format_name(r->kv), split, test, r->mean, r->std, gb, pct);
}

static void md_footer(FILE *f, const RunInfo *ri, int reps, int batch) {
    char versions[96] = "";
    if (ri->driver[0]) snprintf(versions, sizeof versions, " (driver %s, %s)", ri->driver, ri->runtime);
    fprintf(f, "\nnano %s, %s%s, copy %.1f GB/s (%s), %d repetition%s after a warm-up, prefill chunk %d, %s sampler, %s\n",
            nano_commit, ri->device, versions, ri->copy_bw / 1e9, ri->copy_method, reps, reps == 1 ? "" : "s", batch, ri->sampler, ri->date);
}

// A CSV field: quoted, with quotes doubled, whenever it holds a comma, a quote or a line end.
static void csv_str(FILE *f, const char *s) {
    if (!strpbrk(s, ",\"\r\n")) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"') fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static const char csv_columns[] = "model,size_bytes,params,backend,device,kv,wo_split,n_batch,test,n_prompt,n_gen,depth,reps,sampler,"
                                  "tok_s,tok_s_std,bytes_per_token,gb_s,copy_gb_s,copy_pct,load_s,commit,date\n";

static void csv_row(FILE *f, const Row *r, const RunInfo *ri, int reps, int batch) {
    char test[48];
    test_name(test, sizeof test, r);
    csv_str(f, r->model);
    fprintf(f, ",%.0f,%.0f,%s,", r->size_bytes, r->params, r->backend);
    csv_str(f, ri->device);
    fprintf(f, ",%s,", kv_format_name(r->kv));
    if (r->wo_split) fprintf(f, "%d", r->wo_split);
    fprintf(f, ",%d,%s,%d,%d,%d,%d,", batch, test, r->n_prompt, r->n_gen, r->depth, reps);
    csv_str(f, ri->sampler);
    fprintf(f, ",%.4f,%.4f,", r->mean, r->std);
    if (r->bytes_per_tok) fprintf(f, "%.0f,%.3f", r->bytes_per_tok, gb_s(r));
    else fputc(',', f);
    fprintf(f, ",%.3f,", ri->copy_bw / 1e9);
    if (r->bytes_per_tok) fprintf(f, "%.2f", 100 * gb_s(r) * 1e9 / ri->copy_bw);
    fprintf(f, ",%.3f,%s,%s\n", r->load_s, nano_commit, ri->date);
}

static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

// One object a line, so that the rows of a run can be read line by line as well as parsed whole.
static void json_row(FILE *f, const Row *r, const RunInfo *ri, int reps, int batch, int first) {
    char test[48];
    test_name(test, sizeof test, r);
    fprintf(f, "%s  {\"model\": ", first ? "" : ",\n");
    json_str(f, r->model);
    fprintf(f, ", \"size_bytes\": %.0f, \"params\": %.0f, \"backend\": \"%s\", \"device\": ", r->size_bytes, r->params, r->backend);
    json_str(f, ri->device);
    fputs(", \"driver\": ", f);
    if (ri->driver[0]) json_str(f, ri->driver);
    else fputs("null", f);
    fputs(", \"cuda\": ", f);
    if (ri->runtime[0]) json_str(f, ri->runtime);
    else fputs("null", f);
    fprintf(f, ", \"threads\": %d, \"kv\": \"%s\", \"wo_split\": ", ri->threads, kv_format_name(r->kv));
    if (r->wo_split) fprintf(f, "%d", r->wo_split);
    else fputs("null", f);
    fprintf(f, ", \"n_batch\": %d, \"test\": \"%s\", \"n_prompt\": %d, \"n_gen\": %d, \"depth\": %d, \"n_seqs\": %d, \"reps\": %d, \"sampler\": ",
            batch, test, r->n_prompt, r->n_gen, r->depth, r->n_seqs, reps);
    json_str(f, ri->sampler);
    fprintf(f, ", \"tok_s\": %.4f, \"tok_s_std\": %.4f, ", r->mean, r->std);
    if (r->bytes_per_tok)
        fprintf(f, "\"bytes_per_token\": %.0f, \"gb_s\": %.3f, \"copy_pct\": %.2f, ", r->bytes_per_tok, gb_s(r),
                100 * gb_s(r) * 1e9 / ri->copy_bw);
    else fputs("\"bytes_per_token\": null, \"gb_s\": null, \"copy_pct\": null, ", f);
    fprintf(f, "\"copy_gb_s\": %.3f, \"copy_method\": ", ri->copy_bw / 1e9);
    json_str(f, ri->copy_method);
    fprintf(f, ", \"load_s\": %.3f, \"commit\": \"%s\", \"date\": \"%s\"}", r->load_s, nano_commit, ri->date);
}

// Decode tok/s against context depth: a line per (model, KV format, wo_split, tg<M>); depths evenly
// spaced in the order measured, so 0, 4096 and 32768 are all readable.
static void svg_plot(FILE *f, const Row *rows, int n_rows) {
    int depths[MAX_LIST], n_depths = 0;
    double ymax = 0;
    for (int i = 0; i < n_rows; i++) {
        if (!rows[i].n_gen) continue;
        int k = 0;
        while (k < n_depths && depths[k] != rows[i].depth) k++;
        if (k == n_depths && n_depths < MAX_LIST) depths[n_depths++] = rows[i].depth;
        if (rows[i].mean + rows[i].std > ymax) ymax = rows[i].mean + rows[i].std;
    }
    for (int a = 1; a < n_depths; a++)  // ascending
        for (int b = a; b > 0 && depths[b - 1] > depths[b]; b--) {
            int t = depths[b];
            depths[b] = depths[b - 1], depths[b - 1] = t;
        }
    const double W = 900, H = 420, x0 = 70, x1 = 500, y0 = 360, y1 = 30;
    static const char *colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"};
    if (ymax <= 0) ymax = 1;
    double step = pow(10, floor(log10(ymax / 4))), ytop = ceil(ymax * 1.05 / step) * step;
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" font-size=\"12\">\n", W, H);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    fprintf(f, "<text x=\"%.0f\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">nano decode speed against context depth</text>\n", (x0 + x1) / 2);
    for (double y = 0; y <= ytop + step / 2; y += step) {
        double py = y0 - (y0 - y1) * y / ytop;
        fprintf(f, "<line x1=\"%.0f\" y1=\"%.1f\" x2=\"%.0f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", x0, py, x1, py);
        fprintf(f, "<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n", x0 - 6, py + 4, y);
    }
    double dx = n_depths > 1 ? (x1 - x0 - 40) / (n_depths - 1) : 0;
    for (int k = 0; k < n_depths; k++)
        fprintf(f, "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%d</text>\n", x0 + 20 + dx * k, y0 + 18, depths[k]);
    fprintf(f, "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"black\"/>\n", x0, y0, x1, y0);
    fprintf(f, "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"black\"/>\n", x0, y0, x0, y1);
    fprintf(f, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">context depth (tokens in the KV cache)</text>\n", (x0 + x1) / 2, y0 + 38);
    fprintf(f, "<text transform=\"translate(18 %.0f) rotate(-90)\" text-anchor=\"middle\">decode tok/s</text>\n", (y0 + y1) / 2);
    int series = 0;
    for (int i = 0; i < n_rows; i++) {
        const Row *r = &rows[i];
        if (!r->n_gen) continue;
        int seen = 0;  // a series is drawn at its first row
        for (int j = 0; j < i && !seen; j++)
            seen = rows[j].n_gen == r->n_gen && rows[j].kv == r->kv && rows[j].wo_split == r->wo_split && !strcmp(rows[j].model, r->model);
        if (seen) continue;
        const char *color = colors[series % 8];
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", color);
        for (int k = 0; k < n_depths; k++)
            for (int j = i; j < n_rows; j++)
                if (rows[j].depth == depths[k] && rows[j].n_gen == r->n_gen && rows[j].kv == r->kv && rows[j].wo_split == r->wo_split &&
                    !strcmp(rows[j].model, r->model))
                    fprintf(f, "%.1f,%.1f ", x0 + 20 + dx * k, y0 - (y0 - y1) * rows[j].mean / ytop);
        fprintf(f, "\"/>\n");
        char label[200];
        int n = snprintf(label, sizeof label, "%s, %s KV, tg%d", r->model, kv_format_name(r->kv), r->n_gen);
        if (r->wo_split) snprintf(label + n, sizeof label - (size_t)n, ", wo_split %d", r->wo_split);
        double ly = y1 + 10 + 18 * series;
        fprintf(f, "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"%s\" stroke-width=\"2\"/>\n", x1 + 12, ly, x1 + 32, ly, color);
        fprintf(f, "<text x=\"%.0f\" y=\"%.0f\">", x1 + 36, ly + 4);
        for (const char *p = label; *p; p++) {
            if (*p == '<') fputs("&lt;", f);
            else if (*p == '&') fputs("&amp;", f);
            else fputc(*p, f);
        }
        fprintf(f, "</text>\n");
        series++;
    }
    fprintf(f, "</svg>\n");
}

// ---------------------------------------------------------------------------------------------
// The run

static void mean_std(const double *x, int n, double *mean, double *std) {
    double s = 0, ss = 0;
    for (int i = 0; i < n; i++) s += x[i];
    *mean = s / n;
    for (int i = 0; i < n; i++) ss += (x[i] - *mean) * (x[i] - *mean);
    *std = n > 1 ? sqrt(ss / (n - 1)) : 0;  // Bessel's correction: the sample standard deviation
}

static void emit(const BenchOptions *o, const Row *r, const RunInfo *ri, int index) {
    if (!strcmp(o->format, "md")) {
        if (index == 0) md_header(stdout);
        md_row(stdout, r, ri);
    } else if (!strcmp(o->format, "csv")) {
        if (index == 0) fputs(csv_columns, stdout);
        csv_row(stdout, r, ri, o->reps, o->batch);
    } else {
        if (index == 0) fputs("[\n", stdout);
        json_row(stdout, r, ri, o->reps, o->batch, index == 0);
    }
    fflush(stdout);
    out_check(stdout, "stdout");
}

static uint64_t lcg(uint64_t *x) { return *x = *x * 6364136223846793005ULL + 1442695040888963407ULL; }

int bench_main(int argc, char **argv) {
    BenchOptions o;
    bench_args(&o, argc, argv);
    for (int k = 0; k < o.n_models; k++) model_dir_check(o.models[k]);
    FILE *save[4] = {0};  // md, csv, json, svg
    if (o.save) {
        static const char *ext[] = {"md", "csv", "json", "svg"};
        for (int k = 0; k < 4; k++) save[k] = open_save(o.save, ext[k]);
    }
    RunInfo ri;
    memset(&ri, 0, sizeof ri);
    char why[512];
    int gpu = !o.force_ref && cuda_device_count(why, sizeof why) > 0;
    if (gpu) {
        if (o.threads) fatal("-t: sets the reference path's threads; add --ref");
        for (int k = 0; k < o.n_kv; k++)
            if (!kv_formats[o.kv[k]].gpu) fatal("--kv %s: the GPU engine has no such cache (the reference path has: add --ref)", kv_format_name(o.kv[k]));
        int drv = 0, rt = 0;
        cuda_device_info(ri.device, sizeof ri.device, &drv, &rt);
        snprintf(ri.driver, sizeof ri.driver, "%d.%d", drv / 1000, drv % 1000 / 10);
        snprintf(ri.runtime, sizeof ri.runtime, "CUDA %d.%d", rt / 1000, rt % 1000 / 10);
    } else {
        if (o.wo_split.n) fatal("--wo-split: splits the GPU engine's o_proj; the reference path has none");
        if (!o.force_ref && !o.quiet) fprintf(stderr, "nano: no CUDA GPU (%s); using the reference path\n", why);
        cpu_name(ri.device, sizeof ri.device);
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        ri.threads = o.threads ? o.threads : cores > 0 ? (int)cores : 1;
        ref_set_threads(ri.threads);
    }
    time_t now = time(NULL);
    strftime(ri.date, sizeof ri.date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    int max_pp = list_max(&o.pp), max_tg = list_max(&o.tg), max_d = list_max(&o.depth);
    int capacity = max_d + (max_pp > max_tg ? max_pp : max_tg);
    // -np: each sequence's extent holds its prompt and the decode test's ids after it.
    int max_par = o.par.n ? list_max(&o.par) : 1, span = (max_pp ? max_pp : 1) + max_tg + 1;
    if (o.par.n && (long long)max_par * span > capacity) capacity = max_par * span;

    if (gpu) {
        ri.copy_bw = cuda_copy_bandwidth((size_t)1 << 30);
        snprintf(ri.copy_method, sizeof ri.copy_method, "device-to-device copy kernel, 1 GiB");
    } else {
        ri.copy_bw = memcpy_bandwidth();
        snprintf(ri.copy_method, sizeof ri.copy_method, "host memcpy, 1 thread, 256 MiB");
    }
    if (!o.quiet) fprintf(stderr, "nano: bench: %s, copy bandwidth %.1f GB/s (%s)\n", ri.device, ri.copy_bw / 1e9, ri.copy_method);

    int n_rows = 0, cap_rows = 16;
    Row *rows = xmalloc((size_t)cap_rows * sizeof *rows);
    for (int mi = 0; mi < o.n_models; mi++) {
        Model m;
        double t0 = now_s();
        model_load(&m, o.models[mi]);
        const Config *c = &m.cfg;
        if (capacity > c->max_pos && !o.quiet)
            fprintf(stderr, "nano: warning: %s: depth + test of %d tokens exceeds max_position_embeddings %d\n", o.models[mi], capacity, c->max_pos);
        KVFormat kvs[KV_N_FORMATS];
        int n_kv = o.n_kv ? o.n_kv : 1;
        for (int k = 0; k < n_kv; k++) {
            kvs[k] = o.n_kv ? o.kv[k] : kv_default(c);
            const char *bad = kv_check_shape(kvs[k], c->head_dim);
            if (bad) fatal("--kv %s: %s has head_dim %d; the format needs %s", kv_format_name(kvs[k]), o.models[mi], c->head_dim, bad);
        }
        model_prefetch(&m, o.models[mi]);
        double load_s = now_s() - t0;
        Row base;
        memset(&base, 0, sizeof base);
        const char *slash = strrchr(o.models[mi], '/');
        const char *name = slash && slash[1] ? slash + 1 : o.models[mi];
        snprintf(base.model, sizeof base.model, "%s", name);
        if (slash && !slash[1]) {  // "dir/": the name before the slash
            const char *p = slash;
            while (p > o.models[mi] && p[-1] != '/') p--;
            snprintf(base.model, sizeof base.model, "%.*s", (int)(slash - p), p);
        }
        checkpoint_size(&m, &base.size_bytes, &base.params);
        base.backend = gpu ? "cuda" : "ref";
        if (!o.quiet) fprintf(stderr, "nano: bench: %s loaded in %.0f ms\n", o.models[mi], load_s * 1e3);

        SamplerConfig sc = c->sampling;
        if (o.greedy) sc.temp = 0, sc.repeat_penalty = 1;
        if (sc.temp == 0) snprintf(ri.sampler, sizeof ri.sampler, "greedy");
        else
            snprintf(ri.sampler, sizeof ri.sampler, "temp %g top-k %d top-p %g min-p %g repeat-penalty %g", sc.temp, sc.top_k, sc.top_p,
                     sc.min_p, sc.repeat_penalty);
        Sampler sampler;
        sampler_init(&sampler, &sc, c->vocab, 1234);
        Sampler *samplers = xmalloc((size_t)max_par * sizeof *samplers);
        for (int k = 0; k < max_par; k++) samplers[k] = sampler;
        uint64_t x = 42;
        int *ids = xmalloc((size_t)capacity * sizeof *ids);
        Test t = {.tokens = xmalloc((size_t)capacity * sizeof(int))};
        for (int i = 0; i < capacity; i++) ids[i] = (int)(lcg(&x) >> 33) % c->vocab;
        double *tps = xmalloc((size_t)o.reps * sizeof *tps);

        for (int k = 0; k < n_kv * (o.par.n ? o.par.n : 1); k++) {
            int N = o.par.n ? o.par.v[k / n_kv] : 1;
            double e0 = now_s();
            int cap = N > 1 ? N * span : capacity;
            if (gpu) {
                t.e = cuda_engine_create(&m, cap, kvs[k % n_kv], o.batch, o.wo_split.n ? o.wo_split.v[0] : 0, why, sizeof why);
                if (!t.e) fatal("GPU engine: %s; add --ref to run on the reference path", why);
            } else t.e = ref_engine_create(&m, cap, kvs[k % n_kv], o.batch);
            picker_init(&t.next, t.e, &sampler, c->vocab);
            t.n_seqs = N, t.span = span, t.prompt = max_pp ? max_pp : 1, t.samplers = samplers;
            if (N > 1) {
                if (t.e->seqs(t.e, N, why, sizeof why)) fatal("-np %d: %s", N, why);
                t.pickers = xmalloc((size_t)N * sizeof *t.pickers);
                for (int q = 0; q < N; q++) picker_init(&t.pickers[q], t.e, &samplers[q], c->vocab);
                t.rows = xmalloc((size_t)N * sizeof *t.rows);
                t.tops = xmalloc((size_t)N * sizeof *t.tops);
            }
            double engine_s = now_s() - e0;  // the GPU's: weights uploaded, kernels loaded, warmed up
            if (!o.quiet) fprintf(stderr, "nano: bench: %s KV: engine ready in %.0f ms\n", kv_format_name(kvs[k % n_kv]), engine_s * 1e3);
            double weights, kv_per_pos;
            if (gpu) cuda_engine_bytes(t.e, &weights, &kv_per_pos);
            else {
                weights = ref_weight_bytes(&m);
                kv_per_pos = (double)kv_model_bytes_per_token(&m, kvs[k % n_kv]);
            }
            int n_splits = o.wo_split.n ? o.wo_split.n : 1;
            for (int di = 0; di < o.depth.n; di++) {
                t.depth = o.depth.v[di];
                memcpy(t.tokens, ids, (size_t)capacity * sizeof *ids);
                if (t.depth) {
                    if (!o.quiet) fprintf(stderr, "nano: bench: %s KV: filling the cache to depth %d\n", kv_format_name(kvs[k % n_kv]), t.depth);
                    t.e->forward(t.e, ids, t.depth, 0, t.next.logits, 0);
                }
                if (N > 1) {  // every sequence's prompt, for the decode tests
                    memcpy(t.tokens, ids, (size_t)N * span * sizeof *ids);
                    t.n_prompt = t.prompt, t.n_gen = 0;
                    test_run_seqs(&t);
                }
                for (int si = 0; si < n_splits; si++) {
                    if (gpu && o.wo_split.n) cuda_engine_set_wo_split(t.e, o.wo_split.v[si]);
                    for (int ti = 0; ti < o.pp.n + o.tg.n; ti++) {
                        t.n_prompt = ti < o.pp.n ? o.pp.v[ti] : 0;
                        t.n_gen = ti < o.pp.n ? 0 : o.tg.v[ti - o.pp.n];
                        if (!t.n_prompt && !t.n_gen) continue;
                        Row r = base;
                        r.kv = kvs[k % n_kv];
                        r.load_s = load_s + engine_s;
                        r.wo_split = gpu ? cuda_engine_wo_split(t.e) : 0;
                        r.n_prompt = t.n_prompt, r.n_gen = t.n_gen, r.depth = t.depth, r.n_seqs = N;
                        int n_tok = N * (t.n_prompt ? t.n_prompt : t.n_gen);
                        time_run(&t, ids, gpu);  // warm-up
                        for (int rep = 0; rep < o.reps; rep++) tps[rep] = n_tok / time_run(&t, ids, gpu);
                        mean_std(tps, o.reps, &r.mean, &r.std);
                        if (gpu && N > 1 && t.n_gen && !o.quiet) {  // where a step's time goes
                            double ms[ROWS_TIMES];
                            cuda_engine_rows_times(t.e, 20, ms);
                            fprintf(stderr,
                                    "nano: bench: tg%d x%d: a step %.3f ms on the device; alone: GEMMs %.3f, attention %.3f, "
                                    "adds and norms %.3f, SiLU %.3f; ranking %.3f\n",
                                    t.n_gen, N, ms[0], ms[1], ms[2], ms[3], ms[4], ms[5]);
                        }
                        // Step k of a decode test reads the weights and depth + k + 1 positions of K and V.
                        // Batched: the weights once a step for all N, each sequence's K and V after its prompt.
                        if (t.n_gen && N > 1) r.bytes_per_tok = weights / N + kv_per_pos * (t.prompt + (t.n_gen + 1) / 2.0);
                        else if (t.n_gen) r.bytes_per_tok = weights + kv_per_pos * (t.depth + (t.n_gen + 1) / 2.0);
                        if (n_rows == cap_rows) rows = realloc(rows, (size_t)(cap_rows *= 2) * sizeof *rows);
                        if (!rows) fatal("out of memory");
                        rows[n_rows] = r;
                        emit(&o, &rows[n_rows], &ri, n_rows);
                        n_rows++;
                    }
                }
            }
            picker_free(&t.next);
            for (int q = 0; q < (N > 1 ? N : 0); q++) picker_free(&t.pickers[q]);
            free(t.pickers), free(t.rows), free(t.tops);
            t.pickers = NULL, t.rows = NULL, t.tops = NULL;
            t.e->free(t.e);
        }
        free(tps), free(ids), free(t.tokens), free(samplers);
        sampler_free(&sampler);
        model_free(&m);
    }
    if (!strcmp(o.format, "md")) md_footer(stdout, &ri, o.reps, o.batch);
    if (!strcmp(o.format, "json")) fputs("\n]\n", stdout);
    out_check(stdout, "stdout");
    if (o.save) {
        md_header(save[0]);
        fputs(csv_columns, save[1]);
        fputs("[\n", save[2]);
        for (int i = 0; i < n_rows; i++) {
            md_row(save[0], &rows[i], &ri);
            csv_row(save[1], &rows[i], &ri, o.reps, o.batch);
            json_row(save[2], &rows[i], &ri, o.reps, o.batch, i == 0);
        }
        md_footer(save[0], &ri, o.reps, o.batch);
        fputs("\n]\n", save[2]);
        svg_plot(save[3], rows, n_rows);
        for (int k = 0; k < 4; k++) {
            out_check(save[k], o.save);
            if (fclose(save[k])) fatal("--save %s: %s", o.save, strerror(errno));
        }
    }
    free(rows);
    return 0;
}
