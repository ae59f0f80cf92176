import t from 'tap';
import {
  Attr,
  Class,
  Method,
  MAGIC_COOKIE,
  StunWriter,
  classOf,
  crc32,
  decodeStun,
  decodeUnknownAttributes,
  decodeXorAddress,
  formatIPv6,
  getAttr,
  getErrorCode,
  getString,
  getUint32,
  getXorAddress,
  isStun,
  longTermKey,
  messageType,
  methodOf,
  opaqueString,
  parseIP,
  saslprep,
  shortTermKey,
  unknownComprehensionRequired,
  userhash,
  verifyFingerprint,
  verifyIntegrity,
  verifyIntegritySha256,
} from '../../../src/wire/stun.js';

// RFC 5769 §2.1-§2.4 test vectors (hex transcribed from the RFC's figures).
const REQUEST = Buffer.from(
  '000100582112a442b7e7a701bc34d686fa87dfae802200105354554e207465737420636c69656e74002400046e0001ff80290008932ff9b151263b36000600096576746a3a68367659202020000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a280280004e57a3bcf',
  'hex',
);
const IPV4_RESPONSE = Buffer.from(
  '0101003c2112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220002000080001a147e112a643000800142b91f599fd9e90c38c7489f92af9ba53f06be7d780280004c07d4c96',
  'hex',
);
const IPV6_RESPONSE = Buffer.from(
  '010100482112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d900080014a382954e4be67bf11784c97c8292c275bfe3ed4180280004c8fb0b4c',
  'hex',
);
const LONG_TERM_REQUEST = Buffer.from(
  '000100602112a44278ad3433c6ad72c029da412e00060012e3839ee38388e383aae38383e382afe382b900000015001c662f2f3439396b39353464364f4c33346f4c394653547679363473410014000b6578616d706c652e6f72670000080014f67024656dd64a3e02b8e0712e85c9a28ca89666',
  'hex',
);
// RFC 8489 Appendix B.1 (as corrected by its errata): MESSAGE-INTEGRITY-SHA256 and USERHASH.
const SHA256_REQUEST = Buffer.from(
  '000100902112a44278ad3433c6ad72c029da412e001e00204a3cf38fef6992bda952c6780417da0f24819415569e60b205c4' +
    '6e41407f1704001500296f624d61744a6f733241414143662f2f3439396b39353464364f4c33346f4c394653547679363473' +
    '410000000014000b6578616d706c652e6f726700001d000400020000001c0020b5c7bf005b6c52a21c51c5e892f819241362' +
    '96cb927c43149309278cc6518e65',
  'hex',
);
const SHORT_TERM_PASSWORD = 'VOkJxbRl1RmTxUk/WvJxBt';
const LT_USERNAME = '\u30de\u30c8\u30ea\u30c3\u30af\u30b9';
const LT_PASSWORD_RAW = 'The\u00adM\u00aatr\u2168';

t.test('message type interleaving (RFC 8489 §5)', async (t) => {
  t.equal(messageType(Method.Binding, Class.Request), 0x0001);
  t.equal(messageType(Method.Binding, Class.Success), 0x0101);
  t.equal(messageType(Method.Binding, Class.Error), 0x0111);
  t.equal(messageType(Method.Allocate, Class.Request), 0x0003);
  t.equal(messageType(Method.Data, Class.Indication), 0x0017);
  t.equal(messageType(Method.ChannelBind, Class.Error), 0x0119);
  for (const m of [0x001, 0x003, 0x009, 0xfff, 0x080]) {
    for (const c of [0, 1, 2, 3]) {
      const ty = messageType(m, c);
      t.equal(methodOf(ty), m);
      t.equal(classOf(ty), c);
    }
  }
});

t.test('RFC 5769 §2.1 sample request', async (t) => {
  t.ok(isStun(REQUEST));
  const m = decodeStun(REQUEST);
  t.ok(m);
  if (!m) return;
  t.equal(m.method, Method.Binding);
  t.equal(m.cls, Class.Request);
  t.equal(m.transactionId.toString('hex'), 'b7e7a701bc34d686fa87dfae');
  t.equal(getString(m, Attr.Software), 'STUN test client');
  t.equal(getString(m, Attr.Username), 'evtj:h6vY');
  t.equal(getUint32(m, Attr.Priority), 0x6e0001ff);
  t.equal(getAttr(m, Attr.IceControlled)!.toString('hex'), '932ff9b151263b36');
  t.ok(verifyFingerprint(m), 'fingerprint');
  t.ok(verifyIntegrity(m, shortTermKey(SHORT_TERM_PASSWORD)), 'message integrity');
  t.notOk(verifyIntegrity(m, shortTermKey('wrong')), 'wrong key fails');
  // PRIORITY (0x0024) is comprehension-required; a server that does not know ICE lists it.
  t.same(
    unknownComprehensionRequired(m, (ty) => ty !== Attr.Priority),
    [Attr.Priority],
  );
  // A flipped bit breaks the fingerprint and the integrity.
  const bad = Buffer.from(REQUEST);
  bad[30] = bad[30]! ^ 1;
  const bm = decodeStun(bad)!;
  t.notOk(verifyFingerprint(bm));
  t.notOk(verifyIntegrity(bm, shortTermKey(SHORT_TERM_PASSWORD)));
});

