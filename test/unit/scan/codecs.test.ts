// ICAP (RFC 3507) and clamd INSTREAM codecs against tiny fake servers; the guard's
// timeout, bound and fail_open. The proof against real peers is test/e2e/scan-icap.test.ts.
import t from 'tap';
import { createServer, type Server, type Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { IcapScanner, infectionName, parseEncapsulated, parseHead, parseIcapUrl } from '../../../src/scan/icap.js';
import { ClamdScanner, parseClamdAnswer } from '../../../src/scan/clamd.js';
import { GuardedScanner } from '../../../src/scan/guard.js';
import type { ScanResult, Scanner } from '../../../src/scan/scanner.js';

async function listen(onConn: (s: Socket) => void, path?: string): Promise<{ server: Server; port: number }> {
  const server = createServer(onConn);
  await new Promise<void>((r) => (path ? server.listen(path, r) : server.listen(0, '127.0.0.1', r)));
  const a = server.address();
  return { server, port: typeof a === 'object' && a ? a.port : 0 };
}

const OPTIONS_OK =
  'ICAP/1.0 200 OK\r\nMethods: RESPMOD, REQMOD\r\nISTag: "T1"\r\nPreview: 8\r\nAllow: 204\r\nOptions-TTL: 60\r\nEncapsulated: null-body=0\r\n\r\n';

/** A fake ICAP server: answers OPTIONS, records each RESPMOD/REQMOD's bytes, and answers with `respond`. */
function fakeIcap(respond: (req: Buffer, s: Socket) => void) {
  const seen: Buffer[] = [];
  return {
    seen,
    onConn(s: Socket) {
      let buf = Buffer.alloc(0);
      s.on('data', (d) => {
        buf = Buffer.concat([buf, d]);
        if (buf.toString('latin1').startsWith('OPTIONS ') && buf.includes('\r\n\r\n')) {
          s.end(OPTIONS_OK);
          return;
        }
        // End of a preview (`0\r\n\r\n` or `0; ieof\r\n\r\n`) or of the body.
        if (/(^|\r\n)0(; ieof)?\r\n\r\n$/.test(buf.toString('latin1'))) respond(buf, s);
      });
      s.on('close', () => seen.push(buf));
      s.on('error', () => {});
    },
  };
}

t.test('parsers: head folding, Encapsulated (§4.4.1), infection headers, URL (§4.2)', async (t) => {
  const h = parseHead('ICAP/1.0 200 OK\r\nX-Violations-Found: 1\r\n\t-\r\n\tEicar\r\n\t0\r\n\t0\r\nISTag: "x"');
  t.equal(h.code, 200);
  t.equal(h.headers.get('x-violations-found'), '1\n-\nEicar\n0\n0');
  t.equal(infectionName(h.headers), 'Eicar');
  t.equal(infectionName(new Map([['x-infection-found', 'Type=0; Resolution=2; Threat=Win.Test.EICAR_HDB-1;']])), 'Win.Test.EICAR_HDB-1');
  t.equal(infectionName(new Map([['x-virus-id', 'W32/Bad']])), 'W32/Bad');
  t.equal(infectionName(new Map([['x-violations-found', '0']])), null);
  t.same(parseEncapsulated('req-hdr=0, res-hdr=40, res-body=120'), [
    ['req-hdr', 0],
    ['res-hdr', 40],
    ['res-body', 120],
  ]);
  t.throws(() => parseEncapsulated('res-hdr=10, res-body=5'), /order/);
  t.throws(() => parseEncapsulated('res-hdr=0'), /exactly one body/);
  t.throws(() => parseHead('HTTP/1.1 200 OK'), /bad status line/);
  t.same(parseIcapUrl('icap://av.example/srv?mode=simple'), {
    host: 'av.example',
    port: 1344,
    service: '/srv?mode=simple',
    uri: 'icap://av.example:1344/srv?mode=simple',
  });
  t.same(parseClamdAnswer('stream: OK'), { verdict: 'clean' });
  t.match(parseClamdAnswer('stream: Eicar-Sig FOUND\0'), { verdict: 'infected', virus: 'Eicar-Sig' });
  t.match(parseClamdAnswer('INSTREAM size limit exceeded. ERROR'), { verdict: 'error', error: 'refused' });
  t.match(parseClamdAnswer('what'), { verdict: 'error', error: 'protocol' });
});

t.test('RESPMOD on the wire: Encapsulated offsets, preview with ieof, 204 = clean', async (t) => {
  const f = fakeIcap((_b, s) => s.end('ICAP/1.0 204 No Content\r\nISTag: "T1"\r\n\r\n'));
  const { server, port } = await listen((s) => f.onConn(s));
  t.teardown(() => server.close());
  const s = new IcapScanner({ url: `icap://127.0.0.1:${port}/av`, timeoutMs: 2000 });
  const file = Buffer.from('ABCDEF');
  t.same(await s.scan(file, { name: '../dir/a b.txt', size: 6 }), { verdict: 'clean', reason: 'icap: 204 No Content' });
  await new Promise((r) => setTimeout(r, 20));
  const wire = f.seen.at(-1)!.toString('latin1');
  const [icapHead, rest] = [wire.slice(0, wire.indexOf('\r\n\r\n')), wire.slice(wire.indexOf('\r\n\r\n') + 4)];
  t.match(icapHead, new RegExp(`^RESPMOD icap://127\\.0\\.0\\.1:${port}/av ICAP/1\\.0\\r\\n`));
  t.match(icapHead, /\r\nHost: 127\.0\.0\.1:\d+\r\n/);
  t.match(icapHead, /\r\nAllow: 204\r\n/);
  t.match(icapHead, /\r\nPreview: 6\r\n/, 'preview clipped to the file');
  const enc = parseEncapsulated(/Encapsulated: (.*)/.exec(icapHead)![1]!);
  // The offsets point at the heads and the body in `rest`.
  t.match(rest.slice(enc[0]![1]), /^GET \/a%20b\.txt HTTP\/1\.1\r\n/, 'the name is the path, directories dropped');
  t.match(rest.slice(enc[1]![1]), /^HTTP\/1\.1 200 OK\r\n.*Content-Length: 6\r\n/s);
  t.equal(rest.slice(enc[2]![1]), '6\r\nABCDEF\r\n0; ieof\r\n\r\n', 'the whole file in the preview, ended by ieof (§4.5)');
});

t.test('beyond the preview: 100 Continue, then the rest; 200 with X-Infection-Found = infected', async (t) => {
  let continued = false;
  const f = fakeIcap((b, s) => {
    if (!continued) {
      continued = true;
      t.match(b.toString('latin1'), /\r\n4\r\n0123\r\n4\r\n4567\r\n0\r\n\r\n$/, 'preview of 8 bytes (two chunks) without ieof');
      s.write('ICAP/1.0 100 Continue\r\n\r\n');
      return;
    }
    const res = 'HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\n';
    s.end(
      `ICAP/1.0 200 OK\r\nX-Infection-Found: Type=0; Resolution=2; Threat=Test.Bad;\r\nEncapsulated: res-hdr=0, res-body=${res.length}\r\n\r\n${res}2\r\nno\r\n0\r\n\r\n`,
    );
  });
  const { server, port } = await listen((s) => f.onConn(s));
  t.teardown(() => server.close());
  const s = new IcapScanner({ url: `icap://127.0.0.1:${port}/av`, timeoutMs: 2000 });
  async function* gen() {
    yield Buffer.from('0123');
    yield Buffer.from('456789abcdef');
  }
  t.same(await s.scan(gen(), { size: 16 }), { verdict: 'infected', virus: 'Test.Bad', reason: 'icap: infection reported' });
  await new Promise((r) => setTimeout(r, 20));
  t.match(f.seen.at(-1)!.toString('latin1'), /0\r\n\r\n8\r\n89abcdef\r\n0\r\n\r\n$/, 'the rest after 100 Continue');
});

t.test('200 answers without infection headers: modified = infected, unmodified = clean; 5xx = error', async (t) => {
  let mode: 'same' | 'status' | 'body' | 'error' = 'same';
  const f = fakeIcap((b, s) => {
    const body = b.toString('latin1').match(/\r\n\r\n[0-9a-f]+\r\n([^]*?)\r\n0; ieof/)?.[1] ?? '';
    if (mode === 'error') return void s.end('ICAP/1.0 500 Server Error\r\n\r\n');
    const res = `HTTP/1.1 ${mode === 'status' ? '403 Forbidden' : '200 OK'}\r\nContent-Length: 3\r\n\r\n`;
    const out = mode === 'body' ? 'XYZ' : body;
    s.end(
      `ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=0, res-body=${res.length}\r\n\r\n${res}${out.length.toString(16)}\r\n${out}\r\n0\r\n\r\n`,
    );
  });
  const { server, port } = await listen((s) => f.onConn(s));
  t.teardown(() => server.close());
  const s = new IcapScanner({ url: `icap://127.0.0.1:${port}/av`, timeoutMs: 2000 });
  const file = Buffer.from('abc');
  t.same(await s.scan(file, { size: 3 }), { verdict: 'clean', reason: 'icap: 200, message unmodified' });
  mode = 'status';
  t.same(await s.scan(file, { size: 3 }), { verdict: 'infected', reason: 'icap: modified response, HTTP 403' });
  mode = 'body';
  t.same(await s.scan(file, { size: 3 }), { verdict: 'infected', reason: 'icap: modified response body' });
  mode = 'error';
  t.match(await s.scan(file, { size: 3 }), { verdict: 'error', error: 'refused', reason: 'icap: 500 Server Error' });
});

t.test('ICAP: a silent server is a timeout, a closed port unreachable; no content in reasons', async (t) => {
  const silent = await listen((s) => {
    s.on('data', (d) => {
      if (d.toString('latin1').startsWith('OPTIONS')) s.end(OPTIONS_OK);
    });
    s.on('error', () => {});
  });
  t.teardown(() => silent.server.close());
  const secret = Buffer.from('SECRETCONTENT');
  const r = await new IcapScanner({ url: `icap://127.0.0.1:${silent.port}/av`, timeoutMs: 300 }).scan(secret, { size: secret.length });
  t.match(r, { verdict: 'error', error: 'timeout' });
  t.notMatch(JSON.stringify(r), /SECRET/);
  const closed = await listen(() => {});
  const port = closed.port;
  await new Promise((r) => closed.server.close(r));
  t.match(await new IcapScanner({ url: `icap://127.0.0.1:${port}/av`, timeoutMs: 1000 }).scan(secret, { size: 13 }), {
    verdict: 'error',
    error: 'unreachable',
    reason: /ECONNREFUSED/,
  });
});

t.test('clamd INSTREAM framing over a unix socket: zINSTREAM\\0, 4-byte lengths, zero end', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gh-clamd-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'c.sock');
  let got = Buffer.alloc(0);
  let answer = 'stream: OK\0';
  const { server } = await listen((s) => {
    got = Buffer.alloc(0);
    s.on('data', (d) => {
      got = Buffer.concat([got, d]);
      if (got.length >= 14 && got.subarray(-4).readUInt32BE(0) === 0) s.end(answer);
    });
    s.on('error', () => {});
  }, path);
  t.teardown(() => server.close());
  const c = new ClamdScanner({ address: `unix:${path}`, timeoutMs: 2000 });
  const file = randomBytes(100_000);
  t.same(await c.scan(file, { size: file.length }), { verdict: 'clean' });
  t.equal(got.subarray(0, 10).toString('latin1'), 'zINSTREAM\0');
  // Parse the chunks back: they must rebuild the file exactly.
  const parts: Buffer[] = [];
  let o = 10;
  for (;;) {
    const n = got.readUInt32BE(o);
    o += 4;
    if (n === 0) break;
    t.ok(n <= 65536, `chunk of ${n} bytes`);
    parts.push(got.subarray(o, o + n));
    o += n;
  }
  t.equal(o, got.length, 'nothing after the zero-length chunk');
  t.ok(Buffer.concat(parts).equals(file), 'chunks carry the file');
  answer = 'stream: Test.Sig FOUND\0';
  t.same(await c.scan(file, { size: file.length }), { verdict: 'infected', virus: 'Test.Sig', reason: 'clamd: FOUND' });
  t.match(await new ClamdScanner({ address: `unix:${join(dir, 'none.sock')}`, timeoutMs: 500 }).scan(file, { size: 1 }), {
    verdict: 'error',
    error: 'unreachable',
  });
});

