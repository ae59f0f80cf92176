/**
 * native/reuseport.c: SO_REUSEPORT sockets adopted by dgram bind({fd}) and net listen({fd})
 * (socket(7) SO_REUSEPORT; issue 13 turn.workers).
 */
import t from 'tap';
import { createSocket, type Socket } from 'node:dgram';
import { createServer, connect } from 'node:net';
import { loadReusePort, requireReusePort } from '../../../src/util/reuseport.js';

const { addon, reason } = loadReusePort();
if (!addon && process.env.CI) t.fail(`the reuseport addon is not built in CI: ${reason}`);
const skip = addon ? false : reason;

function adopt(fd: number): Promise<Socket> {
  const s = createSocket('udp4');
  return new Promise((res, rej) => {
    s.once('error', rej);
    s.bind({ fd }, () => res(s));
  });
}

t.test('two UDP sockets on one port, both adopted by dgram, flows spread over them', { skip }, async (t) => {
  const a = addon!.reuseportSocket('udp', 4, '127.0.0.1', 0);
  t.ok(a.fd > 2 && a.port > 0, `fd ${a.fd} port ${a.port}`);
  const b = addon!.reuseportSocket('udp', 4, '127.0.0.1', a.port);
  t.equal(b.port, a.port, 'the second socket of the group binds the same port');
  const sa = await adopt(a.fd);
  const sb = await adopt(b.fd);
  t.equal(sa.address().port, a.port);
  const got = { a: new Set<number>(), b: new Set<number>() };
  sa.on('message', (_m, r) => got.a.add(r.port));
  sb.on('message', (_m, r) => got.b.add(r.port));
  // 64 source ports: the kernel's 4-tuple hash puts some on each socket (the chance that
  // all land on one is 2^-63), and each source always on the same one.
  const clients: Socket[] = [];
  for (let i = 0; i < 64; i++) {
    const c = createSocket('udp4');
    await new Promise<void>((r) => c.bind(0, '127.0.0.1', () => r()));
    clients.push(c);
  }
  for (let round = 0; round < 3; round++) for (const c of clients) c.send('x', a.port, '127.0.0.1');
  await new Promise((r) => setTimeout(r, 300));
  t.ok(got.a.size > 0 && got.b.size > 0, `sources on a: ${got.a.size}, on b: ${got.b.size}`);
  t.equal(got.a.size + got.b.size, 64, 'every source reached exactly one socket (no source on both)');
  for (const c of clients) c.close();
  sa.close();
  sb.close();
});

t.test('TCP listener adopted by net.Server listen({fd})', { skip }, async (t) => {
  const l = addon!.reuseportSocket('tcp', 4, '127.0.0.1', 0);
  const srv = createServer((s) => s.end('hello'));
  await new Promise<void>((r) => srv.listen({ fd: l.fd }, () => r()));
  const data = await new Promise<string>((res, rej) => {
    const c = connect(l.port, '127.0.0.1');
    let s = '';
    c.on('data', (d) => (s += d));
    c.on('end', () => res(s));
    c.on('error', rej);
  });
  t.equal(data, 'hello');
  await new Promise((r) => srv.close(r));
});

t.test('errors carry the errno name and the address', { skip }, async (t) => {
  // A socket without SO_REUSEPORT on the port: the group cannot join it (socket(7)).
  const plain = createSocket('udp4');
  await new Promise<void>((r) => plain.bind(0, '127.0.0.1', () => r()));
  const port = plain.address().port;
  t.throws(() => addon!.reuseportSocket('udp', 4, '127.0.0.1', port), {
    code: 'EADDRINUSE',
    message: new RegExp(`bind udp 127\\.0\\.0\\.1 port ${port}`),
  });
  plain.close();
  t.throws(() => addon!.reuseportSocket('udp', 4, '192.0.2.1', 0), { code: 'EADDRNOTAVAIL' }, 'an address not on this host');
  t.throws(() => addon!.reuseportSocket('udp', 4, 'example.com', 0), RangeError);
  t.throws(() => addon!.reuseportSocket('udp', 6, '127.0.0.1', 0), RangeError);
  const s = addon!.reuseportSocket('udp', 6, '::1', 0);
  addon!.closeFd(s.fd);
  t.throws(() => addon!.closeFd(s.fd), { code: 'EBADF' });
});

t.test('without the addon turn.workers > 1 cannot start, and says why', async (t) => {
  t.throws(
    () =>
      requireReusePort(() => ({ addon: null, reason: 'native/build/Release/gatehouse_reuseport.node not built (npm run build:native)' })),
    {
      message:
        'turn.workers > 1 needs the SO_REUSEPORT addon: native/build/Release/gatehouse_reuseport.node not built (npm run build:native)',
    },
  );
});
