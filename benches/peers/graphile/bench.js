#!/usr/bin/env node
// Peer benchmark for `outboxd bench`: graphile-worker doing the same job.
//
// Run it through run.sh (which installs the packages and, without
// DATABASE_URL, starts a throwaway PostgreSQL). This file:
//
// - creates a database graphile_bench_<pid> on the server of DATABASE_URL
//   and drops it at the end;
// - starts a loopback receiver (127.0.0.1, port 0) that verifies every
//   Standard Webhooks signature and records when each webhook-id arrived;
// - runs graphile-worker in-process (`run()` with a task list) on the main
//   thread, beside the receiver (`--worker-thread` gives it its own thread);
// - drain: queues N `deliver` jobs in ONE transaction, times commit -> the
//   receiver has seen all N and graphile-worker's jobs table is empty;
// - latency: 200 single jobs 20 ms apart, then single-job transactions at
//   half the measured drain rate for --phase-secs seconds from 4
//   producers; commit-to-receipt on the receiver's clock (this process);
// - checks every job id arrived exactly once with a valid signature;
// - prints ONE JSON object on stdout (outboxd bench --json's key names and
//   units) and a table on stderr.
"use strict";

const crypto = require("node:crypto");
const fs = require("node:fs");
const http = require("node:http");
const os = require("node:os");
const path = require("node:path");
const { performance } = require("node:perf_hooks");
const { Worker, isMainThread, parentPort, workerData } = require("node:worker_threads");

const TASK = "deliver";

// graphile-worker logs one line per completed job at info level (read when
// the module loads); like a deployment that keeps warnings and errors only,
// turn that off. The logger below drops the other info/debug lines too.
process.env.NO_LOG_SUCCESS = "1";

// ---------------------------------------------------------------- options --

const HELP = `Usage: bash benches/peers/graphile/run.sh [options]

graphile-worker doing outboxd bench's drain and latency job: signed
webhooks (Standard Webhooks, HMAC-SHA256) POSTed to a loopback receiver.

Options (each also as an environment variable):
  --messages N              jobs in the drained backlog, queued in one
                            transaction (BENCH_MESSAGES, default 50000)
  --concurrency N           graphile-worker concurrency, jobs in flight
                            (BENCH_CONCURRENCY, default 64: outboxd's default)
  --max-pool-size N         graphile-worker's pg pool (BENCH_MAX_POOL_SIZE,
                            default concurrency + 2, graphile's advice)
  --poll-interval MS        graphile-worker pollInterval (BENCH_POLL_INTERVAL,
                            default 2000: graphile's default; new jobs are
                            picked up through LISTEN "jobs:insert")
  --local-queue N           graphile-worker localQueue.size, batch fetching
                            (BENCH_LOCAL_QUEUE, default -1 = off, graphile's default)
  --complete-batch-delay MS graphile-worker completeJobBatchDelay
                            (BENCH_COMPLETE_BATCH_DELAY, default -1 = off)
  --http http|fetch         HTTP client of the task: node:http with a
                            keep-alive Agent (default) or global fetch (undici)
                            (BENCH_HTTP)
  --payload-bytes N         body size, as outboxd bench (BENCH_PAYLOAD_BYTES, default 256)
  --phase-secs S            steady-load latency duration (BENCH_PHASE_SECS, default 5)
  --low-load-jobs N         single jobs 20 ms apart (BENCH_LOW_LOAD_JOBS, default 200)
  --worker-thread           run graphile-worker on its own worker thread instead
                            of the main thread, which it otherwise shares with
                            the receiver and the producers (BENCH_WORKER_THREAD=1)
  --help                    this text

DATABASE_URL: a server to create the bench database on (needs CREATEDB);
unset, run.sh starts a throwaway PostgreSQL with fsync on.
`;

