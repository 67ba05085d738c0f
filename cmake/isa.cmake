# Per-ISA object libraries: every file in csrc/cpu/kernels/ is compiled once per level with that
# level's flags and a suffix pasted into its symbol names. Only these objects ever see vector
# flags; the rest of the build stays at the baseline x86-64 ISA, so the library runs anywhere and
# picks its level at run time. A level the compiler cannot emit is dropped, not an error.
include(CheckCXXCompilerFlag)

set(COMPRESSOPS_ISA_FLAGS_AVX2 -mavx2 -mfma -mf16c -mbmi2 -mpopcnt
    -mno-avx256-split-unaligned-load -mno-avx256-split-unaligned-store)
set(COMPRESSOPS_ISA_FLAGS_AVX512 ${COMPRESSOPS_ISA_FLAGS_AVX2}
    -mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx512cd)
set(COMPRESSOPS_ISA_FLAGS_AVX512_VNNI ${COMPRESSOPS_ISA_FLAGS_AVX512}
    -mavx512vnni -mavx512vpopcntdq -mavx512vbmi -mavx512vbmi2 -mavx512bitalg)
set(COMPRESSOPS_ISA_FLAGS_AMX ${COMPRESSOPS_ISA_FLAGS_AVX512_VNNI} -mamx-tile -mamx-int8 -mamx-bf16)

set(COMPRESSOPS_ISA_LEVEL_SCALAR 0)
set(COMPRESSOPS_ISA_LEVEL_AVX2 1)
set(COMPRESSOPS_ISA_LEVEL_AVX512 2)
set(COMPRESSOPS_ISA_LEVEL_AVX512_VNNI 3)
set(COMPRESSOPS_ISA_LEVEL_AMX 4)

# compressops_add_isa_objects(<out_var> <LEVEL> <sources...>): adds object library
# compressops_kernels_<level> and appends it to <out_var>; defines COMPRESSOPS_HAVE_<LEVEL> on
# the target named by COMPRESSOPS_ISA_CONSUMER.
function(compressops_add_isa_objects out_var level)
  set(sources ${ARGN})
  set(flags ${COMPRESSOPS_ISA_FLAGS_${level}})
  if(flags)
    string(REPLACE ";" " " flag_str "${flags}")
    set(CMAKE_REQUIRED_QUIET ON)
    check_cxx_compiler_flag("${flag_str}" COMPRESSOPS_COMPILER_HAS_${level})
    if(NOT COMPRESSOPS_COMPILER_HAS_${level})
      message(STATUS "compressops: compiler cannot emit ${level}; that level is left out")
      return()
    endif()
  endif()
  string(TOLOWER ${level} lower)
  set(target compressops_kernels_${lower})
  add_library(${target} OBJECT ${sources})
  # GCC 12 warns about its own avx512fintrin.h helpers (__Y "uninitialized"); not our code.
  target_compile_options(${target} PRIVATE ${flags} -ffp-contract=off -Wno-uninitialized -Wno-maybe-uninitialized)
  target_compile_definitions(${target} PRIVATE
      COMPRESSOPS_ISA_SUFFIX=${level} COMPRESSOPS_ISA_LEVEL=${COMPRESSOPS_ISA_LEVEL_${level}})
  set_target_properties(${target} PROPERTIES POSITION_INDEPENDENT_CODE ON)
  set(${out_var} ${${out_var}} ${target} PARENT_SCOPE)
  set(COMPRESSOPS_BUILT_ISAS ${COMPRESSOPS_BUILT_ISAS} ${lower} PARENT_SCOPE)
endfunction()
