#!/usr/bin/env bash
# Redis's own work per reclaimed lease, counted in CPU instructions by callgrind:
# N leases (default 3,000) on a 1,000-proxy pool (16 countries, no
# max_concurrency, as `cargo bench --bench sweeper`) expire, then one
# `lighthouse sweep` gives their slots back. Instruction counts do not move with
# the machine's load, unlike the sweeper bench's leases/s and longest call, so
# this is their stable companion. It also prints the Redis commands of the sweep
# (INFO commandstats).
#
#   bash benches/sweeper_instructions.sh                 # about 80 s
#   LIGHTHOUSE_INSTR_LEASES=10000 bash benches/sweeper_instructions.sh
#
# The leases are taken by sending, N times, the acquire function call that one
# `lighthouse acquire` made (captured with MONITOR): the same script call, so the
# same lease records, live-set entries and counts, without N processes.
# LIGHTHOUSE_INSTR_KEEP=FILE keeps the callgrind dump of the sweep.
#
# Needs valgrind (callgrind_control), redis-server, redis-cli and python3. It
# starts its own server on a free loopback port and stops it at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${LIGHTHOUSE_INSTR_LEASES:-3000}"
# Long enough for N acquires under valgrind on a busy machine (3-10 ms each):
# a lease due before the last is taken would be reclaimed by an acquire.
DURATION="${LIGHTHOUSE_INSTR_LEASE_SECS:-60}"

for tool in valgrind callgrind_control redis-server redis-cli python3; do
  command -v "$tool" >/dev/null || { echo "sweeper_instructions: $tool is not on PATH" >&2; exit 1; }
done
if [ -n "${LH:-}" ]; then
  LH="$(realpath "$LH")"
else
  cargo build --release --quiet --bin lighthouse
  LH="$PWD/target/release/lighthouse"
fi

# shellcheck source=benches/callgrind_redis.sh
. benches/callgrind_redis.sh
MON=""
bench_cleanup_hook() { [ -z "$MON" ] || kill "$MON" 2>/dev/null || true; }
start_callgrind_redis
export REDIS_URL="redis://127.0.0.1:$PORT" LIGHTHOUSE_NAMESPACE=lhsweep
LIVE='lhsweep:{bench}:live'

# In four files: one add call of 1,000 proxies can outlast the client's
# response timeout under valgrind on a busy machine.
python3 - "$WORK" <<'PY'
import csv, sys
countries = "AR BR CL CO PE MX UY PY BO EC VE CR PA GT HN SV".split()
for part in range(4):
    with open(f"{sys.argv[1]}/proxies{part}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["host", "port", "protocol", "country"])
        for i in range(part * 250, part * 250 + 250):
            w.writerow([f"10.0.{i >> 8}.{i & 255}", 8080, "http", countries[i % 16]])
PY
"$LH" pool create bench >/dev/null
for part in 0 1 2 3; do
  "$LH" proxy import --pool bench "$WORK/proxies$part.csv" >/dev/null
done

# One acquire, seen by MONITOR: its FCALL line, arguments quoted as redis-cli reads them.
redis-cli -p "$PORT" monitor >"$WORK/monitor.txt" &
MON=$!
sleep 1
"$LH" acquire --pool bench --duration "$DURATION" >/dev/null
sleep 1
kill "$MON" 2>/dev/null || true
MON=""
CALL="$(grep -i '"fcall" "[^"]*_acquire"' "$WORK/monitor.txt" | head -1 | sed 's/^[^"]*//')"
[ -n "$CALL" ] || { echo "sweeper_instructions: no acquire call seen" >&2; exit 1; }
for _ in $(seq 2 "$N"); do echo "$CALL"; done | redis-cli -p "$PORT" >/dev/null
live="$(redis-cli -p "$PORT" zcard "$LIVE")"
[ "$live" -eq "$N" ] || { echo "sweeper_instructions: $live live leases, expected $N" >&2; exit 1; }

# Wait until every lease is due (Redis's clock), then count the sweep alone.
due() {
  redis-cli -p "$PORT" eval "local t = redis.call('TIME') return redis.call('ZCOUNT', KEYS[1], '-inf', t[1] * 1000)" 1 "$LIVE"
}
while [ "$(due)" -lt "$N" ]; do sleep 1; done
rm -f "$WORK"/cg.out.*
redis-cli -p "$PORT" config resetstat >/dev/null
callgrind_control -z "$VG" >/dev/null 2>&1
reclaimed="$("$LH" --json sweep | python3 -c 'import json, sys; print(json.loads(sys.stdin.read())["reclaimed"])' 2>/dev/null || true)"
callgrind_control -d "$VG" >/dev/null 2>&1
dump="$(ls -t "$WORK"/cg.out.* | head -1)"
[ -n "${LIGHTHOUSE_INSTR_KEEP:-}" ] && cp "$dump" "$LIGHTHOUSE_INSTR_KEEP"
n="$(grep -E '^(summary|totals):' "$dump" | head -1 | awk '{print $2}')"
left="$(redis-cli -p "$PORT" zcard "$LIVE")"
echo "leases $N, reclaimed ${reclaimed:-?}, left live $left"
echo "Redis instructions per reclaimed lease: $((n / N))"
redis-cli -p "$PORT" info commandstats | tr -d '\r' | python3 -c '
import sys
k = int(sys.argv[1]); parts = []
for line in sys.stdin:
    if not line.startswith("cmdstat_") or line.startswith("cmdstat_config"):
        continue
    name, rest = line.split(":", 1)
    calls = int(dict(f.split("=") for f in rest.split(","))["calls"])
    parts.append("%s %d" % (name[8:], calls))
print("commands of the sweep: " + ", ".join(sorted(parts)))' "$N"
