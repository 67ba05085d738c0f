// Argument checks every CPU (and CUDA) host shares, with the messages of the Python validation
// (compressops/formats/checks.py), so a bad call raises the same text from the native op and from
// the reference.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <string>

namespace compressops::cpu {

// A dtype and a shape as Python prints them ("torch.float32", "(3, 4)", "(8,)"), so the host's
// messages are the Python validation's (compressops/formats) word for word.
inline std::string py_dtype(at::ScalarType t) { return "torch." + std::string(c10::getDtypeNames(t).first); }
inline std::string py_shape(at::IntArrayRef s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out.append(i ? ", " : "").append(std::to_string(s[i]));
  return out.append(s.size() == 1 ? ",)" : ")");
}

// x: float32, bfloat16 or float16 (the one input rule of every family: float64 is refused rather
// than rounded), at least one dimension, and on the CPU unless `any_device` (a CUDA host checks the
// device itself). checks.py check_x.
inline void check_float_input(const at::Tensor& x, const char* op, bool any_device = false) {
  const at::ScalarType t = x.scalar_type();
  TORCH_CHECK_VALUE(t == at::kFloat || t == at::kBFloat16 || t == at::kHalf, op,
                    ": x must be float32, bfloat16 or float16, got ", py_dtype(t));
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": x must have at least one dimension (..., K)");
  TORCH_CHECK_VALUE(any_device || x.device().is_cpu(), op, ": x must be a CPU tensor here, got ", x.device());
}

// bias: none, or a float [N] tensor on the CPU (unless `any_device`); returned as float32 contiguous.
// checks.py check_bias.
inline std::optional<at::Tensor> checked_bias(const std::optional<at::Tensor>& bias, int64_t n, const char* op,
                                              bool any_device = false) {
  if (!bias.has_value() || !bias->defined()) return std::nullopt;
  TORCH_CHECK_VALUE(at::isFloatingType(bias->scalar_type()) && bias->dim() == 1 && bias->size(0) == n, op,
                    ": bias must be a float tensor of shape [N] = [", n, "], got ", py_dtype(bias->scalar_type()), " ",
                    py_shape(bias->sizes()));
  TORCH_CHECK_VALUE(any_device || bias->device().is_cpu(), op, ": bias must be a CPU tensor here, got ",
                    bias->device());
  return bias->to(at::kFloat).contiguous();
}

// The output dtype of a float op: out_dtype, default `fallback` (x's dtype), one of float32,
// bfloat16, float16. checks.py resolve_out_dtype.
inline at::ScalarType resolve_out_dtype(std::optional<at::ScalarType> out_dtype, at::ScalarType fallback,
                                        const char* op) {
  const at::ScalarType t = out_dtype.value_or(fallback);
  TORCH_CHECK_VALUE(t == at::kFloat || t == at::kBFloat16 || t == at::kHalf, op,
                    ": out_dtype must be float32, bfloat16 or float16, got ", py_dtype(t));
  return t;
}

}  // namespace compressops::cpu
