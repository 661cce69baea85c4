// golden.bin, written by tests/gen_fixtures.py from transformers: "NANOGOLD", u32 version (1),
// n_prompt, vocab, n_greedy, then i32 prompt ids, i32 greedy ids, f32 logits [n_prompt x vocab].
// Shared by the CPU suite and the GPU suite.
#ifndef NANO_TEST_GOLDEN_H
#define NANO_TEST_GOLDEN_H

#include <dirent.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "nano.h"

typedef struct {
    int n_prompt, vocab, n_greedy;
    int *prompt, *greedy;
    float *logits;
} Golden;

// 0, or -1 when the file is missing, of another version or of the wrong size.
static inline int load_golden(const char *path, Golden *g) {
    size_t len;
    char *buf = read_file(path, READ_ANY_SIZE, &len);
    uint32_t h[4];
    if (!buf || len < 24 || memcmp(buf, "NANOGOLD", 8) != 0) return free(buf), -1;
    memcpy(h, buf + 8, 16);
    if (h[0] != 1) return free(buf), -1;
    g->n_prompt = (int)h[1], g->vocab = (int)h[2], g->n_greedy = (int)h[3];
    size_t need = 24 + 4 * ((size_t)g->n_prompt + g->n_greedy + (size_t)g->n_prompt * g->vocab);
    if (len != need) return free(buf), -1;
    g->prompt = xmalloc(4 * (size_t)g->n_prompt);
    g->greedy = xmalloc(4 * (size_t)g->n_greedy + 4);
    g->logits = xmalloc(4 * (size_t)g->n_prompt * g->vocab);
    memcpy(g->prompt, buf + 24, 4 * (size_t)g->n_prompt);
    memcpy(g->greedy, buf + 24 + 4 * (size_t)g->n_prompt, 4 * (size_t)g->n_greedy);
    memcpy(g->logits, buf + 24 + 4 * ((size_t)g->n_prompt + g->n_greedy), 4 * (size_t)g->n_prompt * g->vocab);
    free(buf);
    return 0;
}

static inline void golden_free(Golden *g) { free(g->prompt), free(g->greedy), free(g->logits); }

// The entries of a fixture root (tests/fixtures, models), at most max, malloc'd names; 0 if no root.
static inline int fixture_names(const char *root, char **names, int max) {
    DIR *d = opendir(root);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < max)
        if (e->d_name[0] != '.') names[n++] = strdup(e->d_name);
    closedir(d);
    return n;
}

#endif
