import t from 'tap';
import fc from 'fast-check';
import {
  HandshakeReassembler,
  newRecord,
  parseClientHello,
  parseEncryptedExtensions,
  parseHelloVerifyRequest,
  parseRecords,
  parseServerHello,
  readHandshakeHeader,
  readRecord,
  HELLO_RETRY_REQUEST_RANDOM,
  type HandshakeHeader,
} from '../../../src/wire/dtls.js';
import { loadFixture, datagrams } from '../inspect/dtls-session-helpers.js';

function record(type: number, epoch: number, seq: number, body: Buffer, version = 0xfefd): Buffer {
  const h = Buffer.alloc(13);
  h[0] = type;
  h.writeUInt16BE(version, 1);
  h.writeUInt16BE(epoch, 3);
  h.writeUIntBE(seq, 5, 6);
  h.writeUInt16BE(body.length, 11);
  return Buffer.concat([h, body]);
}

function hs(type: number, seq: number, body: Buffer, off = 0, len = body.length, total = body.length): Buffer {
  const h = Buffer.alloc(12);
  h[0] = type;
  h.writeUIntBE(total, 1, 3);
  h.writeUInt16BE(seq, 4);
  h.writeUIntBE(off, 6, 3);
  h.writeUIntBE(len, 9, 3);
  return Buffer.concat([h, body.subarray(off, off + len)]);
}

function ext(type: number, data: Buffer): Buffer {
  const h = Buffer.alloc(4);
  h.writeUInt16BE(type, 0);
  h.writeUInt16BE(data.length, 2);
  return Buffer.concat([h, data]);
}

function u16list(vals: number[], lenBytes = 2): Buffer {
  const b = Buffer.alloc(lenBytes + vals.length * 2);
  if (lenBytes === 2) b.writeUInt16BE(vals.length * 2, 0);
  else b[0] = vals.length * 2;
  vals.forEach((v, i) => b.writeUInt16BE(v, lenBytes + 2 * i));
  return b;
}

function clientHello(random: Buffer, cookie: Buffer, exts: Buffer[]): Buffer {
  const e = Buffer.concat(exts);
  const el = Buffer.alloc(2);
  el.writeUInt16BE(e.length);
  return Buffer.concat([
    Buffer.from([0xfe, 0xfd]),
    random,
    Buffer.from([0]), // session id
    Buffer.from([cookie.length]),
    cookie,
    u16list([0xc02b, 0xc013]),
    Buffer.from([1, 0]),
    el,
    e,
  ]);
}

t.test('records: iteration over a datagram without copying', async (t) => {
  const a = record(22, 0, 1, Buffer.from('abc'));
  const b = record(20, 0, 2, Buffer.from([1]));
  const c = record(22, 1, 0x0000ffffffff, Buffer.alloc(40, 7));
  const dg = Buffer.concat([a, b, c]);
  const rs = parseRecords(dg);
  t.equal(rs.length, 3);
  t.same(
    rs.map((r) => [r.type, r.epoch, r.seq, r.fragment.length]),
    [
      [22, 0, 1, 3],
      [20, 0, 2, 1],
      [22, 1, 0xffffffff, 40],
    ],
  );
  t.equal(rs[2]!.fragment.buffer, dg.buffer, 'subarray of the datagram');
  t.equal(rs[1]!.start, a.length);
  // Truncated last record stops iteration there.
  t.equal(parseRecords(dg.subarray(0, dg.length - 1)).length, 2);
  // Bad first byte, non-DTLS version, CID content type 25.
  const r = newRecord();
  t.equal(readRecord(Buffer.from([0x05, 0xfe, 0xfd]), 0, r), -1);
  t.equal(readRecord(record(23, 1, 1, Buffer.alloc(3), 0x0303), 0, r), -1);
  t.equal(readRecord(record(25, 1, 1, Buffer.alloc(3)), 0, r), -1);
  t.equal(readRecord(Buffer.alloc(0), 0, r), -1);
});

