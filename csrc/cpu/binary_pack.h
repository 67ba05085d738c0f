// The binary family's weight pack and argument checks on the host, shared by the CPU
// (binary_conv.cpp) and CUDA (../cuda/binary_conv.cu) files. The messages are those of
// compressops/formats/binary.py, word for word (tests compare them), so dtypes and shapes print
// the way Python prints them.
//
// Pack layout (compressops/formats/binary.py): the shared 64-byte header (tag "binary", version 1,
// N = OC, K = C, fields (KH, KW, CW)), then the canonical weight_bits words [OC, KH, KW, CW]; a
// contiguous uint8 tensor (OC, KH, KW, R) for a conv, (OC, R) for a linear layer.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "pack_tensor.h"

namespace compressops::binary_host {

constexpr const char* kTag = "binary";
constexpr uint32_t kVersion = 1;
constexpr const char* kPackOp = "binary_pack_weight";
// A header may describe at most this many bytes (formats/binary.py MAX_PACK_BYTES): below it the
// size arithmetic cannot overflow int64.
constexpr int64_t kMaxPackBytes = int64_t{1} << 62;

inline int64_t words_for(int64_t c) { return (c + 63) / 64; }

inline std::vector<int64_t> pack_rows(int64_t n, int64_t kh, int64_t kw, bool conv) {
  return conv ? std::vector<int64_t>{n, kh, kw} : std::vector<int64_t>{n};
}

inline int64_t pack_bytes(int64_t n, int64_t kh, int64_t kw, int64_t cw) {
  return kPackHeaderBytes + 8 * n * kh * kw * cw;
}

// A checked pack: OC, C, the kernel, CW words per tap, and the words (kept alive by `storage`).
struct BinaryPack {
  int64_t n, c, kh, kw, cw;
  at::Tensor storage;
  const uint64_t* words;
};

// Reads a conv pack (4-D) or a linear pack (2-D) and checks every header field and the size against
// what K and the pack's dims imply (formats/binary.py read_header), so the kernels may read
// 8 * OC * KH * KW * CW bytes after the header.
inline BinaryPack read_pack(const at::Tensor& packed, const char* op, bool conv) {
  const PackReader r{op, "w_packed", kPackOp};
  // The binary ops run on CPU and CUDA, so the pack may live on either (its device is checked with x's).
  const PackHeader h = cpu::read_pack_tensor(packed, kTag, kVersion, r, conv ? 4 : 2, /*any_device=*/true);
  const int64_t kh = conv ? packed.size(1) : 1, kw = conv ? packed.size(2) : 1, cw = words_for(h.k);
  const std::array<int64_t, 3> fields{kh, kw, cw};
  int64_t words = 0;
  const bool too_big = h.fields == fields &&
                       (__builtin_mul_overflow(h.n, kh, &words) || __builtin_mul_overflow(words, kw, &words) ||
                        __builtin_mul_overflow(words, cw, &words) || words > (kMaxPackBytes - kPackHeaderBytes) / 8);
  TORCH_CHECK_VALUE(!too_big, op, ": w_packed's header (N=", h.n, ", K=", h.k, ", kernel ", kh, "x", kw,
                    ") describes a pack of more than 2^62 bytes; repack it with compressops.ops.", kPackOp);
  // With other fields the size is never used: check_pack_layout reports the fields first.
  const int64_t bytes = h.fields == fields ? kPackHeaderBytes + 8 * words : 0;
  cpu::check_pack_tensor_layout(packed, h, fields, pack_rows(h.n, kh, kw, conv), bytes, r);
  BinaryPack p{h.n, h.k, kh, kw, cw, packed, nullptr};
  // A pack viewed at an odd storage offset is copied, so the words are 8-byte aligned.
  if (reinterpret_cast<uintptr_t>(packed.data_ptr()) % alignof(uint64_t) != 0) p.storage = packed.clone();
  p.words = reinterpret_cast<const uint64_t*>(static_cast<const uint8_t*>(p.storage.data_ptr()) + kPackHeaderBytes);
  return p;
}

// The channel padding bits of `bits` (int64 [..., CW]: those of channels >= c in the last word of each
// row) must be 0, since the kernels XOR and count whole words (formats/binary.py check_pad_bits). Reads
// the last words only: a plain loop over a contiguous CPU tensor (per compute call, so no tensor ops),
// else tensor ops on whatever device `bits` is (on CUDA that waits for the device).
inline void check_pad_bits(const at::Tensor& bits, int64_t c, const char* name, const char* op) {
  const int shift = static_cast<int>(c % 64);
  if (shift == 0 || bits.numel() == 0) return;
  const int64_t cw = bits.size(-1);
  bool dirty = false;
  if (bits.is_cpu() && bits.is_contiguous()) {
    const auto* words = reinterpret_cast<const uint64_t*>(bits.const_data_ptr<int64_t>());
    const int64_t rows = bits.numel() / cw;
    uint64_t any = 0;
    for (int64_t r = 0; r < rows; ++r) any |= words[r * cw + cw - 1];
    dirty = (any >> shift) != 0;
  } else {
    // Arithmetic shift: a set top bit leaves a negative word, still nonzero.
    dirty = at::bitwise_right_shift(bits.select(-1, cw - 1), shift).ne(0).any().item<bool>();
  }
  TORCH_CHECK_VALUE(!dirty, op, ": ", name, " has bits set past in_channels=", c,
                    " in its last word; the channel padding bits must be 0");
}

// A pack's weight words as int64 [OC * KH * KW, CW], on the pack's device (a view, no copy).
inline at::Tensor weight_words(const BinaryPack& p) {
  return at::from_blob(const_cast<uint64_t*>(p.words), {p.n * p.kh * p.kw, p.cw},
                       p.storage.options().dtype(at::kLong));
}

// binary_pack_weight's checks (formats/binary.py check_pack_weight); the pad-bit check reads the
// last word of every tap, on whatever device weight_bits is.
inline void check_pack_weight(const at::Tensor& wb, int64_t c, const char* op) {
  TORCH_CHECK_VALUE(c >= 1 && c < kPackMaxDim, op, ": in_channels must be in [1, 2^31), got ", c);
  const int64_t cw = words_for(c);
  const bool layout = wb.scalar_type() == at::kLong && (wb.dim() == 2 || wb.dim() == 4) && wb.size(-1) == cw;
  TORCH_CHECK_VALUE(layout, op, ": weight_bits must be int64 [OC, KH, KW, ", cw, "] (conv) or [OUT, ", cw,
                    "] (linear) for in_channels=", c, ", got ", cpu::py_dtype(wb.scalar_type()), " ",
                    cpu::py_shape(wb.sizes()));
  for (int64_t d = 0; d + 1 < wb.dim(); ++d) {
    TORCH_CHECK_VALUE(wb.size(d) >= 1, op, ": weight_bits needs OC, KH, KW >= 1, got ", cpu::py_shape(wb.sizes()));
  }
  TORCH_CHECK_VALUE(wb.size(0) < kPackMaxDim, op, ": weight_bits needs OC < 2^31, got ", cpu::py_shape(wb.sizes()));
  check_pad_bits(wb, c, "weight_bits", op);
}

// binary_pack_weight on any device: the header is written on the host and the pack moved whole.
inline at::Tensor pack_weight(const at::Tensor& wb, int64_t c) {
  check_pack_weight(wb, c, kPackOp);
  const bool conv = wb.dim() == 4;
  const int64_t n = wb.size(0), kh = conv ? wb.size(1) : 1, kw = conv ? wb.size(2) : 1, cw = wb.size(-1);
  const int64_t bytes = pack_bytes(n, kh, kw, cw);
  at::Tensor packed = cpu::new_pack_tensor(make_pack_header(kTag, kVersion, n, c, {kh, kw, cw}),
                                           pack_rows(n, kh, kw, conv), bytes, wb.options().device(at::kCPU));
  packed = packed.to(wb.device());
  packed.view(-1).narrow(0, kPackHeaderBytes, bytes - kPackHeaderBytes).view(at::kLong).view(wb.sizes()).copy_(wb);
  return packed;
}

inline void check_device(const at::Tensor& t, const char* name, const at::Device& device, const char* op) {
  TORCH_CHECK_VALUE(t.device() == device, op, ": ", name, " must be on ", device, " (where x_packed is), got ",
                    t.device());
}

// x_packed (after the pack, whose K gives its word count), alpha and bias, then the pad bits of
// w_packed and x_packed, in the order of formats/binary.py _read_operands. Returns alpha and bias as
// contiguous float32.
struct Operands {
  at::Tensor alpha;
  at::Tensor bias;  // undefined when there is none
};

inline Operands check_operands(const at::Tensor& x, const BinaryPack& p, const at::Tensor& alpha,
                               const std::optional<at::Tensor>& bias, bool conv, const char* op) {
  const bool x_ok = x.scalar_type() == at::kLong && (conv ? x.dim() == 4 : x.dim() >= 1) && x.size(-1) == p.cw;
  TORCH_CHECK_VALUE(x_ok, op, ": x_packed must be int64 ", conv ? "[N, H, W, " : "[..., ", p.cw,
                    "] (ceil(C/64) words for w_packed's C=", p.c, ") from compressops.ops.binary_pack_activation, got ",
                    cpu::py_dtype(x.scalar_type()), " ", cpu::py_shape(x.sizes()));
  TORCH_CHECK_VALUE(alpha.scalar_type() == at::kFloat && alpha.dim() == 1 && alpha.size(0) == p.n, op,
                    ": alpha must be float32 of shape [", p.n, "], got ", cpu::py_dtype(alpha.scalar_type()), " ",
                    cpu::py_shape(alpha.sizes()));
  Operands out{alpha.contiguous(), at::Tensor()};
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(at::isFloatingType(bias->scalar_type()) && bias->dim() == 1 && bias->size(0) == p.n, op,
                      ": bias must be a float tensor of shape [", p.n, "], got ",
                      cpu::py_dtype(bias->scalar_type()), " ", cpu::py_shape(bias->sizes()));
    out.bias = bias->to(at::kFloat).contiguous();
  }
  const at::Device device = x.device();
  check_device(p.storage, "w_packed", device, op);
  check_device(alpha, "alpha", device, op);
  if (out.bias.defined()) check_device(out.bias, "bias", device, op);
  check_pad_bits(weight_words(p), p.c, "w_packed", op);
  check_pad_bits(x, p.c, "x_packed", op);
  return out;
}

