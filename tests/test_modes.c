// The sampler's math on known logits, and the ways people run nano — one prompt, batch file,
// perplexity, interactive chat (through a pipe, and Ctrl-C under tmux) — on the trained tiny model,
// whose transformers perplexity and greedy ids are in tests/fixtures/tiny_ppl/expected.json.
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/check.h"

#define TINY "models/qwen3-tiny-classics"

// ---------------------------------------------------------------------------------------------
// Sampler

static const float base_logits[5] = {2.0f, 1.5f, 0.5f, -1.0f, 3.0f};

static int probs_for(SamplerConfig c, int n_ids, const int *hist, int n_hist, float *probs) {
    Sampler s;
    sampler_init(&s, &c, n_ids, 1);
    float logits[5];
    memcpy(logits, base_logits, sizeof logits);
    int kept = sampler_probs(&s, logits, hist, n_hist, probs);
    sampler_free(&s);
    return kept;
}

static double softmax_of(int i, const float *x, int n, float temp) {
    double sum = 0;
    for (int k = 0; k < n; k++) sum += exp((x[k] - x[4]) / temp);
    return exp((x[i] - x[4]) / temp) / sum;
}

static void test_sampler(void) {
    SamplerConfig plain = {.temp = 1, .top_k = 0, .top_p = 1, .min_p = 0, .repeat_penalty = 1};
    float p[5];
    int kept = probs_for(plain, 5, NULL, 0, p);
    int ok = kept == 5;
    for (int i = 0; i < 5; i++) ok &= fabs(p[i] - softmax_of(i, base_logits, 5, 1)) < 1e-6;
    check(ok, "sampler: no filters = softmax");

    SamplerConfig hot = plain;
    hot.temp = 2;
    probs_for(hot, 5, NULL, 0, p);
    check(fabs(p[0] / p[4] - exp((2.0 - 3.0) / 2)) < 1e-5, "sampler: temperature 2 halves logit gaps (ratio %g)", p[0] / p[4]);

    // Softmax of base_logits: 0.2175 0.1319 0.0485 0.0108 0.5912 (ids 4, 0, 1, 2, 3 in order).
    SamplerConfig topk = plain;
    topk.top_k = 2;
    kept = probs_for(topk, 5, NULL, 0, p);
    check(kept == 2 && p[1] == 0 && fabs(p[4] + p[0] - 1) < 1e-6 && fabs(p[4] / p[0] - exp(1.0)) < 1e-5, "sampler: top-k 2 keeps ids 4 and 0");

    SamplerConfig topp = plain;
    topp.top_p = 0.80f;  // 0.5912 < 0.80, 0.8087 >= 0.80: two ids carry the mass
    kept = probs_for(topp, 5, NULL, 0, p);
    check(kept == 2 && p[4] > 0 && p[0] > 0 && p[1] == 0, "sampler: top-p 0.80 keeps the smallest set reaching 0.80 (%d ids)", kept);
    topp.top_p = 0.85f;  // needs the third id
    kept = probs_for(topp, 5, NULL, 0, p);
    check(kept == 3 && p[1] > 0 && p[2] == 0, "sampler: top-p 0.85 keeps 3 ids (%d)", kept);

    SamplerConfig minp = plain;
    minp.min_p = 0.2f;  // floor 0.2 * 0.5912 = 0.1182: ids 4, 0, 1 stay
    kept = probs_for(minp, 5, NULL, 0, p);
    check(kept == 3 && p[2] == 0 && p[1] > 0, "sampler: min-p 0.2 cuts below 0.2 x the top probability (%d ids)", kept);

    // Repetition penalty: positive logits divided, negative multiplied — both less likely.
    SamplerConfig rep = {.temp = 0, .top_k = 0, .top_p = 1, .min_p = 0, .repeat_penalty = 2};
    Sampler s;
    sampler_init(&s, &rep, 5, 1);
    float logits[5];
    memcpy(logits, base_logits, sizeof logits);
    int hist[] = {4, 3, 4};
    int id = sampler_sample(&s, logits, hist, 3);
    check(logits[4] == 1.5f && logits[3] == -2.0f && logits[0] == 2.0f && id == 0,
          "sampler: repetition penalty 2 moves seen ids down once each (%g, %g), greedy then picks id %d", logits[4], logits[3], id);
    sampler_free(&s);

    SamplerConfig greedy = plain;
    greedy.temp = 0;
    sampler_init(&s, &greedy, 5, 1);
    memcpy(logits, base_logits, sizeof logits);
    check(sampler_sample(&s, logits, NULL, 0) == 4, "sampler: temperature 0 is argmax");
    sampler_free(&s);

    // Ids past n_ids (padding rows of the embedding) are never drawn, however likely.
    sampler_init(&s, &plain, 4, 1);
    int drew_pad = 0;
    for (int i = 0; i < 1000; i++) {
        memcpy(logits, base_logits, sizeof logits);
        drew_pad |= sampler_sample(&s, logits, NULL, 0) >= 4;
    }
    check(!drew_pad, "sampler: never draws ids past the tokenizer's");
    sampler_free(&s);

    // Frequencies over many draws: chi-square with 4 degrees of freedom below 18.47 (p = 0.001).
    enum { DRAWS = 50000 };
    int counts[5] = {0};
    sampler_init(&s, &plain, 5, 7);
    for (int i = 0; i < DRAWS; i++) {
        memcpy(logits, base_logits, sizeof logits);
        counts[sampler_sample(&s, logits, NULL, 0)]++;
    }
    sampler_free(&s);
    double chi2 = 0;
    for (int i = 0; i < 5; i++) {
        double e = DRAWS * softmax_of(i, base_logits, 5, 1);
        chi2 += (counts[i] - e) * (counts[i] - e) / e;
    }
    check(chi2 < 18.47, "sampler: %d draws match the softmax, chi-square %.2f < 18.47", DRAWS, chi2);

    // A real-sized vocabulary: top-p over every id (the growing-block path) and top-k > 4096 (quickselect)
    // keep exactly the ids a full sort keeps, also on a second call with other logits.
    enum { BIG = 10000 };
    float *big = xmalloc(BIG * sizeof *big), *bp = xmalloc(BIG * sizeof *bp), *sorted = xmalloc(BIG * sizeof *sorted);
    struct { int top_k; float top_p; } cases[] = {{0, 0.5f}, {5000, 0.9f}};
    for (int c = 0; c < 2; c++) {
        SamplerConfig cfg = {.temp = 1, .top_k = cases[c].top_k, .top_p = cases[c].top_p, .min_p = 0, .repeat_penalty = 1};
        sampler_init(&s, &cfg, BIG, 1);
        int all_ok = 1;
        for (int call = 0; call < 2; call++) {
            uint32_t x = 12345u + 777u * (uint32_t)call;
            for (int i = 0; i < BIG; i++) {
                x = x * 1664525u + 1013904223u;
                big[i] = (float)(x >> 8) / (float)(1 << 24) * 12.0f;  // a wide spread, like real logits
            }
            // Brute force: sort the candidates, renormalize, take the smallest prefix reaching top_p.
            for (int i = 0; i < BIG; i++) sorted[i] = big[i];
            for (int i = 1; i < BIG; i++)  // insertion sort, descending
                for (int k = i; k > 0 && sorted[k] > sorted[k - 1]; k--) {
                    float t = sorted[k];
                    sorted[k] = sorted[k - 1], sorted[k - 1] = t;
                }
            int n_cand = cfg.top_k ? cfg.top_k : BIG, want = 0;
            double z = 0, acc = 0;
            for (int i = 0; i < n_cand; i++) z += exp(sorted[i] - sorted[0]);
            while (want < n_cand && (want == 0 || acc < cfg.top_p)) acc += exp(sorted[want++] - sorted[0]) / z;
            int n_kept = sampler_probs(&s, big, NULL, 0, bp), inside = 1;
            for (int i = 0; i < BIG; i++) inside &= bp[i] == 0 || big[i] >= sorted[want - 1];
            all_ok &= n_kept == want && inside;
        }
        check(all_ok, "sampler: %d ids, top-k %d, top-p %.1f keep exactly the sorted prefix on two calls", BIG, cfg.top_k, cfg.top_p);
        sampler_free(&s);
    }
    free(big), free(bp), free(sorted);

    // Same seed, same draws.
    int a[20], b[20];
    for (int round = 0; round < 2; round++) {
        sampler_init(&s, &plain, 5, 99);
        for (int i = 0; i < 20; i++) {
            memcpy(logits, base_logits, sizeof logits);
            (round ? b : a)[i] = sampler_sample(&s, logits, NULL, 0);
        }
        sampler_free(&s);
    }
    check(!memcmp(a, b, sizeof a), "sampler: same seed, same draws");
}

