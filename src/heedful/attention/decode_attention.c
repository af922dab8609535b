/* One decoding step of attention over a decoder's key/value cache, one query per row, in one pass.
 *
 * Compiled with dropout_kernel.c by heedful/attention/cpu_kernel.py and called through ctypes from
 * heedful/attention/cache.py (KVCache.attend), which holds the layouts this reads and a PyTorch path
 * computing the same attention.
 *
 * Why: beam search asks for one query per hypothesis against a few dozen keys. PyTorch's path runs
 * two batched matmuls of a source's k hypotheses against all k·T grouped keys (a mask then keeps
 * each hypothesis's own lineage: four of five scores are thrown away), a masked softmax, and the
 * mask itself, as separate passes of tiny matrices. Here each (source, head) pair is one task: every
 * hypothesis reads only its own T keys, and scores, softmax and the weighted sum of values stay in
 * registers and L1. Plain storage (greedy decoding, a search's first step) is the case g = 1.
 *
 * Layouts (element strides, the last dimension contiguous):
 *   q      (n·g rows, H, D): row r = i·g + j is hypothesis j of source i
 *   k, v   (n, H, keys, D): source i, head h, key row at k + i·kv_src + h·kv_head + key·D
 *   growing grouped cache (lineage != NULL): position t of hypothesis j reads key t·g + lineage[i, j, t]
 *   otherwise (lineage == NULL): every hypothesis of source i reads keys 0 … T−1, those with
 *     key_ok[i, t] == 0 (padding) skipped; key_ok == NULL: none skipped
 *   out    (n·g, H, D) contiguous float32
 * q, k and v are float32 (heedful_decode_attention_f32) or bfloat16 (…_bf16: widened to float32 as
 * they are read; all arithmetic in float32 either way).
 * Attention: softmax_t(scale · q·k_t) weighting v_t, the maximum subtracted first; a row with no
 * key allowed gets zeros, as the PyTorch path gives.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cpu_math.h"

#define PARALLEL_MIN 32768 /* below this many multiply-adds, one thread (a guess: a few µs of work) */
#define MAX_KEYS 4096      /* the scores of one row live on the stack; cache.py calls with T ≤ this */
#define SCORES (MAX_KEYS + 16) /* room for padding the last vector */

/* Element i of a float32 (bf16 = 0) or bfloat16 (bf16 = 1) array, as float32. */
static inline float load(const void *p, int64_t i, int bf16) {
  if (!bf16) return ((const float *)p)[i]; /* an early return: a select here made float32 loops 3× slower */
  return bf16_to_f32(((const uint16_t *)p)[i]);
}

/* Pointer to element i of a float32 or bfloat16 array. */
static inline const void *at(const void *p, int64_t i, int bf16) {
  return bf16 ? (const void *)((const uint16_t *)p + i) : (const void *)((const float *)p + i);
}

/* Scores of four bfloat16 keys at once: four independent sums, so the widening of one key's
 * values and its horizontal sum overlap the others' (2.7–5.8× faster than one key at a time, 100
 * sources × 5 beams × 4 heads of 64 on the Zen 4 host; docs/RESULTS.md). float32 keys go one at a time: four at once
 * measured 20–50 % slower there (the loads of four rows compete; one row's sum was never the
 * bottleneck). */
static inline void dot4(const float *q, const void *k0, const void *k1, const void *k2, const void *k3, int64_t D,
                        int bf16, float *s) {
  float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
  for (int64_t d = 0; d < D; ++d) {
    float x = q[d];
    s0 += x * load(k0, d, bf16);
    s1 += x * load(k1, d, bf16);
    s2 += x * load(k2, d, bf16);
    s3 += x * load(k3, d, bf16);
  }
  s[0] = s0, s[1] = s1, s[2] = s2, s[3] = s3;
}

/* A growing grouped cache's key rows are read through the lineage, a jump of up to g rows from
 * position to position that the hardware's prefetcher does not follow: at 100 sources × 5 beams
 * the cache is tens of MB and each key waited on memory (about 14 GB/s here). So, while scoring
 * key t, ask for key t + PREFETCH_AHEAD and for value t (read in the weighted sum, after the
 * scores): 1.1–1.8× faster at 25–40 positions, 2 % slower at 10, on the Zen 4 host
 * (benchmarks/decode_attention_variants.py; docs/RESULTS.md). The rows of a static or plain cache
 * are read in order, and prefetching them was slower. */
