// Host side of the 2:4 sparse ops on CPU: the pack, argument checks, activation staging (fp32
// rows, transposed block for large batches, int8 quantization), ISA selection once per call and
// at::parallel_for over output channels. Format and pack layout: compressops/formats/sparse24.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <c10/util/BFloat16.h>

#include <array>
#include <atomic>
#include <cctype>
#include <cstring>
#include <limits>
#include <string>

#include "../common/int8_layout.h"
#include "dense_route.h"
#include "dispatch.h"
#include "int8_linear.h"
#include "kernels/sparse24/policy.h"
#include "kernel_record.h"
#include "kernels/sparse24/kernel.h"
#include "pack_tensor.h"

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
const KernelRecord kPackRecord("sparse24_pack", [] { return std::vector<std::string>(); });
const KernelRecord kRecord0("sparse24_linear", [] { return kF.levels(); });
const KernelRecord kRecord1("sparse24_int8_linear", [] { return kI.levels(); });

constexpr const char* kTag = "sparse24";
constexpr uint32_t kVersion = 1;
constexpr const char* kPackOp = "sparse24_pack";
// int8 values: the K/2 kept products of a row sum exactly in int32 (131072 * 127 * 127 < 2^31).
constexpr int64_t kMaxInt8K = 262144;
// The values dtype codes of the header's first family field (formats/sparse24.py VALUE_DTYPES).
constexpr int64_t kCodeF32 = 1, kCodeBF16 = 2, kCodeI8 = 3;

int64_t padded_k(int64_t k) { return (k + 3) / 4 * 4; }
int64_t meta_bytes(int64_t k) { return (padded_k(k) / 4 + 1) / 2; }
int64_t value_code(at::ScalarType t) {
  return t == at::kFloat ? kCodeF32 : t == at::kBFloat16 ? kCodeBF16 : t == at::kChar ? kCodeI8 : 0;
}
int64_t value_bytes(int64_t code) { return code == kCodeF32 ? 4 : code == kCodeBF16 ? 2 : 1; }
const char* value_name(int64_t code) { return code == kCodeF32 ? "float32" : code == kCodeBF16 ? "bfloat16" : "int8"; }
// Bytes of values and meta of one output row; below 2^35 for K < 2^31.
int64_t row_bytes(int64_t k, int64_t code) { return padded_k(k) / 2 * value_bytes(code) + meta_bytes(k); }
std::array<int64_t, 3> pack_fields(int64_t k, int64_t code) { return {code, padded_k(k), 0}; }

// A pack whose header, fields and size were checked: the kernels may read n rows of values
// (kp / 2 each) from `values` and n rows of meta (meta_stride each) from `meta`.
struct Pack {
  int64_t n, k, kp, code;
  const void* values;
  const uint8_t* meta;
  int64_t meta_stride;
};

// Reads and checks `packed` (pack_tensor.h, then the family's fields and size) for `op`, which
// takes int8 values or float ones; the messages of formats/sparse24.py read_header.
Pack read_pack(const at::Tensor& packed, const char* op, bool int8) {
  const PackReader reader{op, "packed", kPackOp};
  const PackHeader h = read_pack_tensor(packed, kTag, kVersion, reader, 2);
  const int64_t code = h.fields[0];
  TORCH_CHECK_VALUE(code == kCodeF32 || code == kCodeBF16 || code == kCodeI8, op,
                    ": packed's header has values dtype code ", code,
                    ", not one of 1 (float32), 2 (bfloat16), 3 (int8); repack it with compressops.ops.", kPackOp);
  TORCH_CHECK_VALUE((code == kCodeI8) == int8, op, ": packed holds ", value_name(code), " values; ", op, " takes ",
                    int8 ? "int8" : "float32 or bfloat16", " values");
  // N * row_bytes may pass 2^63 for N and K near 2^31: no tensor holds that many bytes.
  const int64_t per_row = row_bytes(h.k, code);
  constexpr int64_t kMaxBytes = std::numeric_limits<int64_t>::max();
  TORCH_CHECK_VALUE(h.n <= (kMaxBytes - kPackHeaderBytes) / per_row, op, ": packed has shape [", packed.size(0), ", ",
                    packed.size(1), "] but its header (N=", h.n, ", K=", h.k, ") needs more than 2^63 bytes");
  check_pack_tensor_layout(packed, h, pack_fields(h.k, code), {h.n}, kPackHeaderBytes + h.n * per_row, reader);
  TORCH_CHECK_VALUE(code != kCodeI8 || h.k <= kMaxInt8K, op, ": packed has K=", h.k, "; int8 values allow K <= ",
                    kMaxInt8K, " (exact int32 sums)");
  const uint8_t* base = packed.data_ptr<uint8_t>() + kPackHeaderBytes;
  const int64_t kp = padded_k(h.k);
  return {h.n, h.k, kp, code, base, base + h.n * (kp / 2) * value_bytes(code), meta_bytes(h.k)};
}