function parseOptions(argv) {
  const env = process.env;
  const spec = {
    messages: ["BENCH_MESSAGES", 50000, "int"],
    concurrency: ["BENCH_CONCURRENCY", 64, "int"],
    "max-pool-size": ["BENCH_MAX_POOL_SIZE", null, "int"],
    "poll-interval": ["BENCH_POLL_INTERVAL", 2000, "int"],
    "local-queue": ["BENCH_LOCAL_QUEUE", -1, "int"],
    "complete-batch-delay": ["BENCH_COMPLETE_BATCH_DELAY", -1, "int"],
    http: ["BENCH_HTTP", "http", "string"],
    "payload-bytes": ["BENCH_PAYLOAD_BYTES", 256, "int"],
    "phase-secs": ["BENCH_PHASE_SECS", 5, "float"],
    "low-load-jobs": ["BENCH_LOW_LOAD_JOBS", 200, "int"],
    "worker-thread": ["BENCH_WORKER_THREAD", false, "bool"],
  };
  const raw = {};
  for (const [name, [envName, def]] of Object.entries(spec)) {
    raw[name] = env[envName] !== undefined && env[envName] !== "" ? env[envName] : def;
  }
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i];
    if (arg === "--help" || arg === "-h") {
      process.stdout.write(HELP);
      process.exit(0);
    }
    if (!arg.startsWith("--")) throw new Error(`unexpected argument ${arg} (see --help)`);
    arg = arg.slice(2);
    let value;
    const eq = arg.indexOf("=");
    if (eq >= 0) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    if (!(arg in spec)) throw new Error(`unknown option --${arg} (see --help)`);
    if (spec[arg][2] === "bool") {
      raw[arg] = value === undefined ? true : value;
      continue;
    }
    if (value === undefined) {
      if (i + 1 >= argv.length) throw new Error(`--${arg} needs a value`);
      value = argv[++i];
    }
    raw[arg] = value;
  }
  const out = {};
  for (const [name, [, , kind]] of Object.entries(spec)) {
    let v = raw[name];
    if (v === null) {
      out[name] = null;
      continue;
    }
    if (kind === "int") {
      v = Number(v);
      if (!Number.isInteger(v)) throw new Error(`--${name} must be an integer, got ${raw[name]}`);
    } else if (kind === "float") {
      v = Number(v);
      if (!Number.isFinite(v)) throw new Error(`--${name} must be a number, got ${raw[name]}`);
    } else if (kind === "bool") {
      v = v === true || v === "1" || v === "true" || v === "yes";
    }
    out[name] = v;
  }
  const o = {
    messages: out.messages,
    concurrency: out.concurrency,
    maxPoolSize: out["max-pool-size"] ?? Math.max(10, out.concurrency + 2),
    pollInterval: out["poll-interval"],
    localQueue: out["local-queue"],
    completeBatchDelay: out["complete-batch-delay"],
    http: out.http,
    payloadBytes: out["payload-bytes"],
    phaseSecs: out["phase-secs"],
    lowLoadJobs: out["low-load-jobs"],
    sameThread: !out["worker-thread"],
  };
  if (o.messages < 1) throw new Error("--messages must be at least 1");
  if (o.concurrency < 1) throw new Error("--concurrency must be at least 1");
  if (o.maxPoolSize < 2) throw new Error("--max-pool-size must be at least 2");
  if (o.pollInterval < 1) throw new Error("--poll-interval must be at least 1");
  if (!["http", "fetch"].includes(o.http)) throw new Error("--http must be http or fetch");
  if (o.phaseSecs < 0.5) o.phaseSecs = 0.5;
  if (o.lowLoadJobs < 1) throw new Error("--low-load-jobs must be at least 1");
  if (o.payloadBytes < 0) throw new Error("--payload-bytes must be >= 0");
  return o;
}

// ------------------------------------------------------------------ utils --

