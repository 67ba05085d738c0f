// The 64-byte header every compressops pack starts with (its Python twin is
// compressops/formats/pack_header.py; tests check both write the same bytes and raise the same
// messages).
//
// A pack is built by a family's pack op and read by its compute ops; a header that was tampered
// with, truncated, or written by another family or version must raise before a kernel reads a
// byte past it. So the reader trusts nothing: it checks the fields every pack shares here, then the
// family re-derives its own fields and the total size from N and K (check_pack_layout) and both
// must match. N and K are below 2^31, so a family's size formula over them cannot overflow int64.
//
//   offset  type       field
//        0  uint32     magic "COPK" (0x4B504F43 little endian)
//        4  uint32     header version (kPackHeaderVersion)
//        8  char[8]    format tag: the family's format name, ASCII, NUL padded ("half")
//       16  uint32     format version: the family's layout version
//       20  uint32     reserved, zero
//       24  int64      N (output channels)
//       32  int64      K (input channels)
//       40  int64[3]   family fields (what the layout needs besides N and K; unused ones zero)
//
// Shape: a pack is a contiguous uint8 tensor (*rows, R) whose flat bytes are the header and then the
// family's layout, zero padded to a whole number of rows. The leading dims are what a fake kernel
// (which cannot read the header) needs for the output shape: (N) for a linear pack, (OC, KH, KW) for
// a convolution pack; R = ceil(bytes / prod(rows)).
#pragma once
#include <array>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace compressops {

constexpr uint32_t kPackMagic = 0x4B504F43;  // "COPK" in a hexdump
constexpr uint32_t kPackHeaderVersion = 1;
constexpr int64_t kPackHeaderBytes = 64;
constexpr int64_t kPackMaxDim = int64_t{1} << 31;  // N, K < 2^31
constexpr size_t kPackTagBytes = 8;

struct PackHeader {
  uint32_t magic;
  uint32_t header_version;
  char tag[kPackTagBytes];
  uint32_t format_version;
  uint32_t reserved;
  int64_t n;
  int64_t k;
  std::array<int64_t, 3> fields;
};
static_assert(sizeof(PackHeader) == kPackHeaderBytes, "the pack header is 64 bytes");

// Who reads a pack, for messages: "<op>: <name> ... compressops.ops.<pack_op>".
struct PackReader {
  const char* op;
  const char* name;
  const char* pack_op;
};

// The header of a `tag` pack (version `version`) of an [n, k] weight.
inline PackHeader make_pack_header(std::string_view tag, uint32_t version, int64_t n, int64_t k,
                                   std::array<int64_t, 3> fields = {}) {
  PackHeader h{};
  h.magic = kPackMagic;
  h.header_version = kPackHeaderVersion;
  std::memcpy(h.tag, tag.data(), tag.size() < kPackTagBytes ? tag.size() : kPackTagBytes);
  h.format_version = version;
  h.n = n;
  h.k = k;
  h.fields = fields;
  return h;
}

namespace pack_header_detail {
// The tag as text for a message; bytes outside printable ASCII show as '?'.
inline std::string printable_tag(const char (&tag)[kPackTagBytes]) {
  std::string out;
  for (char c : tag) {
    if (c == '\0') break;
    out += (c >= 0x20 && c < 0x7f) ? c : '?';
  }
  return out;
}
inline std::string dims_text(const std::vector<int64_t>& d) {
  std::string out = "[";
  for (size_t i = 0; i < d.size(); ++i) out.append(i ? ", " : "").append(std::to_string(d[i]));
  return out.append("]");
}
inline std::string fields_text(const std::array<int64_t, 3>& f) {
  std::string out = "(";
  for (size_t i = 0; i < f.size(); ++i) out.append(i ? ", " : "").append(std::to_string(f[i]));
  return out.append(")");
}
}  // namespace pack_header_detail

// Reads the header at the start of a `bytes`-long pack into *out and checks what every pack shares:
// size, magic, header version, tag, format version, reserved zero, 1 <= N, K < 2^31. Returns "" or
// the error message (the same text as compressops/formats/pack_header.py).
inline std::string read_pack_header(const void* data, int64_t bytes, std::string_view tag, uint32_t version,
                                    const PackReader& r, PackHeader* out) {
  using namespace pack_header_detail;
  // Built only on failure: a valid pack costs no string work (this runs on every op call).
  const auto who = [&r] { return std::string(r.op) + ": " + r.name; };
  const auto repack = [&r] { return "; repack it with compressops.ops." + std::string(r.pack_op); };
  if (bytes < kPackHeaderBytes) {
    return who() + " holds " + std::to_string(bytes) + " bytes, too few for a pack header (" +
           std::to_string(kPackHeaderBytes) + ")" + repack();
  }
  PackHeader h;
  std::memcpy(&h, data, sizeof(h));
  if (h.magic != kPackMagic || h.header_version != kPackHeaderVersion) {
    return who() + " does not start with a compressops pack header (version " + std::to_string(kPackHeaderVersion) +
           ")" + repack();
  }
  const PackHeader want = make_pack_header(tag, version, 0, 0);
  if (std::memcmp(h.tag, want.tag, kPackTagBytes) != 0) {
    return who() + " holds a '" + printable_tag(h.tag) + "' pack, not a '" + printable_tag(want.tag) + "' one";
  }
  if (h.format_version != version) {
    return who() + " is a '" + printable_tag(want.tag) + "' pack of version " + std::to_string(h.format_version) +
           ", this build reads version " + std::to_string(version) + repack();
  }
  if (h.reserved != 0) return who() + "'s header is corrupt (reserved field " + std::to_string(h.reserved) + ")";
  if (h.n < 1 || h.n >= kPackMaxDim || h.k < 1 || h.k >= kPackMaxDim) {
    return who() + "'s header has N=" + std::to_string(h.n) + ", K=" + std::to_string(h.k) +
           "; both must be in [1, 2^31)";
  }
  *out = h;
  return "";
}

// The shape (*rows, R) of a pack of `bytes` bytes (header included) with leading dims `rows`.
inline std::vector<int64_t> pack_shape(const std::vector<int64_t>& rows, int64_t bytes) {
  int64_t per = 1;
  for (int64_t r : rows) per *= r;
  std::vector<int64_t> shape = rows;
  shape.push_back((bytes + per - 1) / per);
  return shape;
}

// The family's half of the check: the header's fields must be `fields` and the pack's shape
// pack_shape(rows, bytes), where the family derives fields, rows and bytes from N, K and the fields.
// Returns "" or the error message (the same text as compressops/formats/pack_header.py).
inline std::string check_pack_layout(const PackHeader& h, const std::array<int64_t, 3>& fields,
                                     const std::vector<int64_t>& shape, const std::vector<int64_t>& rows,
                                     int64_t bytes, const PackReader& r) {
  using namespace pack_header_detail;
  const auto who = [&r] { return std::string(r.op) + ": " + r.name; };
  if (h.fields != fields) {
    return who() + "'s header fields " + fields_text(h.fields) + " do not match a '" + printable_tag(h.tag) +
           "' pack of N=" + std::to_string(h.n) + ", K=" + std::to_string(h.k) + " " + fields_text(fields) +
           "; repack it with compressops.ops." + r.pack_op;
  }
  const std::vector<int64_t> want = pack_shape(rows, bytes);
  if (shape != want) {
    return who() + " has shape " + dims_text(shape) + " but its header (N=" + std::to_string(h.n) +
           ", K=" + std::to_string(h.k) + ") needs " + dims_text(want);
  }
  return "";
}

}  // namespace compressops
