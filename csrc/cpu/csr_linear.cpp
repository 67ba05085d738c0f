// Host side of the CSR sparse linear ops on CPU: index validation and packing (csr_pack), argument
// and pack checks (the messages of compressops/formats/csr.py), activation staging, ISA selection
// once per call, and at::parallel_for over row ranges of equal work (nonzeros plus a per-row cost,
// found by binary search on the row pointer), not equal row counts. Format: compressops/formats/csr.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <c10/util/BFloat16.h>

#include <algorithm>
#include <atomic>
#include <cstring>

#include "dense_route.h"
#include "dispatch.h"
#include "kernels/csr/policy.h"
#include "kernel_record.h"
#include "kernels/csr/columns.h"
#include "kernels/csr/kernel.h"
#include "pack_tensor.h"

namespace compressops::cpu {
namespace {

using kernels::CsrParams;
using kernels::CsrPolicy;
using SpmmFn = bool (*)(const CsrParams&, int64_t, int64_t);

const KernelTable<SpmmFn> kSpmm = COMPRESSOPS_KERNEL_TABLE(kernels::csr_spmm);
// What each op's last call ran on, and the levels its kernels exist at (kernel_record.h).
const KernelRecord kRecord0("csr_pack", [] { return std::vector<std::string>(); });
const KernelRecord kRecord1("csr_linear", [] { return kSpmm.levels(); });

constexpr const char* kTag = "csr";
constexpr uint32_t kVersion = 1;
constexpr int64_t kMaxNnz = int64_t{1} << 48;  // keeps every byte count of a pack far from overflow

int64_t col_bytes(int64_t k) { return k <= 65536 ? 2 : 4; }

int64_t packed_bytes(int64_t n, int64_t k, int64_t nnz) {
  return kPackHeaderBytes + 8 * (n + 1) + (col_bytes(k) * nnz + 7) / 8 * 8;
}


at::Tensor csr_pack_cpu(const at::Tensor& crow, const at::Tensor& col, int64_t in_features) {
  constexpr const char* op = "csr_pack";
  TORCH_CHECK_VALUE(crow.device().is_cpu() && col.device().is_cpu(), op, ": crow and col must be CPU tensors here");
  TORCH_CHECK_VALUE((crow.scalar_type() == at::kInt || crow.scalar_type() == at::kLong) && crow.dim() == 1 &&
                        crow.size(0) >= 2 && crow.size(0) <= kPackMaxDim,
                    op, ": crow must be a 1-D int32/int64 tensor of shape [N+1] with 1 <= N < 2^31, got ",
                    py_dtype(crow.scalar_type()), " ", py_shape(crow.sizes()));
  TORCH_CHECK_VALUE((col.scalar_type() == at::kInt || col.scalar_type() == at::kUInt16) && col.dim() == 1, op,
                    ": col must be a 1-D int32 or uint16 tensor, got ", py_dtype(col.scalar_type()), " ",
                    py_shape(col.sizes()));
  TORCH_CHECK_VALUE(in_features >= 1 && in_features < kPackMaxDim, op,
                    ": in_features must be in [1, 2^31), got ", in_features);
  const int64_t n = crow.size(0) - 1, nnz = col.size(0), k = in_features;
  const at::Tensor cr = crow.to(at::kLong).contiguous();
  const int64_t* r = cr.data_ptr<int64_t>();
  bool monotone = r[0] == 0 && r[n] == nnz;
  for (int64_t i = 0; monotone && i < n; ++i) monotone = r[i + 1] >= r[i];
  TORCH_CHECK_VALUE(monotone, op, ": crow must start at 0, never decrease and end at nnz = ", nnz,
                    " (the length of col)");
  const at::Tensor cc = col.to(at::kLong).contiguous();
  const int64_t* c = cc.data_ptr<int64_t>();
  int64_t col_end = 0;
  for (int64_t j = 0; j < nnz; ++j) {
    TORCH_CHECK_VALUE(c[j] >= 0 && c[j] < k, op, ": col values must lie in [0, in_features) = [0, ", k,
                      "), got col[", j, "] = ", c[j]);
    col_end = std::max(col_end, c[j] + 1);
  }
  const int64_t cb = col_bytes(k), bytes = packed_bytes(n, k, nnz);
  at::Tensor out = new_pack_tensor(make_pack_header(kTag, kVersion, n, k, {nnz, cb, col_end}), {n}, bytes,
                                   crow.options());
  uint8_t* rowptr = out.data_ptr<uint8_t>() + kPackHeaderBytes;
  std::memcpy(rowptr, r, 8 * (n + 1));
  uint8_t* cols = rowptr + 8 * (n + 1);
  for (int64_t j = 0; j < nnz; ++j) {
    if (cb == 2) {
      const uint16_t v = static_cast<uint16_t>(c[j]);
      std::memcpy(cols + 2 * j, &v, 2);
    } else {
      const int32_t v = static_cast<int32_t>(c[j]);
      std::memcpy(cols + 4 * j, &v, 4);
    }
  }
  uint8_t* const end = out.data_ptr<uint8_t>() + bytes;  // the columns' padding to 8 bytes
  std::memset(cols + cb * nnz, 0, static_cast<size_t>(end - (cols + cb * nnz)));
  return out;
}

// A CSR pack as the kernels read it, after read_pack checked it.
struct CsrPack {
  int64_t n, k, nnz;
  int col_bytes;
  const int64_t* rowptr;  // [n+1]
  const uint8_t* cols;    // [nnz] of col_bytes each
};

// The header of `packed`, every field and the shape checked against what N, K and nnz imply
// (pack_tensor.h), then the row pointer (O(N)): so every nonzero index a kernel walks lies in
// [0, nnz), inside the columns and the values. The columns are checked later, by the pass that
// first reads them (raise_bad_columns). Same checks and messages as formats/csr.py read_header.
CsrPack read_pack(const at::Tensor& packed, const char* op) {
  const PackReader reader{op, "packed", "csr_pack"};
  const PackHeader h = read_pack_tensor(packed, kTag, kVersion, reader, 2);
  const std::string who = std::string(op) + ": packed";
  const int64_t nnz = h.fields[0], col_end = h.fields[2];
  TORCH_CHECK_VALUE(nnz >= 0 && nnz < kMaxNnz, who, "'s header has nnz=", nnz, "; it must be in [0, 2^48)");
  TORCH_CHECK_VALUE(nnz == 0 ? col_end == 0 : (col_end >= 1 && col_end <= h.k), who, "'s header has column end ",
                    col_end, " for K=", h.k, " and nnz=", nnz, "; it must be in [1, K] (0 when nnz = 0)");
  const int64_t cb = col_bytes(h.k);
  check_pack_tensor_layout(packed, h, {nnz, cb, col_end}, {h.n}, packed_bytes(h.n, h.k, nnz), reader);
  const uint8_t* base = packed.data_ptr<uint8_t>() + kPackHeaderBytes;
  const int64_t* rowptr = reinterpret_cast<const int64_t*>(base);
  bool ok = rowptr[0] == 0 && rowptr[h.n] == nnz;
  for (int64_t i = 0; ok && i < h.n; ++i) ok = rowptr[i + 1] >= rowptr[i];
  TORCH_CHECK_VALUE(ok, who, "'s row pointer is corrupt (it must start at 0, never decrease and end at nnz = ", nnz,
                    "); repack it with compressops.ops.csr_pack");
  return {h.n, h.k, nnz, static_cast<int>(cb), rowptr, base + 8 * (h.n + 1)};
}

// The error of a pack with a column outside [0, K) (formats/csr.py check_linear's last check).
[[noreturn]] void raise_bad_columns(const char* op, int64_t k) {
  TORCH_CHECK_VALUE(false, op, ": packed holds a column outside [0, K) = [0, ", k,
                    ") (its column bytes are corrupt); repack it with compressops.ops.csr_pack");
}

// Every level's batch chunks fit the transposed kernels' staging tile.
constexpr bool chunks_fit_lanes() {
  for (int l = 0; l < kNumIsaLevels; ++l) {
    for (const bool emulated : {false, true}) {
      if (kernels::csr_policy({static_cast<CpuIsa>(l), emulated}).chunk_m > kernels::kCsrMaxLanes) return false;
    }
  }
  return true;
}
static_assert(chunks_fit_lanes(), "csr policy: chunk_m must be at most kCsrMaxLanes");

// Whether the call takes the dense route (dense_route.h): as forced for the process, else by the
// policy's rule, fitted per level (kernels/csr/policy.h).
bool csr_prefer_dense(const CsrPolicy& policy, int64_t m, int64_t n, int64_t k, int64_t nnz) {
  const SparseRoute forced = forced_sparse_route();
  if (forced != SparseRoute::kAuto) return forced == SparseRoute::kDense;
  return policy.dense(m, n, k, nnz);
}

// Rows [n0, n1) of the dense fp32 weight [n, k] (row stride k); duplicate columns add up, as in
// the reference. Each task checks its rows' columns before it writes: one outside [0, k) sets
// `bad_columns` and the task writes nothing.
template <typename V>
void decode_rows(const int64_t* rowptr, const uint8_t* cols, int col_bytes, const V* values, int64_t k, int64_t n0,
                 int64_t n1, int64_t grain, float* dst, std::atomic<bool>& bad_columns) {
  at::parallel_for(n0, n1, grain, [&](int64_t b, int64_t e) {
    if (!kernels::columns_in_range(cols, col_bytes, k, rowptr[b], rowptr[e])) {
      bad_columns = true;
      return;
    }
    for (int64_t r = b; r < e; ++r) {
      float* w = dst + (r - n0) * k;
      std::memset(w, 0, sizeof(float) * k);
      if (col_bytes == 2) {
        const uint16_t* c = reinterpret_cast<const uint16_t*>(cols);
        for (int64_t j = rowptr[r]; j < rowptr[r + 1]; ++j) w[c[j]] += static_cast<float>(values[j]);
      } else {
        const int32_t* c = reinterpret_cast<const int32_t*>(cols);
        for (int64_t j = rowptr[r]; j < rowptr[r + 1]; ++j) w[c[j]] += static_cast<float>(values[j]);
      }
    }
  });
}

at::Tensor csr_linear_cpu(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& values,
                          const std::optional<at::Tensor>& bias, std::optional<at::ScalarType> out_dtype) {
  constexpr const char* op = "csr_linear";
  check_float_input(x, op);
  const CsrPack pack = read_pack(packed, op);
  const int64_t n = pack.n, k = pack.k, nnz = pack.nnz;
  TORCH_CHECK_VALUE(x.size(-1) == k, op, ": x has K=", x.size(-1), " in its last dimension but the pack has K=", k);
  TORCH_CHECK_VALUE((values.scalar_type() == at::kFloat || values.scalar_type() == at::kBFloat16) &&
                        values.dim() == 1 && values.size(0) == nnz,
                    op, ": values must be float32 or bfloat16 of shape [nnz] = [", nnz, "], got ",
                    py_dtype(values.scalar_type()), " ", py_shape(values.sizes()));
  TORCH_CHECK_VALUE(values.device().is_cpu(), op, ": values must be a CPU tensor here, got ", values.device());
  const std::optional<at::Tensor> b = checked_bias(bias, n, op);
  const at::ScalarType out_t = resolve_out_dtype(out_dtype, x.scalar_type(), op);
  const at::Tensor vals = values.contiguous();
  at::Tensor x2 = x.reshape({-1, k});
  if (x2.scalar_type() != at::kFloat || (x2.size(0) > 0 && !x2.is_contiguous())) x2 = x2.to(at::kFloat).contiguous();
  const int64_t m = x2.size(0);
  at::Tensor out = at::empty({m, n}, x.options().dtype(at::kFloat));
  const int64_t* rowptr = pack.rowptr;
  const uint8_t* cols = pack.cols;
  // The kernels (and the dense route's decode) check each task's columns as they first read them,
  // so the check costs no pass of its own; an empty batch runs no kernel and checks them here.
  std::atomic<bool> bad_columns{false};
  if (m == 0 && !kernels::columns_in_range(cols, pack.col_bytes, k, 0, nnz)) raise_bad_columns(op, k);
  if (m > 0) {
    CsrParams p{};
    p.rowptr = rowptr;
    p.cols = cols;
    p.col_bytes = pack.col_bytes;
    p.values = vals.data_ptr();
    p.values_bf16 = vals.scalar_type() == at::kBFloat16;
    p.x = x2.data_ptr<float>();
    p.ldx = x2.stride(0);
    p.bias = b ? b->data_ptr<float>() : nullptr;
    p.out = out.data_ptr<float>();
    p.ldo = n;
    p.m = m;
    p.n = n;
    p.k = k;
    const auto [fn, level] = kSpmm.select(active_isa(), p);
    const CsrPolicy policy = kernels::csr_policy(level);
    if (csr_prefer_dense(policy, m, n, k, nnz) || !all_finite(x2)) {  // NaN/Inf: dense_route.h
      const int cb = pack.col_bytes;
      const int64_t grain = policy.decode_grain_rows;
      if (p.values_bf16) {
        const c10::BFloat16* v = vals.data_ptr<c10::BFloat16>();
        dense_route_linear(x2, n, k, b, out, [&](int64_t n0, int64_t n1, float* dst) {
          decode_rows(rowptr, cols, cb, v, k, n0, n1, grain, dst, bad_columns);
        });
      } else {
        const float* v = vals.data_ptr<float>();
        dense_route_linear(x2, n, k, b, out, [&](int64_t n0, int64_t n1, float* dst) {
          decode_rows(rowptr, cols, cb, v, k, n0, n1, grain, dst, bad_columns);
        });
      }
      if (bad_columns) raise_bad_columns(op, k);
      record_kernel_route(op, "dense");
    } else {
      record_kernel_isa(op, level);
      // Pieces of equal cost: cost(rows [0, i)) = rowptr[i] + row_cost * i.
      const int64_t row_cost = policy.row_cost;
      const int64_t pieces = std::min<int64_t>(n, policy.pieces_per_thread * at::get_num_threads());
      const int64_t total = nnz + row_cost * n;
      std::vector<int64_t> bounds(pieces + 1);
      bounds[0] = 0;
      bounds[pieces] = n;
      for (int64_t t = 1; t < pieces; ++t) {
        const int64_t target = total * t / pieces;
        int64_t lo = bounds[t - 1], hi = n;  // first i with cost(i) >= target
        while (lo < hi) {
          const int64_t mid = (lo + hi) / 2;
          if (p.rowptr[mid] + row_cost * mid < target) lo = mid + 1; else hi = mid;
        }
        bounds[t] = lo;
      }
      const SpmmFn kernel = fn;
      // Batches of more than chunk_m rows run in chunks of that many: the kernels' time grows
      // faster than the batch once the transposed activations outgrow the cache.
      const int64_t chunk = policy.chunk_m;
      at::Tensor xt;
      for (int64_t r0 = 0; r0 < m; r0 += chunk) {
        CsrParams pc = p;
        pc.check_columns = r0 == 0;  // the first chunk checks every row's columns
        pc.m = std::min(chunk, m - r0);
        pc.x = p.x + r0 * p.ldx;
        pc.out = p.out + r0 * p.ldo;
        if (level.level != CpuIsa::kScalar && policy.transposed(pc.m)) {
          const int64_t ldt = (pc.m + 7) / 8 * 8;
          // Only the padding lanes need zeros: no memset of all K x ldt floats before the copy.
          if (!xt.defined() || xt.size(1) != ldt) xt = at::empty({k, ldt}, x2.options());
          if (ldt > pc.m) xt.narrow(1, pc.m, ldt - pc.m).zero_();
          xt.narrow(1, 0, pc.m).copy_(x2.narrow(0, r0, pc.m).t());
          pc.xt = xt.data_ptr<float>();
          pc.ldt = ldt;
        }
        at::parallel_for(0, pieces, 1, [&](int64_t b0, int64_t e0) {
          for (int64_t t = b0; t < e0; ++t) {
            if (bounds[t + 1] > bounds[t] && !kernel(pc, bounds[t], bounds[t + 1])) bad_columns = true;
          }
        });
        if (bad_columns) raise_bad_columns(op, k);
      }
    }
  }
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = n;
  return (out_t == at::kFloat ? out : out.to(out_t)).view(shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(compressops, CPU, m) {
  m.impl("csr_pack", &csr_pack_cpu);
  m.impl("csr_linear", &csr_linear_cpu);
}

}  // namespace compressops::cpu
