// Compiled with nvcc in CI; never run here (no GPU was available to the session that wrote it).
//
// CUDA kernels of the binary (XNOR-popcount) family: the same ops, layout and bit-exact results as
// the CPU kernels (csrc/cpu/binary_conv.cpp). Straightforward versions: one thread per packed word
// (pack) and one thread per output value (conv/linear, output channel fastest), __popcll over the
// XOR of the valid taps; binary_conv2d_packed ballots each warp's signs into packed words. The
// float epilogue uses __fmul_rn/__fadd_rn (never contracted to an FMA), so results equal
// compressops.reference bit for bit.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace compressops::cuda {
namespace {

int64_t words_for(int64_t c) { return (c + 63) / 64; }

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
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": x must be a float tensor, got ", x.scalar_type());
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least one dimension");
  const c10::cuda::CUDAGuard guard(x.device());
  if (x.dim() == 4) {
    const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
    TORCH_CHECK(c >= 1, op, ": x must have at least one channel, got shape ", x.sizes());
    const at::Tensor x2 = x.to(at::kFloat).permute({0, 2, 3, 1}).reshape({n * h * w, c}).contiguous();
    return pack_rows(x2, c, {n, h, w, words_for(c)});
  }
  const int64_t c = x.size(-1);
  TORCH_CHECK(c >= 1, op, ": x must have a non-empty last dimension, got shape ", x.sizes());
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = words_for(c);
  return pack_rows(x.to(at::kFloat).reshape({-1, c}).contiguous(), c, shape);
}

void check_common(const at::Tensor& xp, const at::Tensor& wp, const at::Tensor& alpha,
                  const std::optional<at::Tensor>& bias, int64_t cw, const char* op) {
  TORCH_CHECK(xp.is_cuda() && xp.scalar_type() == at::kLong && xp.size(-1) == cw, op,
              ": x_packed must be an int64 CUDA tensor with last dimension ", cw, ", got ", xp.scalar_type(), " ",
              xp.sizes());
  TORCH_CHECK(wp.device() == xp.device() && wp.scalar_type() == at::kLong && wp.size(-1) == cw, op,
              ": w_packed must be an int64 tensor on ", xp.device(), " with last dimension ", cw);
  TORCH_CHECK(alpha.device() == xp.device() && alpha.scalar_type() == at::kFloat && alpha.dim() == 1 &&
                  alpha.size(0) == wp.size(0),
              op, ": alpha must be a float32 tensor of shape [", wp.size(0), "] on ", xp.device());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->device() == xp.device() && at::isFloatingType(bias->scalar_type()) && bias->dim() == 1 &&
                    bias->size(0) == wp.size(0),
                op, ": bias must be a float tensor of shape [", wp.size(0), "] on ", xp.device());
  }
}

// Checks binary_conv2d's arguments and fills every ConvArgs field but out and the clamp. The
// returned tensors keep the contiguous copies the args point into alive.
struct CheckedConv {
  ConvArgs a{};
  at::Tensor xc, wc, ac, bc;
};

CheckedConv checked_conv(const at::Tensor& x_packed, const at::Tensor& w_packed, const at::Tensor& alpha,
                         const std::optional<at::Tensor>& bias, int64_t in_channels, at::IntArrayRef kernel_size,
                         at::IntArrayRef stride, at::IntArrayRef padding, const char* op) {
  TORCH_CHECK(in_channels >= 1, op, ": in_channels must be >= 1, got ", in_channels);
  const int64_t cw = words_for(in_channels);
  check_common(x_packed, w_packed, alpha, bias, cw, op);
  TORCH_CHECK(x_packed.dim() == 4 && w_packed.dim() == 4 && kernel_size.size() == 2 && stride.size() == 2 &&
                  padding.size() == 2 && w_packed.size(1) == kernel_size[0] && w_packed.size(2) == kernel_size[1],
              op, ": x_packed must be [N, H, W, CW] and w_packed [OC, KH, KW, CW] matching kernel_size");
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1 && padding[0] >= 0 && padding[1] >= 0, op,
              ": stride must be >= 1 and padding >= 0");
  const int64_t n = x_packed.size(0), h = x_packed.size(1), w = x_packed.size(2), oc = w_packed.size(0);
  TORCH_CHECK(h + 2 * padding[0] >= kernel_size[0] && w + 2 * padding[1] >= kernel_size[1], op,
              ": the padded input is smaller than the kernel");
  CheckedConv r;
  r.xc = x_packed.contiguous();
  r.wc = w_packed.contiguous();
  r.ac = alpha.contiguous();
  if (bias.has_value() && bias->defined()) r.bc = bias->to(at::kFloat).contiguous();
  ConvArgs& a = r.a;
  a.x = reinterpret_cast<const unsigned long long*>(r.xc.data_ptr<int64_t>());
  a.w = reinterpret_cast<const unsigned long long*>(r.wc.data_ptr<int64_t>());
  a.alpha = r.ac.data_ptr<float>();
  a.bias = r.bc.defined() ? r.bc.data_ptr<float>() : nullptr;
  a.n = n; a.h = h; a.w_in = w; a.c = in_channels; a.cw = cw; a.oc = oc;
  a.kh = kernel_size[0]; a.kw = kernel_size[1]; a.sh = stride[0]; a.sw = stride[1];
  a.ph = padding[0]; a.pw = padding[1];
  a.oh = (h + 2 * padding[0] - kernel_size[0]) / stride[0] + 1;
  a.ow = (w + 2 * padding[1] - kernel_size[1]) / stride[1] + 1;
  return r;
}

