// AMX (AMX-TILE, AMX-INT8, AMX-BF16) emulated in plain C++, for building a kernel written with the
// real intrinsics on a machine without AMX. Test-only: the `amx` kernel files are compiled a second
// time at the AVX2 baseline with this header in place of the AMX part of <immintrin.h>, so every CI
// run executes them (DESIGN.md section 2). Speed means nothing here; being exact is the point.
//
// Semantics: the Intel SDM pseudo-code of LDTILECFG, STTILECFG, TILERELEASE, TILELOADD(T1),
// TILESTORED, TILEZERO, TDPB[SU][SU]D and TDPBF16PS, and their exception classes (AMX-E1..E4).
// Where the hardware raises #GP or #UD, the emulation prints what was wrong and calls std::abort(),
// so a kernel bug stops the test instead of computing something the hardware never would:
//   - LDTILECFG: palette_id > 1; nonzero reserved bytes (2..15, 32..47, 56..63); colsb > 64;
//     rows > 16; exactly one of rows/colsb zero. palette_id 0 is the init state (nothing checked).
//   - TILELOADD/TILESTORED/TILEZERO: tiles not configured, or the tile not configured (rows == 0).
//     Loads and stores also fault when tilecfg.start_row >= rows or colsb % 4 != 0. The SDM
//     pseudo-code moves colsb bytes a row, but Bochs (which models the AMX-E3 class) raises #UD
//     for colsb % 4 != 0; the stricter rule is kept so an emulated kernel never passes with a
//     load the hardware may refuse. LDTILECFG/STTILECFG/TILEZERO accept any colsb <= 64.
//   - TDP*: any of the three tiles not configured; colsb % 4 != 0 for any of them;
//     dst.rows != a.rows; dst.colsb != b.colsb; a.colsb / 4 != b.rows. Equal tile numbers
//     (dst == a, dst == b, a == b; #UD on hardware) fail at compile time instead.
// Tile numbers must be integer literals 0..7 (or macros expanding to one), as GCC's intrinsics
// require (they paste the number into the instruction text); anything else fails to compile here
// too, with an undeclared COMPRESSOPS_AMX_EMU_TILE_<x>.
//
// TDPBF16PS, following the SDM and Bochs (not the intrinsics guide's pseudo-code, which adds each
// product straight into dst): for every output element two fp32 partial sums, even and odd bf16
// lanes, start at +0 and take one fused multiply-add per K step each; then
// dst := dst + (even + odd). Every step rounds to nearest even, treats denormal inputs as zero
// (DAZ) and flushes denormal results to zero (FTZ); MXCSR is neither read nor written.
// How that is computed exactly without an fp32 FMA instruction: a bf16 x bf16 product has at most
// 16 significant bits and an exponent within double's range, so it is exact in double; the sum
// with an fp32 accumulator rounded to double (53 bits) and then to fp32 (24 bits) equals the sum
// rounded once to fp32, because 53 >= 2 * 24 + 2 (double rounding is innocuous). The same holds
// for the two final fp32 additions. FTZ decides tininess after rounding, as the x86 fp32 FMA does under
// MXCSR.FTZ (the test checks both against it): an exact result just below FLT_MIN that rounds up
// to FLT_MIN is kept. NaN results are NaN, payload not
// modelled. The emulation assumes the caller left MXCSR's rounding mode at nearest-even (its
// DAZ/FTZ bits do not matter: no intermediate double is denormal).
//
// State (tile configuration and 8 tiles of 16 x 64 bytes) is thread_local, as the real tile state
// is per thread. Tile data uses the hardware's little-endian layout.
#pragma once

#if defined(__AMX_TILE__) || defined(__AMX_INT8__) || defined(__AMX_BF16__)
#error "cpu/emulation/amx.h replaces the AMX intrinsics; include it only where AMX is not enabled (no -mamx-*)"
#endif

