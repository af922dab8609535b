/* Small math shared by heedful's CPU kernels (dropout_kernel.c, decode_attention.c,
 * beam_candidates.c), inlined where it is used so that the loops around it vectorize. */
#ifndef HEEDFUL_CPU_MATH_H
#define HEEDFUL_CPU_MATH_H

#include <stdint.h>
#include <string.h>

/* e^x for x ≤ 0 (a score minus its row's maximum), 0 below −87: Cephes' expf polynomial after
 * n = round(x / ln 2) is taken out, written with no branches or library calls so that the compiler
 * vectorizes a loop of them. Relative error about 2e-7 (float32 rounding of the polynomial). */
static inline float exp_nonpositive(float x) {
  const float shifter = 12582912.0f; /* 1.5 · 2^23: adding it rounds to an integer in the low bits */
  float xc = x < -87.0f ? -87.0f : x;
  float t = xc * 1.44269504088896341f + shifter;
  float nf = t - shifter;
  float r = xc - nf * 0.693359375f + nf * 2.12194440e-4f; /* x − n·ln 2, ln 2 in two parts */
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t n_bits;
  memcpy(&n_bits, &t, 4);
  int32_t scale_bits = ((n_bits - 0x4B400000) + 127) << 23; /* 2^n: n ≥ −126 after the clamp */
  float two_n;
  memcpy(&two_n, &scale_bits, 4);
  return x < -87.0f ? 0.0f : p * two_n;
}

/* bfloat16 -> float32: the top half of a float32, exactly. */
static inline float bf16_to_f32(uint16_t b) {
  uint32_t u = (uint32_t)b << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

#endif
