// Host side of the binary (XNOR-popcount) family on CPU: argument checks, allocation, ISA
// selection (once per call) and at::parallel_for over output rows and channel chunks. The
// arithmetic lives in kernels/binary/; the format in compressops/formats/binary.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <vector>

#include "dispatch.h"
#include "kernels/binary/policy.h"
#include "kernel_record.h"
#include "kernels/binary/kernel.h"

namespace compressops::cpu {
namespace {

using kernels::BinaryConvParams;
using kernels::BinaryPackParams;

using kernels::BinaryPackPlanesParams;
using PackFn = bool (*)(const BinaryPackParams&, int64_t, int64_t);
using PackPlanesFn = bool (*)(const BinaryPackPlanesParams&, int64_t, int64_t);
using ConvFn = bool (*)(const BinaryConvParams&, int64_t, int64_t);

// Packing is memory-bound: levels above avx2 fall through to it. The conv has a vpopcntq kernel at
// avx512_vnni (the first level with VPOPCNTDQ); avx512 falls to avx2 and amx to avx512_vnni.
const KernelTable<PackFn> kPack = COMPRESSOPS_KERNEL_TABLE(kernels::binary_pack_rows);
const KernelTable<PackPlanesFn> kPackPlanes = COMPRESSOPS_KERNEL_TABLE(kernels::binary_pack_planes);
const KernelTable<ConvFn> kConv = COMPRESSOPS_KERNEL_TABLE(kernels::binary_conv_rows);
using PeakFn = uint64_t (*)(int64_t, uint64_t);
const KernelTable<PeakFn> kPeak = COMPRESSOPS_KERNEL_TABLE(kernels::binary_xor_popcount_peak);

// What each op's last call ran on, and the levels its kernels exist at (kernel_record.h).
const KernelRecord kRecord0("binary_pack_activation", [] { return kPack.levels(); });
const KernelRecord kRecord1("binary_conv2d", [] { return kConv.levels(); });
const KernelRecord kRecord2("binary_conv2d_packed", [] { return kConv.levels(); });
const KernelRecord kRecord3("binary_linear", [] { return kConv.levels(); });
const KernelRecord kRecord4("_binary_xor_popcount_peak", [] { return kPeak.levels(); });

int64_t words_for(int64_t c) { return (c + 63) / 64; }

// Packs rows of x2 (fp32 [rows, c], unit stride in c) into out ([rows, cw] int64).
void pack_rows(const at::Tensor& x2, int64_t c, at::Tensor& out, const char* op) {
  const int64_t rows = x2.size(0);
  if (rows == 0) return;
  BinaryPackParams p{};
  p.x = x2.data_ptr<float>();
  p.ldx = x2.stride(0);
  p.c = c;
  p.out = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  p.cw = words_for(c);
  const auto [fn, level] = kPack.select(active_isa(), p);
  record_kernel_isa(op, level);
  const int64_t grain_values = kernels::binary_policy(level).pack_grain_values;
  const PackFn kernel = fn;
  at::parallel_for(0, rows, std::max<int64_t>(1, grain_values / std::max<int64_t>(c, 1)),
                   [&](int64_t b, int64_t e) { kernel(p, b, e); });
}

at::Tensor binary_pack_activation_cpu(const at::Tensor& x) {
  constexpr const char* op = "binary_pack_activation";
  TORCH_CHECK(x.device().is_cpu(), op, ": x must be a CPU tensor here, got ", x.device());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": x must be a float tensor, got ", x.scalar_type());
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least one dimension");
  if (x.dim() == 4) {
    // NCHW (any memory format) -> [N, H, W, CW]: channels-last fp32 makes every pixel a row.
    const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
    TORCH_CHECK(c >= 1, op, ": x must have at least one channel, got shape ", x.sizes());
    at::Tensor out = at::empty({n, h, w, words_for(c)}, x.options().dtype(at::kLong));
    if (out.numel() == 0) return out;
    const at::Tensor xf = x.to(at::kFloat);
    if (xf.is_contiguous() && !xf.is_contiguous(at::MemoryFormat::ChannelsLast)) {
      // Plain NCHW: pack straight from the channel planes (no transposed copy).
      BinaryPackPlanesParams p{};
      p.ldc = h * w;
      p.hw = h * w;
      p.c = c;
      p.cw = words_for(c);
      const auto [fn, level] = kPackPlanes.select(active_isa(), p);
      record_kernel_isa(op, level);
      const PackPlanesFn kernel = fn;
      const float* base = xf.data_ptr<float>();
      uint64_t* obase = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
      const int64_t grain = std::max<int64_t>(8, kernels::binary_policy(level).pack_grain_values / c / 8 * 8);
      const int64_t chunks = (h * w + grain - 1) / grain;
      at::parallel_for(0, n * chunks, 1, [&](int64_t b, int64_t e) {
        for (int64_t t = b; t < e; ++t) {
          const int64_t img = t / chunks, ch = t % chunks;
          BinaryPackPlanesParams q = p;
          q.x = base + img * c * h * w;
          q.out = obase + img * h * w * p.cw;
          kernel(q, ch * grain, std::min(h * w, (ch + 1) * grain));
        }
      });
      return out;
    }
    const at::Tensor xc = xf.contiguous(at::MemoryFormat::ChannelsLast);
    const at::Tensor x2 = xc.permute({0, 2, 3, 1}).reshape({n * h * w, c});
    pack_rows(x2, c, out, op);
    return out;
  }
  const int64_t c = x.size(-1);
  TORCH_CHECK(c >= 1, op, ": x must have a non-empty last dimension, got shape ", x.sizes());
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = words_for(c);
  at::Tensor out = at::empty(shape, x.options().dtype(at::kLong));
  if (out.numel() == 0) return out;
  const at::Tensor x2 = x.to(at::kFloat).reshape({-1, c}).contiguous();
  pack_rows(x2, c, out, op);
  return out;
}

at::Tensor checked_alpha(const at::Tensor& alpha, int64_t oc, const char* op) {
  TORCH_CHECK(alpha.device().is_cpu() && alpha.scalar_type() == at::kFloat && alpha.dim() == 1 && alpha.size(0) == oc,
              op, ": alpha must be a float32 CPU tensor of shape [", oc, "], got ", alpha.scalar_type(), " ",
              alpha.sizes());
  return alpha.contiguous();
}

std::optional<at::Tensor> checked_bias(const std::optional<at::Tensor>& bias, int64_t oc, const char* op) {
  if (!bias.has_value() || !bias->defined()) return std::nullopt;
  TORCH_CHECK(bias->device().is_cpu() && at::isFloatingType(bias->scalar_type()) && bias->dim() == 1 &&
                  bias->size(0) == oc,
              op, ": bias must be a float CPU tensor of shape [", oc, "], got ", bias->scalar_type(), " ",
              bias->sizes());
  return bias->to(at::kFloat).contiguous();
}

// Runs the conv kernel over every output row (n, oh) and, when there are few rows, over chunks
// of output channels too, so a 1-row call (linear with M = 1) still uses every thread.
void run_conv(BinaryConvParams p, const char* op) {
  const int64_t rows = p.n * p.oh;
  if (rows == 0 || p.oc == 0 || p.ow == 0) return;
  p.oc_begin = 0;
  p.oc_end = p.oc;
  const auto [fn, level] = kConv.select(active_isa(), p);
  TORCH_CHECK(fn != nullptr, op, ": no kernel accepts kernel height ", p.kh);
  record_kernel_isa(op, level);
  const ConvFn kernel = fn;
  const int64_t tasks = kernels::binary_policy(level).tasks_per_thread * at::get_num_threads();
  // Chunks start at multiples of 64, which binary_conv2d_packed needs (one output word per chunk).
  const int64_t chunk = 64;
  const int64_t oc_chunks = rows >= tasks ? 1 : (p.oc + chunk - 1) / chunk;
  const int64_t oc_step = oc_chunks == 1 ? p.oc : chunk;
  at::parallel_for(0, rows * oc_chunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      BinaryConvParams q = p;
      const int64_t row = t / oc_chunks, ci = t % oc_chunks;
      q.oc_begin = ci * oc_step;
      q.oc_end = std::min(p.oc, q.oc_begin + oc_step);
      kernel(q, row, row + 1);
    }
  });
}

