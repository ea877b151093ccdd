// Node clients of breakwater's interop matrix: built-in fetch (undici), http,
// http2, and the `ws` package. Run by tests/interop/matrix.py with the addresses
// as JSON in argv[2]; prints one tab-separated CELL line per cell.
'use strict';
const http = require('node:http');
const http2 = require('node:http2');
const crypto = require('node:crypto');
const fs = require('node:fs');

const cfg = JSON.parse(process.argv[2]);
const payload = fs.readFileSync(cfg.payload);
const sha = (b) => crypto.createHash('sha256').update(b).digest('hex');
const MIB = 1024 * 1024;

function check(cond, msg) {
  if (!cond) throw new Error(msg);
}
function eq(got, want, what) {
  check(got === want, `${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
}

async function cell(client, server, path, name, fn) {
  const t0 = Date.now();
  let ok = true;
  let detail = '';
  try {
    detail = (await withTimeout(fn(), 15000)) || '';
  } catch (e) {
    ok = false;
    detail = `${e && e.name}: ${e && e.message}${e && e.cause ? ` (cause: ${e.cause.code || e.cause.message})` : ''}`;
  }
  const clean = String(detail).replace(/[\t\r\n]+/g, ' ');
  console.log(['CELL', client, server, path, name, ok ? 'PASS' : 'FAIL', Date.now() - t0, clean].join('\t'));
}

function withTimeout(p, ms) {
  let timer;
  return Promise.race([
    p,
    new Promise((_, rej) => {
      timer = setTimeout(() => rej(new Error(`no result in ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

function checkSse(body, tFirst, tEnd, first) {
  check(first.includes('data: one'), `first read was ${JSON.stringify(first)}`);
  check(body.includes('data: two'), `stream ended without event two: ${JSON.stringify(body)}`);
  check(tFirst < cfg.sseFirstWithin * 1000, `first event after ${tFirst} ms (buffered?)`);
  check(tEnd - tFirst >= cfg.sseGapAtLeast * 1000, `events ${tEnd - tFirst} ms apart: buffered`);
  return `first event at ${tFirst} ms, end at ${tEnd} ms`;
}

// http.request: to `addr` with `path` (absolute-form for the proxy path) and headers.
function h1(addr, path, { method = 'GET', headers = {}, body } = {}) {
  const [host, port] = addr.split(':');
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    let tFirst = null;
    const req = http.request({ host, port, path, method, headers, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (c) => {
        if (tFirst === null) tFirst = Date.now() - t0;
        chunks.push(c);
      });
      res.on('end', () =>
        resolve({
          status: res.statusCode,
          headers: res.headers,
          body: Buffer.concat(chunks),
          tFirst,
          tEnd: Date.now() - t0,
          first: chunks[0] || Buffer.alloc(0),
        }),
      );
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

// http2: one request on a fresh h2c session to `addr`, :authority = `authority`.
function h2(addr, authority, path, { method = 'GET', body, onFirst } = {}) {
  return new Promise((resolve, reject) => {
    const session = http2.connect(`http://${addr}`);
    session.on('error', reject);
    const t0 = Date.now();
    const req = session.request({ ':method': method, ':path': path, ':authority': authority, ':scheme': 'http' });
    let status;
    let tFirst = null;
    const chunks = [];
    req.on('response', (h) => {
      status = h[':status'];
    });
    req.on('data', (c) => {
      if (tFirst === null) tFirst = Date.now() - t0;
      chunks.push(c);
      if (onFirst && chunks.length === 1) onFirst(c);
    });
    req.on('end', () => {
      session.close();
      resolve({ status, body: Buffer.concat(chunks), tFirst, tEnd: Date.now() - t0, first: chunks[0] || Buffer.alloc(0) });
    });
    req.on('error', (e) => {
      session.destroy();
      reject(e);
    });
    req.end(body);
  });
}

async function fetchSse(url, init = {}) {
  const t0 = Date.now();
  const res = await fetch(url, init);
  eq(res.status, 200, 'status');
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  const { value } = await reader.read();
  const tFirst = Date.now() - t0;
  const first = dec.decode(value);
  let body = first;
  for (;;) {
    const { value: v, done } = await reader.read();
    if (done) break;
    body += dec.decode(v);
  }
  return checkSse(body, tFirst, Date.now() - t0, first);
}

async function untilCircuitOpen(send) {
  const seen = [];
  for (let i = 0; i < 8; i++) {
    const { status, headers } = await send();
    seen.push(status);
    if (status === 503 && headers['x-breakwater-reason'] === 'circuit-open') {
      check(headers['retry-after'], 'circuit-open without Retry-After');
      return `statuses ${seen}, retry-after ${headers['retry-after']}`;
    }
  }
  throw new Error(`no circuit-open after 8 requests: statuses ${seen}`);
}

async function wsEcho(url, headers) {
  const WebSocket = require('ws');
  const ws = new WebSocket(url, { headers, handshakeTimeout: 5000 });
  const msgs = ['hello', 'y'.repeat(70000)];
  await new Promise((res, rej) => {
    ws.once('open', res);
    ws.once('error', rej);
  });
  try {
    for (const m of msgs) {
      const back = new Promise((res, rej) => {
        ws.once('message', (d) => res(d.toString()));
        ws.once('error', rej);
      });
      ws.send(m);
      eq(await back, m, 'echo');
    }
  } finally {
    ws.close();
  }
  return `${msgs.length} messages echoed (up to 70000 bytes)`;
}

async function main() {
  const inb = `http://${cfg.inbound}`;
  const py = cfg.py;
  const f = 'node fetch (undici)';
  await cell(f, 'python h1', 'inbound', 'GET status+body', async () => {
    const r = await fetch(`${inb}/hello`);
    eq(r.status, 200, 'status');
    eq(await r.text(), 'hello from python\n', 'body');
    return '200';
  });
  await cell(f, 'python h1', 'inbound', '1 MiB download sha256', async () => {
    const r = await fetch(`${inb}/download`);
    const b = Buffer.from(await r.arrayBuffer());
    eq(b.length, MIB, 'length');
    eq(sha(b), cfg.sha, 'sha256');
    return '1 MiB intact';
  });
  await cell(f, 'python h1', 'inbound', '1 MiB upload sha256', async () => {
    const r = await fetch(`${inb}/upload`, { method: 'POST', body: payload });
    eq((await r.json()).sha256, cfg.sha, 'sha256 at the app');
    return '1 MiB intact';
  });
  await cell(f, 'python h1', 'inbound', 'SSE incremental', () => fetchSse(`${inb}/sse`));
  // fetch drops a Host header it is given (undici), and has no HTTP_PROXY
  // support: the outbound cells use node:http, which sends Host as told.
  const n = 'node http';
  await cell(n, 'python h1', 'outbound Host', 'GET status+body', async () => {
    const r = await h1(cfg.outbound, '/hello', { headers: { host: py } });
    eq(r.status, 200, 'status');
    eq(r.body.toString(), 'hello from python\n', 'body');
    return '200';
  });
  await cell(n, 'python h1', 'outbound Host', 'SSE incremental', async () => {
    const r = await h1(cfg.outbound, '/sse', { headers: { host: py } });
    eq(r.status, 200, 'status');
    return checkSse(r.body.toString(), r.tFirst, r.tEnd, r.first.toString());
  });
  await cell(n, 'python h1', 'outbound Host', '1 MiB download sha256', async () => {
    const r = await h1(cfg.outbound, '/download', { headers: { host: py } });
    eq(r.status, 200, 'status');
    eq(sha(r.body), cfg.sha, 'sha256');
    return '1 MiB intact';
  });
  await cell(n, 'python h1', 'outbound absolute-form', '1 MiB upload sha256', async () => {
    const r = await h1(cfg.outbound, `http://${py}/upload`, { method: 'POST', body: payload, headers: { host: py } });
    eq(r.status, 200, 'status');
    eq(JSON.parse(r.body).sha256, cfg.sha, 'sha256 at the app');
    return '1 MiB intact';
  });
  await cell(n, 'python 503,503,200', 'outbound absolute-form', 'retried to 200, 3 hits', async () => {
    const r = await h1(cfg.outbound, `http://${cfg.flaky}/flaky/node`, { headers: { host: cfg.flaky } });
    eq(r.status, 200, 'status');
    const hits = await h1(cfg.flaky, '/hits/node');
    eq(hits.body.toString(), '3', 'upstream hits');
    return '200 after 503, 503';
  });
  await cell(n, 'python always 503', 'outbound absolute-form', 'circuit-open + Retry-After', () =>
    untilCircuitOpen(() => h1(cfg.outbound, `http://${cfg.broken}/x`, { headers: { host: cfg.broken } })),
  );

  const c2 = 'node http2 (h2c)';
  await cell(c2, 'python h1', 'inbound', 'GET status+body', async () => {
    const r = await h2(cfg.inbound, cfg.inbound, '/hello');
    eq(r.status, 200, 'status');
    eq(r.body.toString(), 'hello from python\n', 'body');
    return '200';
  });
  await cell(c2, 'python h1', 'inbound', '1 MiB upload sha256', async () => {
    const r = await h2(cfg.inbound, cfg.inbound, '/upload', { method: 'POST', body: payload });
    eq(r.status, 200, 'status');
    eq(JSON.parse(r.body).sha256, cfg.sha, 'sha256 at the app');
    return '1 MiB intact';
  });
  await cell(c2, 'python h1', 'inbound', 'SSE incremental', async () => {
    const r = await h2(cfg.inbound, cfg.inbound, '/sse');
    eq(r.status, 200, 'status');
    return checkSse(r.body.toString(), r.tFirst, r.tEnd, r.first.toString());
  });
  await cell(c2, 'node http2 h2c', 'inbound', '1 MiB download sha256', async () => {
    const r = await h2(cfg.nodeInbound, cfg.nodeInbound, '/download');
    eq(r.status, 200, 'status');
    eq(sha(r.body), cfg.sha, 'sha256');
    return '1 MiB intact';
  });
  await cell(c2, 'node http2 h2c', 'outbound Host (:authority)', '1 MiB upload sha256', async () => {
    const r = await h2(cfg.outbound, cfg.node, '/upload', { method: 'POST', body: payload });
    eq(r.status, 200, 'status');
    eq(JSON.parse(r.body).sha256, cfg.sha, 'sha256 at the app');
    return '1 MiB intact';
  });
  await cell(c2, 'node http2 h2c', 'outbound Host (:authority)', 'SSE incremental', async () => {
    const r = await h2(cfg.outbound, cfg.node, '/sse');
    eq(r.status, 200, 'status');
    return checkSse(r.body.toString(), r.tFirst, r.tEnd, r.first.toString());
  });
  await cell(n, 'node http2 h2c', 'outbound Host (route protocol=h2)', '1 MiB download sha256', async () => {
    const r = await h1(cfg.outbound, '/download', { headers: { host: cfg.node } });
    eq(r.status, 200, 'status');
    eq(sha(r.body), cfg.sha, 'sha256');
    return '1 MiB intact';
  });

  const w = 'node ws';
  await cell(w, 'python h1 ws echo', 'inbound', 'WebSocket echo', () => wsEcho(`ws://${cfg.inbound}/ws`));
  await cell(w, 'python h1 ws echo', 'outbound Host', 'WebSocket echo', () =>
    wsEcho(`ws://${cfg.outbound}/ws`, { host: py }),
  );
}

main().then(
  () => process.exit(0),
  (e) => {
    console.log(`FATAL\t${e && e.stack}`);
    process.exit(1);
  },
);
