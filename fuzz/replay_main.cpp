// A driver for the fuzz targets without libFuzzer (any compiler): runs the
// target on every file under the directories given, then on `--mutations N`
// seeded random mutations of each (byte flips, insertions, deletions,
// truncations, splices). CTest's fuzz smoke runs this over the seed corpus
// and the saved regressions; `make fuzz` runs the real, coverage-guided
// libFuzzer build of the same target.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

void run(const std::string& input) {
  LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(input.data()), input.size());
}

std::string mutate(std::string input, const std::vector<std::string>& corpus,
                   std::mt19937_64& rng) {
  const int edits = 1 + static_cast<int>(rng() % 4);
  for (int e = 0; e < edits; ++e) {
    const size_t at = input.empty() ? 0 : rng() % input.size();
    switch (rng() % 6) {
      case 0:
        if (!input.empty()) input[at] = static_cast<char>(input[at] ^ (1u << (rng() % 8)));
        break;
      case 1:
        if (!input.empty()) input[at] = static_cast<char>(rng());
        break;
      case 2:
        input.insert(at, 1 + rng() % 8, static_cast<char>(rng()));
        break;
      case 3:
        if (!input.empty()) input.erase(at, 1 + rng() % 16);
        break;
      case 4:
        input.resize(at);
        break;
      default: {  // splice in a slice of another input
        const std::string& other = corpus[rng() % corpus.size()];
        if (other.empty()) break;
        const size_t from = rng() % other.size();
        input.insert(at, other.substr(from, 1 + rng() % 64));
      }
    }
  }
  return input;
}

}  // namespace

int main(int argc, char** argv) {
  long mutations = 0;
  std::vector<std::string> corpus;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--mutations") == 0 && i + 1 < argc) {
      mutations = std::strtol(argv[++i], nullptr, 10);
      continue;
    }
    const std::filesystem::path root = argv[i];
    if (std::filesystem::is_regular_file(root)) {
      corpus.push_back(read_file(root));
    } else if (std::filesystem::is_directory(root)) {
      for (const auto& entry : std::filesystem::recursive_directory_iterator(root))
        if (entry.is_regular_file()) corpus.push_back(read_file(entry.path()));
    }
  }
  for (const auto& input : corpus) run(input);
  std::mt19937_64 rng(20261202);
  long executed = static_cast<long>(corpus.size());
  for (long m = 0; m < mutations && !corpus.empty(); ++m, ++executed)
    run(mutate(corpus[m % corpus.size()], corpus, rng));
  std::printf("%ld inputs (%zu files, %ld mutations): no crash\n", executed, corpus.size(),
              mutations);
  return 0;
}
