#!/usr/bin/env bash
# Generates the Kotlin, Swift and Python bindings of coalition-mobile in library mode: builds
# the cdylib, then runs the workspace's pinned uniffi-bindgen on it.
#
#   mobile/generate.sh [kotlin|swift|python ...]     (default: all three)
#
# Output: target/bindings/{kotlin,swift,python}/ under the workspace's target directory
# (CARGO_TARGET_DIR if set). The library it generated from is target/debug/libcoalition_mobile.so.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
languages=("$@")
if [ ${#languages[@]} -eq 0 ]; then
    languages=(kotlin swift python)
fi

case "$(uname -s)" in
    Darwin) lib="$target/debug/libcoalition_mobile.dylib" ;;
    *) lib="$target/debug/libcoalition_mobile.so" ;;
esac

cargo build -p coalition-mobile -p uniffi-bindgen
for language in "${languages[@]}"; do
    out="$target/bindings/$language"
    rm -rf "$out"
    mkdir -p "$out"
    "$target/debug/uniffi-bindgen" generate --library "$lib" --language "$language" \
        --out-dir "$out" --no-format
    echo "generated $language bindings in $out"
done