at::Tensor sparse24_pack_cpu(const at::Tensor& values, const at::Tensor& meta, int64_t in_features) {
  constexpr const char* op = kPackOp;
  const int64_t code = value_code(values.scalar_type());
  TORCH_CHECK_VALUE(code != 0, op, ": values must be float32, bfloat16 or int8, got ", py_dtype(values.scalar_type()));
  const int64_t k = in_features;
  TORCH_CHECK_VALUE(k >= 1 && k < kPackMaxDim, op, ": in_features must be in [1, 2^31), got ", k);
  TORCH_CHECK_VALUE(code != kCodeI8 || k <= kMaxInt8K, op, ": in_features must be <= ", kMaxInt8K,
                    " for int8 values (exact int32 sums), got ", k);
  const int64_t half = padded_k(k) / 2;
  TORCH_CHECK_VALUE(values.dim() == 2 && values.size(1) == half && values.size(0) >= 1 && values.size(0) < kPackMaxDim,
                    op, ": values must have shape [N, ", half, "] for in_features=", k, ", 1 <= N < 2^31, got ",
                    py_shape(values.sizes()));
  const int64_t n = values.size(0), mb = meta_bytes(k);
  TORCH_CHECK_VALUE(meta.scalar_type() == at::kByte && meta.dim() == 2 && meta.size(0) == n && meta.size(1) == mb, op,
                    ": meta must be uint8 of shape [N, ", mb, "] = [", n, ", ", mb, "], got ",
                    py_dtype(meta.scalar_type()), " ", py_shape(meta.sizes()));
  // The int8 kernels and the dense route's int8 GEMM assume symmetric int8 (formats/sparse24.py).
  TORCH_CHECK_VALUE(code != kCodeI8 || !values.eq(-128).any().item<bool>(), op,
                    ": int8 values must lie in [-127, 127] (symmetric int8), got -128");
  const int64_t vbytes = n * half * value_bytes(code);
  at::Tensor packed = new_pack_tensor(make_pack_header(kTag, kVersion, n, k, pack_fields(k, code)), {n},
                                      kPackHeaderBytes + n * row_bytes(k, code), values.options());
  at::Tensor flat = packed.view(-1);
  flat.narrow(0, kPackHeaderBytes, vbytes).view(values.scalar_type()).view({n, half}).copy_(values);
  flat.narrow(0, kPackHeaderBytes + vbytes, n * mb).view({n, mb}).copy_(meta);
  return packed;
}

struct Call {
  Pack w;
  std::optional<at::Tensor> bias;
  std::vector<int64_t> out_shape;
  at::ScalarType out_t;
};

