// PCP codec (src/wire/pcp.ts) against byte-exact vectors laid out by hand from RFC 6887
// §7.1 (request header), §7.2 (response header), §7.3 (options), §11.1 (MAP), §12.1
// (PEER), §13 (options), §9 and RFC 6886 §3.5 (NAT-PMP Unsupported Version).
import t from 'tap';
import {
  Opcode,
  OptionCode,
  Result,
  decodeFilter,
  decodePcpAddress,
  decodePcpOptions,
  decodePcpRequest,
  decodePcpResponse,
  decodeThirdParty,
  encodeNatPmpUnsupportedVersion,
  encodePcpAddress,
  encodePcpErrorResponse,
  encodePcpOptions,
  encodePcpRequest,
  encodePcpResponse,
  filterOption,
  isLongLifetimeError,
  preferFailureOption,
  resultName,
  thirdPartyOption,
  validatePcpOptions,
} from '../../src/wire/pcp.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const NONCE = hex('0102030405060708090a0b0c');

// MAP request, §7.1 + §11.1: version 2, R=0 opcode 1, reserved, lifetime 7200,
// client ::ffff:192.0.2.33, nonce, protocol 17, reserved, internal 5000, suggested 6000,
// suggested ::ffff:0.0.0.0; options PREFER_FAILURE (2, len 0) and THIRD_PARTY (1, len 16).
const MAP_REQ = hex(`
  02 01 0000  00001c20
  00000000 00000000 0000ffff c0000221
  0102030405060708090a0b0c
  11 000000  1388 1770
  00000000 00000000 0000ffff 00000000
  02 00 0000
  01 00 0010 00000000 00000000 0000ffff c0000242
`);

t.test('MAP request: encode and decode byte-exact (§7.1, §11.1, §13.1, §13.2)', async (t) => {
  const enc = encodePcpRequest({
    opcode: Opcode.MAP,
    lifetime: 7200,
    clientAddress: '192.0.2.33',
    map: { nonce: NONCE, protocol: 17, internalPort: 5000, externalPort: 6000, externalAddress: '0.0.0.0' },
    options: [preferFailureOption(), thirdPartyOption('192.0.2.66')],
  });
  t.equal(enc.toString('hex'), MAP_REQ.toString('hex'));
  const d = decodePcpRequest(MAP_REQ);
  t.ok(d.ok);
  if (!d.ok) return;
  t.equal(d.value.opcode, Opcode.MAP);
  t.equal(d.value.lifetime, 7200);
  t.equal(d.value.clientAddress, '192.0.2.33');
  t.same(d.value.map, { nonce: NONCE, protocol: 17, internalPort: 5000, externalPort: 6000, externalAddress: '0.0.0.0' });
  t.equal(d.value.options.length, 2);
  t.equal(decodeThirdParty(d.value.options[1]!), '192.0.2.66');
  // the nonce is a copy, not a view of the datagram
  const copy = Buffer.from(MAP_REQ);
  const d2 = decodePcpRequest(copy);
  copy.fill(0);
  t.ok(d2.ok && d2.value.map!.nonce.equals(NONCE));
});

t.test('PEER request and response byte-exact (§12.1, §7.2)', async (t) => {
  const PEER_REQ = hex(`
    02 02 0000 00000078
    20010db8 00000000 00000000 00000001
    0102030405060708090a0b0c
    06 000000 0050 0000
    00000000 00000000 00000000 00000000
    01bb 0000
    20010db8 00000000 00000000 00000002
  `);
  const peer = {
    nonce: NONCE,
    protocol: 6,
    internalPort: 80,
    externalPort: 0,
    externalAddress: '::',
    remotePort: 443,
    remoteAddress: '2001:db8::2',
  };
  t.equal(
    encodePcpRequest({ opcode: Opcode.PEER, lifetime: 120, clientAddress: '2001:db8::1', peer }).toString('hex'),
    PEER_REQ.toString('hex'),
  );
  const d = decodePcpRequest(PEER_REQ);
  t.ok(d.ok);
  if (d.ok) {
    t.same(d.value.peer, peer);
    t.equal(d.value.clientAddress, '2001:db8::1');
  }
  const RES = hex(`
    02 82 00 00 00000078 0000002a 000000000000000000000000
    0102030405060708090a0b0c
    06 000000 0050 c350
    20010db8 00000000 00000000 00000001
    01bb 0000
    20010db8 00000000 00000000 00000002
  `);
  const resPeer = { ...peer, externalPort: 50000, externalAddress: '2001:db8::1' };
  t.equal(
    encodePcpResponse({ opcode: Opcode.PEER, result: 0, lifetime: 120, epoch: 42, peer: resPeer }).toString('hex'),
    RES.toString('hex'),
  );
  const r = decodePcpResponse(RES);
  t.ok(r.ok);
  if (r.ok) {
    t.equal(r.value.result, Result.SUCCESS);
    t.equal(r.value.epoch, 42);
    t.equal(r.value.lifetime, 120);
    t.same(r.value.peer, resPeer);
  }
});

