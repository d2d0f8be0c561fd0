#!/usr/bin/env bash
# Idempotent set-up of the Python reference environment (HF Transformers on
# Debian's python3-torch 1.13.1). Only the fixture generator and the HF
# benchmark need it; building and testing the C++ never does.
#
#   tools/setup_python.sh          # create/update the venv, print its python
#
# Environment:
#   DELTATUNE_HOME  cache root (default ~/.cache/deltatune); the venv is
#                   $DELTATUNE_HOME/venv-torch113
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DELTATUNE_HOME=${DELTATUNE_HOME:-$HOME/.cache/deltatune}
venv="$DELTATUNE_HOME/venv-torch113"
reqs="$here/requirements-hf.txt"
stamp="$venv/.deltatune-requirements.sha256"

log() { printf '[setup_python] %s\n' "$*" >&2; }
die() { printf '[setup_python] error: %s\n' "$*" >&2; exit 1; }

[ -x /usr/bin/python3 ] || die "/usr/bin/python3 not found (apt-get install python3 python3-venv)"
/usr/bin/python3 -c 'import torch' 2>/dev/null \
  || die "Debian's torch is not importable by /usr/bin/python3 (apt-get install python3-torch)"
/usr/bin/python3 -c 'import ensurepip' 2>/dev/null \
  || die "python3-venv is missing (apt-get install python3-venv)"

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
