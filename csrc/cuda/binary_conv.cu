// Compiled with nvcc in CI; never run here (no GPU was available to the session that wrote it).
//
// CUDA kernels of the binary (XNOR-popcount) family: the same ops, layout and bit-exact results as
// the CPU kernels (csrc/cpu/binary_conv.cpp). Straightforward versions: one thread per packed word
// (pack) and one thread per output value (conv/linear, output channel fastest), __popcll over the
// XOR of the valid taps; binary_conv2d_packed ballots each warp's signs into packed words. The
// float epilogue uses __fmul_rn/__fadd_rn (never contracted to an FMA), so results equal
// compressops.reference bit for bit. The argument checks and the weight pack are the CPU host's
// (../cpu/binary_pack.h); reading a pack's header copies its 64 bytes to the host, once per call.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "../cpu/binary_pack.h"

namespace compressops::cuda {
namespace {

using binary_host::words_for;

__global__ void pack_rows_kernel(const float* __restrict__ x, int64_t rows, int64_t c, int64_t cw,
                                 unsigned long long* __restrict__ out) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= rows * cw) return;
  const int64_t r = t / cw, wi = t % cw;
  const float* xr = x + r * c + wi * 64;
  const int64_t nbits = min(static_cast<int64_t>(64), c - wi * 64);
  unsigned long long word = 0;
  for (int64_t j = 0; j < nbits; ++j) {
    if (xr[j] >= 0.0f) word |= 1ull << j;
  }
  out[t] = word;
}

struct ConvArgs {
  const unsigned long long* x;
  const unsigned long long* w;
  const float* alpha;
  const float* bias;
  float* out;
  int64_t n, h, w_in, c, cw, oc, kh, kw, sh, sw, ph, pw, oh, ow;
  bool has_min, has_max;
  float cmin, cmax;
};

// alpha[o] * (valid bits - 2 * popcount over the valid taps) + bias[o] at output (n, oh, ow), unclamped.
__device__ float conv_value(const ConvArgs& a, int64_t n, int64_t oh, int64_t ow, int64_t o) {
  int64_t pc = 0, valid = 0;
  for (int64_t ki = 0; ki < a.kh; ++ki) {
    const int64_t ih = oh * a.sh - a.ph + ki;
    if (ih < 0 || ih >= a.h) continue;
    for (int64_t kj = 0; kj < a.kw; ++kj) {
      const int64_t iw = ow * a.sw - a.pw + kj;
      if (iw < 0 || iw >= a.w_in) continue;
      ++valid;
      const unsigned long long* xr = a.x + ((n * a.h + ih) * a.w_in + iw) * a.cw;
      const unsigned long long* wr = a.w + ((o * a.kh + ki) * a.kw + kj) * a.cw;
      for (int64_t i = 0; i < a.cw; ++i) pc += __popcll(xr[i] ^ wr[i]);
    }
  }
  float v = __fmul_rn(a.alpha[o], static_cast<float>(a.c * valid - 2 * pc));
  if (a.bias) v = __fadd_rn(v, a.bias[o]);
  return v;
}

// One thread per output value, output channel fastest (rows of `ocp` threads per pixel).
struct OutIndex {
  int64_t n, oh, ow, o;
};

__device__ OutIndex out_index(const ConvArgs& a, int64_t t, int64_t ocp) {
  OutIndex r;
  r.o = t % ocp;
  int64_t pix = t / ocp;
  r.ow = pix % a.ow;
  pix /= a.ow;
  r.oh = pix % a.oh;
  r.n = pix / a.oh;
  return r;
}

__global__ void conv_kernel(ConvArgs a) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= a.n * a.oh * a.ow * a.oc) return;
  const OutIndex i = out_index(a, t, a.oc);
  float v = conv_value(a, i.n, i.oh, i.ow, i.o);
  if (a.has_min) v = fmaxf(v, a.cmin);
  if (a.has_max) v = fminf(v, a.cmax);
  a.out[t] = v;
}

// binary_conv2d_packed: one thread per (pixel, output channel padded to a multiple of 64), so each
// warp holds 32 consecutive channels of one pixel and a ballot turns their signs into half a word.
// The padded total is a multiple of 64, so a warp is either wholly inside it or wholly past it and
// the full-mask ballot is safe after the early return.
__global__ void conv_packed_kernel(ConvArgs a, int64_t ocw, unsigned* __restrict__ out_half_words) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t ocp = ocw * 64;
  if (t >= a.n * a.oh * a.ow * ocp) return;
  const OutIndex i = out_index(a, t, ocp);
  const bool bit = i.o < a.oc && conv_value(a, i.n, i.oh, i.ow, i.o) >= 0.0f;
  // Little-endian: bits 0-31 of an int64 word are its first 32-bit half.
  const unsigned half = __ballot_sync(0xffffffffu, bit);
  if ((threadIdx.x & 31) == 0) out_half_words[t / 32] = half;
}