void set_clamp(BinaryConvParams& p, std::optional<double> cmin, std::optional<double> cmax) {
  p.has_min = cmin.has_value();
  p.has_max = cmax.has_value();
  p.cmin = static_cast<float>(cmin.value_or(0.0));
  p.cmax = static_cast<float>(cmax.value_or(0.0));
}

// Checks binary_conv2d's arguments and fills everything in the params but the output pointers.
// The returned tensors keep the contiguous copies the params point into alive.
struct CheckedConv {
  BinaryConvParams p{};
  at::Tensor x, w, alpha;
  std::optional<at::Tensor> bias;
};

CheckedConv checked_conv(const at::Tensor& x_packed, const at::Tensor& w_packed, const at::Tensor& alpha,
                         const std::optional<at::Tensor>& bias, int64_t in_channels, at::IntArrayRef kernel_size,
                         at::IntArrayRef stride, at::IntArrayRef padding, const char* op) {
  TORCH_CHECK(in_channels >= 1, op, ": in_channels must be >= 1, got ", in_channels);
  const int64_t cw = words_for(in_channels);
  TORCH_CHECK(x_packed.device().is_cpu() && x_packed.scalar_type() == at::kLong && x_packed.dim() == 4 &&
                  x_packed.size(3) == cw,
              op, ": x_packed must be an int64 CPU tensor [N, H, W, ceil(in_channels/64)] = [N, H, W, ", cw,
              "] from binary_pack_activation, got ", x_packed.scalar_type(), " ", x_packed.sizes());
  TORCH_CHECK(kernel_size.size() == 2 && stride.size() == 2 && padding.size() == 2, op,
              ": kernel_size, stride and padding must have two values each");
  TORCH_CHECK(kernel_size[0] >= 1 && kernel_size[1] >= 1 && kernel_size[0] <= 64, op,
              ": kernel_size must be in [1, 64], got ", kernel_size);
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1, op, ": stride must be >= 1, got ", stride);
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0, op, ": padding must be >= 0, got ", padding);
  TORCH_CHECK(w_packed.device().is_cpu() && w_packed.scalar_type() == at::kLong && w_packed.dim() == 4 &&
                  w_packed.size(1) == kernel_size[0] && w_packed.size(2) == kernel_size[1] && w_packed.size(3) == cw,
              op, ": w_packed must be an int64 CPU tensor [OC, ", kernel_size[0], ", ", kernel_size[1], ", ", cw,
              "] from compressops.formats.binary.binarize_weight, got ", w_packed.scalar_type(), " ",
              w_packed.sizes());
  CheckedConv r;
  const int64_t oc = w_packed.size(0);
  r.alpha = checked_alpha(alpha, oc, op);
  r.bias = checked_bias(bias, oc, op);
  const int64_t n = x_packed.size(0), h = x_packed.size(1), w = x_packed.size(2);
  TORCH_CHECK(h + 2 * padding[0] >= kernel_size[0] && w + 2 * padding[1] >= kernel_size[1], op,
              ": the padded input (", h, "x", w, " + padding ", padding, ") is smaller than the kernel ",
              kernel_size);
  r.x = x_packed.contiguous();
  r.w = w_packed.contiguous();
  BinaryConvParams& p = r.p;
  p.x = reinterpret_cast<const uint64_t*>(r.x.data_ptr<int64_t>());
  p.w = reinterpret_cast<const uint64_t*>(r.w.data_ptr<int64_t>());
  p.alpha = r.alpha.data_ptr<float>();
  p.bias = r.bias ? r.bias->data_ptr<float>() : nullptr;
  p.n = n;
  p.h = h;
  p.w_in = w;
  p.c = in_channels;
  p.cw = cw;
  p.oc = oc;
  p.kh = kernel_size[0];
  p.kw = kernel_size[1];
  p.sh = stride[0];
  p.sw = stride[1];
  p.ph = padding[0];
  p.pw = padding[1];
  p.oh = (h + 2 * padding[0] - kernel_size[0]) / stride[0] + 1;
  p.ow = (w + 2 * padding[1] - kernel_size[1]) / stride[1] + 1;
  return r;
}

