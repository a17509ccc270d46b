@0x9b91ebc6e4843074;
# Wire format of one pseudo-gradient update, sent by a volunteer node to the core. Encoded and
# decoded by runtime/src/update_codec.cpp, which validates every size against `count` before
# it allocates.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("gflex::schema");

enum Compression {
  fp32 @0;
  int8 @1;
}

struct Update {
  compression @0 :Compression;
  # Number of float values the update stands for.
  count @1 :UInt64;
  # int8 only: values per scale; the last block may be shorter.
  blockSize @2 :UInt32;
  # int8 only: one little-endian f32 per block, ceil(count / blockSize) of them.
  scales @3 :Data;
  # fp32: count * 4 bytes of little-endian f32; int8: count bytes (two's complement).
  values @4 :Data;
  # fp32 values of more than 2^28 bytes (more than one Data field can hold): the same bytes
  # in order, in pieces of at most 2^28; `values` is then empty.
  valuePieces @5 :List(Data);
}
