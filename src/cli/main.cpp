// deltatune command line: thin verbs over the library.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <fmt/core.h>
#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "commands.h"
#include "deltatune/error.h"
#include "deltatune/io/cpus.h"
#include "deltatune/methods/method.h"
#include "deltatune/model/batch.h"
#include "deltatune/model/device.h"
#include "deltatune/model/hub.h"
#include "deltatune/model/parameter_groups.h"
#include "deltatune/model/pretrained.h"
#include "deltatune/text/tokenizer.h"
#include "deltatune/train/interrupt.h"
#include "deltatune/version.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace deltatune;

namespace deltatune::cli {

model::Precision forward_precision(const std::string& choice, const at::Device& device,
                                   const std::string& verb,
                                   std::optional<model::PrecisionProbe>* probe) {
  if (choice != "auto") return model::parse_precision(choice == "bf16", false);
  if (!device.is_cpu())
    throw Error("--precision auto probes the CPU; on " + device.str() + " choose fp32 or bf16");
  const model::PrecisionProbe& measured = model::probe_cpu_precision();
  fmt::print(stderr, "deltatune {}: products at {:.0f} GFLOP/s in fp32, {:.0f} in bf16: {}\n", verb,
             measured.fp32_gflops, measured.bf16_gflops, model::precision_name(measured.choice));
  if (probe != nullptr) *probe = measured;
  return measured.choice;
}

CLI::Option* add_precision_option(CLI::App* verb, std::string& choice) {
  return verb->add_option("--precision", choice, kPrecisionHelp)
      ->check(CLI::IsMember({"fp32", "bf16", "auto"}))
      ->capture_default_str();
}

std::string default_model_dir() {
  const char* home = std::getenv("DELTATUNE_HOME");
  fs::path root =
      home ? fs::path(home)
           : fs::path(std::getenv("HOME") ? std::getenv("HOME") : ".") / ".cache" / "deltatune";
  return (root / "models" / "all-MiniLM-L6-v2").string();
}

}  // namespace deltatune::cli