// ---------------------------------------------------------------------------------------------
// The modes, end to end


typedef struct {
    JsonFile f;
    double ppl;
    int ctx, stride;
    char greedy_prompt[200], greedy_ids[400];
} Expected;

static int load_expected(Expected *e) {
    if (!json_file_open(&e->f, "tests/fixtures/tiny_ppl/expected.json", 0)) return 0;
    const Json *j = &e->f.json;
    e->ppl = json_get(j, e->f.root, "ppl")->num;
    e->ctx = (int)json_get(j, e->f.root, "ctx")->num;
    e->stride = (int)json_get(j, e->f.root, "stride")->num;
    const JsonNode *g = json_get(j, e->f.root, "greedy");
    snprintf(e->greedy_prompt, sizeof e->greedy_prompt, "%s", json_get(j, g, "prompt")->str);
    size_t o = 0;
    for (const JsonNode *id = json_first(j, json_get(j, g, "ids")); id; id = json_next(j, id))
        o += (size_t)snprintf(e->greedy_ids + o, sizeof e->greedy_ids - o, "%s%d", o ? " " : "", (int)id->num);
    json_file_close(&e->f);
    return 1;
}

static void test_prompt(const char *nano, const Expected *e) {
    // Greedy ids equal transformers' (no repetition penalty, as generate() was run there).
    char n_arg[16];
    snprintf(n_arg, sizeof n_arg, "%d", 24);
    char *ids_args[] = {"-m", TINY, "-p", (char *)e->greedy_prompt, "--raw", "--temp", "0", "--repeat-penalty", "1", "-n", n_arg,
                        "--print-ids", "--ref", NULL};
    Run r = run_nano(nano, ids_args, NULL);
    check(r.status == 0 && !strcmp(r.out, e->greedy_ids), "%s -p --raw greedy: ids [%s], transformers [%s]", nano, r.out, e->greedy_ids);
    run_free(&r);

    // The same as text: what decoding those ids gives, and a timings line.
    char *text_args[] = {"-m", TINY, "-p", (char *)e->greedy_prompt, "--raw", "--temp", "0", "--repeat-penalty", "1", "-n", n_arg, "--ref", NULL};
    r = run_nano(nano, text_args, NULL);
    Tokenizer *tok = tokenizer_load(TINY "/tokenizer.json");
    int ids[64], n = 0;
    for (char *p = (char *)e->greedy_ids; *p && n < 64;) ids[n++] = (int)strtol(p, &p, 10);
    size_t len;
    char *want = tokenizer_decode(tok, ids, n, 1, &len);
    tokenizer_free(tok);
    check(r.status == 0 && !strcmp(r.out, want) && strstr(r.err, "prompt 8 tok") && strstr(r.err, "generated 24 tok"),
          "%s -p streams the decoded text and a timings line", nano);
    free(want);
    run_free(&r);

    // With the chat template, generation_config's sampling and a system prompt.
    char *chat_args[] = {"-m", TINY, "-p", "Hello there", "--system", "Be kind.", "-n", "8", "--ref", NULL};
    r = run_nano(nano, chat_args, NULL);
    check(r.status == 0 && strstr(r.err, "prompt 24 tok"), "%s -p applies the ChatML template (24 prompt tokens): %s", nano, r.err);
    run_free(&r);

    char *bad_utf8[] = {"-m", TINY, "-p", "caf\xc3", "--ref", NULL};
    expect_error(nano, "-p with invalid UTF-8", "invalid UTF-8 at byte offset 3", bad_utf8);
    char *too_long[] = {"-m", TINY, "-p", (char *)e->greedy_prompt, "-c", "4", "--ref", NULL};
    expect_error(nano, "-p longer than the context", "do not fit", too_long);
    char *empty[] = {"-m", TINY, "-p", "", "--raw", "--ref", NULL};
    expect_error(nano, "-p with an empty --raw prompt", "the prompt is empty", empty);
}

