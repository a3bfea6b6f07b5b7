# Defines the imported target gemma3::blas: a CBLAS implementation for the large matrix products.
#
# Prefers the OpenMP build of OpenBLAS (Debian's libopenblas0-openmp), so that BLAS and our own
# OpenMP loops share one thread pool instead of two pools spinning against each other
# (see docs/design.md §3). Falls back to any libopenblas, then to find_package(BLAS).
if(TARGET gemma3::blas)
  return()
endif()

set(_gemma3_blas_lib "")
if(NOT GEMMA3_BLAS_LIBRARY)
  set(_saved_suffixes ${CMAKE_FIND_LIBRARY_SUFFIXES})
  # Debian ships the OpenMP flavour as a runtime-only libopenblas.so.0.
  list(APPEND CMAKE_FIND_LIBRARY_SUFFIXES .so.0)
  find_library(GEMMA3_BLAS_LIBRARY NAMES openblas
    PATHS /usr/lib/x86_64-linux-gnu/openblas-openmp /usr/lib/aarch64-linux-gnu/openblas-openmp
    NO_DEFAULT_PATH)
  set(CMAKE_FIND_LIBRARY_SUFFIXES ${_saved_suffixes})
  if(NOT GEMMA3_BLAS_LIBRARY)
    find_library(GEMMA3_BLAS_LIBRARY NAMES openblas)
  endif()
endif()

add_library(gemma3::blas INTERFACE IMPORTED)
if(GEMMA3_BLAS_LIBRARY)
  set_property(TARGET gemma3::blas PROPERTY INTERFACE_LINK_LIBRARIES "${GEMMA3_BLAS_LIBRARY}")
else()
  find_package(BLAS REQUIRED)
  set_property(TARGET gemma3::blas PROPERTY INTERFACE_LINK_LIBRARIES BLAS::BLAS)
endif()

include(CheckIncludeFileCXX)
check_include_file_cxx(cblas.h GEMMA3_HAVE_CBLAS_H)
if(NOT GEMMA3_HAVE_CBLAS_H)
  message(FATAL_ERROR "gemma3: cblas.h not found. On Debian: apt-get install libopenblas-dev")
endif()
