# CUDA support of gemma3.
#
# GEMMA3_CUDA (set in the top-level CMakeLists.txt) chooses the device build:
#   AUTO (default)  on if nvcc and the CUDA toolkit (with cuBLASLt) are found
#   ON              required: configuring fails without them
#   OFF             no device build
# GEMMA3_CUDA_ENABLED tells the result. When on: the CUDA language is enabled for sm_80 and sm_90
# (CMAKE_CUDA_ARCHITECTURES "80;90" unless set), and gemma3::cuda carries the runtime and cuBLASLt.
#
# The CPU emulator needs no CUDA toolkit: gemma3::cuda_emulation (Boost.Context from Debian's
# libboost-context-dev) compiles kernel source with the host compiler. gemma3_add_cuda_test() builds
# a kernel test for the emulator always, and for the device too when GEMMA3_CUDA_ENABLED, into one
# executable (see include/gemma3/cuda/runtime.hpp). Device objects are compiled with warnings as
# errors and -Xptxas -v; the report is kept next to each object (<object>.ptxas.txt) and a CTest
# (<test>.ptxas) fails if any kernel spills registers.
include_guard(GLOBAL)

set_property(CACHE GEMMA3_CUDA PROPERTY STRINGS AUTO ON OFF)
gemma3_tristate(GEMMA3_CUDA _gemma3_cuda_mode)

set(GEMMA3_CUDA_ENABLED OFF)
if(NOT _gemma3_cuda_mode STREQUAL "OFF")
  include(CheckLanguage)
  if(NOT DEFINED CMAKE_CUDA_HOST_COMPILER AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    set(CMAKE_CUDA_HOST_COMPILER "${CMAKE_CXX_COMPILER}" CACHE FILEPATH "Host compiler for nvcc")
  endif()
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 80 90)
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit)
  endif()
  if(CMAKE_CUDA_COMPILER AND CUDAToolkit_FOUND AND TARGET CUDA::cublasLt)
    set(GEMMA3_CUDA_ENABLED ON)
    message(STATUS "gemma3: CUDA device build on (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, architectures ${CMAKE_CUDA_ARCHITECTURES})")
  elseif(_gemma3_cuda_mode STREQUAL "ON")
    message(FATAL_ERROR "GEMMA3_CUDA=ON, but nvcc or the CUDA toolkit with cuBLASLt was not found "
                        "(put nvcc on PATH or set CMAKE_CUDA_COMPILER)")
  else()
    message(STATUS "gemma3: no CUDA toolkit; the kernels will run on the CPU emulator only")
  endif()
endif()

# --- Targets ------------------------------------------------------------------------------------------
find_package(Boost 1.74 CONFIG QUIET COMPONENTS context)
if(TARGET Boost::context AND NOT TARGET gemma3_cuda_emulation)
  add_library(gemma3_cuda_emulation INTERFACE)
  add_library(gemma3::cuda_emulation ALIAS gemma3_cuda_emulation)
  target_compile_definitions(gemma3_cuda_emulation INTERFACE GEMMA3_CUDA_EMULATION)
  # The emulator is test support (tests/cuda/emulator/), not part of the installed headers.
  target_include_directories(gemma3_cuda_emulation INTERFACE ${PROJECT_SOURCE_DIR}/tests/cuda/emulator)
  target_link_libraries(gemma3_cuda_emulation INTERFACE gemma3 Boost::context)
endif()

# The emulator's shared-memory access checker (racecheck, initcheck: tests/cuda/emulator/checker.hpp):
# the emulated sources of gemma3_add_cuda_test() get GCC's ThreadSanitizer instrumentation (a call
# per load and store), without the TSan runtime: checker.cpp provides the entry points. GCC only
# (the flags are GCC's), and not with GEMMA3_SANITIZE (ASan and TSan instrumentation do not mix).
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND NOT GEMMA3_SANITIZE)
  set(_gemma3_emulator_check_default ON)
else()
  set(_gemma3_emulator_check_default OFF)
endif()
option(GEMMA3_CUDA_EMULATOR_CHECK "Check shared-memory races and uninitialised reads in emulated kernels (GCC, no GEMMA3_SANITIZE)"
       ${_gemma3_emulator_check_default})
