@0xe41c2f7a9d3b5068;
# A shard of a labelled data set as the core serves it to nodes: a content-addressed chunk
# (its name is the BLAKE2b-256 digest of these bytes), verified and cached by each node.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("gflex::schema");

using import "tensor.capnp".Tensor;

struct Shard {
  # u8 [n, d]: raw pixels; the node scales them to [0, 1] as the core does.
  images @0 :Tensor;
  # u8 [n]: class labels below `classes`.
  labels @1 :Tensor;
  classes @2 :UInt32;
  # Token ids instead of pixels: `images` holds them unscaled (u8 below 256 classes, else
  # i32), as do the labels; the node checks each is below `classes`.
  tokens @3 :Bool;
}
