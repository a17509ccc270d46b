#pragma once
/// @file
/// Shared plumbing for decoding Cap'n Proto messages that arrive from outside the process.
/// Private to runtime/src (it includes Cap'n Proto headers).

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>

#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "gflex/runtime/error.hpp"

namespace gflex::detail {

/// Flattens a built message into one byte vector.
inline std::vector<uint8_t> to_bytes(capnp::MessageBuilder& message) {
  auto flat = capnp::messageToFlatArray(message);
  auto bytes = flat.asBytes();
  return {bytes.begin(), bytes.end()};
}

/// Calls `read(reader)` on a reader over `bytes`, with traversal limits sized to the input;
/// malformed, truncated or trailing input and any Cap'n Proto exception become an
/// errc::malformed_message prefixed with `what`.
template <class Result, class F>
expected<Result> read_message(std::span<const uint8_t> bytes, const std::string& what,
                              size_t max_bytes, F&& read) {
  auto malformed = [&](const std::string& why) {
    return error(errc::malformed_message, "malformed " + what + ": " + why);
  };
  if (bytes.size() > max_bytes)
    return malformed(std::to_string(bytes.size()) + " bytes exceed the limit of " +
                     std::to_string(max_bytes));
  if (bytes.size() < 8 || bytes.size() % 8 != 0)
    return malformed("length " + std::to_string(bytes.size()) +
                     " is not a whole number of 8-byte words");
  kj::Array<capnp::word> aligned;
  kj::ArrayPtr<const capnp::word> words;
  if (reinterpret_cast<uintptr_t>(bytes.data()) % alignof(capnp::word) == 0) {
    words = {reinterpret_cast<const capnp::word*>(bytes.data()), bytes.size() / 8};
  } else {
    aligned = kj::heapArray<capnp::word>(bytes.size() / 8);
    std::memcpy(aligned.begin(), bytes.data(), bytes.size());
    words = aligned.asPtr();
  }
  try {
    capnp::ReaderOptions options;
    options.traversalLimitInWords = bytes.size() / 8 + 64;
    options.nestingLimit = 16;
    capnp::FlatArrayMessageReader reader(words, options);
    if (reader.getEnd() != words.end())
      return malformed(std::to_string((words.end() - reader.getEnd()) * 8) +
                       " trailing bytes after the message");
    return read(reader);
  } catch (const kj::Exception& e) {
    return malformed(e.getDescription().cStr());
  }
}

}  // namespace gflex::detail
