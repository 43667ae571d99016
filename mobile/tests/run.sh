#!/usr/bin/env bash
# The binding tests of coalition-mobile, as CI runs them. Exits non-zero on the first failure.
#
#  1. builds the relay (coalition-server) and the library, generates the Kotlin, Swift and
#     Python bindings (mobile/generate.sh);
#  2. Python: mobile/tests/test_bindings.py through the generated Python bindings;
#  3. Kotlin on the JVM: compiles mobile/tests/kotlin/BindingsTest.kt with the generated
#     Kotlin bindings and runs its main() (the exit code is the result);
#  4. API surface: mobile/tests/check_api_surface.py compares the public API of the
#     generated Swift and Kotlin files with what the Rust crate exports.
#
# Needs: python3 (3.11), a JDK (17), Debian's libjna-java (/usr/share/java/jna.jar), and the
# npm package kotlin-compiler (which also ships kotlinx-coroutines-core-jvm, needed by the
# generated Kotlin for async calls). KOTLIN_HOME points at that package; default
# target/tools/node_modules/kotlin-compiler (install it with
# `npm install --prefix target/tools kotlin-compiler@2.4.20`). JNA_JAR overrides the JNA jar.
# Set SKIP_KOTLIN=1 to leave the JVM test out (e.g. on a machine without a JDK).
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
target="${CARGO_TARGET_DIR:-$root/target}"
case "$target" in /*) ;; *) target="$root/$target" ;; esac

echo "== build the relay, the library and the bindings"
cargo build -p coalition-server
mobile/generate.sh kotlin swift python
lib="$target/debug/libcoalition_mobile.so"

echo "== python bindings"
cp "$lib" "$target/bindings/python/"
COALITION_BINDINGS="$target/bindings/python" \
    COALITION_SERVER="$target/debug/coalition-server" \
    timeout 600 python3 mobile/tests/test_bindings.py

if [ "${SKIP_KOTLIN:-0}" != 1 ]; then
    echo "== kotlin bindings on the JVM"
    kotlin_home="${KOTLIN_HOME:-$target/tools/node_modules/kotlin-compiler}"
    jna="${JNA_JAR:-/usr/share/java/jna.jar}"
    coroutines="$kotlin_home/lib/kotlinx-coroutines-core-jvm.jar"
    for f in "$kotlin_home/bin/kotlinc" "$jna" "$coroutines"; do
        if [ ! -e "$f" ]; then
            echo "missing $f (see the header of $0)" >&2
            exit 1
        fi
    done
    out="$target/bindings/kotlin-test"
    rm -rf "$out"
    mkdir -p "$out"
    # kotlinc is a shell script that needs `java` on PATH and its own lib/ next to it.
    chmod +x "$kotlin_home"/bin/* 2>/dev/null || true
    timeout 900 "$kotlin_home/bin/kotlinc" -nowarn \
        -cp "$jna:$coroutines" \
        -d "$out/test.jar" \
        "$target/bindings/kotlin" mobile/tests/kotlin/BindingsTest.kt
    # JNA finds the library through jna.library.path; Debian's JNA loads its own native
    # dispatcher from /usr/lib/<arch>/jni.
    COALITION_SERVER="$target/debug/coalition-server" \
        timeout 600 java -Djna.library.path="$target/debug" \
        -cp "$out/test.jar:$jna:$coroutines:$kotlin_home/lib/kotlin-stdlib.jar" \
        org.coalitionsync.mobile.test.BindingsTestKt
fi

echo "== API surface of the Swift and Kotlin bindings"
python3 mobile/tests/check_api_surface.py \
    --rust mobile/src \
    --kotlin "$target/bindings/kotlin" \
    --swift "$target/bindings/swift/CoalitionMobile.swift"

echo "mobile binding tests: OK"