const startedAt = performance.now();
function progress(text) {
  const s = ((performance.now() - startedAt) / 1000).toFixed(1).padStart(5);
  process.stderr.write(`[${s}s] ${text}\n`);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitFor(timeoutMs, what, check, everyMs = 20) {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

/** Same ranks as outboxd bench: samples[round((len - 1) * p)]. */
function percentiles(samples) {
  if (samples.length === 0) return [0, 0, 0];
  samples.sort((a, b) => a - b);
  const at = (p) => samples[Math.round((samples.length - 1) * p)];
  return [at(0.5), at(0.95), at(0.99)];
}

function withDatabase(url, database) {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}

function redact(url) {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    return "(unparsable URL)";
  }
}

/** The whsec_ secret format outboxd and Standard Webhooks use. */
function generateSecret() {
  return `whsec_${crypto.randomBytes(24).toString("base64")}`;
}

function secretKey(whsec) {
  return Buffer.from(whsec.replace(/^whsec_/, ""), "base64");
}

function sign(key, id, timestamp, body) {
  return crypto.createHmac("sha256", key).update(`${id}.${timestamp}.`).update(body).digest("base64");
}

function graphileVersion() {
  // Not require("graphile-worker/package.json"): newer versions' "exports"
  // do not list it. Walk up from the entry point instead.
  let dir = path.dirname(require.resolve("graphile-worker"));
  for (let i = 0; i < 5; i++, dir = path.dirname(dir)) {
    const file = path.join(dir, "package.json");
    if (fs.existsSync(file)) {
      const pkg = JSON.parse(fs.readFileSync(file, "utf8"));
      if (pkg.name === "graphile-worker") return pkg.version;
    }
  }
  return "unknown";
}

/** CPU seconds (user + system) of one thread of this process. */
function threadCpuSeconds(tid) {
  try {
    const stat = fs.readFileSync(`/proc/self/task/${tid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const ticks = Number(fields[11]) + Number(fields[12]); // utime, stime
    return ticks / 100; // USER_HZ is 100 on Linux
  } catch {
    return null;
  }
}

function threadIds() {
  try {
    return new Set(fs.readdirSync("/proc/self/task"));
  } catch {
    return new Set();
  }
}

function peakRssBytes() {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync("/proc/self/status", "utf8"));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

// --------------------------------------------------------------- receiver --

/**
 * A loopback webhook receiver: verifies each request's Standard Webhooks
 * signature, records the first arrival time (performance.now(), this
 * process's clock) and the count per webhook-id, answers 200.
 */
function startReceiver(whsec) {
  const key = secretKey(whsec);
  const seen = new Map(); // id -> { count, at, bad }
  // Distinct ids per prefix ("drain-", "low-", ...), so that waiting for a
  // phase costs O(1) per check, not a walk over every id.
  const distinctByPrefix = new Map();
  const state = { total: 0, invalid: 0, seen, distinctByPrefix, firstInvalid: null };
  const server = http.createServer((req, res) => {
    const at = performance.now();
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      const id = req.headers["webhook-id"] || "";
      const ts = req.headers["webhook-timestamp"] || "";
      const sigs = req.headers["webhook-signature"] || "";
      let ok = false;
      const tsNum = Number(ts);
      if (id && /^\d+$/.test(ts) && Math.abs(Date.now() / 1000 - tsNum) <= 300) {
        const expected = Buffer.from(sign(key, id, ts, body), "base64");
        for (const part of sigs.split(" ")) {
          const comma = part.indexOf(",");
          if (comma < 0 || part.slice(0, comma) !== "v1") continue;
          const got = Buffer.from(part.slice(comma + 1), "base64");
          if (got.length === expected.length && crypto.timingSafeEqual(got, expected)) {
            ok = true;
            break;
          }
        }
      }
      state.total++;
      if (!ok) {
        state.invalid++;
        if (!state.firstInvalid) state.firstInvalid = { id, ts, sigs };
      }
      const entry = seen.get(id);
      if (entry) {
        entry.count++;
        if (!ok) entry.bad++;
      } else {
        seen.set(id, { count: 1, at, bad: ok ? 0 : 1 });
        const prefix = id.slice(0, id.indexOf("-") + 1);
        distinctByPrefix.set(prefix, (distinctByPrefix.get(prefix) || 0) + 1);
      }
      res.writeHead(200, { "content-type": "text/plain", "content-length": "2" });
      res.end("ok");
    });
  });
  // Idle keep-alive connections between phases must not be closed under a
  // client that is about to reuse them (a spurious ECONNRESET would make
  // graphile-worker retry, and the exactly-once check fail).
  server.keepAliveTimeout = 300_000;
  server.headersTimeout = 310_000;
  server.requestTimeout = 0;
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      resolve({
        url: `http://127.0.0.1:${port}/webhook`,
        state,
        close: () =>
          new Promise((r) => {
            server.closeAllConnections?.();
            server.close(() => r());
          }),
      });
    });
  });
}

// ------------------------------------------------------------ the worker --

