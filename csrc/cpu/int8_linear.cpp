// Host side of the int8 linear family on CPU: argument checks, allocation, ISA selection (once
// per call) and at::parallel_for over output tiles. The arithmetic lives in kernels/.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>

#include "../common/int8_layout.h"
#include "dispatch.h"
#include "int8_linear.h"
#include "kernel_record.h"
#include "kernels/int8/kernel.h"
#include "kernels/int8/policy.h"
#include "pack_tensor.h"

namespace compressops::cpu {
namespace {

using kernels::FloatKind;
using kernels::Int8GemmParams;
using kernels::Int8Policy;
using kernels::Int8QuantizeParams;
using kernels::Int8WeightOnlyParams;

using QuantizeFn = bool (*)(const Int8QuantizeParams&, int64_t, int64_t);
using GemmFn = bool (*)(const Int8GemmParams&, int64_t, int64_t);
using WeightOnlyFn = bool (*)(const Int8WeightOnlyParams&, int64_t, int64_t);

// Levels without an entry (avx512, amx) fall through to the next one down.
const KernelTable<QuantizeFn> kQuantize = COMPRESSOPS_KERNEL_TABLE(kernels::int8_quantize_rows);
const KernelTable<GemmFn> kGemm = COMPRESSOPS_KERNEL_TABLE(kernels::int8_gemm);
const KernelTable<WeightOnlyFn> kWeightOnly = COMPRESSOPS_KERNEL_TABLE(kernels::int8_weight_only_gemm);
// What each op's last call ran on, and the levels its kernels exist at (kernel_record.h).
const KernelRecord kRecord0("int8_pack_weight", [] { return std::vector<std::string>(); });
const KernelRecord kRecord1("int8_quantize_activation", [] { return kQuantize.levels(); });
const KernelRecord kRecord2("int8_linear", [] { return kGemm.levels(); });
const KernelRecord kRecord3("int8_weight_only_linear", [] { return kWeightOnly.levels(); });

constexpr const char* kPackOp = "int8_pack_weight";

// %g, which Python's f"{v:g}" matches, with NaN unsigned as Python prints it.
std::string py_g(double v) {
  if (std::isnan(v)) return "nan";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

// The header of w_packed, every field and the size checked against what N and K imply
// (formats/int8.py read_header has the same checks and messages), so the kernels may read the
// whole layout after it.
PackHeader read_header(const at::Tensor& packed, const char* op) {
  const PackReader reader{op, "w_packed", kPackOp};
  const PackHeader h = read_pack_tensor(packed, kInt8PackTag, kInt8PackVersion, reader, 2);
  check_pack_tensor_layout(packed, h, int8_pack_fields(), {h.n}, int8_packed_bytes(h.n, h.k), reader);
  // Only a hand-made header can get here with a larger K (the pack op refuses one).
  TORCH_CHECK_VALUE(h.k <= kInt8MaxK, op, ": w_packed's header has K=", h.k, ", more than an int8 pack holds (",
                    kInt8MaxK, ", int32 accumulation)");
  return h;
}

// Float dtypes the kernels read and write directly; others go through fp32.
bool native_float(at::ScalarType t) { return t == at::kFloat || t == at::kBFloat16; }
FloatKind kind_of(at::ScalarType t) { return t == at::kFloat ? FloatKind::kF32 : FloatKind::kBF16; }

at::Tensor rows_view(const at::Tensor& x, int64_t k) {
  at::Tensor xc = native_float(x.scalar_type()) ? x : x.to(at::kFloat);
  at::Tensor x2 = xc.reshape({-1, k});
  if (x2.size(0) > 0 && x2.stride(1) != 1) x2 = x2.contiguous();
  return x2;
}

at::Tensor checked_w_scale(const at::Tensor& w_scale, int64_t n, const char* op) {
  TORCH_CHECK_VALUE(w_scale.scalar_type() == at::kFloat && w_scale.dim() == 1 && w_scale.size(0) == n, op,
                    ": w_scale must be float32 of shape [N] = [", n, "], got ", py_dtype(w_scale.scalar_type()), " ",
                    py_shape(w_scale.sizes()));
  TORCH_CHECK_VALUE(w_scale.device().is_cpu(), op, ": w_scale must be a CPU tensor here, got ", w_scale.device());
  return w_scale.contiguous();
}


// The static activation scale as float32 (formats/int8.py check_act_scale), or nullopt (dynamic).
std::optional<float> checked_act_scale(const std::optional<at::Tensor>& act_scale, const char* op) {
  if (!act_scale.has_value() || !act_scale->defined()) return std::nullopt;
  TORCH_CHECK_VALUE(act_scale->numel() == 1 && at::isFloatingType(act_scale->scalar_type()), op,
                    ": act_scale must be a one-element float tensor, got ", py_dtype(act_scale->scalar_type()), " ",
                    py_shape(act_scale->sizes()));
  // Converted as Python converts it (.float(): a double beyond float's range becomes inf, no error).
  const float s = act_scale->to(at::kFloat).item<float>();
  TORCH_CHECK_VALUE(std::isfinite(s) && s > 0.0f, op, ": act_scale must be finite and positive, got ", py_g(s));
  TORCH_CHECK_VALUE(s >= std::numeric_limits<float>::min(), op,
                    ": act_scale must be at least 2^-126 (1 / act_scale overflows float32 below it), got ", py_g(s));
  return s;
}

// Splits (rows x column blocks) into tiles: one run of whole rows per thread for a large batch (the
// policy's row_split_min_rows); otherwise whole column blocks when there are enough of them to
// keep every thread busy, otherwise row chunks too, so a narrow layer on a big batch still
// spreads over all threads (the policy's numbers). `body(row0, rows, nb_begin, nb_end)` runs once
// per contiguous run.
template <typename Body>
void parallel_tiles(const Int8Policy& policy, int64_t m, int64_t blocks, const Body& body) {
  const int64_t threads = at::get_num_threads();
  if (threads > 1 && m >= policy.row_split_min_rows * threads) {
    const int64_t rows = (m + threads - 1) / threads;
    at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t row0 = t * rows;
        if (row0 < m) body(row0, std::min(rows, m - row0), 0, blocks);
      }
    });
    return;
  }
  const int64_t tasks = policy.tasks_per_thread * threads;
  const int64_t row_chunk = blocks >= tasks ? m : std::max<int64_t>(policy.min_row_chunk, (m + tasks - 1) / tasks);
  const int64_t row_chunks = (m + row_chunk - 1) / row_chunk;
  at::parallel_for(0, row_chunks * blocks, 1, [&](int64_t begin, int64_t end) {
    int64_t t = begin;
    while (t < end) {
      const int64_t rc = t / blocks;
      const int64_t nb0 = t % blocks;
      const int64_t nb1 = std::min(blocks, nb0 + (end - t));
      const int64_t row0 = rc * row_chunk;
      body(row0, std::min(row_chunk, m - row0), nb0, nb1);
      t += nb1 - nb0;
    }
  });
}