t.test('guard: fail_open, timeout, max_concurrent and the queue bound, each counted', async (t) => {
  const pending: ((r: ScanResult) => void)[] = [];
  let live = 0;
  let peak = 0;
  const slow: Scanner = {
    kind: 'fake',
    scan: () =>
      new Promise<ScanResult>((resolve) => {
        live++;
        peak = Math.max(peak, live);
        pending.push((r) => {
          live--;
          resolve(r);
        });
      }),
  };
  const g = new GuardedScanner(slow, { timeoutMs: 5000, failOpen: false, maxConcurrent: 2, maxQueued: 1 });
  const a = g.scan(Buffer.alloc(1), { size: 1 });
  const b = g.scan(Buffer.alloc(1), { size: 1 });
  const c = g.scan(Buffer.alloc(1), { size: 1 }); // queued
  const d = await g.scan(Buffer.alloc(1), { size: 1 }); // beyond the queue
  t.match(d, { verdict: 'unscanned', block: true, error: 'queue_full' });
  t.match(g.stats, { in_flight: 2, queued: 1 });
  pending.shift()!({ verdict: 'infected', virus: 'V' });
  await new Promise((r) => setImmediate(r));
  t.equal(live, 2, 'the queued scan took the freed slot');
  pending.shift()!({ verdict: 'clean' });
  pending.shift()!({ verdict: 'error', error: 'unreachable', reason: 'down' });
  t.match(await a, { verdict: 'infected', block: true, virus: 'V' });
  t.match(await b, { verdict: 'clean', block: false });
  t.match(await c, { verdict: 'unscanned', block: true, error: 'unreachable' });
  t.equal(peak, 2, 'never more than max_concurrent');
  t.match(g.stats, {
    scans: 4,
    clean: 1,
    infected: 1,
    failed_closed: 2,
    failed_open: 0,
    errors: { queue_full: 1, unreachable: 1 },
    in_flight: 0,
    queued: 0,
  });

  const never: Scanner = { kind: 'fake', scan: () => new Promise(() => {}) };
  const open = new GuardedScanner(never, { timeoutMs: 100, failOpen: true, maxConcurrent: 1 });
  const [x, y] = await Promise.all([open.scan(Buffer.alloc(1), { size: 1 }), open.scan(Buffer.alloc(1), { size: 1 })]);
  t.match(x, { verdict: 'clean', block: false, error: 'timeout', reason: /fail_open/ });
  t.match(y, { verdict: 'clean', block: false, error: 'timeout' }, 'the queued scan ends by its deadline too (fail_open)');
  t.match(open.stats, { scans: 2, failed_open: 2, errors: { timeout: 2 } });
});