// Runs --perplexity on the test slice; returns the perplexity (0 if the run failed) and *scored, and
// with base the line comparing it with the f32 KV pass ("vs f32 KV: ...", malloc'd; NULL when absent).
static double perplexity_of(const char *nano, int ctx, int stride, const char *kv, int *scored, char **base) {
    char c[16], st[16];
    snprintf(c, sizeof c, "%d", ctx);
    snprintf(st, sizeof st, "%d", stride);
    char *args[] = {"-m", TINY, "--perplexity", "tests/fixtures/tiny_ppl/heldout.txt", "-c", c, "--stride", st, "--kv", (char *)kv,
                    "--ref", NULL};
    Run r = run_nano(nano, args, NULL);
    double ppl = 0;
    *scored = 0;
    const char *p = strstr(r.out, "perplexity: "), *b = strstr(r.out, "vs f32 KV: ");
    if (r.status == 0 && p) sscanf(p, "perplexity: %lf over %d", &ppl, scored);
    if (base) *base = b ? strdup(b) : NULL;
    run_free(&r);
    return ppl;
}

// The first binary (release) checks perplexity against transformers: within 1e-4 with f32 KV and 0.5%
// with bf16 KV; and each KV format's quality line against the f32 pass on the same windows (the
// change in perplexity within the format's bound, measured: bf16 +0.006%, f16 -0.002%, int8 +0.05%,
// k8v4 +0.24%, kv4h +1.15%). The sanitizer build, ~20x slower, runs a cheaper window (no overlap) and
// must give the release build's figure for it.
static void test_perplexity(const char *nano, const Expected *e, int first) {
    static double release_no_overlap;
    int scored;
    if (first) {
        const char *kvs[] = {"f32", "bf16"};
        double tol[] = {1e-4, 5e-3};
        for (int k = 0; k < 2; k++) {
            double ppl = perplexity_of(nano, e->ctx, e->stride, kvs[k], &scored, NULL);
            check(scored == 1724 && fabs(ppl / e->ppl - 1) < tol[k], "%s --perplexity --kv %s: %.4f over %d tokens, transformers %.4f", nano,
                  kvs[k], ppl, scored, e->ppl);
        }
        const char *fmts[] = {"bf16", "f16", "int8", "k8v4", "kv4h"};
        double max_change[] = {0.05, 0.1, 0.5, 1.0, 2.0}, max_kld[] = {1e-4, 1e-4, 1e-3, 5e-3, 2e-2};
        for (int k = 0; k < 5; k++) {
            char *line = NULL;
            double ppl = perplexity_of(nano, e->ctx, e->stride, fmts[k], &scored, &line), base = 0, change = 99, kld = 1, same = 0;
            if (line) sscanf(line, "vs f32 KV: perplexity %lf, change %lf%%, mean KLD %lf, max KLD %*f, same top-1 %lf", &base, &change, &kld, &same);
            check(line && fabs(base / e->ppl - 1) < 1e-4 && fabs(change) <= max_change[k] && kld <= max_kld[k] && ppl > 0,
                  "%s --perplexity --kv %s: %.4f, %s", nano, fmts[k], ppl, line ? line : "no line comparing it with f32 KV");
            free(line);
        }
        release_no_overlap = perplexity_of(nano, e->ctx, e->ctx, "bf16", &scored, NULL);
        return;
    }
    double ppl = perplexity_of(nano, e->ctx, e->ctx, "bf16", &scored, NULL);  // a window's first token goes unscored
    check(scored == 1724 - 1724 / e->ctx && ppl > 0 && fabs(ppl / release_no_overlap - 1) < 1e-5,
          "%s --perplexity --stride %d: %.4f over %d tokens, the release build %.4f", nano, e->ctx, ppl, scored, release_no_overlap);
}

// One result line of a batch, parsed.
typedef struct {
    int id, n_gen, n_prompt;
    char finish[16], output[600], error[200];
} Result;

static int read_results(const char *path, Result *res, int max) {
    size_t len;
    char *text = read_file(path, READ_ANY_SIZE, &len);
    int n = 0;
    for (char *line = text; text && line < text + len && n < max;) {
        char *nl = strchr(line, '\n');
        if (!nl) break;
        Json j;
        Result *r = &res[n];
        memset(r, 0, sizeof *r);
        if (json_parse(&j, line, (size_t)(nl - line)) == 0) {
            const JsonNode *root = json_root(&j), *v;
            r->id = (v = json_get(&j, root, "id")) ? (int)v->num : -1;
            r->n_gen = (v = json_get(&j, root, "n_gen_tokens")) ? (int)v->num : -1;
            r->n_prompt = (v = json_get(&j, root, "n_prompt_tokens")) ? (int)v->num : -1;
            if ((v = json_get(&j, root, "finish_reason"))) snprintf(r->finish, sizeof r->finish, "%s", v->str);
            if ((v = json_get(&j, root, "output"))) snprintf(r->output, sizeof r->output, "%s", v->str);
            if ((v = json_get(&j, root, "error"))) snprintf(r->error, sizeof r->error, "%s", v->str);
            if (json_get(&j, root, "prompt") && json_get(&j, root, "ms")) n++;
        }
        json_free(&j);
        line = nl + 1;
    }
    free(text);
    return n;
}

