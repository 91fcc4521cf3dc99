// BullMQ peer of the tta-agent-coordination benchmarks (run by `python -m benchmarks --peers`).
// Per repetition, on a flushed server: add() one at a time, drain with a Worker of concurrency
// 50; addBulk in batches of 100, drain with concurrency 1; then enqueue-to-processor latency
// for `--latency` jobs sent one at a time to an idle worker. Commands per job come from
// INFO commandstats over add() + the concurrency-50 drain. Prints one JSON line.
import { Queue, Worker } from "bullmq";
import IORedis from "ioredis";
import { createRequire } from "node:module";
import { performance } from "node:perf_hooks";

const require = createRequire(import.meta.url);
const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, arg, i, all) => {
    if (arg.startsWith("--")) pairs.push([arg.slice(2), all[i + 1]]);
    return pairs;
  }, []),
);
const url = args.url;
const n = Number(args.n);
const reps = Number(args.reps ?? 3);
const latencyN = Number(args.latency ?? 1000);
const TEXT = "lorem ipsum dolor sit amet ".repeat(6);
const payload = (i) => ({ i, kind: "bench", text: TEXT });
const connection = () => new IORedis(url, { maxRetriesPerRequest: null });

async function calls(admin) {
  const text = await admin.info("commandstats");
  let total = 0;
  for (const match of text.matchAll(/^cmdstat_[^:]+:calls=(\d+)/gm)) total += Number(match[1]);
  return total;
}

async function blocked(admin) {
  for (;;) {
    const text = await admin.info("clients");
    if (Number(/blocked_clients:(\d+)/.exec(text)[1]) >= 1) return;
  }
}

async function drain(count, concurrency) {
  let seen = 0;
  let finish;
  const finished = new Promise((resolve) => (finish = resolve));
  const start = performance.now();
  const worker = new Worker(
    "bench",
    async () => {
      seen += 1;
      if (seen === count) finish();
    },
    { connection: connection(), concurrency },
  );
  await finished;
  const elapsed = (performance.now() - start) / 1000;
  await worker.close();
  return count / elapsed;
}

async function latency(queue, admin, count) {
  const samples = [];
  let done;
  const worker = new Worker(
    "bench",
    async (job) => {
      samples.push(performance.now() - job.data.t0);
      done();
    },
    { connection: connection(), concurrency: 1 },
  );
  await worker.waitUntilReady();
  for (let i = 0; i < count; i += 1) {
    await blocked(admin);
    const handled = new Promise((resolve) => (done = resolve));
    await queue.add("bench", { ...payload(i), t0: performance.now() });
    await handled;
  }
  await worker.close();
  samples.sort((a, b) => a - b);
  const pick = (q) => samples[Math.min(samples.length - 1, Math.max(0, Math.round(q * samples.length + 0.5) - 1))];
  return { p50_ms: pick(0.5), p99_ms: pick(0.99) };
}

async function rep(count, admin) {
  await admin.flushall();
  const queue = new Queue("bench", { connection: connection() });
  const before = await calls(admin);
  let start = performance.now();
  for (let i = 0; i < count; i += 1) await queue.add("bench", payload(i));
  const add = count / ((performance.now() - start) / 1000);
  const drainC50 = await drain(count, 50);
  const commands = (await calls(admin) - before - 1) / count;
  await admin.flushall();
  start = performance.now();
  for (let first = 0; first < count; first += 100) {
    const jobs = [];
    for (let i = first; i < Math.min(count, first + 100); i += 1) jobs.push({ name: "bench", data: payload(i) });
    await queue.addBulk(jobs);
  }
  const addBulk = count / ((performance.now() - start) / 1000);
  const drainC1 = await drain(count, 1);
  await admin.flushall();
  const lat = await latency(queue, admin, Math.min(latencyN, count));
  await queue.close();
  return { add, add_bulk: addBulk, drain_c50: drainC50, drain_c1: drainC1, commands, ...lat };
}

const admin = connection();
await rep(Math.min(n, 1000), admin); // warm-up
const runs = [];
for (let r = 0; r < reps; r += 1) runs.push(await rep(n, admin));
await admin.quit();
const versions = {
  bullmq: require("bullmq/package.json").version,
  ioredis: require("ioredis/package.json").version,
  node: process.versions.node,
};
process.stdout.write(JSON.stringify({ runs, versions }) + "\n");
process.exit(0);