t.test('unified header (RFC 9147 §4)', async (t) => {
  const r = newRecord();
  // 001 C=0 S=1 L=1 EE=11, seq 0x1234, length 3
  const a = Buffer.from([0x2f, 0x12, 0x34, 0x00, 0x03, 1, 2, 3]);
  t.equal(readRecord(a, 0, r), 8);
  t.ok(r.unified);
  t.equal(r.epoch, 3);
  t.equal(r.seq, 0x1234);
  t.equal(r.header.length, 5);
  t.same([...r.fragment], [1, 2, 3]);
  // S=0 L=0: 8-bit seq, record to the end of the datagram
  const b = Buffer.from([0x22, 0x07, 9, 9, 9, 9]);
  t.equal(readRecord(b, 0, r), 6);
  t.equal(r.seq, 7);
  t.equal(r.epoch, 2);
  t.equal(r.fragment.length, 4);
  // C=1 (connection id): cannot be delimited
  t.equal(readRecord(Buffer.from([0x3f, 0, 0, 0, 0]), 0, r), -1);
  // mixed datagram: plaintext record then unified
  t.equal(parseRecords(Buffer.concat([record(21, 0, 0, Buffer.from([1, 0])), a])).length, 2);
});

t.test('handshake header and reassembly', async (t) => {
  const body = Buffer.from(Array.from({ length: 100 }, (_, i) => i));
  const h: HandshakeHeader = { msgType: 0, length: 0, messageSeq: 0, fragmentOffset: 0, fragmentLength: 0 };
  const whole = hs(1, 0, body);
  t.equal(readHandshakeHeader(whole, 0, h), 12);
  t.same(h, { msgType: 1, length: 100, messageSeq: 0, fragmentOffset: 0, fragmentLength: 100 });
  t.equal(readHandshakeHeader(whole.subarray(0, 50), 0, h), -1, 'fragment longer than the buffer');
  t.equal(readHandshakeHeader(hs(1, 0, body, 60, 40, 50), 0, h), -1, 'offset + length > total');

  const ra = new HandshakeReassembler();
  const add = (off: number, len: number) => {
    const f = hs(2, 3, body, off, len);
    readHandshakeHeader(f, 0, h);
    return ra.add(h, f.subarray(12));
  };
  t.equal(add(50, 50), null);
  t.equal(add(0, 20), null);
  t.equal(add(10, 20), null, 'overlap');
  const m = add(30, 20);
  t.ok(m && m.body.equals(body), 'out-of-order, overlapping fragments reassemble');
  t.equal(m!.messageSeq, 3);
  // caps: too long, unwanted, too many partial
  const small = new HandshakeReassembler(50, 2, (ty) => ty !== 11);
  const f1 = hs(1, 0, body, 0, 10);
  readHandshakeHeader(f1, 0, h);
  t.equal(small.add(h, f1.subarray(12)), null);
  t.equal(small.dropped, 1, 'over maxMessageLen');
  const f2 = hs(11, 0, Buffer.alloc(10));
  readHandshakeHeader(f2, 0, h);
  t.equal(small.add(h, f2.subarray(12)), null, 'unwanted type');
  const b40 = Buffer.alloc(40, 1);
  for (let s = 0; s < 3; s++) {
    const f = hs(1, s, b40, 0, 10);
    readHandshakeHeader(f, 0, h);
    small.add(h, f.subarray(12));
  }
  t.equal(small.dropped, 2, 'oldest partial dropped beyond maxPartial');
});

