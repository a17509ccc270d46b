#include "gflex/kernels/resident_features.hpp"

namespace gflex::kernels {

resident_features::resident_features(backend& b, const tensor& features) {
  if (b.where().kind == device_kind::host) {
    at_ = features.data<float>();
    return;
  }
  try {
    copy_ = b.allocate({features.numel()}, dtype::f32);
    b.upload(features.raw(), copy_.raw(), features.nbytes());
    at_ = copy_.data<float>();
  } catch (const compute_error&) {
    copy_ = tensor{};  // out of device memory: nothing held
  }
}

}  // namespace gflex::kernels
