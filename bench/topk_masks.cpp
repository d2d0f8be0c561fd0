// Global top-k masks over BERT-base-sized scores (FISH, Child-Tuning_D and
// Diff Pruning select their masks this way): time and transient memory of
// deltatune's threshold selection against the full stable sort it replaced.
//
//   build/bench/topk_masks select 0.005     # or: sort 0.005, select 0.3, sort 0.3
//
// One implementation per process, so that peak RSS (a high-water mark) is its
// own. Prints one JSON line: impl, share, entries, seconds, peak transient MiB
// (peak RSS minus RSS once the scores exist).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>

#include "deltatune/methods/fisher.h"

namespace {

double rss_mib(bool peak) {
  if (peak) {
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    return usage.ru_maxrss / 1024.0;
  }
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  return 0;
}

// The former implementation: every score concatenated, one stable descending sort.
std::map<std::string, at::Tensor> sorted_masks(const std::map<std::string, at::Tensor>& scores,
                                               int64_t k) {
  std::vector<at::Tensor> flat;
  for (const auto& [name, s] : scores) flat.push_back(s.flatten());
  at::Tensor all = at::cat(flat);
  at::Tensor selected = at::zeros({all.numel()}, at::kBool);
  at::Tensor order = std::get<1>(all.sort(/*stable=*/true, 0, /*descending=*/true));
  selected.index_fill_(0, order.slice(0, 0, k), true);
  std::map<std::string, at::Tensor> masks;
  int64_t offset = 0;
  for (const auto& [name, s] : scores) {
    masks[name] = selected.slice(0, offset, offset + s.numel()).view(s.sizes()).clone();
    offset += s.numel();
  }
  return masks;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s select|sort SHARE\n", argv[0]);
    return 2;
  }
  const std::string impl = argv[1];
  const double share = std::atof(argv[2]);
  at::manual_seed(0);
  // BERT-base's tensors by size: word embeddings, 12 layers of 4 attention
  // matrices and 2 FFN matrices (biases are negligible).
  std::map<std::string, at::Tensor> scores;
  scores["embeddings"] = at::randn({30522, 768}).pow_(2);
  for (int layer = 0; layer < 12; ++layer) {
    const std::string p = "layer." + std::to_string(layer) + ".";
    for (const char* m : {"query", "key", "value", "output"})
      scores[p + m] = at::randn({768, 768}).pow_(2);
    scores[p + "intermediate"] = at::randn({3072, 768}).pow_(2);
    scores[p + "ffn_output"] = at::randn({768, 3072}).pow_(2);
  }
  int64_t total = 0;
  for (const auto& [name, s] : scores) total += s.numel();
  const int64_t k = static_cast<int64_t>(share * static_cast<double>(total));
  const double before = rss_mib(false);
  const auto start = std::chrono::steady_clock::now();
  auto masks =
      impl == "sort" ? sorted_masks(scores, k) : deltatune::methods::top_k_masks(scores, k);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const int64_t selected = deltatune::methods::count_selected(masks);
  std::printf(
      "{\"impl\": \"%s\", \"share\": %g, \"entries\": %lld, \"selected\": %lld, \"threads\": %d, "
      "\"seconds\": %.3f, \"peak_transient_mib\": %.0f}\n",
      impl.c_str(), share, static_cast<long long>(total), static_cast<long long>(selected),
      at::get_num_threads(), seconds, rss_mib(true) - before);
  return selected == k ? 0 : 1;
}