static void test_batch(const char *nano) {
    char prompts[600];  // tmp_path's buffers are reused by run()
    snprintf(prompts, sizeof prompts, "%s", tmp_path("prompts.txt"));
    write_text(prompts,
               "It is a truth universally acknowledged\n"
               "{\"prompt\": \"Call me Ishmael.\", \"n_predict\": 5, \"seed\": 3}\n"
               "\n"
               "bad \xff byte\n"
               "{\"prompt\": \"In the beginning\", \"system\": \"You are a scribe.\"}\n"
               "{\"prompt\": 42}\n"
               "{\"prompt\": \"a very long prompt that cannot fit in a context of sixty-four tokens, no matter how it is tokenized, "
               "because it goes on and on, and on and on, and then on again, with more words, and more words after those, until "
               "the context is far too small to hold all of it\"}\n");
    char out[600], out2[600];
    snprintf(out, sizeof out, "%s", tmp_path("results.jsonl"));
    snprintf(out2, sizeof out2, "%s", tmp_path("results2.jsonl"));
    char *args[] = {"-m", TINY, "-f", (char *)prompts, "-o", out, "-n", "12", "-c", "64", "--ref", "-s", "1", NULL};
    Run r = run_nano(nano, args, NULL);
    Result res[10];
    int n = read_results(out, res, 10);
    int ok = r.status == 3 && n == 6 && strstr(r.err, "nano: 3 of 6 prompts failed (id 4, 6, 7)");
    int want_ids[] = {1, 2, 4, 5, 6, 7};
    for (int i = 0; i < n && i < 6; i++) ok &= res[i].id == want_ids[i];
    check(ok, "%s -f: one result per non-empty line, in input order (%d results): %s", nano, n, r.err);
    if (n == 6) {
        check(!strcmp(res[0].finish, "length") && res[0].n_gen == 12 && res[0].output[0], "%s -f: plain line -> %d tokens, %s", nano,
              res[0].n_gen, res[0].finish);
        check(res[1].n_gen <= 5 && res[1].n_prompt > 0, "%s -f: JSON line's n_predict 5 -> %d tokens", nano, res[1].n_gen);
        check(!strcmp(res[2].finish, "error") && strstr(res[2].error, "invalid UTF-8 at byte offset 4"), "%s -f: invalid UTF-8 -> %s",
              nano, res[2].error);
        check(!strcmp(res[3].finish, "length") || !strcmp(res[3].finish, "stop"), "%s -f: JSON line with a system prompt -> %s", nano,
              res[3].finish);
        check(!strcmp(res[4].finish, "error") && strstr(res[4].error, "\"prompt\" string"), "%s -f: {\"prompt\": 42} -> %s", nano,
              res[4].error);
        check(!strcmp(res[5].finish, "error") && strstr(res[5].error, "do not fit"), "%s -f: too long for -c 64 -> %s", nano,
              res[5].error);
    }
    run_free(&r);

    // --resume after an interruption: keep two finished lines and half of the third.
    size_t len;
    char *full = read_file(out, READ_ANY_SIZE, &len);
    char *cut = full;
    for (int i = 0; i < 2 && cut; i++) cut = (cut = strchr(cut, '\n')) ? cut + 1 : NULL;
    if (cut && (size_t)(cut - full) + 10 < len) {
        FILE *f = fopen(out2, "w");
        fwrite(full, 1, (size_t)(cut - full) + 10, f);
        fclose(f);
    }
    char *resume_args[] = {"-m", TINY, "-f", (char *)prompts, "-o", out2, "-n", "12", "-c", "64", "--ref", "-s", "1", "--resume", NULL};
    r = run_nano(nano, resume_args, NULL);
    size_t len2;
    char *resumed = read_file(out2, READ_ANY_SIZE, &len2);
    // Same seeds, so the resumed file must equal the uninterrupted one except for the timings.
    Result a[10], b[10];
    int na = read_results(out, a, 10), nb = read_results(out2, b, 10);
    ok = r.status == 3 && na == nb && strstr(r.err, "2 skipped");
    for (int i = 0; i < na && i < nb; i++) ok &= a[i].id == b[i].id && !strcmp(a[i].output, b[i].output);
    check(ok, "%s -f --resume: runs only the missing prompts, drops the cut line, same outputs (%d vs %d results): %s", nano, nb, na, r.err);
    free(full);
    free(resumed);
    run_free(&r);

    // A results file nano did not write is refused, not appended to.
    write_text(out2, "{\"id\": 1, \"x\": 1}\n");
    expect_error(nano, "--resume on a foreign file", "line 1 is not a nano result", resume_args);
}

// -f - reads stdin; every sampling setting and "stop" per line; unknown keys and bad values fail
// their line only; exit status 0 when all succeed.
static void test_batch_keys(const char *nano) {
    char prompts[600], *greedy_args[] = {"-m", TINY, "-p", "Call me Ishmael.", "--raw", "--temp", "0", "--repeat-penalty", "1", "-n", "12",
                                         "--ref", NULL};
    Run g = run_nano(nano, greedy_args, NULL);
    char stop[8] = "";  // four characters from the middle of the greedy reply
    if (strlen(g.out) > 12) snprintf(stop, sizeof stop, "%.4s", g.out + 8);
    const char *cut = strstr(g.out, stop);
    snprintf(prompts, sizeof prompts, "%s", tmp_path("keys.txt"));
    char text[1000];
    snprintf(text, sizeof text,
             "{\"prompt\": \"Call me Ishmael.\", \"temperature\": 0, \"repeat_penalty\": 1, \"n_predict\": 12}\n"
             "{\"prompt\": \"Call me Ishmael.\", \"temperature\": 0, \"repeat_penalty\": 1, \"n_predict\": 12, \"stop\": [\"%s\"]}\n"
             "{\"prompt\": \"Call me Ishmael.\", \"temp\": 0}\n"
             "{\"prompt\": \"Call me Ishmael.\", \"top_p\": 2}\n"
             "{\"prompt\": \"Call me Ishmael.\", \"stop\": [\"\"]}\n"
             "{\"prompt\": \"Call me Ishmael.\", \"top_k\": 1, \"min_p\": 0.5, \"n_predict\": 3, \"seed\": 9, \"system\": \"x\"}\n",
             stop);
    write_text(prompts, text);
    char *args[] = {"-m", TINY, "-f", "-", "--raw", "--ref", NULL};
    Run r = run_nano(nano, args, prompts);
    char *out = tmp_path("keys.jsonl");
    write_text(out, r.out);
    FILE *f = fopen(out, "a");  // run() strips stdout's last newline
    fputc('\n', f);
    fclose(f);
    Result res[8];
    int n = read_results(out, res, 8);
    check(r.status == 3 && n == 6 && strstr(r.err, "3 of 6 prompts failed (id 3, 4, 5)"),
          "%s -f -: reads stdin, 6 results, 3 bad lines, exit status 3: %s", nano, r.err);
    if (n == 6) {
        check(!strcmp(res[0].output, g.out) && res[0].n_gen == 12, "%s -f: a line's temperature 0, repeat_penalty 1, n_predict 12 = the flags': '%s'",
              nano, res[0].output);
        check(cut && stop[0] && !strncmp(res[1].output, g.out, (size_t)(cut - g.out)) && strlen(res[1].output) == (size_t)(cut - g.out) &&
                  !strcmp(res[1].finish, "stop"),
              "%s -f: a line's \"stop\": [\"%s\"] cuts the reply there: '%s'", nano, stop, res[1].output);
        check(!strcmp(res[2].finish, "error") && strstr(res[2].error, "unknown key \"temp\""), "%s -f: unknown key -> %s", nano, res[2].error);
        check(strstr(res[3].error, "\"top_p\" must be a number in [0, 1]") != NULL, "%s -f: top_p 2 -> %s", nano, res[3].error);
        check(strstr(res[4].error, "\"stop\" must be a non-empty string") != NULL, "%s -f: empty stop -> %s", nano, res[4].error);
        check(!strcmp(res[5].finish, "length") && res[5].n_gen == 3, "%s -f: top_k, min_p, seed, system and n_predict 3 -> %d tokens", nano,
              res[5].n_gen);
    }
    run_free(&r);
    // A line's "stop" replaces --stop's strings, whole (it once kept a NULL in place of --stop's one).
    snprintf(text, sizeof text,
             "{\"prompt\": \"Call me Ishmael.\", \"temperature\": 0, \"repeat_penalty\": 1, \"n_predict\": 12, \"stop\": [\"%s\", \"QQ\"]}\n",
             stop);
    write_text(prompts, text);
    char *stop_args[] = {"-m", TINY, "-f", "-", "--raw", "--ref", "--stop", "never", NULL};
    r = run_nano(nano, stop_args, prompts);
    check(r.status == 0 && cut && strstr(r.out, "\"finish_reason\": \"stop\"") && !strstr(r.out, stop),
          "%s -f --stop never: a line's \"stop\": [\"%s\", \"QQ\"] replaces it and cuts the reply: %s", nano, stop, r.out);
    run_free(&r);
    write_text(prompts, "{\"prompt\": \"Call me Ishmael.\", \"n_predict\": 2}\nIn the beginning\n");
    r = run_nano(nano, args, prompts);
    check(r.status == 0 && count_lines(r.out) == 1 && !strstr(r.err, "failed"), "%s -f -: exit status 0 when every prompt succeeds (%d)", nano,
          r.status);
    run_free(&r);
    run_free(&g);
}

