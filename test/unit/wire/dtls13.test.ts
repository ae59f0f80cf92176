// Unit tests for src/wire/dtls13.ts: real Firefox ESR DTLS 1.3 records (fixture cut from a
// harness capture), the record-number mask primitive against published vectors, the AAD
// rule, sequence reconstruction, KeyUpdate, all three suites, and hostile input.
import t from 'tap';
import fc from 'fast-check';
import { readFileSync } from 'node:fs';
import { createDecipheriv } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import {
  Dtls13Reader,
  Dtls13Writer,
  Dtls13Stream,
  deriveTrafficKeys,
  nextTrafficSecret,
  isUnifiedHeader,
  unifiedRecordEnd,
  parseUnifiedHeader,
  recordNumberMask,
  reconstructSeq,
  findKeyUpdate,
  parseAck,
  dtls13SuiteInfo,
  CT_APPLICATION_DATA,
  CT_HANDSHAKE,
  CT_ACK,
  CT_ALERT,
} from '../../../src/wire/dtls13.js';
import { hkdfExpand } from '../../../src/wire/hkdf.js';

const h = (s: string) => Buffer.from(s, 'hex');
const fx = JSON.parse(
  readFileSync(fileURLToPath(new URL('../../fixtures/browser/firefox-dtls13-records.json', import.meta.url)), 'utf8'),
) as {
  suite: number;
  secrets: Record<string, string>;
  records: { dir: 'c2s' | 's2c'; hex: string }[];
};

