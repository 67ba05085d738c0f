// Every compressops op schema, in one place and only here. A C++/libtorch process that loads the
// library gets the same ops as Python. Python adds fake (meta) kernels and a pure-PyTorch
// "default" kernel for each op (compressops/ops/<family>.py). setup.py reads the m.def strings
// of the TORCH_LIBRARY block below into compressops/_schemas.json, which defines the ops from
// Python when this library is absent; so keep each schema a plain string literal (adjacent
// literals are fine) inside m.def(...).
#include <torch/library.h>

#include <string>
#include <vector>

#include "cpu/dense_route.h"
#include "cpu/isa.h"
#include "cpu/kernel_record.h"

namespace compressops::cpu {
namespace {
std::string cpu_isa_op() { return isa_choice_name(active_isa()); }
std::string detected_cpu_isa_op() { return isa_name(detected_isa()); }
void set_cpu_isa_op(std::string name) { set_active_isa(parse_isa_choice(name)); }
// "" clears the calling thread's level.
void set_thread_cpu_isa_op(std::string name) {
  set_thread_isa(name.empty() ? std::nullopt : std::optional<IsaChoice>(parse_isa_choice(name)));
}
std::string thread_cpu_isa_op() {
  const auto choice = thread_isa();
  return choice ? isa_choice_name(*choice) : "";
}
// Every level of isa_levels.def, lowest first (the one list, for the Python side too).
std::vector<std::string> cpu_isa_levels_op() {
  std::vector<std::string> out;
  for (int l = 0; l < kNumIsaLevels; ++l) out.emplace_back(isa_name(static_cast<CpuIsa>(l)));
  return out;
}
// Levels compiled natively, then "<level>+emulated" for each emulated build.
std::vector<std::string> compiled_cpu_isas_op() {
  std::vector<std::string> out;
  for (int l = 0; l < kNumIsaLevels; ++l) {
    if (isa_compiled(static_cast<CpuIsa>(l))) out.emplace_back(isa_name(static_cast<CpuIsa>(l)));
  }
  for (int l = 0; l < kNumIsaLevels; ++l) {
    const auto level = static_cast<CpuIsa>(l);
    if (isa_emulation_compiled(level)) out.emplace_back(isa_choice_name({level, true}));
  }
  return out;
}
std::vector<std::string> kernel_isas_op(std::string op) { return kernel_isas(op); }
std::string last_kernel_isa_op(std::string op) { return last_kernel_isa(op); }
std::string sparse_route_op() { return sparse_route_name(forced_sparse_route()); }
void set_sparse_route_op(std::string route) { set_forced_sparse_route(parse_sparse_route(route)); }
// "" clears the calling thread's route.
void set_thread_sparse_route_op(std::string route) {
  set_thread_sparse_route(route.empty() ? std::nullopt : std::optional<SparseRoute>(parse_sparse_route(route)));
}
std::string thread_sparse_route_op() {
  const auto route = thread_sparse_route();
  return route ? sparse_route_name(*route) : "";
}
}  // namespace

// binary_conv.cpp: the measured XNOR-popcount ceiling, for the binary benchmark.
double binary_xor_popcount_peak_op(int64_t iters);
}  // namespace compressops::cpu

