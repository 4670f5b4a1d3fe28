#!/usr/bin/env bash
# Runs edgeplane's whole test suite: unit tests, config validation, and the
# end-to-end tests with real servers and clients (curl, h2load) over real
# sockets. Installs the Debian packages the tests drive when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The process tests run the real binary, built exactly this way (the same
# package selection means the same features, so their build is a no-op);
# building it first keeps its build time out of the tests' hang guards.
cargo build -p edgeplane --bin edgeplane
cargo test --workspace "$@"
