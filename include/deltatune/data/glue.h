// The GLUE TSVs as distributed (download_glue_data.py / dl.fbaipublicfiles
// layout): <glue_dir>/<TASK>/<split>.tsv.
//
// Parsing follows HF datasets' glue builder: split on '\t' only with no
// quoting (csv.QUOTE_NONE), columns by header name, CoLA by position (it has
// no header), a UTF-8 BOM before the first header ignored (MRPC), texts kept
// verbatim (SST-2's space before the tab stays). Label ids are the HF
// ClassLabel ids of the task (TaskSpec::label_names).
//
//   task   file columns (text_a, text_b -> label)                  file labels
//   CoLA   #3 -> #1 (4 columns, no header)                          0 / 1
//   SST-2  sentence -> label                                        0 / 1
//   MRPC   #1 String, #2 String -> Quality                          0 / 1
//   STS-B  sentence1, sentence2 -> score                            float
//   QQP    question1, question2 -> is_duplicate                     0 / 1
//   MNLI   sentence1, sentence2 -> gold_label (columns 8, 9, last)  entailment, neutral,
//   contradiction QNLI   question, sentence -> label                              entailment /
//   not_entailment RTE    sentence1, sentence2 -> label                            entailment /
//   not_entailment
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "deltatune/data/dataset.h"
#include "deltatune/data/task.h"

namespace deltatune::data {

struct GlueReadOptions {
  bool skip_bad_lines = false;
  std::size_t max_samples = 0;  // as ReadOptions::max_samples
  uint64_t seed = 0;
};

// `split`: "train", "dev" (MNLI: dev_matched), "dev_matched", "dev_mismatched"
// (MNLI only); "validation" and "validation_matched"/"validation_mismatched"
// are accepted as HF's names for the same files.
std::filesystem::path glue_file(const std::filesystem::path& glue_dir, const TaskSpec& task,
                                std::string_view split);

// The returned Dataset has the task's label_names, type and is_pair.
Dataset read_glue(const std::filesystem::path& glue_dir, const TaskSpec& task,
                  std::string_view split, const GlueReadOptions& options = {});
Dataset read_glue(const std::filesystem::path& glue_dir, std::string_view task_name,
                  std::string_view split, const GlueReadOptions& options = {});

// $GLUE_DIR; throws deltatune::Error saying to set it (or pass the directory)
// when it is unset or empty.
std::filesystem::path glue_dir_from_env();

}  // namespace deltatune::data
