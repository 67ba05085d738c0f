// An inference server's view: a C++ process with libtorch and no Python loads
// libcompressops_ops.so and calls the int8 ops through the dispatcher.
// Usage: load_ops <path to libcompressops_ops.so>; prints "ok" and exits 0 when the int8 linear
// output equals the same computation done with plain ATen ops.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <dlfcn.h>

#include <cstdio>

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  if (!dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL)) {
    std::fprintf(stderr, "dlopen failed: %s\n", dlerror());
    return 1;
  }
  auto& d = c10::Dispatcher::singleton();
  auto pack = d.findSchemaOrThrow("compressops::int8_pack_weight", "").typed<at::Tensor(const at::Tensor&)>();
  auto quant = d.findSchemaOrThrow("compressops::int8_quantize_activation", "")
                   .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const std::optional<at::Tensor>&)>();
  auto linear = d.findSchemaOrThrow("compressops::int8_linear", "")
                    .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      const std::optional<at::Tensor>&, std::optional<at::ScalarType>,
                                      const std::optional<at::Tensor>&)>();
  at::manual_seed(7);
  const int64_t m = 5, n = 37, k = 133;
  const at::Tensor w_q = at::randint(-127, 128, {n, k}, at::kChar);
  const at::Tensor w_scale = at::rand({n}) * 0.01 + 0.001;
  const at::Tensor bias = at::randn({n});
  const at::Tensor x = at::randn({m, k});

  // (x, w_packed, w_scale, bias, out_dtype, act_scale): a keyword-only argument is positional here.
  const at::Tensor packed = pack.call(w_q);
  if (packed.dim() != 2 || packed.size(0) != n) {
    std::fprintf(stderr, "the pack is not [N, R]\n");
    return 1;
  }
  const at::Tensor y = linear.call(x, packed, w_scale, bias, std::nullopt, std::nullopt);
  auto [q, sx] = quant.call(x, std::nullopt);
  // Same arithmetic as compressops/reference.py: exact integer sums (float64), then the fp32 epilogue.
  const at::Tensor acc = at::matmul(q.to(at::kDouble), w_q.to(at::kDouble).t()).to(at::kInt);
  const at::Tensor expected = acc.to(at::kFloat) * (sx.unsqueeze(1) * w_scale.unsqueeze(0)) + bias;
  if (!at::equal(y, expected)) {
    std::fprintf(stderr, "mismatch: max abs diff %g\n", (y - expected).abs().max().item<float>());
    return 1;
  }
  std::printf("ok %lld x %lld\n", static_cast<long long>(y.size(0)), static_cast<long long>(y.size(1)));
  return 0;
}
