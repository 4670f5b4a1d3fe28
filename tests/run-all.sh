#!/usr/bin/env bash
# Runs edgeplane's whole test suite: unit tests, config validation, and the
# end-to-end tests with real servers and clients (curl, h2load) over real
# sockets. Installs the Debian packages the tests drive when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Peers the tests drive: curl and h2load as clients; nginx (with its stream
# module) and HAProxy as the benchmark harness's peers, whose generated
# configs are checked by the real binaries (BENCH_REQUIRE_PEERS below).
missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
[ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || missing+=(libnginx-mod-stream)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
# MQTT: the mosquitto broker and its clients (mosquitto_pub/sub).
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null 2>&1 || missing+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || missing+=(mosquitto-clients)
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
BENCH_REQUIRE_PEERS=1 cargo test --workspace "$@"

# The proxy and the harness, built for arm64 and run under emulation.
bash tests/arm64-smoke.sh
