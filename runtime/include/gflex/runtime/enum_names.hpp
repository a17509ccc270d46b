#pragma once
/// @file
/// One name table per enum, read by both its `to_string` and its parser, so that what is
/// printed always parses back and a new value cannot be named in one direction only.
///
/// An enum `E` opts in by declaring, next to `E`,
///
///     template <> std::span<const enum_name<E>> enum_names<E>() noexcept;
///
/// and defining it in one source file over a constant array of its values and names. Then
/// `name_of(x)`, `is_named(x)`, `enum_from_name<E>("text")` and `enum_choices<E>()` work
/// for it.

#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace gflex {

/// One value of an enum and its name, as users write it.
template <class Enum>
struct enum_name {
  Enum value;
  const char* name;
};

/// Every value of `Enum` with its name, in the order that listings show them. Declared for
/// each enum that has names; there is no primary definition.
template <class Enum>
std::span<const enum_name<Enum>> enum_names() noexcept;

/// The name of `value`, or `unknown` for a value the table lacks (a number read from outside
/// the process).
template <class Enum>
const char* name_of(Enum value, const char* unknown = "unknown") noexcept {
  for (const auto& entry : enum_names<Enum>())
    if (entry.value == value) return entry.name;
  return unknown;
}

/// Whether `value` is one of the table's (not a number read from outside the process that no
/// value has).
template <class Enum>
bool is_named(Enum value) noexcept {
  for (const auto& entry : enum_names<Enum>())
    if (entry.value == value) return true;
  return false;
}

/// The value named `text` exactly, or nothing.
template <class Enum>
std::optional<Enum> enum_from_name(std::string_view text) noexcept {
  for (const auto& entry : enum_names<Enum>())
    if (text == entry.name) return entry.value;
  return std::nullopt;
}

/// The names for a message: `fp32, tf32 or bf16`, each between `quote`s (`"fp32", "tf32" or
/// "bf16"` with quote `"`); `conjunction` joins the last two (", " gives a plain list).
template <class Enum>
std::string enum_choices(std::string_view quote = "", std::string_view conjunction = " or ") {
  const auto names = enum_names<Enum>();
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) {
    if (i > 0) out += i + 1 == names.size() ? conjunction : std::string_view(", ");
    out.append(quote).append(names[i].name).append(quote);
  }
  return out;
}

}  // namespace gflex
