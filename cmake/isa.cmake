# Per-ISA object libraries: every file in csrc/cpu/kernels/ is compiled once per level with that
# level's flags and a suffix pasted into its symbol names. Only these objects ever see vector
# flags; the rest of the build stays at the baseline x86-64 ISA, so the library runs anywhere and
# picks its level at run time. A level the compiler cannot emit is dropped, not an error.
# The emulated levels are compiled a second time at the AVX2 baseline against SIMDe (and our AMX
# emulation header), with the suffix <LEVEL>_EMU, so every kernel runs on any x86-64 CPU in tests.
include(CheckCXXCompilerFlag)

# The level list is csrc/cpu/isa_levels.def; read it so it exists once.
file(READ ${CMAKE_SOURCE_DIR}/csrc/cpu/isa_levels.def _isa_def)
string(REGEX MATCHALL "X\\(k[A-Za-z0-9]+, [A-Z0-9_]+, \"[a-z0-9_]+\", [01]" _isa_lines "${_isa_def}")
set(COMPRESSOPS_ISA_LEVELS)            # SUFFIX names, lowest first
set(COMPRESSOPS_ISA_EMULATABLE)        # SUFFIX names of the levels with an emulated build
set(_index 0)
foreach(line ${_isa_lines})
  string(REGEX MATCH "X\\(k[A-Za-z0-9]+, ([A-Z0-9_]+), \"([a-z0-9_]+)\", ([01])" _m "${line}")
  if(NOT _m)
    message(FATAL_ERROR "compressops: cannot parse isa_levels.def line: ${line}")
  endif()
  list(APPEND COMPRESSOPS_ISA_LEVELS ${CMAKE_MATCH_1})
  set(COMPRESSOPS_ISA_NAME_${CMAKE_MATCH_1} ${CMAKE_MATCH_2})
  set(COMPRESSOPS_ISA_LEVEL_${CMAKE_MATCH_1} ${_index})
  if(CMAKE_MATCH_3 STREQUAL "1")
    list(APPEND COMPRESSOPS_ISA_EMULATABLE ${CMAKE_MATCH_1})
  endif()
  math(EXPR _index "${_index} + 1")
endforeach()
# -DCOMPRESSOPS_LEVEL_<SUFFIX>=<index> for every level: what kernel files compare
# COMPRESSOPS_ISA_LEVEL against in #if.
set(COMPRESSOPS_LEVEL_DEFS)
foreach(level ${COMPRESSOPS_ISA_LEVELS})
  list(APPEND COMPRESSOPS_LEVEL_DEFS COMPRESSOPS_LEVEL_${level}=${COMPRESSOPS_ISA_LEVEL_${level}})
endforeach()

# Compiler flags per level (everything else about a level comes from isa_levels.def).
set(COMPRESSOPS_ISA_FLAGS_AVX2 -mavx2 -mfma -mf16c -mbmi2 -mpopcnt
    -mno-avx256-split-unaligned-load -mno-avx256-split-unaligned-store)
set(COMPRESSOPS_ISA_FLAGS_AVX512 ${COMPRESSOPS_ISA_FLAGS_AVX2}
    -mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx512cd)
set(COMPRESSOPS_ISA_FLAGS_AVX512_VNNI ${COMPRESSOPS_ISA_FLAGS_AVX512}
    -mavx512vnni -mavx512vpopcntdq -mavx512vbmi -mavx512vbmi2 -mavx512bitalg)
set(COMPRESSOPS_ISA_FLAGS_AMX ${COMPRESSOPS_ISA_FLAGS_AVX512_VNNI} -mamx-tile -mamx-int8 -mamx-bf16)

# compressops_add_isa_objects(<out_var> <LEVEL> [EMULATED <simde_include_dir>] SOURCES <sources...>):
# adds object library compressops_kernels_<level>[_emu] and appends it to <out_var>; sets
# COMPRESSOPS_ISA_BUILT_<LEVEL> when the compiler can emit the level (native builds).
function(compressops_add_isa_objects out_var level)
  cmake_parse_arguments(ARG "" "EMULATED" "SOURCES" ${ARGN})
  set(sources ${ARG_SOURCES})
  string(TOLOWER ${level} lower)
  if(ARG_EMULATED)
    set(flags ${COMPRESSOPS_ISA_FLAGS_AVX2})
    set(suffix ${level}_EMU)
    set(target compressops_kernels_${lower}_emu)
  else()
    set(flags ${COMPRESSOPS_ISA_FLAGS_${level}})
    set(suffix ${level})
    set(target compressops_kernels_${lower})
  endif()
  if(flags)
    string(REPLACE ";" " " flag_str "${flags}")
    set(CMAKE_REQUIRED_QUIET ON)
    check_cxx_compiler_flag("${flag_str}" COMPRESSOPS_COMPILER_HAS_${level})
    if(NOT ARG_EMULATED AND NOT COMPRESSOPS_COMPILER_HAS_${level})
      message(STATUS "compressops: compiler cannot emit ${level}; that level is left out")
      return()
    endif()
  endif()
  if(NOT ARG_EMULATED)
    set(COMPRESSOPS_ISA_BUILT_${level} ON PARENT_SCOPE)
  endif()
  # A level that no family has a kernel file for still counts as built (its ops fall down the
  # chain), but adds no object library: CMake rejects one without sources.
  if(NOT sources)
    return()
  endif()
  add_library(${target} OBJECT ${sources})
  # GCC 12 warns about its own avx512fintrin.h helpers (__Y "uninitialized"); not our code. SIMDe's
  # 64-byte vector types passed at the AVX2 baseline trigger -Wpsabi notes; the emulated objects
  # never share those types with code compiled for another ABI.
  target_compile_options(${target} PRIVATE ${flags} -ffp-contract=off -Wno-uninitialized -Wno-maybe-uninitialized)
  target_compile_definitions(${target} PRIVATE ${COMPRESSOPS_LEVEL_DEFS}
      COMPRESSOPS_ISA_SUFFIX=${suffix} COMPRESSOPS_ISA_LEVEL=${COMPRESSOPS_ISA_LEVEL_${level}})
  if(ARG_EMULATED)
    target_compile_options(${target} PRIVATE -Wno-psabi)
    target_compile_definitions(${target} PRIVATE COMPRESSOPS_EMULATED=1)
    target_include_directories(${target} SYSTEM PRIVATE ${ARG_EMULATED})
  endif()
  set_target_properties(${target} PROPERTIES POSITION_INDEPENDENT_CODE ON)
  set(${out_var} ${${out_var}} ${target} PARENT_SCOPE)
endfunction()