t.test('ANNOUNCE request and response (§14.1): 24-byte header only', async (t) => {
  const req = hex('02000000 00000000 00000000 00000000 0000ffff 0a000001');
  t.equal(encodePcpRequest({ opcode: Opcode.ANNOUNCE, lifetime: 0, clientAddress: '10.0.0.1' }).toString('hex'), req.toString('hex'));
  const d = decodePcpRequest(req);
  t.ok(d.ok && d.value.opcode === Opcode.ANNOUNCE && d.value.options.length === 0);
  const res = encodePcpResponse({ opcode: Opcode.ANNOUNCE, result: 0, lifetime: 0, epoch: 7 });
  t.equal(res.toString('hex'), '80'.padStart(4, '02') + '0000' + '00000000' + '00000007' + '00'.repeat(12));
});

t.test('options: padding to 4 bytes, length excludes padding (§7.3)', async (t) => {
  const enc = encodePcpOptions([
    { code: 200, data: hex('aabbcc') },
    { code: 130, data: Buffer.alloc(0) },
  ]);
  t.equal(enc.toString('hex'), 'c8000003aabbcc00' + '82000000');
  const d = decodePcpOptions(enc, 0);
  t.ok(d.ok);
  if (d.ok)
    t.same(d.value, [
      { code: 200, data: hex('aabbcc') },
      { code: 130, data: Buffer.alloc(0) },
    ]);
  // a length running past the end (padding included)
  const bad = decodePcpOptions(hex('c8000005aabbccdd'), 0);
  t.ok(!bad.ok && bad.error.result === Result.MALFORMED_OPTION);
  const trunc = decodePcpOptions(hex('c800'), 0);
  t.ok(!trunc.ok && trunc.error.result === Result.MALFORMED_OPTION);
});

t.test('FILTER option (§13.3)', async (t) => {
  const f = filterOption({ prefixLength: 120, port: 443, address: '198.51.100.0' });
  t.equal(encodePcpOptions([f]).toString('hex'), '03000014' + '00' + '78' + '01bb' + '00000000000000000000ffffc6336400');
  const d = decodeFilter(f);
  t.ok(d.ok);
  if (d.ok) t.same(d.value, { prefixLength: 120, port: 443, address: '198.51.100.0' });
  const bad = { code: 3, data: Buffer.from(f.data) };
  bad.data[1] = 129;
  t.equal(validatePcpOptions(Opcode.MAP, [bad])?.result, Result.MALFORMED_OPTION, 'prefix > 128');
  bad.data[1] = 64;
  t.equal(validatePcpOptions(Opcode.MAP, [bad])?.result, Result.MALFORMED_OPTION, 'IPv4-mapped with prefix < 96');
  bad.data[1] = 0;
  t.equal(validatePcpOptions(Opcode.MAP, [bad]), null, 'prefix 0 (remove all filters) is valid');
  t.equal(validatePcpOptions(Opcode.MAP, [f, f, f]), null, 'FILTER may repeat');
});

t.test('option rules (§7.3, §13): UNSUPP_OPTION and MALFORMED_OPTION', async (t) => {
  t.equal(validatePcpOptions(Opcode.MAP, [{ code: 99, data: Buffer.alloc(4) }])?.result, Result.UNSUPP_OPTION, 'unknown mandatory');
  t.equal(validatePcpOptions(Opcode.MAP, [{ code: 99, data: Buffer.alloc(4) }], { knownOptions: [99] }), null, 'known to the caller');
  t.equal(validatePcpOptions(Opcode.MAP, [{ code: 199, data: Buffer.alloc(4) }]), null, 'unknown optional is ignored');
  t.equal(validatePcpOptions(Opcode.PEER, [preferFailureOption()])?.result, Result.UNSUPP_OPTION, 'PREFER_FAILURE is MAP only');
  t.equal(
    validatePcpOptions(Opcode.ANNOUNCE, [thirdPartyOption('10.0.0.1')])?.result,
    Result.UNSUPP_OPTION,
    'THIRD_PARTY not for ANNOUNCE',
  );
  t.equal(validatePcpOptions(Opcode.MAP, [preferFailureOption(), preferFailureOption()])?.result, Result.MALFORMED_OPTION, 'repeated');
  t.equal(validatePcpOptions(Opcode.MAP, [{ code: 1, data: Buffer.alloc(4) }])?.result, Result.MALFORMED_OPTION, 'THIRD_PARTY of 4 bytes');
  t.equal(
    validatePcpOptions(Opcode.MAP, [{ code: 2, data: Buffer.alloc(4) }])?.result,
    Result.MALFORMED_OPTION,
    'PREFER_FAILURE with data',
  );
  // and through decodePcpRequest
  const withUnknown = Buffer.concat([MAP_REQ, hex('63000000')]);
  const d = decodePcpRequest(withUnknown);
  t.ok(!d.ok && d.error.result === Result.UNSUPP_OPTION && d.error.opcode === Opcode.MAP && d.error.clientAddress === '192.0.2.33');
});

