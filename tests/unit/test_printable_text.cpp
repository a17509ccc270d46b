/// @file
/// What a node may call its device and GPUs: text an operator's terminal and a JSON encoder
/// take as it is.

#include <doctest/doctest.h>

#include <string>

#include "gflex/runtime/printable_text.hpp"

using gflex::is_printable_text;
using gflex::printable_text;

TEST_SUITE("printable text") {
  TEST_CASE("printable UTF-8 passes") {
    CHECK(is_printable_text(""));
    CHECK(is_printable_text("NVIDIA H200 (sm_90), 139 GiB"));
    CHECK(is_printable_text("cpu: OpenBLAS Haswell, 16 threads"));
    CHECK(is_printable_text("Grafikkarte \xc3\xa4\xc3\xb6\xc3\xbc"));  // äöü
    CHECK(is_printable_text("\xe6\x98\xbe\xe5\x8d\xa1"));              // 显卡
    CHECK(is_printable_text("\xf0\x9f\x9a\x80"));                      // U+1F680
    CHECK(is_printable_text("\xf4\x8f\xbf\xbf"));                      // U+10FFFF
  }
  TEST_CASE("control characters and bytes that are not UTF-8 are refused") {
    CHECK_FALSE(is_printable_text("GPU\x1b[2J"));  // an escape sequence
    CHECK_FALSE(is_printable_text(std::string("a\0b", 3)));
    CHECK_FALSE(is_printable_text("tab\there"));
    CHECK_FALSE(is_printable_text("del\x7f"));
    CHECK_FALSE(is_printable_text("\xc2\x9b"));  // U+009B, C1 control (CSI)
    CHECK_FALSE(is_printable_text("\xff"));
    CHECK_FALSE(is_printable_text("\x80"));  // a continuation byte first
    CHECK_FALSE(is_printable_text("\xc3"));  // cut short
    CHECK_FALSE(is_printable_text("\xe6\x98"));
    CHECK_FALSE(is_printable_text("\xc0\xaf"));          // overlong '/'
    CHECK_FALSE(is_printable_text("\xe0\x80\xaf"));      // overlong '/'
    CHECK_FALSE(is_printable_text("\xed\xa0\x80"));      // a surrogate
    CHECK_FALSE(is_printable_text("\xf4\x90\x80\x80"));  // past U+10FFFF
    CHECK_FALSE(is_printable_text("\xf8\x88\x80\x80\x80"));
  }
  TEST_CASE("what is not printable is shown as '?', byte by byte; the rest as it is") {
    CHECK(printable_text("") == "");
    CHECK(printable_text("GPU \xc3\xa4") == "GPU \xc3\xa4");
    CHECK(printable_text("GPU\x1b[2J") == "GPU?[2J");
    CHECK(printable_text("\xff\xfe ok") == "?? ok");
    CHECK(printable_text("cut \xe6\x98") == "cut ??");
    CHECK(printable_text("\xc0\xaf") == "??");  // overlong
    CHECK(is_printable_text(printable_text(std::string("a\0b\x80\xc2\x9b", 6))));
  }
}