#define PREFETCH_AHEAD 4
static inline void prefetch_row(const void *row, int64_t bytes) {
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch((const char *)row + b);
}

/* One hypothesis's scores over T keys, in place, into softmax's numerators e^(scale·s − max):
 * masked keys (key_ok[t] == 0) and the padding up to whole vectors at 0. Returns their sum, the
 * denominator — 0 when no key is allowed (every score is then −∞). Shared by
 * attend_step and attend_shared_keys, so both weigh the values with the same bits. */
static inline float softmax_numerators(float *scores, const uint8_t *ok, int64_t T, float scale) {
  float best = -INFINITY;
  for (int64_t t = 0; t < T; ++t) {
    float s = (ok && !ok[t]) ? -INFINITY : scores[t] * scale;
    scores[t] = s;
    best = s > best ? s : best;
  }
  if (best == -INFINITY) return 0.0f;
  /* Padded to whole vectors with −∞ (e^−∞ = 0 below): no scalar tail, which at a few dozen keys
   * cost more than the vector part. */
  int64_t padded = (T + 15) & ~(int64_t)15;
  for (int64_t t = T; t < padded; ++t) scores[t] = -INFINITY;
  float total = 0.0f;
#pragma omp simd reduction(+ : total)
  for (int64_t t = 0; t < padded; ++t) {
    float e = exp_nonpositive(scores[t] - best);
    scores[t] = e;
    total += e;
  }
  return total;
}

/* One (source, head) pair; inlined with D and bf16 constant where the caller knows them. The query
 * and the weighted sum live in local arrays (registers, at a constant D), not in out, which the
 * compiler would have to assume the value rows might alias; cache.py calls with D ≤ 1,024
 * (DECODE_KERNEL_MAX_HEAD_WIDTH), so they stay small on the stack. */
static inline void attend_step(const void *q, int64_t q_row, int64_t q_head, const void *k, const void *v,
                               int64_t kv_src, int64_t kv_head, const int64_t *lineage, int64_t lin_src,
                               int64_t lin_row, const uint8_t *key_ok, int64_t mask_src, float *out, int64_t g,
                               int64_t H, int64_t T, int64_t D, float scale, int64_t pair, const int64_t *rows,
                               int bf16) {
  int64_t i = pair / H, h = pair % H, row = rows ? rows[i] : i;
  float scores[SCORES], query[D], sum[D];
  const void *k_ih = at(k, row * kv_src + h * kv_head, bf16), *v_ih = at(v, row * kv_src + h * kv_head, bf16);
  const uint8_t *ok = key_ok ? key_ok + i * mask_src : NULL;
  for (int64_t j = 0; j < g; ++j) {
    const void *q_row_h = at(q, (i * g + j) * q_row + h * q_head, bf16);
    for (int64_t d = 0; d < D; ++d) query[d] = load(q_row_h, d, bf16);
    const int64_t *slot = lineage ? lineage + i * lin_src + j * lin_row : NULL;
#define KEY(t) at(k_ih, ((slot ? (t) * g + slot[t] : (t))) * D, bf16)
#define VALUE(t) at(v_ih, ((slot ? (t) * g + slot[t] : (t))) * D, bf16)
#define PREFETCH(t)                                                                 \
  do {                                                                              \
    if ((t) + PREFETCH_AHEAD < T) prefetch_row(KEY((t) + PREFETCH_AHEAD), row_bytes); \
    prefetch_row(VALUE(t), row_bytes);                                              \
  } while (0)
    const int64_t row_bytes = D * (bf16 ? 2 : 4);
    int64_t t = 0;
    if (slot)  /* the first keys: the loops below ask for each key PREFETCH_AHEAD positions ahead */
      for (int64_t u = 0; u < PREFETCH_AHEAD && u < T; ++u) prefetch_row(KEY(u), row_bytes);
    if (bf16)
      for (; t + 4 <= T; t += 4) {
        if (slot)
          for (int64_t u = t; u < t + 4; ++u) PREFETCH(u);
        dot4(query, KEY(t), KEY(t + 1), KEY(t + 2), KEY(t + 3), D, bf16, scores + t);
      }
    for (; t < T; ++t) {
      const void *key = KEY(t);
      if (slot) PREFETCH(t);
      float s = 0.0f;
#pragma omp simd reduction(+ : s)
      for (int64_t d = 0; d < D; ++d) s += query[d] * load(key, d, bf16);
      scores[t] = s;
    }
    float *o = out + ((i * g + j) * H + h) * D;
    float total = softmax_numerators(scores, ok, T, scale);
    if (total == 0.0f) { /* no key allowed: zeros */
      for (int64_t d = 0; d < D; ++d) o[d] = 0.0f;
      continue;
    }
    for (int64_t d = 0; d < D; ++d) sum[d] = 0.0f;
    for (t = 0; t < T; ++t) {
      float w = scores[t];
      if (w == 0.0f) continue;
      const void *v_t = VALUE(t);
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) sum[d] += w * load(v_t, d, bf16);
    }
#undef KEY
#undef VALUE
#undef PREFETCH
    float inv = 1.0f / total;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) o[d] = sum[d] * inv;
  }
}

