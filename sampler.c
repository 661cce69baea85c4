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
static float penalized(float logit, float p) { return logit > 0 ? logit / p : logit * p; }

static void mark_history(Sampler *s, const int *history, int n_history, unsigned char seen) {
    for (int i = 0; i < n_history; i++)
        if (history[i] >= 0 && history[i] < s->n_ids) s->seen[history[i]] = seen;
}

static void repetition_penalty(Sampler *s, float *logits, const int *history, int n_history) {
    if (s->c.repeat_penalty == 1.0f) return;
    mark_history(s, history, n_history, 1);
    for (int i = 0; i < n_history; i++) {  // each marked id once, unmarked as it goes
        int id = history[i];
        if (id >= 0 && id < s->n_ids && s->seen[id]) logits[id] = penalized(logits[id], s->c.repeat_penalty), s->seen[id] = 0;
    }
}

static int argmax(const float *x, int n) {
    int best = 0;
    float max = x[0];
    for (int i = 1; i < n; i++)
        if (x[i] > max) max = x[i], best = i;
    return best;
}

// The one ranking every path uses (rank_key): total, so the host and an engine that ranks on its own
// agree on every set of candidates and its order.
static int ranks_above(const float *key, int a, int b) { return rank_key(key[a], a) > rank_key(key[b], b); }

static const float *sort_keys;
static int by_rank(const void *a, const void *b) {
    int ia = *(const int *)a, ib = *(const int *)b;
    return ranks_above(sort_keys, ia, ib) ? -1 : ranks_above(sort_keys, ib, ia) ? 1 : 0;
}

static void sort_by_rank(const float *key, int *ids, int n) {
    sort_keys = key;
    qsort(ids, (size_t)n, sizeof *ids, by_rank);
}

// Restores the heap order of heap[0..k) below slot i (the root ranks lowest).
static void sift_down(const float *key, int *heap, int k, int i) {
    for (;;) {
        int c = 2 * i + 1;
        if (c >= k) return;
        if (c + 1 < k && ranks_above(key, heap[c], heap[c + 1])) c++;
        if (!ranks_above(key, heap[i], heap[c])) return;
        int t = heap[c];
        heap[c] = heap[i];
        heap[i] = t;
        i = c;
    }
}

// The k highest ranked of key[0..n) into out[0..k) (unordered), in one pass with a heap of the best so
// far: a few compares per id, cheap next to exponentiating or sorting a 150k vocabulary.
static void top_k_heap(const float *key, int n, int k, int *out) {
    for (int i = 0; i < k; i++) out[i] = i;
    for (int i = k / 2 - 1; i >= 0; i--) sift_down(key, out, k, i);
    for (int i = k; i < n; i++)
        if (ranks_above(key, i, out[0])) {
            out[0] = i;
            sift_down(key, out, k, 0);
        }
}

// Puts the candidates order[0..kept) that top-p keeps first, most likely first, and returns how many.
// A big candidate set (no top-k) is not sorted whole: the heap brings out growing blocks of the most
// likely ids until one holds top_p of the mass.
static int top_p_prefix(Sampler *s, int kept) {
    // The heap scans every id, so it only serves when every id is a candidate (no top-k).
    int m = kept <= SORT_WHOLE_MAX || kept < s->n_ids ? kept : 256;
    for (;; m *= 16) {
        if (m > kept / 8) m = kept;  // most of the set is needed: sort it all
        if (m < kept) top_k_heap(s->prob, s->n_ids, m, s->order);
        else if (kept == s->n_ids)
            for (int i = 0; i < kept; i++) s->order[i] = i;  // a heap round overwrote the list of every id
        sort_by_rank(s->prob, s->order, m);
        double acc = 0;
        for (int i = 0; i < m; i++) {
            if (i > 0 && acc >= s->c.top_p) return i;
            acc += s->prob[s->order[i]];
        }
        if (m == kept) return kept;
    }
}

// The warpers after top-k, on the candidates order[0..kept) of logits (ranked, or every id in id
// order): softmax at the temperature, top-p, min-p. Leaves the kept ones in order[0..return) with
// their probabilities, summing to 1, in prob[id]. logits may be prob itself (each id is read, then
// written).
static int candidates_filter(Sampler *s, const float *logits, int kept) {
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
    for (int i = 0; i < kept; i++) s->prob[s->order[i]] = (float)(s->prob[s->order[i]] / mass);
    return kept;
}

// Penalized logits -> the kept candidates (candidates_filter). With top-k on, the k highest ranked, so
// a 150k vocabulary is neither exponentiated nor sorted for every token; else every id.
static int candidates(Sampler *s, const float *logits) {
    int n = s->n_ids;
    if (s->c.top_k > 0 && s->c.top_k < n) {
        top_k_heap(logits, n, s->c.top_k, s->order);
        sort_by_rank(logits, s->order, s->c.top_k);
        return candidates_filter(s, logits, s->c.top_k);
    }
    for (int i = 0; i < n; i++) s->order[i] = i;
    return candidates_filter(s, logits, n);
}

static int draw(Sampler *s, int kept) {
    double r = uniform(s), acc = 0;
    for (int i = 0; i < kept; i++) {  // s->order[0..kept) lists the kept ids
        acc += s->prob[s->order[i]];
        if (r < acc) return s->order[i];
    }
    return s->order[kept - 1];  // rounding left r above the total
}