// Runs the selected quantize kernel over every row of x2 into q ([m, ldq]) and scale ([m]);
// static_scale is the checked static scale (checked_act_scale), nullopt for dynamic.
void quantize_rows(const at::Tensor& x2, int64_t k, int64_t k_pad, int8_t* q, int64_t ldq, float* scale,
                   std::optional<float> static_scale) {
  const float s = static_scale.value_or(0.0f);
  const float inv = static_scale ? 1.0f / s : 0.0f;
  Int8QuantizeParams p{};
  p.x = x2.data_ptr();
  p.x_kind = kind_of(x2.scalar_type());
  p.ldx = x2.stride(0);
  p.k = k;
  p.k_pad = k_pad;
  p.q = q;
  p.ldq = ldq;
  p.scale = scale;
  p.static_scale = static_scale ? &s : nullptr;
  p.static_inv = static_scale ? &inv : nullptr;
  const auto [fn, level] = kQuantize.select(active_isa(), p);
  record_kernel_isa("int8_quantize_activation", level);
  const int64_t grain_values = kernels::int8_policy(level).quantize_grain_values;
  const QuantizeFn kernel = fn;
  const int64_t m = x2.size(0);
  at::parallel_for(0, m, std::max<int64_t>(1, grain_values / std::max<int64_t>(k, 1)),
                   [&](int64_t b, int64_t e) { kernel(p, b, e); });
}

// What both linear ops check and derive from their arguments before any kernel runs, in the order
// of formats/int8.py check_linear (so the first bad argument gives the same message).
struct LinearCall {
  int64_t n, k, n_pad, k_pad;        // from the checked header
  at::Tensor w_scale;                // fp32 [N], contiguous
  std::optional<at::Tensor> bias;    // fp32 [N], contiguous
  std::optional<float> act_scale;    // int8_linear's static scale, checked
  at::ScalarType out_t;              // what the caller gets
  at::ScalarType kernel_out_t;       // what the kernel writes (fp32 for dtypes it cannot write)
  std::vector<int64_t> out_shape;    // (..., N)

