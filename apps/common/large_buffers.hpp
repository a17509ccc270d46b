#pragma once
/// @file
/// How the core and node processes allocate the large buffers they move (8 MiB payload
/// chunks, encoded parameters, updates). glibc serves an allocation from its heap once a
/// freed one of that size has raised its mmap threshold (up to 32 MiB), and a heap rarely
/// shrinks: a process that has served a large model's chunks kept hundreds of MiB of them
/// resident after they were freed. A fixed threshold of 1 MiB has every buffer from that size
/// up mapped on its own and returned to the system when freed.

#include <malloc.h>

namespace gflex::app {

inline void map_large_buffers_apart() {
  mallopt(M_MMAP_THRESHOLD, 1 << 20);  // also stops the threshold from adapting
}

}  // namespace gflex::app
