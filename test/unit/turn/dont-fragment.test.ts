/**
 * DONT-FRAGMENT (RFC 8656 §18.9). With the native addon (native/fastpath.c
 * sendDontFragment, src/turn/dont-fragment.ts) an Allocate with it succeeds (§7.2 step 4)
 * and the datagram of a Send indication with it goes out of the relay socket with DF set
 * (§11.2, §14), that datagram only. Without it (the server's `dontFragment: null`, what a
 * missing addon gives) the attribute is an unknown comprehension-required one: 420 with
 * UNKNOWN-ATTRIBUTES 0x001A (RFC 8489 §14.9) for an Allocate, the Send discarded. Both with
 * fast_path off and auto: C hands every Send with DONT-FRAGMENT to JS. That DF is really
 * set is seen with strace(1): IP_MTU_DISCOVER = IP_PMTUDISC_DO around the sendto. The addon
 * (npm run build:native) and strace are required in CI; elsewhere their tests skip.
 */
import t from 'tap';
import { createSocket, type Socket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Attr, Class, Method, StunWriter, decodeUnknownAttributes, getAttr, getXorAddress, messageType } from '../../../src/wire/stun.js';
import { loadDontFragment, loadDontFragmentAddon, type DontFragmentSend } from '../../../src/turn/dont-fragment.js';
import { dgramFd } from '../../../src/turn/fastpath.js';
import { Client, errCode, peerSocket, startServer } from './helpers.js';

const addon = loadDontFragmentAddon();
const skip = addon
  ? false
  : process.env.CI
    ? false
    : 'native/build/Release/gatehouse_fastpath.node not built (npm run build:native, Linux)';
if (!addon && process.env.CI) t.fail('the native addon with sendDontFragment is not built (npm run build:native) in CI');

// ip(7) / ipv6(7): IP_PMTUDISC_WANT = IPV6_PMTUDISC_WANT = 1 (the default), *_DO = 2.
const WANT = 1;
const DO = 2;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function bound(fam: 4 | 6): Promise<Socket> {
  const s = createSocket(fam === 4 ? 'udp4' : 'udp6');
  await new Promise<void>((r) => s.bind(0, fam === 4 ? '127.0.0.1' : '::1', () => r()));
  return s;
}

function send(ip: string, port: number, data: string, df: boolean): Buffer {
  const w = new StunWriter(2048);
  w.reset(messageType(Method.Send, Class.Indication), randomBytes(12));
  w.xorAddress(Attr.XorPeerAddress, ip, port);
  w.attr(Attr.Data, Buffer.from(data));
  if (df) w.attr(Attr.DontFragment, Buffer.alloc(0));
  return w.copy();
}

const udp = (w: StunWriter): void => void w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0]));

for (const fam of [4, 6] as const) {
  t.test(`IPv${fam}: setDontFragment / dontFragmentMode / sendDontFragment on a socket`, { skip }, async (t) => {
    const s = await bound(fam);
    const peer = await peerSocket(fam === 4 ? '127.0.0.1' : '::1');
    t.teardown(() => (s.close(), peer.close()));
    const fd = dgramFd(s)!;
    t.ok(fd >= 0, 'the socket has a descriptor');
    t.equal(addon!.dontFragmentMode(fd, fam), WANT, 'the kernel default: PMTUDISC_WANT');
    t.equal(addon!.setDontFragment(fd, fam, true), 0);
    t.equal(addon!.dontFragmentMode(fd, fam), DO, 'PMTUDISC_DO: DF set, never fragmented locally');
    t.equal(addon!.setDontFragment(fd, fam, false), 0);
    t.equal(addon!.dontFragmentMode(fd, fam), WANT);
    t.equal(addon!.sendDontFragment(fd, fam, Buffer.from('df datagram'), fam === 4 ? '127.0.0.1' : '::1', peer.port), 0);
    t.equal((await peer.next()).msg.toString(), 'df datagram', 'the datagram arrives');
    t.equal(addon!.dontFragmentMode(fd, fam), WANT, "the socket's mode is back after the send: DF for that datagram only");
    // Bad arguments are errno values, never a throw.
    t.equal(addon!.sendDontFragment(fd, fam, Buffer.from('x'), 'not an ip', peer.port), 22, 'EINVAL: bad address');
    t.equal(addon!.sendDontFragment(fd, fam, Buffer.from('x'), fam === 4 ? '127.0.0.1' : '::1', 0), 22, 'EINVAL: port 0');
    t.ok(addon!.dontFragmentMode(-1, fam) < 0, 'a bad descriptor: -errno');
  });
}

const strace = spawnSync('strace', ['-V']).status === 0;
const straceSkip = skip || (strace ? false : process.env.CI ? false : 'strace not installed');
if (!strace && process.env.CI) t.fail('strace (Debian package strace) is required in CI');

