#!/usr/bin/env bash
# Redis's CPU time per acquire→release cycle in real time (not instructions):
# the redis-server process's user + system time (/proc/<pid>/stat) over a
# timed run, divided by the cycles done. It counts what callgrind does not:
# cache misses, and the per-request I/O (reading, parsing, replying, the
# system calls), which batching saves. Runs, in turns on one private
# redis-server: redis-semaphore (benches/peer/semaphore.js) at c=64 and c=1,
# the layout's floor (benches/floor/floor.lua, `full` and `lean`, 12 requests
# a call and 1), and ours (`lighthouse bench`, 1,000 proxies, c=64, c=1 and a
# c=64 rotate loop). This machine is shared: read the rounds side by side.
#
#   bash benches/redis_cpu.sh                       # about 3 minutes
#   LIGHTHOUSE_BENCH_SECS=5 LIGHTHOUSE_BENCH_ROUNDS=3 bash benches/redis_cpu.sh
#
# Needs redis-server, redis-cli, node, npm and python3; it never touches
# another Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${LIGHTHOUSE_BENCH_SECS:-5}"
ROUNDS="${LIGHTHOUSE_BENCH_ROUNDS:-2}"

for tool in redis-server redis-cli node npm python3; do
  command -v "$tool" >/dev/null || { echo "redis_cpu: $tool is not on PATH" >&2; exit 1; }
done

# shellcheck source=benches/bench_pool.sh
. benches/bench_pool.sh
install_peer

WORK="$(mktemp -d)"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" >"$WORK/log" 2>&1 &
RS=$!
stop() {
  redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 || kill "$RS" 2>/dev/null || true
  wait "$RS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap stop EXIT
for _ in $(seq 1 100); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
export REDIS_URL="redis://127.0.0.1:$PORT" LIGHTHOUSE_NAMESPACE=lhcpu

# A 1,000-proxy pool, 16 countries, max_concurrency 4 (as benches/redis.rs).
bench_csv "$WORK/proxies.csv"
"$LH" pool create bench >/dev/null
"$LH" proxy import --pool bench "$WORK/proxies.csv" >/dev/null
node "$PEER/floor.js" --port "$PORT" --setup 1

TCK="$(getconf CLK_TCK)"
# measure LABEL KEY CMD...: runs CMD, whose last JSON line holds the cycle
# count under KEY, and prints cycles/s and Redis's CPU µs per cycle.
measure() {
  local label="$1" key="$2"; shift 2
  local t0 t1 k
  t0="$(awk '{print $14 + $15}' "/proc/$RS/stat")"
  "$@" >"$WORK/out.json"
  t1="$(awk '{print $14 + $15}' "/proc/$RS/stat")"
  k="$(python3 -c 'import json,sys; print(json.loads([l for l in open(sys.argv[1]) if l.startswith("{")][-1])[sys.argv[2]])' "$WORK/out.json" "$key")"
  python3 -c "import sys; k=$k; print('%-20s %9.0f cycles/s %8.2f Redis CPU us a cycle' % (sys.argv[1], k / $SECS, ($t1 - $t0) / $TCK * 1e6 / max(k, 1)))" "$label"
}
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS"
  measure "semaphore c=64" cycles_all node "$PEER/semaphore.js" --port "$PORT" --concurrency 64 --warmup 0 --secs "$SECS" --limit 1000
  measure "ours c=64" cycles "$LH" --json bench --pool bench --concurrency 64 --duration "$SECS"
  measure "ours rotate c=64" cycles "$LH" --json bench --pool bench --concurrency 64 --duration "$SECS" --rotate
  measure "floor full, 12" cycles node "$PEER/floor.js" --port "$PORT" --setup 0 --variant full --batch 12 --concurrency 2 --secs "$SECS"
  measure "floor lean, 12" cycles node "$PEER/floor.js" --port "$PORT" --setup 0 --variant lean --batch 12 --concurrency 2 --secs "$SECS"
  measure "semaphore c=1" cycles_all node "$PEER/semaphore.js" --port "$PORT" --concurrency 1 --warmup 0 --secs "$SECS" --limit 1000
  measure "ours c=1" cycles "$LH" --json bench --pool bench --concurrency 1 --duration "$SECS"
  measure "floor full, 1" cycles node "$PEER/floor.js" --port "$PORT" --setup 0 --variant full --batch 1 --concurrency 1 --secs "$SECS"
  measure "floor lean, 1" cycles node "$PEER/floor.js" --port "$PORT" --setup 0 --variant lean --batch 1 --concurrency 1 --secs "$SECS"
done
