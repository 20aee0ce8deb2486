# Sourced by benches/redis_instructions.sh and benches/redis_cpu.sh: the
# pieces both set up the same way.
#
# install_peer: builds `lighthouse` (LH) and installs the npm peer in
# target/peer (PEER), the way benches/redis.rs installs it: redis-semaphore
# and the layout's floor driver.
#
# bench_csv FILE: writes the 1,000-proxy CSV the pools are imported from (16
# countries, max_concurrency 4, as benches/redis.rs).

install_peer() {
  cargo build --release --quiet --bin lighthouse
  LH="$PWD/target/release/lighthouse"
  PEER="$PWD/target/peer"
  mkdir -p "$PEER"
  cp benches/peer/package.json benches/peer/semaphore.js benches/floor/floor.js benches/floor/floor.lua "$PEER/"
  if [ ! -f "$PEER/node_modules/redis-semaphore/package.json" ]; then
    (cd "$PEER" && npm install --no-audit --no-fund --no-package-lock --silent)
  fi
}

bench_csv() {
  python3 - "$1" <<'PY'
import csv, sys
countries = "AR BR CL CO PE MX UY PY BO EC VE CR PA GT HN SV".split()
with open(sys.argv[1], "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["host", "port", "protocol", "max_concurrency", "country"])
    for i in range(1000):
        w.writerow([f"10.0.{i >> 8}.{i & 255}", 8080, "http", 4, countries[i % 16]])
PY
}
