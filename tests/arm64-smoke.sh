#!/usr/bin/env bash
# arm64 smoke test: cross-builds edgeplane and the benchmark harness for
# aarch64 and runs a tiny benchmark scenario under qemu-user emulation.
# Functional proof only: emulated timings mean nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

target=aarch64-unknown-linux-gnu
missing=()
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || missing+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64-static >/dev/null 2>&1 || missing+=(qemu-user-static)
command -v file >/dev/null 2>&1 || missing+=(file)
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
rustup target list --installed | grep -qx "$target" || rustup target add "$target"

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
cargo build --target "$target" -p edgeplane --bin edgeplane -p bench --bin bench
bin="target/$target/debug"
file "$bin/edgeplane" "$bin/bench" | grep -q "ARM aarch64" || { echo "not an arm64 build" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The harness starts edgeplane itself; through this wrapper, under qemu too.
cat > "$work/edgeplane" <<WRAP
#!/bin/sh
exec qemu-aarch64-static -L /usr/aarch64-linux-gnu "$PWD/$bin/edgeplane" "\$@"
WRAP
chmod +x "$work/edgeplane"

qemu-aarch64-static -L /usr/aarch64-linux-gnu "$bin/bench" \
    --edgeplane "$work/edgeplane" --only edgeplane \
    --scenarios http1-keepalive,tcp-rr --rounds 1 --warmup 0.2 --duration 1 --connections 4 \
    --out "$work/out"
python3 - "$work/out/results.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
assert report["machine"]["arch"] == "aarch64", report["machine"]
for scenario in report["scenarios"]:
    peers = {p["peer"]: p for p in scenario["peers"]}
    for name in ("direct", "edgeplane"):
        rounds = peers[name]["rounds"]
        assert rounds and all(r["completed"] > 0 and r["errors"] == 0 for r in rounds), (scenario["name"], name, rounds)
print("arm64 smoke test passed:", ", ".join(s["name"] for s in report["scenarios"]))
PY
