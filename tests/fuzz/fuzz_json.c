// libFuzzer target for the strict JSON parser (json.c). Build and run from the repository root:
//   make fuzz   (or: make build/fuzz_json && build/fuzz_json -max_len=8192 build/corpus_json)
#include <stdlib.h>
#include <string.h>

#include "nano.h"

// Walks the tree and checks what json.h promises: strings and keys NUL-terminated at their length,
// no embedded NUL, counts matching the sibling chains, depth within JSON_MAX_DEPTH.
static void walk(const Json *j, const JsonNode *n, int depth) {
    if (depth > JSON_MAX_DEPTH) abort();
    if (n->type == JSON_STRING && (n->str[n->len] != 0 || strlen(n->str) != n->len)) abort();
    if (n->key && (n->key[n->key_len] != 0 || strlen(n->key) != n->key_len)) abort();
    if (n->type != JSON_ARRAY && n->type != JSON_OBJECT) return;
    int count = 0;
    for (const JsonNode *c = json_first(j, n); c; c = json_next(j, c), count++) {
        if ((n->type == JSON_OBJECT) != (c->key != NULL)) abort();
        walk(j, c, depth + 1);
    }
    if (count != n->count) abort();
    if (n->type == JSON_OBJECT && n->count) {
        const JsonNode *first = json_first(j, n);
        if (json_get(j, n, first->key) != first) abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    // Copy into an exact-size heap buffer so ASan flags any read past len.
    char *buf = malloc(size ? size : 1);
    if (size) memcpy(buf, data, size);
    Json j;
    if (json_parse(&j, buf, size) == 0) {
        if (!json_root(&j)) abort();
        walk(&j, json_root(&j), 0);
    } else if (!j.err[0]) {
        abort();  // a failure must say why
    }
    json_free(&j);
    free(buf);
    return 0;
}
