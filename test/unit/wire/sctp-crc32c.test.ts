// CRC32c known answers: RFC 3720 Appendix B.4 (iSCSI) and the CRC catalogue check value,
// plus cross-checks of the slicing-by-8 path against a bitwise reference.
import t from 'tap';
import { crc32c, crc32cInit, crc32cUpdate, crc32cFinal, crc32cZeros } from '../../../src/wire/crc32c.js';
import { loadNative } from '../../../src/wire/native.js';

function bitwise(data: Uint8Array): number {
  let c = ~0;
  for (const b of data) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
  }
  return ~c >>> 0;
}

t.test('RFC 3720 B.4 vectors', async (t) => {
  const zeros = Buffer.alloc(32, 0);
  const ones = Buffer.alloc(32, 0xff);
  const inc = Buffer.from(Array.from({ length: 32 }, (_, i) => i));
  const dec = Buffer.from(Array.from({ length: 32 }, (_, i) => 31 - i));
  // iSCSI SCSI Read (10) Command PDU
  const pdu = Buffer.from(
    '01c00000000000000000000000000000' + '14000000000004000000001400000018' + '28000000000000000200000000000000',
    'hex',
  );
  // B.4 lists the CRC bytes as transmitted (least significant byte first).
  t.equal(crc32c(zeros), Buffer.from('aa36918a', 'hex').readUInt32LE(0));
  t.equal(crc32c(ones), Buffer.from('43aba862', 'hex').readUInt32LE(0));
  t.equal(crc32c(inc), Buffer.from('4e79dd46', 'hex').readUInt32LE(0));
  t.equal(crc32c(dec), Buffer.from('5cdb3f11', 'hex').readUInt32LE(0));
  t.equal(crc32c(pdu), Buffer.from('563a96d9', 'hex').readUInt32LE(0));
  t.equal(crc32c(Buffer.from('123456789')), 0xe3069283, 'CRC-32/ISCSI check value');
  t.equal(crc32c(Buffer.alloc(0)), 0);
});

t.test('slicing-by-8 equals bitwise reference at every length/offset', async (t) => {
  let seed = 12345;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 16) & 0xff;
  const buf = Buffer.from(Array.from({ length: 300 }, rnd));
  let bad = 0;
  for (let s = 0; s < 9; s++) {
    for (let e = s; e <= buf.length; e += 7) {
      if (crc32c(buf, s, e) !== bitwise(buf.subarray(s, e))) bad++;
    }
  }
  t.equal(bad, 0);
});

t.test('chained update and zero-fill match a flat computation', async (t) => {
  const pkt = Buffer.from(Array.from({ length: 64 }, (_, i) => (i * 37) & 0xff));
  const flat = Buffer.from(pkt);
  flat.fill(0, 8, 12);
  let r = crc32cInit();
  r = crc32cUpdate(r, pkt, 0, 8);
  r = crc32cZeros(r, 4);
  r = crc32cUpdate(r, pkt, 12);
  t.equal(crc32cFinal(r), crc32c(flat));
});

t.test('the addon’s sctpChecksum equals the JS CRC32c at every length (checksum field as zeros)', async (t) => {
  const nat = loadNative();
  // .ci/run builds the addon: in CI a missing one is a failure (this test would pass vacuously).
  if (!nat?.sctpChecksum) {
    if (process.env.CI) t.fail('CI: native addon without sctpChecksum (npm run build:native)');
    else t.comment('skipped: native addon not built');
    return;
  }
  let seed = 777;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 16) & 0xff;
  const buf = Buffer.from(Array.from({ length: 1300 }, rnd));
  let bad = 0;
  let checked = 0;
  for (let s = 0; s < 9; s++) {
    for (let e = s; e <= buf.length; e += s + 1) {
      const pkt = buf.subarray(s, e);
      // The JS path: RFC 9260 §6.8 over the packet with octets 8..11 as zeros (or all of a short one).
      let r = crc32cInit();
      if (pkt.length >= 12) r = crc32cZeros(crc32cUpdate(r, pkt, 0, 8), 4);
      r = crc32cUpdate(r, pkt, pkt.length >= 12 ? 12 : 0, pkt.length);
      if (nat.sctpChecksum(pkt) !== crc32cFinal(r)) bad++;
      checked++;
    }
  }
  t.equal(bad, 0, `${checked} ranges agree`);
  // The checksum field's own bytes never count.
  const pkt = Buffer.from(buf.subarray(0, 100));
  const before = nat.sctpChecksum(pkt);
  pkt.writeUInt32LE(0xdeadbeef, 8);
  t.equal(nat.sctpChecksum(pkt), before);
  t.throws(() => nat.sctpChecksum!('x' as unknown as Buffer), TypeError);
});
