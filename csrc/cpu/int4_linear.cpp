// Host side of the int4 linear family on CPU (format: compressops/formats/int4.py, layout:
// csrc/common/int4_layout.h): argument checks, packing, ISA selection (once per call) and
// at::parallel_for over column blocks. The arithmetic lives in kernels/int4/.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <string>

#include "../common/int4_layout.h"
#include "dispatch.h"
#include "kernel_record.h"
#include "kernels/int4/kernel.h"
#include "kernels/int4/policy.h"
#include "pack_tensor.h"

namespace compressops::cpu {
namespace {

using kernels::Int4FloatKind;
using kernels::Int4GemmParams;
using kernels::Int4Policy;
using kernels::Int4QuantizeParams;

using QuantizeFn = bool (*)(const Int4QuantizeParams&, int64_t, int64_t);
using GemmFn = bool (*)(const Int4GemmParams&, int64_t, int64_t);

// GEMM kernels at scalar, avx2 and avx512_vnni; quantization at scalar and avx2. A level without
// a kernel falls down the chain (avx512 runs avx2's, amx avx512_vnni's GEMM).
const KernelTable<QuantizeFn> kQuantize = COMPRESSOPS_KERNEL_TABLE(kernels::int4_quantize_rows);
const KernelTable<GemmFn> kGemm = COMPRESSOPS_KERNEL_TABLE(kernels::int4_gemm);
// What each op's last call ran on, and the levels its kernels exist at (kernel_record.h).
const KernelRecord kRecord0("int4_pack_weight", [] { return std::vector<std::string>(); });
const KernelRecord kRecord1("int4_quantize_rows", [] { return kQuantize.levels(); });
const KernelRecord kRecord2("int4_linear", [] { return kGemm.levels(); });

constexpr const char* kPackOp = "int4_pack_weight";

// What the header of an int4 pack says, every field and the pack's size checked against N and K.
struct Int4Layout {
  int64_t n, k, group_size, groups, k_pad, n_pad;
};

// The layout of `packed`; raises (with compressops/formats/int4.py read_header's messages) unless
// the header is an int4 one whose fields and size fit N and K, so the kernels may read the body.
Int4Layout read_layout(const at::Tensor& packed, const char* op) {
  const PackReader reader{op, "w_packed", kPackOp};
  const PackHeader h = read_pack_tensor(packed, kInt4PackTag, kInt4PackVersion, reader, 2);
  const int64_t gs = h.fields[0];
  TORCH_CHECK_VALUE(int4_valid_group_size(gs), op, ": w_packed's header has group_size=", gs,
                    ", not 32, 64, 128 or 256; repack it with compressops.ops.", kPackOp);
  const bool symmetric = h.fields[2] != 0;
  check_pack_tensor_layout(packed, h, int4_pack_fields(h.k, gs, symmetric), {h.n},
                           int4_packed_bytes(h.n, h.k, gs, symmetric), reader);
  const int64_t groups = int4_groups(h.k, gs);
  return {h.n, h.k, gs, groups, groups * gs, int4_round_up(h.n, kInt4NR)};
}

at::Tensor int4_pack_weight_cpu(const at::Tensor& qweight, const at::Tensor& scales,
                                const std::optional<at::Tensor>& zeros, int64_t in_features, int64_t group_size) {
  constexpr const char* op = kPackOp;
  TORCH_CHECK_VALUE(int4_valid_group_size(group_size), op, ": group_size must be 32, 64, 128 or 256, got ",
                    group_size);
  TORCH_CHECK_VALUE(qweight.scalar_type() == at::kByte && qweight.dim() == 2, op,
                    ": qweight must be uint8 [N, K_pad/2], got ", py_dtype(qweight.scalar_type()), " ",
                    py_shape(qweight.sizes()));
  const int64_t n = qweight.size(0), k = in_features;
  TORCH_CHECK_VALUE(n >= 1 && n < kPackMaxDim && k >= 1 && k < kPackMaxDim, op,
                    ": need 1 <= N, in_features < 2^31, got N=", n, ", in_features=", k);
  const int64_t groups = int4_groups(k, group_size), k_pad = groups * group_size;
  TORCH_CHECK_VALUE(qweight.size(1) * 2 == k_pad, op, ": qweight must have K_pad/2 = ", k_pad / 2,
                    " columns (in_features=", k, " padded to group_size=", group_size, "), got ", qweight.size(1));
  TORCH_CHECK_VALUE(scales.scalar_type() == at::kFloat && scales.dim() == 2 && scales.size(0) == n &&
                        scales.size(1) == groups,
                    op, ": scales must be float32 [N, G] = [", n, ", ", groups, "], got ",
                    py_dtype(scales.scalar_type()), " ", py_shape(scales.sizes()));
  TORCH_CHECK_VALUE(scales.device() == qweight.device(), op, ": scales must be on qweight's device (",
                    qweight.device(), "), got ", scales.device());
  const bool symmetric = !zeros.has_value() || !zeros->defined();
  if (!symmetric) {
    TORCH_CHECK_VALUE(zeros->scalar_type() == at::kByte && zeros->dim() == 2 && zeros->size(0) == n &&
                          zeros->size(1) == groups,
                      op, ": zeros must be uint8 [N, G] = [", n, ", ", groups, "] or None (symmetric), got ",
                      py_dtype(zeros->scalar_type()), " ", py_shape(zeros->sizes()));
    TORCH_CHECK_VALUE(zeros->device() == qweight.device(), op, ": zeros must be on qweight's device (",
                      qweight.device(), "), got ", zeros->device());
    TORCH_CHECK_VALUE(zeros->max().item<uint8_t>() <= 15, op, ": zeros must lie in [0, 15]");
  }
  const at::Tensor qw = qweight.contiguous();
  const at::Tensor sc = scales.contiguous();
  const at::Tensor zp = symmetric ? at::Tensor() : zeros->contiguous();
  const int64_t n_pad = int4_round_up(n, kInt4NR);
  const int64_t body_bytes = int4_body_bytes(n, k, group_size);
  const PackHeader header =
      make_pack_header(kInt4PackTag, kInt4PackVersion, n, k, int4_pack_fields(k, group_size, symmetric));
  at::Tensor packed = new_pack_tensor(header, {n}, int4_packed_bytes(n, k, group_size, symmetric), qweight.options());
  uint8_t* body = packed.data_ptr<uint8_t>() + kPackHeaderBytes;
  const uint8_t* src = qw.data_ptr<uint8_t>();
  const float* s_src = sc.data_ptr<float>();
  const uint8_t* z_src = symmetric ? nullptr : zp.data_ptr<uint8_t>();
  const int64_t gstride = int4_group_stride(group_size);
  const int64_t row_bytes = k_pad / 2;
  at::parallel_for(0, n_pad / kInt4NR, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t nb = b0; nb < b1; ++nb) {
      for (int64_t g = 0; g < groups; ++g) {
        uint8_t* dst = body + (nb * groups + g) * gstride;
        std::memset(dst, 0, static_cast<size_t>(gstride));  // padded columns: q = 0, s = 0, zscale = 0
        uint8_t* s_dst = dst + group_size * 4;
        for (int64_t c = 0; c < kInt4NR; ++c) {
          const int64_t row = nb * kInt4NR + c;
          if (row >= n) continue;
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
          // The scale's bytes are copied, not its value: the pack keeps the canonical scale bit for bit.
          const float* s = s_src + row * groups + g;
          const float z = symmetric ? 8.0f : static_cast<float>(z_src[row * groups + g]);
          const float zs = z * *s;
          std::memcpy(s_dst + 4 * c, s, sizeof(float));
          std::memcpy(s_dst + 4 * (kInt4NR + c), &zs, sizeof(float));
        }
      }
    }
  });
  if (!symmetric) std::memcpy(body + body_bytes, z_src, static_cast<size_t>(n * groups));
  return packed;
}

