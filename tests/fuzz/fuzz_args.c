// libFuzzer target for the command line (parse_args in nano.c). The input is the arguments after
// "nano", separated by NUL bytes. Checks that a refused command line says why, and that an accepted
// one names a model directory, exactly one mode and values within each flag's range.
//   make fuzz   (or: make build/fuzz_args && tests/fuzz/run.sh args 60)
#define TESTING
#include "nano.c"

#include "tests/fuzz/fuzz.h"

#define MAX_ARGS 32

static Options o;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *copy = fuzz_text(data, size);
    char *argv[MAX_ARGS + 2] = {"nano"};
    int argc = 1;
    for (char *p = copy; p < copy + size && argc <= MAX_ARGS; p += strlen(p) + 1) argv[argc++] = p;
    argv[argc] = NULL;
    memset(&o, 0, sizeof o);
    fuzz_armed = 1;
    if (setjmp(fuzz_return)) {
        fuzz_check_error(NULL);
    } else {
        parse_args(&o, argc, argv);
        fuzz_armed = 0;
        int modes = !!o.prompt + !!o.prompt_ids + o.interactive + !!o.file + !!o.perplexity + !!o.tokenize + !!o.tokenize_file;
        if (!o.help && (!o.model_dir || modes != 1 || o.n_predict < 0 || o.ctx < 0 || o.stride < 0 || o.batch < 1 ||
                        o.seed < 0 || o.threads < 0 || o.n_stops < 0 || (o.resume && !o.out) || (o.out && !o.file) ||
                        o.parallel < 0 || o.parallel > MAX_PARALLEL || (o.parallel && !o.file) || o.kv_pool < 0 ||
                        (o.kv_pool && (!o.file || o.parallel == 1))))
            abort();
        for (int i = 0; i < o.n_stops; i++)
            if (!o.stops[i][0]) abort();
        for (int k = 0; k < N_SETTINGS; k++)
            if (!isnan(o.sampling[k]) && !(o.sampling[k] >= (float)settings[k].lo && o.sampling[k] <= (float)settings[k].hi))
                abort();  // the range as parse_float checks it, in float (--repeat-penalty .01 is 0.01f, below 0.01)
    }
    fuzz_armed = 0;
    free(o.stops);
    free(copy);
    return 0;
}
