// Host side of the 2:4 sparse linear ops on CPU: argument checks, activation staging (fp32 rows,
// transposed block for large batches, int8 quantization), ISA selection once per call and
// at::parallel_for over output channels. Format: compressops/formats/sparse24.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <c10/util/BFloat16.h>

#include <atomic>
#include <cstring>

#include "../common/int8_layout.h"
#include "dense_route.h"
#include "dispatch.h"
#include "int8_linear.h"
#include "kernels/sparse24/policy.h"
#include "kernel_record.h"
#include "kernels/sparse24/kernel.h"

namespace compressops::cpu {


namespace {

using kernels::Sparse24Int8Params;
using kernels::Sparse24Params;
using kernels::Sparse24Policy;
using FFn = bool (*)(const Sparse24Params&, int64_t, int64_t);
using IFn = bool (*)(const Sparse24Int8Params&, int64_t, int64_t);

// Levels without an entry (avx512 and up) fall through to avx2.
const KernelTable<FFn> kF = COMPRESSOPS_KERNEL_TABLE(kernels::sparse24_f);
const KernelTable<IFn> kI = COMPRESSOPS_KERNEL_TABLE(kernels::sparse24_i8);
// What each op's last call ran on, and the levels its kernels exist at (kernel_record.h).
const KernelRecord kRecord0("sparse24_linear", [] { return kF.levels(); });
const KernelRecord kRecord1("sparse24_int8_linear", [] { return kI.levels(); });



int64_t padded_k(int64_t k) { return (k + 3) / 4 * 4; }
int64_t meta_bytes(int64_t k) { return (padded_k(k) / 4 + 1) / 2; }

struct Call {
  int64_t n, k, kp;
  at::Tensor values, meta;
  std::optional<at::Tensor> bias;
  std::vector<int64_t> out_shape;
  at::ScalarType out_t;
};

Call check(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta, int64_t in_features,
           const std::optional<at::Tensor>& bias, bool int8, const char* op) {
  TORCH_CHECK(x.device().is_cpu(), op, ": x must be a CPU tensor here, got ", x.device());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": x must be float32, bfloat16 or float16, got ",
              x.scalar_type());
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least one dimension (..., K)");
  TORCH_CHECK(in_features >= 1 && in_features <= (int8 ? 262144 : (1LL << 30)), op,
              ": in_features must be >= 1 (and <= 262144 for int8 values: exact int32 sums), got ", in_features);
  Call c;
  c.k = in_features;
  c.kp = padded_k(c.k);
  if (int8) {
    TORCH_CHECK(values.scalar_type() == at::kChar, op, ": values must be int8, got ", values.scalar_type());
  } else {
    TORCH_CHECK(values.scalar_type() == at::kFloat || values.scalar_type() == at::kBFloat16, op,
                ": values must be float32 or bfloat16, got ", values.scalar_type());
  }
  TORCH_CHECK(values.dim() == 2 && values.size(1) == c.kp / 2, op, ": values must have shape [N, ", c.kp / 2,
              "] for in_features=", c.k, ", got ", values.sizes());
  TORCH_CHECK(values.device().is_cpu() && meta.device().is_cpu(), op, ": values and meta must be CPU tensors");
  c.n = values.size(0);
  TORCH_CHECK(c.n >= 1, op, ": values must have at least one row (N >= 1)");
  TORCH_CHECK(meta.scalar_type() == at::kByte && meta.dim() == 2 && meta.size(0) == c.n &&
                  meta.size(1) == meta_bytes(c.k),
              op, ": meta must be uint8 of shape [N, ", meta_bytes(c.k), "] = [", c.n, ", ", meta_bytes(c.k),
              "], got ", meta.scalar_type(), " ", meta.sizes());
  TORCH_CHECK(x.size(-1) == c.k, op, ": x has K=", x.size(-1), " in its last dimension but in_features=", c.k);
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(at::isFloatingType(bias->scalar_type()) && bias->dim() == 1 && bias->size(0) == c.n, op,
                ": bias must be a float tensor of shape [N] = [", c.n, "], got ", bias->scalar_type(), " ",
                bias->sizes());
    c.bias = bias->to(at::kFloat).contiguous();
  }
  c.values = values.contiguous();
  c.meta = meta.contiguous();
  c.out_shape = x.sizes().vec();
  c.out_shape.back() = c.n;
  c.out_t = x.scalar_type();
  return c;
}

// Whether the call takes the dense route (dense_route.h): as forced for the process, else by the
// policy's batch sizes, fitted per level (kernels/sparse24/policy.h). With int8 values the route
// packs the weight for the int8 GEMM straight from the 2:4 form (pack_rows_i8).
bool sparse24_prefer_dense(const Sparse24Policy& policy, int64_t m, int64_t n, int64_t kp, bool int8_values) {
  const SparseRoute forced = forced_sparse_route();
  if (forced != SparseRoute::kAuto) return forced == SparseRoute::kDense;
  return int8_values ? policy.int8_dense(m) : policy.float_dense(m, n, kp);
}

