// YAML documents (configs) as JSON values, through libyaml.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace deltatune::io {

// The first document of `text` as JSON. Plain scalars are typed as YAML 1.2's
// core schema does (null, booleans, integers, floats); quoted ones stay
// strings. Mapping keys are strings. Throws deltatune::Error naming `source`
// and the line and column of a syntax error, or of an alias or a non-scalar
// key (unsupported).
nlohmann::json parse_yaml(std::string_view text, const std::string& source);

}  // namespace deltatune::io
