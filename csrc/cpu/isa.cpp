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

IsaChoice env_limited(CpuIsa detected) {
  IsaChoice choice{detected, false};
  if (const char* env = std::getenv("COMPRESSOPS_ISA"); env && *env) {
    const IsaChoice asked = parse_isa_choice(env);
    if (asked.emulated) return asked;  // asked for explicitly: detection does not cap it
    choice.level = std::min(choice.level, asked.level);
  }
  if (const char* env = std::getenv("ATEN_CPU_CAPABILITY"); env && *env) {
    CpuIsa aten;
    if (parse_aten_capability(env, &aten)) choice.level = std::min(choice.level, aten);
  }
  return choice;
}

#define COMPRESSOPS_ISA_NAME_(ENUM, SUFFIX, NAME, EMULATED, ...) NAME,
constexpr const char* kNames[] = {COMPRESSOPS_FOR_EACH_ISA_LEVEL(COMPRESSOPS_ISA_NAME_, _)};
#undef COMPRESSOPS_ISA_NAME_
#define COMPRESSOPS_ISA_EMULATABLE_(ENUM, SUFFIX, NAME, EMULATED, ...) EMULATED != 0,
constexpr bool kEmulatable[] = {COMPRESSOPS_FOR_EACH_ISA_LEVEL(COMPRESSOPS_ISA_EMULATABLE_, _)};
#undef COMPRESSOPS_ISA_EMULATABLE_
constexpr const char* kEmulatedSuffix = "+emulated";

std::string valid_choices() {
  std::string s;
  for (int i = 0; i < kNumIsaLevels; ++i) {
    if (i) s += ", ";
    s += kNames[i];
  }
  s += " (levels ";
  bool first = true;
  for (int i = 0; i < kNumIsaLevels; ++i) {
    if (!kEmulatable[i]) continue;
    s += first ? "" : ", ";
    s += kNames[i];
    first = false;
  }
  return s + " also as <level>+emulated)";
}

// -1: no override; otherwise 2 * level + emulated.
std::atomic<int> g_override{-1};
thread_local int t_override = -1;

int encode(IsaChoice choice) { return 2 * static_cast<int>(choice.level) + (choice.emulated ? 1 : 0); }
IsaChoice decode(int code) { return {static_cast<CpuIsa>(code / 2), (code & 1) != 0}; }

void check_selectable(IsaChoice choice) {
  if (choice.emulated) {
    TORCH_CHECK(isa_emulation_compiled(choice.level), "compressops: cannot select CPU ISA '",
                isa_choice_name(choice), "': this build has no emulated ", isa_name(choice.level),
                " kernels (SIMDe was not found at build time)");
  } else {
    TORCH_CHECK(choice.level <= detected_isa(), "compressops: cannot select CPU ISA '", isa_name(choice.level),
                "': this CPU supports up to '", isa_name(detected_isa()), "' (or ask for '",
                isa_name(choice.level), kEmulatedSuffix, "')");
  }
}

}  // namespace

const char* isa_name(CpuIsa isa) {
  const int i = static_cast<int>(isa);
  return i >= 0 && i < kNumIsaLevels ? kNames[i] : "unknown";
}

std::string isa_choice_name(IsaChoice choice) {
  return std::string(isa_name(choice.level)) + (choice.emulated ? kEmulatedSuffix : "");
}

IsaChoice parse_isa_choice(const std::string& name) {
  std::string level = name;
  bool emulated = false;
  const std::string suffix(kEmulatedSuffix);
  if (level.size() > suffix.size() && level.compare(level.size() - suffix.size(), suffix.size(), suffix) == 0) {
    level.resize(level.size() - suffix.size());
    emulated = true;
  }
  for (int i = 0; i < kNumIsaLevels; ++i) {
    if (level != kNames[i]) continue;
    TORCH_CHECK(!emulated || kEmulatable[i], "compressops: CPU ISA level '", level,
                "' has no emulated build; expected one of ", valid_choices());
    return {static_cast<CpuIsa>(i), emulated};
  }
  TORCH_CHECK(false, "compressops: unknown CPU ISA level '", name, "'; expected one of ", valid_choices());
}

CpuIsa detected_isa() {
  static const CpuIsa isa = detect();
  return isa;
}

IsaChoice active_isa() {
  if (t_override >= 0) return decode(t_override);
  const int forced = g_override.load(std::memory_order_relaxed);
  if (forced >= 0) return decode(forced);
  static const IsaChoice isa = env_limited(detected_isa());
  return isa;
}

void set_active_isa(IsaChoice choice) {
  check_selectable(choice);
  g_override.store(encode(choice), std::memory_order_relaxed);
}

void set_thread_isa(std::optional<IsaChoice> choice) {
  if (choice) check_selectable(*choice);
  t_override = choice ? encode(*choice) : -1;
}

std::optional<IsaChoice> thread_isa() {
  if (t_override < 0) return std::nullopt;
  return decode(t_override);
}

// CMake passes one bit per level of isa_levels.def, in its order.
#ifndef COMPRESSOPS_COMPILED_ISA_MASK
#define COMPRESSOPS_COMPILED_ISA_MASK 1
#endif
#ifndef COMPRESSOPS_EMULATED_ISA_MASK
#define COMPRESSOPS_EMULATED_ISA_MASK 0
#endif

bool isa_compiled(CpuIsa isa) { return (COMPRESSOPS_COMPILED_ISA_MASK >> static_cast<int>(isa)) & 1; }
bool isa_emulation_compiled(CpuIsa isa) { return (COMPRESSOPS_EMULATED_ISA_MASK >> static_cast<int>(isa)) & 1; }
bool isa_emulatable(CpuIsa isa) { return kEmulatable[static_cast<int>(isa)]; }

}  // namespace compressops::cpu