t.test('RFC 5769 §2.2 sample IPv4 response', async (t) => {
  const m = decodeStun(IPV4_RESPONSE)!;
  t.ok(m);
  t.equal(m.cls, Class.Success);
  t.equal(getString(m, Attr.Software), 'test vector');
  t.same(getXorAddress(m, Attr.XorMappedAddress), { family: 4, address: '192.0.2.1', port: 32853 });
  t.ok(verifyFingerprint(m));
  t.ok(verifyIntegrity(m, shortTermKey(SHORT_TERM_PASSWORD)));
});

t.test('RFC 5769 §2.3 sample IPv6 response', async (t) => {
  const m = decodeStun(IPV6_RESPONSE)!;
  t.ok(m);
  t.same(getXorAddress(m, Attr.XorMappedAddress), {
    family: 6,
    address: '2001:db8:1234:5678:11:2233:4455:6677',
    port: 32853,
  });
  t.ok(verifyFingerprint(m));
  t.ok(verifyIntegrity(m, shortTermKey(SHORT_TERM_PASSWORD)));
});

t.test('RFC 5769 §2.4 sample request with long-term authentication', async (t) => {
  const m = decodeStun(LONG_TERM_REQUEST)!;
  t.ok(m);
  t.equal(m.transactionId.toString('hex'), '78ad3433c6ad72c029da412e');
  t.equal(getString(m, Attr.Username), LT_USERNAME);
  t.equal(getString(m, Attr.Realm), 'example.org');
  t.equal(getString(m, Attr.Nonce), 'f//499k954d6OL34oL9FSTvy64sA');
  // RFC 5769 prepares the password with SASLprep: "The<U+00AD>M<U+00AA>tr<U+2168>" -> "TheMatrIX".
  t.equal(saslprep(LT_PASSWORD_RAW), 'TheMatrIX');
  const key = longTermKey(LT_USERNAME, 'example.org', saslprep(LT_PASSWORD_RAW));
  t.equal(key.length, 16);
  t.ok(verifyIntegrity(m, key));
  t.notOk(verifyIntegrity(m, longTermKey(LT_USERNAME, 'example.org', 'WrongPassword')));
  // Re-encoding with our writer (NUL padding, as in this vector) reproduces it byte for byte.
  const w = new StunWriter();
  w.reset(messageType(Method.Binding, Class.Request), m.transactionId)
    .attr(Attr.Username, LT_USERNAME)
    .attr(Attr.Nonce, 'f//499k954d6OL34oL9FSTvy64sA')
    .attr(Attr.Realm, 'example.org')
    .integrity(key);
  t.equal(w.view().toString('hex'), LONG_TERM_REQUEST.toString('hex'));
});

t.test('RFC 8489 B.1 MESSAGE-INTEGRITY-SHA256 and USERHASH', async (t) => {
  const m = decodeStun(SHA256_REQUEST)!;
  t.ok(m, 'decodes');
  if (!m) return;
  t.equal(getString(m, Attr.Nonce), 'obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA');
  t.same(getAttr(m, Attr.Userhash), userhash(LT_USERNAME, 'example.org'));
  const key = longTermKey(LT_USERNAME, 'example.org', 'TheMatrIX', 'sha256');
  t.equal(key.length, 32);
  t.ok(verifyIntegritySha256(m, key));
  t.notOk(verifyIntegritySha256(m, longTermKey(LT_USERNAME, 'example.org', 'TheMatrIX', 'md5')));
  t.notOk(verifyIntegrity(m, key), 'no SHA1 integrity in this message');
});

