// Host side of the int4 linear family on CPU: argument checks, packing, ISA selection (once per
// call) and at::parallel_for over column blocks. The arithmetic lives in kernels/int4/.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>

#include "../common/int4_layout.h"
#include "dispatch.h"
#include "kernels/int4/policy.h"
#include "kernel_record.h"
#include "kernels/int4/kernel.h"

namespace compressops::cpu {
namespace {

using kernels::Int4FloatKind;
using kernels::Int4GemmParams;
using kernels::Int4Policy;
using kernels::Int4QuantizeParams;

using QuantizeFn = bool (*)(const Int4QuantizeParams&, int64_t, int64_t);
using GemmFn = bool (*)(const Int4GemmParams&, int64_t, int64_t);

// Only scalar and avx2 kernels: every higher level falls down the chain to avx2.
const KernelTable<QuantizeFn> kQuantize = COMPRESSOPS_KERNEL_TABLE(kernels::int4_quantize_rows);
const KernelTable<GemmFn> kGemm = COMPRESSOPS_KERNEL_TABLE(kernels::int4_gemm);
// What each op's last call ran on, and the levels its kernels exist at (kernel_record.h).
const KernelRecord kRecord0("int4_pack_weight", [] { return std::vector<std::string>(); });
const KernelRecord kRecord1("int4_quantize_rows", [] { return kQuantize.levels(); });
const KernelRecord kRecord2("int4_linear", [] { return kGemm.levels(); });



bool valid_group_size(int64_t g) { return g == 32 || g == 64 || g == 128 || g == 256; }

Int4PackedHeader read_header(const at::Tensor& packed, const char* op) {
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 1 && packed.is_contiguous(), op,
              ": w_packed must be a contiguous 1-D uint8 tensor from compressops.ops.int4_pack_weight, got ",
              packed.scalar_type(), " of shape ", packed.sizes());
  TORCH_CHECK(packed.numel() >= kInt4HeaderBytes, op, ": w_packed is too small (", packed.numel(),
              " bytes) to hold an int4 pack header");
  Int4PackedHeader h;
  std::memcpy(&h, packed.data_ptr<uint8_t>(), sizeof(h));
  TORCH_CHECK(h.magic == kInt4PackMagic && h.version == kInt4PackVersion && h.nr == kInt4NR &&
                  valid_group_size(h.group_size),
              op, ": w_packed does not hold an int4 pack (version ", kInt4PackVersion,
              "); repack it with compressops.ops.int4_pack_weight");
  TORCH_CHECK(packed.numel() == int4_packed_bytes(h.n, h.k, h.group_size), op, ": w_packed has ", packed.numel(),
              " bytes but its header (N=", h.n, ", K=", h.k, ", group_size=", h.group_size, ") needs ",
              int4_packed_bytes(h.n, h.k, h.group_size));
  return h;
}

at::Tensor int4_pack_weight_cpu(const at::Tensor& qweight, const at::Tensor& scales,
                                const std::optional<at::Tensor>& zeros, int64_t in_features, int64_t group_size) {
  constexpr const char* op = "int4_pack_weight";
  TORCH_CHECK(valid_group_size(group_size), op, ": group_size must be 32, 64, 128 or 256, got ", group_size);
  TORCH_CHECK(qweight.scalar_type() == at::kByte && qweight.dim() == 2, op,
              ": qweight must be uint8 [N, K_pad/2], got ", qweight.scalar_type(), " ", qweight.sizes());
  const int64_t n = qweight.size(0), k = in_features;
  TORCH_CHECK(n >= 1 && n < (1LL << 30) && k >= 1 && k < (1LL << 30), op,
              ": need N >= 1 and in_features >= 1, got N=", n, ", in_features=", k);
  const int64_t k_pad = int4_round_up(k, group_size), groups = k_pad / group_size;
  TORCH_CHECK(qweight.size(1) * 2 == k_pad, op, ": qweight must have K_pad/2 = ", k_pad / 2,
              " columns (in_features=", k, " padded to group_size=", group_size, "), got ", qweight.size(1));
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.dim() == 2 && scales.size(0) == n &&
                  scales.size(1) == groups,
              op, ": scales must be float32 [N, G] = [", n, ", ", groups, "], got ", scales.scalar_type(), " ",
              scales.sizes());
  const bool symmetric = !zeros.has_value() || !zeros->defined();
  if (!symmetric) {
    TORCH_CHECK(zeros->scalar_type() == at::kByte && zeros->dim() == 2 && zeros->size(0) == n &&
                    zeros->size(1) == groups,
                op, ": zeros must be uint8 [N, G] = [", n, ", ", groups, "] or None (symmetric), got ",
                zeros->scalar_type(), " ", zeros->sizes());
    TORCH_CHECK(zeros->max().item<uint8_t>() <= 15, op, ": zeros must lie in [0, 15]");
  }
  const at::Tensor qw = qweight.contiguous();
  const at::Tensor sc = scales.contiguous();
  const at::Tensor zp = symmetric ? at::Tensor() : zeros->contiguous();
  const int64_t n_pad = int4_round_up(n, kInt4NR);
  at::Tensor packed = at::zeros({int4_packed_bytes(n, k, group_size)}, qweight.options());
  uint8_t* base = packed.data_ptr<uint8_t>();
  Int4PackedHeader h{};
  h.magic = kInt4PackMagic;
  h.version = kInt4PackVersion;
  h.n = static_cast<int32_t>(n);
  h.k = static_cast<int32_t>(k);
  h.k_pad = static_cast<int32_t>(k_pad);
  h.group_size = static_cast<int32_t>(group_size);
  h.groups = static_cast<int32_t>(groups);
  h.n_pad = static_cast<int32_t>(n_pad);
  h.nr = static_cast<int32_t>(kInt4NR);
  h.symmetric = symmetric ? 1 : 0;
  std::memcpy(base, &h, sizeof(h));
  uint8_t* body = base + kInt4HeaderBytes;
  const uint8_t* src = qw.data_ptr<uint8_t>();
  const float* s_src = sc.data_ptr<float>();
  const uint8_t* z_src = symmetric ? nullptr : zp.data_ptr<uint8_t>();
  const int64_t gstride = int4_group_stride(group_size);
  const int64_t row_bytes = k_pad / 2;
  at::parallel_for(0, n_pad / kInt4NR, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t nb = b0; nb < b1; ++nb) {
      for (int64_t g = 0; g < groups; ++g) {
        uint8_t* dst = body + (nb * groups + g) * gstride;
        float* s_dst = reinterpret_cast<float*>(dst + group_size * 4);
        for (int64_t c = 0; c < kInt4NR; ++c) {
          const int64_t row = nb * kInt4NR + c;
          if (row >= n) continue;  // zeros already
          const uint8_t* r = src + row * row_bytes;
          auto nib = [&](int64_t kk) -> uint8_t {
            const uint8_t b = r[kk / 2];
            return kk % 2 ? (b >> 4) : (b & 15);
          };
          for (int64_t j = 0; j < group_size / 8; ++j) {
            for (int64_t i = 0; i < 4; ++i) {
              const int64_t kk = g * group_size + 8 * j + i;
              dst[j * 32 + c * 4 + i] = static_cast<uint8_t>(nib(kk) | (nib(kk + 4) << 4));
            }
          }
          const float s = s_src[row * groups + g];
          const float z = symmetric ? 8.0f : static_cast<float>(z_src[row * groups + g]);
          s_dst[c] = s;
          s_dst[kInt4NR + c] = z * s;
        }
      }
    }
  });
  return packed;
}

