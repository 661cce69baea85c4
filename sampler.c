// Sampling: the logits processors of transformers' generate(), in its order — repetition penalty,
// temperature, top-k, top-p, min-p — then one draw from a seeded generator.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nano.h"

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
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static const float *sort_keys;
static int by_prob_desc(const void *a, const void *b) {  // ties by id, so the order is total
    float pa = sort_keys[*(const int *)a], pb = sort_keys[*(const int *)b];
    if (pa != pb) return pa > pb ? -1 : 1;
    return *(const int *)a - *(const int *)b;
}

// Moves the k largest of prob[order[0..n)] to the front (unordered): quickselect.
static void select_top(const float *prob, int *order, int n, int k) {
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        float pivot = prob[order[(lo + hi) / 2]];
        int i = lo, j = hi;
        while (i <= j) {
            while (prob[order[i]] > pivot) i++;
            while (prob[order[j]] < pivot) j--;
            if (i <= j) {
                int t = order[i];
                order[i++] = order[j];
                order[j--] = t;
            }
        }
        if (k - 1 <= j) hi = j;
        else if (k - 1 >= i) lo = i;
        else break;
    }
}

int sampler_probs(Sampler *s, float *logits, const int *history, int n_history, float *probs) {
    int n = s->n_ids;
    repetition_penalty(s, logits, history, n_history);
    float temp = s->c.temp > 0 ? s->c.temp : 1.0f;
    float max = logits[argmax(logits, n)];
    double sum = 0;
    for (int i = 0; i < n; i++) sum += s->prob[i] = expf((logits[i] - max) / temp);
    for (int i = 0; i < n; i++) s->prob[i] = (float)(s->prob[i] / sum);

    // Candidates in descending probability: the top k only when top-k is on, so a 150k vocab is
    // not sorted for every token.
    int kept = n;
    for (int i = 0; i < n; i++) s->order[i] = i;
    if (s->c.top_k > 0 && s->c.top_k < n) {
        select_top(s->prob, s->order, n, s->c.top_k);
        kept = s->c.top_k;
    }
    sort_keys = s->prob;
    qsort(s->order, (size_t)kept, sizeof *s->order, by_prob_desc);
    // top-p: the smallest prefix whose probability mass (renormalized after top-k, as transformers'
    // warpers see it) reaches top_p; at least one id.
    double mass = 0;
    for (int i = 0; i < kept; i++) mass += s->prob[s->order[i]];
    if (s->c.top_p < 1.0f) {
        double acc = 0;
        int i = 0;
        while (i < kept && (i == 0 || acc < s->c.top_p * mass)) acc += s->prob[s->order[i++]];
        kept = i;
    }
    // min-p: drop ids below min_p times the most likely one.
    if (s->c.min_p > 0) {
        float floor = s->c.min_p * s->prob[s->order[0]];
        while (kept > 1 && s->prob[s->order[kept - 1]] < floor) kept--;
    }
    mass = 0;
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
    for (int i = 0; i < kept; i++) {  // s->order[0..kept) lists the kept ids, most likely first
        acc += probs[s->order[i]];
        if (r < acc) return s->order[i];
    }
    return s->order[0];  // rounding left r above the total: the most likely id
}
