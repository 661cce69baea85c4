// libFuzzer target for --resume's reading of an earlier run's results (resume_scan and result_id in
// nano.c), against a prompts file of four lines. Checks that a line that is not a result is refused
// with the results file named, and that otherwise each prompt line is marked done at most once, every
// line read is kept, dropped or the cut last line, and the dropped ids fit their message.
//   make fuzz   (or: make build/fuzz_resume && tests/fuzz/run.sh resume 60)
#define TESTING
#include "nano.c"

#include "tests/fuzz/fuzz.h"

// The prompts file: "Hello", "", "{\"prompt\": \"Hi\", \"seed\": 3}", "Bye".
static const char *prompts[] = {"Hello", "", "{\"prompt\": \"Hi\", \"seed\": 3}", "Bye"};
#define N_PROMPTS 4

static LineReader r;
static ResumeScan s;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!size) return 0;
    uint64_t hash[N_PROMPTS + 1] = {0};
    unsigned char done[N_PROMPTS + 1] = {0};
    for (int i = 0; i < N_PROMPTS; i++) hash[i + 1] = hash64(prompts[i], strlen(prompts[i]));
    Batch b = {.n_lines = N_PROMPTS, .total = 3, .hash = hash, .done = done};
    char *copy = fuzz_text(data, size);
    lines_from(&r, fmemopen(copy, size, "r"));
    if (!r.f) abort();
    memset(&s, 0, sizeof s);
    fuzz_armed = 1;
    if (setjmp(fuzz_return)) {
        fuzz_check_error("--resume results.jsonl: line ");
    } else {
        resume_scan(&b, "results.jsonl", &r, &s);
        fuzz_armed = 0;
        long n_done = 0;
        for (int i = 1; i <= N_PROMPTS; i++) n_done += done[i];
        long kept = 0;
        for (long i = 0; i < r.no; i++) kept += s.keep[i];
        if (done[0] || s.n_keep != n_done || kept != n_done || s.n_keep + s.n_drop + s.cut != r.no ||
            strlen(s.ids) >= sizeof s.ids || (s.n_drop > 0) != (s.ids[0] != 0))
            abort();
    }
    fuzz_armed = 0;
    free(s.keep);
    lines_close(&r);
    free(copy);
    return 0;
}