void launch_conv(ConvArgs a) {
  const int64_t total = a.n * a.oh * a.ow * a.oc;
  if (total == 0) return;
  const int threads = 256;
  const int64_t blocks = (total + threads - 1) / threads;
  conv_kernel<<<static_cast<unsigned>(blocks), threads, 0, c10::cuda::getCurrentCUDAStream()>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor pack_rows(const at::Tensor& x2, int64_t c, std::vector<int64_t> shape) {
  at::Tensor out = at::empty(shape, x2.options().dtype(at::kLong));
  const int64_t rows = x2.size(0), cw = words_for(c);
  if (rows * cw == 0) return out;
  const int threads = 256;
  const int64_t blocks = (rows * cw + threads - 1) / threads;
  pack_rows_kernel<<<static_cast<unsigned>(blocks), threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      x2.data_ptr<float>(), rows, c, cw, reinterpret_cast<unsigned long long*>(out.data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor binary_pack_activation_cuda(const at::Tensor& x) {
  constexpr const char* op = "binary_pack_activation";
  cpu::check_float_input(x, op, /*any_device=*/true);
  const c10::cuda::CUDAGuard guard(x.device());
  if (x.dim() == 4) {
    const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
    TORCH_CHECK_VALUE(c >= 1, op, ": x must have at least one channel, got shape ", cpu::py_shape(x.sizes()));
    const at::Tensor x2 = x.to(at::kFloat).permute({0, 2, 3, 1}).reshape({n * h * w, c}).contiguous();
    return pack_rows(x2, c, {n, h, w, words_for(c)});
  }
  const int64_t c = x.size(-1);
  TORCH_CHECK_VALUE(c >= 1, op, ": x must have a non-empty last dimension, got shape ",
                    cpu::py_shape(x.sizes()));
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = words_for(c);
  return pack_rows(x.to(at::kFloat).reshape({-1, c}).contiguous(), c, shape);
}

at::Tensor binary_pack_weight_cuda(const at::Tensor& weight_bits, int64_t in_channels) {
  const c10::cuda::CUDAGuard guard(weight_bits.device());
  return binary_host::pack_weight(weight_bits, in_channels);
}

// The argument checks of binary_pack.h (the messages of formats/binary.py), then every ConvArgs
// field but out and the clamp. Reading the pack's header copies its 64 bytes to the host. The
// returned tensors keep what the args point into alive.
struct CheckedConv {
  ConvArgs a{};
  binary_host::BinaryPack pack;
  binary_host::Operands operands;
  at::Tensor xc;
};

CheckedConv checked_conv(const at::Tensor& x_packed, const at::Tensor& w_packed, const at::Tensor& alpha,
                         const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                         const char* op) {
  TORCH_CHECK_VALUE(x_packed.is_cuda(), op, ": x_packed must be a CUDA tensor here, got ", x_packed.device());
  const c10::cuda::CUDAGuard guard(x_packed.device());
  CheckedConv r;
  r.pack = binary_host::read_pack(w_packed, op, true);
  r.operands = binary_host::check_operands(x_packed, r.pack, alpha, bias, true, op);
  binary_host::check_conv_geometry(x_packed, r.pack, stride, padding, op);
  const binary_host::BinaryPack& w = r.pack;
  r.xc = x_packed.contiguous();
  ConvArgs& a = r.a;
  a.x = reinterpret_cast<const unsigned long long*>(r.xc.data_ptr<int64_t>());
  a.w = reinterpret_cast<const unsigned long long*>(w.words);
  a.alpha = r.operands.alpha.data_ptr<float>();
  a.bias = r.operands.bias.defined() ? r.operands.bias.data_ptr<float>() : nullptr;
  a.n = x_packed.size(0); a.h = x_packed.size(1); a.w_in = x_packed.size(2); a.c = w.c; a.cw = w.cw; a.oc = w.n;
  a.kh = w.kh; a.kw = w.kw; a.sh = stride[0]; a.sw = stride[1];
  a.ph = padding[0]; a.pw = padding[1];
  a.oh = (a.h + 2 * a.ph - a.kh) / a.sh + 1;
  a.ow = (a.w_in + 2 * a.pw - a.kw) / a.sw + 1;
  return r;
}

void set_clamp(ConvArgs& a, std::optional<double> clamp_min, std::optional<double> clamp_max) {
  a.has_min = clamp_min.has_value(); a.has_max = clamp_max.has_value();
  a.cmin = static_cast<float>(clamp_min.value_or(0.0)); a.cmax = static_cast<float>(clamp_max.value_or(0.0));
}

at::Tensor binary_conv2d_cuda(const at::Tensor& x_packed, const at::Tensor& w_packed, const at::Tensor& alpha,
                              const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                              std::optional<double> clamp_min, std::optional<double> clamp_max) {
  CheckedConv c = checked_conv(x_packed, w_packed, alpha, bias, stride, padding, "binary_conv2d");
  const c10::cuda::CUDAGuard guard(x_packed.device());  // after the checks: x_packed is a CUDA tensor
  ConvArgs& a = c.a;
  at::Tensor out = at::empty({a.n, a.oc, a.oh, a.ow},
                             x_packed.options().dtype(at::kFloat).memory_format(at::MemoryFormat::ChannelsLast));
  a.out = out.data_ptr<float>();
  set_clamp(a, clamp_min, clamp_max);
  launch_conv(a);
  return out;
}

at::Tensor binary_conv2d_packed_cuda(const at::Tensor& x_packed, const at::Tensor& w_packed, const at::Tensor& alpha,
                                     const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                     at::IntArrayRef padding) {
  CheckedConv c = checked_conv(x_packed, w_packed, alpha, bias, stride, padding, "binary_conv2d_packed");
  const c10::cuda::CUDAGuard guard(x_packed.device());  // after the checks: x_packed is a CUDA tensor
  const ConvArgs& a = c.a;
  const int64_t ocw = words_for(a.oc);
  at::Tensor out = at::empty({a.n, a.oh, a.ow, ocw}, x_packed.options());
  const int64_t total = a.n * a.oh * a.ow * ocw * 64;
  if (total == 0) return out;
  const int threads = 256;
  const int64_t blocks = (total + threads - 1) / threads;
  conv_packed_kernel<<<static_cast<unsigned>(blocks), threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      a, ocw, reinterpret_cast<unsigned*>(out.data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor binary_linear_cuda(const at::Tensor& x_packed, const at::Tensor& w_packed, const at::Tensor& alpha,
                              const std::optional<at::Tensor>& bias, std::optional<at::ScalarType> out_dtype,
                              std::optional<double> clamp_min, std::optional<double> clamp_max) {
  constexpr const char* op = "binary_linear";
  TORCH_CHECK_VALUE(x_packed.is_cuda(), op, ": x_packed must be a CUDA tensor here, got ", x_packed.device());
  const c10::cuda::CUDAGuard guard(x_packed.device());
  const binary_host::BinaryPack w = binary_host::read_pack(w_packed, op, false);
  const binary_host::Operands operands = binary_host::check_operands(x_packed, w, alpha, bias, false, op);
  const at::ScalarType out_t = binary_host::out_dtype_of(out_dtype, op);
  std::vector<int64_t> shape = x_packed.sizes().vec();
  shape.back() = w.n;
  at::Tensor out = at::empty(shape, x_packed.options().dtype(at::kFloat));
  const at::Tensor xc = x_packed.reshape({-1, w.cw}).contiguous();
  ConvArgs a{};
  a.x = reinterpret_cast<const unsigned long long*>(xc.data_ptr<int64_t>());
  a.w = reinterpret_cast<const unsigned long long*>(w.words);
  a.alpha = operands.alpha.data_ptr<float>();
  a.bias = operands.bias.defined() ? operands.bias.data_ptr<float>() : nullptr;
  a.out = out.data_ptr<float>();
  a.n = xc.size(0); a.h = a.w_in = a.kh = a.kw = a.sh = a.sw = a.oh = a.ow = 1; a.ph = a.pw = 0;
  a.c = w.c; a.cw = w.cw; a.oc = w.n;
  set_clamp(a, clamp_min, clamp_max);
  launch_conv(a);
  return out_t == at::kFloat ? out : out.to(out_t);
}

}  // namespace
}  // namespace compressops::cuda

TORCH_LIBRARY_IMPL(compressops, CUDA, m) {
  m.impl("binary_pack_activation", &compressops::cuda::binary_pack_activation_cuda);
  m.impl("binary_pack_weight", &compressops::cuda::binary_pack_weight_cuda);
  m.impl("binary_conv2d", &compressops::cuda::binary_conv2d_cuda);
  m.impl("binary_conv2d_packed", &compressops::cuda::binary_conv2d_packed_cuda);
  m.impl("binary_linear", &compressops::cuda::binary_linear_cuda);
}