int sampler_probs(Sampler *s, float *logits, const int *history, int n_history, float *probs) {
    repetition_penalty(s, logits, history, n_history);
    int kept = candidates(s, logits);
    memset(probs, 0, (size_t)s->n_ids * sizeof *probs);
    for (int i = 0; i < kept; i++) probs[s->order[i]] = s->prob[s->order[i]];
    return kept;
}

int sampler_sample(Sampler *s, float *logits, const int *history, int n_history) {
    repetition_penalty(s, logits, history, n_history);
    if (s->c.temp == 0) return argmax(logits, s->n_ids);
    return draw(s, candidates(s, logits));
}

int sampler_uses_top(const Sampler *s) {
    if (s->c.repeat_penalty < 1.0f) return 0;  // it raises logits: an unlisted id could overtake
    if (s->c.temp == 0) return 1;
    return s->c.top_k > 0 && s->c.top_k <= TOP_LOGITS_MAX && s->c.top_k < s->n_ids;
}

int sampler_greedy(const Sampler *s) { return s->c.temp == 0 && s->c.repeat_penalty == 1.0f; }

int sampler_sample_top(Sampler *s, const TopLogits *top, const int *history, int n_history) {
    int k = s->c.temp == 0 ? 1 : s->c.top_k;
    if (!sampler_uses_top(s) || k > top->n) return -1;
    float *logit = s->prob;  // the candidates' logits, by id, penalized as sampler_sample would
    for (int i = 0; i < top->n; i++) logit[top->id[i]] = top->logit[i], s->order[i] = top->id[i];
    if (s->c.repeat_penalty != 1.0f) {
        mark_history(s, history, n_history, 1);
        for (int i = 0; i < top->n; i++)
            if (s->seen[top->id[i]]) logit[top->id[i]] = penalized(logit[top->id[i]], s->c.repeat_penalty);
        mark_history(s, history, n_history, 0);
        sort_by_rank(logit, s->order, top->n);
        // The penalty only lowers logits, so no unlisted id is above top->next; one at it could still
        // outrank the k-th candidate by its smaller id.
        if (top->next >= logit[s->order[k - 1]]) return -1;
    }
    if (s->c.temp == 0) return s->order[0];
    return draw(s, candidates_filter(s, logit, k));
}

void top_logits(const float *logits, int vocab, int n_ids, TopLogits *top) {
    top->bad_id = -1;
    top->bad_logit = 0;
    for (int i = 0; i < vocab; i++)
        if (!isfinite(logits[i])) {
            top->bad_id = i, top->bad_logit = logits[i];
            break;
        }
    int order[TOP_LOGITS_RANKED], n = n_ids < TOP_LOGITS_RANKED ? n_ids : TOP_LOGITS_RANKED;
    top_k_heap(logits, n_ids, n, order);
    sort_by_rank(logits, order, n);
    top->n = n < TOP_LOGITS_MAX ? n : TOP_LOGITS_MAX;
    for (int i = 0; i < top->n; i++) top->id[i] = order[i], top->logit[i] = logits[order[i]] + 0.0f;  // -0 as +0, as rank_key
    top->next = n > TOP_LOGITS_MAX ? logits[order[TOP_LOGITS_MAX]] + 0.0f : -INFINITY;
}

// ---------------------------------------------------------------------------------------------
// Forward, then pick

static NANO_NORETURN void bad_logit(float value, size_t id, int pos) {
    fatal("non-finite logit (%g) for id %zu at position %d", value, id, pos);
}

void logits_check(const float *logits, int rows, int vocab, int first_pos) {
    for (size_t i = 0; i < (size_t)rows * vocab; i++)
        if (!isfinite(logits[i])) bad_logit(logits[i], i % (size_t)vocab, first_pos + (int)(i / (size_t)vocab));
}

void picker_init(Picker *p, Engine *e, Sampler *s, int vocab) {
    memset(p, 0, sizeof *p);
    p->e = e, p->s = s, p->vocab = vocab, p->row = -1;
    p->logits = xmalloc((size_t)vocab * sizeof *p->logits);
}

void picker_free(Picker *p) { free(p->logits); }

void picker_forward(Picker *p, const int *ids, int n, int pos) {
    int last = pos + n - 1;
    p->on_engine = p->e->forward_top && sampler_uses_top(p->s);
    if (!p->on_engine) {
        p->e->forward(p->e, ids, n, pos, p->logits, 0);
        logits_check(p->logits, 1, p->vocab, last);
        return;
    }
    p->e->forward_top(p->e, ids, n, pos, p->s->n_ids, sampler_greedy(p->s), &p->top);
    p->row = -1;
    if (p->top.bad_id >= 0) bad_logit(p->top.bad_logit, (size_t)p->top.bad_id, last);
}

void picker_set_row(Picker *p, const TopLogits *top, int row, int pos) {
    if (top->bad_id >= 0) bad_logit(top->bad_logit, (size_t)top->bad_id, pos);
    p->top = *top;
    p->row = row;
    p->on_engine = 1;
}

void picker_set_logits(Picker *p, const float *logits) {
    memcpy(p->logits, logits, (size_t)p->vocab * sizeof *p->logits);
    p->on_engine = 0;
}

int picker_sample(Picker *p, const int *history, int n_history) {
    if (p->on_engine) {
        int id = sampler_sample_top(p->s, &p->top, history, n_history);
        if (id >= 0) return id;
        if (p->row >= 0) p->e->row_logits(p->e, p->row, p->logits);  // the candidates could not decide: all of them, then
        else p->e->last_logits(p->e, p->logits);
        p->on_engine = 0;
    }
    return sampler_sample(p->s, p->logits, history, n_history);
}
