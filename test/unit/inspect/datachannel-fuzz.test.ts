// Seeded mutation fuzzing of the SCTP/DCEP decoders and the DataChannelTracker:
// 10^4 mutated packets (re-checksummed so they reach the chunk parsers), no exception
// may escape, memory accounting stays within the caps and returns to zero, and every
// emitted message is self-consistent.
import t from 'tap';
import { createHash } from 'node:crypto';
import { DataChannelTracker } from '../../../src/inspect/datachannel.js';
import type { InspectEvent } from '../../../src/inspect/events.js';
import {
  ChunkType,
  computeSctpChecksum,
  decodeAbort,
  decodeCookieEcho,
  decodeData,
  decodeForwardTsn,
  decodeHeartbeat,
  decodeIData,
  decodeIForwardTsn,
  decodeInit,
  decodeReconfig,
  decodeSack,
  decodeShutdown,
  encodeChunk,
  encodeDataChunk,
  encodeForwardTsnChunk,
  encodeIDataChunk,
  encodeInitChunk,
  encodeOutgoingResetChunk,
  encodeSackChunk,
  encodeSctpPacket,
  encodeTlv,
  parseChunks,
  ParamType,
} from '../../../src/wire/sctp.js';
import { decodeDcep, encodeDcepAck, encodeDcepOpen } from '../../../src/wire/dcep.js';
import { detectFileType } from '../../../src/inspect/filetype.js';

function rng(seed: number) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 0x100000000;
  };
}

/** A varied, valid packet stream for one association (both directions). */
function corpus(r: () => number): Array<{ pkt: Buffer; dir: 'c2s' | 's2c' }> {
  const out: Array<{ pkt: Buffer; dir: 'c2s' | 's2c' }> = [];
  const tags = { c2s: 0xa1a1a1a1, s2c: 0xb2b2b2b2 };
  const tsn = { c2s: 100, s2c: 0xfffffff0 };
  const pk = (dir: 'c2s' | 's2c', chunks: Buffer[]) =>
    out.push({ pkt: encodeSctpPacket(5000, 5000, dir === 'c2s' ? tags.s2c : tags.c2s, chunks), dir });
  const ext = [
    encodeTlv(ParamType.SUPPORTED_EXTENSIONS, Buffer.from([130, 192, 64, 194])),
    encodeTlv(ParamType.FORWARD_TSN_SUPPORTED, Buffer.alloc(0)),
  ];
  out.push({
    pkt: encodeSctpPacket(5000, 5000, 0, [encodeInitChunk(false, { initiateTag: tags.c2s, initialTsn: tsn.c2s, params: ext })]),
    dir: 'c2s',
  });
  out.push({
    pkt: encodeSctpPacket(5000, 5000, tags.c2s, [
      encodeInitChunk(true, {
        initiateTag: tags.s2c,
        initialTsn: tsn.s2c,
        params: [...ext, encodeTlv(ParamType.STATE_COOKIE, Buffer.alloc(32, 7))],
      }),
    ]),
    dir: 's2c',
  });
  const take = (dir: 'c2s' | 's2c') => {
    const v = tsn[dir];
    tsn[dir] = (tsn[dir] + 1) >>> 0;
    return v;
  };
  pk('c2s', [encodeDataChunk({ tsn: take('c2s'), stream: 0, ppid: 50, data: encodeDcepOpen({ label: 'fuzz', protocol: 'p' }) })]);
  pk('s2c', [encodeDataChunk({ tsn: take('s2c'), stream: 0, ppid: 50, data: encodeDcepAck() })]);
  for (let i = 0; i < 120; i++) {
    const dir = r() < 0.6 ? 'c2s' : 's2c';
    const kind = r();
    const stream = Math.floor(r() * 4);
    if (kind < 0.5) {
      const len = 1 + Math.floor(r() * 4000);
      const data = Buffer.alloc(len, i);
      const frag = 300 + Math.floor(r() * 1000);
      const ppid = [51, 53, 52, 54, 0, 57][Math.floor(r() * 6)]!;
      const unordered = r() < 0.3;
      const chunks: Buffer[] = [];
      for (let off = 0; off < len; off += frag) {
        chunks.push(
          encodeDataChunk({
            tsn: take(dir),
            stream,
            ssn: i & 0xffff,
            ppid,
            unordered,
            begin: off === 0,
            end: off + frag >= len,
            data: data.subarray(off, off + frag),
          }),
        );
      }
      for (let k = 0; k < chunks.length; k += 2) pk(dir, chunks.slice(k, k + 2));
    } else if (kind < 0.65) {
      const len = 1 + Math.floor(r() * 3000);
      const data = Buffer.alloc(len, i);
      for (let off = 0, fsn = 0; off < len; off += 500, fsn++) {
        pk(dir, [
          encodeIDataChunk({
            tsn: take(dir),
            stream,
            mid: i,
            fsn,
            ppid: 53,
            begin: off === 0,
            end: off + 500 >= len,
            data: data.subarray(off, off + 500),
          }),
        ]);
      }
    } else if (kind < 0.72) {
      pk(dir, [encodeSackChunk((tsn[dir === 'c2s' ? 's2c' : 'c2s'] - 1) >>> 0, 1000, [[2, 4]], [5])]);
    } else if (kind < 0.78) {
      pk(dir, [encodeForwardTsnChunk((tsn[dir] + Math.floor(r() * 3) - 1) >>> 0, [{ stream, ssn: 1 }], r() < 0.5)]);
    } else if (kind < 0.83) {
      pk(dir, [encodeOutgoingResetChunk(i, i, (tsn[dir] - 1) >>> 0, [stream])]);
    } else if (kind < 0.88) {
      pk(dir, [encodeDataChunk({ tsn: take(dir), stream, ppid: 50, data: encodeDcepOpen({ label: `l${i}` }) })]);
    } else if (kind < 0.93) {
      pk(dir, [encodeChunk(ChunkType.HEARTBEAT, 0, encodeTlv(1, Buffer.alloc(8, i)))]);
    } else {
      pk(dir, [encodeChunk(ChunkType.COOKIE_ECHO, 0, Buffer.alloc(20, i)), encodeChunk(ChunkType.COOKIE_ACK, 0, Buffer.alloc(0))]);
    }
  }
  return out;
}

