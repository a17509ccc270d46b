#include "gflex/runtime/tensor_codec.hpp"

#include <zstd.h>

#include <cstring>
#include <optional>

#include "capnp_bytes.hpp"
#include "tensor_capnp.hpp"

namespace gflex {

namespace detail {

namespace {

// zstd's fastest level: a round's parameters are packed between two rounds (by the first
// node session that sends them), and the byte planes do most of the work for f32 values.
constexpr int packing_level = 1;
// One Data field holds the frame; larger tensors (models of over 64 million parameters)
// travel raw, in pieces.
constexpr size_t largest_packed = size_t{1} << 28;
// How many times its size a frame may expand to. A reader bounds what a message can make it
// allocate (a few bytes of zstd can say a gigabyte of zeros); data that packs tighter (mostly
// one value) travels raw, so a writer never makes what a reader refuses. Real data packs far
// less: Fashion-MNIST's pixels 1.8 times, parameters 1.2.
constexpr size_t most_expansion = 32;

// Element bytes laid out plane by plane: byte k of every element, for k in [0, width).
void to_planes(std::span<const uint8_t> bytes, size_t width, uint8_t* out) {
  const size_t n = bytes.size() / width;
  for (size_t i = 0; i < n; ++i)
    for (size_t k = 0; k < width; ++k) out[k * n + i] = bytes[i * width + k];
}

void from_planes(std::span<const uint8_t> planes, size_t width, uint8_t* out) {
  const size_t n = planes.size() / width;
  for (size_t k = 0; k < width; ++k)
    for (size_t i = 0; i < n; ++i) out[i * width + k] = planes[k * n + i];
}

// `bytes` as one zstd frame, or nothing when packing would not make them smaller.
std::optional<std::vector<uint8_t>> pack(std::span<const uint8_t> bytes, size_t width) {
  if (bytes.size() < 64 || bytes.size() > largest_packed) return std::nullopt;
  std::vector<uint8_t> planes;
  std::span<const uint8_t> source = bytes;
  if (width > 1) {
    planes.resize(bytes.size());
    to_planes(bytes, width, planes.data());
    source = planes;
  }
  std::vector<uint8_t> frame(ZSTD_compressBound(source.size()));
  const size_t n =
      ZSTD_compress(frame.data(), frame.size(), source.data(), source.size(), packing_level);
  if (ZSTD_isError(n) || n >= bytes.size() || n * most_expansion < bytes.size())
    return std::nullopt;
  frame.resize(n);
  return frame;
}

// Fills `out`'s element bytes: packed when asked and smaller, else raw.
void write_elements(schema::Tensor::Builder out, std::span<const uint8_t> bytes, size_t width,
                    tensor_packing packing) {
  if (packing == tensor_packing::zstd) {
    if (auto frame = pack(bytes, width)) {
      out.setZstd(kj::arrayPtr(frame->data(), frame->size()));
      out.setPlanes(width > 1);
      return;
    }
  }
  write_blob(
      bytes, [&](unsigned n) { return out.initData(n); },
      [&](unsigned n) { return out.initPieces(n); });
}

}  // namespace

void write_tensor(schema::Tensor::Builder out, const tensor& t, tensor_packing packing) {
  GFLEX_CHECK(t.on_host(), "encoding a device tensor");
  out.setDtype(static_cast<schema::DType>(t.type()));
  auto shape = out.initShape(static_cast<unsigned>(t.rank()));
  for (size_t i = 0; i < t.rank(); ++i) shape.set(static_cast<unsigned>(i), t.dim(i));
  write_elements(out, std::span<const uint8_t>(static_cast<const uint8_t*>(t.raw()), t.nbytes()),
                 size_of(t.type()), packing);
}

void write_vector(schema::Tensor::Builder out, std::span<const float> values, const shape_t* shape,
                  tensor_packing packing) {
  out.setDtype(schema::DType::F32);
  if (shape == nullptr) {
    out.initShape(1).set(0, values.size());
  } else {
    auto dims = out.initShape(static_cast<unsigned>(shape->size()));
    for (size_t i = 0; i < shape->size(); ++i)
      dims.set(static_cast<unsigned>(i), static_cast<uint64_t>((*shape)[i]));
  }
  write_elements(out,
                 std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(values.data()),
                                          values.size_bytes()),
                 sizeof(float), packing);
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
  const size_t want = static_cast<size_t>(*numel) * size_of(type);
  if (in.hasZstd()) {
    // The size the frame must decompress to is the shape's, bounded above: a frame cannot
    // make the reader allocate more than the (limited) shape says.
    if (in.hasData() && in.getData().size() > 0) return malformed("data both packed and raw");
    if (in.hasPieces() && in.getPieces().size() > 0) return malformed("data both packed and raw");
    auto frame = in.getZstd();
    const unsigned long long content = ZSTD_getFrameContentSize(frame.begin(), frame.size());
    if (content != want)
      return malformed("shape " + to_string(shape) + " of " + to_string(type) + " needs " +
                       std::to_string(want) + " data bytes but the zstd frame " +
                       (content == ZSTD_CONTENTSIZE_ERROR ? std::string("is not one")
                        : content == ZSTD_CONTENTSIZE_UNKNOWN
                            ? std::string("does not say its size")
                            : "holds " + std::to_string(content)));
    if (want > frame.size() * most_expansion)
      return malformed("a zstd frame of " + std::to_string(frame.size()) +
                       " bytes may not expand to " + std::to_string(want) + " (at most " +
                       std::to_string(most_expansion) + " times)");
    tensor t = tensor::empty(std::move(shape), type);
    const bool planes = in.getPlanes() && size_of(type) > 1;
    std::vector<uint8_t> staged(planes ? want : 0);
    uint8_t* into = planes ? staged.data() : static_cast<uint8_t*>(t.raw());
    const size_t n = ZSTD_decompress(into, want, frame.begin(), frame.size());
    if (ZSTD_isError(n) || n != want)
      return malformed(std::string("zstd frame does not decompress: ") +
                       (ZSTD_isError(n) ? ZSTD_getErrorName(n) : "short"));
    if (planes) from_planes(staged, size_of(type), static_cast<uint8_t*>(t.raw()));
    return t;
  }
  auto parts = blob_parts(in.getData(), in.getPieces());
  if (!parts) return malformed("data in both forms, or in pieces of the wrong sizes");
  const size_t have = blob_size(*parts);
  if (have != want)
    return malformed("shape " + to_string(shape) + " of " + to_string(type) + " needs " +
                     std::to_string(want) + " data bytes but the message has " +
                     std::to_string(have));
  tensor t = tensor::empty(std::move(shape), type);
  if (want > 0) copy_blob(*parts, static_cast<uint8_t*>(t.raw()));
  return t;
}

}  // namespace detail

std::vector<uint8_t> encode_tensor(const tensor& t, tensor_packing packing) {
  return detail::build_flat(detail::tensor_words(t.nbytes(), t.rank()),
                            [&](capnp::MessageBuilder& message) {
                              detail::write_tensor(message.initRoot<schema::Tensor>(), t, packing);
                            });
}

std::vector<uint8_t> encode_vector(std::span<const float> values, tensor_packing packing) {
  return detail::build_flat(
      detail::tensor_words(values.size_bytes(), 1), [&](capnp::MessageBuilder& message) {
        detail::write_vector(message.initRoot<schema::Tensor>(), values, nullptr, packing);
      });
}

std::vector<uint8_t> repack_tensor(std::span<const uint8_t> encoded, tensor_packing packing) {
  auto t = decode_tensor(encoded);
  if (!t) return {encoded.begin(), encoded.end()};
  return encode_tensor(*t, packing);
}

expected<tensor> decode_tensor(std::span<const uint8_t> bytes, const decode_limits& limits) {
  return detail::read_message<tensor>(
      bytes, "tensor message", limits.max_bytes, [&](capnp::MessageReader& reader) {
        return detail::read_tensor(reader.getRoot<schema::Tensor>(), limits);
      });
}

}  // namespace gflex