if(GEMMA3_CUDA_EMULATOR_CHECK AND (GEMMA3_SANITIZE OR NOT CMAKE_CXX_COMPILER_ID STREQUAL "GNU"))
  message(FATAL_ERROR "GEMMA3_CUDA_EMULATOR_CHECK needs GCC and is incompatible with GEMMA3_SANITIZE")
endif()
set(GEMMA3_CUDA_EMULATOR_CHECK_FLAGS
    -fsanitize=thread -U__SANITIZE_THREAD__ --param=tsan-instrument-func-entry-exit=0)
if(GEMMA3_CUDA_EMULATOR_CHECK AND TARGET gemma3_cuda_emulation AND NOT TARGET gemma3_cuda_emulator_checker)
  add_library(gemma3_cuda_emulator_checker OBJECT ${PROJECT_SOURCE_DIR}/tests/cuda/emulator/checker.cpp)
  target_link_libraries(gemma3_cuda_emulator_checker PRIVATE gemma3::cuda_emulation gemma3_project_flags)
  target_compile_definitions(gemma3_cuda_emulator_checker PRIVATE GEMMA3_CUDA_EMULATOR_CHECK)
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(gemma3_cuda_emulator_checker PRIVATE -Werror)
  endif()
endif()

if(GEMMA3_CUDA_ENABLED AND NOT TARGET gemma3_cuda)
  add_library(gemma3_cuda INTERFACE)
  add_library(gemma3::cuda ALIAS gemma3_cuda)
  target_link_libraries(gemma3_cuda INTERFACE gemma3 CUDA::cudart CUDA::cublasLt)
  # CMake 3.25 does not know nvcc's C++20 flag (CUDA_STANDARD 20 fails), so ask for it directly.
  target_compile_options(gemma3_cuda INTERFACE $<$<COMPILE_LANGUAGE:CUDA>:-std=c++20>)
  # The CPU types the CUDA model shares (parameters, weights I/O) use Eigen on the host only:
  # EIGEN_NO_CUDA keeps Eigen from annotating them __host__ __device__ under nvcc.
  target_compile_definitions(gemma3_cuda INTERFACE $<$<COMPILE_LANGUAGE:CUDA>:EIGEN_NO_CUDA>)
endif()

# NCCL (shipped with the CUDA toolkit or libnccl-dev) for the gradient all-reduce of data-parallel
# GPU training: gemma3::nccl defines GEMMA3_HAVE_NCCL, which compiles cuda::NcclAllReduce
# (include/gemma3/cuda/training.cuh).
set(GEMMA3_NCCL_ENABLED OFF)
if(GEMMA3_CUDA_ENABLED)
  find_path(GEMMA3_NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS})
  find_library(GEMMA3_NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR})
  if(GEMMA3_NCCL_INCLUDE_DIR AND GEMMA3_NCCL_LIBRARY AND NOT TARGET gemma3_nccl)
    add_library(gemma3_nccl INTERFACE)
    add_library(gemma3::nccl ALIAS gemma3_nccl)
    target_include_directories(gemma3_nccl INTERFACE ${GEMMA3_NCCL_INCLUDE_DIR})
    target_link_libraries(gemma3_nccl INTERFACE gemma3_cuda ${GEMMA3_NCCL_LIBRARY})
    target_compile_definitions(gemma3_nccl INTERFACE GEMMA3_HAVE_NCCL)
    set(GEMMA3_NCCL_ENABLED ON)
    message(STATUS "gemma3: NCCL found (${GEMMA3_NCCL_LIBRARY}); GPU gradient all-reduce available")
  endif()
endif()

if(GEMMA3_CUDA_ENABLED)
  find_package(Python3 COMPONENTS Interpreter REQUIRED)
endif()