t.test('request validation order of §8.3', async (t) => {
  const r1 = decodePcpRequest(hex('02'));
  t.ok(!r1.ok && r1.error.silent, 'shorter than 2 bytes: silent');
  const resp = Buffer.from(MAP_REQ);
  resp[1] = 0x81;
  const r2 = decodePcpRequest(resp);
  t.ok(!r2.ok && r2.error.silent, 'R bit: silent');
  const v1 = Buffer.from(MAP_REQ);
  v1[0] = 1;
  const r3 = decodePcpRequest(v1);
  t.ok(!r3.ok && r3.error.result === Result.UNSUPP_VERSION && !r3.error.natPmp && !r3.error.silent, 'version 1: UNSUPP_VERSION');
  const r4 = decodePcpRequest(hex('0000'));
  t.ok(!r4.ok && r4.error.result === Result.UNSUPP_VERSION && r4.error.natPmp, 'NAT-PMP: UNSUPP_VERSION natPmp');
  const r4b = decodePcpRequest(hex('0080000000000000'));
  t.ok(!r4b.ok && r4b.error.silent, 'NAT-PMP response: silent');
  const r5 = decodePcpRequest(MAP_REQ.subarray(0, 20));
  t.ok(!r5.ok && r5.error.result === Result.MALFORMED_REQUEST, 'short header');
  const r6 = decodePcpRequest(Buffer.concat([MAP_REQ, hex('00')]));
  t.ok(!r6.ok && r6.error.result === Result.MALFORMED_REQUEST, 'not a multiple of 4');
  const big = Buffer.concat([MAP_REQ, Buffer.alloc(1104 - MAP_REQ.length)]);
  const r7 = decodePcpRequest(big);
  t.ok(!r7.ok && r7.error.result === Result.MALFORMED_REQUEST, 'longer than 1100');
  const op = Buffer.from(MAP_REQ);
  op[1] = 0x05;
  const r8 = decodePcpRequest(op);
  t.ok(!r8.ok && r8.error.result === Result.UNSUPP_OPCODE && r8.error.opcode === 5, 'unknown opcode');
  const r9 = decodePcpRequest(MAP_REQ.subarray(0, 48));
  t.ok(!r9.ok && r9.error.result === Result.MALFORMED_REQUEST, 'MAP data cut short');
  const auth = decodePcpRequest(Buffer.concat([hex('0203000000000000'), Buffer.alloc(16), hex('0000000100000002')]));
  t.ok(auth.ok && auth.value.opcodeData.toString('hex') === '0000000100000002', 'AUTHENTICATION: 8 bytes of raw opcode data');
});

