#!/usr/bin/env bash
# HTTP/1.1 keep-alive proxying on one core: edgeplane vs nginx vs HAProxy.
#
# Layout (2-core machine): the upstream (nginx, 1 worker, `return 200
# "hello\n"`) and wrk run on CPU 0; the proxy under test runs on CPU 1 with
# one worker. Rounds are interleaved (noise on a shared VM is ±15-25%), and
# each round reports req/s, p99, and CPU time the proxy spent per request
# (from /proc/<pid>/stat: user+system, all threads).
#
# usage: docs/bench/http1-proxy.sh [rounds] [seconds]      (needs nginx, haproxy, wrk, bc)
set -euo pipefail
rounds=${1:-6}
seconds=${2:-6}
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

for tool in nginx haproxy wrk bc; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y nginx-light haproxy wrk bc" >&2; exit 1; }
done
cargo build --release -q -p edgeplane --manifest-path "$root/Cargo.toml"

cat > "$work/upstream.conf" <<CONF
worker_processes 1; daemon off; pid $work/upstream.pid; error_log $work/upstream.log;
events { worker_connections 4096; }
http { access_log off;
  server { listen 127.0.0.1:19001; keepalive_requests 1000000; location / { return 200 "hello\n"; } } }
CONF
cat > "$work/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $work/nginx.pid; error_log $work/nginx.log;
events { worker_connections 4096; }
http { access_log off;
  upstream backend { server 127.0.0.1:19001; keepalive 128; }
  server { listen 127.0.0.1:18081; keepalive_requests 1000000;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
cat > "$work/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind 127.0.0.1:18083
  default_backend be
backend be
  server s1 127.0.0.1:19001
CONF
cat > "$work/edgeplane.yaml" <<CONF
admin: { bind: 127.0.0.1:18099 }
listeners:
  - name: web
    bind: 127.0.0.1:18082
    routes: [ { cluster: upstream } ]
clusters:
  - name: upstream
    endpoints: [ 127.0.0.1:19001 ]
CONF

taskset -c 0 nginx -c "$work/upstream.conf" & pids+=($!)
taskset -c 1 nginx -c "$work/nginx.conf" & pids+=($!)
taskset -c 1 haproxy -f "$work/haproxy.cfg" & pids+=($!)
taskset -c 1 "$root/target/release/edgeplane" --log-level warn run --config "$work/edgeplane.yaml" --workers 1 --no-watch & pids+=($!)
edgeplane_pid=$!
haproxy_pid=${pids[2]}
for port in 19001 18081 18082 18083; do
    until curl -sf -o /dev/null "http://127.0.0.1:$port/"; do sleep 0.05; done
done
nginx_worker=$(pgrep -P "$(cat "$work/nginx.pid")")
upstream_worker=$(pgrep -P "$(cat "$work/upstream.pid")")
taskset -pc 0 "$upstream_worker" >/dev/null

hz=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
results="$work/results"
echo "proxy      round  req/s      p99       CPU µs/req"
for round in $(seq 1 "$rounds"); do
    for spec in "nginx:18081:$nginx_worker" "haproxy:18083:$haproxy_pid" "edgeplane:18082:$edgeplane_pid"; do
        IFS=: read -r name port pid <<<"$spec"
        before=$(cpu "$pid")
        out=$(taskset -c 0 wrk -t1 -c64 -d"${seconds}s" --latency "http://127.0.0.1:$port/")
        after=$(cpu "$pid")
        rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
        requests=$(awk '/requests in/ {print $1}' <<<"$out")
        p99=$(awk '$1=="99%" {print $2}' <<<"$out")
        per_request=$(echo "($after-$before)*1000000/$hz/$requests" | bc -l)
        printf "%-10s %5d  %9.0f  %-8s  %6.2f\n" "$name" "$round" "$rps" "$p99" "$per_request" | tee -a "$results"
    done
done
for name in nginx:$nginx_worker haproxy:$haproxy_pid edgeplane:$edgeplane_pid; do
    printf "RSS %-10s %s\n" "${name%%:*}" "$(grep VmRSS "/proc/${name#*:}/status" | awk '{print $2" kB"}')"
done

# Medians per proxy, and ratios against nginx from the same rounds.
python3 - "$results" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
def ms(text):
    return float(text[:-2]) if text.endswith("ms") else float(text[:-2]) / 1000 if text.endswith("us") else float(text[:-1]) * 1000
by = {}
for name, _round, rps, p99, cpu in rows:
    by.setdefault(name, []).append((float(rps), ms(p99), float(cpu)))
med = {name: [statistics.median(col) for col in zip(*values)] for name, values in by.items()}
base = med["nginx"]
print("\nmedians    req/s   (vs nginx)  p99 ms  (vs nginx)  CPU µs/req (vs nginx)")
for name, (rps, p99, cpu) in med.items():
    print(f"{name:<10} {rps:7.0f} ({rps / base[0]:.2f})     {p99:5.2f}  ({p99 / base[1]:.2f})      {cpu:5.2f}      ({cpu / base[2]:.2f})")
PY