// stride, padding and the input size against the kernel (formats/binary.py check_conv2d).
inline void check_conv_geometry(const at::Tensor& x, const BinaryPack& p, at::IntArrayRef stride,
                                at::IntArrayRef padding, const char* op) {
  TORCH_CHECK_VALUE(stride.size() == 2 && padding.size() == 2, op,
                    ": stride and padding must have two values each, got ", stride, ", ", padding);
  TORCH_CHECK_VALUE(std::min(stride[0], stride[1]) >= 1 && std::min(padding[0], padding[1]) >= 0, op,
                    ": stride must be >= 1 and padding >= 0, got stride ", stride, ", padding ", padding);
  const int64_t h = x.size(1), w = x.size(2);
  TORCH_CHECK_VALUE(h + 2 * padding[0] >= p.kh && w + 2 * padding[1] >= p.kw, op, ": the padded input (", h, "x", w,
                    " + padding ", padding, ") is smaller than the kernel ", p.kh, "x", p.kw);
}

// binary_linear's output dtype (checks.py resolve_out_dtype, with float32 the default).
inline at::ScalarType out_dtype_of(std::optional<at::ScalarType> out_dtype, const char* op) {
  return cpu::resolve_out_dtype(out_dtype, at::kFloat, op);
}

}  // namespace compressops::binary_host
