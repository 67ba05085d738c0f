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
#include "binary_pack.h"

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
const KernelRecord kRecord5("binary_pack_weight", [] { return std::vector<std::string>(); });

using binary_host::words_for;

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
  // The messages of formats/binary.py check_pack_activation.
  cpu::check_float_input(x, op);
  if (x.dim() == 4) {
    // NCHW (any memory format) -> [N, H, W, CW]: channels-last fp32 makes every pixel a row.
    const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
    TORCH_CHECK_VALUE(c >= 1, op, ": x must have at least one channel, got shape ", cpu::py_shape(x.sizes()));
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
  TORCH_CHECK_VALUE(c >= 1, op, ": x must have a non-empty last dimension, got shape ",
                    cpu::py_shape(x.sizes()));
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = words_for(c);
  at::Tensor out = at::empty(shape, x.options().dtype(at::kLong));
  if (out.numel() == 0) return out;
  const at::Tensor x2 = x.to(at::kFloat).reshape({-1, c}).contiguous();
  pack_rows(x2, c, out, op);
  return out;
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

at::Tensor binary_pack_weight_cpu(const at::Tensor& weight_bits, int64_t in_channels) {
  return binary_host::pack_weight(weight_bits, in_channels);
}

// Checks binary_conv2d's arguments (binary_pack.h, the order of formats/binary.py check_conv2d)
// and fills everything in the params but the output pointers. The returned tensors keep what the
// params point into alive.
struct CheckedConv {
  BinaryConvParams p{};
  binary_host::BinaryPack pack;
  binary_host::Operands operands;
  at::Tensor x;
};

CheckedConv checked_conv(const at::Tensor& x_packed, const at::Tensor& w_packed, const at::Tensor& alpha,
                         const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                         const char* op) {
  CheckedConv r;
  r.pack = binary_host::read_pack(w_packed, op, true);
  r.operands = binary_host::check_operands(x_packed, r.pack, alpha, bias, true, op);
  binary_host::check_conv_geometry(x_packed, r.pack, stride, padding, op);
  const binary_host::BinaryPack& w = r.pack;
  // The kernels keep one output pixel's valid tap rows in a fixed table (kernels/binary/common.h).
  TORCH_CHECK_VALUE(w.kh <= 64, op, ": the CPU kernels take kernel heights up to 64, w_packed's is ", w.kh);
  r.x = x_packed.contiguous();
  BinaryConvParams& p = r.p;
  p.x = reinterpret_cast<const uint64_t*>(r.x.data_ptr<int64_t>());
  p.w = w.words;
  p.alpha = r.operands.alpha.data_ptr<float>();
  p.bias = r.operands.bias.defined() ? r.operands.bias.data_ptr<float>() : nullptr;
  p.n = x_packed.size(0);
  p.h = x_packed.size(1);
  p.w_in = x_packed.size(2);
  p.c = w.c;
  p.cw = w.cw;
  p.oc = w.n;
  p.kh = w.kh;
  p.kw = w.kw;
  p.sh = stride[0];
  p.sw = stride[1];
  p.ph = padding[0];
  p.pw = padding[1];
  p.oh = (p.h + 2 * p.ph - p.kh) / p.sh + 1;
  p.ow = (p.w_in + 2 * p.pw - p.kw) / p.sw + 1;
  return r;
}

at::Tensor binary_conv2d_cpu(const at::Tensor& x_packed, const at::Tensor& w_packed, const at::Tensor& alpha,
                             const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                             std::optional<double> clamp_min, std::optional<double> clamp_max) {
  constexpr const char* op = "binary_conv2d";
  CheckedConv c = checked_conv(x_packed, w_packed, alpha, bias, stride, padding, op);
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
                                    const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                    at::IntArrayRef padding) {
  constexpr const char* op = "binary_conv2d_packed";
  CheckedConv c = checked_conv(x_packed, w_packed, alpha, bias, stride, padding, op);
  c.p.ocw = words_for(c.p.oc);
  at::Tensor out = at::empty({c.p.n, c.p.oh, c.p.ow, c.p.ocw}, x_packed.options());
  c.p.out_bits = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  run_conv(c.p, op);
  return out;
}

at::Tensor binary_linear_cpu(const at::Tensor& x_packed, const at::Tensor& w_packed, const at::Tensor& alpha,
                             const std::optional<at::Tensor>& bias, std::optional<at::ScalarType> out_dtype,
                             std::optional<double> clamp_min, std::optional<double> clamp_max) {
  constexpr const char* op = "binary_linear";
  const binary_host::BinaryPack w = binary_host::read_pack(w_packed, op, false);
  const binary_host::Operands operands = binary_host::check_operands(x_packed, w, alpha, bias, false, op);
  const at::ScalarType out_t = binary_host::out_dtype_of(out_dtype, op);
  std::vector<int64_t> shape = x_packed.sizes().vec();
  shape.back() = w.n;
  at::Tensor out = at::empty(shape, x_packed.options().dtype(at::kFloat));
  const at::Tensor x2 = x_packed.reshape({-1, w.cw}).contiguous();
  BinaryConvParams p{};
  p.x = reinterpret_cast<const uint64_t*>(x2.data_ptr<int64_t>());
  p.w = w.words;
  p.alpha = operands.alpha.data_ptr<float>();
  p.bias = operands.bias.defined() ? operands.bias.data_ptr<float>() : nullptr;
  p.out = out.data_ptr<float>();
  p.n = x2.size(0);
  p.h = p.w_in = p.kh = p.kw = p.sh = p.sw = p.oh = p.ow = 1;
  p.ph = p.pw = 0;
  p.c = w.c;
  p.cw = w.cw;
  p.oc = w.n;
  set_clamp(p, clamp_min, clamp_max);
  run_conv(p, op);
  return out_t == at::kFloat ? out : out.to(out_t);
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
  m.impl("binary_pack_weight", &binary_pack_weight_cpu);
  m.impl("binary_conv2d", &binary_conv2d_cpu);
  m.impl("binary_conv2d_packed", &binary_conv2d_packed_cpu);
  m.impl("binary_linear", &binary_linear_cpu);
}

}  // namespace compressops::cpu