// Rows [n0, n1) of the dense fp32 weight [n, kp] (row stride kp); a group whose two positions
// coincide adds both values there, as the format and the reference say.
template <typename V>
void decode_rows_f32(const V* values, const uint8_t* meta, int64_t meta_stride, int64_t kp, int64_t n0, int64_t n1,
                     int64_t grain, float* dst) {
  at::parallel_for(n0, n1, grain, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      float* w = dst + (r - n0) * kp;
      std::memset(w, 0, sizeof(float) * kp);
      const V* v = values + r * (kp / 2);
      const uint8_t* mr = meta + r * meta_stride;
      for (int64_t g = 0; g < kp / 4; ++g) {
        const unsigned nib = (mr[g >> 1] >> ((g & 1) * 4)) & 15u;
        w[4 * g + (nib & 3u)] += static_cast<float>(v[2 * g]);
        w[4 * g + (nib >> 2)] += static_cast<float>(v[2 * g + 1]);
      }
    }
  });
}

// Rows [n0, n1) of the 2:4 int8 weight written straight into int8_linear's packed layout
// (common/int8_layout.h; dst holds int8_packed_bytes(n1 - n0, k) bytes): the decode and
// int8_pack_weight fused. A 4-byte chunk of that layout is one 2:4 group of one row, so each chunk
// is built from two values and a nibble, and the writes run in order. Positions >= k are dropped,
// as in the reference. Returns false when a position sums outside [-127, 127] or holds -128: the
// int8 GEMM needs symmetric int8, so such a weight stays on the 2:4 kernel.
bool pack_rows_i8(const int8_t* values, const uint8_t* meta, int64_t meta_stride, int64_t k, int64_t kp, int64_t n0,
                  int64_t n1, uint8_t* dst) {
  const int64_t n = n1 - n0, n_pad = int8_round_up(n, kInt8NR), k_pad = int8_round_up(k, kInt8KR);
  static_assert(kInt8KR == 4, "one packed chunk per 2:4 group");
  // kp (K rounded up to 4) is k_pad: both formats pad K to whole groups of 4.
  const PackHeader h = int8_packed_header(n, k);
  std::memcpy(dst, &h, sizeof(h));
  uint8_t* w = dst + kPackHeaderBytes;
  int32_t* col_sums = reinterpret_cast<int32_t*>(w + n_pad * k_pad);
  const int64_t groups = kp / 4;
  // Bytes of the last group that lie inside k (all 4 unless k % 4 != 0).
  const uint32_t tail_mask = k % 4 == 0 ? 0xFFFFFFFFu : (1u << (8 * (k % 4))) - 1u;
  std::atomic<bool> ok{true};
  at::parallel_for(0, n_pad / kInt8NR, 1, [&](int64_t b, int64_t e) {
    for (int64_t blk = b; blk < e && ok.load(std::memory_order_relaxed); ++blk) {
      uint8_t* out = w + blk * kInt8NR * k_pad;
      int32_t sums[kInt8NR] = {};
      const int64_t rows = std::min<int64_t>(kInt8NR, n - blk * kInt8NR);
      bool bad = false;
      for (int64_t g = 0; g < groups; ++g) {
        uint32_t chunk[kInt8NR] = {};
        const uint32_t keep = g == groups - 1 ? tail_mask : 0xFFFFFFFFu;
        for (int64_t c = 0; c < rows; ++c) {
          const int64_t r = n0 + blk * kInt8NR + c;
          const int8_t* v = values + r * (kp / 2) + 2 * g;
          const unsigned nib = (meta[r * meta_stride + (g >> 1)] >> ((g & 1) * 4)) & 15u;
          const unsigned p0 = nib & 3u, p1 = nib >> 2;
          int32_t b0 = v[0], b1 = v[1];
          if (p0 == p1) {
            b0 += b1;
            b1 = 0;
          }
          // A -128 has no +127 counterpart in the symmetric format the GEMM needs.
          bad |= b0 < -127 || b0 > 127 || b1 < -127;
          uint32_t word = (static_cast<uint32_t>(static_cast<uint8_t>(b0)) << (8 * p0)) |
                          (p0 == p1 ? 0u : static_cast<uint32_t>(static_cast<uint8_t>(b1)) << (8 * p1));
          word &= keep;
          chunk[c] = word;
          for (int j = 0; j < 4; ++j) sums[c] += static_cast<int8_t>(word >> (8 * j));
        }
        std::memcpy(out + g * kInt8NR * kInt8KR, chunk, sizeof(chunk));
      }
      if (bad) ok.store(false, std::memory_order_relaxed);
      std::memcpy(col_sums + blk * kInt8NR, sums, sizeof(sums));
    }
  });
  return ok.load();
}

