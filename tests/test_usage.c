// The everyday edges of the command line on the trained tiny model: seeds, stop strings, --version
// and the CPU-only build, -t, the chat's commands and its line editor (under tmux), the perplexity
// progress line.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/check.h"

#define TINY "models/qwen3-tiny-classics"
#define PROSE "It is a truth universally acknowledged"

// The seed of a timings line ("| seed N"), or -1.
static long long seed_of(const char *err) {
    const char *p = strstr(err, "| seed ");
    return p ? atoll(p + 7) : -1;
}

static void test_seeds(const char *nano) {
    char *args[] = {"-m", TINY, "-p", "Call me Ishmael.", "--raw", "-n", "16", "--ref", NULL};
    Run a = run_nano(nano, args, NULL), b = run_nano(nano, args, NULL);
    long long sa = seed_of(a.err), sb = seed_of(b.err);
    check(a.status == 0 && sa >= 0 && sb >= 0 && sa != sb && strstr(a.err, "nano: sampling: temp 0.7, top-k 40, top-p 0.9"),
          "%s: no -s draws a seed per run and shows it with the settings and timings (%lld, %lld)", nano, sa, sb);
    char seed[32];
    snprintf(seed, sizeof seed, "%lld", sa);
    char *again[] = {"-m", TINY, "-p", "Call me Ishmael.", "--raw", "-n", "16", "--ref", "-s", seed, NULL};
    Run c = run_nano(nano, again, NULL);
    check(c.status == 0 && seed_of(c.err) == sa && !strcmp(c.out, a.out) && a.out[0], "%s: -s %s repeats the run: '%s'", nano, seed, c.out);
    run_free(&a), run_free(&b), run_free(&c);

    char *minus1[] = {"-m", TINY, "-p", "Call me Ishmael.", "--raw", "-n", "4", "--ref", "-s", "-1", NULL};
    a = run_nano(nano, minus1, NULL);
    check(a.status == 0 && seed_of(a.err) >= 0, "%s: -s -1 draws a seed and shows it (%lld)", nano, seed_of(a.err));
    run_free(&a);
    char *quiet[] = {"-m", TINY, "-p", "Call me Ishmael.", "--raw", "-n", "4", "--ref", "-q", NULL};
    a = run_nano(nano, quiet, NULL);
    check(a.status == 0 && a.out[0] && !a.err[0], "%s: -q prints the reply and nothing on stderr: '%s'", nano, a.err);
    run_free(&a);
    char *bad[] = {"-m", TINY, "-p", "x", "-s", "-2", NULL};
    expect_error(nano, "-s -2", "-s: expected an integer in [-1,", bad);
}

// A stop string made of the end of one generated token and the start of the next must cut the reply
// just before it, on the text, whatever the tokens.
static void test_stop(const char *nano) {
    char *ids_args[] = {"-m", TINY, "-p", PROSE, "--raw", "--temp", "0", "--repeat-penalty", "1", "-n", "24", "--print-ids", "--ref", NULL};
    char *text_args[] = {"-m", TINY, "-p", PROSE, "--raw", "--temp", "0", "--repeat-penalty", "1", "-n", "24", "--ref", NULL};
    Run ri = run_nano(nano, ids_args, NULL), rt = run_nano(nano, text_args, NULL);
    Tokenizer *tok = tokenizer_load(TINY "/tokenizer.json");
    int ids[64], n = 0;
    for (char *p = ri.out; *p && n < 64;) {
        char *end;
        ids[n] = (int)strtol(p, &end, 10);
        if (end == p) break;
        n++, p = end;
    }
    char stop[8] = "", want[600] = "";
    int n_tokens = 0;  // tokens generated up to the one that completes the stop string
    size_t at = 0;     // where the next token's text starts in the reply
    for (int i = 0; i + 1 < n && !stop[0]; i++) {
        size_t la, lb;
        const char *a = tokenizer_bytes(tok, ids[i], &la), *b = tokenizer_bytes(tok, ids[i + 1], &lb);
        at += la;
        if (la < 2 || lb < 2 || memchr(a, '\n', la) || memchr(b, '\n', 2)) continue;
        snprintf(stop, sizeof stop, "%.2s%.2s", a + la - 2, b);
        const char *first = strstr(rt.out, stop);
        if (!first || (size_t)(first - rt.out) != at - 2) {
            stop[0] = 0;
            continue;
        }
        snprintf(want, sizeof want, "%.*s", (int)(at - 2), rt.out);
        n_tokens = i + 2;
    }
    tokenizer_free(tok);
    char *stop_args[] = {"-m", TINY, "-p", PROSE, "--raw", "--temp", "0", "--repeat-penalty", "1", "-n", "24", "--ref",
                         "--stop", "never in this text", "--stop", stop, NULL};
    Run r = run_nano(nano, stop_args, NULL);
    char gen[32];
    snprintf(gen, sizeof gen, "generated %d tok", n_tokens);
    check(stop[0] && r.status == 0 && !strcmp(r.out, want) && strstr(r.err, gen),
          "%s: --stop '%s' spanning two tokens ends the reply before it, unprinted, after %d tokens: '%s'", nano, stop, n_tokens, r.out);
    run_free(&r), run_free(&ri), run_free(&rt);
    char *with_ids[] = {"-m", TINY, "-p", "x", "--stop", "a", "--print-ids", NULL};
    expect_error(nano, "--stop with --print-ids", "does not combine with --print-ids", with_ids);
}

