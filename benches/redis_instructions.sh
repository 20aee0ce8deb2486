#!/usr/bin/env bash
# Redis's own work per acquire→release cycle, counted in CPU instructions by
# callgrind: ours (`lighthouse bench` on a 1,000-proxy pool) against the npm
# `redis-semaphore` peer (benches/peer/semaphore.js), at 1 and 64 concurrent
# callers, on one private redis-server run under valgrind; then the same cycle
# with a site named by every acquire, and with a sticky session per caller. Instruction counts do
# not move with the machine's load, unlike cycles/s, so this is the stable
# companion of `cargo bench --bench redis`. It also prints the Redis commands per
# cycle (INFO commandstats: FCALL/EVALSHA and the commands the scripts run),
# and the layout's floor (benches/floor/floor.lua: the same commands with no
# script logic around them, and three leaner layouts).
#
#   bash benches/redis_instructions.sh            # about 10 minutes
#
# LIGHTHOUSE_INSTR_KEEP=DIR keeps each run's callgrind dump there (for
# `callgrind_annotate DIR/lighthouse-c64.cg`: where Redis spends the instructions).
#
# Needs valgrind (callgrind_control), redis-server, redis-cli, node and npm. It
# starts its own server on a free loopback port and stops it at the end; it
# never touches another Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${LIGHTHOUSE_BENCH_SECS:-10}"

for tool in valgrind callgrind_control redis-server redis-cli node npm python3; do
  command -v "$tool" >/dev/null || { echo "redis_instructions: $tool is not on PATH" >&2; exit 1; }
done

# shellcheck source=benches/bench_pool.sh
. benches/bench_pool.sh
install_peer

# shellcheck source=benches/callgrind_redis.sh
. benches/callgrind_redis.sh
start_callgrind_redis
export REDIS_URL="redis://127.0.0.1:$PORT" LIGHTHOUSE_NAMESPACE=lhinstr
# Under valgrind Redis runs ~50x slower, so call latency would read as a slow
# link and earn more, smaller batches in flight: keep the fast-link setting.
export LIGHTHOUSE_FIT_IN_FLIGHT=0

# A 1,000-proxy pool, 16 countries, max_concurrency 4 (as benches/redis.rs).
bench_csv "$WORK/proxies.csv"
"$LH" pool create bench >/dev/null
"$LH" proxy import --pool bench "$WORK/proxies.csv" >/dev/null
# The same proxies in a pool with a rate limit of one lease per proxy per ms
# (so the limit itself never holds the load back): what the limit costs.
"$LH" pool create bench-rate --rate-limit 1000/1 >/dev/null
"$LH" proxy import --pool bench-rate "$WORK/proxies.csv" >/dev/null

# Runs a command with the counters zeroed first (callgrind's and Redis's command
# statistics); prints the instructions counted.
counted() {
  rm -f "$WORK"/cg.out.*
  redis-cli -p "$PORT" config resetstat >/dev/null
  callgrind_control -z "$VG" >/dev/null 2>&1
  "$@" >"$WORK/out.json"
  callgrind_control -d "$VG" >/dev/null 2>&1
  local dump
  dump="$(ls -t "$WORK"/cg.out.* | head -1)"
  if [ -n "${LIGHTHOUSE_INSTR_KEEP:-}" ]; then
    mkdir -p "$LIGHTHOUSE_INSTR_KEEP"
    cp "$dump" "$LIGHTHOUSE_INSTR_KEEP/$(basename "$1")-$STEP.cg"
  fi
  grep -E '^(summary|totals):' "$dump" | head -1 | awk '{print $2}'
}

calls_of() { # Redis commands per cycle since the last reset (a script's own calls included)
  redis-cli -p "$PORT" info commandstats | tr -d '\r' | python3 -c '
import sys
k, total, parts = int(sys.argv[1]), 0, []
for line in sys.stdin:
    if not line.startswith("cmdstat_") or line.startswith("cmdstat_config"):
        continue
    name, rest = line.split(":", 1)
    calls = int(dict(f.split("=") for f in rest.split(","))["calls"])
    total += calls
    if calls >= k / 100:
        parts.append("%s %.2f" % (name[8:], calls / k))
print("%.2f (%s)" % (total / k, ", ".join(sorted(parts))))' "$1"
}

cycles_of() { # the cycle count in a JSON line of $WORK/out.json
  python3 -c 'import json,sys; print(json.loads([l for l in open(sys.argv[1]) if l.startswith("{")][-1])[sys.argv[2]])' "$WORK/out.json" "$1"
}