t.test('writer round trip with integrity, SHA-256 integrity and fingerprint', async (t) => {
  const tid = Buffer.from('0102030405060708090a0b0c', 'hex');
  const key = longTermKey('alice', 'gatehouse.local', 'secret');
  const w = new StunWriter(32); // grows
  w.reset(messageType(Method.Allocate, Class.Error), tid)
    .errorCode(437)
    .unknownAttributes([0x0031, 0x0032, 0x0033])
    .xorAddress(Attr.XorRelayedAddress, '2001:db8::1', 50000)
    .xorAddress(Attr.XorMappedAddress, '198.51.100.7', 1)
    .attr(Attr.Software, 'Gatehouse')
    .integrity(key)
    .integritySha256(key)
    .fingerprint();
  const buf = w.copy();
  t.ok(isStun(buf));
  const m = decodeStun(buf)!;
  t.ok(m);
  t.equal(m.method, Method.Allocate);
  t.equal(m.cls, Class.Error);
  t.same(getErrorCode(m), { code: 437, reason: 'Allocation Mismatch' });
  t.same(decodeUnknownAttributes(getAttr(m, Attr.UnknownAttributes)!), [0x31, 0x32, 0x33]);
  t.same(getXorAddress(m, Attr.XorRelayedAddress), { family: 6, address: '2001:db8::1', port: 50000 });
  t.same(getXorAddress(m, Attr.XorMappedAddress), { family: 4, address: '198.51.100.7', port: 1 });
  t.ok(verifyIntegrity(m, key));
  t.ok(verifyIntegritySha256(m, key));
  t.ok(verifyFingerprint(m));
  t.notOk(verifyIntegrity(m, longTermKey('alice', 'gatehouse.local', 'other')));
  t.equal(buf.readUInt32BE(4), MAGIC_COOKIE);
});

t.test('attributes after MESSAGE-INTEGRITY are ignored (RFC 8489 §14.5)', async (t) => {
  const w = new StunWriter();
  const key = Buffer.from('k');
  w.reset(messageType(Method.Binding, Class.Request), Buffer.alloc(12, 7)).integrity(key).attr(Attr.Username, 'late').fingerprint();
  const m = decodeStun(w.copy())!;
  t.ok(m);
  t.equal(getAttr(m, Attr.Username), undefined);
  t.ok(getAttr(m, Attr.Fingerprint));
});

t.test('malformed input returns null, never throws', async (t) => {
  t.equal(decodeStun(Buffer.alloc(0)), null);
  t.equal(decodeStun(Buffer.alloc(19)), null);
  const hdr = Buffer.from(REQUEST.subarray(0, 20));
  hdr.writeUInt16BE(0, 2);
  t.ok(decodeStun(hdr), 'empty body is fine');
  const badCookie = Buffer.from(REQUEST);
  badCookie[4] = 0;
  t.equal(decodeStun(badCookie), null);
  const topBits = Buffer.from(REQUEST);
  topBits[0] = 0x80;
  t.equal(decodeStun(topBits), null);
  const truncated = REQUEST.subarray(0, REQUEST.length - 4);
  t.equal(decodeStun(truncated), null, 'length mismatch');
  const overrun = Buffer.from(REQUEST);
  overrun.writeUInt16BE(0x0100, 22); // SOFTWARE length beyond end
  t.equal(decodeStun(overrun), null);
  const oddLen = Buffer.from(REQUEST);
  oddLen.writeUInt16BE(0x57, 2);
  t.equal(decodeStun(oddLen), null);
  // Random garbage: never throws.
  let seed = 12345;
  const rnd = (): number => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) & 0xff;
  for (let i = 0; i < 2000; i++) {
    const b = Buffer.from(REQUEST);
    for (let k = 0; k < 4; k++) b[rnd() % b.length] = rnd();
    const m = decodeStun(b);
    if (m) {
      verifyFingerprint(m);
      verifyIntegrity(m, Buffer.from('x'));
      verifyIntegritySha256(m, Buffer.from('x'));
      for (const a of m.attrs) decodeXorAddress(m.raw.subarray(a.offset, a.offset + a.length), m.transactionId);
    }
  }
  t.pass('fuzzed 2000 mutations without throwing');
});

t.test('helpers', async (t) => {
  t.equal(crc32(Buffer.from('123456789')), 0xcbf43926);
  t.equal(formatIPv6(parseIP('::1')!), '::1');
  t.equal(formatIPv6(parseIP('::')!), '::');
  t.equal(formatIPv6(parseIP('fe80::1:0:0:1')!), 'fe80::1:0:0:1');
  t.equal(formatIPv6(parseIP('2001:db8:0:0:1:0:0:1')!), '2001:db8::1:0:0:1');
  t.equal(formatIPv6(parseIP('::ffff:192.0.2.1')!), '::ffff:c000:201');
  t.same(parseIP('10.1.2.3'), Buffer.from([10, 1, 2, 3]));
  t.equal(parseIP('nope'), null);
  t.equal(opaqueString('a\u00a0b'), 'a b');
  t.equal(opaqueString('e\u0301'), '\u00e9', 'NFC');
  t.equal(longTermKey('u', 'r', 'p').toString('hex'), longTermKey('u', 'r', 'p', 'md5').toString('hex'));
  t.not(longTermKey('u', 'r', 'p', 'sha256').length, 16);
});
