// libFuzzer target for the batch prompts file: lines as the LineReader cuts them (files.c) and each
// line as parse_batch_line (nano.c) reads it, plain or JSON with settings; then the prompt as a result
// line writes it (json_string). Checks that no line holds a line end, that an accepted line's settings
// are within the flags' ranges, that a refused one says why and keeps the line as its prompt, and that
// the written prompt is JSON that reads back as the prompt (when the prompt is UTF-8).
//   make fuzz   (or: make build/fuzz_batch && tests/fuzz/run.sh batch 60)
#define TESTING
#include "nano.c"

#include "tests/fuzz/fuzz.h"

static LineReader r;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!size) return 0;
    static const char *stops[] = {"\n\n"};
    Options o = {.n_predict = 16, .seed = 7, .stops = stops, .n_stops = 1};
    SamplerConfig defaults = {.temp = 0.7f, .top_k = 40, .top_p = 0.95f, .min_p = 0, .repeat_penalty = 1};
    char *copy = fuzz_text(data, size);
    lines_from(&r, fmemopen(copy, size, "r"));
    if (!r.f) abort();
    // Reading lines and parsing them never stops the batch: fatal() here aborts (fuzz_armed is 0).
    while (line_next(&r)) {
        if (memchr(r.buf, '\n', r.len) || memchr(r.buf, '\r', r.len) || r.buf[r.len]) abort();
        if (line_nul(&r) >= 0 || is_blank(r.buf, r.len)) continue;
        BatchItem it;
        char err[200] = "";
        int rc = parse_batch_line(r.buf, &o, &defaults, &it, err, sizeof err);
        if (!it.prompt || (rc != 0) != (err[0] != 0) || (rc && strcmp(it.prompt, r.buf))) abort();
        if (!rc) {
            const SamplerConfig *s = &it.sampling;
            if (it.n_predict < 0 || !(s->temp >= 0 && s->temp <= 100) || s->top_k < 0 || !(s->top_p >= 0 && s->top_p <= 1) ||
                !(s->min_p >= 0 && s->min_p <= 1) || !(s->repeat_penalty >= 0.01f) || it.n_stops < 0)
                abort();
            for (int i = 0; i < it.n_stops; i++)
                if (!it.stops[i] || !it.stops[i][0]) abort();
        }
        char *written = NULL;
        size_t written_len = 0;
        FILE *f = open_memstream(&written, &written_len);
        json_string(f, it.prompt);
        fclose(f);
        Json j;
        if (json_parse(&j, written, written_len)) abort();
        const JsonNode *back = json_root(&j);
        if (back->type != JSON_STRING) abort();
        if (utf8_invalid_offset(it.prompt, strlen(it.prompt)) < 0 && strcmp(back->str, it.prompt)) abort();
        json_free(&j);
        free(written);
        batch_item_free(&it);
    }
    lines_close(&r);
    free(copy);
    return 0;
}
