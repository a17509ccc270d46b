// Stored ledger entries and amounts typed by users: no input may crash the decoder or the
// amount parser; an accepted entry re-encodes to the same decoding, an accepted amount
// prints back to the same number.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "gflex/runtime/credits.hpp"
#include "ledger_book.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  if (auto e = gflex::decode_entry(text)) {
    auto again = gflex::decode_entry(gflex::encode_entry(*e));
    if (!again || gflex::encode_entry(*again) != gflex::encode_entry(*e)) std::abort();
    gflex::ledger_book book;
    auto checked = gflex::verify_ledger({*e}, book.balances(), e->seq);
    (void)checked;
  }
  if (auto micro = gflex::parse_credits(text)) {
    auto back = gflex::parse_credits(gflex::format_credits(*micro));
    if (!back || *back != *micro) std::abort();
  }
  return 0;
}