  // The kernel's [m, n] output in the caller's dtype and shape.
  at::Tensor finish(at::Tensor out) const {
    if (kernel_out_t != out_t) out = out.to(out_t);
    return out.view(out_shape);
  }
};

LinearCall prepare_linear(const at::Tensor& x, const at::Tensor& w_packed, const at::Tensor& w_scale,
                          const std::optional<at::Tensor>& bias, std::optional<at::ScalarType> out_dtype,
                          const std::optional<at::Tensor>& act_scale, const char* op) {
  check_float_input(x, op);
  const PackHeader h = read_header(w_packed, op);
  LinearCall c;
  c.n = h.n;
  c.k = h.k;
  c.n_pad = int8_round_up(h.n, kInt8NR);
  c.k_pad = int8_round_up(h.k, kInt8KR);
  TORCH_CHECK_VALUE(x.size(-1) == c.k, op, ": x has K=", x.size(-1), " in its last dimension but the weight has K=",
                    c.k);
  c.w_scale = checked_w_scale(w_scale, c.n, op);
  c.bias = checked_bias(bias, c.n, op);
  c.out_t = resolve_out_dtype(out_dtype, x.scalar_type(), op);
  c.act_scale = checked_act_scale(act_scale, op);
  c.kernel_out_t = native_float(c.out_t) ? c.out_t : at::kFloat;
  c.out_shape = x.sizes().vec();
  c.out_shape.back() = c.n;
  return c;
}

at::Tensor int8_pack_weight_cpu(const at::Tensor& w_q) {
  constexpr const char* op = kPackOp;
  TORCH_CHECK_VALUE(w_q.scalar_type() == at::kChar, op, ": w_q must be int8, got ", py_dtype(w_q.scalar_type()));
  TORCH_CHECK_VALUE(w_q.dim() == 2, op, ": w_q must be 2-D [N, K], got shape ", py_shape(w_q.sizes()));
  const int64_t n = w_q.size(0), k = w_q.size(1);
  // int32 accumulation stays exact while K * 127 * 127 < 2^31.
  TORCH_CHECK_VALUE(n >= 1 && n < kPackMaxDim && k >= 1 && k <= kInt8MaxK, op,
                    ": w_q needs 1 <= N < 2^31 and 1 <= K <= ", kInt8MaxK, " (int32 accumulation), got ",
                    py_shape(w_q.sizes()));
  // -128 has no positive counterpart; the symmetric format (and the AVX2 sign trick) needs +-127.
  TORCH_CHECK_VALUE(w_q.min().item<int8_t>() >= -127, op,
                    ": w_q must lie in [-127, 127] (symmetric int8); found -128");
  const at::Tensor w = w_q.contiguous();
  const int64_t n_pad = int8_round_up(n, kInt8NR), k_pad = int8_round_up(k, kInt8KR);
  at::Tensor packed = new_pack_tensor(int8_packed_header(n, k), {n}, int8_packed_bytes(n, k), w.options());
  uint8_t* base = packed.data_ptr<uint8_t>();
  int8_t* dst = reinterpret_cast<int8_t*>(base + kPackHeaderBytes);
  int32_t* col_sums = reinterpret_cast<int32_t*>(base + int8_col_sums_offset(n, k));
  const int8_t* src = w.data_ptr<int8_t>();
  at::parallel_for(0, n_pad / kInt8NR, 1, [&](int64_t b, int64_t e) {
    for (int64_t nb = b; nb < e; ++nb) {
      int8_t* blk = dst + nb * kInt8NR * k_pad;
      // Chunk-major (kInt8KR bytes of each of the block's rows in turn) so the writes are
      // sequential; whole chunks of real rows are copied as 4-byte words.
      int32_t sums[kInt8NR] = {};
      const int64_t k_full = k / kInt8KR;
      for (int64_t kb = 0; kb < k_pad / kInt8KR; ++kb) {
        int8_t* dst_kb = blk + kb * kInt8NR * kInt8KR;
        for (int64_t c = 0; c < kInt8NR; ++c) {
          const int64_t row = nb * kInt8NR + c, k0 = kb * kInt8KR;
          int8_t chunk[kInt8KR] = {};
          if (row < n) {
            if (kb < k_full) {
              std::memcpy(chunk, src + row * k + k0, kInt8KR);
            } else {
              for (int64_t j = 0; k0 + j < k; ++j) chunk[j] = src[row * k + k0 + j];
            }
          }
          for (int64_t j = 0; j < kInt8KR; ++j) sums[c] += chunk[j];
          std::memcpy(dst_kb + c * kInt8KR, chunk, kInt8KR);
        }
      }
      for (int64_t c = 0; c < kInt8NR; ++c) col_sums[nb * kInt8NR + c] = sums[c];
    }
  });
  return packed;
}

