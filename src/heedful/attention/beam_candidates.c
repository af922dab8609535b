/* Beam search's candidates for the next step, read straight from the logits: for every sentence,
 * the n best (beam, token) continuations by  score[beam] + log_softmax(logits[beam])[token].
 *
 * Compiled with the other kernels by heedful/attention/cpu_kernel.py and called through ctypes from
 * heedful/decode/beam.py (best_continuations), whose PyTorch path computes the same candidates.
 *
 * Why: the PyTorch path writes every log-probability (B·k rows of V, 16 MB at 500 × 8,000), reads
 * them again for the maxima of 64-token chunks, and then runs a dozen small ops to pick among the
 * chunks. Only n values per sentence are wanted. Here each row is read twice while it sits in
 * cache: once for its maximum and its own n best logits (a 64-token block is looked at token by
 * token only when its maximum beats the n-th best so far), once for the sum of exponentials; nothing
 * of size V is written. A sentence's n best are among the n best of each of its beams, since a
 * beam's candidates are its logits shifted by one constant, score[beam] − logsumexp(logits[beam]).
 *
 * Layouts: logits (B·k rows, V) float32, row r = b·k + j at logits + r·row_stride, the tokens
 * contiguous; scores (B·k) float32 (a beam at −∞ is gone: it offers no candidate); out: top (B, n)
 * float32, best first, beam_of and token_of (B, n) int64. A sentence with fewer than n candidates
 * is filled with −∞ at beam 0, token 0 (the search drops candidates at −∞). banned: a token no
 * candidate may take (−1: none), as if its log-probability were −∞; it still counts in the
 * normalization. Ties keep the earlier beam, then the lower token.
 */
#include <math.h>
#include <stdint.h>

#include "cpu_math.h"

#define BLOCK 64            /* tokens per block of the first pass: one maximum, then skipped or searched */
#define MAX_CANDIDATES 256  /* n per sentence; beam.py calls with n ≤ this */
#define PARALLEL_MIN 65536  /* below this many logits, one thread */

/* Put (value, where) into the n best so far, values[0 … n−1] falling; the caller checked that it
 * beats values[n−1]. Equal values keep their order of arrival. */
static inline void keep(float *values, int64_t *where, int64_t n, float value, int64_t at) {
  int64_t i = n - 1;
  while (i > 0 && values[i - 1] < value) {
    values[i] = values[i - 1];
    where[i] = where[i - 1];
    --i;
  }
  values[i] = value;
  where[i] = at;
}

/* One row: its maximum, returned, and its n best tokens (skipping ``banned``) into best/token. */
static float row_best(const float *row, int64_t V, int64_t n, int64_t banned, float *best, int64_t *token) {
  for (int64_t i = 0; i < n; ++i) best[i] = -INFINITY, token[i] = 0;
  float top = -INFINITY;
  int64_t start = 0;
  for (; start + BLOCK <= V; start += BLOCK) {
    float block = -INFINITY;
#pragma omp simd reduction(max : block)
    for (int64_t t = 0; t < BLOCK; ++t) block = row[start + t] > block ? row[start + t] : block;
    top = block > top ? block : top;
    if (!(block > best[n - 1])) continue;
    for (int64_t t = start; t < start + BLOCK; ++t)
      if (row[t] > best[n - 1] && t != banned) keep(best, token, n, row[t], t);
  }
  for (int64_t t = start; t < V; ++t) {
    top = row[t] > top ? row[t] : top;
    if (row[t] > best[n - 1] && t != banned) keep(best, token, n, row[t], t);
  }
  return top;
}

/* log Σ_t e^(row[t] − top), the row's normalizer less its maximum. */
static float log_sum_exp_below(const float *row, int64_t V, float top) {
  float total = 0.0f;
#pragma omp simd reduction(+ : total)
  for (int64_t t = 0; t < V; ++t) total += exp_nonpositive(row[t] - top);
  return logf(total);
}

void heedful_beam_candidates_f32(const float *logits, int64_t row_stride, const float *scores, int64_t B, int64_t k,
                                 int64_t V, int64_t n, int64_t banned, float *top, int64_t *beam_of,
                                 int64_t *token_of) {
  int64_t work = B * k * V;
#pragma omp parallel for schedule(static) if (work >= PARALLEL_MIN)
  for (int64_t b = 0; b < B; ++b) {
    float values[MAX_CANDIDATES], row_values[MAX_CANDIDATES];
    int64_t where[MAX_CANDIDATES], row_tokens[MAX_CANDIDATES];
    for (int64_t i = 0; i < n; ++i) values[i] = -INFINITY, where[i] = 0;
    for (int64_t j = 0; j < k; ++j) {
      float score = scores[b * k + j];
      if (score == -INFINITY) continue; /* a beam that is gone: all its candidates are −∞ */
      const float *row = logits + (b * k + j) * row_stride;
      float row_max = row_best(row, V, n, banned, row_values, row_tokens);
      if (row_max == -INFINITY) continue;
      float normalizer = log_sum_exp_below(row, V, row_max);
      for (int64_t i = 0; i < n && row_values[i] > -INFINITY; ++i) {
        /* as log_softmax rounds it: (x − max) − log Σ e^(x − max), then the beam's score added */
        float value = ((row_values[i] - row_max) - normalizer) + score;
        if (value > values[n - 1]) keep(values, where, n, value, j * V + row_tokens[i]);
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      top[b * n + i] = values[i];
      beam_of[b * n + i] = where[i] / V;
      token_of[b * n + i] = where[i] % V;
    }
  }
}
