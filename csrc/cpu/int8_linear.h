// The int8 linear host entry points, for other op families that route through the int8 GEMM
// (the 2:4 int8 op at large batch sizes). Same contracts as the registered ops.
#pragma once
#include <ATen/ATen.h>

#include <optional>

namespace compressops::cpu {

at::Tensor int8_linear_host(const at::Tensor& x, const at::Tensor& w_packed, const at::Tensor& w_scale,
                            const std::optional<at::Tensor>& bias);

}  // namespace compressops::cpu