/** The `deliver` task: sign `{id, body}` like outboxd and POST it. */
function makeDeliver({ url, whsec, concurrency, httpClient }) {
  const key = secretKey(whsec);
  const target = new URL(url);
  const headersFor = (id, body) => {
    const timestamp = Math.floor(Date.now() / 1000);
    return {
      "content-type": "application/json",
      "user-agent": "graphile-worker-peer-bench",
      "webhook-id": id,
      "webhook-timestamp": String(timestamp),
      "webhook-signature": `v1,${sign(key, id, timestamp, body)}`,
    };
  };

  if (httpClient === "fetch") {
    return async (payload) => {
      const { id, body } = payload;
      const response = await fetch(url, {
        method: "POST",
        headers: headersFor(id, body),
        body,
        signal: AbortSignal.timeout(30_000),
      });
      await response.arrayBuffer();
      if (response.status < 200 || response.status > 299) {
        throw new Error(`receiver answered ${response.status}`);
      }
    };
  }

  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency, maxFreeSockets: concurrency });
  return (payload) =>
    new Promise((resolve, reject) => {
      const { id, body } = payload;
      const bytes = Buffer.from(body);
      const headers = headersFor(id, bytes);
      headers["content-length"] = String(bytes.length);
      const req = http.request(
        {
          host: target.hostname,
          port: target.port,
          path: target.pathname,
          method: "POST",
          agent,
          headers,
          timeout: 30_000,
        },
        (res) => {
          res.on("data", () => {});
          res.on("end", () => {
            if (res.statusCode >= 200 && res.statusCode <= 299) resolve();
            else reject(new Error(`receiver answered ${res.statusCode}`));
          });
          res.on("error", reject);
        },
      );
      req.on("timeout", () => req.destroy(new Error("request timed out after 30 s")));
      req.on("error", reject);
      req.end(bytes);
    });
}

/**
 * Starts graphile-worker's `run()` with the `deliver` task list. Calls
 * `onReady` once the pool's LISTEN connection is up; returns `stop()`.
 */
async function startGraphile(cfg, onReady) {
  const { run } = require("graphile-worker");
  const { EventEmitter } = require("node:events");
  const logger = quietLogger();
  const events = new EventEmitter();
  let ready = false;
  events.on("pool:listen:success", () => {
    if (!ready) {
      ready = true;
      onReady();
    }
  });
  const workerPreset = {};
  if (cfg.localQueue > 1) workerPreset.localQueue = { size: cfg.localQueue };
  if (cfg.completeBatchDelay >= 0) workerPreset.completeJobBatchDelay = cfg.completeBatchDelay;
  // Our own pool (graphile-worker's `pgPool` option) so that stopping can
  // wait for its connections to close: with `connectionString`, graphile
  // ends its pool without waiting and removes its error handlers first, and
  // dropping the bench database right after then crashes the process.
  const pg = require("pg");
  const pgPool = new pg.Pool({ connectionString: cfg.databaseUrl, max: cfg.maxPoolSize });
  let stopping = false;
  const onPgError = (error) => {
    if (!stopping) process.stderr.write(`graphile-worker pool: ${error.message}\n`);
  };
  pgPool.on("error", onPgError);
  pgPool.on("connect", (c) => c.on("error", onPgError));
  const runner = await run({
    pgPool,
    concurrency: cfg.concurrency,
    pollInterval: cfg.pollInterval,
    noHandleSignals: true,
    logger,
    events,
    parsedCronItems: [],
    taskList: {
      [TASK]: makeDeliver({
        url: cfg.receiverUrl,
        whsec: cfg.whsec,
        concurrency: cfg.concurrency,
        httpClient: cfg.http,
      }),
    },
    preset: { worker: workerPreset },
  });
  return {
    stop: async () => {
      await runner.stop();
      stopping = true;
      await pgPool.end();
    },
  };
}

/** Entry point of the worker thread. */
async function workerThreadMain(cfg) {
  const graphile = await startGraphile(cfg, () => parentPort.postMessage({ type: "ready" }));
  parentPort.on("message", async (message) => {
    if (message && message.type === "stop") {
      try {
        await graphile.stop();
      } finally {
        parentPort.postMessage({ type: "stopped" });
        parentPort.close();
      }
    }
  });
}

