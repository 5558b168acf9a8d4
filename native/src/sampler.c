/*
 * llama-cli's default sampler chain over one token's logits (sampling.md §1-§6), the engine's path behind
 * hotlora.sampling.Sampler:
 *
 *     logit-bias -> penalties -> top-k -> typical -> top-p -> min-p -> xtc -> temp-ext -> dist
 *
 * cli/sampling.py keeps the same chain in numpy as its reference; the tests hold the two to the same tokens.
 * The arithmetic is that reference's: float32 logits and probabilities, expf/logf evaluated in double and
 * rounded, sequential float sums, stable orders (order_key.h), libstdc++'s discrete_distribution and
 * generate_canonical over std::mt19937.
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>

#include "common.h"
#include "order_key.h"

#define MT_N 624

struct hl_sampler {
    hl_sampler_params params;
    int32_t n_vocab;
    uint32_t mt[2][MT_N]; /* [dist, xtc] std::mt19937 states */
    int32_t mt_index[2];
    /* candidates, n_vocab each: */
    int32_t n;            /* how many are left */
    int sorted;           /* in descending order of logit */
    int32_t *ids;         /* [n_vocab] token ids */
    float *logits;        /* [n_vocab] */
    float *probs;         /* [n_vocab] scratch: softmax */
    uint64_t *keys;       /* [n_vocab] scratch: sort keys */
    int32_t *tmp_ids;     /* [n_vocab] scratch: reordering */
    float *tmp_logits;    /* [n_vocab] */
};

enum { RNG_DIST = 0, RNG_XTC = 1 };

static float expf_rounded(float x) { return (float)exp((double)x); }
static float logf_rounded(float x) { return (float)log((double)x); }

/* ---- std::mt19937 (init_genrand and genrand_int32) ----------------------------------------------------- */

static void mt_seed(uint32_t *mt, int32_t *index, uint32_t seed) {
    mt[0] = seed;
    for (int i = 1; i < MT_N; i++) mt[i] = 1812433253u * (mt[i - 1] ^ (mt[i - 1] >> 30)) + (uint32_t)i;
    *index = MT_N;
}