at::Tensor int4_linear_cpu(const at::Tensor& x, const at::Tensor& w_packed, const std::optional<at::Tensor>& bias,
                           std::optional<at::ScalarType> out_dtype) {
  constexpr const char* op = "int4_linear";
  check_float_input(x, op);
  const Int4Layout h = read_layout(w_packed, op);
  const int64_t n = h.n, k = h.k, k_pad = h.k_pad, groups = h.groups;
  TORCH_CHECK_VALUE(x.size(-1) == k, op, ": x has K=", x.size(-1), " in its last dimension but the weight has K=",
                    k);
  const std::optional<at::Tensor> b = checked_bias(bias, n, op);
  const at::ScalarType out_t = resolve_out_dtype(out_dtype, x.scalar_type(), op);
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
    p.w = w_packed.data_ptr<uint8_t>() + kPackHeaderBytes;
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
    // One run of whole rows per thread for a large batch (the policy's row_split_min_rows: at::parallel_for
    // gives each thread `blocks` consecutive tasks, one row chunk); otherwise whole column blocks per
    // thread when there are enough, and row chunks too when there are not.
    const Int4Policy policy = kernels::int4_policy(level);
    const int64_t threads = at::get_num_threads();
    const int64_t tasks = policy.tasks_per_thread * threads;
    const int64_t row_chunk = threads > 1 && m >= policy.row_split_min_rows * threads ? (m + threads - 1) / threads
                              : blocks >= tasks ? m
                                                : std::max<int64_t>(policy.min_row_chunk, (m + tasks - 1) / tasks);
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
