// Which ISA level each op's last CPU call ran on: lets tests and `compressops.info` check that a
// forced level really reached the kernel, instead of trusting the dispatch table.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "isa.h"

namespace compressops::cpu {

void record_kernel_isa(const char* op, CpuIsa level);
// For a call that ran no compressops kernel level but another route (e.g. "dense": a torch GEMM
// on the decoded weight), so the record never names a level that did not run.
void record_kernel_route(const char* op, const char* route);
// Name of the level (or route), or "" if the op has not run on CPU in this process.
std::string last_kernel_isa(const std::string& op);
// Levels each op family has kernels for in this build (defined next to each family's host code).
std::vector<std::string> int8_kernel_isas();
// [int4 kernel isas]
std::vector<std::string> int4_kernel_isas();

// [sparse kernel isas]
std::vector<std::string> sparse_kernel_isas(const std::string& op);

// [pq kernel isas]
std::vector<std::string> pq_kernel_isas();

// [binary kernel isas]
std::vector<std::string> binary_kernel_isas();
double binary_xor_popcount_peak_op(int64_t iters);


}  // namespace compressops::cpu
