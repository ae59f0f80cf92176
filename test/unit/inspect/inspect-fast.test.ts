/**
 * `gatehouse inspect`'s fast path (issue 13) reports what the plain path did: the chunked
 * pcap reader, the flow table's last-flow shortcut, eveLine's reused headers and the
 * per-record hash left out unless `--hash records` are checked against an independent
 * pcap split, CaptureInspector fed one flow at a time, and JSON.stringify(toEve(...)), on
 * a capture of several interleaved DTLS flows (application data, a data channel, SRTP).
 */
import t from 'tap';
import { PassThrough, Writable } from 'node:stream';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runInspect } from '../../../src/cli/inspect.js';
import { CaptureInspector, encodePcap, readCapture, type CapturedPacket } from '../../../src/inspect/capture.js';
import { encodeEveLine, eveLine, toEve } from '../../../src/inspect/eve-format.js';
import { StaticKeyProvider } from '../../../src/inspect/pipeline.js';
import { keySetToJson } from '../../../src/wire/keyset.js';
import { LINKTYPE_ETHERNET, buildUdpFrame } from '../../../src/wire/netpkt.js';
import { syntheticSession, SctpBuilder, type SyntheticSession } from './pipeline-helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'gh-inspect-fast-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
// 400 ms before a second boundary: lines on both sides of it (eveLine's timestamp reuse).
const T0 = Date.UTC(2026, 10, 22, 10, 0, 0) + 600.25;

interface Pkt {
  flow: number;
  time: number;
  frame: Buffer;
}

// Four flows, each its own session; flow 2 carries a data channel, flow 3 SRTP as well.
const FLOWS = 4;
const sessions: SyntheticSession[] = Array.from({ length: FLOWS }, () => syntheticSession());
/** Plaintexts of the application-data records that are not SCTP (flows 0, 1, 3). */
const plaintexts: Buffer[] = [];
const perFlow: { fromClient: boolean; data: Buffer }[][] = sessions.map((s, f) => {
  const out = [...s.hello];
  const sctp = new SctpBuilder();
  if (f === 2) for (const p of [sctp.init(), sctp.open(0, 'chat')]) out.push({ fromClient: true, data: s.appData(true, p) });
  for (let i = 0; i < 30; i++) {
    const fromClient = i % 3 !== 2;
    const body = randomBytes(50 + ((i * 37 + f * 11) % 900));
    if (f !== 2) plaintexts.push(body);
    out.push({ fromClient, data: s.appData(fromClient, f === 2 ? sctp.message(0, body, true) : body) });
    if (f === 3 && i % 5 === 0) out.push({ fromClient: false, data: s.srtp(false, i, randomBytes(60)) });
  }
  return out;
});
// Interleaved in runs of 1..4 datagrams of one flow (the flow table's shortcut is taken
// inside a run and must let go at its end).
const packets: Pkt[] = [];
{
  const next = new Array<number>(FLOWS).fill(0);
  let f = 0;
  let step = 0;
  while (next.some((n, i) => n < perFlow[i]!.length)) {
    const run = 1 + (step++ % 4);
    for (let k = 0; k < run && next[f]! < perFlow[f]!.length; k++) {
      const d = perFlow[f]![next[f]!++]!;
      const client = { ip: '10.1.0.' + (f + 1), port: 40000 + f };
      const server = { ip: '10.2.0.9', port: 50000 };
      const [a, b] = d.fromClient ? [client, server] : [server, client];
      packets.push({
        flow: f,
        time: T0 + packets.length * 7.5,
        frame: buildUdpFrame(LINKTYPE_ETHERNET, a.ip, a.port, b.ip, b.port, d.data),
      });
    }
    f = (f + 1) % FLOWS;
  }
}
const pcap = join(dir, 'flows.pcap');
writeFileSync(
  pcap,
  encodePcap(
    LINKTYPE_ETHERNET,
    packets.map((p) => ({ time: p.time, data: p.frame })),
  ),
);
const keys = join(dir, 'keys.json');
writeFileSync(keys, JSON.stringify(sessions.map((s) => keySetToJson(s.keySet))));

