#pragma once
/// @file
/// Reading integer fields of stored JSON records. nlohmann converts a JSON float to an
/// integer type with a cast, undefined when it is out of range (fuzzing found it): an
/// integer field must hold a JSON integer, and an unsigned one a non-negative integer.

#include <nlohmann/json.hpp>

#include <stdexcept>
#include <string>
#include <type_traits>

namespace gflex {

/// The integer at `key` of `j`; throws std::invalid_argument (or nlohmann's out_of_range for
/// a missing key) when it is not an integer of the right sign.
template <class T>
T integer_at(const nlohmann::json& j, const char* key) {
  const auto& v = j.at(key);
  if (!v.is_number_integer()) throw std::invalid_argument(std::string(key) + " is not an integer");
  if constexpr (std::is_unsigned_v<T>) {
    if (!v.is_number_unsigned()) throw std::invalid_argument(std::string(key) + " is negative");
  }
  return v.get<T>();
}

}  // namespace gflex