// -f with --parallel: several prompts decode together, each in its own extent of the KV pool; the
// results equal --parallel 1's, line for line (outputs, token counts, errors), in input order, also
// when prompts wait for room in a small pool; a prompt that can never fit is its line's error.
static void test_batch_parallel(const char *nano) {
    char prompts[600], one[600];
    snprintf(prompts, sizeof prompts, "%s", tmp_path("parallel.txt"));
    snprintf(one, sizeof one, "%s", tmp_path("parallel1.txt"));
    const char *same = "{\"prompt\": \"Call me Ishmael.\", \"temperature\": 0.9, \"top_k\": 0, \"seed\": 4, \"n_predict\": 9}\n";
    char text[1400];
    snprintf(text, sizeof text,
             "It is a truth universally acknowledged\n"
             "%s"
             "{\"prompt\": 42}\n"
             "In the beginning\n"
             "{\"prompt\": \"Whan that Aprille\", \"n_predict\": 2}\n"
             "{\"prompt\": \"Of man's first disobedience\", \"temperature\": 0, \"repeat_penalty\": 1.3, \"n_predict\": 20}\n"
             "{\"prompt\": \"To be\", \"n_predict\": 0}\n"
             "{\"prompt\": \"It was the best of times\", \"top_k\": 3, \"seed\": 77}\n",
             same);
    write_text(prompts, text);
    write_text(one, same);
    Result base[10], got[10];
    int n_base = 0;
    const char *runs[][5] = {{"1", NULL}, {"3", NULL}, {"8", NULL}, {"3", "--kv-pool", "40", NULL}, {"3", "--kv-pool", "12", NULL}};
    for (int k = 0; k < 5; k++) {
        char *out = tmp_path("parallel.jsonl");
        char *args[20] = {"-m", TINY, "-f", (char *)prompts, "-o", out, "-n", "12", "-c", "48", "--raw", "--ref", "-s", "2", "--parallel"};
        int a = 15;
        for (int i = 0; runs[k][i]; i++) args[a++] = (char *)runs[k][i];
        Run r = run_nano(nano, args, NULL);
        Result *res = k ? got : base;
        int n = read_results(out, res, 10);
        if (k == 0) {
            n_base = n;
            check(r.status == 3 && n == 8 && res[0].n_gen == 12 && res[4].n_gen == 2 && res[6].n_gen == 0 && !strcmp(res[6].finish, "length"),
                  "%s -f --parallel 1: 8 results, one error: %s", nano, r.err);
        } else if (k < 4) {
            int ok = r.status == 3 && n == n_base;
            for (int i = 0; i < n && ok; i++)
                ok &= res[i].id == base[i].id && res[i].n_gen == base[i].n_gen && res[i].n_prompt == base[i].n_prompt &&
                      !strcmp(res[i].output, base[i].output) && !strcmp(res[i].finish, base[i].finish);
            check(ok, "%s -f --parallel %s%s%s: the results of --parallel 1, in input order (%d results): %s", nano, runs[k][0],
                  runs[k][1] ? " --kv-pool " : "", runs[k][1] ? runs[k][2] : "", n, r.err);
        } else {
            int ok = r.status == 3 && n == n_base;
            for (int i = 0; i < n && ok; i++)  // only "Whan that Aprille" with -n 2 and "To be" with -n 0 fit in 12
                ok &= res[i].id == 3 ? !strcmp(res[i].finish, "error")
                      : res[i].id == 5 || res[i].id == 7 ? !strcmp(res[i].output, base[i].output)
                      : strstr(res[i].error, "the KV pool holds 12") != NULL;
            check(ok, "%s -f --parallel 3 --kv-pool 12: a prompt that can never fit is its line's error: %s", nano, n ? res[0].error : r.err);
        }
        run_free(&r);
    }
    // 40 lines of different lengths, 7 at a time in a pool that keeps some waiting: --parallel 1's results.
    {
        char *many = tmp_path("many.txt"), text2[6000] = "", *outs[2];
        size_t at = 0;
        for (int i = 0; i < 40; i++)
            at += (size_t)snprintf(text2 + at, sizeof text2 - at, "{\"prompt\": \"%.*s\", \"n_predict\": %d, \"seed\": %d}\n", 1 + i % 23,
                                   "It was the best of times, it was the worst", 1 + (i * 7) % 17, i);
        write_text(many, text2);
        char many_path[600];
        snprintf(many_path, sizeof many_path, "%s", many);
        for (int k = 0; k < 2; k++) {
            char *args[] = {"-m", TINY, "-f", many_path, "-c", "48", "--raw", "--ref", "-q", "--parallel", k ? "7" : "1", k ? "--kv-pool" : NULL,
                            "70", NULL};
            Run r = run_nano(nano, args, NULL);
            outs[k] = strdup(r.out);
            run_free(&r);
        }
        // The lines but their timings: each "ms" value dropped.
        for (int k = 0; k < 2; k++)
            for (char *m = outs[k]; (m = strstr(m, "\"ms\": "));) {
                m += 6;
                size_t digits = strspn(m, "0123456789.");
                memmove(m, m + digits, strlen(m + digits) + 1);
            }
        check(!strcmp(outs[0], outs[1]) && count_lines(outs[0]) == 39,  // run() drops the last line end
              "%s -f: 40 lines, --parallel 7 --kv-pool 70 = --parallel 1 (%d line ends)", nano, count_lines(outs[0]));
        free(outs[0]), free(outs[1]);
    }
    // The same line alone gives what it gave among the others.
    char *out = tmp_path("parallel1.jsonl");
    char *args[] = {"-m", TINY, "-f", one, "-o", out, "-n", "12", "-c", "48", "--raw", "--ref", "-s", "2", "--parallel", "5", NULL};
    Run r = run_nano(nano, args, NULL);
    int n = read_results(out, got, 10);
    check(r.status == 0 && n == 1 && n_base > 1 && !strcmp(got[0].output, base[1].output) && got[0].n_gen == base[1].n_gen,
          "%s -f --parallel 5: a line alone = the same line among 7 others ('%s')", nano, n ? got[0].output : "");
    run_free(&r);
    char *no_file[] = {"-m", TINY, "-p", "x", "--parallel", "2", "--ref", NULL};
    expect_error(nano, "--parallel without -f", "there is no -f", no_file);
    char *pool_one[] = {"-m", TINY, "-f", one, "--parallel", "1", "--kv-pool", "9", "--ref", NULL};
    expect_error(nano, "--kv-pool with --parallel 1", "there is --parallel 1", pool_one);
    char *pool_ref[] = {"-m", TINY, "-f", one, "--kv-pool", "9", "--ref", NULL};
    expect_error(nano, "--kv-pool without --parallel on the reference path", "decodes one prompt at a time", pool_ref);
}

