# Defines the imported target gemma3::blas: the engines of the large matrix products (blas.hpp).
#
# GEMMA3_ONEDNN (default ON): float and bfloat16 products go to oneDNN (Debian: libdnnl-dev), whose
# kernels follow the CPU's features; it is built with OpenMP, so it shares our thread pool. OFF: float
# products go to CBLAS as well. CBLAS (OpenBLAS) is always linked, for double and matrix-vector products.
#
# For CBLAS, prefers the OpenMP build of OpenBLAS (Debian's libopenblas0-openmp), so that BLAS and our
# own OpenMP loops share one thread pool instead of two pools spinning against each other
# (see ../shared/machine-notes.md). Falls back to any libopenblas, then to find_package(BLAS).
if(TARGET gemma3::blas)
  return()
endif()

option(GEMMA3_ONEDNN "Compute float and bfloat16 matrix products with oneDNN (else CBLAS, float only)" ON)

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

if(GEMMA3_ONEDNN)
  # The library and header directly: Debian's dnnl-config.cmake also demands the OpenCL headers (its
  # build has an OpenCL GPU runtime), which the CPU API does not need.
  find_library(GEMMA3_ONEDNN_LIBRARY NAMES dnnl)
  find_path(GEMMA3_ONEDNN_INCLUDE_DIR NAMES dnnl.hpp PATH_SUFFIXES oneapi/dnnl)
  if(NOT GEMMA3_ONEDNN_LIBRARY OR NOT GEMMA3_ONEDNN_INCLUDE_DIR)
    message(FATAL_ERROR "gemma3: oneDNN not found (GEMMA3_ONEDNN=ON). On Debian: apt-get install libdnnl-dev; "
                        "or configure with -DGEMMA3_ONEDNN=OFF to compute float products with CBLAS only")
  endif()
  set_property(TARGET gemma3::blas APPEND PROPERTY INTERFACE_LINK_LIBRARIES "${GEMMA3_ONEDNN_LIBRARY}")
  set_property(TARGET gemma3::blas APPEND PROPERTY INTERFACE_INCLUDE_DIRECTORIES "${GEMMA3_ONEDNN_INCLUDE_DIR}")
  set_property(TARGET gemma3::blas APPEND PROPERTY INTERFACE_COMPILE_DEFINITIONS GEMMA3_HAVE_ONEDNN)
endif()
