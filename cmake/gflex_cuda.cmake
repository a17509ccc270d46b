# Decides whether the CUDA backend and NCCL are built (GFLEX_CUDA / GFLEX_NCCL = AUTO|ON|OFF).
# AUTO builds CUDA whenever nvcc is found, so that CI compiles every .cu file even on machines
# without a GPU; whether a device exists is decided at run time.
set(GFLEX_HAVE_CUDA OFF)
set(GFLEX_HAVE_NCCL OFF)

if(NOT GFLEX_CUDA STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      # Ampere (A100, RTX 30) and Hopper (H100); consumer Ada cards run the sm_80 code.
      set(CMAKE_CUDA_ARCHITECTURES 80 90)
    endif()
    enable_language(CUDA)
    # CMake 3.25 does not know nvcc 13's C++20 flag; the sources share C++20 headers with the
    # host code, so teach it.
    if(NOT CMAKE_CUDA20_STANDARD_COMPILE_OPTION)
      set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
      set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
    endif()
    set(CMAKE_CUDA_STANDARD 20)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    find_package(CUDAToolkit REQUIRED)
    set(GFLEX_HAVE_CUDA ON)
  elseif(GFLEX_CUDA STREQUAL "ON")
    message(FATAL_ERROR "GFLEX_CUDA=ON but no CUDA compiler was found")
  endif()
endif()

if(GFLEX_HAVE_CUDA AND NOT GFLEX_NCCL STREQUAL "OFF")
  find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS})
  find_library(NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR})
  if(NCCL_INCLUDE_DIR AND NCCL_LIBRARY)
    add_library(gflex_nccl UNKNOWN IMPORTED)
    set_target_properties(gflex_nccl PROPERTIES
      IMPORTED_LOCATION "${NCCL_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${NCCL_INCLUDE_DIR}")
    set(GFLEX_HAVE_NCCL ON)
  elseif(GFLEX_NCCL STREQUAL "ON")
    message(FATAL_ERROR "GFLEX_NCCL=ON but nccl.h / libnccl were not found")
  endif()
elseif(GFLEX_NCCL STREQUAL "ON")
  message(FATAL_ERROR "GFLEX_NCCL=ON needs the CUDA backend (GFLEX_CUDA)")
endif()
