// The fuzz targets, briefly: each runs from its seeds and its corpus in build/ for NANO_FUZZ_SECONDS
// (tests/fuzz/run.sh), as many at once as there are cores (up to FUZZ_JOBS_MAX). The Makefile names
// the targets it built in NANO_FUZZ; without clang and libFuzzer it names none, and the suite says so.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/check.h"

#define FUZZ_JOBS_MAX 4  // targets running at once, at most

void test_fuzz(void) {
    const char *targets = getenv("NANO_FUZZ"), *seconds = getenv("NANO_FUZZ_SECONDS");
    if (!targets || !targets[0]) {
        printf("fuzz targets: not run (make test runs them where clang with libFuzzer is installed)\n");
        return;
    }
    if (!seconds) seconds = "20";
    // One target a core at a time (each fuzzer runs on one thread): the same fuzzing in less time.
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int jobs = cores < 1 ? 1 : cores > FUZZ_JOBS_MAX ? FUZZ_JOBS_MAX : (int)cores, n = 0;
    char *list = strdup(targets), *names[32];
    for (char *name = strtok(list, " "); name && n < 32; name = strtok(NULL, " ")) names[n++] = name;
    for (int first = 0; first < n; first += jobs) {
        int pids[FUZZ_JOBS_MAX];
        char tags[FUZZ_JOBS_MAX][64];
        for (int j = 0; j < jobs && first + j < n; j++) {
            char *argv[] = {"tests/fuzz/run.sh", names[first + j], (char *)seconds, NULL};
            snprintf(tags[j], sizeof tags[j], "fuzz_%s.", names[first + j]);
            pids[j] = run_start(argv, 0, tags[j]);
        }
        for (int j = 0; j < jobs && first + j < n; j++) {
            Run r = run_wait(pids[j], tags[j]);
            const char *done = strstr(r.err, "\nDone ");
            long runs = done ? strtol(done + 6, NULL, 10) : 0;
            check(r.status == 0 && runs > 0, "fuzz_%s: %ld inputs in %s s, none failing%s%.300s", names[first + j], runs, seconds,
                  r.status ? ": " : "", r.status ? (strstr(r.err, "ERROR") ? strstr(r.err, "ERROR") : r.err) : "");
            run_free(&r);
        }
    }
    free(list);
}
