// Peer baseline for benches/redis.rs: acquire()→release() cycles of
// redis-semaphore's `Semaphore` on ONE ioredis connection, with N concurrent
// callers, for a fixed wall time after a warm-up. Prints one JSON line.
//
//   node semaphore.js --port 6390 --concurrency 64 --warmup 0.5 --secs 3 --limit 1000
//
// Each cycle builds a fresh Semaphore (a fresh identifier, as each of our
// cycles gets a fresh lease id) on one shared key whose limit is never reached,
// so acquire() never waits; auto-refresh is off (our leases have none either).
// Only 127.0.0.1 is ever contacted.
'use strict';

const Redis = require('ioredis');
const { Semaphore } = require('redis-semaphore');

function args() {
  const out = { port: 6379, concurrency: 1, warmup: 0.5, secs: 3, limit: 1000, key: 'bench-peer' };
  const a = process.argv.slice(2);
  for (let i = 0; i + 1 < a.length; i += 2) {
    const k = a[i].replace(/^--/, '');
    if (!(k in out)) throw new Error(`unknown option ${a[i]}`);
    out[k] = k === 'key' ? a[i + 1] : Number(a[i + 1]);
  }
  return out;
}

function percentile(sorted, q) {
  if (sorted.length === 0) return 0;
  const i = Math.min(sorted.length - 1, Math.floor(q * sorted.length));
  return sorted[i];
}

async function main() {
  const o = args();
  const client = new Redis({ host: '127.0.0.1', port: o.port, lazyConnect: true, maxRetriesPerRequest: 1 });
  await client.connect();
  await client.ping();
  const options = { lockTimeout: 300000, acquireTimeout: 10000, retryInterval: 10, refreshInterval: 0 };

  const start = process.hrtime.bigint();
  const warmEnd = start + BigInt(Math.round(o.warmup * 1e9));
  const end = warmEnd + BigInt(Math.round(o.secs * 1e9));
  let cycles = 0;
  let all = 0;
  const lat = [];
  const acq = [];

  async function worker() {
    for (;;) {
      const t0 = process.hrtime.bigint();
      if (t0 >= end) return;
      const s = new Semaphore(client, o.key, o.limit, options);
      await s.acquire();
      const ta = process.hrtime.bigint();
      await s.release();
      const t1 = process.hrtime.bigint();
      all += 1;
      if (t1 >= warmEnd && t1 <= end) {
        cycles += 1;
        lat.push(Number(t1 - t0) / 1000);
        acq.push(Number(ta - t0) / 1000);
      }
    }
  }

  await Promise.all(Array.from({ length: o.concurrency }, worker));
  lat.sort((x, y) => x - y);
  acq.sort((x, y) => x - y);
  const seconds = o.secs;
  process.stdout.write(JSON.stringify({
    concurrency: o.concurrency,
    seconds,
    cycles,
    cycles_all: all,
    cycles_per_sec: cycles / seconds,
    p50_us: percentile(lat, 0.5),
    p99_us: percentile(lat, 0.99),
    acquire_p50_us: percentile(acq, 0.5),
    acquire_p99_us: percentile(acq, 0.99),
  }) + '\n');
  client.disconnect();
}

main().catch((e) => {
  process.stderr.write(`semaphore baseline failed: ${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
});
