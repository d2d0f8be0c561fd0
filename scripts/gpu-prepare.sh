#!/usr/bin/env bash
# Prepares, on this CPU machine, what scripts/gpu-check.sh needs on the GPU
# machine (which has CMake, nvcc and a Python with CUDA torch, transformers
# and peft, but no network and no apt): .gpu-carry/ (git-ignored), to be
# carried with the working tree (the device tool's `carry`, 64 MiB in all).
#
#   scripts/gpu-prepare.sh        # then: run carry=[".gpu-carry"]
#                                 #   command: scripts/gpu-check.sh "$OUT"
#
# .gpu-carry/ holds:
#   deps/    Debian's C++ dependencies as extracted .deb files (headers, the
#            few shared libraries, CMake configs): nlohmann-json, utf8proc,
#            CLI11, fmt, cpp-httplib (+ OpenSSL 3, brotli), GoogleTest.
#            This assumes the GPU machine is of the same Debian 12 family.
#   model/   all-MiniLM-L6-v2 with its weights in fp16, xz-compressed by byte
#            plane (the fp32 file is 87 MiB, over the limit); gpu-check.sh
#            widens them back to fp32 there. Both sides of every GPU
#            comparison read the same widened weights.
#   glue/    SST-2, RTE and STS-B (train, dev) for the tests.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
carry="$here/.gpu-carry"
DELTATUNE_HOME=${DELTATUNE_HOME:-$HOME/.cache/deltatune}
model="$DELTATUNE_HOME/models/all-MiniLM-L6-v2"
glue=${GLUE_DIR:-$here/../shared/data/glue}
log() { printf '[gpu-prepare] %s\n' "$*" >&2; }

packages=(nlohmann-json3-dev libutf8proc-dev libutf8proc2 libcli11-dev
  libcpp-httplib-dev libcpp-httplib0.11 libssl3 libssl-dev libbrotli1 libgtest-dev libyaml-dev libyaml-0-2)
# fmt in a prefix of its own: the LibTorch wheel ships its own (newer) fmt
# headers, which must not be shadowed by Debian's 9 on the shared include
# path; CMake still needs fmt's package config (used header-only there).
fmt_packages=(libfmt-dev libfmt9)
rm -rf "$carry.tmp" && mkdir -p "$carry.tmp/debs" "$carry.tmp/deps" "$carry.tmp/fmt-debs" "$carry.tmp/fmt"
(cd "$carry.tmp/debs" && apt-get -o APT::Sandbox::User=root download "${packages[@]}" >/dev/null)
(cd "$carry.tmp/fmt-debs" && apt-get -o APT::Sandbox::User=root download "${fmt_packages[@]}" >/dev/null)
for deb in "$carry.tmp"/debs/*.deb; do dpkg-deb -x "$deb" "$carry.tmp/deps"; done
for deb in "$carry.tmp"/fmt-debs/*.deb; do dpkg-deb -x "$deb" "$carry.tmp/fmt"; done
for dir in deps fmt; do
  rm -rf "$carry.tmp/$dir/usr/share/doc" "$carry.tmp/$dir/usr/share/man" "$carry.tmp/$dir/usr/src"
done
rm -rf "$carry.tmp/debs" "$carry.tmp/fmt-debs"
# Shared libraries suffice for everything but GoogleTest: the static archives
# (10 MiB of them OpenSSL's) would push the carry past its limit.
find "$carry.tmp/deps" -name '*.a' ! -name 'libgtest*' ! -name 'libgmock*' -delete
# Absolute symlinks in the packages would point at this machine's /usr: made relative.
find "$carry.tmp/deps" "$carry.tmp/fmt" -type l | while read -r link; do
  target=$(readlink "$link")
  root=${link#"$carry.tmp/"}
  root="$carry.tmp/${root%%/*}"
  case "$target" in
    /*) ln -sfn "$(realpath -m --relative-to="$(dirname "$link")" "$root$target")" "$link" ;;
  esac
done

mkdir -p "$carry.tmp/model"
for f in config.json tokenizer.json tokenizer_config.json vocab.txt special_tokens_map.json; do
  [ -f "$model/$f" ] && cp "$model/$f" "$carry.tmp/model/"
done
python3 - "$model/model.safetensors" "$carry.tmp/model/model.fp16.planes.xz" <<'PY'
# fp32 -> fp16 safetensors, stored as xz of its header followed by the low
# bytes of every fp16 value, then the high bytes (sign, exponent and top
# mantissa bits compress far better apart): 45 MB -> 39 MB. gpu-check.sh
# interleaves them back and widens to fp32.
import json, lzma, struct, sys
src, dst = sys.argv[1], sys.argv[2]
with open(src, "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
    base = 8 + n
    out_header, blobs, offset = {}, [], 0
    for name, info in header.items():
        if name == "__metadata__":
            out_header[name] = info
            continue
        begin, end = info["data_offsets"]
        f.seek(base + begin)
        raw = f.read(end - begin)
        if info["dtype"] == "F32":
            count = len(raw) // 4
            blob = struct.pack("<%de" % count, *struct.unpack("<%df" % count, raw))
            dtype = "F16"
        else:
            blob, dtype = raw, info["dtype"]
        if len(blob) % 2:
            sys.exit(f"gpu-prepare: {name} has an odd byte count; it cannot be split in planes")
        out_header[name] = {"dtype": dtype, "shape": info["shape"], "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
encoded = json.dumps(out_header).encode()
encoded += b" " * ((8 - len(encoded) % 8) % 8)
body = b"".join(blobs)
with open(dst, "wb") as f:
    f.write(lzma.compress(struct.pack("<Q", len(encoded)) + encoded + body[0::2] + body[1::2], preset=6))
PY

for task in SST-2 RTE STS-B; do  # the device tests' and the served deltas' tasks
  mkdir -p "$carry.tmp/glue/$task"
  cp "$glue/$task/train.tsv" "$glue/$task/dev.tsv" "$carry.tmp/glue/$task/"
done
# The tests there take at most a few dozen training sentences (a seeded
# sample of the file's records, the same file for the CPU and the GPU side):
# SST-2's first 10,000 lines instead of 67k (3.7 -> 0.6 MB).
head -n 10000 "$glue/SST-2/train.tsv" > "$carry.tmp/glue/SST-2/train.tsv"
# The device tool sends the working tree (tracked and untracked files that
# git does not ignore) and the carried paths, 64 MiB in all.
size_kib=$(du -sk "$carry.tmp" | cut -f1)
tree_kib=$(cd "$here" && { git ls-files -z; git ls-files -z --others --exclude-standard; } |
  grep -zv '^\.gpu-carry\.tmp/' | du -ck --files0-from=- 2>/dev/null | tail -1 | cut -f1)
if [ $((size_kib + tree_kib)) -gt $((64 * 1024)) ]; then
  du -sh "$carry.tmp"/* >&2
  log "error: $((size_kib / 1024)) MiB carried + $((tree_kib / 1024)) MiB of working tree, over the device tool's 64 MiB"
  exit 1
fi
rm -rf "$carry" && mv "$carry.tmp" "$carry"
log "$((size_kib / 1024)) MiB in $carry + $((tree_kib / 1024)) MiB of working tree (limit 64 MiB in all)"
du -sh "$carry"/* >&2