t.test('strace: sendDontFragment sets PMTUDISC_DO for the sendto and puts the mode back (IPv4, IPv6)', { skip: straceSkip }, async (t) => {
  const lib = fileURLToPath(new URL('../../../native/build/Release/gatehouse_fastpath.node', import.meta.url));
  const script = `
    const m = require(${JSON.stringify(lib)});
    const dgram = require('node:dgram');
    const fdOf = (s) => s[Object.getOwnPropertySymbols(s).find((x) => x.description === 'state symbol')].handle.fd;
    const a = dgram.createSocket('udp4'), b = dgram.createSocket('udp6');
    a.bind(0, '127.0.0.1', () => b.bind(0, '::1', () => {
      const r4 = m.sendDontFragment(fdOf(a), 4, Buffer.from('dfprobe4'), '127.0.0.1', a.address().port);
      const r6 = m.sendDontFragment(fdOf(b), 6, Buffer.from('dfprobe6'), '::1', b.address().port);
      process.stdout.write(r4 + ' ' + r6);
      a.close(); b.close();
    }));`;
  const r = spawnSync('strace', ['-f', '-e', 'trace=setsockopt,sendto', process.execPath, '-e', script], {
    encoding: 'utf8',
    timeout: 20_000,
  });
  t.equal(r.stdout, '0 0', 'both sends succeed');
  const lines = r.stderr.split('\n').filter((l) => /MTU_DISCOVER|sendto\(/.test(l));
  for (const [fam, level, opt] of [
    ['4', 'SOL_IP', 'IP_MTU_DISCOVER'],
    ['6', 'SOL_IPV6', 'IPV6_MTU_DISCOVER'],
  ] as const) {
    const at = lines.findIndex((l) => l.includes(`"dfprobe${fam}"`));
    t.ok(at > 0, `IPv${fam}: the sendto is traced`);
    t.match(lines[at - 1], new RegExp(`setsockopt\\(\\d+, ${level}, ${opt}, \\[${DO}\\]`), `IPv${fam}: PMTUDISC_DO just before`);
    t.match(lines[at + 1], new RegExp(`setsockopt\\(\\d+, ${level}, ${opt}, \\[${WANT}\\]`), `IPv${fam}: WANT again just after`);
  }
});

for (const mode of ['off', 'auto'] as const) {
  t.test(`fast_path ${mode}, with the addon: Allocate with DONT-FRAGMENT succeeds; its Send goes out with DF`, { skip }, async (t) => {
    const real = loadDontFragment()!;
    const calls: { port: number; relayPort: number; data: string }[] = [];
    const spy: DontFragmentSend = (s, fam, d, port, ip) => {
      calls.push({ port, relayPort: s.address().port, data: d.toString() });
      return real(s, fam, d, port, ip);
    };
    const h = await startServer((c) => void (c.turn.fast_path = mode), { dontFragment: spy });
    const c = await Client.udp(h.udpPort);
    const peer = await peerSocket();
    t.teardown(async () => (c.close(), peer.close(), await h.close()));
    const r = await c.authed(Method.Allocate, (w) => (udp(w), void w.attr(Attr.DontFragment, Buffer.alloc(0))));
    t.equal(r.cls, Class.Success, 'RFC 8656 §7.2 step 4: the server can set DF');
    const relayPort = getXorAddress(r, Attr.XorRelayedAddress)!.port;
    t.equal((await c.authed(Method.CreatePermission, (w) => void w.xorAddress(Attr.XorPeerAddress, '127.0.0.1', 1))).cls, Class.Success);
    c.sendRaw(send('127.0.0.1', peer.port, 'plain', false));
    t.equal((await peer.next()).msg.toString(), 'plain');
    t.same(calls, [], 'a Send without DONT-FRAGMENT: the socket default (§14: DF not asked)');
    c.sendRaw(send('127.0.0.1', peer.port, 'with df', true));
    const got = await peer.next();
    t.equal(got.msg.toString(), 'with df', 'relayed');
    t.equal(got.port, relayPort, 'from the relayed transport address');
    t.same(calls, [{ port: peer.port, relayPort, data: 'with df' }], 'sent through sendDontFragment on the relay socket');
    t.same(h.server.stats.packets.clientToPeer, 2);
    t.notOk(h.server.stats.refused.dont_fragment);
    if (mode === 'auto') t.equal(h.server.fastPath()!.sendIndications, 1, 'C forwarded the plain Send only; DONT-FRAGMENT went to JS');
  });

  t.test(`fast_path ${mode}, without the addon: 420 UNKNOWN-ATTRIBUTES 0x001A; a Send with DONT-FRAGMENT is discarded`, async (t) => {
    const h = await startServer((c) => void (c.turn.fast_path = mode), { dontFragment: null });
    const c = await Client.udp(h.udpPort);
    const peer = await peerSocket();
    t.teardown(async () => (c.close(), peer.close(), await h.close()));
    const bad = await c.authed(Method.Allocate, (w) => (udp(w), void w.attr(Attr.DontFragment, Buffer.alloc(0))));
    t.equal(errCode(bad), 420, 'RFC 8656 §7.2 step 4: unknown comprehension-required');
    t.same(decodeUnknownAttributes(getAttr(bad, Attr.UnknownAttributes)!), [0x001a]);
    t.equal(h.server.stats.refused.dont_fragment, 1);
    t.equal((await c.authed(Method.Allocate, udp)).cls, Class.Success, 'without DONT-FRAGMENT: allocated');
    t.equal((await c.authed(Method.CreatePermission, (w) => void w.xorAddress(Attr.XorPeerAddress, '127.0.0.1', 1))).cls, Class.Success);
    c.sendRaw(send('127.0.0.1', peer.port, 'with df', true));
    await sleep(50);
    c.sendRaw(send('127.0.0.1', peer.port, 'plain', false));
    t.equal((await peer.next()).msg.toString(), 'plain', 'RFC 8656 §11.2: the Send with DONT-FRAGMENT was discarded, the next one relayed');
    await sleep(50);
    t.rejects(peer.next(50), 'nothing else reached the peer');
    t.equal(h.server.stats.refused.dont_fragment, 2, 'the discarded Send is counted');
    t.equal(h.server.stats.packets.clientToPeer, 1);
    if (mode === 'auto' && h.server.fastPath())
      t.equal(h.server.fastPath()!.sendIndications, 1, 'C never forwarded the DONT-FRAGMENT Send');
  });
}
