// libFuzzer target for model.safetensors.index.json (index_shards in model.c): the shard files a
// sharded checkpoint is read from. Checks that a refused index is named in the message, and that an
// accepted one lists each shard once, every one a plain file name that weight_map mentions.
//   make fuzz   (or: make build/fuzz_index && tests/fuzz/run.sh index 60)
#include <stdlib.h>
#include <string.h>

#include "nano.h"
#include "tests/fuzz/fuzz.h"

static JsonFile index_file = {"model.safetensors.index.json", {0}, NULL};
static const char **names;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = fuzz_text(data, size);
    memset(&index_file.json, 0, sizeof index_file.json);
    if (json_parse(&index_file.json, text, size) || json_root(&index_file.json)->type != JSON_OBJECT) {
        json_free(&index_file.json);
        free(text);
        return 0;
    }
    index_file.root = json_root(&index_file.json);
    names = NULL;
    int n = -1;
    fuzz_armed = 1;
    if (setjmp(fuzz_return)) {
        fuzz_check_error("model.safetensors.index.json: ");
    } else {
        n = index_shards(&index_file, &names);
        fuzz_armed = 0;
        const JsonNode *wm = json_get(&index_file.json, index_file.root, "weight_map");
        if (n < 1 || n > wm->count) abort();
        for (int i = 0; i < n; i++) {
            if (!names[i][0] || strchr(names[i], '/') || !strcmp(names[i], ".") || !strcmp(names[i], "..")) abort();
            for (int k = 0; k < i; k++)
                if (!strcmp(names[i], names[k])) abort();
            int mentioned = 0;
            for (const JsonNode *e = json_first(&index_file.json, wm); e && !mentioned; e = json_next(&index_file.json, e))
                mentioned = !strcmp(e->str, names[i]);
            if (!mentioned) abort();
        }
    }
    fuzz_armed = 0;
    free(names);
    json_free(&index_file.json);
    free(text);
    return 0;
}
