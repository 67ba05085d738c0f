// Checks the AMX emulation header (csrc/cpu/emulation/amx.h) against scalar loops written from the
// Intel SDM pseudo-code. Built with -mamx-tile -mamx-int8 -mamx-bf16 instead, the same program runs
// the real instructions against the same loops, so the two builds check one another.
//
// Usage: test_amx_emulation [seed]
// Prints "mode ...", one "digest <case> <hex>" line per case whose result memory is compared between
// an emulated and a hardware build (tests/test_amx_emulation.py), and ends with "N passed, M failed";
// exits 0 when M == 0. Exits 77 when built for AMX but Linux refuses the tile-data permission.
#include <immintrin.h>   // before the emulation header on purpose: kernels include both

#if defined(__AMX_TILE__)
#include <sys/syscall.h>
#define AMX_EMULATED 0
#else
#include "cpu/emulation/amx.h"
#define AMX_EMULATED 1
#endif

#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cinttypes>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <functional>
#include <string>
#include <thread>
#include <vector>

namespace {

int g_passed = 0;
int g_failed = 0;

__attribute__((format(printf, 2, 3))) void check(bool ok, const char* fmt, ...) {
  if (ok) {
    ++g_passed;
    return;
  }
  ++g_failed;
  if (g_failed > 40) return;
  std::printf("FAIL: ");
  va_list args;
  va_start(args, fmt);
  std::vprintf(fmt, args);
  va_end(args);
  std::printf("\n");
}

// The 64-byte LDTILECFG operand, declared by the caller as with the real intrinsics.
struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved0[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};
static_assert(sizeof(TileConfig) == 64, "LDTILECFG reads 64 bytes");

struct TileShape {
  int tile, rows, colsb;
};

TileConfig make_config(std::initializer_list<TileShape> tiles, int start_row = 0) {
  TileConfig c;
  std::memset(&c, 0, sizeof(c));
  c.palette_id = 1;
  c.start_row = uint8_t(start_row);
  for (const TileShape& t : tiles) {
    c.rows[t.tile] = uint8_t(t.rows);
    c.colsb[t.tile] = uint16_t(t.colsb);
  }
  return c;
}

struct Rng {
  uint64_t s;
  uint64_t next() {   // splitmix64: the same stream in every build
    uint64_t z = (s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  int below(int n) { return int(next() % uint64_t(n)); }
  uint8_t byte() { return uint8_t(next()); }
};

uint64_t g_seed = 1;

void digest(const std::string& name, const void* p, size_t n) {
  uint64_t h = 1469598103934665603ULL;   // FNV-1a
  const auto* b = static_cast<const uint8_t*>(p);
  for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ULL;
  std::printf("digest %s %016" PRIx64 "\n", name.c_str(), h);
}

// GCC's TILELOADD asm does not tell the compiler that it reads memory; keep stores before it.
inline void barrier() { asm volatile("" ::: "memory"); }

bool request_tile_permission() {
#if AMX_EMULATED
  return true;
#else
  constexpr long kArchReqXcompPerm = 0x1023;
  constexpr long kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#endif
}

// The intrinsics take tile numbers as literals; these switch a runtime number onto them.
#define COMPRESSOPS_TEST_TILE_SWITCH(t, OP) \
  switch (t) {                              \
    case 0: OP(0); break;                   \
    case 1: OP(1); break;                   \
    case 2: OP(2); break;                   \
    case 3: OP(3); break;                   \
    case 4: OP(4); break;                   \
    case 5: OP(5); break;                   \
    case 6: OP(6); break;                   \
    case 7: OP(7); break;                   \
    default: std::abort();                  \
  }

void load_tile(int t, const void* base, long stride, bool stream = false) {
  barrier();
#define LOAD_ONE(n)                     \
  if (stream) {                         \
    _tile_stream_loadd(n, base, stride); \
  } else {                              \
    _tile_loadd(n, base, stride);       \
  }
  COMPRESSOPS_TEST_TILE_SWITCH(t, LOAD_ONE)
#undef LOAD_ONE
}

void store_tile(int t, void* base, long stride) {
#define STORE_ONE(n) _tile_stored(n, base, stride)
  COMPRESSOPS_TEST_TILE_SWITCH(t, STORE_ONE)
#undef STORE_ONE
  barrier();
}

void zero_tile(int t) {
#define ZERO_ONE(n) _tile_zero(n)
  COMPRESSOPS_TEST_TILE_SWITCH(t, ZERO_ONE)
#undef ZERO_ONE
}

enum Variant { kSS, kSU, kUS, kUU, kBF16 };
const char* const kVariantName[] = {"dpbssd", "dpbsud", "dpbusd", "dpbuud", "dpbf16ps"};

// dst, a, b = tmm2, tmm0, tmm1, or tmm7, tmm5, tmm3 when `high` (so tile numbers are not fixed).
void dot_product(Variant v, bool high) {
  barrier();
  if (!high) {
    switch (v) {
      case kSS: _tile_dpbssd(2, 0, 1); break;
      case kSU: _tile_dpbsud(2, 0, 1); break;
      case kUS: _tile_dpbusd(2, 0, 1); break;
      case kUU: _tile_dpbuud(2, 0, 1); break;
      case kBF16: _tile_dpbf16ps(2, 0, 1); break;
    }
  } else {
    switch (v) {
      case kSS: _tile_dpbssd(7, 5, 3); break;
      case kSU: _tile_dpbsud(7, 5, 3); break;
      case kUS: _tile_dpbusd(7, 5, 3); break;
      case kUU: _tile_dpbuud(7, 5, 3); break;
      case kBF16: _tile_dpbf16ps(7, 5, 3); break;
    }
  }
  barrier();
}

#if AMX_EMULATED
namespace emu = compressops::amx_emulation;

// Writes garbage where tile t holds no data (rows >= rows, bytes >= colsb), so that an operation
// that should zero those parts is seen to do it.
void poke_outside(int t, int rows, int colsb) {
  for (int r = 0; r < emu::kMaxRows; ++r) {
    for (int c = 0; c < emu::kMaxColsb; ++c) {
      if (r >= rows || c >= colsb) emu::state().data[t][r][c] = 0xCD;
    }
  }
}

bool zero_outside(int t, int rows, int colsb) {
  for (int r = 0; r < emu::kMaxRows; ++r) {
    for (int c = 0; c < emu::kMaxColsb; ++c) {
      if ((r >= rows || c >= colsb) && emu::state().data[t][r][c] != 0) return false;
    }
  }
  return true;
}
#endif

// ---------------------------------------------------------------------------------------------
// Configuration

void test_config() {
  uint8_t out[64];
  _tile_release();
  std::memset(out, 0xEE, sizeof(out));
  _tile_storeconfig(out);
  bool zeros = true;
  for (uint8_t b : out) zeros &= (b == 0);
  check(zeros, "STTILECFG with no configuration must store 64 zero bytes");

  // The limits, one row of 4 bytes, and colsb values LDTILECFG accepts though not multiples of 4.
  const TileConfig cfg = make_config({{0, 16, 64}, {3, 1, 4}, {5, 7, 13}, {6, 16, 2}, {7, 3, 63}});
  _tile_loadconfig(&cfg);
  std::memset(out, 0xEE, sizeof(out));
  _tile_storeconfig(out);
  check(std::memcmp(out, &cfg, 64) == 0, "STTILECFG must return the loaded configuration");
  _tile_release();
  std::memset(out, 0xEE, sizeof(out));
  _tile_storeconfig(out);
  zeros = true;
  for (uint8_t b : out) zeros &= (b == 0);
  check(zeros, "TILERELEASE must return to the unconfigured state");
}

// Each thread has its own configuration and tiles, as on hardware.
void test_thread_local_state() {
  const TileConfig mine = make_config({{0, 16, 64}, {4, 2, 8}});
  _tile_loadconfig(&mine);
  uint8_t seen_by_other[64], other_after[64], mine_after[64];
  std::thread other([&] {
    _tile_storeconfig(seen_by_other);
    const TileConfig theirs = make_config({{1, 3, 12}});
    _tile_loadconfig(&theirs);
    _tile_storeconfig(other_after);
    _tile_release();
  });
  other.join();
  _tile_storeconfig(mine_after);
  _tile_release();
  bool zeros = true;
  for (uint8_t b : seen_by_other) zeros &= (b == 0);
  check(zeros, "a new thread must start with no tile configuration");
  check(other_after[16 + 2] == 12 && other_after[48 + 1] == 3, "the other thread's configuration");
  check(std::memcmp(mine_after, &mine, 64) == 0, "another thread's LDTILECFG must not change this thread's");
}

// ---------------------------------------------------------------------------------------------
// TILELOADD / TILESTORED / TILEZERO

struct LoadStoreCase {
  int tile, rows, colsb;
  long load_stride, store_stride;
  bool stream;
};

void test_load_store(const LoadStoreCase& lc, const std::string& name) {
  Rng rng{g_seed ^ std::hash<std::string>{}(name)};
  const long ls = lc.load_stride, ss = lc.store_stride;
  const size_t src_size = size_t(std::labs(ls)) * size_t(lc.rows) + 64;
  const size_t dst_size = size_t(std::labs(ss)) * size_t(lc.rows) + 64;
  std::vector<uint8_t> src(src_size), dst(dst_size, 0xAB);
  for (auto& b : src) b = rng.byte();
  // A negative stride walks down from the last row.
  const uint8_t* src_base = src.data() + (ls < 0 ? size_t(-ls) * size_t(lc.rows - 1) : 0);
  uint8_t* dst_base = dst.data() + (ss < 0 ? size_t(-ss) * size_t(lc.rows - 1) : 0);

  const TileConfig cfg = make_config({{lc.tile, lc.rows, lc.colsb}});
  _tile_loadconfig(&cfg);
#if AMX_EMULATED
  poke_outside(lc.tile, 0, 0);   // the whole tile
#endif
  load_tile(lc.tile, src_base, ls, lc.stream);
#if AMX_EMULATED
  check(zero_outside(lc.tile, lc.rows, lc.colsb), "%s: load must zero the tile outside rows x colsb",
        name.c_str());
#endif
  store_tile(lc.tile, dst_base, ss);
  _tile_release();

  size_t bad_copy = 0, bad_untouched = 0;
  std::vector<uint8_t> written(dst_size, 0);
  for (int r = 0; r < lc.rows; ++r) {
    for (int c = 0; c < lc.colsb; ++c) {
      const uint8_t* d = dst_base + r * ss + c;
      written[size_t(d - dst.data())] = 1;
      bad_copy += (*d != src_base[r * ls + c]);
    }
  }
  for (size_t i = 0; i < dst_size; ++i) bad_untouched += (!written[i] && dst[i] != 0xAB);
  check(bad_copy == 0, "%s: %zu bytes differ after load + store", name.c_str(), bad_copy);
  check(bad_untouched == 0, "%s: store wrote %zu bytes outside rows x colsb", name.c_str(), bad_untouched);
  digest(name, dst.data(), dst.size());
}

void test_tile_zero() {
  Rng rng{g_seed ^ 0x2E40};
  std::vector<uint8_t> src(16 * 64), dst(16 * 64, 0xAB);
  for (auto& b : src) b = rng.byte();
  const TileConfig cfg = make_config({{6, 16, 64}, {1, 5, 24}});
  _tile_loadconfig(&cfg);
  load_tile(6, src.data(), 64);
  load_tile(1, src.data(), 64);
  zero_tile(6);
#if AMX_EMULATED
  poke_outside(1, 5, 24);
#endif
  zero_tile(1);
#if AMX_EMULATED
  check(zero_outside(6, 0, 0) && zero_outside(1, 0, 0), "TILEZERO must zero all 16 x 64 bytes");
#endif
  store_tile(6, dst.data(), 64);
  bool ok = true;
  for (uint8_t b : dst) ok &= (b == 0);
  check(ok, "TILEZERO: stored tile must be all zero");
  _tile_release();
  digest("tile_zero", dst.data(), dst.size());
}

// ---------------------------------------------------------------------------------------------
// Integer dot products

template <bool Signed>
int32_t lane(uint8_t b) {
  return Signed ? int32_t(int8_t(b)) : int32_t(b);
}

// C[m][n] += sum over k < K, i < 4 of A[m][4k + i] * B[k][4n + i], modulo 2^32.
void int8_scalar(Variant v, int M, int N, int K, const uint8_t* A, long lda, const uint8_t* B, long ldb,
                 uint32_t* C, long ldc_elems) {
  const bool as = (v == kSS || v == kSU), bs = (v == kSS || v == kUS);
  for (int m = 0; m < M; ++m) {
    for (int n = 0; n < N; ++n) {
      uint32_t acc = C[m * ldc_elems + n];
      for (int k = 0; k < K; ++k) {
        for (int i = 0; i < 4; ++i) {
          const uint8_t x = A[m * lda + 4 * k + i], y = B[k * ldb + 4 * n + i];
          const int32_t xs = as ? lane<true>(x) : lane<false>(x);
          const int32_t ys = bs ? lane<true>(y) : lane<false>(y);
          acc += uint32_t(xs * ys);
        }
      }
      C[m * ldc_elems + n] = acc;
    }
  }
}

struct DpShape {
  int M, N, K;   // K: groups of 4 bytes (int8) or pairs of bf16
};

// Runs one dot product through the tiles: C (M x N dwords) += A (M rows, 4K bytes) . B (K rows, 4N
// bytes), each read and written with its own stride in bytes.
void run_tiles(Variant v, const DpShape& s, bool high, const uint8_t* A, long lda, const uint8_t* B, long ldb,
               void* C, long ldc) {
  const int ta = high ? 5 : 0, tb = high ? 3 : 1, tc = high ? 7 : 2;
  const TileConfig cfg = make_config({{ta, s.M, 4 * s.K}, {tb, s.K, 4 * s.N}, {tc, s.M, 4 * s.N}});
  _tile_loadconfig(&cfg);
  load_tile(tc, C, ldc);
  load_tile(ta, A, lda);
  load_tile(tb, B, ldb);
#if AMX_EMULATED
  poke_outside(tc, s.M, 4 * s.N);
#endif
  dot_product(v, high);
#if AMX_EMULATED
  check(zero_outside(tc, s.M, 4 * s.N), "%s %dx%dx%d: dot product must zero dst outside M x 4N",
        kVariantName[v], s.M, s.N, s.K);
#endif
  store_tile(tc, C, ldc);
  _tile_release();
}

void test_int8(Variant v, const DpShape& s, bool high, bool padded) {
  char name[96];
  std::snprintf(name, sizeof(name), "%s_%dx%dx%d%s%s", kVariantName[v], s.M, s.N, s.K, high ? "_high" : "",
                padded ? "_padded" : "");
  Rng rng{g_seed ^ std::hash<std::string>{}(name)};
  const long lda = 4 * s.K + (padded ? 4 * rng.below(4) + 3 : 0);
  const long ldb = 4 * s.N + (padded ? 4 * rng.below(4) + 5 : 0);
  const long ldc_elems = s.N + (padded ? 1 + rng.below(3) : 0);
  std::vector<uint8_t> A(size_t(lda) * s.M), B(size_t(ldb) * s.K);
  std::vector<uint32_t> C(size_t(ldc_elems) * s.M), expect;
  for (auto& b : A) b = rng.byte();
  for (auto& b : B) b = rng.byte();
  for (auto& c : C) c = uint32_t(rng.next());
  expect = C;
  int8_scalar(v, s.M, s.N, s.K, A.data(), lda, B.data(), ldb, expect.data(), ldc_elems);
  run_tiles(v, s, high, A.data(), lda, B.data(), ldb, C.data(), 4 * ldc_elems);
  size_t bad = 0;
  for (size_t i = 0; i < C.size(); ++i) bad += (C[i] != expect[i]);
  check(bad == 0, "%s: %zu of %zu int32 differ from the scalar loop", name, bad, C.size());
  digest(name, C.data(), C.size() * sizeof(uint32_t));
}

// Sums that leave the 32-bit range must wrap (no saturation, unlike VPDPBUSDS).
void test_int8_wraparound() {
  struct Case {
    Variant v;
    uint8_t a, b;
    uint32_t c0;
  };
  const Case cases[] = {
      {kSS, 0x80, 0x80, 0x7FFFFFFFu - 1000u},   // + 64 * 16384: past INT32_MAX
      {kSU, 0x80, 0xFF, 0x80000005u},           // + 64 * -32640: below INT32_MIN
      {kUS, 0xFF, 0x80, 0x80000005u},
      {kUU, 0xFF, 0xFF, 0xFFFFFF00u},           // + 64 * 65025: past UINT32_MAX
  };
  for (const Case& cs : cases) {
    const bool as = (cs.v == kSS || cs.v == kSU), bs = (cs.v == kSS || cs.v == kUS);
    const int64_t a = as ? int8_t(cs.a) : cs.a, b = bs ? int8_t(cs.b) : cs.b;
    const int64_t c0 = cs.v == kUU ? int64_t(cs.c0) : int64_t(int32_t(cs.c0));
    const int64_t exact = c0 + 64 * a * b;
    const bool overflows = cs.v == kUU ? exact > int64_t(UINT32_MAX) : (exact > INT32_MAX || exact < INT32_MIN);
    check(overflows, "%s wrap-around case must leave the 32-bit range", kVariantName[cs.v]);

    std::vector<uint8_t> A(64, cs.a), B(16 * 4, cs.b);
    uint32_t C = cs.c0, expect = cs.c0;
    int8_scalar(cs.v, 1, 1, 16, A.data(), 64, B.data(), 4, &expect, 1);
    run_tiles(cs.v, DpShape{1, 1, 16}, false, A.data(), 64, B.data(), 4, &C, 4);
    check(C == uint32_t(exact), "%s wrap-around: got %08x, want %08x (%lld mod 2^32)", kVariantName[cs.v], C,
          uint32_t(exact), (long long)exact);
    check(expect == uint32_t(exact), "%s wrap-around: scalar loop gives %08x", kVariantName[cs.v], expect);
    digest(std::string("wrap_") + kVariantName[cs.v], &C, sizeof(C));
  }
}

// ---------------------------------------------------------------------------------------------
// BF16 dot product

float bf16_bits_to_float(uint16_t h) {
  const uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

uint32_t float_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof(b));
  return b;
}

float bits_float(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof(f));
  return f;
}

uint16_t exact_bf16(float f) {   // f must be exactly representable
  return uint16_t(float_bits(f) >> 16);
}

// The SDM's TDPBF16PS order, computed with the CPU's own fp32 FMA and add under MXCSR DAZ = FTZ = 1
// and round-to-nearest-even: an independent implementation of the same arithmetic as the header.
__attribute__((noinline)) void bf16_scalar_sdm(int M, int N, int K, const uint16_t* A, long lda_elems,
                                               const uint16_t* B, long ldb_elems, float* C, long ldc_elems) {
  const unsigned saved = _mm_getcsr();
  _mm_setcsr((saved & ~0x6000u) | 0x8040u);   // RC = nearest, FTZ (bit 15), DAZ (bit 6)
  barrier();
  for (int m = 0; m < M; ++m) {
    float even[16], odd[16];
    for (int n = 0; n < N; ++n) even[n] = odd[n] = 0.0f;
    for (int k = 0; k < K; ++k) {
      const __m128 a0 = _mm_set_ss(bf16_bits_to_float(A[m * lda_elems + 2 * k]));
      const __m128 a1 = _mm_set_ss(bf16_bits_to_float(A[m * lda_elems + 2 * k + 1]));
      for (int n = 0; n < N; ++n) {
        const __m128 b0 = _mm_set_ss(bf16_bits_to_float(B[k * ldb_elems + 2 * n]));
        const __m128 b1 = _mm_set_ss(bf16_bits_to_float(B[k * ldb_elems + 2 * n + 1]));
        even[n] = _mm_cvtss_f32(_mm_fmadd_ss(a0, b0, _mm_set_ss(even[n])));
        odd[n] = _mm_cvtss_f32(_mm_fmadd_ss(a1, b1, _mm_set_ss(odd[n])));
      }
    }
    for (int n = 0; n < N; ++n) {
      const __m128 t = _mm_add_ss(_mm_set_ss(even[n]), _mm_set_ss(odd[n]));
      C[m * ldc_elems + n] = _mm_cvtss_f32(_mm_add_ss(_mm_set_ss(C[m * ldc_elems + n]), t));
    }
  }
  barrier();
  _mm_setcsr(saved);
}

bool same_float(float x, float y) {
  return (std::isnan(x) && std::isnan(y)) || float_bits(x) == float_bits(y);
}

uint16_t random_bf16(Rng& rng, int min_exp, int max_exp) {
  const uint32_t sign = uint32_t(rng.next() & 1) << 15;
  const uint32_t exp = uint32_t(127 + min_exp + rng.below(max_exp - min_exp + 1));
  return uint16_t(sign | exp << 7 | uint32_t(rng.next() & 0x7F));
}

void test_bf16(const DpShape& s, bool high, bool padded) {
  char name[96];
  std::snprintf(name, sizeof(name), "dpbf16ps_%dx%dx%d%s%s", s.M, s.N, s.K, high ? "_high" : "",
                padded ? "_padded" : "");
  Rng rng{g_seed ^ std::hash<std::string>{}(name)};
  const long lda = 2 * s.K + (padded ? 2 * rng.below(4) + 1 : 0);   // in bf16 elements
  const long ldb = 2 * s.N + (padded ? 2 * rng.below(4) + 3 : 0);
  const long ldc = s.N + (padded ? 1 + rng.below(3) : 0);
  std::vector<uint16_t> A(size_t(lda) * s.M), B(size_t(ldb) * s.K);
  std::vector<float> C(size_t(ldc) * s.M);
  for (auto& h : A) h = random_bf16(rng, -8, 8);
  for (auto& h : B) h = random_bf16(rng, -8, 8);
  for (auto& c : C) {
    c = bits_float(uint32_t(rng.next() & 1) << 31 | uint32_t(127 - 4 + rng.below(11)) << 23 |
                   uint32_t(rng.next() & 0x7FFFFF));
  }
  std::vector<float> expect = C, C0 = C;
  bf16_scalar_sdm(s.M, s.N, s.K, A.data(), lda, B.data(), ldb, expect.data(), ldc);
  run_tiles(kBF16, s, high, reinterpret_cast<const uint8_t*>(A.data()), 2 * lda,
            reinterpret_cast<const uint8_t*>(B.data()), 2 * ldb, C.data(), 4 * ldc);
  size_t bad = 0;
  double worst = 0.0;
  for (int m = 0; m < s.M; ++m) {
    for (int n = 0; n < s.N; ++n) {
      const size_t i = size_t(m) * ldc + n;
      bad += !same_float(C[i], expect[i]);
      // float64 reference: exact products, double sums. Bound: K - 1 FMA roundings in each
      // partial sum (the first adds to +0 exactly), then two additions, each at most 2^-24
      // relative to the magnitudes involved.
      double ref = C0[i], mag = std::fabs(C0[i]);
      for (int k = 0; k < s.K; ++k) {
        for (int j = 0; j < 2; ++j) {
          const double p = double(bf16_bits_to_float(A[m * lda + 2 * k + j])) *
                           double(bf16_bits_to_float(B[k * ldb + 2 * n + j]));
          ref += p;
          mag += std::fabs(p);
        }
      }
      const double bound = (s.K + 1) * 0x1p-24 * mag * (1 + 1e-6);
      worst = std::max(worst, std::fabs(double(C[i]) - ref) / bound);
    }
  }
  check(bad == 0, "%s: %zu outputs differ from the SDM-order scalar loop", name, bad);
  check(worst <= 1.0, "%s: error vs float64 reaches %.3f of the bound (K + 1) * 2^-24 * sum|terms|", name,
        worst);
  digest(name, C.data(), C.size() * sizeof(float));
}

// One row, one column: C := dst + sum over k of A[2k+j] * B[2k+j], inputs given as floats.
float bf16_one(float dst, const std::vector<float>& a, const std::vector<float>& b) {
  const int K = int(a.size()) / 2;
  std::vector<uint16_t> A(a.size()), B(b.size());
  for (size_t i = 0; i < a.size(); ++i) A[i] = exact_bf16(a[i]);
  for (size_t i = 0; i < b.size(); ++i) B[i] = exact_bf16(b[i]);
  float C = dst;
  run_tiles(kBF16, DpShape{1, 1, K}, false, reinterpret_cast<const uint8_t*>(A.data()), 4 * K,
            reinterpret_cast<const uint8_t*>(B.data()), 4, &C, 4);
  return C;
}

float bf16_one_scalar(float dst, const std::vector<float>& a, const std::vector<float>& b) {
  std::vector<uint16_t> A(a.size()), B(b.size());
  for (size_t i = 0; i < a.size(); ++i) A[i] = exact_bf16(a[i]);
  for (size_t i = 0; i < b.size(); ++i) B[i] = exact_bf16(b[i]);
  float C = dst;
  bf16_scalar_sdm(1, 1, int(a.size()) / 2, A.data(), long(a.size()), B.data(), 2, &C, 1);
  return C;
}

void test_bf16_rules() {
  const float tiny_bf16 = bf16_bits_to_float(0x0001);   // a bf16 denormal
  struct Case {
    const char* what;
    float dst;
    std::vector<float> a, b;
    float want;
  };
  const std::vector<Case> cases = {
      // SDM order: the even and odd partial sums meet before dst. Adding each product into dst
      // in turn (the intrinsics guide's pseudo-code) would round 1 + 2^-24 back to 1 twice.
      {"partial sums added before dst", 1.0f, {0x1p-12f, 0x1p-12f}, {0x1p-12f, 0x1p-12f}, 1.0f + 0x1p-23f},
      {"DAZ on bf16 inputs", 0.0f, {tiny_bf16, 0.0f}, {0x1p100f, 0.0f}, 0.0f},
      {"FTZ on a denormal product", 0.0f, {0x1p-70f, 0.0f}, {0x1p-70f, 0.0f}, 0.0f},
      // Without DAZ the sum would be 1.5 * 2^-126, a normal number.
      {"DAZ on dst", bits_float(0x00400000), {0x1p-63f, 0.0f}, {0x1p-63f, 0.0f}, 0x1p-126f},
      // The partial sums start at +0 and +0 + -0 = +0, so a -0 dst ends as +0 (adding the -0
      // products into dst in turn would keep -0).
      {"signed zeros", -0.0f, {-0.0f, -0.0f}, {1.0f, 1.0f}, 0.0f},
      {"overflow to inf", 0.0f, {0x1p100f, 0.0f}, {0x1p100f, 0.0f}, INFINITY},
      // Tininess after rounding: the even sum is 2^-126 + 2^-140 + 2^-146 after three steps, and
      // the fourth adds -(1 + 2^-7)^2 * 2^-140, leaving 2^-126 - 2^-154, which rounds up to FLT_MIN.
      {"FTZ decides tininess after rounding",
       0.0f,
       {0x1p-63f, 0.0f, 0x1p-70f, 0.0f, 0x1p-73f, 0.0f, -(1.0f + 0x1p-7f) * 0x1p-70f, 0.0f},
       {0x1p-63f, 0.0f, 0x1p-70f, 0.0f, 0x1p-73f, 0.0f, (1.0f + 0x1p-7f) * 0x1p-70f, 0.0f},
       0x1p-126f},
  };
  std::vector<float> results;
  for (const Case& c : cases) {
    const float got = bf16_one(c.dst, c.a, c.b);
    const float scalar = bf16_one_scalar(c.dst, c.a, c.b);
    check(same_float(got, c.want), "dpbf16ps %s: got %a (%08x), want %a", c.what, double(got), float_bits(got),
          double(c.want));
    check(same_float(scalar, c.want), "fp32 FMA/add with MXCSR DAZ/FTZ (%s): got %a, want %a", c.what,
          double(scalar), double(c.want));
    results.push_back(got);
  }
  digest("dpbf16ps_rules", results.data(), results.size() * sizeof(float));
}

// Every bf16 class (zeros, denormals, FLT_MIN, normal, huge, inf) and denormal/zero accumulators,
// against the CPU's fp32 FMA under MXCSR DAZ/FTZ. The finite pool keeps most sums finite, so that
// denormal inputs and tiny results decide outputs instead of being swamped by inf and NaN.
void test_bf16_special_values(const char* name, const std::vector<uint16_t>& pool, int K) {
  const uint32_t dst_specials[] = {0x00000000, 0x80000000, 0x00000001, 0x807FFFFF, 0x00800000,
                                   0x3F800000, 0xBF800001, 0x7F7FFFFF, 0xFF800000, 0x0DA24260};
  Rng rng{g_seed ^ std::hash<std::string>{}(name)};
  const DpShape s{8, 16, K};
  std::vector<uint16_t> A(size_t(s.M) * 2 * s.K), B(size_t(s.K) * 2 * s.N);
  std::vector<float> C(size_t(s.M) * s.N);
  for (auto& h : A) h = pool[size_t(rng.below(int(pool.size())))];
  for (auto& h : B) h = pool[size_t(rng.below(int(pool.size())))];
  for (auto& c : C) c = bits_float(dst_specials[rng.below(10)]);
  std::vector<float> expect = C;
  bf16_scalar_sdm(s.M, s.N, s.K, A.data(), 2 * s.K, B.data(), 2 * s.N, expect.data(), s.N);
  run_tiles(kBF16, s, false, reinterpret_cast<const uint8_t*>(A.data()), 4 * s.K,
            reinterpret_cast<const uint8_t*>(B.data()), 4 * s.N, C.data(), 4 * s.N);
  size_t bad = 0, finite = 0;
  for (size_t i = 0; i < C.size(); ++i) {
    bad += !same_float(C[i], expect[i]);
    finite += std::isfinite(expect[i]);
  }
  check(bad == 0, "%s: %zu of %zu differ from the MXCSR DAZ/FTZ loop", name, bad, C.size());
  check(finite > 0, "%s: every output is inf or NaN, the case tests nothing", name);
  // NaN payloads are not part of the emulated semantics: digest NaN as one pattern.
  for (auto& c : C) {
    if (std::isnan(c)) c = bits_float(0x7FC00000);
  }
  digest(name, C.data(), C.size() * sizeof(float));
}

// ---------------------------------------------------------------------------------------------
// Faults: each runs in a child process, which must die (SIGABRT with a message from the emulation;
// SIGILL for #UD or SIGSEGV for #GP on hardware).

struct ChildResult {
  bool signaled = false;
  int signal = 0, exit_code = -1;
  std::string stderr_text;
};

ChildResult run_child(const std::function<bool()>& body) {
  std::fflush(stdout);
  std::fflush(stderr);
  int fds[2];
  if (pipe(fds) != 0) std::abort();
  const pid_t pid = fork();
  if (pid < 0) std::abort();
  if (pid == 0) {
    close(fds[0]);
    dup2(fds[1], 2);
    const struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    const bool ok = request_tile_permission() && body();
    std::fflush(stdout);
    std::fflush(stderr);
    _exit(ok ? 0 : 1);
  }
  close(fds[1]);
  ChildResult r;
  char buf[512];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof(buf))) > 0) r.stderr_text.append(buf, size_t(n));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  r.signaled = WIFSIGNALED(status);
  r.signal = r.signaled ? WTERMSIG(status) : 0;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