namespace {
using deltatune::cli::default_model_dir;

at::ScalarType parse_dtype(const std::string& name) {
  if (name == "fp32") return at::kFloat;
  if (name == "bf16") return at::kBFloat16;
  throw Error("--dtype must be fp32 or bf16, not '" + name + "'");
}

struct Common {
  std::string model_dir = default_model_dir();
  int threads = 0;
  bool json_output = false;
  std::string device = "auto";
};

void add_device_option(CLI::App* verb, std::string& device) {
  verb->add_option("--device", device, deltatune::cli::kDeviceHelp)->capture_default_str();
}

void add_common(CLI::App* verb, Common& common) {
  verb->add_option("--model,-m", common.model_dir, "Hugging Face model directory")
      ->capture_default_str();
  verb->add_option("--threads", common.threads,
                   "intra-op threads (0: OMP_NUM_THREADS, else every CPU the process may use: "
                   "affinity and cgroup quota)");
  verb->add_flag("--json", common.json_output, "print JSON instead of text");
}

std::vector<text::Encoding> encode_all(const text::Tokenizer& tokenizer,
                                       const std::vector<std::string>& texts,
                                       const std::vector<std::string>& pairs, size_t max_length) {
  if (!pairs.empty() && pairs.size() != texts.size())
    throw Error("--pair was given " + std::to_string(pairs.size()) + " times for " +
                std::to_string(texts.size()) + " texts");
  std::vector<text::Encoding> encodings;
  for (size_t i = 0; i < texts.size(); ++i) {
    std::optional<std::string_view> b;
    if (!pairs.empty()) b = pairs[i];
    encodings.push_back(tokenizer.encode(texts[i], b, max_length));
  }
  return encodings;
}

int run_tokenize(const Common& common, const std::vector<std::string>& texts,
                 const std::vector<std::string>& pairs, size_t max_length) {
  auto tokenizer = text::load_tokenizer(common.model_dir);
  auto encodings = encode_all(*tokenizer, texts, pairs, max_length);
  json out = json::array();
  for (size_t i = 0; i < encodings.size(); ++i) {
    const auto& e = encodings[i];
    std::vector<std::string> tokens;
    for (int64_t id : e.input_ids) tokens.push_back(tokenizer->id_to_token(id));
    if (common.json_output) {
      out.push_back({{"tokens", tokens},
                     {"input_ids", e.input_ids},
                     {"token_type_ids", e.token_type_ids},
                     {"attention_mask", e.attention_mask}});
    } else {
      std::string line;
      for (size_t t = 0; t < tokens.size(); ++t)
        line += fmt::format("{}{}({})", t ? " " : "", tokens[t], e.input_ids[t]);
      fmt::print("{}\n", line);
    }
  }
  if (common.json_output) fmt::print("{}\n", out.dump());
  return 0;
}

int run_embed(const Common& common, const std::vector<std::string>& texts, size_t max_length,
              const std::string& dtype_name) {
  const at::ScalarType dtype = parse_dtype(dtype_name);
  const at::Device device = model::parse_device(common.device);
  auto tokenizer = text::load_tokenizer(common.model_dir);
  auto loaded = model::load_encoder(common.model_dir);
  loaded.model->eval();
  loaded.model->to(device, dtype);
  auto batch = model::to_device(
      model::make_batch(encode_all(*tokenizer, texts, {}, max_length), tokenizer->pad_token_id()),
      device);
  at::NoGradGuard no_grad;
  auto out = loaded.model->forward(batch);
  at::Tensor embeddings =
      model::mean_pool(out.last_hidden_state, batch.attention_mask, true).to(at::kCPU, at::kFloat);
  at::Tensor similarity = at::matmul(embeddings, embeddings.t());
  if (common.json_output) {
    json j;
    j["model"] = common.model_dir;
    j["dimension"] = embeddings.size(1);
    j["texts"] = texts;
    json rows = json::array(), sims = json::array();
    for (int64_t i = 0; i < embeddings.size(0); ++i) {
      at::Tensor row = embeddings[i].contiguous();
      rows.push_back(
          std::vector<float>(row.data_ptr<float>(), row.data_ptr<float>() + row.numel()));
      at::Tensor s = similarity[i].contiguous();
      sims.push_back(std::vector<float>(s.data_ptr<float>(), s.data_ptr<float>() + s.numel()));
    }
    j["embeddings"] = rows;
    j["cosine_similarity"] = sims;
    fmt::print("{}\n", j.dump());
    return 0;
  }
  fmt::print("{} sentence embeddings of dimension {} (mean pooling, L2-normalised, {})\n",
             embeddings.size(0), embeddings.size(1), dtype_name);
  for (size_t i = 0; i < texts.size(); ++i) fmt::print("  [{}] {}\n", i, texts[i]);
  fmt::print("cosine similarity:\n      ");
  for (size_t j = 0; j < texts.size(); ++j) fmt::print("{:>7}", fmt::format("[{}]", j));
  fmt::print("\n");
  for (int64_t i = 0; i < similarity.size(0); ++i) {
    fmt::print("  {:>4}", fmt::format("[{}]", i));
    for (int64_t j = 0; j < similarity.size(1); ++j)
      fmt::print("{:>7.3f}", similarity[i][j].item<float>());
    fmt::print("\n");
  }
  return 0;
}

int run_classify(const Common& common, const std::vector<std::string>& texts,
                 const std::vector<std::string>& pairs, size_t max_length) {
  const at::Device device = model::parse_device(common.device);  // refused before any work
  auto tokenizer = text::load_tokenizer(common.model_dir);
  auto loaded = model::load_classifier(common.model_dir);
  if (!loaded.report.initialized.empty())
    throw Error(common.model_dir + " has no trained classification head (" +
                loaded.report.initialized.front() +
                " is missing): fine-tune it first or pass a fine-tuned model directory");
  loaded.model->eval();
  loaded.model->to(device);
  auto batch = model::to_device(model::make_batch(encode_all(*tokenizer, texts, pairs, max_length),
                                                  tokenizer->pad_token_id()),
                                device);
  at::NoGradGuard no_grad;
  at::Tensor logits = loaded.model->forward(batch).to(at::kCPU);
  const bool regression = loaded.model->num_labels() == 1;
  at::Tensor probabilities = regression ? logits : at::softmax(logits, -1);
  json out = json::array();
  for (int64_t i = 0; i < logits.size(0); ++i) {
    json row;
    row["text"] = texts[i];
    if (!pairs.empty()) row["pair"] = pairs[i];
    if (regression) {
      row["score"] = logits[i][0].item<float>();
    } else {
      const int64_t best = probabilities[i].argmax().item<int64_t>();
      row["label"] = best < static_cast<int64_t>(loaded.config.id2label.size())
                         ? loaded.config.id2label[best]
                         : std::to_string(best);
      row["probability"] = probabilities[i][best].item<float>();
    }
    out.push_back(row);
    if (!common.json_output) {
      if (regression) {
        fmt::print("{:.4f}\t{}\n", row["score"].get<float>(), texts[i]);
      } else {
        fmt::print("{}\t{:.4f}\t{}\n", row["label"].get<std::string>(),
                   row["probability"].get<float>(), texts[i]);
      }
    }
  }
  if (common.json_output) fmt::print("{}\n", out.dump());
  return 0;
}

// Trainable and stored parameters of each method on this model.
int run_method_info(const Common& common, int64_t num_labels, const std::string& method_name,
                    const std::string& bias_terms) {
  std::vector<std::string> names;
  if (method_name == "all") {
    names = methods::method_names();
    names.push_back("bitfit:query,intermediate");
  } else {
    names.push_back(bias_terms.empty() ? method_name : method_name + ":" + bias_terms);
  }
  json rows = json::array();
  for (const auto& spec : names) {
    const std::string name = spec.substr(0, spec.find(':'));
    json options = json::object();
    if (spec.find(':') != std::string::npos) {
      std::vector<std::string> terms;
      std::stringstream list(spec.substr(spec.find(':') + 1));
      for (std::string term; std::getline(list, term, ',');) terms.push_back(term);
      options["bias_terms"] = terms;
    }
    auto method = methods::make_method(name, options);
    auto loaded = model::load_classifier(common.model_dir, num_labels);
    methods::Footprint f = methods::footprint(*method, *loaded.model);
    rows.push_back({{"method", spec},
                    {"total", f.total},
                    {"encoder", f.encoder},
                    {"trainable", f.trainable},
                    {"stored_values", f.stored_values},
                    {"stored_bytes", f.stored_bytes},
                    {"trainable_percent_of_encoder", 100.0 * f.trainable / f.encoder},
                    {"stored_percent_of_encoder", 100.0 * f.stored_values / f.encoder},
                    {"description", f.description}});
  }
  if (common.json_output) {
    fmt::print("{}\n", rows.dump(2));
    return 0;
  }
  fmt::print("{:<28} {:>12} {:>9} {:>12} {:>9} {:>11}\n", "method", "trainable", "% enc", "stored",
             "% enc", "delta");
  for (const auto& r : rows)
    fmt::print("{:<28} {:>12} {:>8.3f}% {:>12} {:>8.3f}% {:>8.1f} KB\n",
               r["method"].get<std::string>(), r["trainable"].get<int64_t>(),
               r["trainable_percent_of_encoder"].get<double>(), r["stored_values"].get<int64_t>(),
               r["stored_percent_of_encoder"].get<double>(),
               r["stored_bytes"].get<int64_t>() / 1024.0);
  fmt::print("(encoder: {} parameters; the classifier is counted in trainable and stored)\n",
             rows[0]["encoder"].get<int64_t>());
  return 0;
}

int run_info(const Common& common, int64_t num_labels) {
  auto loaded = model::load_classifier(common.model_dir, num_labels);
  const auto& c = loaded.config;
  int64_t total = 0, encoder_total = 0;
  auto groups = model::count_by_group(*loaded.model);
  for (const auto& g : groups) {
    total += g.count;
    if (g.group != model::ParameterGroup::kHead && g.group != model::ParameterGroup::kPooler)
      encoder_total += g.count;
  }
  if (common.json_output) {
    json j;
    j["model"] = common.model_dir;
    j["model_type"] = c.model_type;
    j["layers"] = c.num_hidden_layers;
    j["hidden_size"] = c.hidden_size;
    j["heads"] = c.num_attention_heads;
    j["intermediate_size"] = c.intermediate_size;
    j["vocab_size"] = c.vocab_size;
    j["parameters"] = total;
    j["encoder_parameters"] = encoder_total;
    j["threads"] = at::get_num_threads();
    json g = json::object();
    for (const auto& item : groups) g[model::group_name(item.group)] = item.count;
    j["groups"] = g;
    fmt::print("{}\n", j.dump(2));
    return 0;
  }
  fmt::print("{} ({}): {} layers, hidden {}, {} heads, FFN {}, vocab {}\n", common.model_dir,
             c.model_type, c.num_hidden_layers, c.hidden_size, c.num_attention_heads,
             c.intermediate_size, c.vocab_size);
  fmt::print("{:<20} {:>12} {:>9}\n", "group", "parameters", "% total");
  for (const auto& g : groups)
    fmt::print("{:<20} {:>12} {:>8.3f}%\n", model::group_name(g.group), g.count,
               100.0 * g.count / total);
  fmt::print("{:<20} {:>12} {:>8.3f}%\n", "total", total, 100.0);
  return 0;
}

int run_download(const std::string& repo_id, std::string out, const std::string& revision,
                 bool json_output) {
  if (out.empty()) {
    const std::string name = repo_id.substr(repo_id.find('/') + 1);
    out = (fs::path(default_model_dir()).parent_path() / name).string();
  }
  model::HubOptions options;
  options.revision = revision;
  auto got = model::download_from_hub(repo_id, out, options);
  // Refuse to report success for something deltatune cannot load.
  auto config = model::EncoderConfig::from_file(fs::path(out) / "config.json");
  text::load_tokenizer(out);
  if (json_output) {
    fmt::print("{}\n", json{{"repo", repo_id},
                            {"directory", out},
                            {"files", got.files},
                            {"already_present", got.already_present},
                            {"model_type", config.model_type}}
                           .dump());
  } else if (got.already_present) {
    fmt::print("{} already in {}\n", repo_id, out);
  } else {
    fmt::print("{} ({}) -> {} ({} files)\n", repo_id, config.model_type, out, got.files.size());
  }
  return 0;
}

}  // namespace