/** RFC 4960 Appendix B: CRC32c (Castagnoli), reflected, as stored little-endian in the SCTP header. */
const CRC_TABLE = (() => {
  const tb = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    tb[i] = c >>> 0;
  }
  return tb;
})();
function sctpChecksumOk(p: Buffer): boolean {
  const q = Buffer.from(p);
  const stored = q.readUInt32LE(8);
  q.writeUInt32LE(0, 8);
  let c = 0xffffffff;
  for (const b of q) c = CRC_TABLE[(c ^ b) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0 === stored;
}

function readersFor(f = fx) {
  const s = (k: string) => h(f.secrets[k]!);
  return {
    c2s: {
      hs: new Dtls13Reader(f.suite, s('CLIENT_HANDSHAKE_TRAFFIC_SECRET'), 2),
      ap: new Dtls13Reader(f.suite, s('CLIENT_TRAFFIC_SECRET_0'), 3),
    },
    s2c: {
      hs: new Dtls13Reader(f.suite, s('SERVER_HANDSHAKE_TRAFFIC_SECRET'), 2),
      ap: new Dtls13Reader(f.suite, s('SERVER_TRAFFIC_SECRET_0'), 3),
    },
  };
}

t.test('real Firefox ESR records decrypt with keys from the key log', async (t) => {
  t.ok(fx.records.length >= 10, 'fixture has records');
  const r = readersFor();
  const seen = new Set<string>();
  let masked = 0;
  let sctp = 0;
  const lastSeq: Record<string, number> = {};
  for (const rec of fx.records) {
    const b = h(rec.hex);
    t.ok(isUnifiedHeader(b[0]!), 'unified header');
    const hdr = parseUnifiedHeader(b, 0)!;
    t.equal(hdr.end, b.length, 'record delimited by its length field');
    const reader = hdr.epochLowBits === 2 ? r[rec.dir].hs : r[rec.dir].ap;
    const out = reader.open(b, 0);
    t.ok(out, `record ${rec.dir} epoch bits ${hdr.epochLowBits} authenticates`);
    if (!out) continue;
    t.equal(out.next, b.length);
    seen.add(`${rec.dir}/${out.epoch}/${out.contentType}`);
    const wireSeq = hdr.seqLen === 2 ? b.readUInt16BE(1) : b[1]!;
    if (wireSeq !== (out.seq & (hdr.seqLen === 2 ? 0xffff : 0xff))) masked++;
    const key = `${rec.dir}/${out.epoch}`;
    t.ok(out.seq > (lastSeq[key] ?? -1), 'sequence numbers increase in capture order');
    lastSeq[key] = out.seq;
    if (out.contentType === CT_HANDSHAKE) {
      // RFC 9147 §5.2 handshake header; epoch 2 carries EncryptedExtensions(8), Certificate(11),
      // CertificateRequest(13), CertificateVerify(15), Finished(20)
      t.ok([8, 11, 13, 15, 20].includes(out.plaintext[0]!), `handshake message type ${out.plaintext[0]}`);
    }
    if (out.contentType === CT_APPLICATION_DATA) {
      t.equal(out.plaintext.readUInt16BE(0), 5000, 'SCTP source port 5000');
      t.ok(sctpChecksumOk(out.plaintext), 'decrypted SCTP packet has a valid CRC32c (RFC 4960 App. B)');
      sctp++;
    }
    if (out.contentType === CT_ACK) {
      const acks = parseAck(out.plaintext);
      t.ok(acks && acks.length > 0 && acks.every((a) => a.epoch >= 2), 'ACK lists record numbers');
    }
  }
  t.ok(masked > 0, 'record numbers are encrypted on the wire (RFC 9147 §4.2.3)');
  t.ok(sctp > 0, 'SCTP packets recovered');
  t.ok(
    [...seen].some((k) => k.endsWith('/2/22')),
    'encrypted handshake decrypted',
  );
  t.ok([...seen].some((k) => k.startsWith('c2s/3/23')) && [...seen].some((k) => k.startsWith('s2c/3/23')), 'application data both ways');
});

t.test('AAD is the header with the decrypted record number (RFC 9147 §4), checked on a real record', async (t) => {
  const rec = fx.records.find((r) => r.dir === 'c2s' && (h(r.hex)[0]! & 3) === 3)!;
  const b = h(rec.hex);
  const hdr = parseUnifiedHeader(b, 0)!;
  const k = deriveTrafficKeys(fx.suite, h(fx.secrets.CLIENT_TRAFFIC_SECRET_0!))!;
  const mask = recordNumberMask(fx.suite, k.snKey, b.subarray(hdr.bodyOff, hdr.bodyOff + 16))!;
  const plainHdr = Buffer.from(b.subarray(0, hdr.headerLen));
  plainHdr[1] = plainHdr[1]! ^ mask[0]!;
  if (hdr.seqLen === 2) plainHdr[2] = plainHdr[2]! ^ mask[1]!;
  const seq = hdr.seqLen === 2 ? plainHdr.readUInt16BE(1) : plainHdr[1]!; // first records: seq < 2^16
  const nonce = Buffer.from(k.iv);
  nonce.writeUInt32BE((nonce.readUInt32BE(8) ^ seq) >>> 0, 8);
  const tryOpen = (aad: Buffer) => {
    try {
      const d = createDecipheriv('aes-128-gcm', k.key, nonce, { authTagLength: 16 });
      d.setAAD(aad);
      d.setAuthTag(b.subarray(b.length - 16));
      d.update(b.subarray(hdr.bodyOff, b.length - 16));
      d.final();
      return true;
    } catch {
      return false;
    }
  };
  t.equal(fx.suite, 0x1301);
  t.ok(tryOpen(plainHdr), 'opens with the decrypted record number in the AAD');
  t.notOk(tryOpen(Buffer.from(b.subarray(0, hdr.headerLen))), 'does not open with the encrypted record number');
});

t.test('record-number mask primitive (same construction as RFC 9001 §5.4 header protection)', async (t) => {
  // RFC 9001 A.2 (AES-128-ECB) and A.5 (ChaCha20, counter = sample[0..3] LE, nonce = sample[4..15]).
  const aes = recordNumberMask(0x1301, h('9f50449e04a0e810283a1e9933adedd2'), h('d1b1c98dd7689fb8ec11d242b123dc9b'))!;
  t.equal(aes.subarray(0, 5).toString('hex'), '437b9aec36');
  const cc = recordNumberMask(
    0x1303,
    h('25a282b9e82f06f21f488917a4fc8f1b73573685608597d0efcb076b0ab7a7a4'),
    h('5e5cd55c41f69080575d7999c25a5bfb'),
  )!;
  t.equal(cc.subarray(0, 5).toString('hex'), 'aefefe7d03');
  t.equal(recordNumberMask(0x1301, Buffer.alloc(16), Buffer.alloc(15)), null, 'short sample');
  t.equal(recordNumberMask(0x9999, Buffer.alloc(16), Buffer.alloc(16)), null, 'bad suite');
});

t.test('unified header parsing and record iteration', async (t) => {
  t.ok(isUnifiedHeader(0x2f) && isUnifiedHeader(0x20) && isUnifiedHeader(0x3f));
  t.notOk(isUnifiedHeader(0x17) || isUnifiedHeader(0x40) || isUnifiedHeader(0x16));
  // 001 C=1 ...: connection ids are unsupported
  t.equal(unifiedRecordEnd(Buffer.from('3f00010002aabb', 'hex'), 0), -1, 'CID record');
  t.equal(parseUnifiedHeader(Buffer.from('3f00010002aabb', 'hex'), 0), null);
  // L=1 with a length beyond the datagram
  t.equal(unifiedRecordEnd(Buffer.from('2c0001ffff00', 'hex'), 0), -1, 'truncated');
  // L=0: to the end of the datagram
  t.equal(unifiedRecordEnd(Buffer.alloc(40, 0x23), 0), 40);
  const hd = parseUnifiedHeader(Buffer.from('2e12340003aabbcc', 'hex'), 0)!;
  t.same(
    { seqLen: hd.seqLen, lengthPresent: hd.lengthPresent, epochLowBits: hd.epochLowBits, headerLen: hd.headerLen, end: hd.end },
    { seqLen: 2, lengthPresent: true, epochLowBits: 2, headerLen: 5, end: 8 },
  );
  t.equal(unifiedRecordEnd(Buffer.alloc(3), 5), -1, 'offset beyond buffer');
});

for (const suite of [0x1301, 0x1302, 0x1303]) {
  t.test(`writer/reader round trip, suite 0x${suite.toString(16)}`, async (t) => {
    const hl = dtls13SuiteInfo(suite)!.hash === 'sha384' ? 48 : 32;
    const secret = Buffer.alloc(hl, 7);
    const w = new Dtls13Writer(suite, secret, 3);
    const r = new Dtls13Reader(suite, secret, 3);
    // several records in one datagram: L present for all but the last (RFC 9147 §4)
    const msgs = [Buffer.from('first'), Buffer.alloc(300, 1), Buffer.from('last without length')];
    const dgram = Buffer.concat([
      w.seal(CT_APPLICATION_DATA, msgs[0]!, { seqLen: 1 }),
      w.seal(CT_APPLICATION_DATA, msgs[1]!, { seqLen: 2, padding: 13 }),
      w.seal(CT_ALERT, msgs[2]!, { withLength: false }),
    ]);
    let off = 0;
    const got: Buffer[] = [];
    while (off < dgram.length) {
      const o = r.open(dgram, off);
      if (!o) break;
      got.push(o.plaintext);
      t.equal(o.seq, got.length - 1);
      off = o.next;
    }
    t.same(
      got.map((b) => b.toString('hex')),
      msgs.map((b) => b.toString('hex')),
    );
    // A different secret does not open it.
    const bad = new Dtls13Reader(suite, Buffer.alloc(hl, 8), 3);
    t.equal(bad.open(dgram, 0), null);
    // Flipping any ciphertext or header bit breaks authentication.
    const rec = w.seal(CT_APPLICATION_DATA, Buffer.from('tamper me please'));
    for (const i of [0, 3, 5, rec.length - 1]) {
      const x = Buffer.from(rec);
      x[i] = x[i]! ^ (i === 0 ? 0x01 : 0x80);
      t.equal(new Dtls13Reader(suite, secret, 3).open(x, 0), null, `bit flip at ${i}`);
    }
  });
}

t.test('sequence reconstruction (RFC 9147 §4.2.2)', async (t) => {
  t.equal(reconstructSeq(0, 0, 256), 0);
  t.equal(reconstructSeq(256, 1, 256), 257);
  t.equal(reconstructSeq(255, 0, 256), 256, 'wraps forward');
  t.equal(reconstructSeq(257, 255, 256), 255, 'late record from before the wrap');
  t.equal(reconstructSeq(0x10000 + 5, 0xfffe, 0x10000), 0xfffe);
  t.equal(reconstructSeq(2 ** 40 + 3, 2, 256), 2 ** 40 + 2, 'beyond 32 bits');
  // End to end: 8-bit record numbers across several wraps, with reordering and gaps.
  const secret = Buffer.alloc(32, 3);
  const w = new Dtls13Writer(0x1301, secret, 3);
  const r = new Dtls13Reader(0x1301, secret, 3);
  const recs = Array.from({ length: 700 }, (_, i) => w.seal(CT_APPLICATION_DATA, Buffer.from(`m${i}`), { seqLen: 1 }));
  const order = [...recs.keys()];
  for (let i = 0; i + 1 < order.length; i += 7) [order[i], order[i + 1]] = [order[i + 1]!, order[i]!]; // swaps
  let ok = 0;
  for (const i of order) {
    if (i % 50 === 17) continue; // losses
    const o = r.open(recs[i]!, 0);
    if (o && o.seq === i && o.plaintext.toString() === `m${i}`) ok++;
  }
  t.equal(ok, order.filter((i) => i % 50 !== 17).length, 'every record opened with its true sequence number');
  // Large sequence numbers (nonce high bits) with 16-bit headers.
  const w2 = new Dtls13Writer(0x1301, secret, 3);
  const r2 = new Dtls13Reader(0x1301, secret, 3);
  t.ok(r2.open(w2.seal(CT_APPLICATION_DATA, Buffer.from('x')), 0));
  t.equal(r2.open(w2.seal(CT_APPLICATION_DATA, Buffer.from('y'), { seq: 2 ** 33 }), 0), null, 'too far from expected: not reconstructible');
});

t.test('KeyUpdate (RFC 9147 §8) is followed, automatically or by update()', async (t) => {
  const secret = Buffer.alloc(32, 9);
  // nextTrafficSecret = HKDF-Expand-Label(secret, "traffic upd", "", 32) with the dtls13 prefix
  const info = Buffer.concat([Buffer.of(0, 32, 17), Buffer.from('dtls13traffic upd'), Buffer.of(0)]);
  t.equal(nextTrafficSecret(0x1301, secret)!.toString('hex'), hkdfExpand('sha256', secret, info, 32).toString('hex'));

  const w = new Dtls13Writer(0x1301, secret, 3);
  const r = new Dtls13Reader(0x1301, secret, 3);
  const rExplicit = new Dtls13Reader(0x1301, secret, 3);
  // handshake header: KeyUpdate(24), length 1, message_seq 5, offset 0, fragment length 1, update_requested(1)
  const ku = Buffer.from('18000001000500000000000101', 'hex');
  t.same(findKeyUpdate(ku), { requested: true });
  const late: Buffer[] = [];
  for (let epoch = 3; epoch <= 8; epoch++) {
    const a = w.seal(CT_APPLICATION_DATA, Buffer.from(`data in epoch ${epoch}`));
    late.push(w.seal(CT_APPLICATION_DATA, Buffer.from(`late ${epoch}`)));
    const k = w.seal(CT_HANDSHAKE, ku);
    const oa = r.open(a, 0);
    t.equal(oa?.epoch, epoch, `epoch ${epoch} data`);
    t.equal(oa?.plaintext.toString(), `data in epoch ${epoch}`);
    const ok = r.open(k, 0);
    t.same(ok?.keyUpdate, { requested: true }, 'keyUpdate reported');
    t.equal(rExplicit.open(a, 0)?.epoch, epoch);
    const okE = rExplicit.open(k, 0);
    if (okE?.keyUpdate) t.equal(rExplicit.update(), epoch + 1, 'explicit update');
    t.equal(w.update(), epoch + 1);
  }
  t.equal(r.epoch, 8, 'reader advanced by itself on records of the next epoch');
  // A record of the previous epoch reordered across the update still opens; older ones do not.
  t.equal(r.open(late[4]!, 0)?.plaintext.toString(), 'late 7');
  t.equal(r.open(late[1]!, 0), null, 'three epochs back');
  const last = w.seal(CT_APPLICATION_DATA, Buffer.from('epoch 9'));
  t.equal(r.open(last, 0)?.epoch, 9);
  t.equal(rExplicit.open(last, 0)?.epoch, 9);
  // Handshake-epoch readers never step.
  const hs = new Dtls13Reader(0x1301, secret, 2);
  const w3 = new Dtls13Writer(0x1301, nextTrafficSecret(0x1301, secret)!, 3);
  t.equal(hs.open(w3.seal(CT_HANDSHAKE, Buffer.from('x')), 0), null);
  r.wipe();
  t.equal(r.open(last, 0), null, 'wiped reader opens nothing');
  t.equal(JSON.stringify({ r }), '{"r":"[Dtls13Reader]"}', 'no key material in JSON');
});

t.test('Dtls13Stream routes epoch 2 vs application epochs sharing the low bits', async (t) => {
  const hsSecret = Buffer.alloc(32, 0x22);
  const app = Buffer.alloc(32, 0x33);
  const hsW = new Dtls13Writer(0x1301, hsSecret, 2);
  const w = new Dtls13Writer(0x1301, app, 3);
  const st = new Dtls13Stream(0x1301, app, 3, hsSecret);
  t.equal(st.open(hsW.seal(CT_HANDSHAKE, Buffer.from('finished')), 0)?.epoch, 2);
  for (let e = 3; e <= 6; e++) {
    t.equal(st.open(w.seal(CT_APPLICATION_DATA, Buffer.from('d' + e)), 0)?.epoch, e, `app epoch ${e}`);
    if (e < 6) w.update();
  }
  // epoch 6 has the same low bits as 2: a retransmitted handshake record still opens
  t.equal(st.open(hsW.seal(CT_HANDSHAKE, Buffer.from('retransmit')), 0)?.epoch, 2, 'epoch 2 record after epoch 6');
  t.equal(st.epoch, 6);
  t.equal(new Dtls13Stream(0x1301, app).open(hsW.seal(CT_HANDSHAKE, Buffer.from('x')), 0), null, 'no handshake secret');
  const rd = new Dtls13Reader(0x1301, app, 3);
  t.ok(rd.accepts(0x2f) && rd.accepts(0x2c) && !rd.accepts(0x2d) && !rd.accepts(0x17));
  st.wipe();
});

t.test('constructor and helper validation', async (t) => {
  t.throws(() => new Dtls13Reader(0xc02f, Buffer.alloc(32), 3), RangeError);
  t.throws(() => new Dtls13Reader(0x1302, Buffer.alloc(32), 3), RangeError, 'sha384 suite needs 48-byte secret');
  t.equal(deriveTrafficKeys(0x1301, Buffer.alloc(48)), null);
  t.equal(deriveTrafficKeys(0x1303, Buffer.alloc(32))!.key.length, 32);
  t.equal(findKeyUpdate(Buffer.from('0b0000ff', 'hex')), null);
  t.equal(parseAck(Buffer.from('0011', 'hex')), null);
});

t.test('hostile input never throws', async (t) => {
  const r = new Dtls13Reader(0x1301, Buffer.alloc(32, 1), 3);
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 200 }), fc.nat(210), (bytes, off) => {
      const b = Buffer.from(bytes);
      r.open(b, off);
      unifiedRecordEnd(b, off);
      parseUnifiedHeader(b, off);
      findKeyUpdate(b);
      parseAck(b);
      return true;
    }),
    { numRuns: 2000 },
  );
  // A wrong-key record built like a real one is rejected, not thrown.
  const rec = h(fx.records[fx.records.length - 1]!.hex);
  t.equal(r.open(rec, 0), null);
  t.pass('no throw');
});
