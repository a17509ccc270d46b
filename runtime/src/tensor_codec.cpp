#include "gflex/runtime/tensor_codec.hpp"

#include <cstring>

#include "capnp_bytes.hpp"
#include "tensor_capnp.hpp"

namespace gflex {

namespace detail {

void write_tensor(schema::Tensor::Builder out, const tensor& t) {
  GFLEX_CHECK(t.on_host(), "encoding a device tensor");
  out.setDtype(static_cast<schema::DType>(t.type()));
  auto shape = out.initShape(static_cast<unsigned>(t.rank()));
  for (size_t i = 0; i < t.rank(); ++i) shape.set(static_cast<unsigned>(i), t.dim(i));
  write_blob(
      std::span<const uint8_t>(static_cast<const uint8_t*>(t.raw()), t.nbytes()),
      [&](unsigned n) { return out.initData(n); }, [&](unsigned n) { return out.initPieces(n); });
}

void write_vector(schema::Tensor::Builder out, std::span<const float> values,
                  const shape_t* shape) {
  out.setDtype(schema::DType::F32);
  if (shape == nullptr) {
    out.initShape(1).set(0, values.size());
  } else {
    auto dims = out.initShape(static_cast<unsigned>(shape->size()));
    for (size_t i = 0; i < shape->size(); ++i)
      dims.set(static_cast<unsigned>(i), static_cast<uint64_t>((*shape)[i]));
  }
  write_blob(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(values.data()),
                               values.size_bytes()),
      [&](unsigned n) { return out.initData(n); }, [&](unsigned n) { return out.initPieces(n); });
}

expected<tensor> read_tensor(schema::Tensor::Reader in, const decode_limits& limits) {
  auto malformed = [](const std::string& what) {
    return error(errc::malformed_message, "malformed tensor message: " + what);
  };
  auto raw_type = static_cast<uint16_t>(in.getDtype());
  if (raw_type > static_cast<uint16_t>(dtype::i8))
    return malformed("unknown dtype code " + std::to_string(raw_type));
  auto type = static_cast<dtype>(raw_type);
  auto shape_reader = in.getShape();
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
  auto parts = blob_parts(in.getData(), in.getPieces());
  if (!parts) return malformed("data in both forms, or in pieces of the wrong sizes");
  const size_t have = blob_size(*parts);
  size_t want = static_cast<size_t>(*numel) * size_of(type);
  if (have != want)
    return malformed("shape " + to_string(shape) + " of " + to_string(type) + " needs " +
                     std::to_string(want) + " data bytes but the message has " +
                     std::to_string(have));
  tensor t = tensor::empty(std::move(shape), type);
  if (want > 0) copy_blob(*parts, static_cast<uint8_t*>(t.raw()));
  return t;
}

}  // namespace detail

std::vector<uint8_t> encode_tensor(const tensor& t) {
  return detail::build_flat(detail::tensor_words(t.nbytes(), t.rank()),
                            [&](capnp::MessageBuilder& message) {
                              detail::write_tensor(message.initRoot<schema::Tensor>(), t);
                            });
}

std::vector<uint8_t> encode_vector(std::span<const float> values) {
  return detail::build_flat(detail::tensor_words(values.size_bytes(), 1),
                            [&](capnp::MessageBuilder& message) {
                              detail::write_vector(message.initRoot<schema::Tensor>(), values);
                            });
}

expected<tensor> decode_tensor(std::span<const uint8_t> bytes, const decode_limits& limits) {
  return detail::read_message<tensor>(
      bytes, "tensor message", limits.max_bytes, [&](capnp::MessageReader& reader) {
        return detail::read_tensor(reader.getRoot<schema::Tensor>(), limits);
      });
}

}  // namespace gflex
