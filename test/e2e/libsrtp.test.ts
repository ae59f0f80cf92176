/**
 * Interop with libsrtp2 (Debian libsrtp2-dev), an independent SRTP implementation:
 * test/tools/srtp_tool.c protects RTP/RTCP with libsrtp2 for each DTLS-SRTP profile and we
 * unprotect them, and the reverse (our protect -> libsrtp2 unprotect). Includes a sequence
 * number wrap (65530 -> 5, ROC 0 -> 1), several SSRCs, CSRCs, header extensions, padding,
 * empty and odd-sized payloads, SRTCP compound packets, and bit flips that must fail
 * authentication on both sides.
 */
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import {
  SrtpContext,
  SRTP_AES128_CM_HMAC_SHA1_80,
  SRTP_AES128_CM_HMAC_SHA1_32,
  SRTP_AEAD_AES_128_GCM,
  SRTP_AEAD_AES_256_GCM,
  srtpProfileParams,
} from '../../src/wire/srtp.js';
import { serializeRtp, buildOneByteExtensions, parseRtpHeader } from '../../src/wire/rtp.js';
import { requirePeer } from './helpers/require-peer.js';

const here = dirname(fileURLToPath(import.meta.url));
const toolSrc = join(here, '..', 'tools', 'srtp_tool.c');

interface Rec {
  kind: 'r' | 'c';
  status: number;
  data: Buffer;
}

function encodeRecords(recs: { kind: 'r' | 'c'; data: Buffer }[]): Buffer {
  return Buffer.concat(
    recs.flatMap((r) => {
      const h = Buffer.alloc(4);
      h[0] = r.kind.charCodeAt(0);
      h.writeUInt16BE(r.data.length, 2);
      return [h, r.data];
    }),
  );
}

function decodeRecords(buf: Buffer): Rec[] {
  const out: Rec[] = [];
  let p = 0;
  while (p + 4 <= buf.length) {
    const len = buf.readUInt16BE(p + 2);
    out.push({ kind: String.fromCharCode(buf[p]) as 'r' | 'c', status: buf[p + 1], data: buf.subarray(p + 4, p + 4 + len) });
    p += 4 + len;
  }
  return out;
}

/** Known payload pattern: depends on SSRC, seq and position, so mix-ups show. */
function pattern(ssrc: number, seq: number, len: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) b[i] = (ssrc + seq * 7 + i * 13) & 0xff;
  return b;
}

function rtpSeries(): { pkt: Buffer; index: number }[] {
  const out: { pkt: Buffer; index: number }[] = [];
  const sizes = [160, 1, 0, 15, 16, 17, 1200, 33, 700, 64, 500, 960];
  let k = 0;
  // SSRC A: wraps 65530 -> 5 (ROC 0 -> 1, RFC 3711 §3.3.1).
  for (let i = 0; i < 12; i++) {
    const seq = (65530 + i) & 0xffff;
    const size = sizes[k++ % sizes.length];
    const opts: Parameters<typeof serializeRtp>[0] = {
      payloadType: 111,
      sequenceNumber: seq,
      timestamp: 1000 + 960 * i,
      ssrc: 0x11223344,
      marker: i === 0,
      payload: pattern(0x11223344, seq, size),
    };
    if (i === 2) opts.csrcs = [0xa1a2a3a4, 0xb1b2b3b4];
    if (i === 3)
      opts.extension = {
        profile: 0xbede,
        data: buildOneByteExtensions([
          { id: 1, data: Buffer.from([0x30]) },
          { id: 3, data: Buffer.from([1, 2, 3]) },
        ]),
      };
    if (i === 4 && size > 0) opts.padding = 4;
    out.push({ pkt: serializeRtp(opts), index: i < 6 ? seq : 65536 + seq });
    // SSRC B interleaved, no wrap.
    const seqB = 100 + i;
    out.push({
      pkt: serializeRtp({
        payloadType: 96,
        sequenceNumber: seqB,
        timestamp: 90000 * i,
        ssrc: 0xcafebabe,
        payload: pattern(0xcafebabe, seqB, sizes[(k + 5) % sizes.length] + 3),
      }),
      index: seqB,
    });
  }
  return out;
}

function rtcpSeries(): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < 4; i++) {
    // SR (RFC 3550 §6.4.1) with no report blocks, then SDES CNAME (§6.5).
    const sr = Buffer.alloc(28);
    sr[0] = 0x80;
    sr[1] = 200;
    sr.writeUInt16BE(6, 2);
    sr.writeUInt32BE(0x11223344, 4);
    sr.writeUInt32BE(0xe0000000 + i, 8);
    sr.writeUInt32BE(i * 1000, 16);
    sr.writeUInt32BE(10 + i, 20);
    sr.writeUInt32BE(1600 * i, 24);
    const cname = Buffer.from('gatehouse@test');
    const sdesLen = 4 + 4 + 2 + cname.length + 1;
    const padded = (sdesLen + 3) & ~3;
    const sdes = Buffer.alloc(padded);
    sdes[0] = 0x81;
    sdes[1] = 202;
    sdes.writeUInt16BE(padded / 4 - 1, 2);
    sdes.writeUInt32BE(0x11223344, 4);
    sdes[8] = 1;
    sdes[9] = cname.length;
    cname.copy(sdes, 10);
    out.push(Buffer.concat([sr, sdes]));
  }
  return out;
}

