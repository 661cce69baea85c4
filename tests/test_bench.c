// nano --bench on the trained tiny model (reference path): the JSON rows' fields and their arithmetic,
// the CSV and markdown shapes, its bad flags; and bench.sh: results written, nano's errors shown, and
// a directory it did not write refused and left byte for byte as it was.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tests/check.h"

#define TINY "models/qwen3-tiny-classics"

static const JsonNode *field(const Json *j, const JsonNode *o, const char *key, JsonType type) {
    const JsonNode *v = json_get(j, o, key);
    return v && v->type == type ? v : NULL;
}

static double num(const Json *j, const JsonNode *o, const char *key) {
    const JsonNode *v = field(j, o, key, JSON_NUMBER);
    return v ? v->num : NAN;
}

static const char *str(const Json *j, const JsonNode *o, const char *key) {
    const JsonNode *v = field(j, o, key, JSON_STRING);
    return v ? v->str : "";
}

static int is_date(const char *s) {  // 2026-01-31T12:00:00Z
    static const char shape[] = "dddd-dd-ddTdd:dd:ddZ";
    if (strlen(s) != sizeof shape - 1) return 0;
    for (size_t i = 0; shape[i]; i++)
        if (shape[i] == 'd' ? s[i] < '0' || s[i] > '9' : s[i] != shape[i]) return 0;
    return 1;
}

static void test_json(const char *nano) {
    char *args[] = {"--bench", "-m", TINY, "-p", "16", "-n", "4", "-d", "0,32", "-r", "2", "--ref", "-t", "1", "-o", "json", NULL};
    Run r = run_nano(nano, args, NULL);
    Json j;
    int parsed = r.status == 0 && json_parse(&j, r.out, strlen(r.out)) == 0;
    check(parsed && json_root(&j)->type == JSON_ARRAY && json_root(&j)->count == 4,
          "%s: --bench -o json: an array of 4 rows (pp16, tg4 at depths 0 and 32): status %d, %s", nano, r.status, r.err);
    if (!parsed) {
        run_free(&r);
        return;
    }
    Model m;
    model_load(&m, TINY);
    const Config *c = &m.cfg;
    double file_bytes = 0;
    for (int k = 0; k < m.shards[0].n_tensors; k++) file_bytes += (double)m.shards[0].tensors[k].nbytes;
    // Every weight once (lm_head is the embedding here) plus one row of the embedding; the KV cache at
    // the steps' mean context: depth + (4 + 1) / 2 positions.
    double kv = (double)kv_bytes_per_token(KV_F16, c->n_layers, c->n_kv_heads, c->head_dim, 0);
    double weights = file_bytes + 2.0 * c->hidden;
    static const char *tests[] = {"pp16", "tg4", "pp16 @ d32", "tg4 @ d32"};
    int i = 0;
    for (const JsonNode *o = json_first(&j, json_root(&j)); o; o = json_next(&j, o), i++) {
        int tg = i % 2, depth = i < 2 ? 0 : 32;
        double tok_s = num(&j, o, "tok_s"), std = num(&j, o, "tok_s_std"), copy = num(&j, o, "copy_gb_s");
        check(!strcmp(str(&j, o, "model"), "qwen3-tiny-classics") && !strcmp(str(&j, o, "backend"), "ref") &&
                  !strcmp(str(&j, o, "kv"), "f16") && !strcmp(str(&j, o, "test"), tests[i]) && !strcmp(str(&j, o, "sampler"), "greedy") &&
                  field(&j, o, "wo_split", JSON_NULL) && field(&j, o, "driver", JSON_NULL) && field(&j, o, "cuda", JSON_NULL) &&
                  str(&j, o, "device")[0] && str(&j, o, "commit")[0] && is_date(str(&j, o, "date")) &&
                  str(&j, o, "copy_method")[0] && num(&j, o, "threads") == 1,
              "%s: row %d names the model, the reference path, f16 KV, %s, greedy, no GPU, the device, commit %s and date %s",
              nano, i, tests[i], str(&j, o, "commit"), str(&j, o, "date"));
        check(num(&j, o, "size_bytes") == file_bytes && num(&j, o, "params") == file_bytes / 2 && num(&j, o, "reps") == 2 &&
                  num(&j, o, "n_batch") == 512 && num(&j, o, "depth") == depth && num(&j, o, "n_prompt") == (tg ? 0 : 16) &&
                  num(&j, o, "n_gen") == (tg ? 4 : 0) && num(&j, o, "load_s") >= 0,
              "%s: row %d: size %.0f bytes, params %.0f (bf16: half the bytes), 2 repetitions, depth %d", nano, i,
              num(&j, o, "size_bytes"), num(&j, o, "params"), depth);
        check(isfinite(tok_s) && tok_s > 0 && isfinite(std) && std >= 0 && copy > 0, "%s: row %d: %.1f ± %.1f tok/s, copy %.1f GB/s", nano, i,
              tok_s, std, copy);
        if (tg) {
            double bpt = num(&j, o, "bytes_per_token"), want = weights + kv * (depth + 2.5), gb = num(&j, o, "gb_s");
            check(fabs(bpt - want) <= 0.5 && fabs(gb - bpt * tok_s / 1e9) <= 1e-3 + 1e-6 * gb &&
                      fabs(num(&j, o, "copy_pct") - 100 * gb / copy) <= 0.01 + 1e-3 * gb,
                  "%s: row %d: %.0f bytes a token (weights %.0f + %.0f of KV a position at mean context %g), %.3f GB/s, %.2f%% of copy",
                  nano, i, bpt, weights, kv, depth + 2.5, gb, num(&j, o, "copy_pct"));
        } else
            check(field(&j, o, "bytes_per_token", JSON_NULL) && field(&j, o, "gb_s", JSON_NULL) && field(&j, o, "copy_pct", JSON_NULL),
                  "%s: row %d (prefill): no bytes a token, GB/s or %% of copy", nano, i);
    }
    json_free(&j);
    model_free(&m);
    run_free(&r);

    char *version[] = {"--version", NULL};
    Run v = run_nano(nano, version, NULL);
    r = run_nano(nano, args, NULL);
    const char *commit = strstr(r.out, "\"commit\": \"");
    char want[96] = "";
    if (commit) snprintf(want, sizeof want, "(commit %.*s)", (int)strcspn(commit + 11, "\""), commit + 11);
    check(commit && strstr(v.out, want), "%s: the rows' commit is --version's: %s in '%s'", nano, want, v.out);
    run_free(&v), run_free(&r);
}

