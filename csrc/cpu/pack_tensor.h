// Reading a pack argument on the CPU host: the tensor checks (dtype, dims, contiguity, device) and
// the shared header checks of csrc/common/pack_header.h, with the messages of
// compressops/formats/pack_header.py, so a family's host file only adds its own fields and size.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <string>
#include <string_view>
#include <vector>

#include "../common/pack_header.h"
#include "arg_checks.h"

namespace compressops::cpu {

// The header of `packed`, a `dims`-D pack with tag `tag` and layout version `version`; raises
// (TORCH_CHECK, a ValueError in Python) with the message the Python twin gives. A CPU host reads the
// pack's bytes, so it must be on the CPU; a CUDA host passes any_device and the header (only) is
// copied to the host to be checked.
inline PackHeader read_pack_tensor(const at::Tensor& packed, std::string_view tag, uint32_t version,
                                   const PackReader& r, int64_t dims, bool any_device = false) {
  TORCH_CHECK_VALUE(packed.scalar_type() == at::kByte && packed.dim() == dims, r.op, ": ", r.name, " must be a ",
                    dims, "-D uint8 tensor from compressops.ops.", r.pack_op, ", got ", py_dtype(packed.scalar_type()),
                    " of shape ", py_shape(packed.sizes()));
  TORCH_CHECK_VALUE(packed.is_contiguous(), r.op, ": ", r.name, " must be contiguous");
  TORCH_CHECK_VALUE(any_device || packed.device().is_cpu(), r.op, ": ", r.name, " must be a CPU tensor here, got ",
                    packed.device());
  const at::Tensor head = packed.device().is_cpu()
                              ? packed
                              : packed.view(-1).narrow(0, 0, std::min(packed.numel(), kPackHeaderBytes)).cpu();
  PackHeader h;
  const std::string problem = read_pack_header(head.data_ptr(), packed.numel(), tag, version, r, &h);
  TORCH_CHECK_VALUE(problem.empty(), problem);
  return h;
}

// The family's fields and the pack's shape (check_pack_layout), raising on a mismatch.
inline void check_pack_tensor_layout(const at::Tensor& packed, const PackHeader& h,
                                     const std::array<int64_t, 3>& fields, const std::vector<int64_t>& rows,
                                     int64_t bytes, const PackReader& r) {
  const std::string problem = check_pack_layout(h, fields, packed.sizes().vec(), rows, bytes, r);
  TORCH_CHECK_VALUE(problem.empty(), problem);
}

// A new pack of `bytes` bytes with leading dims `rows`: the header written, the padding zeroed;
// the caller writes the layout bytes after the header.
inline at::Tensor new_pack_tensor(const PackHeader& h, const std::vector<int64_t>& rows, int64_t bytes,
                                  const at::TensorOptions& options) {
  at::Tensor packed = at::empty(pack_shape(rows, bytes), options.dtype(at::kByte));
  uint8_t* p = packed.data_ptr<uint8_t>();
  std::memcpy(p, &h, sizeof(h));
  std::memset(p + bytes, 0, static_cast<size_t>(packed.numel() - bytes));
  return packed;
}

}  // namespace compressops::cpu