/** Runs graphile-worker on this thread (default) or on a worker thread. */
async function startWorker(cfg, sameThread) {
  if (sameThread) {
    let resolveReady;
    const ready = new Promise((r) => (resolveReady = r));
    const graphile = await startGraphile(cfg, () => resolveReady());
    await withTimeout(ready, 30_000, "graphile-worker to LISTEN");
    return { tid: null, failed: () => null, stop: () => graphile.stop() };
  }
  const before = threadIds();
  const worker = new Worker(__filename, { workerData: cfg });
  let failed = null;
  const stopped = new Promise((resolve) => {
    worker.on("message", (m) => {
      if (m.type === "stopped") resolve();
    });
    worker.on("exit", () => resolve());
  });
  const ready = new Promise((resolve, reject) => {
    worker.on("message", (m) => {
      if (m.type === "ready") resolve();
      if (m.type === "error") {
        failed = new Error(`graphile-worker thread: ${m.error}`);
        reject(failed);
      }
    });
    worker.on("error", (e) => {
      failed = failed || e;
      reject(e);
    });
    worker.on("exit", (code) => reject(new Error(`graphile-worker thread exited (${code})`)));
  });
  await withTimeout(ready, 30_000, "graphile-worker to LISTEN");
  // The one thread that appeared is the worker's JavaScript thread.
  const added = [...threadIds()].filter((t) => !before.has(t));
  return {
    tid: added.length === 1 ? added[0] : null,
    failed: () => failed,
    stop: async () => {
      worker.postMessage({ type: "stop" });
      try {
        await withTimeout(stopped, 15_000, "graphile-worker to stop");
      } catch {
        await worker.terminate();
      }
    },
  };
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    }),
  ]);
}

// ----------------------------------------------------------------- phases --

/** Distinct ids received so far whose prefix (up to the first "-") is `prefix`. */
function receivedWithPrefix(receiver, prefix) {
  return receiver.state.distinctByPrefix.get(prefix) || 0;
}

/** Every id `${prefix}${1..count}` (or the given ids) arrived exactly once, verified. */
function checkExactlyOnce(receiver, ids, what) {
  let missing = 0;
  let duplicated = 0;
  let invalid = 0;
  for (const id of ids) {
    const e = receiver.state.seen.get(id);
    if (!e) missing++;
    else {
      if (e.count !== 1) duplicated++;
      if (e.bad > 0) invalid++;
    }
  }
  if (missing || duplicated || invalid) {
    throw new Error(
      `${what}: ${missing} missing, ${duplicated} received more than once, ${invalid} with an invalid signature (of ${ids.length})`,
    );
  }
}

async function jobsLeft(client) {
  const r = await client.query("SELECT count(*)::bigint AS n FROM graphile_worker._private_jobs");
  return Number(r.rows[0].n);
}

async function drain(ctx) {
  const { client, receiver, options, worker } = ctx;
  const n = options.messages;
  const pad = "x".repeat(Math.max(0, options.payloadBytes - 40));
  progress(`  queueing ${n} jobs in one transaction (graphile_worker.add_jobs)`);
  const cpuBefore = worker.tid ? threadCpuSeconds(worker.tid) : null;
  const processCpuBefore = process.cpuUsage();
  // One statement, one transaction; the body is the same JSON object outboxd
  // bench inserts (jsonb text of {"n": g, "pad": "x..."}). add_jobs sends one
  // NOTIFY "jobs:insert" with the count, which nudges the idle workers.
  await client.query(
    `SELECT count(*) FROM graphile_worker.add_jobs(ARRAY(
       SELECT ROW($3::text,
                  json_build_object('id', 'drain-' || g,
                                    'body', jsonb_build_object('n', g, 'pad', $2::text)::text),
                  NULL, NULL, NULL, NULL, NULL, NULL)::graphile_worker.job_spec
       FROM generate_series(1, $1::int) g))`,
    [n, pad, TASK],
  );
  const started = performance.now();
  let lastReport = started;
  for (;;) {
    const got = receivedWithPrefix(receiver, "drain-");
    if (got >= n) break;
    const failed = worker.failed && worker.failed();
    if (failed) throw failed;
    if (performance.now() - started > 600_000) throw new Error(`drain stalled at ${got}/${n}`);
    if (performance.now() - lastReport > 2000) {
      progress(`  drained ${got}/${n}`);
      lastReport = performance.now();
    }
    await sleep(5);
  }
  const receivedAll = performance.now();
  await waitFor(60_000, "graphile-worker to mark every job done", async () => (await jobsLeft(client)) === 0, 5);
  const elapsed = (performance.now() - started) / 1000;
  const cpuAfter = worker.tid ? threadCpuSeconds(worker.tid) : null;
  const processCpu = process.cpuUsage(processCpuBefore);
  const ids = [];
  for (let i = 1; i <= n; i++) ids.push(`drain-${i}`);
  checkExactlyOnce(receiver, ids, "drain");
  const result = {
    deliveriesPerSec: n / elapsed,
    receiptsPerSec: n / ((receivedAll - started) / 1000),
    cpuMsPer1k: cpuBefore !== null && cpuAfter !== null ? ((cpuAfter - cpuBefore) * 1000) / (n / 1000) : null,
    processCpuMsPer1k: (processCpu.user + processCpu.system) / 1000 / (n / 1000),
    delivered: n,
  };
  progress(
    `  ${result.deliveriesPerSec.toFixed(0)} deliveries/s` +
      (result.cpuMsPer1k !== null ? `, ${result.cpuMsPer1k.toFixed(1)} ms worker-thread CPU per 1,000` : ""),
  );
  return result;
}