/** Classic pcap records split by hand (independent of readCapture). */
function splitPcap(buf: Buffer): CapturedPacket[] {
  const out: CapturedPacket[] = [];
  const linktype = buf.readUInt32LE(20);
  for (let off = 24; off + 16 <= buf.length;) {
    const len = buf.readUInt32LE(off + 8);
    const time = buf.readUInt32LE(off) * 1000 + buf.readUInt32LE(off + 4) / 1000;
    out.push({ time, linktype, data: buf.subarray(off + 16, off + 16 + len), origLength: buf.readUInt32LE(off + 12) });
    off += 16 + len;
  }
  return out;
}

/** The plain path: every event through JSON.stringify(toEve(...)), per-record hashes on. */
function referenceLines(frames: CapturedPacket[]): string[] {
  const lines: string[] = [];
  const ins = new CaptureInspector({
    keys: new StaticKeyProvider(sessions.map((s) => s.keySet)),
    onEvent: (e, f) => lines.push(JSON.stringify(toEve(e, f.meta))),
  });
  for (const p of frames) ins.packet(p);
  ins.finish();
  return lines;
}

async function cli(args: string[]): Promise<{ code: number; lines: string[] }> {
  const stdout = new PassThrough();
  let out = '';
  stdout.on('data', (d: Buffer) => (out += d.toString()));
  const stderr = new Writable({ write: (_c, _e, cb) => cb() });
  const code = await runInspect([pcap, '--keys', keys, '--no-progress', ...args], { stdout, stderr });
  return { code, lines: out.split('\n').filter((l) => l.length > 0) };
}

const withoutFlowId = (l: string) => l.replace(/"flow_id":\d+,/, '');

t.test('readCapture gives the records an independent split gives', async (t) => {
  const want = splitPcap(readFileSync(pcap));
  for (const hwm of [100, 4096, 1 << 20]) {
    for (const reuseChunks of [false, true]) {
      const got: CapturedPacket[] = [];
      // Reused chunks: a record is valid only during the call (copied here).
      const s = await readCapture(pcap, (p) => got.push(reuseChunks ? { ...p, data: Buffer.from(p.data) } : p), {
        highWaterMark: hwm,
        reuseChunks,
      });
      const how = `chunks of ${hwm}${reuseChunks ? ', reused' : ''}`;
      t.equal(s.packets, want.length, `${how}: count`);
      t.notOk(s.truncated);
      t.same(
        got.map((p) => [p.time, p.linktype, p.origLength, p.data.toString('hex')]),
        want.map((p) => [p.time, p.linktype, p.origLength, p.data.toString('hex')]),
        `${how}: records`,
      );
    }
  }
});

t.test('--hash records: the same lines as the plain path, in the same order', async (t) => {
  const ref = referenceLines(splitPcap(readFileSync(pcap)));
  const appdata = ref.filter((l) => l.includes('"event_type":"appdata"'));
  t.ok(appdata.length >= 3 * 30, 'application data of three flows reported');
  t.ok(
    ref.some((l) => l.includes('"event_type":"datachannel.message"')),
    'data channel reported',
  );
  t.ok(
    ref.some((l) => l.includes('"event_type":"rtp.packet"')),
    'SRTP reported',
  );
  t.equal(new Set(ref.map((l) => /"flow_id":(\d+)/.exec(l)?.[1])).size, FLOWS, 'four flows');
  const { code, lines } = await cli(['--hash', 'records']);
  t.equal(code, 0);
  t.same(lines, ref);
  // Every appdata hash is that of a record's plaintext.
  const hashes = lines.filter((l) => l.includes('"event_type":"appdata"')).map((l) => /"sha256":"([0-9a-f]{64})"/.exec(l)?.[1]);
  t.same(hashes.sort(), plaintexts.map(sha).sort(), 'appdata.sha256 of every record');
});

t.test('default: the same lines, appdata without its sha256; messages keep theirs', async (t) => {
  const ref = referenceLines(splitPcap(readFileSync(pcap)));
  const { code, lines } = await cli([]);
  t.equal(code, 0);
  t.same(
    lines,
    ref.map((l) => (l.includes('"event_type":"appdata"') ? l.replace(/,"sha256":"[0-9a-f]{64}"/, '') : l)),
  );
  t.notOk(
    lines.some((l) => l.includes('"event_type":"appdata"') && l.includes('sha256')),
    'no appdata hash',
  );
  t.ok(
    lines.some((l) => l.includes('"event_type":"datachannel.message"') && /"sha256":"[0-9a-f]{64}"/.test(l)),
    'message hash kept',
  );
  const bad = await cli(['--hash', 'everything']);
  t.equal(bad.code, 2, 'unknown --hash value refused');
});

