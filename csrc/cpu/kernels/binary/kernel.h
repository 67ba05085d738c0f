// Torch-free binary (XNOR-popcount) kernels: the params and the declarations of every per-ISA copy.
// The definitions are this directory's level files (<level>.cpp, for the levels that have
// kernels), with what several levels share in common.h; compressops/formats/binary.py documents
// the bit layout.
//
// Bit layout: channel c of a pixel (or of a weight tap) is bit (c % 64) of 64-bit word c / 64,
// least significant bit first; bit 1 means +1 (x >= 0, so sign(0) = +1), bit 0 means -1. Bits of
// channels >= C in the last word (channel padding) are 0 in both activations and weights, so their
// XOR is 0 and they never count as mismatches.
#pragma once
#include "../../dispatch.h"
#include <cstdint>

namespace compressops::cpu::kernels {

// Sign-and-pack rows of fp32 values: row r (c values at x + r * ldx) -> cw words at out + r * cw.
struct BinaryPackParams {
  const float* x;
  int64_t ldx;
  int64_t c;
  uint64_t* out;
  int64_t cw;
};

// Sign-and-pack an NCHW image without transposing it first: x points at channel 0 of one image
// (planes of hw values, channel stride ldc); pixels [begin, end) of out ([hw, cw] words) are written.
struct BinaryPackPlanesParams {
  const float* x;
  int64_t ldc;  // stride between channel planes
  int64_t hw;
  int64_t c;
  uint64_t* out;
  int64_t cw;
};

// out[n, oh, ow, o] (channels-last, row stride oc) =
//   alpha[o] * float(c * valid_taps - 2 * popcount(x XOR w over the valid taps)) + bias[o],
// then clamped to [cmin, cmax] when has_min / has_max. Taps that fall in the zero spatial padding
// are skipped (they contribute 0, exactly as conv2d(sign(x), sign(w)) with zero padding).
// With out_bits set, nothing is written to out: the sign bits of those same float values (v >= 0 ->
// 1) are packed channels-last into out_bits [n, oh, ow, ocw] instead, ready for the next binary
// layer; oc_begin must then be a multiple of 64 (each 64-channel chunk fills one word).
struct BinaryConvParams {
  const uint64_t* x;  // [n, h, w, cw]
  const uint64_t* w;  // [oc, kh, kw, cw]
  const float* alpha;  // [oc]
  const float* bias;   // [oc] or nullptr
  float* out;          // [n, oh, ow, oc]
  uint64_t* out_bits;  // [n, oh, ow, ocw] or nullptr
  int64_t ocw;         // ceil(oc / 64) when out_bits is set
  int64_t n, h, w_in, c, cw, oc, kh, kw, sh, sw, ph, pw, oh, ow;
  int64_t oc_begin, oc_end;  // the output channels this call computes
  bool has_min, has_max;
  float cmin, cmax;
};

// binary_xor_popcount_peak runs the conv kernel's inner loop (one activation vector against kOCB
// weight vectors: XOR, popcount, accumulate) over L1-resident buffers `iters` times, with no tap
// bookkeeping and no epilogue: the measured ceiling that benchmarks compare the conv against.
// Returns the popcount total (so the work cannot be optimized away); each iteration covers
// binary_xor_popcount_peak_bits() bit-products.
constexpr int64_t kBinaryPeakWords = 256;  // 2 KiB of activations, 8 x 2 KiB of weights
constexpr int64_t kBinaryPeakChannels = 8;
constexpr int64_t binary_xor_popcount_peak_bits() { return kBinaryPeakWords * 64 * kBinaryPeakChannels; }

// Pack kernels handle rows [begin, end); conv kernels handle output rows [begin, end) of the
// flattened (n, oh) index. Both return false to decline (the host retries one level lower).
using BinaryPackRowsFn = bool(const BinaryPackParams&, int64_t begin, int64_t end);
COMPRESSOPS_DECLARE_KERNEL(binary_pack_rows, BinaryPackRowsFn)
using BinaryPackPlanesFn = bool(const BinaryPackPlanesParams&, int64_t begin, int64_t end);
COMPRESSOPS_DECLARE_KERNEL(binary_pack_planes, BinaryPackPlanesFn)
using BinaryConvRowsFn = bool(const BinaryConvParams&, int64_t begin, int64_t end);
COMPRESSOPS_DECLARE_KERNEL(binary_conv_rows, BinaryConvRowsFn)
using BinaryXorPopcountPeakFn = uint64_t(int64_t iters, uint64_t seed);
COMPRESSOPS_DECLARE_KERNEL(binary_xor_popcount_peak, BinaryXorPopcountPeakFn)

}  // namespace compressops::cpu::kernels
