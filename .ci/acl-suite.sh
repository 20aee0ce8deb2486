#!/usr/bin/env bash
# Runs the Redis test suites as the least-privileged `lighthouse` ACL user of
# deploy/redis/users.acl, on a private redis-server (127.0.0.1, free port, no
# persistence) that is stopped on exit.
#
# deploy/redis/users.acl (Redis ACL files cannot hold comments, so it is explained
# here and in the README's Security section):
#   - `default` is off: every client authenticates as a named user;
#   - `lighthouse`, for the library, `lighthouse-sweeper` and the `lighthouse` CLI:
#     keys and channels `lighthouse:*` (the default namespace) and only
#       PING (RedisStorage::ping), SELECT (URLs naming a database other than 0),
#       HGET HGETALL HMGET HSET HSETNX HDEL EXISTS ZRANGE TIME (from Rust),
#       FCALL FCALL_RO FUNCTION LOAD (the operations are a Redis Functions
#       library, loaded again when Redis has lost it),
#       HINCRBY HEXISTS HLEN HSCAN GET SET MGET MSET DEL UNLINK PTTL PEXPIRE ZADD ZREM
#       ZRANGEBYSCORE ZSCORE
#       ZMSCORE ZCOUNT ZCARD ZSCAN SADD SPOP GEOADD GEOSEARCH PUBLISH (run by the
#       functions; Redis checks their commands against the calling user),
#       SUBSCRIBE (waiting acquires), WAIT (RedisConfig::wait_for_replicas);
#     not CONFIG GET (the sweeper's start-up maxmemory-policy check then only
#     warns; CONFIG GET would also reveal secrets such as masterauth);
#   - `ops`, an administrator for people.
#   Both passwords are all-zero SHA-256 placeholders that match no password.
#
# The test ACL file is generated from deploy/redis/users.acl, so the production
# command list is what gets tested. Only these differences:
#   - key and channel patterns `~lhtest-*` / `&lhtest-*` (the suites' namespaces
#     are `lhtest-<uuid>`) instead of `~lighthouse:*` / `&lighthouse:*`;
#   - a random password instead of the placeholder hash;
#   - `+scan +pttl +smembers +object|encoding` for the tests' own raw reads (not
#     used by the library);
#   - an extra admin user, used only by this script to read ACL LOG.
# Tests that need admin commands (FUNCTION FLUSH, CONFIG SET, SLOWLOG) skip themselves
# because REDIS_URL points at a server they did not start.
# After the tests, any command, key or channel the `lighthouse` user was denied
# (ACL LOG) fails the run: the library ignores some failures (a failed SUBSCRIBE
# only slows waiting acquires down), so passing tests alone would not prove the
# ACL is enough.
#
# Usage: .ci/acl-suite.sh [extra cargo test arguments, e.g. --test names_property]
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in redis-server redis-cli; do
  command -v "$tool" >/dev/null || { echo "acl-suite: $tool is not on PATH" >&2; exit 1; }
done

workdir="$(mktemp -d)"
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$workdir"
}
trap cleanup EXIT INT TERM

secret() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
password="$(secret)"
admin_password="$(secret)"

# The test ACL file, from the production one.
acl="$workdir/users.acl"
{
  grep -E '^user (default|lighthouse) ' deploy/redis/users.acl \
    | sed -E \
        -e 's/~lighthouse:\*/~lhtest-*/g' \
        -e 's/&lighthouse:\*/\&lhtest-*/g' \
        -e "/^user lighthouse /s/#[0-9a-f]{64}/>${password}/" \
        -e '/^user lighthouse /s/$/ +scan +pttl +smembers +object|encoding/'
  echo "user lhadmin on >${admin_password} ~* &* +@all"
} >"$acl"
grep -q '^user lighthouse .*~lhtest-\* .*&lhtest-\*' "$acl" \
  || { echo "acl-suite: could not derive the test ACL from deploy/redis/users.acl" >&2; exit 1; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
admin() { redis-cli -h 127.0.0.1 -p "$port" --user lhadmin --pass "$admin_password" --no-auth-warning "$@"; }

port=""
for _ in 1 2 3 4 5 6 7 8 9 10; do
  candidate=$((20000 + RANDOM % 40000))
  port_in_use "$candidate" && continue
  redis-server --port "$candidate" --bind 127.0.0.1 --protected-mode yes \
    --save '' --appendonly no --dir "$workdir" --aclfile "$acl" \
    >"$workdir/redis.log" 2>&1 &
  server_pid=$!
  port="$candidate"
  for _ in $(seq 1 100); do
    if admin PING 2>/dev/null | grep -q PONG; then break 2; fi
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
  port=""
done
if [[ -z "$port" ]]; then
  echo "acl-suite: could not start redis-server; its last log:" >&2
  cat "$workdir/redis.log" >&2 || true
  exit 1
fi
echo "acl-suite: redis-server $(redis-server --version | awk '{print $3}') on 127.0.0.1:$port, user lighthouse:"
grep '^user lighthouse ' "$acl" | sed -E 's/>[0-9a-f]+/>********/'

REDIS_URL="redis://lighthouse:${password}@127.0.0.1:${port}" \
  cargo test --test conformance_redis --test redis_maintenance --test renew "$@"

# Every denial of the `lighthouse` user, as `reason object` lines. redis-rs's
# CLIENT SETINFO on connect is allowed to fail (Redis >= 7.2 logs it).
denied="$(admin --raw ACL LOG 1000 | awk '
  prev == "reason" { reason = $0 }
  prev == "object" { object = $0 }
  prev == "username" { if ($0 == "lighthouse" && object != "client|setinfo") print reason, object }
  { prev = $0 }' | sort | uniq -c)"
if [[ -n "$denied" ]]; then
  echo "acl-suite: the lighthouse user was denied (count, reason, object):" >&2
  echo "$denied" >&2
  exit 1
fi
echo "acl-suite: no ACL denials"
