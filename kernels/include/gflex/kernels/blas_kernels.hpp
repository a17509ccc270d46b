#pragma once
/// @file
/// Choosing OpenBLAS's kernels for the CPU at hand. OpenBLAS picks its GEMM kernels by the
/// CPU's model number; on a processor it does not know (common in virtual machines, which
/// report "Intel Xeon Processor") it falls back to its SSE3 "Prescott" kernels even when the
/// CPU has AVX-512 or AVX2, and training runs at a third to a half of the speed it could. The
/// choice is made once, when the library loads, from $OPENBLAS_CORETYPE.

namespace gflex::kernels {

/// If OpenBLAS fell back to its generic kernels on a CPU with AVX2 or AVX-512 and
/// $OPENBLAS_CORETYPE is not set, sets it to the kernels the CPU can run (SkylakeX, Haswell)
/// and re-executes this program with the same arguments; otherwise returns at once. Call it
/// first thing in main(), before any thread starts. Set $OPENBLAS_CORETYPE to keep a choice
/// (any value, e.g. "Prescott", is left alone).
void use_best_blas_kernels(char** argv);

}  // namespace gflex::kernels