static int count_char(const char *s, char c) {
    int n = 0;
    for (; *s && *s != '\n'; s++) n += *s == c;
    return n;
}

static void test_shapes(const char *nano) {
    char *csv[] = {"--bench", "-m", TINY, "-p", "8,16", "-n", "2", "--kv", "f16,int8", "-r", "1", "--ref", "-o", "csv", NULL};
    Run r = run_nano(nano, csv, NULL);
    int lines = count_lines(r.out), ok = r.status == 0 && lines == 6 &&
                                         !strncmp(r.out, "model,size_bytes,params,backend,device,kv,wo_split,n_batch,test,", 64);
    for (const char *p = r.out; ok && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : p + strlen(p)) ok = count_char(p, ',') == 22;
    check(ok && strstr(r.out, ",int8,,512,pp16,16,0,0,1,greedy,") && strstr(r.out, ",f16,,512,tg2,0,2,0,1,greedy,"),
          "%s: -o csv: a header and 6 rows (2 formats x pp8, pp16, tg2) of 23 columns: '%s'", nano, r.out);
    run_free(&r);

    char *md[] = {"--bench", "-m", TINY, "-p", "8", "-n", "2", "-d", "0,8", "-r", "1", "--ref", NULL};
    r = run_nano(nano, md, NULL);
    const char *rows[6];
    int n = 0;
    for (const char *p = r.out; *p && n < 6; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : p + strlen(p)) rows[n++] = p;
    static const char header[] = "| model | size | params | backend | KV | wo_split | test | t/s | GB/s | % of copy |\n";
    ok = r.status == 0 && n == 6 && !strncmp(rows[0], header, sizeof header - 1);
    for (int k = 0; ok && k < 6; k++) ok = count_char(rows[k], '|') == 11;
    const char *footer = strstr(r.out, "\n\nnano ");
    check(ok && strstr(r.out, "| qwen3-tiny-classics | 15.20 MiB | 7.97 M | ref | f16 | - | tg2 @ d8 | ") && footer &&
              strstr(footer, "1 repetition after a warm-up, prefill chunk 512, greedy sampler"),
          "%s: -o md (the default): header, separator, 4 rows of 10 columns, and a line naming commit, device and settings: '%s'", nano,
          r.out);
    run_free(&r);

    char *save[] = {"--bench", "-m", TINY, "-p", "0", "-n", "2", "-d", "0,8", "-r", "1", "--ref", "-q", "-o", "csv", "--save", tmp_path("saved"), NULL};
    r = run_nano(nano, save, NULL);
    char *s_csv = slurp(tmp_path("saved.csv")), *s_md = slurp(tmp_path("saved.md")), *s_json = slurp(tmp_path("saved.json")),
         *s_svg = slurp(tmp_path("saved.svg"));
    Json j;
    int json_ok = json_parse(&j, s_json, strlen(s_json)) == 0 && json_root(&j)->count == 2;
    json_free(&j);
    check(r.status == 0 && !r.err[0] && r.out[0] && !strncmp(s_csv, r.out, strlen(r.out)) && count_lines(s_csv) == 3 && strstr(s_md, "| tg2 @ d8 |") && json_ok &&
              strstr(s_svg, "<svg") && strstr(s_svg, "<polyline") && strstr(s_svg, "qwen3-tiny-classics, f16 KV, tg2"),
          "%s: --save writes .csv, .md, .json and an .svg plot of decode tok/s against depth; -q leaves stderr empty ('%s')", nano, r.err);
    free(s_csv), free(s_md), free(s_json), free(s_svg);
    run_free(&r);

    char *bad_list[] = {"--bench", "-m", TINY, "-p", "512,x", NULL};
    expect_error(nano, "--bench -p 512,x", "-p: expected an integer in [0, 1048576], got 'x'", bad_list);
    char *bad_o[] = {"--bench", "-m", TINY, "-o", "xml", NULL};
    expect_error(nano, "--bench -o xml", "-o: expected md, csv or json, got 'xml'", bad_o);
    char *bad_split[] = {"--bench", "-m", TINY, "--ref", "--wo-split", "1,2", NULL};
    expect_error(nano, "--bench --ref --wo-split", "--wo-split: splits the GPU engine's o_proj; the reference path has none", bad_split);
    char *bad_split3[] = {"--bench", "-m", TINY, "--wo-split", "3", NULL};
    expect_error(nano, "--bench --wo-split 3", "--wo-split: expected 1, 2, 4 or 8, got 3", bad_split3);
    char *bad_kv[] = {"--bench", "-m", TINY, "--kv", "f16,q3", NULL};
    expect_error(nano, "--bench --kv f16,q3", "--kv: unknown format 'q3'", bad_kv);
    char *no_test[] = {"--bench", "-m", TINY, "-p", "0", "-n", "0", NULL};
    expect_error(nano, "--bench -p 0 -n 0", "--bench: no test: -p and -n are all 0", no_test);
    char *no_model[] = {"--bench", NULL};
    expect_error(nano, "--bench without -m", "--bench: no model: pass -m DIR", no_model);
    char *missing[] = {"--bench", "-m", "models/no-such-model", NULL};
    expect_error(nano, "--bench -m missing", "models/no-such-model: No such file or directory", missing);
    char *unknown[] = {"--bench", "-m", TINY, "--frobnicate", NULL};
    expect_error(nano, "--bench --frobnicate", "--bench: unknown option '--frobnicate'", unknown);
    char *save_dir[] = {"--bench", "-m", TINY, "--save", "/nonexistent-dir/results", NULL};
    expect_error(nano, "--bench --save in a missing directory", "--save /nonexistent-dir/results: cannot create /nonexistent-dir/results.md", save_dir);
}

