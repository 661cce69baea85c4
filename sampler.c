// Sampling: the logits processors of transformers' generate(), in its order — repetition penalty,
// temperature, top-k, top-p, min-p — then one draw from a seeded generator.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nano.h"

#define SORT_WHOLE_MAX 4096  // candidate sets up to this size are sorted whole for top-p

void sampler_init(Sampler *s, const SamplerConfig *c, int n_ids, uint64_t seed) {
    s->c = *c;
    s->n_ids = n_ids;
    s->prob = xmalloc((size_t)n_ids * sizeof *s->prob);
    s->order = xmalloc((size_t)n_ids * sizeof *s->order);
    s->seen = xcalloc((size_t)n_ids, 1);
    sampler_seed(s, seed);
}

void sampler_free(Sampler *s) {
    free(s->prob);
    free(s->order);
    free(s->seen);
}

// splitmix64 spreads any seed (0 included) over the state; xorshift64* then draws.
void sampler_seed(Sampler *s, uint64_t seed) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    s->rng = (z ^ (z >> 31)) | 1;
}

static double uniform(Sampler *s) {  // [0, 1) with 53 random bits
    s->rng ^= s->rng >> 12;
    s->rng ^= s->rng << 25;
    s->rng ^= s->rng >> 27;
    return (double)((s->rng * 0x2545F4914F6CDD1DULL) >> 11) * (1.0 / 9007199254740992.0);
}

// transformers' RepetitionPenaltyLogitsProcessor: every distinct id in the context once, positive
// logits divided by the penalty and negative ones multiplied, so both move down when penalty > 1.
static void repetition_penalty(Sampler *s, float *logits, const int *history, int n_history) {
    float p = s->c.repeat_penalty;
    if (p == 1.0f) return;
    for (int i = 0; i < n_history; i++) {
        int id = history[i];
        if (id < 0 || id >= s->n_ids || s->seen[id]) continue;
        s->seen[id] = 1;
        logits[id] = logits[id] > 0 ? logits[id] / p : logits[id] * p;
    }
    for (int i = 0; i < n_history; i++)
        if (history[i] >= 0 && history[i] < s->n_ids) s->seen[history[i]] = 0;
}

static int argmax(const float *x, int n) {
    int best = 0;
    float max = x[0];
    for (int i = 1; i < n; i++)
        if (x[i] > max) max = x[i], best = i;
    return best;
}

static const float *sort_keys;
static int by_prob_desc(const void *a, const void *b) {  // ties by id, so the order is total
    float pa = sort_keys[*(const int *)a], pb = sort_keys[*(const int *)b];
    if (pa != pb) return pa > pb ? -1 : 1;
    return *(const int *)a - *(const int *)b;
}

// Restores the min-heap order of heap[0..k) below slot i (the root holds the smallest key).
static void sift_down(const float *key, int *heap, int k, int i) {
    for (;;) {
        int c = 2 * i + 1;
        if (c >= k) return;
        if (c + 1 < k && key[heap[c + 1]] < key[heap[c]]) c++;
        if (key[heap[c]] >= key[heap[i]]) return;
        int t = heap[c];
        heap[c] = heap[i];
        heap[i] = t;
        i = c;
    }
}

// The k largest of key[0..n) into out[0..k) (unordered), in one pass with a min-heap of the best so
// far: a few compares per id, cheap next to exponentiating or sorting a 150k vocabulary.
static void top_k_heap(const float *key, int n, int k, int *out) {
    for (int i = 0; i < k; i++) out[i] = i;
    for (int i = k / 2 - 1; i >= 0; i--) sift_down(key, out, k, i);
    for (int i = k; i < n; i++)
        if (key[i] > key[out[0]]) {
            out[0] = i;
            sift_down(key, out, k, 0);
        }
}

// Puts the candidates order[0..kept) that top-p keeps first, most likely first, and returns how many.
// A big candidate set (no top-k) is not sorted whole: the heap brings out growing blocks of the most
// likely ids until one holds top_p of the mass.
static int top_p_prefix(Sampler *s, int kept) {
    sort_keys = s->prob;
    // The heap scans every id, so it only serves when every id is a candidate (no top-k).
    int m = kept <= SORT_WHOLE_MAX || kept < s->n_ids ? kept : 256;
    for (;; m *= 16) {
        if (m > kept / 8) m = kept;  // most of the set is needed: sort it all
        if (m < kept) top_k_heap(s->prob, s->n_ids, m, s->order);
        else if (kept == s->n_ids)
            for (int i = 0; i < kept; i++) s->order[i] = i;  // a heap round overwrote the list of every id
        qsort(s->order, (size_t)m, sizeof *s->order, by_prob_desc);
        double acc = 0;
        for (int i = 0; i < m; i++) {
            if (i > 0 && acc >= s->c.top_p) return i;
            acc += s->prob[s->order[i]];
        }
        if (m == kept) return kept;
    }
}

int sampler_probs(Sampler *s, float *logits, const int *history, int n_history, float *probs) {
    int n = s->n_ids;
    repetition_penalty(s, logits, history, n_history);
    // Candidates: with top-k on, the k largest logits (temperature keeps their order), so a 150k
    // vocabulary is neither exponentiated nor sorted for every token; else every id.
    int kept = n;
    if (s->c.top_k > 0 && s->c.top_k < n) {
        kept = s->c.top_k;
        top_k_heap(logits, n, kept, s->order);
    } else {
        for (int i = 0; i < n; i++) s->order[i] = i;
    }
    // Softmax over the candidates (transformers' warpers after top-k see exactly these).
    float temp = s->c.temp > 0 ? s->c.temp : 1.0f, max = logits[s->order[0]];
    for (int i = 1; i < kept; i++) max = logits[s->order[i]] > max ? logits[s->order[i]] : max;
    double sum = 0;
    for (int i = 0; i < kept; i++) sum += s->prob[s->order[i]] = expf((logits[s->order[i]] - max) / temp);
    for (int i = 0; i < kept; i++) s->prob[s->order[i]] = (float)(s->prob[s->order[i]] / sum);
    // top-p: the smallest most-likely set whose mass reaches top_p; at least one id.
    if (s->c.top_p < 1.0f) kept = top_p_prefix(s, kept);
    // min-p: drop ids below min_p times the most likely one (order is kept, sorted or not).
    if (s->c.min_p > 0) {
        float floor = s->c.min_p * (float)(1.0 / sum);  // the top id's probability: exp(0) / sum
        int k = 0;
        for (int i = 0; i < kept; i++)
            if (s->prob[s->order[i]] >= floor) s->order[k++] = s->order[i];
        kept = k;
    }
    double mass = 0;
    for (int i = 0; i < kept; i++) mass += s->prob[s->order[i]];
    memset(probs, 0, (size_t)n * sizeof *probs);
    for (int i = 0; i < kept; i++) probs[s->order[i]] = (float)(s->prob[s->order[i]] / mass);
    return kept;
}

int sampler_sample(Sampler *s, float *logits, const int *history, int n_history) {
    if (s->c.temp == 0) {
        repetition_penalty(s, logits, history, n_history);
        return argmax(logits, s->n_ids);
    }
    float *probs = logits;  // sampler_probs reads the logits before it writes the distribution
    int kept = sampler_probs(s, logits, history, n_history, probs);
    double r = uniform(s), acc = 0;
    for (int i = 0; i < kept; i++) {  // s->order[0..kept) lists the kept ids
        acc += probs[s->order[i]];
        if (r < acc) return s->order[i];
    }
    return s->order[kept - 1];  // rounding left r above the total
}