// --version, the CPU-only build (build/nano-cpu, what make gives without nvcc), and no cuBLAS among
// the libraries the GPU build loads at start.
static void test_builds(const char *nano) {
    int have_nvcc = system("command -v nvcc >/dev/null 2>&1 || test -x /usr/local/cuda/bin/nvcc") == 0;
    char *version[] = {"--version", NULL};
    Run r = run_nano(nano, version, NULL);
    check(r.status == 0 && !strncmp(r.out, "nano 0.", 7) && strstr(r.out, "(commit ") &&
              strstr(r.out, have_nvcc ? "GPU engine: CUDA " : "GPU engine: compiled out"),
          "%s --version: %s", nano, r.out);
    run_free(&r);
    const char *cpu = "build/nano-cpu";
    r = run_nano(cpu, version, NULL);
    check(r.status == 0 && strstr(r.out, "GPU engine: compiled out"), "%s --version: %s", cpu, r.out);
    run_free(&r);
    char *greedy[] = {"-m", TINY, "-p", PROSE, "--raw", "--temp", "0", "-n", "12", NULL};
    Run a = run_nano(cpu, greedy, NULL);
    char *greedy_ref[] = {"-m", TINY, "-p", PROSE, "--raw", "--temp", "0", "-n", "12", "--ref", NULL};
    Run b = run_nano(nano, greedy_ref, NULL);
    check(a.status == 0 && a.out[0] && !strcmp(a.out, b.out) && strstr(a.err, "built without the GPU engine"),
          "%s runs the reference path, says why, and gives the same reply as %s --ref: '%s'", cpu, nano, a.out);
    run_free(&a), run_free(&b);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "ldd %s | grep -q 'libcublas\\|libcudart'", nano);
    check(system(cmd) != 0, "%s needs neither libcublas nor libcudart to start (cuBLAS is opened by the GPU engine)", nano);
}

// -t: the same logits, bit for bit, for any thread count.
static void test_threads(const char *nano) {
    char *text = slurp("tests/fixtures/tiny_ppl/heldout.txt"), err[100];
    Tokenizer *tok = tokenizer_load(TINY "/tokenizer.json");
    int n;
    int *ids = tokenizer_encode(tok, text, strlen(text) < 1500 ? strlen(text) : 1500, 0, &n, err, sizeof err);
    tokenizer_free(tok);
    free(text);
    char *list = xmalloc((size_t)n * 8 + 1), f1[600], f4[600];
    size_t o = 0;
    for (int i = 0; i < n; i++) o += (size_t)sprintf(list + o, "%s%d", i ? " " : "", ids[i]);
    free(ids);
    snprintf(f1, sizeof f1, "%s", tmp_path("t1.f32"));
    snprintf(f4, sizeof f4, "%s", tmp_path("t4.f32"));
    char *a1[] = {"-m", TINY, "--prompt-ids", list, "-n", "0", "--dump-logits", f1, "-t", "1", "--ref", NULL};
    char *a4[] = {"-m", TINY, "--prompt-ids", list, "-n", "0", "--dump-logits", f4, "-t", "4", "--ref", NULL};
    Run r1 = run_nano(nano, a1, NULL), r4 = run_nano(nano, a4, NULL);
    size_t l1 = 0, l4 = 0;
    char *d1 = read_file(f1, READ_ANY_SIZE, &l1), *d4 = read_file(f4, READ_ANY_SIZE, &l4);
    check(r1.status == 0 && r4.status == 0 && d1 && d4 && l1 == (size_t)n * 8192 * 4 && l1 == l4 && !memcmp(d1, d4, l1),
          "%s: -t 1 and -t 4 give the same logits, bit for bit, for %d prompt positions", nano, n);
    free(d1), free(d4), free(list);
    run_free(&r1), run_free(&r4);
}