static void test_interactive_pipe(const char *nano) {
    // Two turns, a reset, one more: only each new turn is prefilled.
    char in[600];
    snprintf(in, sizeof in, "%s", tmp_path("chat.txt"));
    write_text(in, "Hello\nHow are you\n/reset\nHello\n/exit\nnever read\n");
    char *args[] = {"-m", TINY, "-i", "-n", "6", "--temp", "0", "--ref", NULL};
    Run r = run_nano(nano, args, in);
    // Turn 2 prefills exactly '<|im_end|>\n<|im_start|>user\nHow are you<|im_end|>\n<|im_start|>assistant\n'.
    Tokenizer *tok = tokenizer_load(TINY "/tokenizer.json");
    const char *turn2 = "<|im_end|>\n<|im_start|>user\nHow are you<|im_end|>\n<|im_start|>assistant\n";
    ChatTemplate ct;
    chat_template_load(&ct, TINY);
    ChatMessage hello = {"user", "Hello"};
    char *turn1 = chat_render(&ct, &hello, 1, 1, -1), err[100];
    chat_template_free(&ct);
    int n1, n2;
    free(tokenizer_encode(tok, turn1, strlen(turn1), 0, &n1, err, sizeof err));
    free(turn1);
    free(tokenizer_encode(tok, turn2, strlen(turn2), 0, &n2, err, sizeof err));
    tokenizer_free(tok);
    char want1[64], want2[64];
    snprintf(want1, sizeof want1, "prompt %d tok", n1);
    snprintf(want2, sizeof want2, "prompt %d tok", n2);
    const char *first = strstr(r.err, want1), *second = first ? strstr(first + 1, want2) : NULL;
    const char *third = second ? strstr(second, want1) : NULL;  // after /reset, a whole first turn again
    int replies = 0;  // one timings line per reply: /exit stops before "never read"
    for (const char *p = r.err; (p = strstr(p, "| generated ")); p++) replies++;
    check(r.status == 0 && first && second && third && replies == 3 && strstr(r.err, "conversation cleared"),
          "%s -i through a pipe: turn 1 prefills %d tokens, turn 2 only its own %d, /reset, then %d again, /exit", nano, n1, n2, n1);
    run_free(&r);

    // A full context is reported and the chat goes on.
    write_text(in, "Tell me everything about the whole wide world and all of its many wonderful people\nHi\n");
    char *small_args[] = {"-m", TINY, "-i", "-n", "4", "-c", "40", "--ref", NULL};
    r = run_nano(nano, small_args, in);
    const char *full = strstr(r.err, "does not fit in the context of 40 tokens");
    check(r.status == 0 && full && strstr(full, "| generated "),
          "%s -i: a turn too long for -c 40 is reported, and the next turn is answered", nano);
    run_free(&r);
}