// GCC's <immintrin.h> defines the AMX intrinsics whatever the target flags (as macros and
// target("amx-tile") inline functions). Including it first and then replacing those names with
// macros lets a kernel include both, in either order.
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace compressops::amx_emulation {

inline constexpr int kNumTiles = 8;    // palette 1: max_names
inline constexpr int kMaxRows = 16;    // palette 1: max_rows
inline constexpr int kMaxColsb = 64;   // palette 1: bytes_per_row

struct TileState {
  bool configured = false;   // TILES_CONFIGURED
  uint8_t palette_id = 0;
  uint8_t start_row = 0;
  uint16_t colsb[kNumTiles] = {};
  uint8_t rows[kNumTiles] = {};
  alignas(64) uint8_t data[kNumTiles][kMaxRows][kMaxColsb] = {};
};

inline TileState& state() {
  static thread_local TileState s;
  return s;
}

namespace detail {

[[noreturn, gnu::format(printf, 2, 3)]] inline void fault(const char* insn, const char* fmt, ...) {
  std::fprintf(stderr, "compressops amx emulation: %s: ", insn);
  va_list args;
  va_start(args, fmt);
  std::vfprintf(stderr, fmt, args);
  va_end(args);
  std::fprintf(stderr, " (the hardware would fault here)\n");
  std::fflush(stderr);
  std::abort();
}

inline void reset(TileState& s) {
  s.configured = false;
  s.palette_id = 0;
  s.start_row = 0;
  std::memset(s.colsb, 0, sizeof(s.colsb));
  std::memset(s.rows, 0, sizeof(s.rows));
  std::memset(s.data, 0, sizeof(s.data));
}

inline void require_tile(const char* insn, const TileState& s, int t) {
  if (!s.configured) fault(insn, "tmm%d used while no tile configuration is loaded", t);
  if (s.rows[t] == 0) fault(insn, "tmm%d is not configured (rows = colsb = 0)", t);
}

inline void require_load_store(const char* insn, const TileState& s, int t) {
  require_tile(insn, s, t);
  if (s.colsb[t] % 4 != 0) fault(insn, "tmm%d colsb = %d is not a multiple of 4", t, int(s.colsb[t]));
  if (s.start_row >= s.rows[t]) {
    fault(insn, "tilecfg.start_row = %d >= tmm%d rows = %d", int(s.start_row), t, int(s.rows[t]));
  }
}

inline void zero_rows_from(TileState& s, int t, int first_row) {
  for (int r = first_row; r < kMaxRows; ++r) std::memset(s.data[t][r], 0, kMaxColsb);
}

inline void check_dot_product(const char* insn, const TileState& s, int d, int a, int b) {
  require_tile(insn, s, d);
  require_tile(insn, s, a);
  require_tile(insn, s, b);
  const int tiles[3] = {d, a, b};
  for (int t : tiles) {
    if (s.colsb[t] % 4 != 0) fault(insn, "tmm%d colsb = %d is not a multiple of 4", t, int(s.colsb[t]));
  }
  if (s.rows[d] != s.rows[a]) {
    fault(insn, "M mismatch: dst tmm%d rows = %d, a tmm%d rows = %d", d, int(s.rows[d]), a, int(s.rows[a]));
  }
  if (s.colsb[d] != s.colsb[b]) {
    fault(insn, "N mismatch: dst tmm%d colsb = %d, b tmm%d colsb = %d", d, int(s.colsb[d]), b,
          int(s.colsb[b]));
  }
  if (s.colsb[a] / 4 != s.rows[b]) {
    fault(insn, "K mismatch: a tmm%d colsb / 4 = %d, b tmm%d rows = %d", a, s.colsb[a] / 4, b,
          int(s.rows[b]));
  }
}

template <bool Signed>
inline int32_t int8_lane(uint8_t byte) {
  return Signed ? int32_t(int8_t(byte)) : int32_t(byte);
}

// TDPB[SU][SU]D: A signedness first, B second; dword groups of 4 bytes; B in VNNI layout
// (row k holds the 4 bytes of group k for each of the N columns). Sums wrap modulo 2^32.
template <bool ASigned, bool BSigned>
inline void dot_product_int8(const char* insn, int d, int a, int b) {
  TileState& s = state();
  check_dot_product(insn, s, d, a, b);
  const int m_rows = s.rows[d], n_cols = s.colsb[d] / 4, k_groups = s.colsb[a] / 4;
  for (int m = 0; m < m_rows; ++m) {
    uint32_t acc[kMaxColsb / 4];
    std::memcpy(acc, s.data[d][m], sizeof(acc));
    for (int k = 0; k < k_groups; ++k) {
      const uint8_t* x = &s.data[a][m][4 * k];
      for (int n = 0; n < n_cols; ++n) {
        const uint8_t* y = &s.data[b][k][4 * n];
        uint32_t sum = acc[n];
        for (int i = 0; i < 4; ++i) {
          sum += uint32_t(int8_lane<ASigned>(x[i]) * int8_lane<BSigned>(y[i]));   // |product| <= 2^16
        }
        acc[n] = sum;
      }
    }
    std::memcpy(s.data[d][m], acc, 4 * size_t(n_cols));
    std::memset(&s.data[d][m][4 * n_cols], 0, size_t(kMaxColsb - 4 * n_cols));
  }
  zero_rows_from(s, d, m_rows);
  s.start_row = 0;
}

inline float bits_to_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

inline uint32_t float_to_bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
}

// DAZ: a denormal input is read as a zero of the same sign.
inline float denormal_as_zero(float x) {
  const uint32_t bits = float_to_bits(x);
  return (bits & 0x7F800000u) == 0 ? bits_to_float(bits & 0x80000000u) : x;
}

inline float bf16_as_float(const uint8_t* p) {
  const uint32_t h = uint32_t(p[0]) | uint32_t(p[1]) << 8;
  return denormal_as_zero(bits_to_float(h << 16));
}

// Rounds a double that holds the exact result rounded to 53 bits (see the file comment) to fp32
// with FTZ: a result whose magnitude, rounded to 24 bits with an unbounded exponent, is below
// FLT_MIN becomes a zero of its sign.
inline float round_to_float_ftz(double r) {
  if (!(std::fabs(r) < 0x1p-126)) return static_cast<float>(r);   // normal, overflow, inf, NaN
  // Scaling by 2^200 is exact and puts any tiny result (>= 2^-266 here) in fp32's normal range,
  // where the conversion rounds to 24 bits as if the exponent were unbounded.
  const float scaled = static_cast<float>(r * 0x1p200);
  if (std::fabs(scaled) >= 0x1p74f) return std::signbit(r) ? -0x1p-126f : 0x1p-126f;
  return std::signbit(r) ? -0.0f : 0.0f;
}

inline float fma_daz_ftz(float c, float a, float b) {
  return round_to_float_ftz(double(denormal_as_zero(c)) + double(a) * double(b));
}

inline float add_daz_ftz(float x, float y) {
  return round_to_float_ftz(double(denormal_as_zero(x)) + double(denormal_as_zero(y)));
}

inline void dot_product_bf16(const char* insn, int d, int a, int b) {
  TileState& s = state();
  check_dot_product(insn, s, d, a, b);
  const int m_rows = s.rows[d], n_cols = s.colsb[d] / 4, k_pairs = s.colsb[a] / 4;
  for (int m = 0; m < m_rows; ++m) {
    float even[kMaxColsb / 4], odd[kMaxColsb / 4];
    for (int n = 0; n < n_cols; ++n) even[n] = odd[n] = 0.0f;
    for (int k = 0; k < k_pairs; ++k) {
      const float a_even = bf16_as_float(&s.data[a][m][4 * k]);
      const float a_odd = bf16_as_float(&s.data[a][m][4 * k + 2]);
      for (int n = 0; n < n_cols; ++n) {
        even[n] = fma_daz_ftz(even[n], a_even, bf16_as_float(&s.data[b][k][4 * n]));
        odd[n] = fma_daz_ftz(odd[n], a_odd, bf16_as_float(&s.data[b][k][4 * n + 2]));
      }
    }
    for (int n = 0; n < n_cols; ++n) {
      float c;
      std::memcpy(&c, &s.data[d][m][4 * n], sizeof(c));
      c = add_daz_ftz(c, add_daz_ftz(even[n], odd[n]));
      std::memcpy(&s.data[d][m][4 * n], &c, sizeof(c));
    }
    std::memset(&s.data[d][m][4 * n_cols], 0, size_t(kMaxColsb - 4 * n_cols));
  }
  zero_rows_from(s, d, m_rows);
  s.start_row = 0;
}

template <int D, int A, int B>
constexpr void check_distinct_tiles() {
  static_assert(D != A && D != B && A != B,
                "AMX dot products need three different tiles (dst, a, b); the hardware raises #UD");
}

}  // namespace detail

