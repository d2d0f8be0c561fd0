// Reading PyTorch's zip-format checkpoints (torch.save of a state dict, as in
// Hugging Face's pytorch_model.bin) without Python.
//
// LibTorch 1.13's torch::pickle_load cannot read them: its unpickler turns
// collections.OrderedDict into None and then fails on SETITEMS. This reader
// interprets the small pickle subset torch.save emits for a dict of tensors
// (protocol 2-5 opcodes, OrderedDict, _rebuild_tensor_v2 / _rebuild_parameter,
// persistent storage ids) and maps each storage record from the zip archive.
#pragma once

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <map>
#include <string>

namespace deltatune::io {

// Throws deltatune::Error naming the file for anything outside that subset
// (the legacy non-zip format, arbitrary objects, unknown globals).
std::map<std::string, at::Tensor> load_torch_state_dict(const std::filesystem::path& path);

}  // namespace deltatune::io
