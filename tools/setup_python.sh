#!/usr/bin/env bash
# Idempotent set-up of a Python reference environment. Two flavours:
#
#   tools/setup_python.sh          # HF Transformers on Debian's python3-torch
#                                  # 1.13.1 (the fixtures' and benchmarks' venv)
#   tools/setup_python.sh latest   # the newest torch (pip wheel, with its CUDA
#                                  # libraries, ~3 GB) + transformers, tokenizers,
#                                  # safetensors, peft, accelerate, pinned in
#                                  # tools/requirements-latest.txt; its torch is
#                                  # also the LibTorch `make test-torch-latest`
#                                  # builds against
#   tools/setup_python.sh latest --update
#                                  # re-resolve the newest versions from PyPI and
#                                  # rewrite tools/requirements-latest.txt
#
# Either way: create/update the venv, print its python on stdout (logs go to
# stderr). Only the fixture generator, the HF benchmark and the build against
# the newest LibTorch need these; building and testing the C++ never does.
#
# Environment:
#   DELTATUNE_HOME  cache root (default ~/.cache/deltatune); the venvs are
#                   $DELTATUNE_HOME/venv-torch113 and $DELTATUNE_HOME/venv-latest
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DELTATUNE_HOME=${DELTATUNE_HOME:-$HOME/.cache/deltatune}
flavour=${1:-torch113}
update=0
case "${2:-}" in
  "") ;;
  --update) update=1 ;;
  *) printf '[setup_python] error: unknown option %s (only --update)\n' "$2" >&2; exit 1 ;;
esac

log() { printf '[setup_python] %s\n' "$*" >&2; }
die() { printf '[setup_python] error: %s\n' "$*" >&2; exit 1; }

[ -x /usr/bin/python3 ] || die "/usr/bin/python3 not found (apt-get install python3 python3-venv)"

# The newest torch from PyPI (CUDA wheel on Linux x86_64) with the HF stack on
# top, in a venv that does NOT see Debian's torch.
setup_latest() {
  local venv="$DELTATUNE_HOME/venv-latest"
  local reqs="$here/requirements-latest.txt"
  local stamp="$venv/.deltatune-requirements.sha256"
  local py="$venv/bin/python"
  local top=(torch transformers tokenizers safetensors peft accelerate)
  local pip=(env PIP_DISABLE_PIP_VERSION_CHECK=1 "$py" -m pip)

  /usr/bin/python3 -c 'import ensurepip' 2>/dev/null \
    || die "python3-venv is missing (apt-get install python3-venv)"

  check_imports_latest() {
    HF_HUB_OFFLINE=1 "$py" - <<'PY' >/dev/null 2>&1
import torch, transformers, tokenizers, safetensors, peft, accelerate  # noqa: F401
from transformers import BertModel, RobertaTokenizerFast  # noqa: F401
import torch.utils
assert torch.utils.cmake_prefix_path
PY
  }

  if [ "$update" = 0 ] && [ ! -f "$reqs" ]; then
    log "$reqs is missing: resolving the newest versions (as with --update)"
    update=1
  fi
  local want=""
  [ "$update" = 1 ] || want=$(sha256sum "$reqs" | cut -d' ' -f1)

  if [ "$update" = 0 ] && [ -x "$py" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && check_imports_latest; then
    log "venv up to date: $venv"
  else
    if [ ! -x "$py" ]; then
      log "creating venv $venv (isolated from Debian's site-packages)"
      mkdir -p "$DELTATUNE_HOME"
      /usr/bin/python3 -m venv "$venv"
    fi
    if [ "$update" = 1 ]; then
      log "installing the newest ${top[*]} from PyPI (torch pulls ~3 GB of CUDA libraries)"
      "${pip[@]}" install -q -U "${top[@]}"
      {
        printf '%s\n' \
          "# The newest torch + HF stack, as resolved by \`tools/setup_python.sh latest --update\`" \
          "# on $(date -u +%Y-%m-%d) (Debian 12, CPython $("$py" -c 'import platform; print(platform.python_version())'), x86_64): the whole closure," \
          "# from \`pip freeze\`, so the venv is reproducible. Installed by" \
          "# \`tools/setup_python.sh latest\` into \$DELTATUNE_HOME/venv-latest (not seeing Debian's" \
          "# torch); \`make test-torch-latest\` builds deltatune against this torch's LibTorch."
        "${pip[@]}" freeze --all --exclude-editable | grep -v -E '^(pip|setuptools|wheel)=='
      } > "$reqs.tmp"
      mv "$reqs.tmp" "$reqs"
      log "pinned $(grep -c '==' "$reqs") packages in $reqs"
      want=$(sha256sum "$reqs" | cut -d' ' -f1)
    else
      log "installing pinned packages from $reqs"
      "${pip[@]}" install -q -r "$reqs"
    fi
    check_imports_latest || die "packages installed but imports fail; run: $py -c 'import torch, transformers, peft'"
    printf '%s\n' "$want" > "$stamp"
    HF_HUB_OFFLINE=1 "$py" -c 'import torch, transformers, tokenizers, safetensors, peft, accelerate; print("[setup_python] torch", torch.__version__, "transformers", transformers.__version__, "tokenizers", tokenizers.__version__, "safetensors", safetensors.__version__, "peft", peft.__version__, "accelerate", accelerate.__version__)' >&2
  fi
  echo "$py"
}

case "$flavour" in
  torch113) ;;
  latest) setup_latest; exit 0 ;;
  *) die "unknown flavour '$flavour' (none for Debian's torch 1.13, or: latest)" ;;