// LDTILECFG: the 64-byte configuration at `config` (byte 0 palette_id, byte 1 start_row,
// bytes 16 + 2t colsb of tile t as little-endian uint16, byte 48 + t rows of tile t).
inline void tile_loadconfig(const void* config) {
  constexpr const char* insn = "LDTILECFG";
  uint8_t buf[64];
  std::memcpy(buf, config, sizeof(buf));
  TileState& s = state();
  if (buf[0] > 1) detail::fault(insn, "palette_id %d (only 0 and 1 exist)", int(buf[0]));
  if (buf[0] == 0) {
    detail::reset(s);
    return;
  }
  auto reserved = [&](int first, int last) {
    for (int i = first; i <= last; ++i) {
      if (buf[i] != 0) detail::fault(insn, "reserved byte %d is %d, must be 0", i, int(buf[i]));
    }
  };
  reserved(2, 15);
  reserved(16 + 2 * kNumTiles, 47);
  reserved(48 + kNumTiles, 63);
  uint16_t colsb[kNumTiles];
  uint8_t rows[kNumTiles];
  for (int t = 0; t < kNumTiles; ++t) {
    colsb[t] = uint16_t(buf[16 + 2 * t] | buf[17 + 2 * t] << 8);
    rows[t] = buf[48 + t];
    if (colsb[t] > kMaxColsb) detail::fault(insn, "tmm%d colsb = %d > %d", t, int(colsb[t]), kMaxColsb);
    if (rows[t] > kMaxRows) detail::fault(insn, "tmm%d rows = %d > %d", t, int(rows[t]), kMaxRows);
    if ((rows[t] == 0) != (colsb[t] == 0)) {
      detail::fault(insn, "tmm%d has rows = %d and colsb = %d (both zero or both nonzero)", t, int(rows[t]),
                    int(colsb[t]));
    }
  }
  detail::reset(s);
  s.configured = true;
  s.palette_id = buf[0];
  s.start_row = buf[1];
  std::memcpy(s.colsb, colsb, sizeof(colsb));
  std::memcpy(s.rows, rows, sizeof(rows));
}