at::Tensor binary_conv2d_cpu(const at::Tensor& x_packed, const at::Tensor& w_packed, const at::Tensor& alpha,
                             const std::optional<at::Tensor>& bias, int64_t in_channels, at::IntArrayRef kernel_size,
                             at::IntArrayRef stride, at::IntArrayRef padding, std::optional<double> clamp_min,
                             std::optional<double> clamp_max) {
  constexpr const char* op = "binary_conv2d";
  CheckedConv c = checked_conv(x_packed, w_packed, alpha, bias, in_channels, kernel_size, stride, padding, op);
  at::Tensor out = at::empty({c.p.n, c.p.oc, c.p.oh, c.p.ow},
                             x_packed.options().dtype(at::kFloat).memory_format(at::MemoryFormat::ChannelsLast));
  c.p.out = out.data_ptr<float>();
  set_clamp(c.p, clamp_min, clamp_max);
  run_conv(c.p, op);
  return out;
}

// The same values as binary_conv2d without a clamp, written as sign bits (v >= 0 -> 1) packed along
// output channels: exactly binary_pack_activation(binary_conv2d(...)), without the float tensor.
at::Tensor binary_conv2d_packed_cpu(const at::Tensor& x_packed, const at::Tensor& w_packed, const at::Tensor& alpha,
                                    const std::optional<at::Tensor>& bias, int64_t in_channels,
                                    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding) {
  constexpr const char* op = "binary_conv2d_packed";
  CheckedConv c = checked_conv(x_packed, w_packed, alpha, bias, in_channels, kernel_size, stride, padding, op);
  c.p.ocw = words_for(c.p.oc);
  at::Tensor out = at::empty({c.p.n, c.p.oh, c.p.ow, c.p.ocw}, x_packed.options());
  c.p.out_bits = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  run_conv(c.p, op);
  return out;
}