function mutate(p: Buffer, r: () => number): Buffer {
  let b = Buffer.from(p);
  const n = 1 + Math.floor(r() * 4);
  for (let k = 0; k < n; k++) {
    const m = r();
    if (m < 0.35 && b.length > 12) {
      const i = 12 + Math.floor(r() * (b.length - 12));
      b[i] = Math.floor(r() * 256);
    } else if (m < 0.5 && b.length > 16) {
      // Mangle a chunk length field (at the first chunk, or a random aligned spot).
      const i = r() < 0.5 ? 14 : 12 + 4 * Math.floor(r() * ((b.length - 12) / 4));
      if (i + 2 <= b.length) b.writeUInt16BE([0, 1, 3, 4, 0xffff, Math.floor(r() * 0x10000)][Math.floor(r() * 6)]!, i);
    } else if (m < 0.6) {
      b = b.subarray(0, Math.floor(r() * b.length));
    } else if (m < 0.7) {
      b = Buffer.concat([b, Buffer.from(Array.from({ length: Math.floor(r() * 40) }, () => Math.floor(r() * 256)))]);
    } else if (m < 0.8 && b.length > 20) {
      // Overwrite a TSN / stream / PPID-ish word with an extreme value.
      const i = 16 + Math.floor(r() * Math.max(1, b.length - 20));
      if (i + 4 <= b.length) b.writeUInt32BE([0, 0xffffffff, 0x80000000, 0x7fffffff][Math.floor(r() * 4)]!, i);
    } else if (m < 0.9 && b.length > 12) {
      b[12] = [0, 1, 2, 3, 6, 64, 130, 192, 194, 255][Math.floor(r() * 10)]!; // chunk type swap
    } else if (b.length > 13) {
      b[13] = Math.floor(r() * 256); // chunk flags
    }
  }
  if (b.length >= 12 && r() < 0.9) b.writeUInt32LE(computeSctpChecksum(b), 8);
  return b;
}