std::tuple<at::Tensor, at::Tensor> int8_quantize_activation_cpu(const at::Tensor& x,
                                                                  const std::optional<at::Tensor>& act_scale) {
  constexpr const char* op = "int8_quantize_activation";
  check_float_input(x, op);
  const std::optional<float> static_scale = checked_act_scale(act_scale, op);
  const int64_t k = x.size(-1);
  const at::Tensor x2 = rows_view(x, k);
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(at::kChar));
  auto batch = x.sizes().vec();
  batch.pop_back();
  at::Tensor scale = at::empty(batch, x.options().dtype(at::kFloat));
  if (x2.size(0) > 0 && k > 0) {
    quantize_rows(x2, k, k, q.data_ptr<int8_t>(), k, scale.data_ptr<float>(), static_scale);
  } else if (x2.size(0) > 0) {
    scale.fill_(0.0f);
  }
  return {q, scale};
}

// The GEMM of p (p.m activation rows, every output column) on the selected level, tiled across threads.
void run_int8_gemm(const Int8GemmParams& p, int64_t n_pad, size_t out_elem, const char* op) {
  const auto [fn, level] = kGemm.select(active_isa(), p);
  record_kernel_isa(op, level);
  const Int8Policy policy = kernels::int8_policy(level);
  const GemmFn kernel = fn;
  parallel_tiles(policy, p.m, n_pad / kInt8NR, [&](int64_t row0, int64_t rows, int64_t nb0, int64_t nb1) {
    Int8GemmParams t = p;
    t.a += row0 * p.lda;
    t.a_scale += row0;
    t.out = static_cast<char*>(p.out) + row0 * p.ldo * out_elem;
    t.m = rows;
    kernel(t, nb0, nb1);
  });
}

at::Tensor int8_linear_cpu(const at::Tensor& x, const at::Tensor& w_packed, const at::Tensor& w_scale,
                           const std::optional<at::Tensor>& bias, std::optional<at::ScalarType> out_dtype,
                           const std::optional<at::Tensor>& act_scale) {
  constexpr const char* op = "int8_linear";
  const LinearCall c = prepare_linear(x, w_packed, w_scale, bias, out_dtype, act_scale, op);
  const int64_t n = c.n, k = c.k, k_pad = c.k_pad;
  const at::Tensor x2 = rows_view(x, k);
  const int64_t m = x2.size(0);
  at::Tensor out = at::empty({m, n}, x.options().dtype(c.kernel_out_t));
  if (m > 0) {
    at::Tensor q = at::empty({m, k_pad}, x.options().dtype(at::kChar));
    at::Tensor sa = at::empty({m}, x.options().dtype(at::kFloat));
    quantize_rows(x2, k, k_pad, q.data_ptr<int8_t>(), k_pad, sa.data_ptr<float>(), c.act_scale);

    const uint8_t* base = w_packed.data_ptr<uint8_t>();
    Int8GemmParams p{};
    p.a = q.data_ptr<int8_t>();
    p.lda = k_pad;
    p.a_scale = sa.data_ptr<float>();
    p.w = reinterpret_cast<const int8_t*>(base + kPackHeaderBytes);
    p.col_sums = reinterpret_cast<const int32_t*>(base + int8_col_sums_offset(n, k));
    p.w_scale = c.w_scale.data_ptr<float>();
    p.bias = c.bias ? c.bias->data_ptr<float>() : nullptr;
    p.out = out.data_ptr();
    p.out_kind = kind_of(c.kernel_out_t);
    p.ldo = n;
    p.m = m;
    p.n = n;
    p.k_pad = k_pad;
    run_int8_gemm(p, c.n_pad, out.element_size(), op);
  }
  return c.finish(out);
}

