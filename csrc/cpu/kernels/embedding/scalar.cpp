// Embedding gathers at the scalar level: plain loops over a row, which the compiler vectorizes at
// the baseline ISA. Each value is one float32 product (int8) or one subtraction then one product
// (int4, through a 16-entry table per group), the reference's arithmetic, so the results are
// bit-identical to it.
#include "../kernel_macros.h"
#include "kernel.h"

namespace compressops::cpu::kernels {
namespace {

int64_t row_of(const EmbeddingParams& p, int64_t t) { return p.idx64 ? p.idx64[t] : p.idx32[t]; }

}  // namespace

bool COMPRESSOPS_KERNEL(int8_embedding_rows)(const EmbeddingParams& p, int64_t begin, int64_t end) {
  for (int64_t t = begin; t < end; ++t) {
    const int64_t r = row_of(p, t);
    const int8_t* w = p.w8 + r * p.d;
    const float s = p.scale[r];
    float* out = p.out + t * p.d;
    for (int64_t i = 0; i < p.d; ++i) out[i] = static_cast<float>(w[i]) * s;
  }
  return true;
}

bool COMPRESSOPS_KERNEL(int8_embedding_packed_rows)(const EmbeddingParams& p, int64_t begin, int64_t end) {
  constexpr int64_t kNR = 16, kKR = 4;  // csrc/common/int8_layout.h's blocking
  for (int64_t t = begin; t < end; ++t) {
    const int64_t r = row_of(p, t);
    // Row r's 4 consecutive values of each k block sit 64 bytes apart.
    const int8_t* w = p.w8 + (r / kNR) * (p.k_pad * kNR) + (r % kNR) * kKR;
    const float s = p.scale[r];
    float* out = p.out + t * p.d;
    for (int64_t k0 = 0; k0 < p.d; k0 += kKR) {
      const int8_t* src = w + (k0 / kKR) * (kNR * kKR);
      const int64_t n = p.d - k0 < kKR ? p.d - k0 : kKR;
      for (int64_t j = 0; j < n; ++j) out[k0 + j] = static_cast<float>(src[j]) * s;
    }
  }
  return true;
}

bool COMPRESSOPS_KERNEL(int4_embedding_rows)(const EmbeddingParams& p, int64_t begin, int64_t end) {
  const int64_t half = p.groups * p.group_size / 2;
  for (int64_t t = begin; t < end; ++t) {
    const int64_t r = row_of(p, t);
    const uint8_t* q = p.q4 + r * half;
    const float* s = p.scale + r * p.groups;
    float* out = p.out + t * p.d;
    for (int64_t g = 0; g < p.groups; ++g) {
      const float z = p.zeros ? static_cast<float>(p.zeros[r * p.groups + g]) : 8.0f;
      const float sg = s[g];
      const int64_t d0 = g * p.group_size;
      const int64_t n = (p.d - d0 < p.group_size ? p.d - d0 : p.group_size);  // the last group may be cut
      const uint8_t* qg = q + d0 / 2;
      // The group's 16 possible values, each computed as the reference does: a row of group_size
      // values then costs two table reads a byte instead of two float operations a value.
      float lut[16];
      for (int c = 0; c < 16; ++c) lut[c] = (static_cast<float>(c) - z) * sg;
      int64_t i = 0;
      for (; i + 1 < n; i += 2) {
        const uint8_t b = qg[i / 2];
        out[d0 + i] = lut[b & 15];
        out[d0 + i + 1] = lut[b >> 4];
      }
      if (i < n) out[d0 + i] = lut[qg[i / 2] & 15];
    }
  }
  return true;
}

}  // namespace compressops::cpu::kernels