static uint32_t mt_next(uint32_t *mt, int32_t *index) {
    if (*index >= MT_N) {
        for (int i = 0; i < MT_N; i++) {
            const uint32_t y = (mt[i] & 0x80000000u) | (mt[(i + 1) % MT_N] & 0x7FFFFFFFu);
            mt[i] = mt[(i + 397) % MT_N] ^ (y >> 1) ^ (y & 1u ? 0x9908B0DFu : 0u);
        }
        *index = 0;
    }
    uint32_t y = mt[(*index)++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9D2C5680u;
    y ^= (y << 15) & 0xEFC60000u;
    return y ^ (y >> 18);
}

/* generate_canonical<double, 53>: two outputs, (a + b * 2^32) / 2^64, kept below 1. */
static double canonical_double(hl_sampler *s) {
    const double low = mt_next(s->mt[RNG_DIST], &s->mt_index[RNG_DIST]);
    const double high = mt_next(s->mt[RNG_DIST], &s->mt_index[RNG_DIST]);
    const double u = (low + high * 4294967296.0) / 18446744073709551616.0;
    return u < 1.0 ? u : nextafter(1.0, 0.0);
}

/* generate_canonical<float, 24>: one output, float(a) / 2^32, kept below 1. */
static float canonical_float(hl_sampler *s) {
    const float u = (float)mt_next(s->mt[RNG_XTC], &s->mt_index[RNG_XTC]) / 4294967296.0f;
    return u < 1.0f ? u : nextafterf(1.0f, 0.0f);
}

/* ---- candidates ----------------------------------------------------------------------------------------- */

/* Reorders the candidates to the positions of keys[0..n) (each key's position indexes the current order). */
static void reorder(hl_sampler *s, const uint64_t *keys, int32_t n) {
    for (int32_t i = 0; i < n; i++) {
        const int32_t at = hl_order_key_position(keys[i]);
        s->tmp_ids[i] = s->ids[at], s->tmp_logits[i] = s->logits[at];
    }
    memcpy(s->ids, s->tmp_ids, (size_t)n * sizeof *s->ids);
    memcpy(s->logits, s->tmp_logits, (size_t)n * sizeof *s->logits);
    s->n = n;
}

/* Stable descending sort of the candidates by value[i]. */
static void sort_by(hl_sampler *s, const float *value) {
    for (int32_t i = 0; i < s->n; i++) s->keys[i] = hl_order_key(value[i], i);
    qsort(s->keys, (size_t)s->n, sizeof *s->keys, hl_order_key_descending);
    reorder(s, s->keys, s->n);
}

static void sort_descending(hl_sampler *s) {
    if (!s->sorted) sort_by(s, s->logits);
    s->sorted = 1;
}

/* probs[i] = expf(l_i - l_0) / (their sequential float sum), after sorting. */
static void softmax(hl_sampler *s) {
    sort_descending(s);
    float sum = 0.0f;
    for (int32_t i = 0; i < s->n; i++) s->probs[i] = expf_rounded(s->logits[i] - s->logits[0]), sum += s->probs[i];
    for (int32_t i = 0; i < s->n; i++) s->probs[i] /= sum;
}

/* Keeps candidates [first, first + n). */
static void keep_range(hl_sampler *s, int32_t first, int32_t n) {
    memmove(s->ids, s->ids + first, (size_t)n * sizeof *s->ids);
    memmove(s->logits, s->logits + first, (size_t)n * sizeof *s->logits);
    s->n = n;
}

/* ---- the chain ------------------------------------------------------------------------------------------ */

static void apply_penalties(hl_sampler *s, const int32_t *counts) {
    const hl_sampler_params *p = &s->params;
    if (!counts || (p->repeat_penalty == 1.0f && p->frequency_penalty == 0.0f && p->presence_penalty == 0.0f)) return;
    for (int32_t id = 0; id < s->n_vocab; id++) { /* candidates are still in id order */
        if (counts[id] <= 0) continue;
        const float l = s->logits[id];
        const float penalized = l <= 0 ? l * p->repeat_penalty : l / p->repeat_penalty;
        s->logits[id] = penalized - ((float)counts[id] * p->frequency_penalty + p->presence_penalty);
    }
    s->sorted = 0;
}

static void apply_top_k(hl_sampler *s) {
    const int32_t k = s->params.top_k <= 0 || s->params.top_k > s->n ? s->n : s->params.top_k;
    if (!s->sorted && k < s->n) {
        hl_select_top_k(s->logits, s->n, k, s->keys);
        reorder(s, s->keys, k);
        s->sorted = 1;
    }
    sort_descending(s);
    s->n = k;
}

/* With llama-cli's min_keep = 0 typical sampling only reorders, by |-ln p - H| ascending. */
static void apply_typical(hl_sampler *s) {
    if (s->params.typical_p >= 1.0f) return;
    softmax(s);
    float entropy = 0.0f;
    for (int32_t i = 0; i < s->n; i++) entropy += s->probs[i] * -logf_rounded(s->probs[i]);
    for (int32_t i = 0; i < s->n; i++) s->probs[i] = -fabsf(-logf_rounded(s->probs[i]) - entropy);
    sort_by(s, s->probs);
    s->sorted = 0;
}

static void apply_top_p(hl_sampler *s) {
    if (s->params.top_p >= 1.0f) return;
    softmax(s);
    float sum = 0.0f;
    for (int32_t i = 0; i < s->n; i++)
        if ((sum += s->probs[i]) >= s->params.top_p) {
            s->n = i + 1;
            return;
        }
}

static void apply_min_p(hl_sampler *s) {
    if (s->params.min_p <= 0.0f) return;
    const float log_p = logf_rounded(s->params.min_p);
    if (s->sorted) {
        const float threshold = s->logits[0] + log_p;
        for (int32_t i = 1; i < s->n; i++)
            if (s->logits[i] < threshold) {
                s->n = i;
                return;
            }
        return;
    }
    float max = s->logits[0]; /* numpy's max: NaN if any is */
    int any_nan = 0;
    for (int32_t i = 0; i < s->n; i++) any_nan |= isnan(s->logits[i]), max = s->logits[i] > max ? s->logits[i] : max;
    if (any_nan) max = NAN;
    const float threshold = (-FLT_MAX > max ? -FLT_MAX : max) + log_p;
    int32_t kept = 0;
    for (int32_t i = 0; i < s->n; i++)
        if (s->logits[i] >= threshold) s->ids[kept] = s->ids[i], s->logits[kept++] = s->logits[i];
    s->n = kept;
}

static void apply_xtc(hl_sampler *s) {
    const hl_sampler_params *p = &s->params;
    if (p->xtc_probability <= 0.0f || p->xtc_threshold > 0.5f || s->n < 2) return;
    if (canonical_float(s) > p->xtc_probability) return;
    softmax(s);
    int32_t leading = s->n;
    for (int32_t i = 0; i < s->n && leading == s->n; i++)
        if (s->probs[i] < p->xtc_threshold) leading = i;
    if (leading > 1) keep_range(s, leading - 1, s->n - (leading - 1));
}

static void apply_temperature(hl_sampler *s, float temp) {
    if (temp > 0.0f) {
        for (int32_t i = 0; i < s->n; i++) s->logits[i] /= temp;
        return;
    }
    int32_t best = 0;
    for (int32_t i = 1; i < s->n; i++)
        if (s->logits[i] > s->logits[best]) best = i;
    for (int32_t i = 0; i < s->n; i++)
        if (i != best) s->logits[i] = -INFINITY;
}

static void apply_temperature_ext(hl_sampler *s) {
    const hl_sampler_params *p = &s->params;
    if (p->dynatemp_range <= 0.0f) {
        apply_temperature(s, p->temp);
        return;
    }
    if (s->n <= 1) return;
    const float t_min = p->temp - p->dynatemp_range > 0.0f ? p->temp - p->dynatemp_range : 0.0f;
    const float t_max = p->temp + p->dynatemp_range;
    const float max_entropy = -logf_rounded(1.0f / (float)s->n);
    softmax(s);
    float entropy = 0.0f;
    for (int32_t i = 0; i < s->n; i++)
        if (s->probs[i] > 0.0f) entropy += -(s->probs[i] * logf_rounded(s->probs[i]));
    const float scale = (float)pow((double)(entropy / max_entropy), (double)p->dynatemp_exponent);
    apply_temperature(s, t_min + (t_max - t_min) * scale);
}

/* libstdc++ discrete_distribution: weights in double over their sequential sum, cumulated, the last forced
 * to 1; the first index whose cumulative value reaches u. */
static int32_t apply_dist(hl_sampler *s) {
    if (s->n == 1) return s->ids[0];
    softmax(s);
    double total = 0.0, cdf = 0.0;
    for (int32_t i = 0; i < s->n; i++) total += (double)s->probs[i];
    const double u = canonical_double(s);
    for (int32_t i = 0; i < s->n - 1; i++)
        if ((cdf += (double)s->probs[i] / total) >= u) return s->ids[i];
    return s->ids[s->n - 1];
}

/* ---- public --------------------------------------------------------------------------------------------- */

hl_status hl_sampler_create(const hl_sampler_params *params, int32_t n_vocab, hl_sampler **out) {
    *out = NULL;
    if (!params || n_vocab < 1) return hl_fail(HL_ERR_INVALID, "hl_sampler_create: invalid vocabulary size %d", (int)n_vocab);
    hl_sampler *s = calloc(1, sizeof *s);
    if (!s) return hl_fail(HL_ERR_NOMEM, "hl_sampler_create: no memory");
    s->params = *params;
    s->n_vocab = n_vocab;
    const size_t n = (size_t)n_vocab;
    s->ids = malloc(n * sizeof *s->ids), s->tmp_ids = malloc(n * sizeof *s->tmp_ids);
    s->logits = malloc(n * sizeof *s->logits), s->tmp_logits = malloc(n * sizeof *s->tmp_logits);
    s->probs = malloc(n * sizeof *s->probs), s->keys = malloc(n * sizeof *s->keys);
    if (!s->ids || !s->tmp_ids || !s->logits || !s->tmp_logits || !s->probs || !s->keys) {
        hl_sampler_free(s);
        return hl_fail(HL_ERR_NOMEM, "hl_sampler_create: no memory for %d candidates", (int)n_vocab);
    }
    hl_sampler_seed(s, 0, 0);
    *out = s;
    return HL_OK;
}

void hl_sampler_free(hl_sampler *s) {
    if (!s) return;
    free(s->ids), free(s->tmp_ids), free(s->logits), free(s->tmp_logits), free(s->probs), free(s->keys);
    free(s);
}

void hl_sampler_seed(hl_sampler *s, uint32_t dist_seed, uint32_t xtc_seed) {
    mt_seed(s->mt[RNG_DIST], &s->mt_index[RNG_DIST], dist_seed);
    mt_seed(s->mt[RNG_XTC], &s->mt_index[RNG_XTC], xtc_seed);
}

hl_status hl_sampler_sample(hl_sampler *s, const float *logits, const int32_t *bias_ids, const float *bias_values,
                            int32_t n_bias, const int32_t *penalty_counts, int32_t *token) {
    for (int32_t i = 0; i < n_bias; i++)
        if (bias_ids[i] < 0 || bias_ids[i] >= s->n_vocab)
            return hl_fail(HL_ERR_INVALID, "hl_sampler_sample: logit bias id %d outside the vocabulary", (int)bias_ids[i]);
    for (int32_t i = 0; i < s->n_vocab; i++) s->ids[i] = i;
    memcpy(s->logits, logits, (size_t)s->n_vocab * sizeof *s->logits);
    s->n = s->n_vocab, s->sorted = 0;
    for (int32_t i = 0; i < n_bias; i++) s->logits[bias_ids[i]] += bias_values[i];
    apply_penalties(s, penalty_counts);
    apply_top_k(s);
    apply_typical(s);
    apply_top_p(s);
    apply_min_p(s);
    if (s->n == 0) return hl_fail(HL_ERR_INVALID, "hl_sampler_sample: min-p left no candidate (NaN logits?)");
    apply_xtc(s);
    apply_temperature_ext(s);
    *token = apply_dist(s);
    return HL_OK;
}