/* Float32 heads of 64 whose hypotheses all read the same keys — a static (cross-attention) cache,
 * or plain storage (g = 1) — at most SHARED_MAX_G hypotheses a source and SHARED_MAX_KEYS keys:
 * each key and value row is read once for all g hypotheses, their dot products side by side. Every
 * score and every sum is the same loop as attend_step's, added up in the same order, so the bits
 * are attend_step's (tests/attention/test_decode_attention_kernel.py checks it). 1.3× faster at
 * 100 sources × 5 hypotheses × 18 keys on the Zen 4 host (benchmarks/decode_attention_variants.py;
 * docs/RESULTS.md); dot4's four keys at a time gained a few % more, but its sums are another
 * loop, whose rounding a compiler need not keep equal. */
#define SHARED_MAX_G 8      /* beam sizes up to 8: the hypotheses' queries and sums stay in L1 */
#define SHARED_MAX_KEYS 256 /* scores of g rows on the stack; more keys go through attend_step */
static inline void attend_shared_keys(const float *q, int64_t q_row, int64_t q_head, const float *k_ih,
                                      const float *v_ih, const uint8_t *ok, float *out, int64_t i, int64_t h,
                                      int64_t g, int64_t H, int64_t T, float scale) {
  enum { D = 64 };
  float query[SHARED_MAX_G][D], scores[SHARED_MAX_G][SHARED_MAX_KEYS + 16], sum[SHARED_MAX_G][D];
  float total[SHARED_MAX_G];
  for (int64_t j = 0; j < g; ++j)
    for (int64_t d = 0; d < D; ++d) query[j][d] = q[(i * g + j) * q_row + h * q_head + d];
  for (int64_t t = 0; t < T; ++t) {
    const float *key = k_ih + t * D;
    for (int64_t j = 0; j < g; ++j) {
      float s = 0.0f;
#pragma omp simd reduction(+ : s)
      for (int64_t d = 0; d < D; ++d) s += query[j][d] * key[d];
      scores[j][t] = s;
    }
  }
  for (int64_t j = 0; j < g; ++j) {
    total[j] = softmax_numerators(scores[j], ok, T, scale);
    for (int64_t d = 0; d < D; ++d) sum[j][d] = 0.0f;
  }
  for (int64_t t = 0; t < T; ++t) {
    const float *v_t = v_ih + t * D;
    for (int64_t j = 0; j < g; ++j) {
      float w = scores[j][t];
      if (total[j] == 0.0f || w == 0.0f) continue; /* no key allowed, or a weight of 0 */
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) sum[j][d] += w * v_t[d];
    }
  }
  for (int64_t j = 0; j < g; ++j) {
    float *o = out + ((i * g + j) * H + h) * D;
    if (total[j] == 0.0f) {
      for (int64_t d = 0; d < D; ++d) o[d] = 0.0f;
      continue;
    }
    float inv = 1.0f / total[j];
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) o[d] = sum[j][d] * inv;
  }
}