// Ctrl-C under a real terminal: tmux runs nano -i, we type, interrupt the reply, then quit.
static void test_interactive_tmux(const char *nano) {
    if (system("command -v tmux >/dev/null 2>&1") != 0) {
        check(0, "tmux is not installed (apt-get install tmux): the Ctrl-C test cannot run");
        return;
    }
    char cmd[1200], session[64], log[600];
    snprintf(session, sizeof session, "nano-test-%d", (int)getpid());
    snprintf(log, sizeof log, "%s", tmp_path("tmux-status.txt"));
    // Long replies (--raw prose, no stop token in sight) so the Ctrl-C lands mid-reply.
    snprintf(cmd, sizeof cmd,
             "tmux new-session -d -s %s -x 200 -y 50 \"ASAN_OPTIONS=detect_leaks=0 %s -m %s -i --raw -n 100000 -c 1024 --temp 1 "
             "--ref; echo exit=\\$? > %s; sleep 30\"",
             session, nano, TINY, log);
    int ok = system(cmd) == 0;
    char pane[600];
    snprintf(pane, sizeof pane, "%s", tmp_path("pane.txt"));
    snprintf(cmd, sizeof cmd,
             "sleep 1; tmux send-keys -t %s 'It was a dark and stormy night' Enter; sleep 0.7; tmux send-keys -t %s C-c; sleep 1;"
             "tmux send-keys -t %s '/exit' Enter; sleep 1; tmux capture-pane -p -S -200 -t %s > %s",
             session, session, session, session, pane);
    ok &= system(cmd) == 0;
    char *screen = slurp(pane), *status = slurp(log);
    // The reply stopped (not the program), the prompt came back, and /exit then ended nano normally.
    check(ok && strstr(screen, "reply stopped") && !strcmp(status, "exit=0\n"), "%s -i under tmux: Ctrl-C stops the reply, /exit quits (%s)",
          nano, status);
    free(screen);
    free(status);
    snprintf(cmd, sizeof cmd, "tmux kill-session -t %s 2>/dev/null", session);
    if (system(cmd)) {}

    // Ctrl-C at an empty prompt exits.
    snprintf(cmd, sizeof cmd,
             "tmux new-session -d -s %s \"ASAN_OPTIONS=detect_leaks=0 %s -m %s -i --ref; echo exit=\\$? > %s; sleep 30\"; sleep 1;"
             "tmux send-keys -t %s C-c; sleep 1",
             session, nano, TINY, log, session);
    ok = system(cmd) == 0;
    status = slurp(log);
    check(ok && !strcmp(status, "exit=0\n"), "%s -i under tmux: Ctrl-C at the prompt exits (%s)", nano, status);
    free(status);
    snprintf(cmd, sizeof cmd, "tmux kill-session -t %s 2>/dev/null", session);
    if (system(cmd)) {}
}

void test_modes(const char *nano, int first) {
    Expected e;
    if (!load_expected(&e)) {
        check(0, "tests/fixtures/tiny_ppl/expected.json is missing");
        return;
    }
    test_prompt(nano, &e);
    test_perplexity(nano, &e, first);
    test_batch(nano);
    test_batch_keys(nano);
    test_batch_parallel(nano);
    test_interactive_pipe(nano);
    test_interactive_tmux(nano);
}

// The draw from an engine's ranked candidates (sampler_sample_top) against the draw from all logits,
// trial by trial, each with its own settings and seed: the same id, the same generator state after,
// and a fall back to all logits only where the candidates cannot decide. Settings from grids that
// include the edges (top-k at 63, 64 and 65, a penalty below 1, fewer ids than candidates); logits on
// coarse grids (ties everywhere, +0 and -0 among them); histories with ids outside the vocabulary.
static uint32_t next_u32(uint32_t *x) { return *x = *x * 1664525u + 1013904223u, *x >> 8; }

static void test_sampler_top(void) {
    enum { TRIALS = 20000 };
    static const float temps[] = {0, 0.3f, 1, 2}, top_ps[] = {1, 0.9f, 0.5f, 0.01f}, min_ps[] = {0, 0.05f, 0.5f},
                       penalties[] = {1, 1.1f, 1.5f, 4, 0.9f, 100};
    static const int top_ks[] = {0, 1, 2, 5, 20, 40, 63, 64, 65}, n_ids_of[] = {1, 2, 3, 10, 63, 64, 65, 66, 200, 1000};
    uint32_t x = 2024;
#define PICK(a) (a)[next_u32(&x) % (sizeof(a) / sizeof *(a))]
    float logits[1005], copy[1005];
    int hist[32], same = 1, decided = 0, fell_back = 0, plain = 0, plain_fell_back = 0;
    for (int t = 0; t < TRIALS; t++) {
        SamplerConfig c = {.temp = PICK(temps), .top_k = PICK(top_ks), .top_p = PICK(top_ps), .min_p = PICK(min_ps), .repeat_penalty = PICK(penalties)};
        int n_ids = PICK(n_ids_of), vocab = n_ids + (next_u32(&x) % 2 ? 5 : 0), grid = next_u32(&x) % 3;
        for (int i = 0; i < vocab; i++) {
            uint32_t r = next_u32(&x);
            float v = grid == 0 ? (float)((int)(r % 16) - 8) * 0.5f : grid == 1 ? (float)(r % 4) - 2.0f : (float)(r % 1000) / 100.0f - 5;
            logits[i] = v == 0 && (r >> 16) % 2 ? -0.0f : v;
        }
        int n_hist = (int)(next_u32(&x) % 30);
        for (int i = 0; i < n_hist; i++) hist[i] = (int)(next_u32(&x) % (uint32_t)(vocab + 2)) - 1;
        uint64_t seed = next_u32(&x);
        Sampler full, top;
        sampler_init(&full, &c, n_ids, seed);
        sampler_init(&top, &c, n_ids, seed);
        TopLogits tl;
        top_logits(logits, vocab, n_ids, &tl);
        memcpy(copy, logits, (size_t)vocab * sizeof *copy);
        int want = sampler_sample(&full, copy, hist, n_hist);
        int got = sampler_sample_top(&top, &tl, hist, n_hist);
        if (c.repeat_penalty == 1 && sampler_uses_top(&top)) plain++, plain_fell_back += got < 0;  // nothing to undecide
        if (got < 0) {
            fell_back++;
            memcpy(copy, logits, (size_t)vocab * sizeof *copy);
            got = sampler_sample(&top, copy, hist, n_hist);
        } else decided++;
        same &= got == want && full.rng == top.rng;
        sampler_free(&full), sampler_free(&top);
    }
#undef PICK
    check(same && decided > TRIALS / 4 && fell_back > 0,
          "sampler: %d random settings and logits: the draw from %d ranked candidates = the draw from all logits, generator state "
          "included (%d decided by the candidates, %d fell back)",
          TRIALS, TOP_LOGITS_MAX, decided, fell_back);
    check(plain > 0 && plain_fell_back == 0, "sampler: without a penalty, settings the candidates serve are always decided (%d of %d)",
          plain - plain_fell_back, plain);
    float big[1000];
    // A penalty below 1 raises logits, and no top-k leaves every id a candidate: all logits are needed.
    SamplerConfig boost = {.temp = 0, .top_k = 0, .top_p = 1, .min_p = 0, .repeat_penalty = 0.9f};
    SamplerConfig no_k = {.temp = 1, .top_k = 0, .top_p = 0.9f, .min_p = 0, .repeat_penalty = 1};
    Sampler a, b;
    sampler_init(&a, &boost, 1000, 1);
    sampler_init(&b, &no_k, 1000, 1);
    check(!sampler_uses_top(&a) && !sampler_uses_top(&b), "sampler: penalty < 1 and top-k off need all logits");
    sampler_free(&a), sampler_free(&b);
    // The ranking itself: order, next, and the first non-finite logit of the whole row.
    for (int i = 0; i < 1000; i++) big[i] = (float)(i % 7);
    big[995] = NAN, big[3] = 100;
    TopLogits tl;
    top_logits(big, 1000, 990, &tl);
    check(tl.n == TOP_LOGITS_MAX && tl.id[0] == 3 && tl.id[1] == 6 && tl.id[2] == 13 && tl.logit[1] == 6 && tl.next == 6 &&
              tl.bad_id == 995 && isnan(tl.bad_logit),
          "top_logits: ranked by logit then id (%d %d %d), next %g, first non-finite id %d", tl.id[0], tl.id[1], tl.id[2], tl.next, tl.bad_id);
    // rank_key, the ranking engines sort by: -0 = +0 (then by id), denormals, the extremes, round trips.
    check(rank_key(-0.0f, 5) < rank_key(0.0f, 4) && rank_key(-0.0f, 4) > rank_key(0.0f, 5) && rank_key(1e-45f, 9) > rank_key(0.0f, 0) &&
              rank_key(-1e-45f, 0) < rank_key(-0.0f, 9) && rank_key(-FLT_MAX, 0) > 0 && rank_key(FLT_MAX, 7) > rank_key(1e30f, 0) &&
              rank_key_id(rank_key(-3.5f, 151935)) == 151935 && rank_key_logit(rank_key(-3.5f, 1)) == -3.5f &&
              rank_key_logit(rank_key(FLT_MAX, 1)) == FLT_MAX,
          "rank_key: orders logits then ids, -0 as +0, denormals and extremes, and decodes back");
}

