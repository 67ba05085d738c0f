// Host side of the PQ lookup-table linear on CPU (format: compressops/formats/pq.py): argument
// checks, packing, table build, ISA selection (once per call) and at::parallel_for over blocks of
// output rows. Arithmetic lives in kernels/pq/; the layout in common/pq_layout.h.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "../common/pq_layout.h"
#include "dense_route.h"
#include "dispatch.h"
#include "kernel_record.h"
#include "kernels/pq/kernel.h"
#include "kernels/pq/policy.h"
#include "pack_tensor.h"

namespace compressops::cpu {
namespace {

using kernels::Pq16ScanParams;
using kernels::Pq256BatchParams;
using kernels::PqPolicy;
using kernels::PqQuantizeParams;
using kernels::PqTableParams;

using TableFn = bool (*)(const PqTableParams&, int64_t, int64_t);
using QuantFn = bool (*)(const PqQuantizeParams&, int64_t, int64_t);
using Scan16Fn = bool (*)(const Pq16ScanParams&, int64_t, int64_t);
using Batch256Fn = bool (*)(const Pq256BatchParams&, int64_t, int64_t);

// avx512 / avx512_vnni / amx have no entry: they fall through to avx2.
const KernelTable<TableFn> kTable = COMPRESSOPS_KERNEL_TABLE(kernels::pq_build_tables);
const KernelTable<QuantFn> kQuant = COMPRESSOPS_KERNEL_TABLE(kernels::pq16_quantize_tables);
const KernelTable<Scan16Fn> kScan16 = COMPRESSOPS_KERNEL_TABLE(kernels::pq16_scan);
const KernelTable<Batch256Fn> kBatch256 = COMPRESSOPS_KERNEL_TABLE(kernels::pq256_batch);
// What each op's last call ran on, and the levels its kernels exist at (kernel_record.h).
const KernelRecord kPackRecord("pq_pack", [] { return std::vector<std::string>(); });
const KernelRecord kLinearRecord("pq_linear", [] { return kScan16.levels(); });

// The layout of `packed`: the shared header checks, then the family fields (d, k, S) and the shape
// re-derived from N, K, d and k (pack_tensor.h), so the kernels may read layout.bytes() bytes.
PqLayout read_layout(const at::Tensor& packed, const char* op) {
  const PackReader reader{op, "packed", "pq_pack"};
  const PackHeader h = read_pack_tensor(packed, kPqTag, kPqLayoutVersion, reader, 2);
  const int64_t d = h.fields[0], kc = h.fields[1];
  TORCH_CHECK_VALUE(pq_valid_d(d) && pq_valid_ncent(kc), op, ": packed's header has subvector_dim=", d,
                    ", num_centroids=", kc, "; a 'pq' pack needs subvector_dim in (1, 2, 4, 8, 16) and "
                    "num_centroids in (16, 256); repack it with compressops.ops.pq_pack");
  const PqLayout l = pq_layout(h.n, h.k, d, kc);
  check_pack_tensor_layout(packed, h, l.fields(), {h.n}, l.bytes(), reader);
  return l;
}

at::Tensor pq_pack_cpu(const at::Tensor& codes, const at::Tensor& codebooks, int64_t in_features) {
  constexpr const char* op = "pq_pack";
  TORCH_CHECK_VALUE(codebooks.device().is_cpu() && codes.device().is_cpu(), op,
                    ": codes and codebooks must be CPU tensors here, got ", codes.device(), " and ",
                    codebooks.device());
  TORCH_CHECK_VALUE(codebooks.scalar_type() == at::kFloat && codebooks.dim() == 3, op,
                    ": codebooks must be float32 [S, k, d], got ", py_dtype(codebooks.scalar_type()), " ",
                    py_shape(codebooks.sizes()));
  const int64_t s = codebooks.size(0), kc = codebooks.size(1), d = codebooks.size(2);
  TORCH_CHECK_VALUE(pq_valid_ncent(kc), op, ": codebooks must have k in (16, 256) centroids (dim 1), got ", kc);
  TORCH_CHECK_VALUE(pq_valid_d(d) && s >= 1, op, ": codebooks need S >= 1 and d in (1, 2, 4, 8, 16), got S=", s,
                    ", d=", d);
  TORCH_CHECK_VALUE(codes.scalar_type() == at::kByte && codes.dim() == 2, op, ": codes must be uint8 [N, ",
                    kc == 16 ? "ceil(S/2)" : "S", "], got ", py_dtype(codes.scalar_type()), " ",
                    py_shape(codes.sizes()));
  const int64_t n = codes.size(0);
  const int64_t cols = kc == 16 ? (s + 1) / 2 : s;
  TORCH_CHECK_VALUE(codes.size(1) == cols, op, ": codes must have shape (", n, ", ", cols, ") for S=", s,
                    ", k=", kc, ", got ", py_shape(codes.sizes()));
  TORCH_CHECK_VALUE(n >= 1 && n < kPackMaxDim, op, ": codes need 1 <= N < 2^31 rows, got N=", n);
  TORCH_CHECK_VALUE(in_features >= 1 && in_features < kPackMaxDim, op, ": in_features must be in [1, 2^31), got ",
                    in_features);
  TORCH_CHECK_VALUE((in_features + d - 1) / d == s, op, ": in_features=", in_features, " needs S=ceil(K/d)=",
                    (in_features + d - 1) / d, " subspaces but codebooks have S=", s);
  const PqLayout l = pq_layout(n, in_features, d, kc);
  at::Tensor packed = new_pack_tensor(make_pack_header(kPqTag, kPqLayoutVersion, n, in_features, l.fields()), {n},
                                      l.bytes(), codes.options());
  uint8_t* layout = packed.data_ptr<uint8_t>() + kPackHeaderBytes;
  // The padding subspaces' centroids and the padding rows' codes are zero.
  std::memset(layout, 0, static_cast<size_t>(l.codebook_bytes() + l.code_bytes()));
  float* cb_t = reinterpret_cast<float*>(layout);
  const at::Tensor cb = codebooks.contiguous();
  const float* src = cb.data_ptr<float>();
  for (int64_t ss = 0; ss < s; ++ss)
    for (int64_t c = 0; c < kc; ++c)
      for (int64_t j = 0; j < d; ++j) cb_t[(ss * d + j) * kc + c] = src[(ss * kc + c) * d + j];
  uint8_t* body = layout + l.codebook_bytes();
  const at::Tensor cd = codes.contiguous();
  const uint8_t* cs = cd.data_ptr<uint8_t>();
  if (kc == 16) {
    // canonical bytes already hold (even s) | (odd s) << 4, and S_pad/2 = ceil(S/2) = cols: the
    // bytes move unchanged, so the canonical codes come back exactly (formats/pq.py unpack)
    const int64_t pairs = l.s_pad / 2;
    for (int64_t r = 0; r < n; ++r)
      for (int64_t pr = 0; pr < pairs; ++pr) body[((r / 32) * pairs + pr) * 32 + r % 32] = cs[r * cols + pr];
  } else {
    for (int64_t s0 = 0; s0 < s; s0 += kPq256ChunkSubspaces) {
      const int64_t sc = std::min(kPq256ChunkSubspaces, s - s0);
      uint8_t* chunk = body + s0 * l.n_pad;
      for (int64_t r = 0; r < n; ++r)
        for (int64_t j = 0; j < sc; ++j) chunk[((r / 8) * sc + j) * 8 + r % 8] = cs[r * s + s0 + j];
    }
  }
  return packed;
}

// Rows [n0, n1) of the dense fp32 weight [n, k_in] into dst (row stride k_in), for the dense
// route: W[r][s*d + j] = C_s[code(r, s)][j]. Groups of 32 rows; per subspace, the group's codes
// are read once and the subspace's codebook slice (d * k floats) stays in L1 while they are written.
void pq_decode_rows(const uint8_t* codes, const float* cb_t, const PqLayout& h, int64_t n0, int64_t n1,
                    float* dst) {
  const int64_t k_in = h.k_in, d = h.d, kc = h.ncent, s = h.s, s_pad = h.s_pad, n_pad = h.n_pad;
  constexpr int64_t kRows = 32;
  at::parallel_for(0, (n1 - n0 + kRows - 1) / kRows, 1, [&](int64_t b0, int64_t b1) {
    uint8_t c[kRows];
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t r0 = n0 + blk * kRows, rows = std::min(kRows, n1 - r0);
      for (int64_t si = 0; si < s; ++si) {
        if (kc == 16) {  // 32-row blocks: byte r % 32 of pair si/2 of block r / 32 holds row r
          for (int64_t i = 0; i < rows; ++i) {
            const int64_t r = r0 + i;
            const uint8_t byte = codes[(r / 32) * (s_pad / 2) * 32 + (si / 2) * 32 + r % 32];
            c[i] = si % 2 == 0 ? (byte & 15) : (byte >> 4);
          }
        } else {  // 8-row blocks inside 16-subspace chunks
          const int64_t chunk = si / kPq256ChunkSubspaces;
          const int64_t sc = std::min<int64_t>(kPq256ChunkSubspaces, s - chunk * kPq256ChunkSubspaces);
          const uint8_t* src = codes + chunk * kPq256ChunkSubspaces * n_pad + (si % kPq256ChunkSubspaces) * 8;
          for (int64_t i = 0; i < rows; ++i) c[i] = src[((r0 + i) / 8) * sc * 8 + (r0 + i) % 8];
        }
        const float* cb = cb_t + si * d * kc;
        const int64_t j1 = std::min<int64_t>(d, k_in - si * d);
        for (int64_t i = 0; i < rows; ++i) {
          float* row = dst + (r0 + i - n0) * k_in + si * d;
          for (int64_t j = 0; j < j1; ++j) row[j] = cb[j * kc + c[i]];
        }
      }
    }
  });
}

// Whether the uint8 scan can stand for a k=16 row whose quantized table has this scale and offset
// sum (kernels/pq/common.h quantize_tables): the table was finite and the scan's float32
// reconstruction, scale * (an integer sum of s_pad uint8 entries) + offsum, cannot overflow. A row
// failing it (x holding NaN/Inf, or codebooks so large that the table's range overflows) is
// recomputed exactly instead, so the op stays x @ W.T: NaN and Inf where the product has them, not
// a row of NaN from a table that could not be quantized.
bool pq16_row_scannable(float scale, float offsum, int64_t s_pad) {
  return std::isfinite(std::fabs(offsum) + scale * 255.0f * static_cast<float>(s_pad));
}

at::Tensor pq_linear_cpu(const at::Tensor& x, const at::Tensor& packed, const std::optional<at::Tensor>& bias,
                         std::optional<at::ScalarType> out_dtype) {
  constexpr const char* op = "pq_linear";
  check_float_input(x, op);
  const PqLayout h = read_layout(packed, op);
  const int64_t in_features = h.k_in;
  TORCH_CHECK_VALUE(x.size(-1) == in_features, op, ": x has K=", x.size(-1),
                    " in its last dimension but the weight has K=", in_features);
  const std::optional<at::Tensor> b = checked_bias(bias, h.n, op);
  const at::ScalarType out_t = resolve_out_dtype(out_dtype, x.scalar_type(), op);
  std::vector<int64_t> out_shape = x.sizes().vec();
  out_shape.back() = h.n;

  const int64_t n = h.n, kc = h.ncent, d = h.d, s = h.s, s_pad = h.s_pad, n_pad = h.n_pad;
  const at::Tensor x2 = x.reshape({-1, in_features});
  const int64_t m = x2.size(0);
  const auto fopts = x.options().dtype(at::kFloat);
  at::Tensor out = at::empty({m, n_pad}, fopts);
  if (m == 0) return out.narrow(1, 0, n).to(out_t).view(out_shape);

  const uint8_t* base = packed.data_ptr<uint8_t>();
  const float* cb_t = reinterpret_cast<const float*>(base + kPackHeaderBytes);
  const uint8_t* codes = base + kPackHeaderBytes + h.codebook_bytes();
  // Large batches where building lookup tables costs more than a dense GEMM on the decoded weight
  // (dense_route.h); the policy's estimate (kernels/pq/policy.h) is looked up for the level of the
  // kernel that would build the tables.
  const auto dense_route = [&] {
    const at::Tensor xf2 = x2.to(at::kFloat).contiguous();
    at::Tensor y = at::empty({m, n}, fopts);
    dense_route_linear(xf2, n, in_features, b, y,
                       [&](int64_t n0, int64_t n1, float* dst) { pq_decode_rows(codes, cb_t, h, n0, n1, dst); });
    record_kernel_route(op, "dense");
    return y.to(out_t).view(out_shape);
  };
  const IsaChoice isa = active_isa();
  if (kc == 256) {
    // Tables built per tile of rows (1, 8 or 16) and per 16-subspace chunk into scratch, laid
    // out [s][c][row] so each code selects a contiguous vector of the tile's rows (no gathers).
    Pq256BatchParams bp{};
    bp.codes = codes;
    bp.cb_t = cb_t;
    bp.bias = b ? b->data_ptr<float>() : nullptr;
    bp.m = m;
    bp.n = n;
    bp.s = s;
    bp.d = d;
    bp.mt = m == 1 ? 1 : m <= 8 ? 8 : 16;
    const int64_t tiles = (m + bp.mt - 1) / bp.mt;
    bp.ldxt = tiles * bp.mt;
    bp.out = out.data_ptr<float>();
    bp.ldo = n_pad;
    bp.group = kPq256ChunkSubspaces;
    // each unit rebuilds its tile's tables, so split the output rows only as far as needed to
    // give every thread work
    const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
    bp.n_parts = std::min((threads + tiles - 1) / tiles, n_pad / kPq256BlockRows);
    const auto [fn, level] = kBatch256.select(isa, bp);
    if (kernels::pq_policy(level).dense(m, n, d, kc)) return dense_route();
    at::Tensor xt = at::zeros({s * d, bp.ldxt}, fopts);
    xt.narrow(0, 0, in_features).narrow(1, 0, m).copy_(x2.t());
    bp.xt = xt.data_ptr<float>();
    record_kernel_isa(op, level);
    const Batch256Fn batch = fn;
    at::parallel_for(0, tiles * bp.n_parts, 1, [&](int64_t u0, int64_t u1) {
      // scratch (one table slice + the partial sums) per task, not indexed by thread number
      at::Tensor scratch = at::empty({kernels::pq256_batch_scratch(bp)}, fopts);
      Pq256BatchParams q = bp;
      q.scratch = scratch.data_ptr<float>();
      batch(q, u0, u1);
    });
    at::Tensor y = out.narrow(1, 0, n);
    y = out_t == at::kFloat && n == n_pad ? y : y.to(out_t).contiguous();
    return y.view(out_shape);
  }
  PqTableParams tp{};
  tp.ldx = s_pad * d;
  tp.cb_t = cb_t;
  tp.s_pad = s_pad;
  tp.d = d;
  tp.ncent = kc;
  tp.m = m;
  const auto [tfn, tlevel] = kTable.select(isa, tp);
  const PqPolicy policy = kernels::pq_policy(tlevel);
  if (policy.dense(m, n, d, kc)) return dense_route();
  // fp32 input rows padded with zeros to S_pad * d
  at::Tensor xf = at::zeros({m, s_pad * d}, fopts);
  xf.narrow(1, 0, in_features).copy_(x2);
  tp.x = xf.data_ptr<float>();
  const TableFn build = tfn;
  const int64_t chunks = (s_pad + kernels::kPqTableChunk - 1) / kernels::kPqTableChunk;
  float* outp = out.data_ptr<float>();
  const float* biasp = b ? b->data_ptr<float>() : nullptr;

  {  // k=16: uint8 tables, then the vpshufb scan
    at::Tensor qtab = at::empty({m, s_pad, 16}, x.options().dtype(at::kByte));
    at::Tensor sc = at::empty({m}, fopts), off = at::empty({m}, fopts);
    PqQuantizeParams qp{nullptr, s_pad, qtab.data_ptr<uint8_t>(), sc.data_ptr<float>(), off.data_ptr<float>()};
    const auto [qfn, qlevel] = kQuant.select(isa, qp);
    (void)qlevel;
    const QuantFn quant = qfn;
    // Each row's fp32 table (s_pad * 64 bytes) is built into a per-task buffer that stays in L2 and
    // quantized at once: a batch never materializes (and page-faults in) the whole [m, s_pad, 16]
    // fp32 table, four times the size of the uint8 one.
    const int64_t grain = std::max<int64_t>(1, policy.table_grain_subspaces / std::max<int64_t>(s_pad, 1));
    at::parallel_for(0, m, grain, [&](int64_t a, int64_t e) {
      std::vector<float> row_table(static_cast<size_t>(s_pad * kc));
      PqTableParams rp = tp;
      rp.table = row_table.data();
      rp.m = 1;
      PqQuantizeParams rq = qp;
      rq.table = row_table.data();
      for (int64_t r = a; r < e; ++r) {
        rp.x = tp.x + r * tp.ldx;
        build(rp, 0, chunks);
        rq.qtab = qp.qtab + r * s_pad * 16;
        rq.scale = qp.scale + r;
        rq.offsum = qp.offsum + r;
        quant(rq, 0, 1);
      }
    });
    Pq16ScanParams p{codes, qp.qtab, qp.scale, qp.offsum, biasp, outp, n_pad, m, n, s_pad};
    const auto [fn, level] = kScan16.select(isa, p);
    record_kernel_isa(op, level);
    const Scan16Fn scan = fn;
    at::parallel_for(0, n_pad / kPq16BlockRows, 1, [&](int64_t a, int64_t e) { scan(p, a, e); });
    std::vector<int64_t> exact;
    for (int64_t r = 0; r < m; ++r) {
      if (!pq16_row_scannable(qp.scale[r], qp.offsum[r], s_pad)) exact.push_back(r);
    }
    if (!exact.empty()) {
      // in float64, as the reference's tables: no sum of float32 products can overflow there
      const at::Tensor idx = at::tensor(exact, x.options().dtype(at::kLong));
      const at::Tensor xd = x2.index_select(0, idx).to(at::kDouble).contiguous();
      at::Tensor yd = at::empty({xd.size(0), n}, xd.options());
      std::optional<at::Tensor> bd;
      if (b) bd = b->to(at::kDouble);
      dense_route_linear(xd, n, in_features, bd, yd,
                         [&](int64_t n0, int64_t n1, float* dst) { pq_decode_rows(codes, cb_t, h, n0, n1, dst); });
      out.narrow(1, 0, n).index_copy_(0, idx, yd.to(at::kFloat));
    }
  }
  at::Tensor y = out.narrow(1, 0, n);
  y = out_t == at::kFloat && n == n_pad ? y : y.to(out_t).contiguous();
  return y.view(out_shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(compressops, CPU, m) {
  m.impl("pq_pack", &pq_pack_cpu);
  m.impl("pq_linear", &pq_linear_cpu);
}

}  // namespace compressops::cpu
