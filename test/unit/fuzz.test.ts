/**
 * Seeded mutation fuzzing of every parser on the inspection path: STUN, ChannelData (and
 * its stream framer), DTLS 1.2 records / handshake / hellos, DTLS 1.3 unified-header
 * records, SCTP chunks, DCEP, RTP/RTCP, SRTP/SRTCP unprotect, link/IP/UDP/TCP decoding
 * with the TCP and TURN framers, the TURN unwrapper, the whole FlowPipeline (DTLS session,
 * data channels, media) and the capture inspector.
 *
 * Seeds are valid packets built here (plus the recorded Firefox DTLS 1.3 records of
 * test/fixtures/browser when present). Mutations: bit flips, interesting bytes,
 * truncations, 16-bit length-field bumps, splices of two seeds, chunk duplication and
 * insertion. The property: no exception escapes a public entry point, and the run ends.
 * GH_FUZZ_SEED=<n> replays another seed; GH_FUZZ_SCALE multiplies the budget.
 */
import t from 'tap';
import { Mutator, prng } from '../../scripts/mutate.js';
import { existsSync, readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { StunWriter, messageType, Method, Class, Attr, decodeStun, getXorAddress, getAttr } from '../../src/wire/stun.js';
import { buildChannelData, parseChannelData, StreamFramer } from '../../src/wire/channeldata.js';
import {
  readRecord,
  newRecord,
  readHandshakeHeader,
  HandshakeReassembler,
  parseClientHello,
  parseServerHello,
  parseHelloVerifyRequest,
  parseEncryptedExtensions,
  type HandshakeHeader,
} from '../../src/wire/dtls.js';
import { Dtls13Writer, Dtls13Stream, parseUnifiedHeader } from '../../src/wire/dtls13.js';
import {
  parseChunks,
  decodeData,
  decodeIData,
  decodeInit,
  decodeSack,
  decodeForwardTsn,
  decodeReconfig,
  parseSctpHeader,
  ChunkIterator,
} from '../../src/wire/sctp.js';
import { decodeDcep, encodeDcepOpen } from '../../src/wire/dcep.js';
import {
  parseRtp,
  parseRtpHeader,
  parseRtpHeaderExtensions,
  parseRtcpCompound,
  parseRtcpReport,
  parseSdes,
  parseBye,
  parseFeedback,
  parseGenericNack,
  serializeRtp,
  buildOneByteExtensions,
} from '../../src/wire/rtp.js';
import { SrtpContext } from '../../src/wire/srtp.js';
import { demux, isRtcp } from '../../src/wire/demux.js';
import {
  LINKTYPE_ETHERNET,
  LINKTYPE_LINUX_SLL,
  LINKTYPE_LINUX_SLL2,
  LINKTYPE_NULL,
  LINKTYPE_RAW,
  IPPROTO_TCP,
  TCP_ACK,
  buildUdpFrame,
  buildIp,
  buildTcp,
  wrapLink,
  decodeFrame,
  decodeIp,
  decodeTcp,
  TurnStreamFramer,
  TcpStream,
  IpReassembler,
} from '../../src/wire/netpkt.js';
import { TurnUnwrapper } from '../../src/inspect/turn-unwrap.js';
import { FlowPipeline, StaticKeyProvider } from '../../src/inspect/pipeline.js';
import { CaptureInspector } from '../../src/inspect/capture.js';
import { DataChannelTracker } from '../../src/inspect/datachannel.js';
import { syntheticSession, SctpBuilder } from './inspect/pipeline-helpers.js';

const here = dirname(fileURLToPath(import.meta.url));
const SEED = Number(process.env.GH_FUZZ_SEED ?? 0x9e3779b9) >>> 0;
const SCALE = Math.max(0.01, Number(process.env.GH_FUZZ_SCALE ?? 1));

// ---------------------------------------------------------------------------------
// Seed corpora (valid packets).

const session = syntheticSession();
const sctp = new SctpBuilder();
const stunMsg = (m: number, c: number, fill: (w: StunWriter) => void) => {
  const w = new StunWriter().reset(messageType(m, c), randomBytes(12));
  fill(w);
  return w.fingerprint().copy();
};
const stunSeeds = [
  stunMsg(Method.Binding, Class.Request, (w) => w.attr(Attr.Username, 'a:b').u32(Attr.Priority, 1234)),
  stunMsg(Method.ChannelBind, Class.Request, (w) =>
    w.attr(Attr.ChannelNumber, Buffer.from([0x40, 1, 0, 0])).xorAddress(Attr.XorPeerAddress, '203.0.113.5', 6000),
  ),
  stunMsg(Method.Send, Class.Indication, (w) =>
    w.xorAddress(Attr.XorPeerAddress, '2001:db8::5', 6000).attr(Attr.Data, Buffer.from('payload')),
  ),
  stunMsg(Method.Allocate, Class.Success, (w) => w.xorAddress(Attr.XorRelayedAddress, '198.51.100.1', 49170).u32(Attr.Lifetime, 600)),
];
const sctpSeeds = [
  sctp.init(),
  sctp.open(1, 'chat'),
  sctp.message(1, Buffer.from('hello')),
  ...sctp.fragmented(1, randomBytes(3000), 1000),
];
const dtlsSeeds = [
  ...session.hello.map((h) => h.data),
  ...sctpSeeds.map((p) => session.appData(true, p)),
  session.appData(false, Buffer.from('plain')),
];
const hsBodies = session.hello.map((h) => h.data.subarray(13 + 12));
const dtls13Secret = randomBytes(32);
const w13 = new Dtls13Writer(0x1301, dtls13Secret, 3);
const dtls13Seeds = [
  w13.seal(23, Buffer.from('dtls13 app data')),
  w13.seal(23, randomBytes(200), { seqLen: 1 }),
  w13.seal(22, randomBytes(40), { withLength: false }),
];
const fixture = join(here, '..', 'fixtures', 'browser', 'firefox-dtls13-records.json');
let realRecords: Buffer[] = [];
if (existsSync(fixture)) {
  try {
    const fx = JSON.parse(readFileSync(fixture, 'utf8')) as { records?: { hex: string }[] };
    realRecords = (fx.records ?? []).map((r) => Buffer.from(r.hex, 'hex')).slice(0, 64);
  } catch {
    realRecords = [];
  }
}
const rtp = serializeRtp({
  payloadType: 111,
  sequenceNumber: 5,
  timestamp: 960,
  ssrc: 0x1234,
  payload: randomBytes(60),
  extension: {
    profile: 0xbede,
    data: buildOneByteExtensions([
      { id: 1, data: Buffer.from([0x30]) },
      { id: 3, data: Buffer.from([1, 2, 3]) },
    ]),
  },
});
const rtcpSr = (() => {
  const b = Buffer.alloc(28 + 8);
  b[0] = 0x80;
  b[1] = 200;
  b.writeUInt16BE(6, 2);
  b.writeUInt32BE(0x1234, 4);
  b[28] = 0x81;
  b[29] = 203; // BYE
  b.writeUInt16BE(1, 30);
  b.writeUInt32BE(0x1234, 32);
  return b;
})();
const srtpKey = randomBytes(16);
const srtpSalt = randomBytes(14);
const srtpTx = new SrtpContext(1, srtpKey, srtpSalt);
const gcmKey = randomBytes(16);
const gcmSalt = randomBytes(12);
const gcmTx = new SrtpContext(7, gcmKey, gcmSalt);
const srtpSeeds = [
  srtpTx.protectRtp(rtp),
  srtpTx.protectRtcp(rtcpSr),
  gcmTx.protectRtp(rtp),
  gcmTx.protectRtcp(rtcpSr),
  session.srtp(true, 1, randomBytes(100)),
];
const frames = [
  buildUdpFrame(LINKTYPE_ETHERNET, '10.0.0.1', 1000, '10.0.0.2', 3478, stunSeeds[1]!),
  buildUdpFrame(LINKTYPE_LINUX_SLL, '10.0.0.2', 3478, '10.0.0.1', 1000, buildChannelData(0x4001, dtlsSeeds[0]!)),
  buildUdpFrame(LINKTYPE_LINUX_SLL2, '2001:db8::1', 1000, '2001:db8::2', 2000, srtpSeeds[0]!),
  buildUdpFrame(LINKTYPE_NULL, '127.0.0.1', 1000, '127.0.0.1', 2000, dtlsSeeds[2]!),
  buildUdpFrame(LINKTYPE_RAW, '10.0.0.1', 1, '10.0.0.2', 2, dtls13Seeds[0]!),
  wrapLink(
    LINKTYPE_ETHERNET,
    buildIp(
      '10.0.0.1',
      '10.0.0.2',
      IPPROTO_TCP,
      buildTcp(1000, 3478, 1, TCP_ACK, Buffer.concat([stunSeeds[1]!, buildChannelData(0x4001, dtlsSeeds[1]!, true)])),
    ),
  ),
  wrapLink(LINKTYPE_ETHERNET, buildIp('10.0.0.1', '10.0.0.2', 17, Buffer.alloc(40, 1), { id: 9, moreFragments: true })),
];

// ---------------------------------------------------------------------------------

interface Target {
  name: string;
  seeds: Buffer[];
  run: (b: Buffer) => void;
  weight: number;
}

const hh: HandshakeHeader = { msgType: 0, length: 0, messageSeq: 0, fragmentOffset: 0, fragmentLength: 0 };
const rec = newRecord();
const reasm = new HandshakeReassembler();
const stream13 = new Dtls13Stream(0x1301, dtls13Secret, 3);
const srtpRx = () => new SrtpContext(1, srtpKey, srtpSalt);
const gcmRx = () => new SrtpContext(7, gcmKey, gcmSalt);
let srtpA = srtpRx();
let srtpB = gcmRx();
const dct = new DataChannelTracker(() => {});
const unwrap = new TurnUnwrapper({ maxConnections: 64 });
const framer = new StreamFramer();
const turnFramer = { f: new TurnStreamFramer(() => {}) };
const ipr = new IpReassembler(16);
const tcp = { s: new TcpStream(() => {}, 8, 1 << 16), n: 0 };

const targets: Target[] = [
  {
    name: 'stun',
    seeds: stunSeeds,
    weight: 1,
    run: (b) => {
      const m = decodeStun(b);
      if (m) {
        getXorAddress(m, Attr.XorPeerAddress);
        getXorAddress(m, Attr.XorRelayedAddress);
        getAttr(m, Attr.Data);
      }
    },
  },
  {
    name: 'channeldata',
    seeds: [buildChannelData(0x4001, dtlsSeeds[0]!), buildChannelData(0x4fff, Buffer.alloc(3), true)],
    weight: 1,
    run: (b) => {
      parseChannelData(b);
      if (!framer.push(b, () => {})) framer.broken = false;
    },
  },
  {
    name: 'dtls',
    seeds: [...dtlsSeeds, ...hsBodies],
    weight: 1,
    run: (b) => {
      let off = 0;
      for (let i = 0; i < 64 && off < b.length; i++) {
        const n = readRecord(b, off, rec);
        if (n < 0) break;
        off = n;
        if (!rec.unified && rec.type === 22 && rec.epoch === 0) {
          const f = rec.fragment;
          const hl = readHandshakeHeader(f, 0, hh);
          if (hl > 0) {
            const m = reasm.add(hh, f.subarray(12, 12 + hh.fragmentLength));
            if (m) {
              parseClientHello(m.body);
              parseServerHello(m.body);
            }
          }
        }
      }
      parseClientHello(b);
      parseServerHello(b);
      parseHelloVerifyRequest(b);
      parseEncryptedExtensions(b);
    },
  },
  {
    name: 'dtls13',
    seeds: [...dtls13Seeds, ...realRecords],
    weight: 1,
    run: (b) => {
      parseUnifiedHeader(b, 0);
      stream13.open(b, 0);
    },
  },
  {
    name: 'sctp',
    seeds: sctpSeeds,
    weight: 1,
    run: (b) => {
      parseSctpHeader(b);
      const { chunks } = parseChunks(b);
      for (const c of chunks) {
        const v = c.value;
        decodeData(c.flags, v);
        decodeIData(c.flags, v);
        decodeInit(v);
        decodeSack(v);
        decodeForwardTsn(v);
        decodeReconfig(v);
      }
      const it = new ChunkIterator();
      it.reset(b);
      for (let i = 0; i < 256 && it.next(); i++);
    },
  },
  {
    name: 'datachannel-tracker',
    seeds: sctpSeeds,
    weight: 1,
    run: (b) => dct.push(b, b.length & 1 ? 'c2s' : 's2c', 0),
  },
  {
    name: 'dcep',
    seeds: [encodeDcepOpen({ label: 'chat', protocol: 'x' }), Buffer.from([2])],
    weight: 0.5,
    run: (b) => void decodeDcep(b),
  },
  {
    name: 'rtp/rtcp',
    seeds: [rtp, rtcpSr],
    weight: 1,
    run: (b) => {
      const h = parseRtp(b) ?? parseRtpHeader(b);
      if (h) parseRtpHeaderExtensions(b, h);
      const parts = parseRtcpCompound(b);
      if (parts) {
        for (const p of parts) {
          parseRtcpReport(b, p);
          parseSdes(b, p);
          parseBye(b, p);
          const fb = parseFeedback(b, p);
          if (fb) parseGenericNack(b, fb);
        }
      }
    },
  },
  {
    name: 'srtp-unprotect',
    seeds: srtpSeeds,
    weight: 1,
    run: (b) => {
      if (isRtcp(b)) {
        srtpA.unprotectRtcp(b);
        srtpB.unprotectRtcp(b);
      } else {
        srtpA.unprotectRtp(b);
        srtpB.unprotectRtp(b);
      }
    },
  },
  {
    name: 'netpkt',
    seeds: frames,
    weight: 1.5,
    run: (b) => {
      for (const lt of [LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_NULL, LINKTYPE_RAW]) {
        const d = decodeFrame(lt, b);
        if (d?.tcp) {
          tcp.s.push(d.tcp);
          if (++tcp.n % 64 === 0) tcp.s = new TcpStream(() => {}, 8, 1 << 16);
        }
      }
      const ip = decodeIp(b, 14);
      if (ip?.fragment) ipr.push(ip, 0);
      const seg = decodeTcp(b);
      if (seg) turnFramer.f.push(seg.payload);
      if (turnFramer.f.broken) turnFramer.f = new TurnStreamFramer(() => {});
    },
  },
  {
    name: 'turn-unwrap',
    seeds: [...stunSeeds, buildChannelData(0x4001, Buffer.from('x'))],
    weight: 1,
    run: (b) => void unwrap.unwrap(b.length & 1 ? 'udp' : 'tcp', '10.0.0.1', 1000 + (b.length & 7), '10.0.0.2', 3478, b, 0),
  },
];

t.test(`mutation fuzz (seed ${SEED}, scale ${SCALE})`, { timeout: 600_000 }, async (t) => {
  const r = prng(SEED);
  const mut = new Mutator(r);
  const perUnit = Math.round(9000 * SCALE);
  let total = 0;
  const escapes: string[] = [];
  for (const tg of targets) {
    const n = Math.round(perUnit * tg.weight);
    let bad = 0;
    for (let i = 0; i < n; i++) {
      const input = mut.mutate(mut.pick(tg.seeds), tg.seeds);
      try {
        tg.run(input);
        demux(input);
      } catch (e) {
        bad++;
        if (escapes.length < 5)
          escapes.push(
            `${tg.name}: ${(e as Error).stack?.split('\n').slice(0, 4).join(' | ')} input=${input.toString('hex').slice(0, 200)}`,
          );
      }
      // Fresh SRTP state now and then, so the ROC estimate does not drift forever.
      if (tg.name === 'srtp-unprotect' && i % 500 === 0) {
        srtpA = srtpRx();
        srtpB = gcmRx();
      }
    }
    total += n;
    t.equal(bad, 0, `${tg.name}: ${n} mutated inputs, no exception escaped`);
  }

  // The whole pipeline: a valid session whose datagrams are mutated with some probability,
  // fed in order (so the DTLS session, data channel and media trackers run on real state).
  const base = [
    ...session.hello.map((h) => ({ fromClient: h.fromClient, data: h.data })),
    // dtlsSeeds: hellos, the client's SCTP records, then one server record (last).
    ...dtlsSeeds.slice(2).map((d, i, a) => ({ fromClient: i < a.length - 1, data: d })),
    ...[1, 2, 3, 4].map((i) => ({ fromClient: i % 2 === 0, data: session.srtp(i % 2 === 0, 100 + i, randomBytes(50)) })),
    { fromClient: true, data: stunSeeds[0]! },
  ];
  const corpus = base.map((b) => b.data);
  {
    // Sanity: unmutated, the session decrypts (so mutated runs exercise the deep paths).
    const types = new Set<string>();
    const p = new FlowPipeline({ keys: new StaticKeyProvider([session.keySet]) }).on((e) => types.add(e.type));
    for (const d of base) p.feed(d.data, d.fromClient ? 'c2s' : 's2c', 0);
    t.ok(types.has('datachannel.message') && types.has('appdata') && types.has('rtp.packet'), `baseline events: ${[...types].join(',')}`);
  }
  const runs = Math.round(600 * SCALE);
  let pipeBad = 0;
  let pipeInputs = 0;
  const keys = new StaticKeyProvider([session.keySet]);
  for (let k = 0; k < runs; k++) {
    const p = new FlowPipeline({ keys });
    let events = 0;
    p.on(() => events++);
    for (const d of base) {
      const data = r() < 0.5 ? mut.mutate(d.data, corpus) : d.data;
      pipeInputs++;
      try {
        p.feed(data, d.fromClient ? 'c2s' : 's2c', k * 100);
      } catch (e) {
        pipeBad++;
        if (escapes.length < 5) escapes.push(`pipeline: ${(e as Error).stack?.split('\n').slice(0, 4).join(' | ')}`);
      }
    }
    try {
      p.close();
    } catch (e) {
      pipeBad++;
      if (escapes.length < 5) escapes.push(`pipeline close: ${(e as Error).message}`);
    }
    if (p.counters.internalErrors > 0 && escapes.length < 5) escapes.push(`pipeline internal error on run ${k}`);
    pipeBad += p.counters.internalErrors;
  }
  total += pipeInputs;
  t.equal(pipeBad, 0, `FlowPipeline: ${pipeInputs} datagrams (${runs} sessions), no exception and no internal error`);

  // The capture inspector on mutated frames.
  const ins = new CaptureInspector({ keys, onEvent: () => {} });
  const nFrames = Math.round(9000 * SCALE);
  let capBad = 0;
  for (let i = 0; i < nFrames; i++) {
    const f = mut.mutate(mut.pick(frames), frames);
    try {
      ins.packet({
        time: i,
        linktype: mut.pick([LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_NULL, LINKTYPE_RAW, 7]),
        data: f,
        origLength: f.length,
      });
    } catch (e) {
      capBad++;
      if (escapes.length < 5) escapes.push(`capture: ${(e as Error).stack?.split('\n').slice(0, 4).join(' | ')}`);
    }
  }
  ins.finish();
  total += nFrames;
  t.equal(capBad, 0, `CaptureInspector: ${nFrames} mutated frames`);
  t.equal(ins.totals.internalErrors, 0, 'no internal errors in pipelines behind the inspector');
  t.same(escapes, [], 'first escapes (if any)');
  if (SCALE >= 1) t.ok(total >= 100_000, `${total} mutated inputs in total`);
});
