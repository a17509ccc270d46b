@0xd2a7c41e9b3f6085;
# A trained model: the workload that defines its layout and the named parameter tensors.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("gflex::schema");

using import "tensor.capnp".Tensor;

struct Checkpoint {
  workload @0 :Text;
  # Training progress when the checkpoint was written (epochs or committed rounds).
  step @1 :UInt64;
  parameters @2 :List(NamedTensor);
  # A user-defined model's declaration (its [model] table as TOML) and the data set it was
  # trained on; empty for a built-in workload.
  model @3 :Text;
  dataSet @4 :Text;
}

struct NamedTensor {
  name @0 :Text;
  tensor @1 :Tensor;
}
