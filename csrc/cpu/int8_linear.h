// The int8 host entry points, for other op families that share int8_linear's activation
// quantization and GEMM (the 2:4 int8 op).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>

namespace compressops::cpu {

// Dynamic symmetric per-row int8 of x2 ([m, k] fp32 or bf16, unit column stride), the rule of
// int8_quantize_activation (a non-finite row gets scale NaN and zeros): q [m, k_pad] (row stride
// ldq, zeros past k), scale [m]. Runs the selected quantize kernel.
void int8_quantize_rows_host(const at::Tensor& x2, int64_t k, int64_t k_pad, int8_t* q, int64_t ldq, float* scale);

// out[m, n] (row stride ldo, fp32) = int8_linear's GEMM and epilogue on activations already
// quantized like int8_quantize_activation: q [m, k_pad] int8 (row stride ldq, zero padded past k),
// a_scale [m]; w_packed a pack from int8_pack_weight's layout (common/int8_layout.h), header
// trusted; w_scale [n]; bias [n] or nullptr.
void int8_gemm_host(const int8_t* q, int64_t ldq, const float* a_scale, int64_t m, const uint8_t* w_packed,
                    const float* w_scale, const float* bias, float* out, int64_t ldo);

}  // namespace compressops::cpu
