/**
 * The fast path's Send indication parser (native/fastpath.c send_indication_out, RFC 8656
 * §11.2) against the JS path, on random and mutated datagrams: test/tools/fastpath_send_fuzz.c
 * runs it under AddressSanitizer and UBSan (a read past a datagram or undefined behaviour
 * fails the run) and writes what C queued; each of those is decided here the way the JS
 * path decides (src/turn/server.ts onUdp/onStun, src/wire/stun.ts decodeStun and
 * verifyFingerprint, src/turn/handlers/send.ts, src/turn/datapath.ts toPeer). C must
 * never forward what JS would not, nor other bytes or to another port. Of the sample C
 * handed to JS, the ones JS relays must be ones C leaves to JS on purpose
 * (MESSAGE-INTEGRITY, DONT-FRAGMENT: JS sends that one with DF set). Needs gcc with libasan/libubsan (CI installs gcc): a failure in
 * CI, a skip elsewhere.
 */
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  Attr,
  Class,
  Method,
  decodeStun,
  findAttr,
  getXorAddress,
  unknownComprehensionRequired,
  verifyFingerprint,
} from '../../../src/wire/stun.js';
import { requirePeer } from '../../e2e/helpers/require-peer.js';

const here = dirname(fileURLToPath(import.meta.url));
const src = join(here, '../../tools/fastpath_send_fuzz.c');
const nodeInclude = join(dirname(process.execPath), '../include/node');

/** The comprehension-required attributes C may forward with: all known to the server (server.ts KNOWN_REQUIRED). */
const KNOWN = new Set<number>([Attr.XorPeerAddress, Attr.Data, Attr.DontFragment, Attr.MessageIntegrity]);

/** What the JS path does with this datagram from the mirrored client; null: not relayed. */
function jsDecision(buf: Buffer, fam: 4 | 6): { port: number; data: Buffer; mi: boolean; df: boolean } | null {
  if (buf.length < 4 || buf[0]! > 3) return null; // onUdp: not STUN, not ChannelData
  const m = decodeStun(buf);
  if (!m || !verifyFingerprint(m)) return null; // RFC 8489 §6.3, §7.3
  if (m.cls !== Class.Indication || m.method !== Method.Send) return null;
  if (unknownComprehensionRequired(m, (x) => KNOWN.has(x)).length) return null; // RFC 8489 §6.3.2
  const peer = getXorAddress(m, Attr.XorPeerAddress);
  const d = findAttr(m, Attr.Data);
  if (!peer || !d || peer.family !== fam) return null; // RFC 8656 §11.2
  // The harness's permissions: 127.0.0.1 on the IPv4 relay, 7f00:1:: on the IPv6 one (§9).
  if (peer.address !== (fam === 4 ? '127.0.0.1' : '7f00:1::') || peer.port === 0) return null;
  return {
    port: peer.port,
    data: m.raw.subarray(d.offset, d.offset + d.length),
    mi: findAttr(m, Attr.MessageIntegrity) !== undefined,
    // DONT-FRAGMENT: JS sends it with DF set (RFC 8656 §11.2, §14); C must leave it to JS.
    df: findAttr(m, Attr.DontFragment) !== undefined,
  };
}

t.test('C forwards exactly the Send indications JS relays, never more (ASan/UBSan, 300 000 datagrams)', async (t) => {
  if (!requirePeer(t, 'gcc')) return;
  const dir = mkdtempSync(join(tmpdir(), 'gh-fuzz-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const bin = join(dir, 'fuzz');
  // N-API and libuv symbols stay unresolved (never called): a non-PIE, lazily bound binary.
  execFileSync(
    'gcc',
    [
      '-O1',
      '-g',
      '-Wall',
      '-fsanitize=address,undefined',
      '-fno-sanitize-recover=undefined',
      `-I${nodeInclude}`,
      '-I/usr/include/node',
      '-no-pie',
      '-Wl,-z,lazy',
      '-Wl,--unresolved-symbols=ignore-all',
      src,
      '-o',
      bin,
    ],
    { stdio: 'pipe', timeout: 120_000 },
  );
  const dump = join(dir, 'dump.txt');
  const seed = String(1 + Math.floor(Math.random() * 1e9));
  t.comment(`seed ${seed}`);
  const out = execFileSync(bin, ['300000', dump, seed], {
    env: { ...process.env, ASAN_OPTIONS: 'detect_leaks=0:abort_on_error=0' },
    timeout: 300_000,
  }).toString();
  t.match(out, /^iters 300000 /m, 'the run finished without a sanitizer error');
  let queued = 0;
  let sampled = 0;
  let jsRelays = 0;
  const mismatches: string[] = [];
  for (const line of readFileSync(dump, 'utf8').split('\n')) {
    if (!line) continue;
    const [kind, famS, offS, lenS, portS, hex] = line.split(' ') as [string, string, string, string, string, string];
    const fam = Number(famS) as 4 | 6;
    const buf = Buffer.from(hex, 'hex');
    const js = jsDecision(buf, fam);
    if (kind === 'Q') {
      queued++;
      const off = Number(offS);
      const c = buf.subarray(off, off + Number(lenS));
      if (js === null || js.df || js.port !== Number(portS) || !js.data.equals(c)) mismatches.push(line.slice(0, 160));
    } else {
      sampled++;
      if (js !== null) {
        jsRelays++;
        if (!js.mi && !js.df) mismatches.push(`to JS but plain: ${line.slice(0, 160)}`);
      }
    }
  }
  t.ok(queued > 10_000, `${queued} datagrams forwarded in C`);
  t.ok(sampled > 10_000, `${sampled} handed to JS (sampled), of which JS relays ${jsRelays} (MESSAGE-INTEGRITY, DONT-FRAGMENT)`);
  t.same(mismatches.slice(0, 5), [], 'every datagram C forwarded is one JS relays, with the same bytes and port');
});