namespace {

// Ends the process once a command has returned, skipping the exit-time
// destructors of the ~290 shared libraries Debian's LibTorch loads (its
// operator registries: ~0.03 s, 7% of a short `predict`). Safe because every
// file a command writes is complete and closed when it returns (atomic
// renames, scoped streams); only stdio's buffers are left, flushed here.
// Sanitizer builds exit normally so that leak checks still run.
[[noreturn]] void exit_without_library_destructors(int status) {
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  std::exit(status);
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
    __has_feature(undefined_behavior_sanitizer)
  std::exit(status);
#endif
#endif
  std::_Exit(status);
}

}  // namespace

int main(int argc, char** argv) {
  deltatune::cli::use_native_blas_kernels(argv);
  CLI::App app{"deltatune: parameter-efficient fine-tuning of BERT-family encoders"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("deltatune ") + kVersion);

  Common common;
  std::vector<std::string> texts, pairs;
  size_t max_length = 128;
  std::string dtype = "fp32";
  int64_t num_labels = 2;

  auto* tokenize = app.add_subcommand("tokenize", "show the tokens and ids of texts");
  add_common(tokenize, common);
  tokenize->add_option("texts", texts, "texts to tokenize")->required();
  tokenize->add_option("--pair", pairs, "second text of a pair (once per text)");
  tokenize->add_option("--max-length", max_length, "truncate to this many tokens")
      ->capture_default_str();

  auto* embed = app.add_subcommand("embed", "sentence embeddings and their cosine similarities");
  add_common(embed, common);
  embed->add_option("texts", texts, "sentences to embed")->required();
  embed->add_option("--max-length", max_length, "truncate to this many tokens")
      ->capture_default_str();
  embed->add_option("--dtype", dtype, "fp32 or bf16")->capture_default_str();
  add_device_option(embed, common.device);

  auto* classify =
      app.add_subcommand("classify", "predict labels with a fine-tuned model directory");
  add_common(classify, common);
  classify->add_option("texts", texts, "texts to classify")->required();
  classify->add_option("--pair", pairs, "second text of a pair (once per text)");
  add_device_option(classify, common.device);
  classify->add_option("--max-length", max_length, "truncate to this many tokens")
      ->capture_default_str();

  auto* info = app.add_subcommand("info", "architecture and parameter counts by group");
  add_common(info, common);
  info->add_option("--num-labels", num_labels, "size of the task head counted")
      ->capture_default_str();
  std::string info_method, info_bias_terms;
  info->add_option("--method", info_method, "show what a method trains and stores (or 'all')");
  info->add_option("--bias-terms", info_bias_terms, "bitfit: comma-separated bias groups");

  std::string repo_id, out_dir, revision = "main";
  auto* download = app.add_subcommand(
      "download", "fetch a model from the Hugging Face Hub (HF_ENDPOINT, HF_TOKEN honoured)");
  download
      ->add_option("repo", repo_id, "repository id, e.g. sentence-transformers/all-MiniLM-L6-v2")
      ->required();
  download->add_option("--out,-o", out_dir, "destination (default: $DELTATUNE_HOME/models/<name>)");
  download->add_option("--revision", revision, "branch, tag or commit")->capture_default_str();
  download->add_flag("--json", common.json_output, "print JSON instead of text");

  cli::Action action;
  cli::register_training_verbs(app, action, common.threads);
  cli::register_serve_verb(app, action, common.threads);
  cli::register_launch_verb(app, action);
  cli::register_sweep_verb(app, action);
  cli::register_report_verb(app, action);

  CLI11_PARSE(app, argc, argv);
  // A write past RLIMIT_FSIZE fails with EFBIG and a clear error instead of
  // killing the process mid-file.
  std::signal(SIGXFSZ, SIG_IGN);
  try {
    // Debian's LibTorch starts with one intra-op thread; use every CPU this
    // process may run on (affinity and cgroup quota) unless told otherwise.
    if (common.threads > 0) {
      at::set_num_threads(common.threads);
    } else if (std::getenv("OMP_NUM_THREADS") == nullptr) {
      at::set_num_threads(static_cast<int>(io::available_cpus()));
    }
    int status = 0;
    if (*tokenize) {
      status = run_tokenize(common, texts, pairs, max_length);
    } else if (*embed) {
      status = run_embed(common, texts, max_length, dtype);
    } else if (*classify) {
      status = run_classify(common, texts, pairs, max_length);
    } else if (*info && !info_method.empty()) {
      status = run_method_info(common, num_labels, info_method, info_bias_terms);
    } else if (*info) {
      status = run_info(common, num_labels);
    } else if (*download) {
      status = run_download(repo_id, out_dir, revision, common.json_output);
    } else if (action) {
      status = action();
    }
    exit_without_library_destructors(status);
  } catch (const train::Interrupted& e) {
    std::cerr << "deltatune: " << e.what() << "\n";
    return e.exit_status();
  } catch (const Error& e) {
    std::cerr << "deltatune: error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::string message = e.what();
    std::cerr << "deltatune: error: " << message.substr(0, message.find('\n')) << "\n";
    return 1;
  }
  return 0;
}
