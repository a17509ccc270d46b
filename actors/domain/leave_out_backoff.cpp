#include "leave_out_backoff.hpp"

#include <algorithm>

namespace gflex {

void leave_out_backoff::failed(clock::time_point now, std::chrono::seconds first) {
  in_a_row_ = std::min(in_a_row_ + 1, 12);  // 2^11 x 1 s is past `longest` already
  until_ = now + std::min<clock::duration>(first * (1 << (in_a_row_ - 1)), longest);
}

}  // namespace gflex