void expect_fault(const char* what, const char* insn, const std::function<void()>& body) {
  const ChildResult r = run_child([&] {
    body();
    return true;
  });
#if AMX_EMULATED
  const bool ok = r.signaled && r.signal == SIGABRT &&
                  r.stderr_text.find("compressops amx emulation: ") != std::string::npos &&
                  r.stderr_text.find(insn) != std::string::npos;
#else
  const bool ok = r.signaled && (r.signal == SIGILL || r.signal == SIGSEGV);
#endif
  check(ok, "%s (%s) must fault: child %s %d, stderr: %s", what, insn, r.signaled ? "signal" : "exit",
        r.signaled ? r.signal : r.exit_code, r.stderr_text.c_str());
}

void expect_no_fault(const char* what, const std::function<bool()>& body) {
  const ChildResult r = run_child(body);
  check(!r.signaled && r.exit_code == 0, "%s: child %s %d, stderr: %s", what, r.signaled ? "signal" : "exit",
        r.signaled ? r.signal : r.exit_code, r.stderr_text.c_str());
}

void test_faults() {
  static uint8_t mem[16 * 64];
  auto bad_config = [](const char* what, const std::function<void(TileConfig&)>& edit) {
    TileConfig cfg = make_config({{0, 16, 64}, {1, 8, 32}});
    edit(cfg);
    expect_fault(what, "LDTILECFG", [cfg] { _tile_loadconfig(&cfg); });
  };
  bad_config("palette_id 2", [](TileConfig& c) { c.palette_id = 2; });
  bad_config("colsb 65", [](TileConfig& c) { c.colsb[2] = 65, c.rows[2] = 1; });
  bad_config("rows 17", [](TileConfig& c) { c.rows[2] = 17, c.colsb[2] = 4; });
  bad_config("rows 0 with colsb 8", [](TileConfig& c) { c.colsb[3] = 8; });
  bad_config("rows 3 with colsb 0", [](TileConfig& c) { c.rows[3] = 3; });
  bad_config("reserved byte 5", [](TileConfig& c) { c.reserved0[3] = 1; });
  bad_config("colsb of tile 8 (reserved bytes 32..47)", [](TileConfig& c) { c.colsb[8] = 4; });
  bad_config("rows of tile 15 (reserved bytes 56..63)", [](TileConfig& c) { c.rows[15] = 1; });

  auto configured = [](std::initializer_list<TileShape> tiles, int start_row = 0) {
    const TileConfig cfg = make_config(tiles, start_row);
    _tile_loadconfig(&cfg);
  };
  expect_fault("TILELOADD with no configuration", "TILELOADD", [] {
    _tile_release();
    _tile_loadd(0, mem, 64);
  });
  expect_fault("TILELOADD of an unconfigured tile", "TILELOADD", [&] {
    configured({{0, 16, 64}});
    _tile_loadd(4, mem, 64);
  });
  expect_fault("TILELOADD with colsb 6", "TILELOADD", [&] {
    configured({{0, 4, 6}});
    _tile_loadd(0, mem, 64);
  });
  expect_fault("TILELOADD with start_row >= rows", "TILELOADD", [&] {
    configured({{0, 4, 64}}, 4);
    _tile_loadd(0, mem, 64);
  });
  expect_fault("TILESTORED of an unconfigured tile", "TILESTORED", [&] {
    configured({{0, 16, 64}});
    _tile_stored(1, mem, 64);
  });
  expect_fault("TILEZERO of an unconfigured tile", "TILEZERO", [&] {
    configured({{0, 16, 64}});
    _tile_zero(6);
  });
  expect_fault("TDPBSSD with dst.rows != a.rows", "TDPBSSD", [&] {
    configured({{0, 8, 64}, {1, 16, 64}, {2, 7, 64}});
    _tile_dpbssd(2, 0, 1);
  });
  expect_fault("TDPBUUD with dst.colsb != b.colsb", "TDPBUUD", [&] {
    configured({{0, 8, 64}, {1, 16, 32}, {2, 8, 64}});
    _tile_dpbuud(2, 0, 1);
  });
  expect_fault("TDPBUSD with a.colsb / 4 != b.rows", "TDPBUSD", [&] {
    configured({{0, 8, 60}, {1, 16, 64}, {2, 8, 64}});
    _tile_dpbusd(2, 0, 1);
  });
  expect_fault("TDPBSUD with an unconfigured b", "TDPBSUD", [&] {
    configured({{0, 8, 64}, {2, 8, 64}});
    _tile_dpbsud(2, 0, 1);
  });
  expect_fault("TDPBSSD with a.colsb 6", "TDPBSSD", [&] {
    configured({{0, 8, 6}, {1, 1, 64}, {2, 8, 64}});
    _tile_dpbssd(2, 0, 1);
  });
  expect_fault("TDPBF16PS with dst.colsb != b.colsb", "TDPBF16PS", [&] {
    configured({{0, 4, 64}, {1, 16, 16}, {2, 4, 12}});
    _tile_dpbf16ps(2, 0, 1);
  });

  // What the SDM allows though kernels never do it; run apart so that a hardware surprise is one
  // failed check, not a crash of the whole program.
  expect_no_fault("LDTILECFG palette 0 ignores the other bytes", [] {
    TileConfig cfg = make_config({{0, 16, 64}});
    cfg.palette_id = 0;
    cfg.reserved0[0] = 7;
    _tile_loadconfig(&cfg);
    uint8_t out[64];
    _tile_storeconfig(out);
    for (uint8_t b : out) {
      if (b != 0) return false;
    }
    return true;
  });
  expect_no_fault("TILEZERO of a tile whose colsb (13) is not a multiple of 4", [] {
    const TileConfig cfg = make_config({{5, 7, 13}});
    _tile_loadconfig(&cfg);
#if AMX_EMULATED
    poke_outside(5, 0, 0);
#endif
    zero_tile(5);
#if AMX_EMULATED
    if (!zero_outside(5, 0, 0)) return false;
#endif
    _tile_release();
    return true;
  });
  expect_no_fault("start_row: load and store resume at start_row, then reset it", [] {
    uint8_t src[8 * 16], dst[8 * 16];
    for (int i = 0; i < 8 * 16; ++i) src[i] = uint8_t(i + 1);
    TileConfig cfg = make_config({{1, 8, 16}}, 3);
    _tile_loadconfig(&cfg);
    uint8_t out[64];
    _tile_storeconfig(out);
    bool ok = out[1] == 3;
    load_tile(1, src, 16);   // rows 3..7; rows 0..2 keep LDTILECFG's zeros
    _tile_storeconfig(out);
    ok &= out[1] == 0;
    std::memset(dst, 0xAB, sizeof(dst));
    store_tile(1, dst, 16);
    for (int i = 0; i < 8 * 16; ++i) ok &= dst[i] == (i < 3 * 16 ? 0 : src[i]);
    cfg.start_row = 2;
    _tile_loadconfig(&cfg);   // zeros the tiles again
    std::memset(dst, 0xAB, sizeof(dst));
    store_tile(1, dst, 16);   // rows 2..7 only
    for (int i = 0; i < 8 * 16; ++i) ok &= dst[i] == (i < 2 * 16 ? 0xAB : 0);
    _tile_release();
    return ok;
  });
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1) g_seed = std::strtoull(argv[1], nullptr, 10);
  if (!request_tile_permission()) {
    std::printf("skip: Linux refused the AMX tile-data permission\n");
    return 77;
  }
  std::printf("mode %s seed %" PRIu64 "\n", AMX_EMULATED ? "emulated" : "hardware", g_seed);

  test_config();
  test_thread_local_state();
  const LoadStoreCase ls_cases[] = {
      {0, 16, 64, 64, 64, false},   {2, 16, 64, 80, 96, false}, {3, 1, 4, 4, 4, false},
      {4, 7, 20, 37, 23, true},     {5, 5, 64, -100, 72, false}, {7, 16, 8, 8, -12, true},
      {1, 11, 44, 300, 45, false},
  };
  for (const LoadStoreCase& lc : ls_cases) {
    char name[96];
    std::snprintf(name, sizeof(name), "load_store_t%d_%dx%d_ls%ld_ss%ld%s", lc.tile, lc.rows, lc.colsb,
                  lc.load_stride, lc.store_stride, lc.stream ? "_stream" : "");
    test_load_store(lc, name);
  }
  test_tile_zero();

  std::vector<DpShape> shapes = {{16, 16, 16}, {1, 1, 1}, {7, 5, 3}, {16, 3, 11}, {2, 16, 1}, {9, 13, 16},
                                 {16, 1, 16},  {1, 16, 7}};
  Rng shape_rng{g_seed ^ 0x5A9E5};
  for (int i = 0; i < 4; ++i) {
    shapes.push_back({1 + shape_rng.below(16), 1 + shape_rng.below(16), 1 + shape_rng.below(16)});
  }
  for (Variant v : {kSS, kSU, kUS, kUU}) {
    for (size_t i = 0; i < shapes.size(); ++i) test_int8(v, shapes[i], i == 0, i % 2 == 1);
  }
  test_int8_wraparound();
  for (size_t i = 0; i < shapes.size(); ++i) test_bf16(shapes[i], i == 0, i % 2 == 1);
  test_bf16_rules();
  // Zeros, bf16 denormals, FLT_MIN, 1, -1.5, 1 + 2^-7, 2^-63, (1 + 2^-7) * 2^-70, 2^63, then
  // the largest finite values and infinities.
  const std::vector<uint16_t> finite_pool = {0x0000, 0x8000, 0x0001, 0x807F, 0x0080, 0x8080, 0x3F80,
                                             0xBFC0, 0x3F81, 0x2000, 0x1C81, 0x9C81, 0x5F00, 0x0042};
  std::vector<uint16_t> full_pool = finite_pool;
  for (uint16_t h : {0x7F7F, 0xFF7F, 0x7F80, 0xFF80}) full_pool.push_back(h);
  test_bf16_special_values("dpbf16ps_special_finite", finite_pool, 16);
  test_bf16_special_values("dpbf16ps_special_all", full_pool, 2);   // short K: not every sum hits inf
  test_faults();

  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