// Chat commands through a pipe: /help, an unknown command, // for a line that begins with /, a trailing
// backslash, and the oldest turns dropped when the context is full.
static void test_chat_commands(const char *nano) {
    char in[600];
    snprintf(in, sizeof in, "%s", tmp_path("commands.txt"));
    write_text(in, "Hello\n/help\n/nope\n//slash\ntwo \\\nlines\n");
    char *args[] = {"-m", TINY, "-i", "-n", "2", "--temp", "0", "--ref", "--verbose-prompt", NULL};
    Run r = run_nano(nano, args, in);
    int replies = 0;
    for (const char *p = r.err; (p = strstr(p, "| generated ")); p++) replies++;
    check(r.status == 0 && replies == 3 && strstr(r.err, "/reset   start a new conversation") && strstr(r.err, "unknown command '/nope'") &&
              strstr(r.err, "<|im_start|>user\n/slash<|im_end|>") && strstr(r.err, "<|im_start|>user\ntwo \nlines<|im_end|>"),
          "%s -i: /help, an unknown command refused, // sends '/slash', 'two \\' + 'lines' is one turn (%d replies)", nano, replies);
    run_free(&r);

    write_text(in, "Hello there my friend\nTell me about the sea\nAnd now about the land\n");
    char *small[] = {"-m", TINY, "-i", "-n", "8", "--temp", "0", "--ref", "-c", "72", "--system", "Be brief.", NULL};
    r = run_nano(nano, small, in);
    replies = 0;
    for (const char *p = r.err; (p = strstr(p, "| generated ")); p++) replies++;
    check(r.status == 0 && replies == 3 && strstr(r.err, "context of 72 tokens is full: dropped the oldest 1 turn (\"Hello there my friend\"); 1 kept"),
          "%s -i -c 72: the oldest turn makes room and the chat goes on (%d replies): %s", nano, replies, r.err);
    run_free(&r);
}

// tmux: runs cmd in a detached session; returns 0 when it started.
static int tmux_start(const char *session, const char *cmd, const char *status) {
    char line[4000];
    snprintf(line, sizeof line, "tmux new-session -d -s %s -x 200 -y 50 \"ASAN_OPTIONS=detect_leaks=0 %s; echo exit=\\$? > %s; sleep 30\"",
             session, cmd, status);
    return system(line);
}

// Waits (up to 60 s) until the pane and its history show at least n lines starting with the chat prompt,
// then sends keys (when not NULL).
static void tmux_keys(const char *session, int n_prompts, const char *keys) {
    char line[1000];
    int n = snprintf(line, sizeof line, "for i in $(seq 120); do [ $(tmux capture-pane -p -S -1000 -t %s | grep -c '^>') -ge %d ] && break; sleep 0.5; done",
                     session, n_prompts);
    if (keys) snprintf(line + n, sizeof line - (size_t)n, "; tmux send-keys -t %s %s", session, keys);
    if (system(line)) {}
}

