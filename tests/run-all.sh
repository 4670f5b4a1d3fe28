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
# Transparent interception (iptables-init, tests/tests/transparent.rs):
# network namespaces, both netfilter front ends, setpriv to run as UID 1500.
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || missing+=(iproute2)
command -v iptables-restore >/dev/null 2>&1 || [ -x /usr/sbin/iptables-restore ] || missing+=(iptables)
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || missing+=(nftables)
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
# paho-mqtt (Python) comes from PyPI into a venv, below.
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The Eclipse paho-mqtt client, pinned, from PyPI (tests/tests/mqtt_clients.rs).
paho_venv=target/paho-venv
if ! "$paho_venv/bin/python" -c 'import paho.mqtt' >/dev/null 2>&1; then
    python3 -m venv "$paho_venv"
    "$paho_venv/bin/pip" install --quiet --disable-pip-version-check paho-mqtt==2.1.0
fi
export EDGEPLANE_PAHO_PYTHON="$PWD/$paho_venv/bin/python"

# The process tests run the real binary, built exactly this way (the same
# package selection means the same features, so their build is a no-op);
# building it first keeps its build time out of the tests' hang guards.
cargo build -p edgeplane --bin edgeplane
# As root (CI), the namespace tests must run: a missing prerequisite fails
# them. Unprivileged, they print SKIPPED with the reason.
if [ "$(id -u)" -eq 0 ]; then
    export EDGEPLANE_REQUIRE_ROOT_TESTS=1
fi
BENCH_REQUIRE_PEERS=1 cargo test --workspace "$@"

# The proxy and the harness, built for arm64 and run under emulation.
bash tests/arm64-smoke.sh
