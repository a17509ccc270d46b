#include "gflex/runtime/shard.hpp"

#include <algorithm>
#include <cmath>

#include "capnp_bytes.hpp"
#include "gflex/schema/dataset.capnp.h"
#include "tensor_capnp.hpp"

namespace gflex {

std::vector<uint8_t> encode_shard(const dataset& d, int64_t begin, int64_t end) {
  GFLEX_CHECK(0 <= begin && begin <= end && end <= d.size(), "shard range outside the data set");
  int64_t n = end - begin, dim = d.feature_dim();
  tensor images = tensor::empty({n, dim}, dtype::u8);
  tensor labels = tensor::empty({n}, dtype::u8);
  const float* src = d.features.data<float>() + begin * dim;
  uint8_t* pixels = images.data<uint8_t>();
  for (int64_t i = 0; i < n * dim; ++i)
    pixels[i] = static_cast<uint8_t>(std::lround(std::clamp(src[i], 0.0f, 1.0f) * 255.0f));
  for (int64_t i = 0; i < n; ++i)
    labels.data<uint8_t>()[i] = static_cast<uint8_t>(d.labels.data<int32_t>()[begin + i]);
  capnp::MallocMessageBuilder message(static_cast<unsigned>(64 + (n * dim + n) / 8));
  auto root = message.initRoot<schema::Shard>();
  detail::write_tensor(root.initImages(), images);
  detail::write_tensor(root.initLabels(), labels);
  root.setClasses(static_cast<uint32_t>(d.classes));
  return detail::to_bytes(message);
}

expected<dataset> decode_shard(std::span<const uint8_t> bytes) {
  decode_limits limits;
  limits.max_rank = 2;
  return detail::read_message<dataset>(
      bytes, "shard", limits.max_bytes, [&](capnp::MessageReader& reader) -> expected<dataset> {
        auto malformed = [](const std::string& what) {
          return error(errc::malformed_message, "malformed shard: " + what);
        };
        auto root = reader.getRoot<schema::Shard>();
        auto images = detail::read_tensor(root.getImages(), limits);
        if (!images) return images.error();
        auto labels = detail::read_tensor(root.getLabels(), limits);
        if (!labels) return labels.error();
        if (images->type() != dtype::u8 || labels->type() != dtype::u8 || images->rank() != 2 ||
            labels->rank() != 1)
          return malformed("images must be u8 [n, d] and labels u8 [n]");
        if (images->dim(0) != labels->dim(0))
          return malformed(std::to_string(images->dim(0)) + " images but " +
                           std::to_string(labels->dim(0)) + " labels");
        uint32_t classes = root.getClasses();
        if (classes < 2 || classes > 65536) return malformed("bad class count");
        auto as_3d = images->reshape({images->dim(0), images->dim(1), 1});
        auto d = make_image_dataset(*as_3d, *labels, classes, "shard");
        if (!d) return malformed(d.error().message());
        return std::move(*d);
      });
}

}  // namespace gflex
