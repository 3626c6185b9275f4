#!/usr/bin/env bash
# Builds the example workloads and collects them in wasm-examples/dist/:
#   dist/<name>.wasm   wasm32-wasip1 core modules; the wasm32-wasip2 components hello-component and
#                      net-probe, and the wasi:http components http-* (exporting wasi:http/incoming-handler)
#   dist/SHA256SUMS    sha256sum format
# Every crate directory holds one binary of the same name, except the wasi:http components: a
# cdylib library each (cargo names its output <name with _ for ->.wasm). Honours CARGO_TARGET_DIR
# (default wasm-examples/target) and CARGO. Idempotent: when nothing changed cargo does no work
# and dist/ is left untouched.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target}"
cargo="${CARGO:-cargo}"

p1_target=wasm32-wasip1
p2_target=wasm32-wasip2
p2_bins=(hello-component net-probe)
# wasi:http components: cdylib crates using the `wasi` crate (the only dependency of the workspace).
p2_libs=(http-hello http-echo http-slow http-fetch http-version)
p2_crates=("${p2_bins[@]}" "${p2_libs[@]}")

# Every other crate of the workspace is a wasip1 core module.
p1_bins=()
for manifest in */Cargo.toml; do
    name="${manifest%/Cargo.toml}"
    [[ " ${p2_crates[*]} " == *" $name "* ]] || p1_bins+=("$name")
done

if command -v rustup >/dev/null 2>&1; then
    installed="$(rustup target list --installed)"
    if ! grep -qx "$p1_target" <<<"$installed" || ! grep -qx "$p2_target" <<<"$installed"; then
        rustup target add "$p1_target" "$p2_target"
    fi
fi

# The http-* components depend on the `wasi` crate, pinned by Cargo.lock. Download it once (the
# network is used only when the cargo cache lacks it); every build after that is offline.
if ! "$cargo" fetch --offline --locked --target "$p2_target" >/dev/null 2>&1; then
    "$cargo" fetch --locked --target "$p2_target"
fi

# --offline --locked: builds never touch the network and use exactly what Cargo.lock pins.
exclude=()
for name in "${p2_crates[@]}"; do exclude+=(--exclude "$name"); done
"$cargo" build --offline --locked --release --target "$p1_target" --workspace "${exclude[@]}"
packages=()
for name in "${p2_crates[@]}"; do packages+=(-p "$name"); done
"$cargo" build --offline --locked --release --target "$p2_target" "${packages[@]}"

# Copies $1 to $2 only when the content differs, so unchanged outputs keep their mtime.
update() {
    if ! cmp -s "$1" "$2"; then
        cp "$1" "$2.tmp"
        mv -f "$2.tmp" "$2"
    fi
}

mkdir -p dist
outputs=()
for name in "${p1_bins[@]}"; do
    update "$CARGO_TARGET_DIR/$p1_target/release/$name.wasm" "dist/$name.wasm"
    outputs+=("$name.wasm")
done
for name in "${p2_bins[@]}"; do
    update "$CARGO_TARGET_DIR/$p2_target/release/$name.wasm" "dist/$name.wasm"
    outputs+=("$name.wasm")
done
for name in "${p2_libs[@]}"; do
    update "$CARGO_TARGET_DIR/$p2_target/release/${name//-/_}.wasm" "dist/$name.wasm"
    outputs+=("$name.wasm")
done

# Drop outputs of crates that no longer exist.
for file in dist/*.wasm; do
    [[ " ${outputs[*]} " == *" ${file#dist/} "* ]] || rm -f -- "$file"
done

(cd dist && sha256sum -- "${outputs[@]}" | sort -k2) >dist/.SHA256SUMS.new
update dist/.SHA256SUMS.new dist/SHA256SUMS
rm -f dist/.SHA256SUMS.new

for file in "${outputs[@]}"; do
    printf '%9d  dist/%s\n' "$(wc -c <"dist/$file")" "$file"
done
