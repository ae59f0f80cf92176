// ICAP (RFC 3507): a server that answers while a large body is still being written and
// stops reading. The client must read that answer as soon as it comes and stop sending
// (RFC 2616 §8.2.2), not wait for a drain that never comes and call it a time-out — with
// fail_open true a time-out would pass an infected file.
import t from 'tap';
import { createServer, type Server, type Socket } from 'node:net';
import { IcapScanner } from '../../../src/scan/icap.js';
import { GuardedScanner } from '../../../src/scan/guard.js';

const TOTAL = 64 * 1024 * 1024; // far more than loopback socket buffers hold
const PIECE = 64 * 1024;

/** A 64 MiB file produced lazily; `pulled` is how much the client asked for. */
function bigFile() {
  const state = { pulled: 0 };
  async function* gen() {
    const b = Buffer.alloc(PIECE, 0x41);
    for (let o = 0; o < TOTAL; o += PIECE) {
      state.pulled += PIECE;
      yield b;
    }
  }
  return { state, file: gen() };
}

/**
 * A fake ICAP server: OPTIONS (with or without a Preview), then on RESPMOD, once `after`
 * bytes arrived, it stops reading (the socket is paused, never closed by it) and, 300 ms
 * later (the buffers between are full by then), writes `answer`. With a preview it first answers 100 Continue at the preview's end.
 */
async function earlyServer(answer: string, o: { preview?: number; after?: number } = {}) {
  const after = o.after ?? 256 * 1024;
  const options = `ICAP/1.0 200 OK\r\nMethods: RESPMOD\r\nISTag: "E1"\r\n${o.preview !== undefined ? `Preview: ${o.preview}\r\n` : ''}Allow: 204\r\nEncapsulated: null-body=0\r\n\r\n`;
  const sockets: Socket[] = [];
  const stats = { received: 0, answered: false };
  const server: Server = createServer((s) => {
    sockets.push(s);
    s.on('error', () => {});
    let buf = Buffer.alloc(0);
    let continued = false;
    s.on('data', (d) => {
      if (stats.answered) return;
      buf = buf.length < 4096 ? Buffer.concat([buf, d]) : buf;
      const text = buf.subarray(0, 4096).toString('latin1');
      if (text.startsWith('OPTIONS ')) {
        if (buf.includes('\r\n\r\n')) s.end(options);
        return;
      }
      stats.received += d.length;
      if (o.preview !== undefined && !continued && /\r\n0\r\n\r\n$/.test(d.toString('latin1'))) {
        continued = true;
        s.write('ICAP/1.0 100 Continue\r\n\r\n');
        return;
      }
      if (stats.received >= after) {
        stats.answered = true;
        s.pause(); // reads no more: the client's writes cannot drain
        // Answers once the socket buffers are full and the client waits for a drain.
        setTimeout(() => s.write(answer), 300);
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const a = server.address();
  const port = typeof a === 'object' && a ? a.port : 0;
  const close = () => {
    for (const s of sockets) s.destroy();
    server.close();
  };
  return { port, stats, close };
}

const INFECTED =
  'ICAP/1.0 200 OK\r\nISTag: "E1"\r\nX-Infection-Found: Type=0; Resolution=2; Threat=Test.Early.Sig;\r\nEncapsulated: null-body=0\r\n\r\n';

t.test('an infection named before the body is written: infected at once, the write stops', async (t) => {
  const srv = await earlyServer(INFECTED);
  t.teardown(srv.close);
  const sc = new IcapScanner({ url: `icap://127.0.0.1:${srv.port}/av`, timeoutMs: 20_000 });
  const { state, file } = bigFile();
  const r = await sc.scan(file, { name: 'big.bin', size: TOTAL });
  t.same(
    r,
    { verdict: 'infected', virus: 'Test.Early.Sig', reason: 'icap: infection reported' },
    'the early answer is the verdict, not a time-out',
  );
  t.ok(srv.stats.answered, 'the server answered early');
  t.ok(state.pulled < TOTAL / 2, `the client stopped sending (${state.pulled} of ${TOTAL} bytes read from the file)`);
});

t.test('with fail_open true the early infection still blocks (it is no time-out)', async (t) => {
  const srv = await earlyServer(INFECTED);
  t.teardown(srv.close);
  const g = new GuardedScanner(new IcapScanner({ url: `icap://127.0.0.1:${srv.port}/av`, timeoutMs: 20_000 }), {
    timeoutMs: 20_000,
    failOpen: true,
    maxConcurrent: 1,
  });
  const { file } = bigFile();
  const r = await g.scan(file, { size: TOTAL });
  t.match(r, { verdict: 'infected', block: true, virus: 'Test.Early.Sig' });
  t.equal(g.stats.errors.timeout, 0, 'no time-out counted');
  t.equal(g.stats.failed_open, 0, 'nothing passed by fail_open');
});

t.test('an early 204 is clean; an early error status is an error of the server, not a time-out', async (t) => {
  const clean = await earlyServer('ICAP/1.0 204 No Content\r\nISTag: "E1"\r\nEncapsulated: null-body=0\r\n\r\n');
  t.teardown(clean.close);
  const a = await new IcapScanner({ url: `icap://127.0.0.1:${clean.port}/av`, timeoutMs: 20_000 }).scan(bigFile().file, { size: TOTAL });
  t.same(a, { verdict: 'clean', reason: 'icap: 204 No Content' });
  const err = await earlyServer('ICAP/1.0 413 Request Entity Too Large\r\nISTag: "E1"\r\nEncapsulated: null-body=0\r\n\r\n');
  t.teardown(err.close);
  const b = await new IcapScanner({ url: `icap://127.0.0.1:${err.port}/av`, timeoutMs: 20_000 }).scan(bigFile().file, { size: TOTAL });
  t.match(b, { verdict: 'error', error: 'refused', reason: /413/ });
});

t.test('after a preview and 100 Continue, an infection named mid-body is the verdict', async (t) => {
  const srv = await earlyServer(INFECTED, { preview: 1024, after: 512 * 1024 });
  t.teardown(srv.close);
  const { state, file } = bigFile();
  const r = await new IcapScanner({ url: `icap://127.0.0.1:${srv.port}/av`, timeoutMs: 20_000 }).scan(file, { size: TOTAL });
  t.match(r, { verdict: 'infected', virus: 'Test.Early.Sig' });
  t.ok(state.pulled < TOTAL / 2, 'stopped sending');
});
