// The TSV, CSV and JSONL readers (first byte: which), with default columns
// and with named ones, strict and skipping bad lines.
#include "deltatune/data/dataset.h"
#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace deltatune;
  if (size == 0) return 0;
  static const char* kNames[] = {"input.tsv", "input.csv", "input.jsonl"};
  const auto path = fuzz::write_input(kNames[data[0] % 3], fuzz::as_text(data + 1, size - 1));
  for (int variant = 0; variant < 4; ++variant) {
    data::ReadOptions options;
    options.skip_bad_lines = variant % 2 == 1;
    if (variant >= 2) {
      options.text_a = data::ColumnRef::parse("sentence1");
      options.text_b = data::ColumnRef::parse("sentence2");
      options.label = data::ColumnRef::parse("label");
      options.type = data::TaskType::kRegression;
    }
    fuzz::refuse_cleanly([&] { (void)data::read_dataset(path, options); });
  }
  return 0;
}