printf '%-16s %4s %9s %16s %14s\n' who c cycles instructions "per cycle"
declare -A PER CALLS
for c in 1 64; do
  STEP="c$c"
  n="$(counted "$LH" --json bench --pool bench --concurrency "$c" --duration "$SECS")"
  k="$(cycles_of cycles)"
  PER["ours$c"]=$((n / k))
  printf '%-16s %4s %9s %16s %14s\n' ours "$c" "$k" "$n" "${PER[ours$c]}"
  CALLS["ours$c"]="$(calls_of "$k")"
  n="$(counted node "$PEER/semaphore.js" --port "$PORT" --concurrency "$c" --warmup 0 --secs "$SECS" --limit 1000)"
  k="$(cycles_of cycles_all)"
  PER["sem$c"]=$((n / k))
  printf '%-16s %4s %9s %16s %14s\n' redis-semaphore "$c" "$k" "$n" "${PER[sem$c]}"
  CALLS["sem$c"]="$(calls_of "$k")"
done
# The crawler loop of rotate_proxy (release and acquire in one call) at c=1
# and c=64, held against the semaphore's acquire→release cycle as `cargo
# bench` does.
for c in 1 64; do
  STEP="rotate-c$c"
  r="rotate$c"
  n="$(counted "$LH" --json bench --pool bench --concurrency "$c" --duration "$SECS" --rotate)"
  k="$(cycles_of cycles)"
  PER[$r]=$((n / k))
  printf '%-16s %4s %9s %16s %14s\n' "ours rotate" "$c" "$k" "$n" "${PER[$r]}"
  CALLS[$r]="$(calls_of "$k")"
done
# The layout's floor (benches/floor/floor.lua): the Redis commands a plain
# acquire and release run on this layout (one declared attribute), with no
# script logic around them: what a cycle costs Redis before any of the scripts'
# own work. One request per call (the c=1 form) and 12 (the batch size `ours`
# reaches at c=64), as the layout is and in three other layouts: no lease
# record ('norec'), a proxy's count in one index key only ('onekey'), both ('lean').
for v in full norec onekey lean; do
  node "$PEER/floor.js" --port "$PORT" --setup 1
  for b in 1 12; do
    STEP="floor-$v-$b"
    conc=1; [ "$b" -gt 1 ] && conc=2
    n="$(counted node "$PEER/floor.js" --port "$PORT" --setup 0 --variant "$v" --batch "$b" --concurrency "$conc" --secs "$SECS")"
    k="$(cycles_of cycles)"
    PER["floor-$v-$b"]=$((n / k))
    CALLS["floor-$v-$b"]="$(calls_of "$k")"
  done
done
# What the fleet features cost when used: every acquire names a site (none of
# its proxies blocked for it), every caller keeps its own sticky session, or
# the pool has a rate limit and every acquire names a site.
for feature in site sessions rate_site; do
  for c in 1 64; do
    STEP="$feature-c$c"
    pool=bench
    case "$feature" in
      site) flag=(--site shop.example) ;;
      sessions) flag=(--sessions) ;;
      rate_site) flag=(--site shop.example); pool=bench-rate ;;
    esac
    n="$(counted "$LH" --json bench --pool "$pool" --concurrency "$c" --duration "$SECS" "${flag[@]}")"
    k="$(cycles_of cycles)"
    PER["$feature$c"]=$((n / k))
    printf '%-16s %4s %9s %16s %14s\n' "ours $feature" "$c" "$k" "$n" "${PER[$feature$c]}"
    CALLS["$feature$c"]="$(calls_of "$k")"
  done
done
for c in 1 64; do
  echo "c=$c Redis commands per cycle: ours ${CALLS[ours$c]}; redis-semaphore ${CALLS[sem$c]}"
done
for feature in site sessions rate_site; do
  for c in 1 64; do
    echo "c=$c with $feature: Redis commands per cycle ${CALLS[$feature$c]}; instructions $(python3 -c "print('%.2f' % (${PER[$feature$c]} / ${PER[ours$c]}))")x the plain cycle's"
  done
done
echo "rotate (c=1) Redis commands per rotate: ${CALLS[rotate1]}"
echo "rotate (c=64) Redis commands per rotate: ${CALLS[rotate64]}"
for v in full norec onekey lean; do
  for b in 1 12; do
    c=1; [ "$b" -gt 1 ] && c=64
    echo "floor $v, $b per call: $(python3 -c "print('%d instructions per cycle, %.2fx the semaphore at c=$c' % (${PER[floor-$v-$b]}, ${PER[floor-$v-$b]} / ${PER[sem$c]}))"); commands ${CALLS[floor-$v-$b]}"
  done
done
for c in 1 64; do
  python3 -c "print('c=$c: semaphore / ours instructions per cycle = %.2f' % (${PER[sem$c]} / ${PER[ours$c]}))"
done
python3 -c "print('c=1 rotate: semaphore cycle / ours rotate instructions = %.2f' % (${PER[sem1]} / ${PER[rotate1]}))"
python3 -c "print('c=64 rotate: semaphore cycle / ours rotate instructions = %.2f' % (${PER[sem64]} / ${PER[rotate64]}))"