at::Tensor binary_conv2d_cuda(const at::Tensor& x_packed, const at::Tensor& w_packed, const at::Tensor& alpha,
                              const std::optional<at::Tensor>& bias, int64_t in_channels,
                              at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                              std::optional<double> clamp_min, std::optional<double> clamp_max) {
  CheckedConv c =
      checked_conv(x_packed, w_packed, alpha, bias, in_channels, kernel_size, stride, padding, "binary_conv2d");
  const c10::cuda::CUDAGuard guard(x_packed.device());  // after the checks: x_packed is a CUDA tensor
  ConvArgs& a = c.a;
  at::Tensor out = at::empty({a.n, a.oc, a.oh, a.ow},
                             x_packed.options().dtype(at::kFloat).memory_format(at::MemoryFormat::ChannelsLast));
  a.out = out.data_ptr<float>();
  a.has_min = clamp_min.has_value(); a.has_max = clamp_max.has_value();
  a.cmin = static_cast<float>(clamp_min.value_or(0.0)); a.cmax = static_cast<float>(clamp_max.value_or(0.0));
  launch_conv(a);
  return out;
}

at::Tensor binary_conv2d_packed_cuda(const at::Tensor& x_packed, const at::Tensor& w_packed, const at::Tensor& alpha,
                                     const std::optional<at::Tensor>& bias, int64_t in_channels,
                                     at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding) {
  CheckedConv c = checked_conv(x_packed, w_packed, alpha, bias, in_channels, kernel_size, stride, padding,
                               "binary_conv2d_packed");
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
                              const std::optional<at::Tensor>& bias, int64_t in_features,
                              std::optional<double> clamp_min, std::optional<double> clamp_max) {
  constexpr const char* op = "binary_linear";
  TORCH_CHECK(in_features >= 1, op, ": in_features must be >= 1, got ", in_features);
  const int64_t cw = words_for(in_features);
  check_common(x_packed, w_packed, alpha, bias, cw, op);
  TORCH_CHECK(w_packed.dim() == 2, op, ": w_packed must be [OUT, CW]");
  const c10::cuda::CUDAGuard guard(x_packed.device());
  const int64_t oc = w_packed.size(0);
  std::vector<int64_t> shape = x_packed.sizes().vec();
  shape.back() = oc;
  at::Tensor out = at::empty(shape, x_packed.options().dtype(at::kFloat));
  const at::Tensor xc = x_packed.reshape({-1, cw}).contiguous(), wc = w_packed.contiguous(),
                   ac = alpha.contiguous();
  at::Tensor bc;
  if (bias.has_value() && bias->defined()) bc = bias->to(at::kFloat).contiguous();
  ConvArgs a{};
  a.x = reinterpret_cast<const unsigned long long*>(xc.data_ptr<int64_t>());
  a.w = reinterpret_cast<const unsigned long long*>(wc.data_ptr<int64_t>());
  a.alpha = ac.data_ptr<float>();
  a.bias = bc.defined() ? bc.data_ptr<float>() : nullptr;
  a.out = out.data_ptr<float>();
  a.n = xc.size(0); a.h = a.w_in = a.kh = a.kw = a.sh = a.sw = a.oh = a.ow = 1; a.ph = a.pw = 0;
  a.c = in_features; a.cw = cw; a.oc = oc;
  a.has_min = clamp_min.has_value(); a.has_max = clamp_max.has_value();
  a.cmin = static_cast<float>(clamp_min.value_or(0.0)); a.cmax = static_cast<float>(clamp_max.value_or(0.0));
  launch_conv(a);
  return out;
}

}  // namespace
}  // namespace compressops::cuda

TORCH_LIBRARY_IMPL(compressops, CUDA, m) {
  m.impl("binary_pack_activation", &compressops::cuda::binary_pack_activation_cuda);
  m.impl("binary_conv2d", &compressops::cuda::binary_conv2d_cuda);
  m.impl("binary_conv2d_packed", &compressops::cuda::binary_conv2d_packed_cuda);
  m.impl("binary_linear", &compressops::cuda::binary_linear_cuda);
}
