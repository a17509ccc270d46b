#include "gflex/runtime/checkpoint.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "capnp_bytes.hpp"
#include "gflex/runtime/printable_text.hpp"
#include "gflex/schema/checkpoint.capnp.h"
#include "synced_file.hpp"
#include "tensor_capnp.hpp"

namespace gflex {

const tensor* checkpoint::find(std::string_view name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t.value;
  return nullptr;
}

namespace {

// A checkpoint message: its header, then `count` named tensors that `fill(list)` writes,
// whose names and data take at most `body_words`.
template <class Fill>
std::vector<uint8_t> build_checkpoint(const std::string& workload, const std::string& model,
                                      const std::string& data_set, uint64_t step, size_t count,
                                      size_t body_words, Fill&& fill) {
  const size_t words =
      64 + (workload.size() + model.size() + data_set.size()) / 8 + 8 * count + body_words;
  return detail::build_flat(words, [&](capnp::MessageBuilder& message) {
    auto root = message.initRoot<schema::Checkpoint>();
    root.setWorkload(workload);
    root.setModel(model);
    root.setDataSet(data_set);
    root.setStep(step);
    fill(root.initParameters(static_cast<unsigned>(count)));
  });
}

}  // namespace

std::vector<uint8_t> encode_checkpoint(const checkpoint& c) {
  size_t body = 0;
  for (const auto& t : c.tensors)
    body += t.name.size() / 8 + detail::tensor_words(t.value.nbytes(), t.value.rank());
  return build_checkpoint(c.workload, c.model, c.data_set, c.step, c.tensors.size(), body,
                          [&](auto list) {
                            for (size_t i = 0; i < c.tensors.size(); ++i) {
                              list[i].setName(c.tensors[i].name);
                              detail::write_tensor(list[i].initTensor(), c.tensors[i].value);
                            }
                          });
}

std::vector<uint8_t> encode_checkpoint(const checkpoint_view& c) {
  size_t body = 0;
  for (size_t i = 0; i < c.vectors.size(); ++i) {
    const auto& v = c.vectors[i];
    const size_t rank = i < c.shapes.size() ? std::max<size_t>(c.shapes[i].size(), 1) : 1;
    if (i < c.shapes.size()) {
      auto n = checked_numel(c.shapes[i]);
      GFLEX_CHECK(n.has_value() && static_cast<size_t>(*n) == v.second.size(),
                  "encode_checkpoint: a shape that does not fit its vector");
    }
    body += v.first.size() / 8 + detail::tensor_words(v.second.size_bytes(), rank);
  }
  return build_checkpoint(c.workload, c.model, c.data_set, c.step, c.vectors.size(), body,
                          [&](auto list) {
                            for (size_t i = 0; i < c.vectors.size(); ++i) {
                              list[i].setName(c.vectors[i].first);
                              detail::write_vector(list[i].initTensor(), c.vectors[i].second,
                                                   i < c.shapes.size() ? &c.shapes[i] : nullptr);
                            }
                          });
}

expected<checkpoint> decode_checkpoint(std::span<const uint8_t> bytes,
                                       const decode_limits& limits) {
  return detail::read_message<checkpoint>(
      bytes, "checkpoint", limits.max_bytes,
      [&](capnp::MessageReader& reader) -> expected<checkpoint> {
        auto root = reader.getRoot<schema::Checkpoint>();
        checkpoint c;
        c.workload = root.getWorkload().cStr();
        c.model = root.getModel().cStr();
        c.data_set = root.getDataSet().cStr();
        c.step = root.getStep();
        auto list = root.getParameters();
        if (list.size() > max_checkpoint_tensors)
          return error(errc::malformed_message,
                       "malformed checkpoint: " + std::to_string(list.size()) +
                           " tensors, more than " + std::to_string(max_checkpoint_tensors));
        for (auto entry : list) {
          // Checkpoints are written raw: a packed tensor could make a small file ask for 32
          // times its size in memory.
          const auto tensor = entry.getTensor();
          if (tensor.hasZstd())
            // The name is the file's: printable and short on a terminal or in a log.
            return error(
                errc::malformed_message,
                "malformed checkpoint: tensor '" +
                    printable_text(std::string_view(entry.getName().cStr()).substr(0, 64)) +
                    "' is packed (checkpoints hold raw tensors)");
          auto t = detail::read_tensor(tensor, limits);
          if (!t) return t.error();
          c.tensors.push_back({entry.getName().cStr(), std::move(*t)});
        }
        return c;
      });
}

expected<void> write_file_atomically(const std::filesystem::path& file,
                                     std::span<const uint8_t> bytes, file_sync sync) {
  // Private to its owner (a user's model, a user's data on a volunteer's disk), unless the
  // file it replaces was shared by its owner's choice: its mode is kept.
  mode_t mode = 0600;
  if (struct stat st; ::stat(file.c_str(), &st) == 0 && S_ISREG(st.st_mode))
    mode = st.st_mode & 07777;
  return detail::write_synced(file, bytes, mode, true, sync == file_sync::yes);
}

expected<std::vector<uint8_t>> read_file(const std::filesystem::path& file, size_t max_bytes) {
  std::error_code ec;
  const auto kind = std::filesystem::status(file, ec).type();
  if (kind == std::filesystem::file_type::not_found)
    return error(errc::io_error, file.string() + ": no such file");
  if (kind == std::filesystem::file_type::directory)
    return error(errc::io_error, file.string() + ": is a directory");
  const auto too_large = [&] {
    return error(errc::io_error,
                 file.string() + ": larger than " + std::to_string(max_bytes) + " bytes");
  };
  // A regular file's size is known up front; a pipe or a device (`<(generate)`, /dev/stdin) is
  // read in pieces, never past the bound, since it may not end.
  const bool regular = kind == std::filesystem::file_type::regular;
  const auto size = regular ? std::filesystem::file_size(file, ec) : 0;
  if (ec) return error(errc::io_error, file.string() + ": " + ec.message());
  if (size > max_bytes) return too_large();
  errno = 0;
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    const int err = errno;
    return error(errc::io_error,
                 file.string() + ": cannot open" +
                     (err != 0 ? std::string(" (") + std::strerror(err) + ")" : std::string()));
  }
  std::vector<uint8_t> bytes;
  bytes.reserve(size);
  constexpr size_t piece = size_t{1} << 16;
  while (in) {
    const size_t have = bytes.size();
    const size_t want = std::min(piece, max_bytes - have + 1);  // One past the bound tells.
    bytes.resize(have + want);
    in.read(reinterpret_cast<char*>(bytes.data() + have), static_cast<std::streamsize>(want));
    bytes.resize(have + static_cast<size_t>(in.gcount()));
    if (bytes.size() > max_bytes) return too_large();
  }
  if (in.bad()) return error(errc::io_error, file.string() + ": cannot read");
  return bytes;
}

}  // namespace gflex
