# Sourced by benches/redis_instructions.sh and benches/sweeper_instructions.sh:
# a private redis-server under callgrind on a free loopback port, stopped (and
# its directory removed) when the script exits.
#
# start_callgrind_redis sets WORK (the server's directory, where callgrind
# writes cg.out.*), PORT and VG (valgrind's pid), and waits for PING. A script
# that starts more children defines bench_cleanup_hook, run first at exit.

start_callgrind_redis() {
  WORK="$(mktemp -d)"
  PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" \
    redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" >"$WORK/valgrind.log" 2>&1 &
  VG=$!
  trap stop_callgrind_redis EXIT
  for _ in $(seq 1 100); do
    redis-cli -p "$PORT" ping >/dev/null 2>&1 && break
    sleep 0.2
  done
}

stop_callgrind_redis() {
  if declare -F bench_cleanup_hook >/dev/null; then bench_cleanup_hook; fi
  redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 || kill "$VG" 2>/dev/null || true
  wait "$VG" 2>/dev/null || true
  rm -rf "$WORK"
}
