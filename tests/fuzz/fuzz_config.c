// libFuzzer target for config.json and generation_config.json (config_parse, generation_config_parse in
// model.c) and the RoPE frequencies computed from them (rope_frequencies in ref.c). The input is
// config.json's text, then optionally a NUL byte and generation_config.json's. Checks that a refused
// file is named in the message, that an accepted one gives a Config within the promised ranges, and
// that its RoPE frequencies and attention factor are finite and positive.
//   make fuzz   (or: make build/fuzz_config && tests/fuzz/run.sh config 60)
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nano.h"
#include "tests/fuzz/fuzz.h"

static JsonFile config = {"config.json", {0}, NULL}, generation = {"generation_config.json", {0}, NULL};

static int open_json(JsonFile *f, const char *text, size_t len) {
    memset(&f->json, 0, sizeof f->json);
    if (json_parse(&f->json, text, len)) return 0;  // json_file_open's refusal; the JSON target covers it
    f->root = json_root(&f->json);
    return f->root->type == JSON_OBJECT;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = fuzz_text(data, size);
    size_t config_len = strlen(text);
    int has_gen = config_len < size;
    int ok = open_json(&config, text, config_len) &&
             (!has_gen || open_json(&generation, text + config_len + 1, size - config_len - 1));
    static Config c;
    fuzz_armed = 1;
    if (setjmp(fuzz_return)) {
        fuzz_check_error(strncmp(fuzz_error, "generation", 10) ? "config.json: " : "generation_config.json: ");
        ok = 0;
    } else if (ok) {
        config_parse(&c, &config);
        if (has_gen) generation_config_parse(&c, &generation);
        fuzz_armed = 0;
    }
    fuzz_armed = 0;
    if (ok) {
        if (c.hidden < 1 || c.intermediate < 1 || c.n_layers < 1 || c.n_heads < 1 || c.n_kv_heads < 1 ||
            c.n_heads % c.n_kv_heads || c.head_dim < 2 || c.head_dim % 2 || c.head_dim > 4096 || c.vocab < 1 ||
            c.max_pos < 1 || c.n_eos < 0 || c.n_eos > 8 || !(c.rms_eps >= 0) || !(c.rope_theta >= 1))
            abort();
        for (int i = 0; i < c.n_eos; i++)
            if (c.eos[i] < 0) abort();
        const SamplerConfig *s = &c.sampling;
        if (!(s->temp >= 0 && s->temp <= 100 && s->top_k >= 0 && s->top_p >= 0 && s->top_p <= 1 && s->min_p >= 0 &&
              s->min_p <= 1 && s->repeat_penalty > 0))
            abort();
        float inv_freq[2048];
        float scale = rope_frequencies(&c, inv_freq);
        if (!isfinite(scale) || !(scale > 0)) abort();
        for (int i = 0; i < c.head_dim / 2; i++)
            if (!isfinite(inv_freq[i]) || !(inv_freq[i] > 0)) abort();
    }
    json_free(&config.json);
    json_free(&generation.json);
    free(text);
    return 0;
}