t.test('error response copies the request after the header (§8.3)', async (t) => {
  const e = encodePcpErrorResponse(MAP_REQ, Result.NOT_AUTHORIZED, 1800, 99);
  t.equal(e.length, MAP_REQ.length);
  t.equal(e.subarray(0, 24).toString('hex'), '02810002' + '00000708' + '00000063' + '00'.repeat(12));
  t.ok(e.subarray(24).equals(MAP_REQ.subarray(24)));
  const r = decodePcpResponse(e);
  t.ok(r.ok && r.value.result === Result.NOT_AUTHORIZED && r.value.map!.internalPort === 5000 && r.value.options.length === 2);
  // a malformed option and what follows are not copied: the answer decodes
  const badOpt = Buffer.concat([MAP_REQ, hex('c8000010 aabbccdd')]);
  const eb = encodePcpErrorResponse(badOpt, Result.MALFORMED_OPTION, 1800, 0);
  t.equal(eb.length, MAP_REQ.length);
  const db = decodePcpResponse(eb);
  t.ok(db.ok && db.value.options.length === 2, 'the well-formed options are kept');
  // an unknown opcode: copied as is, opaque to the decoder
  const unk = Buffer.concat([hex('02090000 00000000'), Buffer.alloc(16), hex('01020304 05060708 090a')]);
  const eu = encodePcpErrorResponse(unk, Result.UNSUPP_OPCODE, 1800, 0);
  t.equal(eu.length, 36, 'padded to 4');
  t.equal(eu.subarray(24, 34).toString('hex'), '0102030405060708090a');
  const du = decodePcpResponse(eu);
  t.ok(du.ok && du.value.opcode === 9 && du.value.opcodeData.length === 12 && du.value.options.length === 0);
  // > 1100 bytes: truncated to 1100
  const big = Buffer.concat([MAP_REQ, Buffer.alloc(2000)]);
  t.equal(encodePcpErrorResponse(big, Result.MALFORMED_REQUEST, 1800, 0).length, 1100);
  // odd length: padded to 4
  t.equal(encodePcpErrorResponse(Buffer.concat([MAP_REQ, hex('01')]), Result.MALFORMED_REQUEST, 1800, 0).length % 4, 0);
  // UNSUPP_VERSION: bare header with version 2 (§9)
  const v = encodePcpErrorResponse(hex('09010000'), Result.UNSUPP_VERSION, 1800, 5);
  t.equal(v.toString('hex'), '02810001' + '00000708' + '00000005' + '00'.repeat(12) + '00'.repeat(36), 'MAP layout, zero data');
  const va = encodePcpErrorResponse(hex('09000000'), Result.UNSUPP_VERSION, 1800, 5);
  t.equal(va.length, 24, 'ANNOUNCE: a bare header');
  // a MAP cut short: its data zero-filled to 36 bytes
  const cut = encodePcpErrorResponse(MAP_REQ.subarray(0, 40), Result.MALFORMED_REQUEST, 1800, 0);
  t.equal(cut.length, 60);
  t.ok(cut.subarray(24, 40).equals(MAP_REQ.subarray(24, 40)));
  t.ok(cut.subarray(40).equals(Buffer.alloc(20)));
});

t.test('NAT-PMP Unsupported Version (RFC 6887 §9, RFC 6886 §3.5)', async (t) => {
  t.equal(encodeNatPmpUnsupportedVersion(hex('0000'), 300)!.toString('hex'), '00800001' + '0000012c' + '00000000');
  t.equal(
    encodeNatPmpUnsupportedVersion(hex('000100001388138800001c20'), 1)!.toString('hex'),
    '00810001' + '00000001' + '1388' + '0000' + '00000000',
  );
  t.equal(encodeNatPmpUnsupportedVersion(hex('0080'), 1), null);
  t.equal(encodeNatPmpUnsupportedVersion(MAP_REQ, 1), null);
});

t.test('addresses (§5)', async (t) => {
  t.equal(encodePcpAddress('192.0.2.1').toString('hex'), '00000000000000000000ffffc0000201');
  t.equal(encodePcpAddress('::ffff:192.0.2.1').toString('hex'), '00000000000000000000ffffc0000201');
  t.equal(encodePcpAddress('2001:db8::1:0:0:1').toString('hex'), '20010db8000000000001000000000001');
  t.equal(decodePcpAddress(hex('00000000000000000000ffffc0000201'), 0), '192.0.2.1');
  t.equal(decodePcpAddress(Buffer.alloc(16), 0), '::');
  t.equal(decodePcpAddress(hex('fe800000000000000000000000000001'), 0), 'fe80::1');
  t.throws(() => encodePcpAddress('nope'));
});

t.test('result codes and lifetimes (§7.4, RFC 7652 §11)', async (t) => {
  t.equal(Result.EXCESSIVE_REMOTE_PEERS, 13);
  t.equal(Result.AUTHENTICATION_REQUIRED, 15);
  t.equal(resultName(12), 'ADDRESS_MISMATCH');
  t.equal(OptionCode.FILTER, 3);
  t.ok(isLongLifetimeError(Result.MALFORMED_REQUEST));
  t.notOk(isLongLifetimeError(Result.NO_RESOURCES));
  t.notOk(isLongLifetimeError(Result.USER_EX_QUOTA));
});

t.test('response decoding edge cases', async (t) => {
  const bare = encodePcpResponse({ opcode: Opcode.MAP, result: Result.UNSUPP_VERSION, lifetime: 0, epoch: 0 });
  const r = decodePcpResponse(bare);
  t.ok(r.ok && r.value.map === undefined && r.value.result === Result.UNSUPP_VERSION, 'bare error header');
  const shortOk = decodePcpResponse(encodePcpResponse({ opcode: Opcode.MAP, result: 0, lifetime: 0, epoch: 0 }));
  t.ok(!shortOk.ok, 'a success MAP without its data is malformed');
  t.ok(!decodePcpResponse(MAP_REQ).ok, 'a request is not a response');
  const np = decodePcpResponse(hex('00800001000000010000000000'));
  t.ok(!np.ok && np.error.natPmp);
});