// x as fp32 rows [m, kp] with a zero tail (in place when it already is one).
at::Tensor fp32_rows(const at::Tensor& x, int64_t k, int64_t kp) {
  at::Tensor x2 = x.reshape({-1, k});
  if (x2.scalar_type() == at::kFloat && kp == k && x2.is_contiguous()) return x2;
  at::Tensor xf = at::zeros({x2.size(0), kp}, x.options().dtype(at::kFloat));
  xf.narrow(1, 0, k).copy_(x2);
  return xf;
}

at::Tensor sparse24_linear_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                               int64_t in_features, const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "sparse24_linear";
  const Call c = check(x, values, meta, in_features, bias, false, op);
  const at::Tensor xf = fp32_rows(x, c.k, c.kp);
  const int64_t m = xf.size(0);
  at::Tensor out = at::empty({m, c.n}, x.options().dtype(at::kFloat));
  if (m > 0) {
    Sparse24Params p{};
    p.x = xf.data_ptr<float>();
    p.ldx = xf.stride(0);
    p.values = c.values.data_ptr();
    p.values_bf16 = c.values.scalar_type() == at::kBFloat16;
    p.meta = c.meta.data_ptr<uint8_t>();
    p.meta_stride = c.meta.size(1);
    p.bias = c.bias ? c.bias->data_ptr<float>() : nullptr;
    p.out = out.data_ptr<float>();
    p.ldo = c.n;
    p.m = m;
    p.n = c.n;
    p.kp = c.kp;
    const auto [fn, level] = kF.select(active_isa(), p);
    const Sparse24Policy policy = kernels::sparse24_policy(level);
    if (sparse24_prefer_dense(policy, m, c.n, c.kp, false)) {
      const uint8_t* meta_p = p.meta;
      const int64_t ms = p.meta_stride, kp = c.kp, grain = policy.decode_grain_rows;
      if (p.values_bf16) {
        const c10::BFloat16* v = c.values.data_ptr<c10::BFloat16>();
        dense_route_linear(xf, c.n, kp, c.bias, out, [&](int64_t n0, int64_t n1, float* dst) {
          decode_rows_f32(v, meta_p, ms, kp, n0, n1, grain, dst);
        });
      } else {
        const float* v = c.values.data_ptr<float>();
        dense_route_linear(xf, c.n, kp, c.bias, out, [&](int64_t n0, int64_t n1, float* dst) {
          decode_rows_f32(v, meta_p, ms, kp, n0, n1, grain, dst);
        });
      }
      record_kernel_route(op, "dense");
    } else {
      record_kernel_isa(op, level);
      at::Tensor xt, xs;
      const bool transposed = policy.float_transposed(m, c.n, c.kp);
      if (level.level != CpuIsa::kScalar && !transposed) {
        const int64_t kp16 = c.kp / 16 * 16;
        const at::Tensor order = at::tensor(std::vector<int64_t>{0, 2, 1, 3}, xf.options().dtype(at::kLong));
        xs = kp16 > 0 ? xf.narrow(1, 0, kp16).reshape({m, kp16 / 16, 4, 4}).index_select(2, order).reshape({m, kp16})
                      : at::zeros({m, 16}, xf.options());
        p.xs = xs.data_ptr<float>();
        p.ldxs = xs.size(1);
      }
      if (level.level != CpuIsa::kScalar && transposed) {
        const int64_t ldt = (m + 7) / 8 * 8;
        xt = at::zeros({c.kp, ldt}, xf.options());
        xt.narrow(1, 0, m).copy_(xf.t());
        p.xt = xt.data_ptr<float>();
        p.ldt = ldt;
      }
      const FFn kernel = fn;
      at::parallel_for(0, c.n, policy.grain_channels, [&](int64_t b, int64_t e) { kernel(p, b, e); });
    }
  }
  if (c.out_t != at::kFloat) out = out.to(c.out_t);
  return out.view(c.out_shape);
}

