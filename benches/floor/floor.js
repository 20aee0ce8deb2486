// Driver of benches/floor/floor.lua (see there): loads it on a private Redis,
// sets up a 1,000-proxy pool, then runs acquire→release cycles of `batch`
// leases each, `concurrency` loops at once, for a fixed time. Prints one JSON
// line: {"cycles": leases acquired and released}. Only 127.0.0.1 is contacted.
// benches/redis_instructions.sh copies it and floor.lua into target/peer/,
// where the semaphore peer's `npm install` put ioredis, and runs it there.
//
//   node floor.js --port 6390 --setup 1                  # load it, make the pool
//   node floor.js --port 6390 --setup 0 --variant full --batch 1 --concurrency 1 --secs 5
'use strict';

const fs = require('fs');
const path = require('path');
const Redis = require('ioredis');

function args() {
  const out = { port: 6379, variant: 'full', batch: 1, concurrency: 1, secs: 5, setup: 1 };
  const a = process.argv.slice(2);
  for (let i = 0; i + 1 < a.length; i += 2) {
    const k = a[i].replace(/^--/, '');
    if (!(k in out)) throw new Error(`unknown option ${a[i]}`);
    out[k] = k === 'variant' ? a[i + 1] : Number(a[i + 1]);
  }
  return out;
}

async function main() {
  const o = args();
  const r = new Redis({ host: '127.0.0.1', port: o.port, lazyConnect: true, maxRetriesPerRequest: 1 });
  await r.connect();
  const code = fs.readFileSync(path.join(__dirname, 'floor.lua'), 'utf8');
  const p = 'floor:{p}:';
  const keys = [p + 'meta', p + 'live', p + 'idx:load:all'];
  if (o.setup) {
    // Loads the library and (re)makes the pool, then leaves: `--setup 0` runs
    // the cycles alone (so an instruction count holds only them).
    await r.call('FUNCTION', 'LOAD', 'REPLACE', code);
    await r.call('FCALL', 'floor_setup', keys.length, ...keys, 1000);
    r.disconnect();
    return;
  }
  const end = process.hrtime.bigint() + BigInt(Math.round(o.secs * 1e9));
  let cycles = 0;
  async function loop() {
    while (process.hrtime.bigint() < end) {
      const got = await r.call('FCALL', 'floor_acquire', keys.length, ...keys, o.batch, o.variant);
      await r.call('FCALL', 'floor_release', keys.length, ...keys, o.variant, ...got);
      cycles += got.length;
    }
  }
  await Promise.all(Array.from({ length: o.concurrency }, loop));
  console.log(JSON.stringify({ variant: o.variant, batch: o.batch, cycles }));
  r.disconnect();
}

main().catch((e) => { console.error(e); process.exit(1); });