/**
 * Adds `count` jobs one per transaction at `rate` per second from
 * `producers` connections; commit-to-receipt for each, on this process's
 * clock. Like outboxd bench, a producer that falls behind catches up in a
 * burst.
 */
async function latency(ctx, rate, count, producers, prefix) {
  const { pg, databaseUrl, receiver } = ctx;
  const intervalMs = (producers * 1000) / rate;
  const committed = new Map();
  const clients = [];
  try {
    for (let p = 0; p < producers; p++) {
      const c = new pg.Client({ connectionString: databaseUrl });
      await c.connect();
      clients.push(c);
    }
    const started = performance.now();
    await Promise.all(
      clients.map(async (c, p) => {
        const insert = {
          name: "add_job",
          text: "SELECT (graphile_worker.add_job($1::text, $2::json)).id",
        };
        let k = 0;
        for (let n = p; n < count; n += producers, k++) {
          const due = started + k * intervalMs;
          const wait = due - performance.now();
          if (wait > 0) await sleep(wait);
          const id = `${prefix}${n}`;
          const body = "{}"; // outboxd bench's latency messages carry '{}' too
          await c.query({ ...insert, values: [TASK, JSON.stringify({ id, body })] });
          committed.set(id, performance.now());
        }
      }),
    );
    const offered = count / ((performance.now() - started) / 1000);
    await waitFor(60_000, `every ${prefix}job to arrive`, () => receivedWithPrefix(receiver, prefix) >= count, 5);
    checkExactlyOnce(receiver, [...committed.keys()], `${prefix}latency`);
    const samples = [];
    for (const [id, at] of committed) samples.push(Math.max(0, receiver.state.seen.get(id).at - at));
    const [p50, p95, p99] = percentiles(samples);
    return { p50, p95, p99, offered_per_sec: offered };
  } finally {
    await Promise.all(clients.map((c) => c.end().catch(() => {})));
  }
}

// ------------------------------------------------------------------ table --

function renderTable(report) {
  const lat = (l) =>
    `p50 ${l.p50.toFixed(2)} / p95 ${l.p95.toFixed(2)} / p99 ${l.p99.toFixed(2)} ms at ${l.offered_per_sec.toFixed(0)}/s`;
  const o = report.options;
  const rows = [
    ["peer", report.peer],
    ["deliveries/s (drain)", `${report.deliveries_per_sec.toFixed(0)}  (${report.delivered_exactly_once} deliveries, each once, verified)`],
    ["latency, low load", lat(report.latency_low_load_ms)],
    ["latency, half the drain rate", lat(report.latency_ms)],
    [
      "worker-thread CPU per 1,000 deliveries",
      report.cpu_ms_per_1k_deliveries === null ? "n/a (same thread; see the next line)" : `${report.cpu_ms_per_1k_deliveries.toFixed(1)} ms`,
    ],
    ["process CPU per 1,000 (worker + receiver)", `${report.process_cpu_ms_per_1k_deliveries.toFixed(1)} ms`],
    ["process peak RSS (worker + receiver)", `${(report.process_peak_rss_bytes / 1048576).toFixed(1)} MiB`],
    [
      "machine",
      `${report.machine.cores} cores, ${(report.machine.memory_bytes / 1073741824).toFixed(1)} GiB, PostgreSQL ${report.machine.postgres_version}, load ${report.machine.load_average_start.map((x) => x.toFixed(2)).join(" ")} -> ${report.machine.load_average_end.map((x) => x.toFixed(2)).join(" ")}`,
    ],
    [
      "run",
      `${o.messages} jobs, concurrency ${o.concurrency}, pool ${o.max_pool_size}, pollInterval ${o.poll_interval_ms} ms, localQueue ${o.local_queue_size}, completeJobBatchDelay ${o.complete_job_batch_delay_ms}, ${o.http_client}, ${o.worker_thread ? "worker thread" : "same thread"}, ${o.payload_bytes} B payload`,
    ],
  ];
  const w0 = Math.max("measure".length, ...rows.map((r) => r[0].length));
  const w1 = Math.max("result".length, ...rows.map((r) => r[1].length));
  const line = (a, b) => `| ${a.padEnd(w0)} | ${b.padEnd(w1)} |\n`;
  const sep = `|${"-".repeat(w0 + 2)}|${"-".repeat(w1 + 2)}|\n`;
  return line("measure", "result") + sep + rows.map(([a, b]) => line(a, b)).join("");
}

