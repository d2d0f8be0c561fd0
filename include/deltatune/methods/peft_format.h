// Hugging Face PEFT's adapter directories, both ways, for LoRA, Prefix Tuning
// and Prompt Tuning deltas. LoRA:
// adapter_config.json (PEFT's LoraConfig fields, no others: PEFT rejects
// unknown keys) and adapter_model.safetensors with PEFT's key names,
//   base_model.model.<HF key of the Dense>.lora_A.weight   [r, in]
//   base_model.model.<HF key of the Dense>.lora_B.weight   [out, r]
//   base_model.model.classifier.*                         (modules_to_save)
// deltatune's own names differ only by the hook level: "<dense>.lora.lora_A.weight".
// Prefix and prompt tuning (PEFT's prompt learning, inference mode):
//   prompt_embeddings                 the prefix table P [m, 2 L H] or the prompt [m, H]
//   base_model.classifier.*           (modules_to_save)
// and adapter_config.json with PEFT's PrefixTuningConfig / PromptTuningConfig
// fields. PEFT numbers tokens after a prefix and puts prompts before [CLS]:
// only deltas trained that way (positions "shifted", placement "start") are
// written, and those read are set up that way.
// A directory written here also carries the whole delta.json metadata in the
// safetensors header ("deltatune"), which PEFT ignores and which restores the
// labels, task and base checksum when it is read back.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "deltatune/methods/delta.h"

namespace deltatune::methods {

// True when `dir` holds an adapter_config.json.
bool is_peft_adapter(const std::filesystem::path& dir);

// Methods PEFT has a format for.
bool has_peft_format(const std::string& method);
// Why `delta` cannot be written as a PEFT adapter PEFT computes identically,
// or nothing when it can.
std::optional<std::string> peft_incompatibility(const Delta& delta);

// Writes `delta` as a PEFT adapter directory, each file atomically. Throws
// deltatune::Error when peft_incompatibility() names a reason.
void save_peft_adapter(const Delta& delta, const std::filesystem::path& dir);

// Reads a PEFT LoRA, prefix or prompt adapter for sequence classification as
// a delta. For LoRA it throws
// deltatune::Error naming the file and field for anything PEFT would load
// differently (another peft_type or task_type, a regex target_modules, bias
// other than "none", fan_in_fan_out, rsLoRA, DoRA, unknown tensors).
Delta load_peft_adapter(const std::filesystem::path& dir);

// PEFT key <-> deltatune parameter name.
std::string peft_key_of(const std::string& parameter);
std::string parameter_of_peft_key(const std::string& key);  // "" when not a LoRA or head key

}  // namespace deltatune::methods
