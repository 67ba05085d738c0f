// Host side of the half family on CPU (format: compressops/formats/half.py): argument checks, the
// pack, the level choice (once per call) and at::parallel_for over output tiles. The arithmetic is
// in kernels/half/.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>

#include "dispatch.h"
#include "kernel_record.h"
#include "pack_tensor.h"
#include "kernels/half/kernel.h"

namespace compressops::cpu {
namespace {

using kernels::HalfLinearParams;
using HalfLinearFn = bool (*)(const HalfLinearParams&, int64_t, int64_t);

constexpr const char* kTag = "half";
constexpr uint32_t kVersion = 1;
// Output columns one parallel task takes at least: a multiple of both kernel tile widths (3, 8).
constexpr int64_t kColumnBlock = 24;

const KernelTable<HalfLinearFn> kLinear = COMPRESSOPS_KERNEL_TABLE(kernels::half_linear);
const KernelRecord kPackRecord("half_pack_weight", [] { return std::vector<std::string>(); });
KernelRecord kLinearRecord("half_linear", [] { return kLinear.levels(); });

int64_t packed_bytes(int64_t n, int64_t k) { return kPackHeaderBytes + 2 * n * k; }

// The header of `packed`, every field and the shape checked against what N and K imply
// (pack_tensor.h), so the kernels may read 2 * N * K bytes after it.
PackHeader read_header(const at::Tensor& packed, const char* op) {
  const PackReader reader{op, "packed", "half_pack_weight"};
  const PackHeader h = read_pack_tensor(packed, kTag, kVersion, reader, 2);
  check_pack_tensor_layout(packed, h, {}, {h.n}, packed_bytes(h.n, h.k), reader);
  return h;
}

at::Tensor half_pack_weight_cpu(const at::Tensor& w) {
  constexpr const char* op = "half_pack_weight";
  TORCH_CHECK_VALUE(w.scalar_type() == at::kHalf, op, ": w must be float16, got ", w.scalar_type());
  TORCH_CHECK_VALUE(w.dim() == 2, op, ": w must be 2-D [N, K], got shape ", w.sizes());
  const int64_t n = w.size(0), k = w.size(1);
  TORCH_CHECK_VALUE(n >= 1 && n < kPackMaxDim && k >= 1 && k < kPackMaxDim, op, ": w needs 1 <= N, K < 2^31, got ",
              w.sizes());
  at::Tensor packed = new_pack_tensor(make_pack_header(kTag, kVersion, n, k), {n}, packed_bytes(n, k), w.options());
  packed.view(-1).narrow(0, kPackHeaderBytes, 2 * n * k).view(at::kHalf).view({n, k}).copy_(w);
  return packed;
}

at::Tensor half_linear_cpu(const at::Tensor& x, const at::Tensor& packed, const std::optional<at::Tensor>& bias,
                           std::optional<at::ScalarType> out_dtype) {
  constexpr const char* op = "half_linear";
  check_float_input(x, op);
  const PackHeader h = read_header(packed, op);
  const int64_t n = h.n, k = h.k;
  TORCH_CHECK_VALUE(x.size(-1) == k, op, ": x has K=", x.size(-1), " in its last dimension but the weight has K=", k);
  const std::optional<at::Tensor> b = checked_bias(bias, n, op);
  const at::ScalarType out_t = resolve_out_dtype(out_dtype, x.scalar_type(), op);

  // The kernels read float32 rows with unit stride; anything else is converted once.
  at::Tensor x2 = x.reshape({-1, k});
  if (x2.scalar_type() != at::kFloat || x2.stride(1) != 1) x2 = x2.to(at::kFloat).contiguous();
  const int64_t m = x2.size(0);
  at::Tensor out = at::empty({m, n}, x.options().dtype(at::kFloat));
  if (m > 0) {
    HalfLinearParams p{};
    p.x = x2.data_ptr<float>();
    p.ldx = x2.stride(0);
    p.w = reinterpret_cast<const uint16_t*>(packed.data_ptr<uint8_t>() + kPackHeaderBytes);
    p.bias = b ? b->data_ptr<float>() : nullptr;
    p.out = out.data_ptr<float>();
    p.ldo = n;
    p.m = m;
    p.n = n;
    p.k = k;
    const auto [fn, level] = kLinear.select(active_isa(), p);
    kLinearRecord.store(level);
    const HalfLinearFn kernel = fn;
    // Column blocks across threads; a layer too narrow to keep every thread busy is cut along
    // rows too (a row's result does not depend on the cut, kernel.h).
    const int64_t threads = at::get_num_threads();
    const int64_t blocks = (n + kColumnBlock - 1) / kColumnBlock;
    const int64_t wanted_chunks = std::max<int64_t>(1, 4 * threads / blocks);
    const int64_t rows = (m + wanted_chunks - 1) / wanted_chunks;
    const int64_t row_chunks = (m + rows - 1) / rows;
    at::parallel_for(0, row_chunks * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t r0 = t / blocks * rows, n0 = t % blocks * kColumnBlock;
        HalfLinearParams tile = p;
        tile.x += r0 * p.ldx;
        tile.out += r0 * p.ldo;
        tile.m = std::min(rows, m - r0);
        kernel(tile, n0, std::min(n, n0 + kColumnBlock));
      }
    });
  }
  auto shape = x.sizes().vec();
  shape.back() = n;
  return (out_t == at::kFloat ? out : out.to(out_t)).view(shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(compressops, CPU, m) {
  m.impl("half_pack_weight", &half_pack_weight_cpu);
  m.impl("half_linear", &half_linear_cpu);
}

}  // namespace compressops::cpu
