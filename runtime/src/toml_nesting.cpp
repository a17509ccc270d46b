#include "gflex/runtime/toml_nesting.hpp"

#include <algorithm>

namespace gflex {

namespace {

bool is_bare_key_char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '-';
}

// The end of the string that starts at `i` (a quote): past its closing quote, or at the end of
// the text (or of its line, for a one-line string) if it has none; toml++ refuses that later.
size_t skip_string(std::string_view t, size_t i) {
  const char q = t[i];
  const bool basic = q == '"';
  if (t.substr(i, 3) == std::string_view(basic ? "\"\"\"" : "'''")) {
    const std::string_view close = basic ? "\"\"\"" : "'''";
    for (size_t j = i + 3; j < t.size(); ++j) {
      if (basic && t[j] == '\\') {
        ++j;
        continue;
      }
      if (t.substr(j, 3) == close) {
        // Up to two more quotes close it too ("""a"""" is the string a").
        j += 3;
        for (int extra = 0; extra < 2 && j < t.size() && t[j] == q; ++extra) ++j;
        return j;
      }
    }
    return t.size();
  }
  for (size_t j = i + 1; j < t.size(); ++j) {
    if (t[j] == '\n') return j;
    if (basic && t[j] == '\\') {
      ++j;
      continue;
    }
    if (t[j] == q) return j + 1;
  }
  return t.size();
}

}  // namespace

int toml_nesting(std::string_view t) {
  int deepest = 0;
  int open = 0;             // brackets and braces open here
  int run = 0;              // parts of the dotted key that ends here
  bool after_part = false;  // the last thing seen was a key part (a dot may follow)
  bool after_dot = false;   // a dot followed a key part
  auto part = [&] {
    run = after_dot ? run + 1 : 1;
    after_part = true;
    after_dot = false;
    deepest = std::max(deepest, open + run);
  };
  auto end_run = [&] {
    run = 0;
    after_part = after_dot = false;
  };
  size_t i = 0;
  while (i < t.size()) {
    const char c = t[i];
    if (c == ' ' || c == '\t') {
      ++i;
    } else if (c == '"' || c == '\'') {
      i = skip_string(t, i);
      part();
    } else if (is_bare_key_char(c)) {
      while (i < t.size() && is_bare_key_char(t[i])) ++i;
      part();
    } else if (c == '.' && after_part) {
      after_part = false;
      after_dot = true;
      ++i;
    } else if (c == '#') {
      while (i < t.size() && t[i] != '\n') ++i;
      end_run();
    } else {
      if (c == '[' || c == '{') {
        ++open;
        deepest = std::max(deepest, open);
      } else if ((c == ']' || c == '}') && open > 0) {
        --open;
      }
      end_run();
      ++i;
    }
  }
  return deepest;
}

expected<void> check_toml_nesting(std::string_view text, const std::string& source, int max_depth) {
  const int depth = toml_nesting(text);
  if (depth <= max_depth) return {};
  return error(errc::invalid_argument,
               source + ": nests " + std::to_string(depth) +
                   " deep (tables, arrays and the parts of dotted keys), more than " +
                   std::to_string(max_depth));
}

}  // namespace gflex