// STTILECFG: 64 zero bytes when no configuration is loaded.
inline void tile_storeconfig(void* config) {
  const TileState& s = state();
  uint8_t buf[64] = {};
  if (s.configured) {
    buf[0] = s.palette_id;
    buf[1] = s.start_row;
    for (int t = 0; t < kNumTiles; ++t) {
      buf[16 + 2 * t] = uint8_t(s.colsb[t] & 0xFF);
      buf[17 + 2 * t] = uint8_t(s.colsb[t] >> 8);
      buf[48 + t] = s.rows[t];
    }
  }
  std::memcpy(config, buf, sizeof(buf));
}

// TILERELEASE: back to the init state (no configuration, all tiles zero).
inline void tile_release() { detail::reset(state()); }

// TILELOADD / TILELOADDT1: rows start_row..rows-1 of tile t from base + row * stride, colsb bytes
// each; the rest of each loaded row and the rows from start_row up that are not loaded are zeroed.
inline void tile_loadd(const char* insn, int t, const void* base, long long stride) {
  TileState& s = state();
  detail::require_load_store(insn, s, t);
  const int first = s.start_row;
  detail::zero_rows_from(s, t, first);
  const unsigned char* p = static_cast<const unsigned char*>(base);
  for (int r = first; r < s.rows[t]; ++r) std::memcpy(s.data[t][r], p + r * stride, s.colsb[t]);
  s.start_row = 0;
}

// TILESTORED: writes rows start_row..rows-1 of tile t, colsb bytes each, and nothing else.
inline void tile_stored(int t, void* base, long long stride) {
  TileState& s = state();
  detail::require_load_store("TILESTORED", s, t);
  unsigned char* p = static_cast<unsigned char*>(base);
  for (int r = s.start_row; r < s.rows[t]; ++r) std::memcpy(p + r * stride, s.data[t][r], s.colsb[t]);
  s.start_row = 0;
}

// TILEZERO: the whole tile (all 16 rows of 64 bytes).
inline void tile_zero(int t) {
  TileState& s = state();
  detail::require_tile("TILEZERO", s, t);
  detail::zero_rows_from(s, t, 0);
  s.start_row = 0;
}

template <int D, int A, int B>
inline void tile_dpbssd() {
  detail::check_distinct_tiles<D, A, B>();
  detail::dot_product_int8<true, true>("TDPBSSD", D, A, B);
}

template <int D, int A, int B>
inline void tile_dpbsud() {
  detail::check_distinct_tiles<D, A, B>();
  detail::dot_product_int8<true, false>("TDPBSUD", D, A, B);
}