/* Store the newest position's keys and values of (source, head) ``pair`` — rows i·g … i·g + g − 1 of
 * k_new and v_new, at row and head strides new_strides[0], [1] (keys) and [2], [3] (values) — into the cache at position T − 1: slot (T − 1)·g + j of a grouped growing cache,
 * position T − 1 of a plain one (g = 1). cache.py's KVCache.append kept the room and wrote the
 * lineage; the copy is done here, by the task that reads those keys next, so a step's new keys cost
 * no strided PyTorch copy and no Python. */
static inline void store_new(void *k, void *v, int64_t kv_src, int64_t kv_head, const void *k_new,
                             const void *v_new, const int64_t *new_strides, int64_t g, int64_t H, int64_t T,
                             int64_t D, int64_t pair, const int64_t *rows, int bf16) {
  int64_t i = pair / H, h = pair % H, bytes = D * (bf16 ? 2 : 4), stored = rows ? rows[i] : i;
  for (int64_t j = 0; j < g; ++j) {
    int64_t to = stored * kv_src + h * kv_head + ((T - 1) * g + j) * D, row = i * g + j;
    memcpy((void *)at(k, to, bf16), at(k_new, row * new_strides[0] + h * new_strides[1], bf16), bytes);
    memcpy((void *)at(v, to, bf16), at(v_new, row * new_strides[2] + h * new_strides[3], bf16), bytes);
  }
}

/* The kernels: one task per (source, head) pair, split over PyTorch's OpenMP threads. The common
 * head width 64 gets its own copy of the loops, with the width a constant the compiler unrolls.
 * k_new, v_new: NULL, or the newest keys and values (n·g rows, H, D) at the row and head strides
 * new_strides holds, stored first (store_new). rows: NULL, or the buffer row of each of the n
 * sources in k and v (sources that left a grouped cache are skipped, not copied out). */
#define DECODE_ATTENTION(name, type, bf16)                                                                    \
  void name(const type *q, int64_t q_row, int64_t q_head, type *k, type *v, int64_t kv_src, int64_t kv_head,      \
            const int64_t *lineage, int64_t lin_src, int64_t lin_row, const uint8_t *key_ok, int64_t mask_src,   \
            float *out, int64_t n, int64_t g, int64_t H, int64_t T, int64_t D, float scale, const type *k_new,     \
            const type *v_new, const int64_t *new_strides, const int64_t *rows) {                                \
    int64_t work = n * g * H * T * D;                                                                            \
    _Pragma("omp parallel for schedule(static) if (work >= PARALLEL_MIN)")                                      \
    for (int64_t pair = 0; pair < n * H; ++pair) {                                                               \
      if (k_new) store_new(k, v, kv_src, kv_head, k_new, v_new, new_strides, g, H, T, D, pair, rows, bf16);     \
      if (!bf16 && !lineage && D == 64 && g <= SHARED_MAX_G && T <= SHARED_MAX_KEYS) {                         \
        int64_t i_ = pair / H, h_ = pair % H, row_ = rows ? rows[i_] : i_;                                     \
        attend_shared_keys((const float *)q, q_row, q_head, (const float *)k + row_ * kv_src + h_ * kv_head,    \
                           (const float *)v + row_ * kv_src + h_ * kv_head, key_ok ? key_ok + i_ * mask_src : NULL, \
                           out, i_, h_, g, H, T, scale);                                                        \
      } else if (D == 64)                                                                                        \
        attend_step(q, q_row, q_head, k, v, kv_src, kv_head, lineage, lin_src, lin_row, key_ok, mask_src, out, g, \
                    H, T, 64, scale, pair, rows, bf16);                                                          \
      else                                                                                                       \
        attend_step(q, q_row, q_head, k, v, kv_src, kv_head, lineage, lin_src, lin_row, key_ok, mask_src, out, g, \
                    H, T, D, scale, pair, rows, bf16);                                                           \
    }                                                                                                            \
  }

DECODE_ATTENTION(heedful_decode_attention_f32, float, 0)
DECODE_ATTENTION(heedful_decode_attention_bf16, uint16_t, 1)
