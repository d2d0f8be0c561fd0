// SHA-256 (FIPS 180-4), incremental, through OpenSSL's libcrypto (already
// linked for HTTPS): its SHA-NI / AVX2 code hashes a base checkpoint ~7x
// faster than portable C++ (docs/BENCHMARKS.md, "Start-up").
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

namespace deltatune::io {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(const void* data, size_t size);
  void update(std::string_view text) { update(text.data(), text.size()); }
  std::string hex_digest();  // finalises; the object must not be updated afterwards

 private:
  struct Context;
  std::unique_ptr<Context> context_;
};

}  // namespace deltatune::io