# gemma3_cuda_device_flags(<target>): the project's rules for device code: C++20, every
# nvcc and host-compiler warning an error, and the ptxas report kept for check_ptxas.py
# (the architectures come from CMAKE_CUDA_ARCHITECTURES, 80;90 by default).
function(gemma3_cuda_device_flags target)
  set_target_properties(${target} PROPERTIES
    CUDA_COMPILER_LAUNCHER "${Python3_EXECUTABLE};${PROJECT_SOURCE_DIR}/scripts/check_ptxas.py;capture;--")
  # -std=c++20 by hand: CMake 3.25 does not know nvcc's flag for CUDA_STANDARD 20.
  # EIGEN_NO_CUDA and -Wno-unknown-pragmas: host-only Eigen code in .cu files (CPU references in the
  # tests, the model's parameter types); Eigen emits nvcc's `#pragma diag_suppress`, which the host
  # compiler does not know.
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-std=c++20 --Werror=all-warnings -Xptxas=-v -Xcompiler=-Wall,-Wextra,-Werror,-Wno-unknown-pragmas>)
  target_compile_definitions(${target} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:EIGEN_NO_CUDA>)
  # The host code nvcc compiles shares inline functions (Eigen-based parameter and reference types)
  # with the host compiler's translation units of the same executable, and the linker keeps one copy
  # of each. Eigen's heap alignment follows -march (64 bytes with AVX-512, 16 without), so both sides
  # must use the same -march, or memory allocated by one copy is freed by the other.
  if(GEMMA3_NATIVE)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-march=native>)
  endif()
  if(OpenMP_CXX_FLAGS)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=${OpenMP_CXX_FLAGS}>)
  endif()
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
    # GCC 12's false (maybe-)uninitialized reports inside its AVX-512 intrinsics (GCC bug 105593),
    # as for the project's host code.
    target_compile_options(${target} PRIVATE
      $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wno-maybe-uninitialized,-Wno-uninitialized>)
  endif()
endfunction()

