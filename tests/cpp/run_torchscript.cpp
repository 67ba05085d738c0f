// An inference server's view of converted models: a C++ process with libtorch and no Python
// loads libcompressops_ops.so, then TorchScript programs saved by Python (one per compressed
// format), runs them and compares with the output Python computed.
// Usage: run_torchscript <libcompressops_ops.so> <model.pt> <io.pt> [<model.pt> <io.pt> ...]
// io.pt is a scripted module holding buffers `x` (input) and `y` (expected output).
// Prints "ok <model.pt>" per model and exits 0 when every output matches exactly.
#include <dlfcn.h>
#include <torch/script.h>

#include <cstdio>

int main(int argc, char** argv) {
  if (argc < 4 || argc % 2 != 0) return 2;
  if (!dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL)) {
    std::fprintf(stderr, "dlopen failed: %s\n", dlerror());
    return 1;
  }
  for (int i = 2; i + 1 < argc; i += 2) {
    torch::jit::Module model = torch::jit::load(argv[i]);
    torch::jit::Module io = torch::jit::load(argv[i + 1]);
    model.eval();
    const at::Tensor x = io.attr("x").toTensor();
    const at::Tensor expected = io.attr("y").toTensor();
    c10::InferenceMode guard;
    const at::Tensor y = model.forward({x}).toTensor();
    if (!y.sizes().equals(expected.sizes()) || !at::equal(y, expected)) {
      std::fprintf(stderr, "%s: output differs from Python's\n", argv[i]);
      return 1;
    }
    std::printf("ok %s\n", argv[i]);
  }
  return 0;
}