at::Tensor int4_linear_cpu(const at::Tensor& x, const at::Tensor& w_packed, int64_t out_features,
                           const std::optional<at::Tensor>& bias, std::optional<at::ScalarType> out_dtype) {
  constexpr const char* op = "int4_linear";
  TORCH_CHECK(x.device().is_cpu(), op, ": x must be a CPU tensor here, got ", x.device());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": x must be float32, bfloat16 or float16, got ",
              x.scalar_type());
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least one dimension (..., K)");
  const Int4PackedHeader h = read_header(w_packed, op);
  TORCH_CHECK(out_features == h.n, op, ": out_features=", out_features, " but w_packed holds N=", h.n);
  const int64_t n = h.n, k = h.k, k_pad = h.k_pad, groups = h.groups;
  TORCH_CHECK(x.size(-1) == k, op, ": x has K=", x.size(-1), " in its last dimension but the weight has K=", k);
  std::optional<at::Tensor> b;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(at::isFloatingType(bias->scalar_type()) && bias->dim() == 1 && bias->size(0) == n, op,
                ": bias must be a float tensor of shape [N] = [", n, "], got ", bias->scalar_type(), " ",
                bias->sizes());
    b = bias->to(at::kFloat).contiguous();
  }
  const at::ScalarType out_t = out_dtype.value_or(x.scalar_type());
  TORCH_CHECK(out_t == at::kFloat || out_t == at::kBFloat16 || out_t == at::kHalf, op,
              ": out_dtype must be float32, bfloat16 or float16, got ", out_t);
  const at::ScalarType kernel_out_t = out_t == at::kHalf ? at::kFloat : out_t;
  auto out_shape = x.sizes().vec();
  out_shape.back() = n;

  const at::Tensor xc = (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16) ? x : x.to(at::kFloat);
  at::Tensor x2 = xc.reshape({-1, k});
  if (x2.size(0) > 0 && x2.stride(1) != 1) x2 = x2.contiguous();
  const int64_t m = x2.size(0);
  at::Tensor out = at::empty({m, n}, x.options().dtype(kernel_out_t));
  if (m > 0) {
    at::Tensor q = at::empty({m, k_pad}, x.options().dtype(at::kChar));
    at::Tensor sa = at::empty({m, groups}, x.options().dtype(at::kFloat));
    at::Tensor ca = at::empty({m, groups}, x.options().dtype(at::kFloat));
    Int4QuantizeParams qp{};
    qp.x = x2.data_ptr();
    qp.x_kind = x2.scalar_type() == at::kFloat ? Int4FloatKind::kF32 : Int4FloatKind::kBF16;
    qp.ldx = x2.stride(0);
    qp.k = k;
    qp.k_pad = k_pad;
    qp.group_size = h.group_size;
    qp.groups = groups;
    qp.q = q.data_ptr<int8_t>();
    qp.a_scale = sa.data_ptr<float>();
    qp.a_corr = ca.data_ptr<float>();
    const auto [qfn, qlevel] = kQuantize.select(active_isa(), qp);
    record_kernel_isa("int4_quantize_rows", qlevel);
    const int64_t grain_values = kernels::int4_policy(qlevel).quantize_grain_values;
    const QuantizeFn qkernel = qfn;
    at::parallel_for(0, m, std::max<int64_t>(1, grain_values / k_pad), [&](int64_t b0, int64_t e0) {
      qkernel(qp, b0, e0);
    });

    Int4GemmParams p{};
    p.a = q.data_ptr<int8_t>();
    p.lda = k_pad;
    p.a_scale = sa.data_ptr<float>();
    p.a_corr = ca.data_ptr<float>();
    p.ldas = groups;
    p.w = w_packed.data_ptr<uint8_t>() + kInt4HeaderBytes;
    p.bias = b ? b->data_ptr<float>() : nullptr;
    p.out = out.data_ptr();
    p.out_kind = kernel_out_t == at::kFloat ? Int4FloatKind::kF32 : Int4FloatKind::kBF16;
    p.ldo = n;
    p.m = m;
    p.n = n;
    p.group_size = h.group_size;
    p.groups = groups;
    const auto [fn, level] = kGemm.select(active_isa(), p);
    record_kernel_isa(op, level);
    const GemmFn kernel = fn;
    const int64_t blocks = h.n_pad / kInt4NR;
    // Whole column blocks per thread when there are enough; otherwise split rows too.
    const Int4Policy policy = kernels::int4_policy(level);
    const int64_t tasks = policy.tasks_per_thread * at::get_num_threads();
    const int64_t row_chunk = blocks >= tasks ? m : std::max<int64_t>(policy.min_row_chunk, (m + tasks - 1) / tasks);
    const int64_t row_chunks = (m + row_chunk - 1) / row_chunk;
    const size_t out_elem = out.element_size();
    at::parallel_for(0, row_chunks * blocks, 1, [&](int64_t begin, int64_t end) {
      int64_t t = begin;
      while (t < end) {
        const int64_t rc = t / blocks, nb0 = t % blocks;
        const int64_t nb1 = std::min(blocks, nb0 + (end - t));
        const int64_t row0 = rc * row_chunk;
        Int4GemmParams tp = p;
        tp.a += row0 * p.lda;
        tp.a_scale += row0 * p.ldas;
        tp.a_corr += row0 * p.ldas;
        tp.out = static_cast<char*>(p.out) + row0 * p.ldo * out_elem;
        tp.m = std::min(row_chunk, m - row0);
        kernel(tp, nb0, nb1);
        t += nb1 - nb0;
      }
    });
  }
  if (kernel_out_t != out_t) out = out.to(out_t);
  return out.view(out_shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(compressops, CPU, m) {
  m.impl("int4_pack_weight", &int4_pack_weight_cpu);
  m.impl("int4_linear", &int4_linear_cpu);
}

}  // namespace compressops::cpu