at::Tensor binary_linear_cpu(const at::Tensor& x_packed, const at::Tensor& w_packed, const at::Tensor& alpha,
                             const std::optional<at::Tensor>& bias, int64_t in_features,
                             std::optional<double> clamp_min, std::optional<double> clamp_max) {
  constexpr const char* op = "binary_linear";
  TORCH_CHECK(in_features >= 1, op, ": in_features must be >= 1, got ", in_features);
  const int64_t cw = words_for(in_features);
  TORCH_CHECK(x_packed.device().is_cpu() && x_packed.scalar_type() == at::kLong && x_packed.dim() >= 1 &&
                  x_packed.size(-1) == cw,
              op, ": x_packed must be an int64 CPU tensor [..., ceil(in_features/64)] = [..., ", cw,
              "] from binary_pack_activation, got ", x_packed.scalar_type(), " ", x_packed.sizes());
  TORCH_CHECK(w_packed.device().is_cpu() && w_packed.scalar_type() == at::kLong && w_packed.dim() == 2 &&
                  w_packed.size(1) == cw,
              op, ": w_packed must be an int64 CPU tensor [OUT, ", cw, "], got ", w_packed.scalar_type(), " ",
              w_packed.sizes());
  const int64_t oc = w_packed.size(0);
  const at::Tensor a = checked_alpha(alpha, oc, op);
  const auto b = checked_bias(bias, oc, op);
  std::vector<int64_t> shape = x_packed.sizes().vec();
  shape.back() = oc;
  at::Tensor out = at::empty(shape, x_packed.options().dtype(at::kFloat));
  const at::Tensor x2 = x_packed.reshape({-1, cw}).contiguous();
  const at::Tensor wc = w_packed.contiguous();
  BinaryConvParams p{};
  p.x = reinterpret_cast<const uint64_t*>(x2.data_ptr<int64_t>());
  p.w = reinterpret_cast<const uint64_t*>(wc.data_ptr<int64_t>());
  p.alpha = a.data_ptr<float>();
  p.bias = b ? b->data_ptr<float>() : nullptr;
  p.out = out.data_ptr<float>();
  p.n = x2.size(0);
  p.h = p.w_in = p.kh = p.kw = p.sh = p.sw = p.oh = p.ow = 1;
  p.ph = p.pw = 0;
  p.c = in_features;
  p.cw = cw;
  p.oc = oc;
  set_clamp(p, clamp_min, clamp_max);
  run_conv(p, op);
  return out;
}

}  // namespace

// Benchmarks only: every thread runs the conv kernel's inner loop on L1-resident data (see
// kernels::binary_xor_popcount_peak) for `iters` passes. Returns bit-products (binary MACs) per
// second over all threads, the measured ceiling for the conv kernel at the active level.
double binary_xor_popcount_peak_op(int64_t iters) {
  TORCH_CHECK(iters >= 1, "_binary_xor_popcount_peak: iters must be >= 1, got ", iters);
  const auto [fn, level] = kPeak.first(active_isa());
  record_kernel_isa("_binary_xor_popcount_peak", level);
  const int64_t threads = at::get_num_threads();
  std::vector<uint64_t> sink(threads);
  const auto t0 = std::chrono::steady_clock::now();
  at::parallel_for(0, threads, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) sink[t] = fn(iters, 0x9E3779B97F4A7C15ull + t);
  });
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  uint64_t keep = 0;
  for (uint64_t v : sink) keep ^= v;
  // Folding the results into the return value (by a term far below the rate's precision) keeps
  // every thread's work observable.
  return static_cast<double>(threads) * iters * kernels::binary_xor_popcount_peak_bits() / secs +
         static_cast<double>(keep & 1) * 1e-30;
}

TORCH_LIBRARY_IMPL(compressops, CPU, m) {
  m.impl("binary_pack_activation", &binary_pack_activation_cpu);
  m.impl("binary_conv2d", &binary_conv2d_cpu);
  m.impl("binary_conv2d_packed", &binary_conv2d_packed_cpu);
  m.impl("binary_linear", &binary_linear_cpu);
}

}  // namespace compressops::cpu