// The 2:4 int8 op through the int8 GEMM (the same quantized activations, exact integer sums and
// epilogue, so the same bits), a block of output rows at a time, each block's results written
// straight into out's columns. q [m, kp] and sa [m] are the op's quantized activations. Returns
// false when the weight is not symmetric int8 once decoded; the caller then runs the 2:4 kernel,
// which rewrites all of out.
bool int8_dense_route(const Call& c, const at::Tensor& q, const at::Tensor& sa, const at::Tensor& ws,
                      at::Tensor& out) {
  const int64_t m = q.size(0);
  const int64_t rows = std::min<int64_t>(c.n, std::max<int64_t>(64, kDenseRouteBlockBytes / c.k / 16 * 16));
  const int8_t* v = c.values.data_ptr<int8_t>();
  const uint8_t* meta_p = c.meta.data_ptr<uint8_t>();
  at::Tensor pk = at::empty({int8_packed_bytes(rows, c.k)}, q.options().dtype(at::kByte));
  for (int64_t n0 = 0; n0 < c.n; n0 += rows) {
    const int64_t nb = std::min(rows, c.n - n0);
    uint8_t* pb = pk.data_ptr<uint8_t>();
    if (!pack_rows_i8(v, meta_p, c.meta.size(1), c.k, c.kp, n0, n0 + nb, pb)) return false;
    int8_gemm_host(q.data_ptr<int8_t>(), c.kp, sa.data_ptr<float>(), m, pb, ws.data_ptr<float>() + n0,
                   c.bias ? c.bias->data_ptr<float>() + n0 : nullptr, out.data_ptr<float>() + n0, c.n);
  }
  return true;
}

at::Tensor sparse24_int8_linear_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                                    const at::Tensor& w_scale, int64_t in_features,
                                    const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "sparse24_int8_linear";
  const Call c = check(x, values, meta, in_features, bias, true, op);
  TORCH_CHECK(w_scale.scalar_type() == at::kFloat && w_scale.dim() == 1 && w_scale.size(0) == c.n, op,
              ": w_scale must be float32 of shape [N] = [", c.n, "], got ", w_scale.scalar_type(), " ",
              w_scale.sizes());
  const at::Tensor ws = w_scale.contiguous();
  // int8_linear's quantize kernel reads fp32 or bf16 rows with unit column stride.
  at::Tensor x2 = x.reshape({-1, c.k});
  const bool native = x2.scalar_type() == at::kFloat || x2.scalar_type() == at::kBFloat16;
  if (!native || (x2.size(0) > 0 && x2.stride(1) != 1)) x2 = x2.to(native ? x2.scalar_type() : at::kFloat).contiguous();
  const int64_t m = x2.size(0);
  at::Tensor out = at::empty({m, c.n}, x.options().dtype(at::kFloat));
  if (m > 0) {
    // int8_linear's quantize kernel (also what the route's GEMM expects) zero-fills each row past k.
    at::Tensor q = at::empty({m, c.kp}, x.options().dtype(at::kChar));
    at::Tensor sa = at::empty({m}, x.options().dtype(at::kFloat));
    int8_quantize_rows_host(x2, c.k, c.kp, q.data_ptr<int8_t>(), c.kp, sa.data_ptr<float>());
    Sparse24Int8Params p{};
    p.q = q.data_ptr<int8_t>();
    p.ldq = c.kp;
    p.a_scale = sa.data_ptr<float>();
    p.values = c.values.data_ptr<int8_t>();
    p.meta = c.meta.data_ptr<uint8_t>();
    p.meta_stride = c.meta.size(1);
    p.w_scale = ws.data_ptr<float>();
    p.bias = c.bias ? c.bias->data_ptr<float>() : nullptr;
    p.out = out.data_ptr<float>();
    p.ldo = c.n;
    p.m = m;
    p.n = c.n;
    p.kp = c.kp;
    const auto [fn, level] = kI.select(active_isa(), p);
    const Sparse24Policy policy = kernels::sparse24_policy(level);
    if (c.k <= kInt8MaxK &&  // int8_linear's limit; longer rows stay on the 2:4 kernel
        sparse24_prefer_dense(policy, m, c.n, c.kp, true) && int8_dense_route(c, q, sa, ws, out)) {
      record_kernel_route(op, "dense");
    } else {
      record_kernel_isa(op, level);
      at::Tensor qt;
      if (level.level != CpuIsa::kScalar && policy.int8_transposed(m)) {
        const int64_t ldt = (m + 15) / 16 * 16;
        qt = at::zeros({c.kp, ldt}, x.options().dtype(at::kShort));
        qt.narrow(1, 0, m).copy_(q.t());
        p.qt16 = qt.data_ptr<int16_t>();
        p.ldt16 = ldt;
      }
      const IFn kernel = fn;
      at::parallel_for(0, c.n, policy.grain_channels, [&](int64_t b, int64_t e) { kernel(p, b, e); });
    }
  }
  if (c.out_t != at::kFloat) out = out.to(c.out_t);
  return out.view(c.out_shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(compressops, CPU, m) {
  m.impl("sparse24_linear", &sparse24_linear_cpu);
  m.impl("sparse24_int8_linear", &sparse24_int8_linear_cpu);
}

}  // namespace compressops::cpu
