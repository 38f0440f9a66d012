# Fails the build when the kernel objects of CPU capability LEVEL define a weak symbol (inline
# function or template instance) outside namespace nnff::cpu::LEVEL: the linker keeps one copy
# of each such symbol for the whole library, so a copy compiled for AVX-512 could then run on a
# CPU without it. Run by CMakeLists.txt after linking, with NM and OBJECTS (a list).
execute_process(COMMAND "${NM}" --defined-only ${OBJECTS} OUTPUT_VARIABLE symbols RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "nnformer_fast: ${NM} failed on the ${LEVEL} kernel objects")
endif()
string(LENGTH "${LEVEL}" len)
string(REPLACE "\n" ";" lines "${symbols}")
set(outside "")
foreach(line IN LISTS lines)
  # mangled names: nnff::cpu::LEVEL is 4nnff3cpu<len><LEVEL>; the C++ personality reference is data
  if(line MATCHES " [WVu] " AND NOT line MATCHES "4nnff3cpu${len}${LEVEL}" AND NOT line MATCHES "DW\\.ref\\.__gxx_personality_v0")
    string(APPEND outside "\n  ${line}")
  endif()
endforeach()
if(outside)
  message(FATAL_ERROR "nnformer_fast: the ${LEVEL} CPU kernels define shared symbols outside "
                      "nnff::cpu::${LEVEL} (move the code into that namespace):${outside}")
endif()