TORCH_LIBRARY(compressops, m) {
  m.set_python_module("compressops.ops");

  // int8 linear (DESIGN.md section 4): weight int8 [N, K] with a float32 scale per output channel.
  m.def("int8_pack_weight(Tensor w_q) -> Tensor");
  m.def("int8_quantize_activation(Tensor x, Tensor? act_scale=None) -> (Tensor, Tensor)");
  m.def(
      "int8_linear(Tensor x, Tensor w_packed, Tensor w_scale, Tensor? bias=None, ScalarType? out_dtype=None, *, "
      "Tensor? act_scale=None) -> Tensor");
  m.def(
      "int8_weight_only_linear(Tensor x, Tensor w_packed, Tensor w_scale, Tensor? bias=None, "
      "ScalarType? out_dtype=None) -> Tensor");

  // int4 linear (DESIGN.md section 4): group-wise 4-bit weights, W4A8 CPU kernels.
  m.def("int4_pack_weight(Tensor qweight, Tensor scales, Tensor? zeros, int in_features, int group_size) -> Tensor");
  m.def("int4_linear(Tensor x, Tensor w_packed, Tensor? bias=None, ScalarType? out_dtype=None) -> Tensor");

  // 2:4 semi-structured and CSR sparse linear (DESIGN.md section 4, compressops/formats/sparse24.py, csr.py).
  m.def("sparse24_pack(Tensor values, Tensor meta, int in_features) -> Tensor");
  m.def("sparse24_linear(Tensor x, Tensor packed, Tensor? bias=None, ScalarType? out_dtype=None) -> Tensor");
  m.def(
      "sparse24_int8_linear(Tensor x, Tensor packed, Tensor w_scale, Tensor? bias=None, "
      "ScalarType? out_dtype=None) -> Tensor");
  m.def("csr_pack(Tensor crow, Tensor col, int in_features) -> Tensor");
  m.def("csr_linear(Tensor x, Tensor packed, Tensor values, Tensor? bias=None, ScalarType? out_dtype=None) -> Tensor");

  // PQ lookup-table linear (DESIGN.md section 4, compressops/formats/pq.py).
  m.def("pq_pack(Tensor codes, Tensor codebooks, int in_features) -> Tensor");
  m.def("pq_linear(Tensor x, Tensor packed, Tensor? bias=None, ScalarType? out_dtype=None) -> Tensor");
  // A step of PQ's k-means (compressops/algorithms/kmeans.py): nearest centroid per point, and the
  // per-centroid counts and coordinate sums of that assignment.
  m.def("kmeans_assign(Tensor x_planar, Tensor centroids) -> (Tensor, Tensor, Tensor, Tensor)");

  // binary (DESIGN.md section 4, compressops/formats/binary.py): sign bits packed along channels into int64
  // words, fp32 alpha [OC]; the weight pack holds OC, C and the kernel size.
  m.def("binary_pack_activation(Tensor x) -> Tensor");
  m.def("binary_pack_weight(Tensor weight_bits, int in_channels) -> Tensor");
  m.def(
      "binary_conv2d(Tensor x_packed, Tensor w_packed, Tensor alpha, Tensor? bias, int[2] stride, int[2] padding, "
      "*, float? clamp_min=None, float? clamp_max=None) -> Tensor");
  m.def(
      "binary_conv2d_packed(Tensor x_packed, Tensor w_packed, Tensor alpha, Tensor? bias, int[2] stride, "
      "int[2] padding) -> Tensor");
  m.def(
      "binary_linear(Tensor x_packed, Tensor w_packed, Tensor alpha, Tensor? bias=None, ScalarType? out_dtype=None, "
      "*, float? clamp_min=None, float? clamp_max=None) -> Tensor");
  // embedding gathers (compressops/formats/embedding.py): int8 and int4 row-wise tables.
  m.def("int8_embedding(Tensor indices, Tensor weight, Tensor weight_scale, *, ScalarType? out_dtype=None) -> Tensor");
  m.def(
      "int8_embedding_packed(Tensor indices, Tensor w_packed, Tensor weight_scale, int embedding_dim, *, "
      "ScalarType? out_dtype=None) -> Tensor");
  m.def(
      "int4_embedding(Tensor indices, Tensor qweight, Tensor scales, Tensor? zeros, int embedding_dim, *, "
      "ScalarType? out_dtype=None) -> Tensor");

  m.def("half_pack_weight(Tensor w) -> Tensor");  // half: float16 weights (compressops/formats/half.py)
  m.def("half_linear(Tensor x, Tensor packed, Tensor? bias=None, ScalarType? out_dtype=None) -> Tensor");

  // CPU ISA control (internal): read and force the level, list what was built and what ran.
  m.def("_cpu_isa() -> str", &compressops::cpu::cpu_isa_op);
  m.def("_detected_cpu_isa() -> str", &compressops::cpu::detected_cpu_isa_op);
  m.def("_set_cpu_isa(str isa) -> ()", &compressops::cpu::set_cpu_isa_op);
  m.def("_set_thread_cpu_isa(str isa) -> ()", &compressops::cpu::set_thread_cpu_isa_op);  // "" clears
  m.def("_thread_cpu_isa() -> str", &compressops::cpu::thread_cpu_isa_op);
  m.def("_compiled_cpu_isas() -> str[]", &compressops::cpu::compiled_cpu_isas_op);
  m.def("_cpu_isa_levels() -> str[]", &compressops::cpu::cpu_isa_levels_op);
  m.def("_kernel_isas(str op) -> str[]", &compressops::cpu::kernel_isas_op);
  m.def("_last_kernel_isa(str op) -> str", &compressops::cpu::last_kernel_isa_op);
  // Route of the 2:4 and CSR ops (internal): "auto" (each op's rule), "kernel" or "dense".
  m.def("_sparse_route() -> str", &compressops::cpu::sparse_route_op);
  m.def("_set_sparse_route(str route) -> ()", &compressops::cpu::set_sparse_route_op);
  m.def("_set_thread_sparse_route(str route) -> ()", &compressops::cpu::set_thread_sparse_route_op);  // "" clears
  m.def("_thread_sparse_route() -> str", &compressops::cpu::thread_sparse_route_op);
  // Benchmarks: the measured XNOR-popcount ceiling (binary MACs per second, all threads).
  m.def("_binary_xor_popcount_peak(int iters) -> float", &compressops::cpu::binary_xor_popcount_peak_op);
}

// Lets the Python module's initializer reference this library, so the linker keeps it as a
// dependency of _C and loading _C loads (and registers) the ops.
extern "C" __attribute__((visibility("default"))) int compressops_ops_abi_version() { return 1; }
