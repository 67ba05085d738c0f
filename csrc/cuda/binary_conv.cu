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

__global__ void conv_kernel(ConvArgs a) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t total = a.n * a.oh * a.ow * a.oc;
  if (t >= total) return;
  const int64_t o = t % a.oc;
  int64_t pix = t / a.oc;
  const int64_t ow = pix % a.ow;
  pix /= a.ow;
  const int64_t oh = pix % a.oh;
  const int64_t n = pix / a.oh;
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
  const int64_t total = a.n * a.oh * a.ow * ocp;
  if (t >= total) return;
  const int64_t o = t % ocp;
  int64_t pix = t / ocp;
  const int64_t ow = pix % a.ow;
  pix /= a.ow;
  const int64_t oh = pix % a.oh;
  const int64_t n = pix / a.oh;
  bool bit = false;
  if (o < a.oc) {
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
    bit = v >= 0.0f;
  }
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

at::Tensor binary_conv2d_cuda(const at::Tensor& x_packed, const at::Tensor& w_packed, const at::Tensor& alpha,
                              const std::optional<at::Tensor>& bias, int64_t in_channels,
                              at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                              std::optional<double> clamp_min, std::optional<double> clamp_max) {
  constexpr const char* op = "binary_conv2d";
  TORCH_CHECK(in_channels >= 1, op, ": in_channels must be >= 1, got ", in_channels);
  const int64_t cw = words_for(in_channels);
  check_common(x_packed, w_packed, alpha, bias, cw, op);
  TORCH_CHECK(x_packed.dim() == 4 && w_packed.dim() == 4 && kernel_size.size() == 2 && stride.size() == 2 &&
                  padding.size() == 2 && w_packed.size(1) == kernel_size[0] && w_packed.size(2) == kernel_size[1],
              op, ": x_packed must be [N, H, W, CW] and w_packed [OC, KH, KW, CW] matching kernel_size");
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1 && padding[0] >= 0 && padding[1] >= 0, op,
              ": stride must be >= 1 and padding >= 0");
  const c10::cuda::CUDAGuard guard(x_packed.device());
  const int64_t n = x_packed.size(0), h = x_packed.size(1), w = x_packed.size(2), oc = w_packed.size(0);
  TORCH_CHECK(h + 2 * padding[0] >= kernel_size[0] && w + 2 * padding[1] >= kernel_size[1], op,
              ": the padded input is smaller than the kernel");
  const int64_t oh = (h + 2 * padding[0] - kernel_size[0]) / stride[0] + 1;
  const int64_t ow = (w + 2 * padding[1] - kernel_size[1]) / stride[1] + 1;
  at::Tensor out = at::empty({n, oc, oh, ow},
                             x_packed.options().dtype(at::kFloat).memory_format(at::MemoryFormat::ChannelsLast));
  const at::Tensor xc = x_packed.contiguous(), wc = w_packed.contiguous(), ac = alpha.contiguous();
  at::Tensor bc;
  if (bias.has_value() && bias->defined()) bc = bias->to(at::kFloat).contiguous();
  ConvArgs a{};
  a.x = reinterpret_cast<const unsigned long long*>(xc.data_ptr<int64_t>());
  a.w = reinterpret_cast<const unsigned long long*>(wc.data_ptr<int64_t>());
  a.alpha = ac.data_ptr<float>();
  a.bias = bc.defined() ? bc.data_ptr<float>() : nullptr;
  a.out = out.data_ptr<float>();
  a.n = n; a.h = h; a.w_in = w; a.c = in_channels; a.cw = cw; a.oc = oc;
  a.kh = kernel_size[0]; a.kw = kernel_size[1]; a.sh = stride[0]; a.sw = stride[1];
  a.ph = padding[0]; a.pw = padding[1]; a.oh = oh; a.ow = ow;
  a.has_min = clamp_min.has_value(); a.has_max = clamp_max.has_value();
  a.cmin = static_cast<float>(clamp_min.value_or(0.0)); a.cmax = static_cast<float>(clamp_max.value_or(0.0));
  launch_conv(a);
  return out;
}

at::Tensor binary_conv2d_packed_cuda(const at::Tensor& x_packed, const at::Tensor& w_packed, const at::Tensor& alpha,
                                     const std::optional<at::Tensor>& bias, int64_t in_channels,
                                     at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding) {
  constexpr const char* op = "binary_conv2d_packed";
  TORCH_CHECK(in_channels >= 1, op, ": in_channels must be >= 1, got ", in_channels);
  const int64_t cw = words_for(in_channels);
  check_common(x_packed, w_packed, alpha, bias, cw, op);
  TORCH_CHECK(x_packed.dim() == 4 && w_packed.dim() == 4 && kernel_size.size() == 2 && stride.size() == 2 &&
                  padding.size() == 2 && w_packed.size(1) == kernel_size[0] && w_packed.size(2) == kernel_size[1],
              op, ": x_packed must be [N, H, W, CW] and w_packed [OC, KH, KW, CW] matching kernel_size");
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1 && padding[0] >= 0 && padding[1] >= 0, op,
              ": stride must be >= 1 and padding >= 0");
  const c10::cuda::CUDAGuard guard(x_packed.device());
  const int64_t n = x_packed.size(0), h = x_packed.size(1), w = x_packed.size(2), oc = w_packed.size(0);
  TORCH_CHECK(h + 2 * padding[0] >= kernel_size[0] && w + 2 * padding[1] >= kernel_size[1], op,
              ": the padded input is smaller than the kernel");
  const int64_t oh = (h + 2 * padding[0] - kernel_size[0]) / stride[0] + 1;
  const int64_t ow = (w + 2 * padding[1] - kernel_size[1]) / stride[1] + 1;
  const int64_t ocw = words_for(oc);
  at::Tensor out = at::empty({n, oh, ow, ocw}, x_packed.options());
  const at::Tensor xc = x_packed.contiguous(), wc = w_packed.contiguous(), ac = alpha.contiguous();
  at::Tensor bc;
  if (bias.has_value() && bias->defined()) bc = bias->to(at::kFloat).contiguous();
  ConvArgs a{};
  a.x = reinterpret_cast<const unsigned long long*>(xc.data_ptr<int64_t>());
  a.w = reinterpret_cast<const unsigned long long*>(wc.data_ptr<int64_t>());
  a.alpha = ac.data_ptr<float>();
  a.bias = bc.defined() ? bc.data_ptr<float>() : nullptr;
  a.n = n; a.h = h; a.w_in = w; a.c = in_channels; a.cw = cw; a.oc = oc;
  a.kh = kernel_size[0]; a.kw = kernel_size[1]; a.sh = stride[0]; a.sw = stride[1];
  a.ph = padding[0]; a.pw = padding[1]; a.oh = oh; a.ow = ow;
  const int64_t total = n * oh * ow * ocw * 64;
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