// The line editor on a real terminal: editing keys, history, a continued line and a bracketed paste.
static void test_line_editor(const char *nano) {
    char session[64], status[600], pane[600], cmd[2400];
    snprintf(session, sizeof session, "nano-edit-%d", (int)getpid());
    snprintf(status, sizeof status, "%s", tmp_path("edit-status.txt"));
    snprintf(cmd, sizeof cmd, "%s -m %s -i -n 2 --temp 0 --ref --verbose-prompt 2>&1", nano, TINY);
    int ok = tmux_start(session, cmd, status) == 0;
    tmux_keys(session, 1, "Hellx BSpace o Escape Left Left X Enter");  // -> HelXlo: Esc does nothing, Left still moves
    tmux_keys(session, 2, "Up End ! Home A Enter");               // history, Home/End -> AHelXlo!
    tmux_keys(session, 3, "'one\\' Enter two Enter");             // continued -> "one\ntwo"
    snprintf(cmd, sizeof cmd, "tmux set-buffer -b %s \"$(printf 'pa\\nste')\" && tmux paste-buffer -p -d -b %s -t %s", session, session, session);
    tmux_keys(session, 4, NULL);
    ok &= system(cmd) == 0;
    tmux_keys(session, 4, "Enter");                               // the paste is one turn
    // Ctrl-D only once the editor waits on an empty fifth prompt (the last line of the pane is "> "): a
    // key that arrives before the terminal is raw again would be the line discipline's, not the editor's.
    // An Esc just before it must not swallow it.
    snprintf(cmd, sizeof cmd, "for i in $(seq 240); do [ \"$(tmux capture-pane -p -t %s | grep -v '^$' | tail -n 1)\" = '>' ] && "
             "[ $(tmux capture-pane -p -S -1000 -t %s | grep -c '^>') -ge 5 ] && break; sleep 0.5; done; tmux send-keys -t %s Escape C-d",
             session, session, session);
    ok &= system(cmd) == 0;
    snprintf(pane, sizeof pane, "%s", tmp_path("edit-pane.txt"));
    // A Ctrl-D that still met the line discipline (a loaded machine) is lost: another every 5 s until nano exits.
    snprintf(cmd, sizeof cmd,
             "for i in $(seq 120); do [ -s %s ] && break; [ $((i %% 10)) = 0 ] && tmux send-keys -t %s C-d; sleep 0.5; done; "
             "tmux capture-pane -p -S -300 -t %s > %s",
             status, session, session, pane);
    ok &= system(cmd) == 0;
    // What nano was doing when it did not exit: its state and wait channel, and the pane's last lines.
    char state[600];
    snprintf(state, sizeof state, "%s", tmp_path("edit-state.txt"));
    snprintf(cmd, sizeof cmd, "ps -o stat=,wchan:24=,args= --ppid $(tmux display -p -t %s '#{pane_pid}') > %s 2>&1; tail -n 4 %s >> %s",
             session, state, pane, state);
    if (system(cmd)) {}
    char *screen = slurp(pane), *st = slurp(status), *why = slurp(state);
    const char *want[] = {"user\nHelXlo<|im_end|>", "user\nAHelXlo!<|im_end|>", "user\none\ntwo<|im_end|>", "user\npa\nste<|im_end|>"};
    for (int i = 0; i < 4; i++)
        check(ok && strstr(screen, want[i]), "%s -i under tmux: the editor sends '%s'", nano, strchr(want[i], '\n') + 1);
    check(!strcmp(st, "exit=0\n"), "%s -i under tmux: Ctrl-D after editing exits (%s)%s%s", nano, st, st[0] ? "" : "; still running: ",
          st[0] ? "" : why);
    free(screen), free(st), free(why);
    snprintf(cmd, sizeof cmd, "tmux kill-session -t %s 2>/dev/null", session);
    if (system(cmd)) {}
}

// --perplexity on a terminal: a progress line with the running estimate.
static void test_perplexity_progress(const char *nano) {
    char session[64], status[600], pane[600], cmd[2400];
    snprintf(session, sizeof session, "nano-ppl-%d", (int)getpid());
    snprintf(status, sizeof status, "%s", tmp_path("ppl-status.txt"));
    snprintf(pane, sizeof pane, "%s", tmp_path("ppl-pane.txt"));
    snprintf(cmd, sizeof cmd, "%s -m %s --perplexity tests/fixtures/tiny_ppl/heldout.txt -c 128 --stride 128 --ref", nano, TINY);
    int ok = tmux_start(session, cmd, status) == 0;
    snprintf(cmd, sizeof cmd, "for i in $(seq 240); do [ -s %s ] && break; sleep 0.5; done; tmux capture-pane -p -S -50 -t %s > %s", status,
             session, pane);
    ok &= system(cmd) == 0;
    char *screen = slurp(pane);
    check(ok && strstr(screen, "nano: perplexity 1711/1724 tokens scored, ") && strstr(screen, "so far"),
          "%s --perplexity on a terminal shows its progress and running estimate", nano);
    free(screen);
    snprintf(cmd, sizeof cmd, "tmux kill-session -t %s 2>/dev/null", session);
    if (system(cmd)) {}
}

void test_usage(const char *nano, int first) {
    test_seeds(nano);
    test_stop(nano);
    test_threads(nano);
    test_chat_commands(nano);
    if (system("command -v tmux >/dev/null 2>&1") != 0) {
        check(0, "tmux is not installed (apt-get install tmux): the line editor and progress tests cannot run");
        return;
    }
    test_line_editor(nano);
    if (first) {
        test_builds(nano);
        test_perplexity_progress(nano);
    }
}
