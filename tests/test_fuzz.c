// The fuzz targets, briefly: each runs from its seeds and its corpus in build/ for NANO_FUZZ_SECONDS
// (tests/fuzz/run.sh). The Makefile names the targets it built in NANO_FUZZ; without clang and
// libFuzzer it names none, and the suite says so.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/check.h"

void test_fuzz(void) {
    const char *targets = getenv("NANO_FUZZ"), *seconds = getenv("NANO_FUZZ_SECONDS");
    if (!targets || !targets[0]) {
        printf("fuzz targets: not run (make test runs them where clang with libFuzzer is installed)\n");
        return;
    }
    char *list = strdup(targets);
    for (char *name = strtok(list, " "); name; name = strtok(NULL, " ")) {
        char *argv[] = {"tests/fuzz/run.sh", name, (char *)(seconds ? seconds : "20"), NULL};
        Run r = run(argv, 0);
        const char *done = strstr(r.err, "\nDone ");
        long runs = done ? strtol(done + 6, NULL, 10) : 0;
        check(r.status == 0 && runs > 0, "fuzz_%s: %ld inputs in %s s, none failing%s%.300s", name, runs, seconds ? seconds : "20",
              r.status ? ": " : "", r.status ? (strstr(r.err, "ERROR") ? strstr(r.err, "ERROR") : r.err) : "");
        run_free(&r);
    }
    free(list);
}