// The checks of formats/sparse24.py check_linear (w_scale null) or check_int8_linear, in its order
// and with its messages.
Call check(const at::Tensor& x, const at::Tensor& packed, const at::Tensor* w_scale,
           const std::optional<at::Tensor>& bias, std::optional<at::ScalarType> out_dtype, const char* op) {
  check_float_input(x, op);
  Call c;
  c.w = read_pack(packed, op, w_scale != nullptr);
  const int64_t n = c.w.n;
  TORCH_CHECK_VALUE(x.size(-1) == c.w.k, op, ": x has K=", x.size(-1), " in its last dimension but the weight has K=",
                    c.w.k);
  c.bias = checked_bias(bias, n, op);
  if (w_scale != nullptr) {
    TORCH_CHECK_VALUE(w_scale->scalar_type() == at::kFloat && w_scale->dim() == 1 && w_scale->size(0) == n, op,
                      ": w_scale must be float32 of shape [N] = [", n, "], got ", py_dtype(w_scale->scalar_type()),
                      " ", py_shape(w_scale->sizes()));
  }
  c.out_t = resolve_out_dtype(out_dtype, x.scalar_type(), op);
  c.out_shape = x.sizes().vec();
  c.out_shape.back() = n;
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

at::Tensor sparse24_linear_cpu(const at::Tensor& x, const at::Tensor& packed, const std::optional<at::Tensor>& bias,
                               std::optional<at::ScalarType> out_dtype) {
  constexpr const char* op = "sparse24_linear";
  const Call c = check(x, packed, nullptr, bias, out_dtype, op);
  const at::Tensor xf = fp32_rows(x, c.w.k, c.w.kp);
  const int64_t m = xf.size(0);
  at::Tensor out = at::empty({m, c.w.n}, x.options().dtype(at::kFloat));
  if (m > 0) {
    Sparse24Params p{};
    p.x = xf.data_ptr<float>();
    p.ldx = xf.stride(0);
    p.values = c.w.values;
    p.values_bf16 = c.w.code == kCodeBF16;
    p.meta = c.w.meta;
    p.meta_stride = c.w.meta_stride;
    p.bias = c.bias ? c.bias->data_ptr<float>() : nullptr;
    p.out = out.data_ptr<float>();
    p.ldo = c.w.n;
    p.m = m;
    p.n = c.w.n;
    p.kp = c.w.kp;
    const auto [fn, level] = kF.select(active_isa(), p);
    const Sparse24Policy policy = kernels::sparse24_policy(level);
    if (sparse24_prefer_dense(policy, m, c.w.n, c.w.kp, false) || !all_finite(xf)) {  // NaN/Inf: dense_route.h
      const uint8_t* meta_p = p.meta;
      const int64_t ms = p.meta_stride, kp = c.w.kp, grain = policy.decode_grain_rows;
      if (p.values_bf16) {
        const auto* v = static_cast<const c10::BFloat16*>(c.w.values);
        dense_route_linear(xf, c.w.n, kp, c.bias, out, [&](int64_t n0, int64_t n1, float* dst) {
          decode_rows_f32(v, meta_p, ms, kp, n0, n1, grain, dst);
        });
      } else {
        const auto* v = static_cast<const float*>(c.w.values);
        dense_route_linear(xf, c.w.n, kp, c.bias, out, [&](int64_t n0, int64_t n1, float* dst) {
          decode_rows_f32(v, meta_p, ms, kp, n0, n1, grain, dst);
        });
      }
      record_kernel_route(op, "dense");
    } else {
      record_kernel_isa(op, level);
      at::Tensor xt, xs;
      const bool transposed = policy.float_transposed(m, c.w.n, c.w.kp);
      if (level.level != CpuIsa::kScalar && !transposed) {
        const int64_t kp16 = c.w.kp / 16 * 16;
        const at::Tensor order = at::tensor(std::vector<int64_t>{0, 2, 1, 3}, xf.options().dtype(at::kLong));
        xs = kp16 > 0 ? xf.narrow(1, 0, kp16).reshape({m, kp16 / 16, 4, 4}).index_select(2, order).reshape({m, kp16})
                      : at::zeros({m, 16}, xf.options());
        p.xs = xs.data_ptr<float>();
        p.ldxs = xs.size(1);
      }
      if (level.level != CpuIsa::kScalar && transposed) {
        const int64_t ldt = (m + 7) / 8 * 8;
        xt = at::zeros({c.w.kp, ldt}, xf.options());
        xt.narrow(1, 0, m).copy_(xf.t());
        p.xt = xt.data_ptr<float>();
        p.ldt = ldt;
      }
      const FFn kernel = fn;
      at::parallel_for(0, c.w.n, policy.grain_channels, [&](int64_t b, int64_t e) { kernel(p, b, e); });
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
  const int64_t rows = std::min<int64_t>(c.w.n, std::max<int64_t>(64, kDenseRouteBlockBytes / c.w.k / 16 * 16));
  const auto* v = static_cast<const int8_t*>(c.w.values);
  at::Tensor pk = at::empty({int8_packed_bytes(rows, c.w.k)}, q.options().dtype(at::kByte));
  for (int64_t n0 = 0; n0 < c.w.n; n0 += rows) {
    const int64_t nb = std::min(rows, c.w.n - n0);
    uint8_t* pb = pk.data_ptr<uint8_t>();
    if (!pack_rows_i8(v, c.w.meta, c.w.meta_stride, c.w.k, c.w.kp, n0, n0 + nb, pb)) return false;
    int8_gemm_host(q.data_ptr<int8_t>(), c.w.kp, sa.data_ptr<float>(), m, pb, ws.data_ptr<float>() + n0,
                   c.bias ? c.bias->data_ptr<float>() + n0 : nullptr, out.data_ptr<float>() + n0, c.w.n);
  }
  return true;
}

at::Tensor sparse24_int8_linear_cpu(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& w_scale,
                                    const std::optional<at::Tensor>& bias, std::optional<at::ScalarType> out_dtype) {
  constexpr const char* op = "sparse24_int8_linear";
  const Call c = check(x, packed, &w_scale, bias, out_dtype, op);
  const at::Tensor ws = w_scale.contiguous();
  // int8_linear's quantize kernel reads fp32 or bf16 rows with unit column stride.
  at::Tensor x2 = x.reshape({-1, c.w.k});
  const bool native = x2.scalar_type() == at::kFloat || x2.scalar_type() == at::kBFloat16;
  if (!native || (x2.size(0) > 0 && x2.stride(1) != 1)) x2 = x2.to(native ? x2.scalar_type() : at::kFloat).contiguous();
  const int64_t m = x2.size(0);
  at::Tensor out = at::empty({m, c.w.n}, x.options().dtype(at::kFloat));
  if (m > 0) {
    // int8_linear's quantize kernel (also what the route's GEMM expects) zero-fills each row past k.
    at::Tensor q = at::empty({m, c.w.kp}, x.options().dtype(at::kChar));
    at::Tensor sa = at::empty({m}, x.options().dtype(at::kFloat));
    int8_quantize_rows_host(x2, c.w.k, c.w.kp, q.data_ptr<int8_t>(), c.w.kp, sa.data_ptr<float>());
    Sparse24Int8Params p{};
    p.q = q.data_ptr<int8_t>();
    p.ldq = c.w.kp;
    p.a_scale = sa.data_ptr<float>();
    p.values = static_cast<const int8_t*>(c.w.values);
    p.meta = c.w.meta;
    p.meta_stride = c.w.meta_stride;
    p.w_scale = ws.data_ptr<float>();
    p.bias = c.bias ? c.bias->data_ptr<float>() : nullptr;
    p.out = out.data_ptr<float>();
    p.ldo = c.w.n;
    p.m = m;
    p.n = c.w.n;
    p.kp = c.w.kp;
    const auto [fn, level] = kI.select(active_isa(), p);
    const Sparse24Policy policy = kernels::sparse24_policy(level);
    if (c.w.k <= kInt8MaxK &&  // int8_linear's limit; longer rows stay on the 2:4 kernel
        sparse24_prefer_dense(policy, m, c.w.n, c.w.kp, true) && int8_dense_route(c, q, sa, ws, out)) {
      record_kernel_route(op, "dense");
    } else {
      record_kernel_isa(op, level);
      at::Tensor qt;
      if (level.level != CpuIsa::kScalar && policy.int8_transposed(m)) {
        const int64_t ldt = (m + 15) / 16 * 16;
        qt = at::zeros({c.w.kp, ldt}, x.options().dtype(at::kShort));
        qt.narrow(1, 0, m).copy_(q.t());
        p.qt16 = qt.data_ptr<int16_t>();
        p.ldt16 = ldt;
      }
      const IFn kernel = fn;
      at::parallel_for(0, c.w.n, policy.grain_channels, [&](int64_t b, int64_t e) { kernel(p, b, e); });
    }
  }
  if (c.out_t != at::kFloat) out = out.to(c.out_t);
  return out.view(c.out_shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(compressops, CPU, m) {
  m.impl("sparse24_pack", &sparse24_pack_cpu);
  m.impl("sparse24_linear", &sparse24_linear_cpu);
  m.impl("sparse24_int8_linear", &sparse24_int8_linear_cpu);
}

}  // namespace compressops::cpu