# gemma3_add_cuda_test(<name> SOURCES <.cu>... [EMULATOR_SOURCES <.cpp>...] [LAUNCHER <command>...]
#                      [NO_ACCESS_CHECK])
# One doctest executable, registered with CTest as <name>:
#   SOURCES           kernel tests written once (GEMMA3_CUDA_TEST_CASE), compiled for the emulator by
#                     the host compiler and, when GEMMA3_CUDA_ENABLED, for the device by nvcc;
#   EMULATOR_SOURCES  tests of the emulator itself (host compiler only);
#   LAUNCHER          a command CTest runs the executable under (e.g. mpirun -np 2);
#   NO_ACCESS_CHECK   no shared-memory access checker in this executable even when
#                     GEMMA3_CUDA_EMULATOR_CHECK is on (its instrumentation slows all the
#                     executable's host code, CPU references included, about 2x).
# Its main() (tests/cuda/cuda_test_main.cpp) runs the emulated cases, plus the device cases when a
# GPU is present; GEMMA3_CUDA_BACKEND=emulator|device|auto or --backend= chooses. With the device
# build on, CTest <name>.ptxas checks the ptxas report of its device objects for register spills.
function(gemma3_add_cuda_test name)
  cmake_parse_arguments(PARSE_ARGV 1 ARG "NO_ACCESS_CHECK" "" "SOURCES;EMULATOR_SOURCES;LAUNCHER")
  if(NOT TARGET gemma3::cuda_emulation)
    message(FATAL_ERROR "gemma3_add_cuda_test(${name}): the CPU emulator needs Boost.Context "
                        "(Debian: apt-get install libboost-context-dev)")
  endif()
  set(test_dir ${PROJECT_SOURCE_DIR}/tests/cuda)
  # The test's sources compile as one translation unit, once for the emulator (a .cpp) and once for
  # nvcc (a .cu): they share most of what they instantiate (doctest, the CPU references, Eigen), and
  # each separate file paid for it again (test_cuda_ops: eight files of 17-23 s each under nvcc).
  # So the files' own helpers, in their anonymous namespaces, must not collide.
  set(includes "")
  foreach(source IN LISTS ARG_SOURCES)
    get_filename_component(absolute "${source}" ABSOLUTE)
    string(APPEND includes "#include \"${absolute}\"\n")
  endforeach()
  set(emulated_sources ${CMAKE_CURRENT_BINARY_DIR}/${name}_emulated/${name}_sources.cpp)
  file(CONFIGURE OUTPUT ${emulated_sources}
       CONTENT "// Generated by gemma3_add_cuda_test: the kernel tests of ${name}, built for the CPU emulator.\n${includes}"
       @ONLY)
  set(device_sources ${ARG_SOURCES})
  list(LENGTH ARG_SOURCES source_count)
  if(source_count GREATER 1)
    set(device_sources ${CMAKE_CURRENT_BINARY_DIR}/${name}_device/${name}_sources.cu)
    file(CONFIGURE OUTPUT ${device_sources}
         CONTENT "// Generated by gemma3_add_cuda_test: the kernel tests of ${name}, built by nvcc.\n${includes}"
         @ONLY)
  endif()

  # main() is the same for every CUDA test executable: compiled once.
  if(NOT TARGET gemma3_cuda_test_main)
    add_library(gemma3_cuda_test_main OBJECT ${test_dir}/cuda_test_main.cpp)
    target_link_libraries(gemma3_cuda_test_main PRIVATE gemma3_project_flags doctest::doctest)
    target_include_directories(gemma3_cuda_test_main PRIVATE ${test_dir})
    if(GEMMA3_CUDA_ENABLED)
      target_compile_definitions(gemma3_cuda_test_main PRIVATE GEMMA3_CUDA_TEST_HAS_DEVICE_BUILD=1)
    endif()
    if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
      target_compile_options(gemma3_cuda_test_main PRIVATE -Werror)
    endif()
  endif()
  add_executable(${name} $<TARGET_OBJECTS:gemma3_cuda_test_main> ${emulated_sources} ${ARG_EMULATOR_SOURCES})
  target_link_libraries(${name} PRIVATE gemma3::cuda_emulation gemma3_project_flags doctest::doctest)
  target_include_directories(${name} PRIVATE ${test_dir} ${CMAKE_CURRENT_SOURCE_DIR})
  target_compile_definitions(${name} PRIVATE
    GEMMA3_TEST_DATA_DIR="${PROJECT_SOURCE_DIR}/tests/data" GEMMA3_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${name} PRIVATE -Werror)
  endif()
  if(GEMMA3_CUDA_EMULATOR_CHECK AND NOT ARG_NO_ACCESS_CHECK)
    # Only the kernel sources are instrumented; checker.cpp (not instrumented) is their runtime.
    target_sources(${name} PRIVATE $<TARGET_OBJECTS:gemma3_cuda_emulator_checker>)
    target_compile_definitions(${name} PRIVATE GEMMA3_CUDA_EMULATOR_CHECK)
    set_source_files_properties(${emulated_sources} ${ARG_EMULATOR_SOURCES} PROPERTIES
      COMPILE_OPTIONS "${GEMMA3_CUDA_EMULATOR_CHECK_FLAGS}")
  endif()
  # Exported symbols let the emulator name kernels in its messages (dladdr).
  set_target_properties(${name} PROPERTIES ENABLE_EXPORTS ON RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)

  if(GEMMA3_CUDA_ENABLED)
    add_library(${name}_device OBJECT ${device_sources} ${test_dir}/device_probe.cu)
    target_link_libraries(${name}_device PRIVATE gemma3 doctest::doctest)
    target_include_directories(${name}_device PRIVATE ${test_dir} ${CMAKE_CURRENT_SOURCE_DIR})
    target_compile_definitions(${name}_device PRIVATE
      GEMMA3_TEST_DATA_DIR="${PROJECT_SOURCE_DIR}/tests/data" GEMMA3_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
    gemma3_cuda_device_flags(${name}_device)
    target_link_libraries(${name} PRIVATE ${name}_device CUDA::cudart CUDA::cublasLt)
    add_test(NAME ${name}.ptxas
             COMMAND ${Python3_EXECUTABLE} ${PROJECT_SOURCE_DIR}/scripts/check_ptxas.py check
                     ${CMAKE_CURRENT_BINARY_DIR}/CMakeFiles/${name}_device.dir)
  endif()
  add_test(NAME ${name} COMMAND ${ARG_LAUNCHER} $<TARGET_FILE:${name}>)
endfunction()