template <int D, int A, int B>
inline void tile_dpbusd() {
  detail::check_distinct_tiles<D, A, B>();
  detail::dot_product_int8<false, true>("TDPBUSD", D, A, B);
}

template <int D, int A, int B>
inline void tile_dpbuud() {
  detail::check_distinct_tiles<D, A, B>();
  detail::dot_product_int8<false, false>("TDPBUUD", D, A, B);
}

template <int D, int A, int B>
inline void tile_dpbf16ps() {
  detail::check_distinct_tiles<D, A, B>();
  detail::dot_product_bf16("TDPBF16PS", D, A, B);
}

}  // namespace compressops::amx_emulation

// The intrinsics' names and call syntax. GCC's own definitions (from <immintrin.h>, above) are
// replaced; the functions behind them live in the namespace, so no GCC builtin name is reused.
#undef _tile_loadconfig
#undef _tile_storeconfig
#undef _tile_release
#undef _tile_loadd
#undef _tile_stream_loadd
#undef _tile_stored
#undef _tile_zero
#undef _tile_dpbssd
#undef _tile_dpbsud
#undef _tile_dpbusd
#undef _tile_dpbuud
#undef _tile_dpbf16ps

#define COMPRESSOPS_AMX_EMU_TILE_0 0
#define COMPRESSOPS_AMX_EMU_TILE_1 1
#define COMPRESSOPS_AMX_EMU_TILE_2 2
#define COMPRESSOPS_AMX_EMU_TILE_3 3
#define COMPRESSOPS_AMX_EMU_TILE_4 4
#define COMPRESSOPS_AMX_EMU_TILE_5 5
#define COMPRESSOPS_AMX_EMU_TILE_6 6
#define COMPRESSOPS_AMX_EMU_TILE_7 7
// Two levels, so that a macro naming a tile is expanded before its number is pasted.
#define COMPRESSOPS_AMX_EMU_TILE(t) COMPRESSOPS_AMX_EMU_TILE_##t
#define COMPRESSOPS_AMX_EMU_LOADD(insn, t, base, stride) \
  ::compressops::amx_emulation::tile_loadd(insn, COMPRESSOPS_AMX_EMU_TILE(t), (base), (long long)(stride))
#define COMPRESSOPS_AMX_EMU_STORED(t, base, stride) \
  ::compressops::amx_emulation::tile_stored(COMPRESSOPS_AMX_EMU_TILE(t), (base), (long long)(stride))
#define COMPRESSOPS_AMX_EMU_DP(name, d, a, b)                                                   \
  ::compressops::amx_emulation::name<COMPRESSOPS_AMX_EMU_TILE(d), COMPRESSOPS_AMX_EMU_TILE(a), \
                                     COMPRESSOPS_AMX_EMU_TILE(b)>()

#define _tile_loadconfig(config) ::compressops::amx_emulation::tile_loadconfig(config)
#define _tile_storeconfig(config) ::compressops::amx_emulation::tile_storeconfig(config)
#define _tile_release() ::compressops::amx_emulation::tile_release()
#define _tile_loadd(dst, base, stride) COMPRESSOPS_AMX_EMU_LOADD("TILELOADD", dst, base, stride)
#define _tile_stream_loadd(dst, base, stride) COMPRESSOPS_AMX_EMU_LOADD("TILELOADDT1", dst, base, stride)
#define _tile_stored(src, base, stride) COMPRESSOPS_AMX_EMU_STORED(src, base, stride)
#define _tile_zero(dst) ::compressops::amx_emulation::tile_zero(COMPRESSOPS_AMX_EMU_TILE(dst))
#define _tile_dpbssd(dst, a, b) COMPRESSOPS_AMX_EMU_DP(tile_dpbssd, dst, a, b)
#define _tile_dpbsud(dst, a, b) COMPRESSOPS_AMX_EMU_DP(tile_dpbsud, dst, a, b)
#define _tile_dpbusd(dst, a, b) COMPRESSOPS_AMX_EMU_DP(tile_dpbusd, dst, a, b)
#define _tile_dpbuud(dst, a, b) COMPRESSOPS_AMX_EMU_DP(tile_dpbuud, dst, a, b)
#define _tile_dpbf16ps(dst, a, b) COMPRESSOPS_AMX_EMU_DP(tile_dpbf16ps, dst, a, b)