// An engine that ranks its own logits, as the GPU's does: the reference path behind forward_top, with
// top_logits() for the ranking, so that both ways of the Picker run on the CPU. A greedy caller gets
// the best id alone, as from the GPU's greedy steps.
typedef struct {
    Engine base;
    Engine *ref;
    float *logits;
    int vocab, greedy_calls;
} RankingEngine;

static void ranking_forward(Engine *e, const int *ids, int n, int pos, float *logits, int all) {
    RankingEngine *r = (RankingEngine *)e;
    r->ref->forward(r->ref, ids, n, pos, logits, all);
}
static void ranking_forward_top(Engine *e, const int *ids, int n, int pos, int n_ids, int greedy, TopLogits *top) {
    RankingEngine *r = (RankingEngine *)e;
    r->ref->forward(r->ref, ids, n, pos, r->logits, 0);
    top_logits(r->logits, r->vocab, n_ids, top);
    if (greedy) {
        r->greedy_calls++;
        top->n = 1, top->next = top->logit[0];
    }
}
static void ranking_last_logits(Engine *e, float *logits) {
    RankingEngine *r = (RankingEngine *)e;
    memcpy(logits, r->logits, (size_t)r->vocab * sizeof *logits);
}

// Tokens generated on the tiny model through a Picker, from a fixed prompt and seed; the forwards that
// asked the ranking engine for the pick alone into *greedy_calls.
static void picker_generate(const Model *m, const SamplerConfig *c, int ranking, int *out, int n_out, int *greedy_calls) {
    enum { PROMPT = 12 };
    Engine *ref = ref_engine_create(m, PROMPT + n_out, KV_F16, 16);
    RankingEngine r = {.base = {.name = "ranking", .forward = ranking_forward, .forward_top = ranking_forward_top,
                                .last_logits = ranking_last_logits},
                       .ref = ref, .logits = xmalloc((size_t)m->cfg.vocab * sizeof(float)), .vocab = m->cfg.vocab};
    Sampler s;
    sampler_init(&s, c, m->cfg.vocab, 3);
    Picker p;
    picker_init(&p, ranking ? &r.base : ref, &s, m->cfg.vocab);
    int ids[PROMPT + 64];
    for (int i = 0; i < PROMPT; i++) ids[i] = 100 + 37 * i;
    picker_forward(&p, ids, PROMPT, 0);
    for (int k = 0; k < n_out; k++) {
        ids[PROMPT + k] = out[k] = picker_sample(&p, ids, PROMPT + k);
        if (k + 1 < n_out) picker_forward(&p, &out[k], 1, PROMPT + k);
    }
    *greedy_calls = r.greedy_calls;
    picker_free(&p);
    sampler_free(&s);
    free(r.logits);
    ref->free(ref);
}

static void test_picker(void) {
    Model m;
    model_load(&m, TINY);
    SamplerConfig configs[] = {{.temp = 0, .top_k = 0, .top_p = 1, .min_p = 0, .repeat_penalty = 1},
                               {.temp = 0, .top_k = 0, .top_p = 1, .min_p = 0, .repeat_penalty = 1.3f},
                               {.temp = 0.9f, .top_k = 20, .top_p = 0.9f, .min_p = 0, .repeat_penalty = 1.3f}};
    const char *what[] = {"greedy", "greedy with penalty 1.3", "seeded top-k 20 with penalty 1.3"};
    for (int i = 0; i < 3; i++) {
        int whole[40], ranked[40], unused, greedy_calls;
        picker_generate(&m, &configs[i], 0, whole, 40, &unused);
        picker_generate(&m, &configs[i], 1, ranked, 40, &greedy_calls);
        check(!memcmp(whole, ranked, sizeof whole) && greedy_calls == (i ? 0 : 40),
              "Picker: %s, 40 tokens of the tiny model from ranked candidates equal those from all logits; %d of 40 forwards asked for the "
              "pick alone", what[i], greedy_calls);
    }
    model_free(&m);
}

void test_sampling(void) {
    test_picker();
    test_sampler();
    test_sampler_top();
}
