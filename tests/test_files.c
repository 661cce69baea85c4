// Nothing lost, nothing silent: the files nano reads and writes, end to end on the tiny model — files
// past the old 64 MB cap, write errors, outputs that are inputs, --resume by id and line hash, the lock
// on -o, NUL bytes, byte order marks and line ends, a model file shrinking under a running process, and
// the first error of a mistyped command line.
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/check.h"

#define TINY "models/qwen3-tiny-classics"

static char *path_in_tmp(char *buf, const char *name) {
    snprintf(buf, 600, "%s/%s", tmpdir, name);
    return buf;
}

// nano under sh, so that a redirection (">/dev/full", ">&-", "<file") applies to it alone.
static Run run_redirected(const char *nano, const char *redirect, char **args) {
    char script[800];
    snprintf(script, sizeof script, "exec \"$0\" \"$@\" %s", redirect);
    char *argv[40] = {"/bin/sh", "-c", script, (char *)nano};
    int n = 4;
    while (*args && n < 39) argv[n++] = *args++;
    argv[n] = NULL;
    return run(argv, 1);
}

static int one_line(const char *s) {
    size_t n = strlen(s);
    return n && s[n - 1] == '\n' && count_lines(s) == 1;
}

// A lost write must be an error: stdout on a full disk, or closed.
static void test_write_errors(const char *nano) {
    char in[600], text[600];
    write_text(path_in_tmp(in, "turn.txt"), "Hello\n");
    write_text(path_in_tmp(text, "short.txt"), "It is a truth universally acknowledged, that a single man in possession of a good fortune.\n");
    struct {
        const char *what, *redirect;
        char *args[12];
    } cases[] = {
        {"-p", ">/dev/full", {"-m", TINY, "-p", "Hi", "-n", "4", "--ref", "-q"}},  // -q: no settings line before the error
        {"-i", ">/dev/full", {"-m", TINY, "-i", "-n", "4", "--ref", "-q"}},
        {"--tokenize", ">/dev/full", {"-m", TINY, "--tokenize", "Hello"}},
        {"--perplexity", ">/dev/full", {"-m", TINY, "--perplexity", text, "-c", "16", "--ref"}},
        {"--prompt-ids --print-ids", ">/dev/full", {"-m", TINY, "--prompt-ids", "1 2 3", "-n", "4", "--print-ids", "--ref", "-q"}},
        {"-f to stdout", ">/dev/full", {"-m", TINY, "-f", text, "-n", "2", "--ref", "-q"}},
        {"-p", ">&-", {"-m", TINY, "-p", "Hi", "-n", "4", "--ref"}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char redirect[700];
        snprintf(redirect, sizeof redirect, "%s <%s", cases[i].redirect, in);
        Run r = run_redirected(nano, redirect, cases[i].args);
        const char *want = !strcmp(cases[i].redirect, ">&-") ? "nano: stdout is closed" : "nano: stdout: write failed: No space left on device";
        check(r.status == 1 && one_line(r.err) ? strstr(r.err, want) != NULL : 0, "%s %s %s: exit 1 naming the lost output (status %d): %s",
              nano, cases[i].what, cases[i].redirect, r.status, r.err);
        run_free(&r);
    }
}

// -f and --resume read their files as streams: both here are past the old 64 MB limit.
static void test_big_files(const char *nano, int first) {
    char prompts[600], out[600];
    path_in_tmp(prompts, "big_prompts.txt");
    path_in_tmp(out, "big_results.jsonl");
    FILE *f = fopen(prompts, "w");
    char pad[1001];
    memset(pad, ' ', 1000);
    pad[1000] = 0;
    fprintf(f, "It is a truth\n");
    for (int i = 0; i < 70 * 1000; i++) fprintf(f, "%s\n", pad);  // blank lines: skipped, but counted as ids
    fprintf(f, "Call me Ishmael.\n");
    fclose(f);
    // A result for line 1 whose output alone is 70 MB.
    f = fopen(out, "w");
    fprintf(f, "{\"id\": 1, \"line_hash\": \"%016llx\", \"prompt\": \"It is a truth\", \"output\": \"",
            (unsigned long long)hash64("It is a truth", 13));
    for (int i = 0; i < 70 * 1000; i++) fwrite(pad, 1, 1000, f);
    fprintf(f, "\", \"n_prompt_tokens\": 1, \"n_gen_tokens\": 1, \"finish_reason\": \"length\", \"ms\": 1.0}\n");
    fclose(f);
    char *args[] = {"-m", TINY, "-f", prompts, "-o", out, "--resume", "-n", "2", "--ref", NULL};
    Run r = run_nano(nano, args, NULL);
    LineReader lr;
    long last_id = 0, n_lines = 0;
    if (lines_open(&lr, out) == 0) {
        while (line_next(&lr)) {
            n_lines++;
            const char *id = strstr(lr.buf, "\"id\": ");
            if (id) last_id = strtol(id + 6, NULL, 10);
        }
        lines_close(&lr);
    }
    check(r.status == 0 && strstr(r.err, "1 prompts done (1 skipped") && n_lines == 2 && last_id == 70002,
          "%s -f and --resume over 70 MB files: the last prompt runs as id %ld, the first is kept (%ld lines, status %d): %s", nano,
          last_id, n_lines, r.status, r.err);
    run_free(&r);
    remove(out);
    if (first) {  // --tokenize-file reads whole files the same way as --perplexity
        f = fopen(prompts, "w");
        for (int i = 0; i < 17 * 1000 * 1000; i++) fputs("the ", f);
        fclose(f);
        char *tok_args[] = {"-m", TINY, "--tokenize-file", prompts, NULL};
        r = run_nano(nano, tok_args, NULL);
        check(r.status == 0 && strstr(r.err, "68000000 bytes ->"), "%s --tokenize-file of 68 MB (status %d): %s", nano, r.status, r.err);
        run_free(&r);
    }
    remove(prompts);
}

// Ids and line hashes of a results file, in order; returns how many lines.
static int result_ids(const char *path, long *ids, char (*prompts)[32], int max) {
    LineReader lr;
    int n = 0;
    if (lines_open(&lr, path)) return 0;
    while (line_next(&lr) && n < max) {
        Json j;
        ids[n] = -1;
        prompts[n][0] = 0;
        if (json_parse(&j, lr.buf, lr.len) == 0) {
            const JsonNode *id = json_get(&j, json_root(&j), "id"), *p = json_get(&j, json_root(&j), "prompt");
            if (id) ids[n] = (long)id->num;
            if (p) snprintf(prompts[n], sizeof prompts[n], "%s", p->str);
        }
        json_free(&j);
        n++;
    }
    lines_close(&lr);
    return n;
}

static void test_resume(const char *nano) {
    char prompts[600], out[600];
    path_in_tmp(prompts, "resume_prompts.txt");
    path_in_tmp(out, "resume_results.jsonl");
    write_text(prompts, "Call me Ishmael.\nIt is a truth\n");
    char *args[] = {"-m", TINY, "-f", prompts, "-o", out, "-n", "2", "--ref", "--resume", NULL};
    Run r = run_nano(nano, args, NULL);
    run_free(&r);
    // A line inserted at the top: every line moved, so each runs again under its new id.
    write_text(prompts, "In the beginning\nCall me Ishmael.\nIt is a truth\n");
    r = run_nano(nano, args, NULL);
    long ids[8];
    char p[8][32];
    int n = result_ids(out, ids, p, 8);
    check(r.status == 0 && n == 3 && ids[0] == 1 && !strcmp(p[0], "In the beginning") && ids[1] == 2 && !strcmp(p[1], "Call me Ishmael.") &&
              ids[2] == 3 && !strcmp(p[2], "It is a truth") &&
              strstr(r.err, "2 result(s) no longer match their line of") && strstr(r.err, "id 1, 2"),
          "%s --resume after a line is inserted: the moved lines run again under their new ids (%d results): %s", nano, n, r.err);
    run_free(&r);
    // Unchanged: nothing runs. A line written twice (two runs on one file, before -o was locked) is kept once.
    FILE *f = fopen(out, "a");
    char *first = slurp(out);
    fwrite(first, 1, strcspn(first, "\n") + 1, f);
    fclose(f);
    free(first);
    r = run_nano(nano, args, NULL);
    n = result_ids(out, ids, p, 8);
    check(r.status == 0 && strstr(r.err, "0 prompts done (3 skipped") && strstr(r.err, "1 result(s) no longer match") && n == 3,
          "%s --resume drops a repeated result and runs nothing (%d results): %s", nano, n, r.err);
    run_free(&r);

    // A second writer of one -o is refused before anything is written.
    int fd = open(out, O_RDWR);
    flock(fd, LOCK_EX);
    char *before = slurp(out);
    args[9] = NULL;  // without --resume: it would truncate
    r = run_nano(nano, args, NULL);
    char *after = slurp(out);
    check(r.status == 1 && one_line(r.err) && strstr(r.err, "another process is writing it (the file is locked)") && !strcmp(before, after),
          "%s -o locked by another process: refused, the file untouched: %s", nano, r.err);
    close(fd);
    free(before);
    free(after);
    run_free(&r);
}

// NUL bytes, byte order marks, line ends and UTF-16 in the prompts file and the chat.
static void test_encodings(const char *nano) {
    char prompts[600], in[600], out[600];
    path_in_tmp(prompts, "enc_prompts.txt");
    path_in_tmp(out, "enc_results.jsonl");
    static const char mixed[] = "\xEF\xBB\xBF{\"prompt\": \"Hi\", \"n_predict\": 1}\rab\0cd\r\nplain\r";
    write_bytes(prompts, mixed, sizeof mixed - 1);
    char *args[] = {"-m", TINY, "-f", prompts, "-o", out, "-n", "2", "--ref", NULL};
    Run r = run_nano(nano, args, NULL);
    long ids[8];
    char p[8][32];
    int n = result_ids(out, ids, p, 8);
    char *res = slurp(out);
    check(r.status == 3 && n == 3 && !strcmp(p[0], "Hi") && strstr(res, "\"n_gen_tokens\": 1,") &&
              strstr(res, "\"error\": \"NUL byte at byte offset 2\"") && !strcmp(p[2], "plain") && ids[2] == 3,
          "%s -f: a BOM before a JSON line, CR and CRLF line ends, a NUL byte as that line's error (%d results)", nano, n);
    free(res);
    run_free(&r);
    write_bytes(prompts, "\xFF\xFEH\0i\0\n\0", 8);
    expect_error(nano, "-f UTF-16", "the file is UTF-16 (it starts with a UTF-16 byte order mark)", args);
    write_bytes(prompts, "H\0i\0\n\0", 6);
    expect_error(nano, "-f UTF-16 without a BOM", "looks like UTF-16 (a NUL in every other byte)", args);

    write_bytes(path_in_tmp(in, "nul_turns.txt"), "Hel\0lo\nHello\n", 13);
    char *chat[] = {"-m", TINY, "-i", "-n", "2", "--print-ids", "--ref", NULL};
    r = run_nano(nano, chat, in);
    check(r.status == 0 && strstr(r.err, "NUL byte at byte offset 3 of the line; nothing was sent") && count_lines(r.out) == 0 &&
              strstr(r.err, "generated 2 tok"),
          "%s -i: a line with a NUL byte is refused, the next turn runs (out '%s'): %s", nano, r.out, r.err);
    run_free(&r);
}

// A model file that shrinks under a running process: SIGBUS is caught and the file named.
static void test_shrunk_model(const char *nano) {
    char dir[600], path[700];
    path_in_tmp(dir, "shrink");
    char cmd[2600];
    snprintf(cmd, sizeof cmd, "rm -rf %s && mkdir %s && cp %s/* %s/", dir, dir, TINY, dir);
    if (system(cmd) != 0) {
        check(0, "could not copy %s", TINY);
        return;
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    int to_nano[2], from_nano[2], err_fd = open(path_in_tmp(cmd, "shrink_err.txt"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (pipe(to_nano) || pipe(from_nano)) return;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(to_nano[0], 0);
        dup2(from_nano[1], 1);
        dup2(err_fd, 2);
        close(to_nano[1]);
        close(from_nano[0]);
        setenv("ASAN_OPTIONS", "detect_leaks=0", 1);
        alarm(120);
        execl(nano, nano, "-m", dir, "-i", "--raw", "-n", "2", "--print-ids", "--ref", (char *)NULL);
        _exit(127);
    }
    close(to_nano[0]);
    close(from_nano[1]);
    close(err_fd);
    FILE *in = fdopen(to_nano[1], "w"), *out = fdopen(from_nano[0], "r");
    fputs("Hello\n", in);
    fflush(in);
    char reply[200] = "";
    char *got = fgets(reply, sizeof reply, out);  // the first turn's ids: the model is mapped and in use
    if (truncate(path, 4096) != 0) perror("truncate");
    fputs("Hello again\n", in);
    fclose(in);
    fclose(out);
    int ws;
    waitpid(pid, &ws, 0);
    char *err = slurp(path_in_tmp(cmd, "shrink_err.txt"));
    check(got && WIFEXITED(ws) && WEXITSTATUS(ws) == 1 && strstr(err, "model.safetensors: the file shrank while nano was reading it"),
          "%s: model file truncated under a running chat -> exit 1 naming it (status %d): %s", nano,
          WIFEXITED(ws) ? WEXITSTATUS(ws) : -WTERMSIG(ws), err);
    free(err);
}

// Every file argument is checked before the model loads, and no output may be an input.
static void test_first_errors(const char *nano) {
    char broken[600], prompts[600], gguf[600], hub[600], cfg[700];
    path_in_tmp(broken, "broken_model");  // loading it would fail: the argument errors must come first
    mkdir(broken, 0755);
    snprintf(cfg, sizeof cfg, "%s/config.json", broken);
    write_text(cfg, "{}");
    write_text(path_in_tmp(prompts, "first_prompts.txt"), "Hello\n");
    write_text(path_in_tmp(gguf, "model.gguf"), "GGUF\3\0\0\0");
    path_in_tmp(hub, "models--Qwen--Qwen3-0.6B");
    mkdir(hub, 0755);
    snprintf(cfg, sizeof cfg, "%s/snapshots", hub);
    mkdir(cfg, 0755);
    snprintf(cfg, sizeof cfg, "%s/snapshots/0123abcd", hub);
    mkdir(cfg, 0755);
    char missing[600], nodir[600], model_file[600];
    path_in_tmp(missing, "no-such-prompts.txt");
    path_in_tmp(nodir, "no/such/dir/out.jsonl");
    snprintf(model_file, sizeof model_file, "%s/model.safetensors", TINY);
    char missing_msg[700], nodir_msg[700];
    snprintf(missing_msg, sizeof missing_msg, "-f %s: No such file or directory", missing);
    snprintf(nodir_msg, sizeof nodir_msg, "-o %s: cannot be created: its directory does not exist", nodir);
    size_t len;
    char *model = read_file(model_file, READ_ANY_SIZE, &len);
    uint64_t model_hash = hash64(model, len);
    free(model);
    struct {
        const char *what, *expect;
        char *args[12];
    } rows[] = {
        {"missing -f", missing_msg, {"-m", broken, "-f", missing}},
        {"unwritable -o", nodir_msg, {"-m", broken, "-f", prompts, "-o", nodir}},
        {"-f X -o X", "is also an input (-f); writing would destroy it", {"-m", TINY, "-f", prompts, "-o", prompts}},
        {"--dump-logits onto the model", "is also an input (a file of the model directory); writing would destroy it",
         {"-m", TINY, "--prompt-ids", "1 2", "--dump-logits", model_file, "--ref"}},
        {"mistyped -m in a text mode", "model directory models/qwen3-tiny-clasics: No such file or directory",
         {"-m", "models/qwen3-tiny-clasics", "-p", "Hi"}},
        {"a GGUF file as -m", "a GGUF file; nano reads Hugging Face checkpoint directories", {"-m", gguf, "-p", "Hi"}},
        {"a Hub cache root as -m", "the root of a Hugging Face cache entry; pass one of its snapshots, e.g. ", {"-m", hub, "-p", "Hi"}},
        {"unknown flag last", "unknown option '--frobnicate' (see --help)", {"-m", TINY, "-p", "Hi", "--frobnicate"}},
        {"invalid UTF-8 in --system", "--system: invalid UTF-8 at byte offset 3", {"-m", TINY, "-p", "Hi", "--system", "Be \xff"}},
        {"--perplexity UTF-16", "the file is UTF-16", {"-m", broken, "--perplexity", gguf}},
    };
    write_bytes(gguf, "\xFF\xFE" "G\0G\0", 6);  // as a text input it is UTF-16; as -m, GGUF by its name
    for (size_t i = 0; i < sizeof rows / sizeof *rows; i++) expect_error(nano, rows[i].what, rows[i].expect, rows[i].args);
    model = read_file(model_file, READ_ANY_SIZE, &len);
    char *text = slurp(prompts);
    check(model && hash64(model, len) == model_hash && !strcmp(text, "Hello\n"),
          "%s: the refused outputs left the model and the prompts file as they were", nano);
    free(model);
    free(text);
}

void test_files(const char *nano, int first) {
    test_write_errors(nano);
    test_resume(nano);
    test_encodings(nano);
    test_first_errors(nano);
    test_shrunk_model(nano);
    test_big_files(nano, first);
}
