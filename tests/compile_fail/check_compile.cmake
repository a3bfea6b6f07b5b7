# Compiles one tests/compile_fail/*.cpp with -fsyntax-only and checks the outcome its first line
# asks for:
#   // expect-compiles                   the file must compile (proves the harness and base config)
#   // expect-static-assert: <message>   compilation must fail, with exactly one failed static
#                                        assertion, and the output must contain <message>
#   // expect-error: <text>              compilation must fail and the output must contain <text>
# Usage: cmake -DCOMPILER=<c++> -DINCLUDE_DIR=<include> -DSOURCE=<file.cpp> -P check_compile.cmake
# A script rather than PASS_REGULAR_EXPRESSION so the exit status is checked too, and a file that
# compiles by accident always fails its test.
foreach(var COMPILER INCLUDE_DIR SOURCE)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "check_compile.cmake: -D${var}=... is required")
  endif()
endforeach()

file(STRINGS "${SOURCE}" first_line LIMIT_COUNT 1)
if(first_line MATCHES "^// expect-compiles")
  set(mode compiles)
elseif(first_line MATCHES "^// expect-static-assert: (.+)$")
  set(mode static_assert)
  set(expected "${CMAKE_MATCH_1}")
elseif(first_line MATCHES "^// expect-error: (.+)$")
  set(mode error)
  set(expected "${CMAKE_MATCH_1}")
else()
  message(FATAL_ERROR "${SOURCE}: the first line must be '// expect-compiles', "
                      "'// expect-static-assert: <message>' or '// expect-error: <text>'")
endif()

execute_process(
  COMMAND "${COMPILER}" -std=c++20 -fsyntax-only "-I${INCLUDE_DIR}" "${SOURCE}"
  RESULT_VARIABLE rc
  OUTPUT_VARIABLE output
  ERROR_VARIABLE output)

if(mode STREQUAL "compiles")
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${SOURCE} should compile but did not (exit ${rc}):\n${output}")
  endif()
  message(STATUS "compiles, as expected")
  return()
endif()

if(rc EQUAL 0)
  message(FATAL_ERROR "${SOURCE} compiled, but it should fail with: ${expected}\n${output}")
endif()
string(FIND "${output}" "${expected}" at)
if(at EQUAL -1)
  message(FATAL_ERROR "${SOURCE} failed to compile, but without the expected message\n"
                      "  expected: ${expected}\ncompiler output:\n${output}")
endif()
if(mode STREQUAL "static_assert")
  string(REGEX MATCHALL "static assertion failed" failures "${output}")
  list(LENGTH failures count)
  if(NOT count EQUAL 1)
    message(FATAL_ERROR "${SOURCE} should fail exactly one static assertion, but failed ${count}:\n${output}")
  endif()
endif()
message(STATUS "fails to compile with \"${expected}\", as expected")