t.test('tracker survives 10^4 mutated packets', async (t) => {
  const r = rng(0xc0ffee);
  const events: InspectEvent[] = [];
  const caps = { maxReassemblyBytes: 256 * 1024, maxFragments: 2000, maxMessageBytes: 64 * 1024, maxPartialMessages: 16 };
  let tr = new DataChannelTracker((e) => events.push(e), caps);
  let thrown = 0;
  let overCap = 0;
  let fed = 0;
  let bad = 0;
  let internal = 0;
  const totals = { messages: 0, dataChunks: 0, badChecksum: 0, malformed: 0, badChunks: 0 };
  while (fed < 10000) {
    const base = corpus(r);
    for (const { pkt, dir } of base) {
      if (fed >= 10000) break;
      const p = r() < 0.75 ? mutate(pkt, r) : pkt;
      try {
        tr.push(p, r() < 0.05 ? (dir === 'c2s' ? 's2c' : 'c2s') : dir, fed);
      } catch {
        thrown++;
      }
      fed++;
      if (
        tr.bufferedBytes < 0 ||
        tr.bufferedBytes > caps.maxReassemblyBytes ||
        tr.bufferedFragments < 0 ||
        tr.bufferedFragments > caps.maxFragments
      )
        overCap++;
    }
    for (const e of events) {
      if (e.type === 'file' && e.headOnly) {
        // A transfer not spooled (issue 9): data is its head, size/sha256 the whole.
        if (e.data.length > e.size || !/^[0-9a-f]{64}$/.test(e.sha256)) bad++;
      } else if (e.type === 'datachannel.message' || e.type === 'file') {
        if (e.size !== e.data.length || e.sha256 !== createHash('sha256').update(e.data).digest('hex')) bad++;
      }
    }
    events.length = 0;
    internal += tr.stats.internalErrors;
    for (const k of Object.keys(totals) as Array<keyof typeof totals>) totals[k] += tr.stats[k];
    tr.close();
    if (tr.bufferedBytes !== 0 || tr.bufferedFragments !== 0) overCap++;
    tr = new DataChannelTracker((e) => events.push(e), caps);
  }
  t.equal(thrown, 0, 'no exception escaped');
  t.equal(overCap, 0, 'accounting within caps and back to zero on close');
  t.equal(bad, 0, 'messages self-consistent');
  t.equal(internal, 0, 'no exception caught inside the tracker either');
  // The fuzz reached the interesting paths (not everything was rejected up front).
  t.ok(
    totals.messages > 100 && totals.dataChunks > 1000 && totals.badChecksum > 0 && totals.malformed > 0 && totals.badChunks > 0,
    JSON.stringify(totals),
  );
  t.equal(fed, 10000);
});

t.test('decoders never throw on random and mutated input', async (t) => {
  const r = rng(42);
  let thrown = 0;
  const decoders: Array<(b: Buffer, f: number) => unknown> = [
    (b, f) => decodeData(f, b),
    (b, f) => decodeIData(f, b),
    (b) => decodeInit(b),
    (b) => decodeSack(b),
    (b) => decodeForwardTsn(b),
    (b) => decodeIForwardTsn(b),
    (b, f) => decodeAbort(f, b),
    (b) => decodeShutdown(b),
    (b) => decodeHeartbeat(b),
    (b) => decodeCookieEcho(b),
    (b) => decodeReconfig(b),
    (b) => decodeDcep(b),
    (b) => detectFileType(b),
    (b) => parseChunks(b),
  ];
  const seeds = [
    Buffer.from('03000100000000000004000174657374', 'hex'),
    encodeInitChunk(false, { initiateTag: 1, initialTsn: 2, params: [encodeTlv(0x8008, Buffer.from([1, 2, 3]))] }).subarray(4),
    encodeOutgoingResetChunk(1, 2, 3, [4, 5]).subarray(4),
    encodeSackChunk(1, 2, [[1, 2]], [3]).subarray(4),
    Buffer.from('PK\x03\x04', 'latin1'),
    Buffer.from('MZ', 'latin1'),
    Buffer.from('d0cf11e0a1b11ae1', 'hex'),
  ];
  for (let i = 0; i < 20000; i++) {
    const base = seeds[i % seeds.length]!;
    const b = Buffer.from(r() < 0.5 ? base : Buffer.from(Array.from({ length: Math.floor(r() * 80) }, () => Math.floor(r() * 256))));
    for (let k = 0; k < 3 && b.length > 0; k++) b[Math.floor(r() * b.length)] = Math.floor(r() * 256);
    const pad = Buffer.concat([b, Buffer.alloc(Math.floor(r() * 600))]);
    for (const d of decoders) {
      try {
        d(b, Math.floor(r() * 256));
        d(pad, 0);
      } catch {
        thrown++;
      }
    }
  }
  t.equal(thrown, 0);
});
