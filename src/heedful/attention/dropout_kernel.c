/* Dropout on CPU in one pass: the random draw, the keep test, ReLU's gate and the scaling fused.
 *
 * Compiled on first use by heedful/attention/cpu_kernel.py (for the host's own CPU, against the
 * OpenMP runtime PyTorch has loaded, so both share one thread pool) and called through ctypes from
 * heedful/attention/dropout.py, which holds the maths and a PyTorch path with the same keep law
 * (the same bits from the same random words; its words come from another generator).
 *
 * Random bits: element i takes the 16-bit lane i mod 4 of word w = i / 4, and word w is splitmix64's
 * output at position w + 1 from `seed` (mix(seed + (w + 1) · γ), Steele et al. 2014, the generator
 * behind Java's SplittableRandom). A word depends only on (seed, w), so a mask is the same for any
 * thread count, and the backward pass makes it again from the seed instead of storing it.
 * Keep test: the lane read as int16 ≥ threshold. Output: x · m, m = scale where kept (and, with
 * `relu`, where x's bits read as a signed integer are > 0, i.e. x > +0), else 0 — the same
 * product, rounded the same way, as PyTorch's x * mask with a mask of that dtype.
 */
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "cpu_math.h"

#define GAMMA 0x9e3779b97f4a7c15ULL
#define BLOCK 64             /* elements per block: 16 words of 4 lanes, one vector loop */
#define PARALLEL_MIN 65536   /* below this many elements, one thread (a guess, not tuned: about 15 µs of work) */

static inline uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* The 64 int16 lanes of block b: words 16b … 16b + 15, read in memory order (little-endian). */
static inline void block_lanes(uint64_t seed, int64_t b, int16_t lanes[BLOCK]) {
  uint64_t words[BLOCK / 4];
  uint64_t first = seed + (uint64_t)(b * (BLOCK / 4) + 1) * GAMMA;
  for (int j = 0; j < BLOCK / 4; ++j) words[j] = mix(first + (uint64_t)j * GAMMA);
  memcpy(lanes, words, sizeof words);
}

/* float32 -> bfloat16 (the way back is cpu_math.h's bf16_to_f32): rounding to nearest even, NaN
 * kept quiet. */
static inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return (uint16_t)(((u & 0x7fffffffu) > 0x7f800000u) ? ((u >> 16) | 0x40u) : rounded);
}

/* One element of each dtype: y = x · (keep ? scale : 0), ReLU's gate (when `gate`) read from x's bits. */
#define BF16_STEP(x, y, lane, gate)                                                    \
  do {                                                                                 \
    int keep_ = (lane) >= threshold && (!(gate) || (int16_t)(x) > 0);                  \
    (y) = f32_to_bf16(bf16_to_f32(x) * (keep_ ? scale : 0.0f));                        \
  } while (0)
#define F32_STEP(x, y, lane, gate)                                                     \
  do {                                                                                 \
    int32_t bits_;                                                                     \
    memcpy(&bits_, &(x), 4);                                                           \
    int keep_ = (lane) >= threshold && (!(gate) || bits_ > 0);                         \
    (y) = (x) * (keep_ ? scale : 0.0f);                                                \
  } while (0)

/* Blocks [b0, b1) of n elements. A full block takes one of two loops with `gate` a constant, so
 * that each compiles to one branch-free vector loop; the last, partial block goes element-wise. */
#define DROPOUT_BLOCKS(NAME, T, STEP)                                                  \
  static void NAME(const T* x, T* y, int64_t n, int64_t b0, int64_t b1, uint64_t seed,  \
                   int16_t threshold, float scale, int relu) {                          \
    int16_t lanes[BLOCK];                                                              \
    for (int64_t b = b0; b < b1; ++b) {                                                \
      block_lanes(seed, b, lanes);                                                     \
      const T* xb = x + b * BLOCK;                                                     \
      T* yb = y + b * BLOCK;                                                           \
      int64_t m = n - b * BLOCK < BLOCK ? n - b * BLOCK : BLOCK;                       \
      if (m == BLOCK && relu) {                                                        \
        for (int k = 0; k < BLOCK; ++k) STEP(xb[k], yb[k], lanes[k], 1);               \
      } else if (m == BLOCK) {                                                         \
        for (int k = 0; k < BLOCK; ++k) STEP(xb[k], yb[k], lanes[k], 0);               \
      } else {                                                                         \
        for (int64_t k = 0; k < m; ++k) STEP(xb[k], yb[k], lanes[k], relu);            \
      }                                                                                \
    }                                                                                  \
  }
DROPOUT_BLOCKS(bf16_blocks, uint16_t, BF16_STEP)
DROPOUT_BLOCKS(f32_blocks, float, F32_STEP)

/* Split the blocks evenly over the threads: thread t of nt takes a contiguous run. */
#define SPLIT(blocks, CALL)                                                            \
  _Pragma("omp parallel num_threads(threads) if (n >= PARALLEL_MIN)") {                \
    int64_t nt_ = omp_get_num_threads(), t_ = omp_get_thread_num();                    \
    int64_t per_ = ((blocks) + nt_ - 1) / nt_, b0 = t_ * per_;                         \
    int64_t b1 = b0 + per_ < (blocks) ? b0 + per_ : (blocks);                          \
    if (b0 < b1) CALL;                                                                 \
  }

void heedful_dropout_bf16(const uint16_t* x, uint16_t* y, int64_t n, uint64_t seed, int32_t threshold,
                          float scale, int32_t relu, int32_t threads) {
  int64_t blocks = (n + BLOCK - 1) / BLOCK;
  SPLIT(blocks, bf16_blocks(x, y, n, b0, b1, seed, (int16_t)threshold, scale, relu))
}

void heedful_dropout_f32(const float* x, float* y, int64_t n, uint64_t seed, int32_t threshold, float scale,
                         int32_t relu, int32_t threads) {
  int64_t blocks = (n + BLOCK - 1) / BLOCK;
  SPLIT(blocks, f32_blocks(x, y, n, b0, b1, seed, (int16_t)threshold, scale, relu))
}

/* ReLU-dropout's backward: dx = g · (y > +0 ? scale : 0). y = x · m is > +0 exactly where x > +0
 * and the element was kept, so the saved output holds the whole mask and no draw is made. */
void heedful_gate_bf16(const uint16_t* g, const uint16_t* y, uint16_t* dx, int64_t n, float scale,
                       int32_t threads) {
  int64_t blocks = (n + BLOCK - 1) / BLOCK;
  SPLIT(blocks, {
    int64_t end = b1 * BLOCK < n ? b1 * BLOCK : n;
    for (int64_t i = b0 * BLOCK; i < end; ++i)
      dx[i] = f32_to_bf16(bf16_to_f32(g[i]) * ((int16_t)y[i] > 0 ? scale : 0.0f));
  })
}

void heedful_gate_f32(const float* g, const float* y, float* dx, int64_t n, float scale, int32_t threads) {
  int64_t blocks = (n + BLOCK - 1) / BLOCK;
  SPLIT(blocks, {
    int64_t end = b1 * BLOCK < n ? b1 * BLOCK : n;
    for (int64_t i = b0 * BLOCK; i < end; ++i) {
      int32_t bits;
      memcpy(&bits, &y[i], 4);
      dx[i] = g[i] * (bits > 0 ? scale : 0.0f);
    }
  })
}
