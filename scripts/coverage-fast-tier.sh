#!/usr/bin/env bash
# Line coverage of src/ by the fast tier (`cargo test --lib`): builds the
# library's tests with LLVM source-based coverage into target/coverage,
# runs them (no endpoint, root or FUSE needed), and prints llvm-cov's
# summary per file and in total. Needs llvm-profdata and llvm-cov of the
# LLVM version rustc was built with (`rustc -vV`); on Debian it installs
# llvm-NN for that version when it is missing.
#
#   scripts/coverage-fast-tier.sh [extra `cargo test --lib` arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

llvm_major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
tool() {
    local name=$1
    if command -v "$name-$llvm_major" > /dev/null; then
        echo "$name-$llvm_major"
    elif "$name" --version 2> /dev/null | grep -q "LLVM version $llvm_major\."; then
        echo "$name"
    fi
}
if [[ -z $(tool llvm-cov) ]]; then
    echo "coverage: installing llvm-$llvm_major (rustc's LLVM) for llvm-profdata and llvm-cov" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "llvm-$llvm_major" > /dev/null
fi
profdata=$(tool llvm-profdata)
cov=$(tool llvm-cov)

target=target/coverage
profiles=$target/profiles
rm -rf "$profiles"
mkdir -p "$profiles"
export RUSTFLAGS="-C instrument-coverage"
export LLVM_PROFILE_FILE="$PWD/$profiles/%p-%m.profraw"
# Unset so the fast tier shows it needs no server.
unset S3MOUNT_TEST_ENDPOINT S3MOUNT_TEST_CONDITIONAL_ENDPOINT
cargo test --lib --target-dir "$target" "$@"
binary=$(cargo test --lib --no-run --target-dir "$target" --message-format=json 2> /dev/null \
    | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
"$profdata" merge -sparse "$profiles"/*.profraw -o "$target/fast-tier.profdata"
"$cov" report "$binary" --instr-profile="$target/fast-tier.profdata" \
    --ignore-filename-regex='(/\.cargo/|/rustc/|/src/fs/tests/)'
