// libFuzzer target for the safetensors header parser (st_parse in model.c). Build and run from the repository root:
//   make fuzz   (or: make build/fuzz_safetensors && build/fuzz_safetensors -max_len=8192 build/corpus_safetensors)
#include <stdlib.h>
#include <string.h>

#include "nano.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *buf = malloc(size ? size : 1);  // exact size: ASan flags any read past the end
    if (size) memcpy(buf, data, size);
    SafeTensors st;
    memset(&st, 0, sizeof st);
    char err[512] = {0};
    if (st_parse(&st, buf, size, "fuzz.safetensors", err, sizeof err) == 0) {
        // What st_parse promises: every tensor inside the data buffer, the tensors tiling it exactly.
        size_t total = 0;
        for (int i = 0; i < st.n_tensors; i++) {
            const TensorEntry *t = &st.tensors[i];
            if (t->data < buf || t->data + t->nbytes > buf + size || !t->name || !t->dtype_name) abort();
            if (t->nbytes) {
                volatile uint8_t first = t->data[0], last = t->data[t->nbytes - 1];
                (void)first, (void)last;
            }
            total += t->nbytes;
        }
        uint64_t hlen = 0;
        for (int i = 7; i >= 0; i--) hlen = hlen << 8 | buf[i];
        if (total != size - 8 - hlen) abort();
    } else if (!err[0]) {
        abort();  // a failure must say why
    }
    st_free(&st);  // st.map is NULL: frees the header and the tensor table only
    free(buf);
    return 0;
}