esac

venv="$DELTATUNE_HOME/venv-torch113"
reqs="$here/requirements-hf.txt"
stamp="$venv/.deltatune-requirements.sha256"

# Debian's python3-torch (the same LibTorch 1.13 as the C++ build) and venv
# support, installed on first use like scripts/setup.sh does.
missing=()
/usr/bin/python3 -c 'import torch' 2>/dev/null || missing+=(python3-torch)
/usr/bin/python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]} (apt-get)"
  sudo_cmd=(); [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get install -y -q "${missing[@]}" >&2 \
    || die "could not install ${missing[*]} (apt-get install ${missing[*]})"
fi
/usr/bin/python3 -c 'import torch' 2>/dev/null \
  || die "Debian's torch is not importable by /usr/bin/python3 (apt-get install python3-torch)"

want=$(sha256sum "$reqs" | cut -d' ' -f1)
py="$venv/bin/python"

check_imports() {
  HF_HUB_OFFLINE=1 "$py" - <<'PY' >/dev/null 2>&1
import torch, transformers, tokenizers, safetensors, peft  # noqa: F401
from transformers import BertModel, RobertaTokenizerFast  # noqa: F401
PY
}

if [ -x "$py" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && check_imports; then
  log "venv up to date: $venv"
else
  if [ ! -x "$py" ]; then
    log "creating venv $venv (--system-site-packages, for Debian's torch)"
    mkdir -p "$DELTATUNE_HOME"
    /usr/bin/python3 -m venv --system-site-packages "$venv"
  fi
  log "installing pinned packages from $reqs"
  # --no-deps: the file pins the whole closure; without it pip would try to
  # replace Debian's torch (1.13.0a0 does not satisfy peft's torch>=1.13.0).
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$py" -m pip install -q --no-deps -r "$reqs"
  check_imports || die "packages installed but imports fail; run: $py -c 'import transformers, peft'"
  printf '%s\n' "$want" > "$stamp"
  HF_HUB_OFFLINE=1 "$py" -c 'import torch, transformers, tokenizers, peft; print("[setup_python] torch", torch.__version__, "transformers", transformers.__version__, "tokenizers", tokenizers.__version__, "peft", peft.__version__)' >&2
fi

echo "$py"
