#include "gflex/runtime/tensor_codec.hpp"

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>

#include <cstring>

#include "gflex/schema/tensor.capnp.h"

namespace gflex {

std::vector<uint8_t> encode_tensor(const tensor& t) {
  GFLEX_CHECK(t.on_host(), "encode_tensor of a device tensor");
  // One segment sized to fit, so encoding allocates once and the output is contiguous.
  size_t words = 16 + t.rank() + (t.nbytes() + 7) / 8;
  capnp::MallocMessageBuilder message(static_cast<unsigned>(words));
  auto root = message.initRoot<schema::Tensor>();
  root.setDtype(static_cast<schema::DType>(t.type()));
  auto shape = root.initShape(static_cast<unsigned>(t.rank()));
  for (size_t i = 0; i < t.rank(); ++i) shape.set(static_cast<unsigned>(i), t.dim(i));
  auto data = root.initData(static_cast<unsigned>(t.nbytes()));
  if (t.nbytes() > 0) std::memcpy(data.begin(), t.raw(), t.nbytes());
  auto flat = capnp::messageToFlatArray(message);
  auto bytes = flat.asBytes();
  return std::vector<uint8_t>(bytes.begin(), bytes.end());
}

namespace {

error malformed(const std::string& what) {
  return error(errc::malformed_message, "malformed tensor message: " + what);
}

}  // namespace

expected<tensor> decode_tensor(std::span<const uint8_t> bytes, const decode_limits& limits) {
  if (bytes.size() > limits.max_bytes)
    return malformed(std::to_string(bytes.size()) + " bytes exceed the limit of " +
                     std::to_string(limits.max_bytes));
  if (bytes.size() < 8 || bytes.size() % 8 != 0)
    return malformed("length " + std::to_string(bytes.size()) +
                     " is not a whole number of 8-byte words");
  // Cap'n Proto reads words in place; copy into word-aligned memory when the caller's buffer
  // is not aligned (a vector<uint8_t> from the network need not be).
  kj::Array<capnp::word> aligned;
  kj::ArrayPtr<const capnp::word> words;
  if (reinterpret_cast<uintptr_t>(bytes.data()) % alignof(capnp::word) == 0) {
    words = kj::ArrayPtr<const capnp::word>(reinterpret_cast<const capnp::word*>(bytes.data()),
                                            bytes.size() / 8);
  } else {
    aligned = kj::heapArray<capnp::word>(bytes.size() / 8);
    std::memcpy(aligned.begin(), bytes.data(), bytes.size());
    words = aligned.asPtr();
  }
  try {
    capnp::ReaderOptions options;
    options.traversalLimitInWords = bytes.size() / 8 + 64;
    options.nestingLimit = 8;
    capnp::FlatArrayMessageReader reader(words, options);
    auto root = reader.getRoot<schema::Tensor>();
    if (reader.getEnd() != words.end())
      return malformed(std::to_string((words.end() - reader.getEnd()) * 8) +
                       " trailing bytes after the message");
    auto raw_type = static_cast<uint16_t>(root.getDtype());
    if (raw_type > static_cast<uint16_t>(dtype::i8))
      return malformed("unknown dtype code " + std::to_string(raw_type));
    auto type = static_cast<dtype>(raw_type);
    auto shape_reader = root.getShape();
    if (shape_reader.size() > limits.max_rank)
      return malformed("rank " + std::to_string(shape_reader.size()) + " exceeds the limit of " +
                       std::to_string(limits.max_rank));
    shape_t shape;
    for (uint64_t extent : shape_reader) {
      if (extent > static_cast<uint64_t>(limits.max_elements))
        return malformed("extent " + std::to_string(extent) + " is too large");
      shape.push_back(static_cast<int64_t>(extent));
    }
    auto numel = checked_numel(shape, limits.max_elements);
    if (!numel) return malformed(numel.error().message());
    auto data = root.getData();
    size_t want = static_cast<size_t>(*numel) * size_of(type);
    if (data.size() != want)
      return malformed("shape " + to_string(shape) + " of " + to_string(type) + " needs " +
                       std::to_string(want) + " data bytes but the message has " +
                       std::to_string(data.size()));
    tensor t = tensor::empty(std::move(shape), type);
    if (want > 0) std::memcpy(t.raw(), data.begin(), want);
    return t;
  } catch (const kj::Exception& e) {
    return malformed(e.getDescription().cStr());
  }
}

}  // namespace gflex