const profiles = [SRTP_AES128_CM_HMAC_SHA1_80, SRTP_AES128_CM_HMAC_SHA1_32, SRTP_AEAD_AES_128_GCM, SRTP_AEAD_AES_256_GCM];

t.test('libsrtp2 interop', async (t) => {
  // Missing libsrtp2-dev or gcc: a failure in CI, a skip with the reason elsewhere (never a pass).
  if (!requirePeer(t, 'libsrtp2', 'gcc')) return;
  const dir = mkdtempSync(join(tmpdir(), 'gatehouse-libsrtp-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const tool = join(dir, 'srtp_tool');
  execFileSync('gcc', ['-O2', '-Wall', toolSrc, '-o', tool, '-lsrtp2'], { stdio: 'pipe', timeout: 120_000 });
  const run = (args: string[], input: Buffer): Rec[] =>
    decodeRecords(execFileSync(tool, args, { input, timeout: 60_000, maxBuffer: 64 << 20 }));

  for (const profile of profiles) {
    const p = srtpProfileParams(profile)!;
    t.test(p.name, async (t) => {
      const key = randomBytes(p.keyLength);
      const salt = randomBytes(p.saltLength);
      const keyArg = Buffer.concat([key, salt]).toString('hex');
      const series = rtpSeries();
      const rtcp = rtcpSeries();
      const input = encodeRecords([
        ...series.map((s) => ({ kind: 'r' as const, data: s.pkt })),
        ...rtcp.map((d) => ({ kind: 'c' as const, data: d })),
      ]);

      // libsrtp2 protects, we unprotect.
      const prot = run(['protect', String(profile), keyArg], input);
      t.equal(prot.length, series.length + rtcp.length, 'one record per packet');
      t.ok(
        prot.every((r) => r.status === 0),
        'libsrtp2 protected everything',
      );
      const rx = new SrtpContext(profile, key, salt, { replayWindow: 128 });
      let okRtp = 0;
      for (let i = 0; i < series.length; i++) {
        const protectedPkt = prot[i].data;
        t.equal(protectedPkt.length, series[i].pkt.length + p.rtpTagLength, 'tag length');
        const out = rx.unprotectRtp(protectedPkt);
        if (out && out.equals(series[i].pkt) && rx.lastRtpIndex === series[i].index) okRtp++;
        else
          t.fail(
            `RTP packet ${i} (seq ${parseRtpHeader(series[i].pkt)?.sequenceNumber}): ${rx.lastFailure}, index ${rx.lastRtpIndex} want ${series[i].index}`,
          );
      }
      t.equal(okRtp, series.length, 'all RTP packets recovered exactly, ROC followed across the wrap');
      t.equal(rx.unprotectRtp(prot[0].data), null, 'replayed packet rejected');
      t.equal(rx.lastFailure, 'replay');
      let firstIndex = -1;
      for (let i = 0; i < rtcp.length; i++) {
        const out = rx.unprotectRtcp(prot[series.length + i].data);
        t.same(out?.toString('hex'), rtcp[i].toString('hex'), `RTCP ${i} recovered`);
        if (i === 0) firstIndex = rx.lastRtcpIndex;
        // libsrtp2 starts its SRTCP index at 1; what matters is that it counts up by one.
        else t.equal(rx.lastRtcpIndex, firstIndex + i, 'SRTCP index read from the trailer');
      }
      t.ok(firstIndex === 0 || firstIndex === 1, 'first SRTCP index 0 or 1');
      // Bit flips anywhere fail authentication, and never yield plaintext.
      for (const [which, rec] of [
        ['rtp', prot[12]],
        ['rtcp', prot[series.length + 1]],
      ] as const) {
        for (const pos of [1, 9, 14, rec.data.length - 1]) {
          const bad = Buffer.from(rec.data);
          bad[pos] ^= 0x10;
          const fresh = new SrtpContext(profile, key, salt);
          const res = which === 'rtp' ? fresh.unprotectRtp(bad) : fresh.unprotectRtcp(bad);
          t.equal(res, null, `${which} flip at ${pos} rejected`);
        }
      }
      // Wrong key fails.
      t.equal(new SrtpContext(profile, randomBytes(p.keyLength), salt).unprotectRtp(prot[0].data), null, 'wrong key rejected');

      // Reverse: we protect, libsrtp2 unprotects.
      const tx = new SrtpContext(profile, key, salt);
      const ours = [
        ...series.map((s) => ({ kind: 'r' as const, data: tx.protectRtp(s.pkt) })),
        ...rtcp.map((d) => ({ kind: 'c' as const, data: tx.protectRtcp(d) })),
      ];
      const flipped = Buffer.from(ours[5].data);
      flipped[flipped.length - 2] ^= 0x01;
      const back = run(['unprotect', String(profile), keyArg], encodeRecords([...ours, { kind: 'r', data: flipped }]));
      t.equal(back.length, ours.length + 1);
      let okBack = 0;
      for (let i = 0; i < series.length; i++) if (back[i].status === 0 && back[i].data.equals(series[i].pkt)) okBack++;
      t.equal(okBack, series.length, 'libsrtp2 recovered all our SRTP packets');
      for (let i = 0; i < rtcp.length; i++)
        t.ok(back[series.length + i].status === 0 && back[series.length + i].data.equals(rtcp[i]), `libsrtp2 recovered our SRTCP ${i}`);
      t.not(back[ours.length].status, 0, 'libsrtp2 rejects our packet with a flipped tag bit');
    });
  }
});