t.test('ClientHello / ServerHello / HelloVerifyRequest', async (t) => {
  const random = Buffer.alloc(32, 0xaa);
  const body = clientHello(random, Buffer.from('cookie'), [
    ext(14, Buffer.concat([u16list([1, 7]), Buffer.from([0])])), // use_srtp
    ext(22, Buffer.alloc(0)),
    ext(23, Buffer.alloc(0)),
    ext(43, u16list([0xfefc, 0xfefd], 1)),
    ext(0xabcd, Buffer.from('unknown')),
  ]);
  const ch = parseClientHello(body)!;
  t.ok(ch);
  t.ok(ch.random.equals(random));
  t.equal(ch.cookie.toString(), 'cookie');
  t.same(ch.cipherSuites, [0xc02b, 0xc013]);
  t.same(ch.srtpProfiles, [1, 7]);
  t.ok(ch.encryptThenMac);
  t.ok(ch.extendedMasterSecret);
  t.same(ch.supportedVersions, [0xfefc, 0xfefd]);
  t.same(ch.types, [14, 22, 23, 43, 0xabcd]);
  // Every truncation is rejected, never thrown.
  for (let i = 0; i < body.length; i++) t.doesNotThrow(() => parseClientHello(body.subarray(0, i)));
  t.equal(parseClientHello(body.subarray(0, 40)), null);

  const sh = Buffer.concat([Buffer.from([0xfe, 0xfd]), Buffer.alloc(32, 0xbb), Buffer.from([0]), Buffer.from([0xc0, 0x2b, 0])]);
  const shExt = (exts: Buffer[]): Buffer => {
    const e = Buffer.concat(exts);
    return Buffer.concat([sh, Buffer.from([e.length >> 8, e.length & 255]), e]);
  };
  const s1 = parseServerHello(shExt([ext(14, Buffer.concat([u16list([7]), Buffer.from([0])])), ext(23, Buffer.alloc(0))]))!;
  t.equal(s1.cipherSuite, 0xc02b);
  t.same(s1.srtpProfiles, [7]);
  t.ok(s1.extendedMasterSecret);
  t.notOk(s1.encryptThenMac);
  t.equal(s1.version, 0xfefd);
  const s13 = parseServerHello(shExt([ext(43, Buffer.from([0xfe, 0xfc]))]))!;
  t.equal(s13.version, 0xfefc, 'DTLS 1.3 from supported_versions');
  const hrr = Buffer.from(sh);
  HELLO_RETRY_REQUEST_RANDOM.copy(hrr, 2);
  t.ok(parseServerHello(hrr)!.helloRetryRequest);
  t.equal(parseServerHello(shExt([ext(14, Buffer.from([0, 1]))])), null, 'malformed use_srtp');
  t.equal(parseServerHello(Buffer.concat([shExt([]), Buffer.from([0])])), null, 'trailing junk in extensions block');

  const ee = parseEncryptedExtensions(Buffer.from([0, 9, 0, 14, 0, 5, 0, 2, 0, 8, 0]))!;
  t.same(ee.srtpProfiles, [8], 'EncryptedExtensions use_srtp (DTLS 1.3)');
  t.equal(parseEncryptedExtensions(Buffer.from([0, 9, 0, 14])), null);
  const hvr = parseHelloVerifyRequest(Buffer.from([0xfe, 0xff, 3, 1, 2, 3]))!;
  t.equal(hvr.serverVersion, 0xfeff);
  t.same([...hvr.cookie], [1, 2, 3]);
  t.equal(parseHelloVerifyRequest(Buffer.from([0xfe, 0xff, 3, 1])), null);
});

t.test('real OpenSSL hellos parse (fixture)', async (t) => {
  const fx = loadFixture('gcm128-srtp-reneg.json');
  const h: HandshakeHeader = { msgType: 0, length: 0, messageSeq: 0, fragmentOffset: 0, fragmentLength: 0 };
  const seen: string[] = [];
  for (const d of datagrams(fx)) {
    for (const r of parseRecords(d.data)) {
      if (r.epoch !== 0 || r.type !== 22) continue;
      const b = readHandshakeHeader(r.fragment, 0, h);
      if (b < 0 || h.fragmentOffset !== 0 || h.fragmentLength !== h.length) continue;
      const body = r.fragment.subarray(b, b + h.length);
      if (h.msgType === 1) {
        const ch = parseClientHello(body)!;
        t.ok(ch.srtpProfiles.includes(1), 'client offers SRTP_AES128_CM_SHA1_80');
        seen.push(ch.cookie.length ? 'ch+cookie' : 'ch');
      } else if (h.msgType === 3) {
        t.ok(parseHelloVerifyRequest(body)!.cookie.length > 0);
        seen.push('hvr');
      } else if (h.msgType === 2) {
        const sh = parseServerHello(body)!;
        t.equal(sh.cipherSuite, 0xc02b);
        t.same(sh.srtpProfiles, [1]);
        seen.push('sh');
      }
    }
  }
  t.same(seen.slice(0, 4), ['ch', 'hvr', 'ch+cookie', 'sh']);
});

t.test('parsers never throw on arbitrary input', async (t) => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 300 }), (u) => {
      const b = Buffer.from(u);
      parseRecords(b);
      parseClientHello(b);
      parseServerHello(b);
      parseHelloVerifyRequest(b);
      parseEncryptedExtensions(b);
      const h: HandshakeHeader = { msgType: 0, length: 0, messageSeq: 0, fragmentOffset: 0, fragmentLength: 0 };
      const o = readHandshakeHeader(b, 0, h);
      if (o >= 0) new HandshakeReassembler().add(h, b.subarray(o, o + h.fragmentLength));
    }),
    { numRuns: 2000 },
  );
  t.pass();
});
