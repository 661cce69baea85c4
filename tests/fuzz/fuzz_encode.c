// libFuzzer target for encode() on arbitrary bytes, with the official Qwen3 tokenizer.json. Checks that
// invalid UTF-8 is refused with its offset, that decode(encode(x)) == NFC(x) for text without added
// tokens, and that the streaming decoder, fed one id at a time, prints the same text.
//   make fuzz   (or: make build/fuzz_encode && build/fuzz_encode -max_len=4096 build/corpus_encode tests/fuzz/seeds/encode)
#include <stdlib.h>
#include <string.h>

#include "nano.h"

static Tokenizer *tok;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!tok) tok = tokenizer_load("tests/tokenizer/qwen3/tokenizer.json");
    char *text = malloc(size + 1);
    if (size) memcpy(text, data, size);
    text[size] = 0;
    char err[200] = "";
    int n;
    int *ids = tokenizer_encode(tok, text, size, 0, &n, err, sizeof err);
    long bad = utf8_invalid_offset(text, size);
    if (!ids != (bad >= 0) || (!ids && !strstr(err, "invalid UTF-8 at byte offset"))) abort();
    if (ids && !memchr(text, '<', size)) {  // every added token of Qwen's starts with '<'
        size_t len, nfc_len;
        char *back = tokenizer_decode(tok, ids, n, 0, &len), *nfc = utf8_nfc(text, size, &nfc_len);
        if (len != nfc_len || memcmp(back, nfc, len)) abort();
        // The streaming decoder: whole characters as they complete, the same bytes in the end.
        char *streamed = malloc(len + 16), out[64];
        size_t k = 0;
        Utf8Stream u = {{0}, 0};
        for (int i = 0; i < n; i++) {
            size_t bl;
            const char *b = tokenizer_bytes(tok, ids[i], &bl);
            for (size_t j = 0; j < bl; j++) {
                size_t got = utf8_stream_push(&u, b + j, 1, out);
                if (k + got > len) abort();
                memcpy(streamed + k, out, got);
                k += got;
            }
        }
        if (utf8_stream_finish(&u, out) != 0 || k != len || memcmp(streamed, back, len)) abort();
        free(streamed);
        free(back);
        free(nfc);
    }
    free(ids);
    free(text);
    return 0;
}