t.test('interleaved flows: each flow reports what it reports alone', async (t) => {
  const all = referenceLines(splitPcap(readFileSync(pcap)));
  for (let f = 0; f < FLOWS; f++) {
    const alone = referenceLines(
      packets
        .filter((p) => p.flow === f)
        .map((p) => ({ time: p.time, linktype: LINKTYPE_ETHERNET, data: p.frame, origLength: p.frame.length })),
    );
    const port = `"src_port":${40000 + f},`;
    const port2 = `"dest_port":${40000 + f},`;
    const mine = all.filter((l) => l.includes(port) || l.includes(port2));
    t.ok(alone.length > 3, `flow ${f}: ${alone.length} events`);
    t.same(mine.map(withoutFlowId), alone.map(withoutFlowId), `flow ${f}: same events interleaved as alone`);
  }
});

t.test('eveLine is JSON.stringify(toEve(...)) for every event; encodeEveLine writes its bytes', async (t) => {
  let n = 0;
  let encoded = 0;
  const out = Buffer.alloc(4096);
  for (const hash of [false, true]) {
    const ins = new CaptureInspector({
      keys: new StaticKeyProvider(sessions.map((s) => s.keySet)),
      hashAppData: hash,
      onEvent: (e, f) => {
        n++;
        const a = eveLine(e, f.meta);
        const b = JSON.stringify(toEve(e, f.meta));
        if (a !== b) t.equal(a, b, `event ${n}`);
        // Encoded after a few bytes already in the batch; nothing written past the line.
        out.fill(0xee);
        const end = encodeEveLine(e, f.meta, out, 7);
        if (e.type !== 'appdata') {
          if (end !== -1) t.equal(end, -1, `event ${n} (${e.type}) is not encoded in place`);
          return;
        }
        encoded++;
        if (end < 0 || out.subarray(7, end).toString('utf8') !== a || out[end] !== 0xee || out[6] !== 0xee)
          t.equal(end < 0 ? `returned ${end}` : out.subarray(7, end).toString('utf8'), a, `event ${n}: encodeEveLine`);
        // No room: -2, and nothing written.
        const small = Buffer.alloc(a.length - 1, 0xee);
        if (encodeEveLine(e, f.meta, small, 0) !== -2 || small.some((x) => x !== 0xee)) t.fail(`event ${n}: too small a buffer`);
      },
    });
    for (const p of splitPcap(readFileSync(pcap))) ins.packet(p);
    ins.finish();
  }
  t.ok(n > 200, `${n} events compared`);
  t.ok(encoded > 150, `${encoded} appdata lines encoded in place, hashed and not`);
});

t.test('--threads N: byte for byte the single-threaded output and summary', async (t) => {
  const run = async (args: string[]): Promise<{ code: number; out: string; err: string }> => {
    const stdout = new PassThrough();
    let out = '';
    stdout.on('data', (d: Buffer) => (out += d.toString()));
    let err = '';
    const stderr = new Writable({ write: (c: Buffer, _e, cb) => ((err += c.toString()), cb()) });
    const code = await runInspect([pcap, '--keys', keys, '--no-progress', ...args], { stdout, stderr });
    return { code, out, err };
  };
  for (const extra of [[], ['--hash', 'records'], ['--no-rtp-packets']]) {
    const one = await run(['--threads', '1', ...extra]);
    t.equal(one.code, 0);
    t.ok(one.out.split('\n').length > 100, `${extra.join(' ') || 'default'}: ${one.out.split('\n').length - 1} lines`);
    for (const n of ['2', '3', 'auto']) {
      const many = await run(['--threads', n, ...extra]);
      t.equal(many.code, 0, `--threads ${n} ${extra.join(' ')}`);
      t.ok(many.out === one.out, `--threads ${n} ${extra.join(' ')}: the same bytes`);
      t.equal(many.err, one.err, `--threads ${n} ${extra.join(' ')}: the same summary`);
    }
  }
  for (const bad of ['0', '65', 'two', '1.5']) {
    const r = await run(['--threads', bad]);
    t.equal(r.code, 2, `--threads ${bad}: usage error`);
    t.match(r.err, /--threads: expected a number 1\.\.64 or "auto"/);
  }
});
