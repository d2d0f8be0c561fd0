// YAML configs read as JSON: YAML 1.2 core-schema typing of plain scalars,
// quoted scalars kept as strings, and errors that name file, line and column.
#include "deltatune/io/yaml.h"

#include <gtest/gtest.h>

#include <cmath>

#include "deltatune/error.h"

namespace deltatune::io {
namespace {
using json = nlohmann::json;

TEST(Yaml, PlainScalarsAreTypedAndQuotedOnesStayStrings) {
  const json value = parse_yaml(R"(
methods: [bitfit, full]      # flow sequence
tasks:
  - RTE
  - STS-B
seeds: [1, 2, 0x10, 0o17]
train_sizes: [100, ~, null]
flags:
  --lr: 1e-3
  --warmup-ratio: .06
  --bf16: true
  --fp16: False
  --text-a: "123"
  --label: '2'
  --note: plain words
  --negative: -4
nested: {a: {b: [1.5, -.inf]}}
)",
                                "config.yaml");
  EXPECT_EQ(value["methods"], json({"bitfit", "full"}));
  EXPECT_EQ(value["tasks"], json({"RTE", "STS-B"}));
  EXPECT_EQ(value["seeds"], json({1, 2, 16, 15}));
  EXPECT_TRUE(value["seeds"][0].is_number_integer());
  EXPECT_EQ(value["train_sizes"], json({100, nullptr, nullptr}));
  const json& flags = value["flags"];
  EXPECT_DOUBLE_EQ(flags["--lr"].get<double>(), 1e-3);
  EXPECT_DOUBLE_EQ(flags["--warmup-ratio"].get<double>(), 0.06);
  EXPECT_EQ(flags["--bf16"], true);
  EXPECT_EQ(flags["--fp16"], false);
  EXPECT_EQ(flags["--text-a"], "123");
  EXPECT_EQ(flags["--label"], "2");
  EXPECT_EQ(flags["--note"], "plain words");
  EXPECT_EQ(flags["--negative"], -4);
  EXPECT_DOUBLE_EQ(value["nested"]["a"]["b"][0].get<double>(), 1.5);
  EXPECT_TRUE(std::isinf(value["nested"]["a"]["b"][1].get<double>()));
  EXPECT_TRUE(parse_yaml("", "empty.yaml").is_null());
}

TEST(Yaml, ErrorsNameTheFileLineAndColumn) {
  auto message = [](const std::string& text) {
    try {
      parse_yaml(text, "sweep.yaml");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::string unclosed = message("methods: [bitfit\ntasks: [RTE]\n");
  EXPECT_EQ(unclosed.rfind("sweep.yaml:", 0), 0u) << unclosed;
  EXPECT_EQ(message("tasks: [RTE]\nseeds: [1]\ntasks: [CoLA]\n")
                .rfind("sweep.yaml:3:1: key 'tasks' given twice", 0),
            0u)
      << message("tasks: [RTE]\nseeds: [1]\ntasks: [CoLA]\n");
  const std::string bad_indent = message("flags:\n  --lr: 1\n --epochs: 2\n");
  EXPECT_NE(bad_indent.find("sweep.yaml:3:"), std::string::npos) << bad_indent;
  EXPECT_NE(message("? [a, b]\n: 1\n").find("a mapping key must be a plain value"),
            std::string::npos);
}

}  // namespace
}  // namespace deltatune::io
