// Host side of the CSR sparse linear ops on CPU: index validation and packing (csr_pack), argument
// checks, activation staging, ISA selection once per call, and at::parallel_for over row ranges
// of equal work (nonzeros plus a per-row cost, found by binary search on the row pointer), not
// equal row counts. Format: compressops/formats/csr.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstring>

#include "dense_route.h"
#include "dispatch.h"
#include "kernels/csr/policy.h"
#include "kernel_record.h"
#include "kernels/csr/kernel.h"

namespace compressops::cpu {
namespace {

using kernels::CsrParams;
using kernels::CsrPolicy;
using SpmmFn = bool (*)(const CsrParams&, int64_t, int64_t);

const KernelTable<SpmmFn> kSpmm = COMPRESSOPS_KERNEL_TABLE(kernels::csr_spmm);
// What each op's last call ran on, and the levels its kernels exist at (kernel_record.h).
const KernelRecord kRecord0("csr_pack", [] { return std::vector<std::string>(); });
const KernelRecord kRecord1("csr_linear", [] { return kSpmm.levels(); });



constexpr int32_t kMagic = 0x52534343;
constexpr int32_t kVersion = 1;
constexpr int64_t kHeader = 64;

struct Header {
  int32_t magic, version, n, k, col_bytes, r0 /* sorted */, r1, r2;
  int64_t nnz, q0, q1, q2;
};
static_assert(sizeof(Header) == kHeader, "CSR pack header is 64 bytes");

int64_t packed_bytes(int64_t n, int64_t k, int64_t nnz) {
  const int64_t cb = k <= 65536 ? 2 : 4;
  return kHeader + 8 * (n + 1) + (cb * nnz + 7) / 8 * 8;
}

at::Tensor csr_pack_cpu(const at::Tensor& crow, const at::Tensor& col, int64_t in_features) {
  constexpr const char* op = "csr_pack";
  TORCH_CHECK(crow.device().is_cpu() && col.device().is_cpu(), op, ": crow and col must be CPU tensors");
  TORCH_CHECK((crow.scalar_type() == at::kInt || crow.scalar_type() == at::kLong) && crow.dim() == 1 &&
                  crow.size(0) >= 2,
              op, ": crow must be a 1-D int32/int64 tensor of shape [N+1] with N >= 1, got ", crow.scalar_type(),
              " ", crow.sizes());
  TORCH_CHECK(col.scalar_type() == at::kInt && col.dim() == 1, op, ": col must be a 1-D int32 tensor, got ",
              col.scalar_type(), " ", col.sizes());
  TORCH_CHECK(in_features >= 1 && in_features < (1LL << 31), op, ": in_features must be >= 1, got ", in_features);
  const int64_t n = crow.size(0) - 1, nnz = col.size(0), k = in_features;
  TORCH_CHECK(n < (1LL << 31), op, ": N must be < 2^31");
  const at::Tensor cr = crow.to(at::kLong).contiguous();
  const at::Tensor cc = col.contiguous();
  const int64_t* r = cr.data_ptr<int64_t>();
  TORCH_CHECK(r[0] == 0 && r[n] == nnz, op, ": crow must start at 0 and end at nnz = ", nnz, ", got ", r[0], " and ",
              r[n]);
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(r[i + 1] >= r[i], op, ": crow must be non-decreasing (crow[", i + 1, "] < crow[", i, "])");
  }
  const int32_t* c = cc.data_ptr<int32_t>();
  for (int64_t j = 0; j < nnz; ++j) {
    TORCH_CHECK(c[j] >= 0 && c[j] < k, op, ": col values must lie in [0, in_features) = [0, ", k, "), col[", j,
                "] = ", c[j]);
  }
  int32_t sorted = 1;
  for (int64_t i = 0; i < n && sorted; ++i) {
    for (int64_t j = r[i] + 1; j < r[i + 1]; ++j) {
      if (c[j] < c[j - 1]) {
        sorted = 0;
        break;
      }
    }
  }
  const int64_t cb = k <= 65536 ? 2 : 4;
  at::Tensor out = at::zeros({packed_bytes(n, k, nnz)}, crow.options().dtype(at::kByte));
  uint8_t* base = out.data_ptr<uint8_t>();
  Header h{};
  h.magic = kMagic;
  h.version = kVersion;
  h.n = static_cast<int32_t>(n);
  h.k = static_cast<int32_t>(k);
  h.col_bytes = static_cast<int32_t>(cb);
  h.r0 = sorted;
  h.nnz = nnz;
  std::memcpy(base, &h, sizeof(h));
  std::memcpy(base + kHeader, r, 8 * (n + 1));
  uint8_t* cols = base + kHeader + 8 * (n + 1);
  if (cb == 4) {
    std::memcpy(cols, c, 4 * nnz);
  } else {
    for (int64_t j = 0; j < nnz; ++j) {
      const uint16_t v = static_cast<uint16_t>(c[j]);
      std::memcpy(cols + 2 * j, &v, 2);
    }
  }
  return out;
}

Header read_header(const at::Tensor& packed, const char* op) {
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 1 && packed.is_contiguous() &&
                  packed.device().is_cpu(),
              op, ": packed must be a contiguous 1-D uint8 CPU tensor from compressops.ops.csr_pack, got ",
              packed.scalar_type(), " ", packed.sizes());
  TORCH_CHECK(packed.numel() >= kHeader, op, ": packed is too small to hold a CSR pack header");
  Header h;
  std::memcpy(&h, packed.data_ptr<uint8_t>(), sizeof(h));
  TORCH_CHECK(h.magic == kMagic && h.version == kVersion, op, ": packed does not hold a CSR pack (version ",
              kVersion, "); rebuild it with compressops.ops.csr_pack");
  TORCH_CHECK(h.n >= 1 && h.k >= 1 && h.nnz >= 0 && h.col_bytes == (h.k <= 65536 ? 2 : 4) &&
                  packed.numel() == packed_bytes(h.n, h.k, h.nnz),
              op, ": packed has ", packed.numel(), " bytes, which does not match its header");
  return h;
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
// the reference.
template <typename V>
void decode_rows(const int64_t* rowptr, const uint8_t* cols, int col_bytes, const V* values, int64_t k, int64_t n0,
                 int64_t n1, int64_t grain, float* dst) {
  at::parallel_for(n0, n1, grain, [&](int64_t b, int64_t e) {
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
                          int64_t out_features, const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "csr_linear";
  TORCH_CHECK(x.device().is_cpu(), op, ": x must be a CPU tensor here, got ", x.device());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": x must be float32, bfloat16 or float16, got ",
              x.scalar_type());
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least one dimension (..., K)");
  const Header h = read_header(packed, op);
  const int64_t n = h.n, k = h.k, nnz = h.nnz;
  TORCH_CHECK(out_features == n, op, ": out_features=", out_features, " but the pack has N=", n);
  TORCH_CHECK((values.scalar_type() == at::kFloat || values.scalar_type() == at::kBFloat16) && values.dim() == 1 &&
                  values.size(0) == nnz && values.device().is_cpu(),
              op, ": values must be a float32/bfloat16 CPU tensor of shape [nnz] = [", nnz, "], got ",
              values.scalar_type(), " ", values.sizes());
  TORCH_CHECK(x.size(-1) == k, op, ": x has K=", x.size(-1), " in its last dimension but the pack has K=", k);
  std::optional<at::Tensor> b;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(at::isFloatingType(bias->scalar_type()) && bias->dim() == 1 && bias->size(0) == n, op,
                ": bias must be a float tensor of shape [N] = [", n, "], got ", bias->scalar_type(), " ",
                bias->sizes());
    b = bias->to(at::kFloat).contiguous();
  }
  const at::Tensor vals = values.contiguous();
  at::Tensor x2 = x.reshape({-1, k});
  if (x2.scalar_type() != at::kFloat || (x2.size(0) > 0 && !x2.is_contiguous())) x2 = x2.to(at::kFloat).contiguous();
  const int64_t m = x2.size(0);
  at::Tensor out = at::empty({m, n}, x.options().dtype(at::kFloat));
  const uint8_t* base = packed.data_ptr<uint8_t>();
  const int64_t* rowptr = reinterpret_cast<const int64_t*>(base + kHeader);
  const uint8_t* cols = base + kHeader + 8 * (n + 1);
  if (m > 0) {
    CsrParams p{};
    p.rowptr = rowptr;
    p.cols = cols;
    p.col_bytes = h.col_bytes;
    p.sorted = h.r0 == 1;
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
    if (csr_prefer_dense(policy, m, n, k, nnz)) {
      const int cb = h.col_bytes;
      const int64_t grain = policy.decode_grain_rows;
      if (p.values_bf16) {
        const c10::BFloat16* v = vals.data_ptr<c10::BFloat16>();
        dense_route_linear(x2, n, k, b, out, [&](int64_t n0, int64_t n1, float* dst) {
          decode_rows(rowptr, cols, cb, v, k, n0, n1, grain, dst);
        });
      } else {
        const float* v = vals.data_ptr<float>();
        dense_route_linear(x2, n, k, b, out, [&](int64_t n0, int64_t n1, float* dst) {
          decode_rows(rowptr, cols, cb, v, k, n0, n1, grain, dst);
        });
      }
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
            if (bounds[t + 1] > bounds[t]) kernel(pc, bounds[t], bounds[t + 1]);
          }
        });
      }
    }
  }
  if (x.scalar_type() != at::kFloat) out = out.to(x.scalar_type());
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = n;
  return out.view(shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(compressops, CPU, m) {
  m.impl("csr_pack", &csr_pack_cpu);
  m.impl("csr_linear", &csr_linear_cpu);
}

}  // namespace compressops::cpu
