// libFuzzer target for loading tokenizer.json (tokenizer_read in tokenizer.c), then encoding with what
// was loaded. Checks that a refused file is named in the message, and that an accepted tokenizer
// encodes the input's own first bytes (when they are UTF-8) into ids it can decode.
//   make fuzz   (or: make build/fuzz_tokenizer && tests/fuzz/run.sh tokenizer 60)
#include <stdlib.h>
#include <string.h>

#include "nano.h"
#include "tests/fuzz/fuzz.h"

static JsonFile file = {"tokenizer.json", {0}, NULL};
static Tokenizer *tok;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = fuzz_text(data, size);
    if (json_parse(&file.json, text, size) || json_root(&file.json)->type != JSON_OBJECT) {
        json_free(&file.json);
        free(text);
        return 0;
    }
    file.root = json_root(&file.json);
    tok = tokenizer_new();
    fuzz_armed = 1;
    if (setjmp(fuzz_return)) {
        fuzz_check_error("tokenizer.json: ");
    } else {
        tokenizer_read(tok, &file);
        fuzz_armed = 0;
        size_t len = size < 512 ? size : 512;
        int n;
        char err[200] = "";
        int *ids = tokenizer_encode(tok, text, len, 1, &n, err, sizeof err);
        if (!ids != (utf8_invalid_offset(text, len) >= 0)) abort();
        for (int i = 0; ids && i < n; i++) {
            size_t bl;
            if (!tokenizer_bytes(tok, ids[i], &bl)) abort();
        }
        if (ids) {
            size_t out_len;
            free(tokenizer_decode(tok, ids, n, 0, &out_len));
            free(tokenizer_decode(tok, ids, n, 1, &out_len));
        }
        free(ids);
    }
    fuzz_armed = 0;
    tokenizer_free(tok);
    json_free(&file.json);
    free(text);
    return 0;
}
