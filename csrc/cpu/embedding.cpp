// Host side of the embedding gathers on CPU (formats: compressops/formats/embedding.py): argument
// checks with the Python validation's messages, the index range check (before any kernel reads a
// row), the level choice (once per call) and at::parallel_for over output rows. The loops are in
// kernels/embedding/.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>

#include "../common/int8_layout.h"
#include "arg_checks.h"
#include "dispatch.h"
#include "kernel_record.h"
#include "kernels/embedding/kernel.h"
#include "pack_tensor.h"

namespace compressops::cpu {
namespace {

using kernels::EmbeddingParams;
using EmbeddingFn = bool (*)(const EmbeddingParams&, int64_t, int64_t);

const KernelTable<EmbeddingFn> kInt8 = COMPRESSOPS_KERNEL_TABLE(kernels::int8_embedding_rows);
const KernelTable<EmbeddingFn> kInt8Packed = COMPRESSOPS_KERNEL_TABLE(kernels::int8_embedding_packed_rows);
const KernelTable<EmbeddingFn> kInt4 = COMPRESSOPS_KERNEL_TABLE(kernels::int4_embedding_rows);
KernelRecord kInt8Record("int8_embedding", [] { return kInt8.levels(); });
KernelRecord kInt8PackedRecord("int8_embedding_packed", [] { return kInt8Packed.levels(); });
KernelRecord kInt4Record("int4_embedding", [] { return kInt4.levels(); });

// Output rows one parallel task takes at least: a row is D values, a few hundred bytes to kilobytes.
constexpr int64_t kRowGrain = 16;

void check_indices(const at::Tensor& indices, const char* op) {
  TORCH_CHECK_VALUE(indices.scalar_type() == at::kLong || indices.scalar_type() == at::kInt, op,
                    ": indices must be int32 or int64, got ", py_dtype(indices.scalar_type()));
  TORCH_CHECK_VALUE(indices.device().is_cpu(), op, ": indices must be a CPU tensor here, got ", indices.device());
}

void check_cpu(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": ", name, " must be on indices's device (cpu), got ", t.device());
}

void check_frozen(const at::Tensor& scale, const char* op, const char* name) {
  TORCH_CHECK_VALUE(!(scale.requires_grad() && at::GradMode::is_enabled()), op, ": ", name,
                    " requires grad, but the compressed table is frozen (no gradient); detach it");
}

void check_row_scale(const at::Tensor& scale, int64_t rows, const char* op) {
  TORCH_CHECK_VALUE(scale.scalar_type() == at::kFloat && scale.dim() == 1 && scale.size(0) == rows, op,
                    ": weight_scale must be float32 of shape [V] = [", rows, "], got ", py_dtype(scale.scalar_type()),
                    " ", py_shape(scale.sizes()));
}

// Every index in [0, rows): the smallest one when one is negative, the largest otherwise, is named
// (formats/embedding.py check_index_range). An IndexError, as nn.Embedding raises.
template <typename T>
void check_range(const T* idx, int64_t count, int64_t rows, const char* op) {
  if (count == 0) return;
  T lo = idx[0], hi = idx[0];
  for (int64_t i = 1; i < count; ++i) {
    lo = std::min(lo, idx[i]);
    hi = std::max(hi, idx[i]);
  }
  const int64_t bad = lo < 0 ? static_cast<int64_t>(lo) : static_cast<int64_t>(hi);
  TORCH_CHECK_INDEX(lo >= 0 && static_cast<int64_t>(hi) < rows, op, ": indices must lie in [0, ", rows,
                    ") (the table's rows), found ", bad);
}

// The contiguous indices, range-checked, and the params' index pointer set.
at::Tensor index_rows(const at::Tensor& indices, int64_t rows, const char* op, EmbeddingParams* p) {
  at::Tensor idx = indices.contiguous();
  p->idx64 = nullptr;
  p->idx32 = nullptr;
  if (idx.scalar_type() == at::kLong) {
    p->idx64 = idx.data_ptr<int64_t>();
    check_range(p->idx64, idx.numel(), rows, op);
  } else {
    p->idx32 = idx.data_ptr<int32_t>();
    check_range(p->idx32, idx.numel(), rows, op);
  }
  return idx;
}

// Runs `table`'s kernel over every output row into a float32 [count, d] tensor; returns it shaped
// indices.shape + (d,) in out_t.
at::Tensor gather(const KernelTable<EmbeddingFn>& table, KernelRecord& record, EmbeddingParams p,
                  const at::Tensor& indices, int64_t d, at::ScalarType out_t) {
  const int64_t count = indices.numel();
  at::Tensor out = at::empty({count, d}, indices.options().dtype(at::kFloat));
  p.out = out.data_ptr<float>();
  p.d = d;
  const auto [fn, level] = table.select(active_isa(), p);
  record.store(level);
  const EmbeddingFn kernel = fn;
  if (count > 0) {
    at::parallel_for(0, count, kRowGrain, [&](int64_t begin, int64_t end) { kernel(p, begin, end); });
  }
  auto shape = indices.sizes().vec();
  shape.push_back(d);
  return (out_t == at::kFloat ? out : out.to(out_t)).view(shape);
}

at::Tensor int8_embedding_cpu(const at::Tensor& indices, const at::Tensor& weight, const at::Tensor& weight_scale,
                              std::optional<at::ScalarType> out_dtype) {
  constexpr const char* op = "int8_embedding";
  check_indices(indices, op);
  check_cpu(weight, op, "weight");
  check_cpu(weight_scale, op, "weight_scale");
  TORCH_CHECK_VALUE(weight.scalar_type() == at::kChar && weight.dim() == 2, op, ": weight must be int8 [V, D], got ",
                    py_dtype(weight.scalar_type()), " ", py_shape(weight.sizes()));
  const int64_t v = weight.size(0), d = weight.size(1);
  TORCH_CHECK_VALUE(v >= 1 && d >= 1, op, ": weight must have V, D >= 1, got ", py_shape(weight.sizes()));
  check_row_scale(weight_scale, v, op);
  const at::ScalarType out_t = resolve_out_dtype(out_dtype, at::kFloat, op);
  check_frozen(weight_scale, op, "weight_scale");
  EmbeddingParams p{};
  const at::Tensor idx = index_rows(indices, v, op, &p);
  const at::Tensor w = weight.contiguous();
  const at::Tensor s = weight_scale.contiguous();
  p.w8 = w.data_ptr<int8_t>();
  p.scale = s.data_ptr<float>();
  return gather(kInt8, kInt8Record, p, idx, d, out_t);
}

at::Tensor int8_embedding_packed_cpu(const at::Tensor& indices, const at::Tensor& w_packed,
                                     const at::Tensor& weight_scale, int64_t embedding_dim,
                                     std::optional<at::ScalarType> out_dtype) {
  constexpr const char* op = "int8_embedding_packed";
  check_indices(indices, op);
  check_cpu(w_packed, op, "w_packed");
  check_cpu(weight_scale, op, "weight_scale");
  // The int8 linear pack's header checks (formats/int8.py read_header), so the kernel may read the
  // whole blocked layout.
  const PackReader reader{op, "w_packed", "int8_pack_weight"};
  const PackHeader h = read_pack_tensor(w_packed, kInt8PackTag, kInt8PackVersion, reader, 2);
  check_pack_tensor_layout(w_packed, h, int8_pack_fields(), {h.n}, int8_packed_bytes(h.n, h.k), reader);
  TORCH_CHECK_VALUE(h.k <= kInt8MaxK, op, ": w_packed's header has K=", h.k, ", more than an int8 pack holds (",
                    kInt8MaxK, ", int32 accumulation)");
  TORCH_CHECK_VALUE(h.k == embedding_dim, op, ": embedding_dim=", embedding_dim, " but w_packed's header has D=",
                    h.k);
  check_row_scale(weight_scale, h.n, op);
  const at::ScalarType out_t = resolve_out_dtype(out_dtype, at::kFloat, op);
  check_frozen(weight_scale, op, "weight_scale");
  EmbeddingParams p{};
  const at::Tensor idx = index_rows(indices, h.n, op, &p);
  const at::Tensor s = weight_scale.contiguous();
  p.w8 = reinterpret_cast<const int8_t*>(w_packed.data_ptr<uint8_t>() + kPackHeaderBytes);
  p.k_pad = int8_round_up(h.k, kInt8KR);
  p.scale = s.data_ptr<float>();
  return gather(kInt8Packed, kInt8PackedRecord, p, idx, h.k, out_t);
}

at::Tensor int4_embedding_cpu(const at::Tensor& indices, const at::Tensor& qweight, const at::Tensor& scales,
                              const std::optional<at::Tensor>& zeros, int64_t embedding_dim,
                              std::optional<at::ScalarType> out_dtype) {
  constexpr const char* op = "int4_embedding";
  check_indices(indices, op);
  check_cpu(qweight, op, "qweight");
  check_cpu(scales, op, "scales");
  const bool has_zeros = zeros.has_value() && zeros->defined();
  if (has_zeros) check_cpu(*zeros, op, "zeros");
  TORCH_CHECK_VALUE(qweight.scalar_type() == at::kByte && qweight.dim() == 2 && qweight.size(0) >= 1 &&
                        qweight.size(1) >= 1,
                    op, ": qweight must be uint8 [V, D_pad/2] with V, D_pad >= 1, got ",
                    py_dtype(qweight.scalar_type()), " ", py_shape(qweight.sizes()));
  const int64_t v = qweight.size(0), dp = 2 * qweight.size(1);
  TORCH_CHECK_VALUE(scales.scalar_type() == at::kFloat && scales.dim() == 2 && scales.size(0) == v &&
                        scales.size(1) >= 1,
                    op, ": scales must be float32 [V, G] = [", v, ", G], got ", py_dtype(scales.scalar_type()), " ",
                    py_shape(scales.sizes()));
  const int64_t g = scales.size(1), group = dp / g;
  TORCH_CHECK_VALUE(group * g == dp && (group == 32 || group == 64 || group == 128 || group == 256), op,
                    ": qweight's D_pad=", dp, " over scales' G=", g,
                    " groups must give a group size of 32, 64, 128 or 256");
  TORCH_CHECK_VALUE(dp - group < embedding_dim && embedding_dim <= dp, op, ": embedding_dim=", embedding_dim,
                    " does not fit D_pad=", dp, " (group size ", group, "): need ", dp - group,
                    " < embedding_dim <= ", dp);
  if (has_zeros) {
    TORCH_CHECK_VALUE(zeros->scalar_type() == at::kByte && zeros->dim() == 2 && zeros->size(0) == v &&
                          zeros->size(1) == g,
                      op, ": zeros must be uint8 [V, G] = [", v, ", ", g, "] or None (symmetric), got ",
                      py_dtype(zeros->scalar_type()), " ", py_shape(zeros->sizes()));
  }
  const at::ScalarType out_t = resolve_out_dtype(out_dtype, at::kFloat, op);
  check_frozen(scales, op, "scales");
  EmbeddingParams p{};
  const at::Tensor idx = index_rows(indices, v, op, &p);
  const at::Tensor q = qweight.contiguous();
  const at::Tensor s = scales.contiguous();
  const at::Tensor z = has_zeros ? zeros->contiguous() : at::Tensor();
  p.q4 = q.data_ptr<uint8_t>();
  p.scale = s.data_ptr<float>();
  p.zeros = has_zeros ? z.data_ptr<uint8_t>() : nullptr;
  p.groups = g;
  p.group_size = group;
  return gather(kInt4, kInt4Record, p, idx, embedding_dim, out_t);
}

}  // namespace

TORCH_LIBRARY_IMPL(compressops, CPU, m) {
  m.impl("int8_embedding", &int8_embedding_cpu);
  m.impl("int8_embedding_packed", &int8_embedding_packed_cpu);
  m.impl("int4_embedding", &int4_embedding_cpu);
}

}  // namespace compressops::cpu
