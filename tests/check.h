// The CPU suite's shared harness: every test file reports through check(), and test_nano.c's main()
// runs each file's entry point and prints the "N passed, N failed" line.
#ifndef NANO_TEST_CHECK_H
#define NANO_TEST_CHECK_H

#include "nano.h"

extern int n_pass, n_fail;
void check(int ok, const char *fmt, ...) NANO_PRINTF(2, 3);

extern char tmpdir[64];
// A path in the suite's scratch directory; the result lives until the fourth call after it.
char *tmp_path(const char *name);
void write_bytes(const char *path, const void *data, size_t n);
void write_text(const char *path, const char *text);
char *slurp(const char *path);  // whole file, "" when it cannot be read
int count_lines(const char *s);

typedef struct {
    int status;  // exit status, or -signal
    char *out, *err;
} Run;
// Runs argv with stdout/stderr captured (stdout's final newline stripped); killed after 120 s.
Run run(char *const argv[], int expect_failure);
// The same in two halves, so that runs can overlap: run_start returns the process id, run_wait the
// result; tag names the run's output files (distinct for runs in flight together).
int run_start(char *const argv[], int expect_failure, const char *tag);
Run run_wait(int pid, const char *tag);
void run_free(Run *r);
// nano with args (NULL-terminated), reading stdin_path as its stdin when not NULL.
Run run_nano(const char *nano, char **args, const char *stdin_path);
// A bad input must give exit status 1 and exactly one stderr line that contains expect.
// args: NULL-terminated arguments after the binary.
void expect_error(const char *nano, const char *what, const char *expect, char **args);

// Entry points of the other test files.
void test_unicode(void);                     // tests/test_unicode.c: NFC, character classes, UTF-8
void test_tokenizer(void);                   // tests/test_tokenizer.c: encode/decode/templates in process
void test_tokenizer_cli(const char *nano);   // tests/test_tokenizer.c: --tokenize and tokenizer errors end to end
void test_sampling(void);                    // tests/test_modes.c: the sampler on known logits
void test_modes(const char *nano, int first); // tests/test_modes.c: -p, -f, --perplexity, -i on the tiny model
void test_files(const char *nano, int first); // tests/test_files.c: big files, write errors, --resume, locks, encodings
void test_kv(void);                          // tests/test_kv.c: KV cache formats, f16 rounding, wide key channels
void test_usage(const char *nano, int first); // tests/test_usage.c: seeds, --stop, builds, -t, chat editing
void test_bench(const char *nano, int first); // tests/test_bench.c: nano --bench's rows and formats, bench.sh
void test_fuzz(void);                        // tests/test_fuzz.c: each fuzz target briefly, when clang built them

#endif
