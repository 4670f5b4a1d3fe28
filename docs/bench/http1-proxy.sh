#!/usr/bin/env bash
# HTTP/1.1 keep-alive proxying on one core: edgeplane vs nginx vs HAProxy.
#
# Layout (2-core machine): the upstream (nginx, 1 worker, `return 200
# "hello\n"`) and wrk run on CPU 0; the proxy under test runs on CPU 1 with
# one worker. Rounds are interleaved (noise on a shared VM is ±15-25%), and
# each round reports req/s, p99, and CPU time the proxy spent per request
# (from /proc/<pid>/stat: user+system, all threads).
#
# usage: docs/bench/http1-proxy.sh [rounds] [seconds]      (needs nginx, haproxy, wrk, bc, python3)
#   PROXIES="nginx haproxy edgeplane" (default) chooses and orders the proxies; the first is
#   the baseline of the ratios. `edgeplane-shared` is edgeplane on one work-stealing runtime
#   (the threading model not chosen), for comparison.
set -euo pipefail
rounds=${1:-6}
seconds=${2:-6}
proxies=${PROXIES:-nginx haproxy edgeplane}
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
declare -A port pid
for name in $proxies; do
    case $name in
        nginx) taskset -c 1 nginx -c "$work/nginx.conf" & port[$name]=18081 ;;
        haproxy) taskset -c 1 haproxy -f "$work/haproxy.cfg" & port[$name]=18083 ;;
        edgeplane)
            taskset -c 1 "$root/target/release/edgeplane" --log-level warn run --config "$work/edgeplane.yaml" \
                --workers 1 --no-watch &
            port[$name]=18082 ;;
        edgeplane-shared)
            sed 's/18082/18084/; s/18099/18098/' "$work/edgeplane.yaml" > "$work/edgeplane-shared.yaml"
            taskset -c 1 "$root/target/release/edgeplane" --log-level warn run --config "$work/edgeplane-shared.yaml" \
                --workers 1 --no-watch --shared-runtime &
            port[$name]=18084 ;;
        *) echo "unknown proxy $name" >&2; exit 1 ;;
    esac
    pids+=($!)
    pid[$name]=$!
done
until curl -sf -o /dev/null "http://127.0.0.1:19001/"; do sleep 0.05; done
for name in $proxies; do
    until curl -sf -o /dev/null "http://127.0.0.1:${port[$name]}/"; do sleep 0.05; done
done
# Measure nginx's worker process, not its master; keep the upstream on CPU 0.
[ -z "${pid[nginx]:-}" ] || pid[nginx]=$(pgrep -P "$(cat "$work/nginx.pid")")
taskset -pc 0 "$(pgrep -P "$(cat "$work/upstream.pid")")" >/dev/null

hz=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
results="$work/results"
echo "proxy            round  req/s      p99       CPU µs/req"
for round in $(seq 1 "$rounds"); do
    for name in $proxies; do
        before=$(cpu "${pid[$name]}")
        out=$(taskset -c 0 wrk -t1 -c64 -d"${seconds}s" --latency "http://127.0.0.1:${port[$name]}/")
        after=$(cpu "${pid[$name]}")
        rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
        requests=$(awk '/requests in/ {print $1}' <<<"$out")
        p99=$(awk '$1=="99%" {print $2}' <<<"$out")
        per_request=$(echo "($after-$before)*1000000/$hz/$requests" | bc -l)
        printf "%-16s %5d  %9.0f  %-8s  %6.2f\n" "$name" "$round" "$rps" "$p99" "$per_request" | tee -a "$results"
    done
done
for name in $proxies; do
    printf "RSS %-16s %s\n" "$name" "$(awk '/VmRSS/ {print $2" kB"}' "/proc/${pid[$name]}/status")"
done

# Medians per proxy, and ratios against the first proxy from the same rounds.
python3 - "$results" "${proxies%% *}" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
def ms(text):
    return float(text[:-2]) if text.endswith("ms") else float(text[:-2]) / 1000 if text.endswith("us") else float(text[:-1]) * 1000
by = {}
for name, _round, rps, p99, cpu in rows:
    by.setdefault(name, []).append((float(rps), ms(p99), float(cpu)))
med = {name: [statistics.median(col) for col in zip(*values)] for name, values in by.items()}
base_name = sys.argv[2]
base = med[base_name]
print(f"\nmedians          req/s  (ratio)  p99 ms (ratio)  CPU µs/req (ratio)   ratios vs {base_name}")
for name, (rps, p99, cpu) in med.items():
    print(f"{name:<16} {rps:6.0f}  ({rps / base[0]:.2f})   {p99:5.2f} ({p99 / base[1]:.2f})   {cpu:5.2f}      ({cpu / base[2]:.2f})")
PY
