#pragma once
/// @file
/// Shared plumbing for decoding Cap'n Proto messages that arrive from outside the process.
/// Private to runtime/src (it includes Cap'n Proto headers).

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "gflex/runtime/error.hpp"

namespace gflex::detail {

/// The largest piece a Data field is given: a Data field holds at most 2^29 - 1 bytes, so
/// larger payloads (tensors, fp32 updates) are written as a List(Data) of such pieces.
inline constexpr size_t max_piece_bytes = size_t{1} << 28;

/// A kj stream that appends to a std::vector, so a serialised message is written once into
/// the buffer the caller gets instead of going through an intermediate kj::Array.
class vector_output final : public kj::OutputStream {
 public:
  explicit vector_output(std::vector<uint8_t>& out) : out_(out) {}
  void write(const void* buffer, size_t size) override {
    auto* p = static_cast<const uint8_t*>(buffer);
    out_.insert(out_.end(), p, p + size);
  }

 private:
  std::vector<uint8_t>& out_;
};

/// Flattens a built message into one byte vector, copying it once.
inline std::vector<uint8_t> to_bytes(capnp::MessageBuilder& message) {
  std::vector<uint8_t> out;
  out.reserve(capnp::computeSerializedSizeInWords(message) * sizeof(capnp::word));
  vector_output stream(out);
  capnp::writeMessage(stream, message);
  return out;
}

/// Builds a single-segment message straight into the byte vector it is returned in, so that a
/// large payload (a model's parameters, a checkpoint) exists once while it is encoded, not
/// twice (a builder's segment, then its flattened copy). `max_words` must bound the message;
/// `build` gets the capnp::MessageBuilder to fill.
template <class Build>
std::vector<uint8_t> build_flat(size_t max_words, Build&& build) {
  // Zero-filled, as Cap'n Proto requires of a buffer it builds in; after the 8-byte segment
  // table (one segment), which is word-aligned since the vector's storage is.
  std::vector<uint8_t> out((max_words + 1) * sizeof(capnp::word));
  capnp::FlatMessageBuilder message(
      kj::arrayPtr(reinterpret_cast<capnp::word*>(out.data() + sizeof(capnp::word)), max_words));
  build(static_cast<capnp::MessageBuilder&>(message));
  const auto segments = message.getSegmentsForOutput();
  const size_t used = segments.size() == 1 ? segments[0].size() : 0;
  const uint32_t header[2] = {0, static_cast<uint32_t>(used)};  // segment count - 1, size
  std::memcpy(out.data(), header, sizeof header);
  out.resize((used + 1) * sizeof(capnp::word));
  return out;
}

/// Writes `bytes` into `data` when they fit one Data field, else into `pieces`.
template <class InitData, class InitPieces>
void write_blob(std::span<const uint8_t> bytes, InitData init_data, InitPieces init_pieces) {
  if (bytes.size() <= max_piece_bytes) {
    auto data = init_data(static_cast<unsigned>(bytes.size()));
    if (!bytes.empty()) std::memcpy(data.begin(), bytes.data(), bytes.size());
    return;
  }
  const size_t n = (bytes.size() + max_piece_bytes - 1) / max_piece_bytes;
  auto pieces = init_pieces(static_cast<unsigned>(n));
  for (size_t i = 0; i < n; ++i) {
    const size_t at = i * max_piece_bytes, len = std::min(max_piece_bytes, bytes.size() - at);
    auto piece = pieces.init(static_cast<unsigned>(i), static_cast<unsigned>(len));
    std::memcpy(piece.begin(), bytes.data() + at, len);
  }
}

/// The parts of a blob written by write_blob (`data`, or its `pieces`), each read once (every
/// read counts against the reader's traversal limit); nullopt when it is malformed: both forms,
/// or a piece but the last of other than max_piece_bytes.
template <class DataReader, class PiecesReader>
std::optional<std::vector<kj::ArrayPtr<const kj::byte>>> blob_parts(DataReader data,
                                                                    PiecesReader pieces) {
  std::vector<kj::ArrayPtr<const kj::byte>> parts;
  if (pieces.size() == 0) {
    parts.push_back(data.asBytes());
    return parts;
  }
  if (data.size() != 0) return std::nullopt;
  for (unsigned i = 0; i < pieces.size(); ++i) {
    auto piece = pieces[i].asBytes();
    if (piece.size() == 0 || piece.size() > max_piece_bytes ||
        (i + 1 < pieces.size() && piece.size() != max_piece_bytes))
      return std::nullopt;
    parts.push_back(piece);
  }
  return parts;
}

/// The bytes in `parts`.
inline size_t blob_size(const std::vector<kj::ArrayPtr<const kj::byte>>& parts) {
  size_t total = 0;
  for (const auto& p : parts) total += p.size();
  return total;
}

/// Copies `parts` to `out`, in order.
inline void copy_blob(const std::vector<kj::ArrayPtr<const kj::byte>>& parts, uint8_t* out) {
  for (const auto& p : parts) {
    if (p.size() > 0) std::memcpy(out, p.begin(), p.size());
    out += p.size();
  }
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
