@0xb6f1d3a0c2e84a51;
# Wire format of one tensor. Every tensor that crosses a process boundary (parameters,
# pseudo-gradients, checkpoints) is encoded with this schema by runtime/src/tensor_codec.cpp.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("gflex::schema");

enum DType {
  f32 @0;
  i32 @1;
  u8 @2;
  i8 @3;
}

struct Tensor {
  dtype @0 :DType;
  # Row-major extents, outermost first. An empty list is a scalar.
  shape @1 :List(UInt64);
  # Little-endian element bytes; size must equal product(shape) * sizeof(dtype).
  data @2 :Data;
  # The same bytes in order, in pieces of at most 2^28, when they are more than one Data
  # field can hold (2^29 - 1 bytes: a model of over 134 million fp32 values); `data` is then
  # empty.
  pieces @3 :List(Data);
  # The same bytes compressed as one zstd frame, when that is smaller (`data` and `pieces` are
  # then empty): a shard's pixels, a round's parameters. The reader decompresses into exactly
  # product(shape) * sizeof(dtype) bytes and refuses a frame that holds more or less, or
  # that would expand to more than 32 times its size (such data travels raw).
  zstd @4 :Data;
  # With `zstd`: the bytes were laid out in planes before compressing (every element's first
  # byte, then every element's second byte, ...), which makes f32 values compress: their
  # sign-and-exponent bytes repeat, their low mantissa bytes do not.
  planes @5 :Bool;
}
