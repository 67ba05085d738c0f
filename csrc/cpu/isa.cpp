// Run-time CPU feature detection. Compiled at the baseline ISA: it must run on any x86-64.
#include "isa.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <mutex>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#define COMPRESSOPS_X86 1
#endif

namespace compressops::cpu {
namespace {

#ifdef COMPRESSOPS_X86
struct Regs {
  unsigned a = 0, b = 0, c = 0, d = 0;
};
Regs cpuid(unsigned leaf, unsigned sub) {
  Regs r;
  __cpuid_count(leaf, sub, r.a, r.b, r.c, r.d);
  return r;
}
unsigned long long xgetbv0() {
  unsigned lo, hi;
  // Raw encoding of xgetbv so the baseline TU needs no -mxsave.
  __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<unsigned long long>(hi) << 32) | lo;
}
bool bit(unsigned v, int i) { return (v >> i) & 1u; }

// Linux keeps AMX tile data off until a process asks for it; without the grant the first
// tile instruction faults. Asking is idempotent, so doing it at detection time is safe.
bool request_amx_permission() {
#if defined(__linux__)
  constexpr long kArchReqXcompPerm = 0x1023;
  constexpr long kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

CpuIsa detect() {
  const unsigned max_leaf = cpuid(0, 0).a;
  if (max_leaf < 7) return CpuIsa::kScalar;
  const Regs l1 = cpuid(1, 0);
  const Regs l7 = cpuid(7, 0);
  const bool osxsave = bit(l1.c, 27);
  if (!osxsave) return CpuIsa::kScalar;
  const unsigned long long xcr0 = xgetbv0();
  const bool os_ymm = (xcr0 & 0x6) == 0x6;            // SSE + AVX state
  const bool os_zmm = (xcr0 & 0xe6) == 0xe6;          // + opmask, ZMM_Hi256, Hi16_ZMM
  const bool os_tile = (xcr0 & 0x60000) == 0x60000;   // XTILECFG + XTILEDATA

  const bool avx2 = os_ymm && bit(l1.c, 28) /*avx*/ && bit(l7.b, 5) /*avx2*/ &&
                    bit(l1.c, 12) /*fma*/ && bit(l1.c, 29) /*f16c*/ && bit(l7.b, 8) /*bmi2*/ &&
                    bit(l1.c, 23) /*popcnt*/;
  if (!avx2) return CpuIsa::kScalar;
  const bool avx512 = os_zmm && bit(l7.b, 16) /*f*/ && bit(l7.b, 17) /*dq*/ &&
                      bit(l7.b, 28) /*cd*/ && bit(l7.b, 30) /*bw*/ && bit(l7.b, 31) /*vl*/;
  if (!avx512) return CpuIsa::kAVX2;
  const bool icl = bit(l7.c, 11) /*vnni*/ && bit(l7.c, 14) /*vpopcntdq*/ &&
                   bit(l7.c, 1) /*vbmi*/ && bit(l7.c, 6) /*vbmi2*/ && bit(l7.c, 12) /*bitalg*/;
  if (!icl) return CpuIsa::kAVX512;
  const bool amx = os_tile && bit(l7.d, 24) /*amx-tile*/ && bit(l7.d, 25) /*amx-int8*/ &&
                   bit(l7.d, 22) /*amx-bf16*/ && request_amx_permission();
  return amx ? CpuIsa::kAMX : CpuIsa::kAVX512VNNI;
}
#else
CpuIsa detect() { return CpuIsa::kScalar; }
#endif

// ATen's knob uses its own names; map them onto ours so one variable demotes both libraries.
bool parse_aten_capability(const char* v, CpuIsa* out) {
  const std::string s(v);
  if (s == "default") *out = CpuIsa::kScalar;
  else if (s == "avx2") *out = CpuIsa::kAVX2;
  else if (s == "avx512") *out = CpuIsa::kAVX512VNNI;  // ATen's avx512 level already needs VNNI-era CPUs
  else return false;
  return true;
}

CpuIsa env_limited(CpuIsa detected) {
  CpuIsa level = detected;
  if (const char* env = std::getenv("COMPRESSOPS_ISA"); env && *env) {
    level = std::min(level, parse_isa(env));
  }
  if (const char* env = std::getenv("ATEN_CPU_CAPABILITY"); env && *env) {
    CpuIsa aten;
    if (parse_aten_capability(env, &aten)) level = std::min(level, aten);
  }
  return level;
}

std::atomic<int> g_override{-1};

}  // namespace

const char* isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar: return "scalar";
    case CpuIsa::kAVX2: return "avx2";
    case CpuIsa::kAVX512: return "avx512";
    case CpuIsa::kAVX512VNNI: return "avx512_vnni";
    case CpuIsa::kAMX: return "amx";
  }
  return "unknown";
}

CpuIsa parse_isa(const std::string& name) {
  for (int i = 0; i <= static_cast<int>(CpuIsa::kAMX); ++i) {
    const auto isa = static_cast<CpuIsa>(i);
    if (name == isa_name(isa)) return isa;
  }
  TORCH_CHECK(false, "compressops: unknown CPU ISA level '", name,
              "'; expected one of scalar, avx2, avx512, avx512_vnni, amx");
}

CpuIsa detected_isa() {
  static const CpuIsa isa = detect();
  return isa;
}

CpuIsa active_isa() {
  const int forced = g_override.load(std::memory_order_relaxed);
  if (forced >= 0) return static_cast<CpuIsa>(forced);
  static const CpuIsa isa = env_limited(detected_isa());
  return isa;
}

void set_active_isa(CpuIsa isa) {
  TORCH_CHECK(isa <= detected_isa(), "compressops: cannot select CPU ISA '", isa_name(isa),
              "': this CPU supports up to '", isa_name(detected_isa()), "'");
  g_override.store(static_cast<int>(isa), std::memory_order_relaxed);
}

bool isa_compiled(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar: return true;
    case CpuIsa::kAVX2:
#ifdef COMPRESSOPS_HAVE_AVX2
      return true;
#else
      return false;
#endif
    case CpuIsa::kAVX512:
#ifdef COMPRESSOPS_HAVE_AVX512
      return true;
#else
      return false;
#endif
    case CpuIsa::kAVX512VNNI:
#ifdef COMPRESSOPS_HAVE_AVX512_VNNI
      return true;
#else
      return false;
#endif
    case CpuIsa::kAMX:
#ifdef COMPRESSOPS_HAVE_AMX
      return true;
#else
      return false;
#endif
  }
  return false;
}

}  // namespace compressops::cpu
