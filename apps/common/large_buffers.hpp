#pragma once
/// @file
/// How the core allocates the large buffers it moves (8 MiB payload chunks, encoded
/// parameters, updates). glibc serves an allocation from its heap once a freed one of that
/// size has raised its mmap threshold (up to 32 MiB), and a heap rarely shrinks: a core that
/// has served a large model's chunks kept hundreds of MiB of them resident after they were
/// freed. A fixed threshold of 1 MiB has every buffer from that size up mapped on its own and
/// returned to the system when freed. Not for a node: its kernels' per-step buffers of a MiB
/// and more would each be mapped and faulted in anew (`gflex train` on apps/jobs/lm.toml ran
/// about 7% slower with it, GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1048576).

#include <malloc.h>

namespace gflex::app {

inline void map_large_buffers_apart() {
  mallopt(M_MMAP_THRESHOLD, 1 << 20);  // also stops the threshold from adapting
}

}  // namespace gflex::app