// ------------------------------------------------------------------- main --

async function main() {
  let options;
  try {
    options = parseOptions(process.argv.slice(2));
  } catch (error) {
    process.stderr.write(`bench: ${error.message}\n`);
    return 2;
  }
  // run.sh checks the options this way before it starts PostgreSQL.
  if (process.env.BENCH_VALIDATE_ONLY === "1") return 0;
  const adminUrl = process.env.DATABASE_URL;
  if (!adminUrl) {
    throw new Error("DATABASE_URL is not set: run bash benches/peers/graphile/run.sh, which starts a throwaway PostgreSQL");
  }
  const pg = require("pg");
  const version = graphileVersion();
  const loadStart = os.loadavg();
  const dbName = `graphile_bench_${process.pid}`;
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  let created = false;
  let receiver = null;
  let worker = null;
  let client = null;
  let interrupted = false;

  const cleanup = async () => {
    if (worker) await worker.stop().catch((e) => progress(`stopping graphile-worker: ${e}`));
    worker = null;
    if (client) await client.end().catch(() => {});
    client = null;
    if (receiver) await receiver.close();
    receiver = null;
    if (created) {
      await admin
        .query(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`)
        .catch(() => admin.query(`DROP DATABASE IF EXISTS ${dbName}`))
        .catch((e) => progress(`could not drop ${dbName}: ${e.message}`));
      created = false;
    }
    await admin.end().catch(() => {});
  };
  const onSignal = (signal) => {
    if (interrupted) return;
    interrupted = true;
    progress(`${signal}: cleaning up`);
    const hardExit = setTimeout(() => process.exit(130), 10_000);
    cleanup().finally(() => {
      clearTimeout(hardExit);
      process.exit(130);
    });
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  try {
    await admin.query(`CREATE DATABASE ${dbName}`);
    created = true;
    const databaseUrl = withDatabase(adminUrl, dbName);
    progress(
      `database ${dbName} on ${process.env.BENCH_DATABASE_KIND === "throwaway" ? "the throwaway cluster" : redact(adminUrl)}`,
    );
    client = new pg.Client({ connectionString: databaseUrl });
    await client.connect();
    const postgresVersion = (await client.query("SHOW server_version")).rows[0].server_version;

    progress(`graphile-worker ${version}: migrating its schema`);
    const { runMigrations } = require("graphile-worker");
    await runMigrations({ connectionString: databaseUrl, logger: quietLogger() });

    const whsec = generateSecret();
    receiver = await startReceiver(whsec);
    progress(
      `receiver on ${receiver.url}; starting graphile-worker (concurrency ${options.concurrency}, pool ${options.maxPoolSize}, ${options.sameThread ? "main thread" : "worker thread"}, ${options.http})`,
    );
    worker = await startWorker(
      {
        databaseUrl,
        receiverUrl: receiver.url,
        whsec,
        concurrency: options.concurrency,
        maxPoolSize: options.maxPoolSize,
        pollInterval: options.pollInterval,
        localQueue: options.localQueue,
        completeBatchDelay: options.completeBatchDelay,
        http: options.http,
      },
      options.sameThread,
    );
    // As outboxd bench waits for its sidecars' LISTEN: the pool's listening
    // connection has run LISTEN "jobs:insert".
    await waitFor(30_000, "graphile-worker's LISTEN", async () => {
      const r = await client.query(
        `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN "jobs:insert"%'`,
      );
      return r.rows[0].n >= 1;
    });
    const ctx = { pg, client, databaseUrl, receiver, options, worker };

    progress("drain");
    const drained = await drain(ctx);

    progress(`  latency at low load: ${options.lowLoadJobs} single jobs 20 ms apart`);
    const low = await latency(ctx, 50, options.lowLoadJobs, 1, "low-");
    const rate = Math.max(1, drained.deliveriesPerSec / 2);
    const count = Math.ceil(rate * options.phaseSecs);
    progress(`  latency at half the sustained rate: ${rate.toFixed(0)} jobs/s for ${options.phaseSecs} s (4 producers)`);
    const steady = await latency(ctx, rate, count, 4, "steady-");
    await waitFor(60_000, "the jobs table to empty", async () => (await jobsLeft(client)) === 0, 20);
    if (receiver.state.invalid > 0) {
      throw new Error(`${receiver.state.invalid} request(s) had an invalid signature, e.g. ${JSON.stringify(receiver.state.firstInvalid)}`);
    }
    const expectedTotal = options.messages + options.lowLoadJobs + count;
    if (receiver.state.total !== expectedTotal) {
      throw new Error(`the receiver saw ${receiver.state.total} requests, expected ${expectedTotal}`);
    }

    const report = {
      peer: `graphile-worker ${version}`,
      deliveries_per_sec: drained.deliveriesPerSec,
      delivered_exactly_once: drained.delivered,
      latency_ms: steady,
      latency_low_load_ms: low,
      cpu_ms_per_1k_deliveries: drained.cpuMsPer1k,
      process_cpu_ms_per_1k_deliveries: drained.processCpuMsPer1k,
      process_peak_rss_bytes: peakRssBytes(),
      receipts_per_sec: drained.receiptsPerSec,
      options: {
        messages: options.messages,
        replicas: 1,
        concurrency: options.concurrency,
        payload_bytes: options.payloadBytes,
        endpoints: 1,
        fan_out: 1,
        phase_secs: options.phaseSecs,
        low_load_jobs: options.lowLoadJobs,
        max_pool_size: options.maxPoolSize,
        poll_interval_ms: options.pollInterval,
        local_queue_size: options.localQueue,
        complete_job_batch_delay_ms: options.completeBatchDelay,
        http_client: options.http === "fetch" ? "fetch (undici, keep-alive)" : "node:http, keep-alive Agent",
        worker_thread: !options.sameThread,
        enqueue: "graphile_worker.add_jobs, one transaction",
        database: process.env.BENCH_DATABASE_KIND === "throwaway" ? "throwaway cluster, fsync on" : "DATABASE_URL server",
      },
      machine: {
        cores: typeof os.availableParallelism === "function" ? os.availableParallelism() : os.cpus().length,
        memory_bytes: os.totalmem(),
        postgres_version: postgresVersion,
        node_version: process.versions.node,
        load_average_start: loadStart,
        load_average_end: os.loadavg(),
      },
    };
    await cleanup();
    process.stderr.write(renderTable(report));
    process.stdout.write(`${JSON.stringify(report)}\n`);
    return 0;
  } catch (error) {
    if (interrupted) return 130;
    progress(`FAILED: ${error && error.message ? error.message : error}`);
    await cleanup();
    return 1;
  }
}

function quietLogger() {
  const { Logger } = require("graphile-worker");
  return new Logger(() => (level, message) => {
    if (level === "error" || level === "warning") process.stderr.write(`graphile-worker ${level}: ${message}\n`);
  });
}

// ------------------------------------------------------------ entry point --

if (isMainThread) {
  main().then(
    (code) => {
      process.exitCode = code;
    },
    (error) => {
      console.error(`bench: ${error && error.stack ? error.stack : error}`);
      process.exitCode = 1;
    },
  );
} else {
  workerThreadMain(workerData).catch((error) => {
    parentPort.postMessage({ type: "error", error: String(error && error.stack ? error.stack : error) });
  });
}