at::Tensor int8_weight_only_linear_cpu(const at::Tensor& x, const at::Tensor& w_packed, const at::Tensor& w_scale,
                                       const std::optional<at::Tensor>& bias,
                                       std::optional<at::ScalarType> out_dtype) {
  constexpr const char* op = "int8_weight_only_linear";
  const LinearCall c = prepare_linear(x, w_packed, w_scale, bias, out_dtype, std::nullopt, op);
  const int64_t n = c.n, k = c.k, k_pad = c.k_pad;
  // The weight-only kernel reads fp32 rows of k_pad values (whole groups of 4).
  const at::Tensor x2 = x.reshape({-1, k});
  const int64_t m = x2.size(0);
  at::Tensor out = at::empty({m, n}, x.options().dtype(c.kernel_out_t));
  if (m > 0) {
    // fp32 rows with unit stride and K already a multiple of 4 are read in place; anything else
    // is copied once into a zero-padded fp32 buffer.
    const bool in_place = x2.scalar_type() == at::kFloat && x2.stride(1) == 1 && k == k_pad;
    at::Tensor xf = x2;
    if (!in_place) {
      xf = at::zeros({m, k_pad}, x.options().dtype(at::kFloat));
      xf.narrow(1, 0, k).copy_(x2);
    }
    const uint8_t* base = w_packed.data_ptr<uint8_t>();
    Int8WeightOnlyParams p{};
    p.x = xf.data_ptr<float>();
    p.ldx = xf.stride(0);
    p.k = k;
    p.w = reinterpret_cast<const int8_t*>(base + kPackHeaderBytes);
    p.w_scale = c.w_scale.data_ptr<float>();
    p.bias = c.bias ? c.bias->data_ptr<float>() : nullptr;
    p.out = out.data_ptr();
    p.out_kind = kind_of(c.kernel_out_t);
    p.ldo = n;
    p.m = m;
    p.n = n;
    p.k_pad = k_pad;
    const auto [fn, level] = kWeightOnly.select(active_isa(), p);
    record_kernel_isa(op, level);
    const Int8Policy policy = kernels::int8_policy(level);
    const WeightOnlyFn kernel = fn;
    const size_t out_elem = out.element_size();
    parallel_tiles(policy, m, c.n_pad / kInt8NR, [&](int64_t row0, int64_t rows, int64_t nb0, int64_t nb1) {
      Int8WeightOnlyParams t = p;
      t.x += row0 * p.ldx;
      t.out = static_cast<char*>(p.out) + row0 * p.ldo * out_elem;
      t.m = rows;
      kernel(t, nb0, nb1);
    });
  }
  return c.finish(out);
}

}  // namespace

void int8_quantize_rows_host(const at::Tensor& x2, int64_t k, int64_t k_pad, int8_t* q, int64_t ldq, float* scale) {
  quantize_rows(x2, k, k_pad, q, ldq, scale, std::nullopt);
}

void int8_gemm_host(const int8_t* q, int64_t ldq, const float* a_scale, int64_t m, const uint8_t* w_packed,
                    const float* w_scale, const float* bias, float* out, int64_t ldo) {
  PackHeader h;
  std::memcpy(&h, w_packed, sizeof(h));
  Int8GemmParams p{};
  p.a = q;
  p.lda = ldq;
  p.a_scale = a_scale;
  p.w = reinterpret_cast<const int8_t*>(w_packed + kPackHeaderBytes);
  p.col_sums = reinterpret_cast<const int32_t*>(w_packed + int8_col_sums_offset(h.n, h.k));
  p.w_scale = w_scale;
  p.bias = bias;
  p.out = out;
  p.out_kind = FloatKind::kF32;
  p.ldo = ldo;
  p.m = m;
  p.n = h.n;
  p.k_pad = int8_round_up(h.k, kInt8KR);
  run_int8_gemm(p, int8_round_up(h.n, kInt8NR), sizeof(float), "int8_linear");
}

TORCH_LIBRARY_IMPL(compressops, CPU, m) {
  m.impl("int8_pack_weight", &int8_pack_weight_cpu);
  m.impl("int8_quantize_activation", &int8_quantize_activation_cpu);
  m.impl("int8_linear", &int8_linear_cpu);
  m.impl("int8_weight_only_linear", &int8_weight_only_linear_cpu);
}

}  // namespace compressops::cpu