// The names and bytes of a directory's files, to tell whether anything in it changed.
static char *dir_state(const char *dir) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cd '%s' && ls -la --time-style=full-iso . && cat ./* ./.[!.]* 2>/dev/null | cksum", dir);
    FILE *p = popen(cmd, "r");
    char *s = xcalloc(1, 65536);
    size_t n = p ? fread(s, 1, 65535, p) : 0;
    s[n] = 0;
    if (p) pclose(p);
    return s;
}

static void test_bench_sh(void) {
    // A directory bench.sh did not write, where a preset would go: refused, untouched.
    char cache[512], dir[600], out[600];
    snprintf(cache, sizeof cache, "%s", tmp_path("cache"));
    snprintf(dir, sizeof dir, "%s/qwen3-tiny", cache);
    snprintf(out, sizeof out, "%s", tmp_path("results"));
    mkdir(cache, 0755), mkdir(dir, 0755);
    char path[700];
    snprintf(path, sizeof path, "%s/config.json", dir);
    write_text(path, "{\"model_type\": \"qwen3\", \"note\": \"a model someone downloaded\"}\n");
    snprintf(path, sizeof path, "%s/model-00001-of-00002.safetensors", dir);
    write_text(path, "weights");
    char *before = dir_state(dir);
    char *refuse[] = {"./bench.sh", "--preset", "qwen3-tiny", "--cache", cache, "-o", out, "--quick", "--", "--ref", NULL};
    Run r = run(refuse, 1);
    char *after = dir_state(dir);
    check(r.status == 1 && count_lines(r.err) == 1 && strstr(r.err, "bench.sh: --preset qwen3-tiny: ") &&
              strstr(r.err, "holds files bench.sh did not write") && !strcmp(before, after) && strlen(before) > 100,
          "bench.sh refuses a preset directory holding a config.json it did not write and leaves it byte-identical: '%s'", r.err);
    free(before), free(after), run_free(&r);

    // Its own directory with a file added by someone else: refused too.
    snprintf(cache, sizeof cache, "%s", tmp_path("cache2"));
    char *write[] = {"./bench.sh", "--preset", "qwen3-tiny", "--cache", cache, "-o", out, "--quick", "--", "--ref", "-t", "1", NULL};
    r = run(write, 0);
    snprintf(path, sizeof path, "%s/results.json", out);
    char *json = slurp(path);
    snprintf(path, sizeof path, "%s/results.svg", out);
    char *svg = slurp(path);
    check(r.status == 0 && strstr(r.err, "writing a random-weight qwen3-tiny checkpoint") && strstr(r.err, "[4/4] qwen3-tiny, f16 KV, tg32 @ d256") &&
              strstr(r.err, "ETA") && strstr(r.out, "| qwen3-tiny | ") && strstr(json, "\"test\": \"tg32 @ d256\"") && strstr(svg, "<polyline"),
          "bench.sh --preset qwen3-tiny --quick writes the checkpoint into its cache, shows progress with an ETA and writes the results: '%s'", r.err);
    free(json), free(svg), run_free(&r);
    r = run(write, 0);
    check(r.status == 0 && !strstr(r.err, "writing a random-weight"), "bench.sh reuses the checkpoint it wrote: '%s'", r.err);
    run_free(&r);
    snprintf(path, sizeof path, "%s/qwen3-tiny/tokenizer.json", cache);
    write_text(path, "{}");
    snprintf(dir, sizeof dir, "%s/qwen3-tiny", cache);
    before = dir_state(dir);
    r = run(write, 1);
    after = dir_state(dir);
    check(r.status == 1 && strstr(r.err, "holds tokenizer.json, which bench.sh did not write") && !strcmp(before, after),
          "bench.sh refuses its own preset directory once another file is added there, untouched: '%s'", r.err);
    free(before), free(after), run_free(&r);

    // A user's checkpoint is only read; nano's errors reach the user.
    before = dir_state(TINY);
    char *user[] = {"./bench.sh", "-m", TINY, "-o", out, "-p", "8", "-n", "2", "-r", "1", "--", "--ref", NULL};
    r = run(user, 0);
    after = dir_state(TINY);
    check(r.status == 0 && !strcmp(before, after) && strstr(r.out, "| qwen3-tiny-classics | "), "bench.sh -m DIR measures it and leaves it as it was");
    free(before), free(after), run_free(&r);
    char *bad[] = {"./bench.sh", "-m", TINY, "-o", out, "--kv", "q3", "--", "--ref", NULL};
    r = run(bad, 1);
    check(r.status == 1 && strstr(r.err, "nano: --kv: unknown format 'q3'") && strstr(r.err, "bench.sh: nano --bench failed (exit status 1"),
          "bench.sh shows nano's error and fails with it: '%s'", r.err);
    run_free(&r);
    char *none[] = {"./bench.sh", "-o", out, NULL};
    r = run(none, 1);
    check(r.status == 1 && count_lines(r.err) == 1 && strstr(r.err, "bench.sh: nothing to measure"), "bench.sh with nothing to measure: '%s'", r.err);
    run_free(&r);
}

void test_bench(const char *nano, int first) {
    test_json(nano);
    test_shapes(nano);
    if (first) test_bench_sh();
}
