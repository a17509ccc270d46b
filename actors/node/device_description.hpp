#pragma once
/// @file
/// What a node tells the core computes for it: its device, or each GPU of its workers' group
/// and how they reduce, in at most what a hello may carry (max_device_description_chars,
/// messages.hpp: a group of eight or more GPUs described in full passed it, and the node was
/// refused for good).

#include <cstddef>
#include <string>
#include <vector>

namespace gflex {

/// `ranks` (one description each) joined by "; ", then " (reduce)" when there are several;
/// where that is longer than `max_chars`, the first ranks that fit and "N more", with the
/// reduction's words cut to what is left.
std::string describe_devices(const std::vector<std::string>& ranks, const std::string& reduce,
                             size_t max_chars);

}  // namespace gflex
