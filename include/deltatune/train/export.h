// Writing a task model as a plain Hugging Face model directory.
#pragma once

#include <filesystem>

#include "deltatune/methods/delta.h"
#include "deltatune/train/task_model.h"

namespace deltatune::train {

// Applies `delta` to `base` and writes <out>/model.safetensors (HF keys,
// merged weights), config.json (architectures, id2label / label2id,
// problem_type) and the base's tokenizer files: a directory
// AutoModelForSequenceClassification.from_pretrained loads as it is. Written
// to a sibling staging directory and renamed: `out` is complete or absent.
void export_hf_directory(const BaseModel& base, const methods::Delta& delta,
                         const std::filesystem::path& out);

}  // namespace deltatune::train
