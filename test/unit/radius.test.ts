import t from 'tap';
import { execFileSync } from 'node:child_process';
import {
  RadiusAttr,
  RadiusCode,
  buildAccessRequest,
  computeMessageAuthenticator,
  decodeRadius,
  decryptMppeKey,
  eapFromAttributes,
  eapMessageAttributes,
  encodeRadius,
  encryptMppeKey,
  microsoftAttributes,
  mskFromAccept,
  responseAuthenticator,
  verifyResponse,
  MICROSOFT_VENDOR_ID,
  MsAttr,
} from '../../src/wire/radius.js';

const secret = Buffer.from('testing123');

// Vector built independently (Python hmac/hashlib) for this test:
// Access-Request id 0x2a, Request Authenticator 00..0f, User-Name "alice",
// EAP-Message = Response/Identity "alice", Message-Authenticator.
const REQ_ZEROED = Buffer.from(
  '012a0039000102030405060708090a0b0c0d0e0f0107616c6963654f0c0207000a01616c696365501200000000000000000000000000000000',
  'hex',
);
const REQ_MA = '830b9253d044bbb43b8fa5d89bf7f2ad';

t.test('Message-Authenticator (RFC 3579 §3.2): HMAC-MD5 over the packet with the value zeroed', async (t) => {
  t.equal(computeMessageAuthenticator(REQ_ZEROED, secret).toString('hex'), REQ_MA);
  const eap = Buffer.from([2, 7, 0, 10, 1, ...Buffer.from('alice')]);
  const { packet } = buildAccessRequest({
    identifier: 0x2a,
    secret,
    eap,
    authenticator: Buffer.from('000102030405060708090a0b0c0d0e0f', 'hex'),
    attributes: [{ type: RadiusAttr.UserName, value: Buffer.from('alice') }],
  });
  t.equal(packet.subarray(packet.length - 16).toString('hex'), REQ_MA, 'buildAccessRequest writes the same value');
  t.same(packet.subarray(0, packet.length - 16), REQ_ZEROED.subarray(0, REQ_ZEROED.length - 16));
  // Cross-check with openssl's HMAC (a second implementation).
  const viaOpenssl = execFileSync('openssl', ['dgst', '-md5', '-hmac', 'testing123', '-r'], { input: REQ_ZEROED }).toString().split(' ')[0];
  t.equal(viaOpenssl, REQ_MA, 'openssl dgst -hmac agrees');
});

t.test('responses: Response Authenticator (RFC 2865 §3) and Message-Authenticator with the request authenticator', async (t) => {
  const reqAuth = Buffer.alloc(16, 0x11);
  const eap = Buffer.from([1, 8, 0, 6, 13, 0x20]);
  const resp = encodeRadius({
    code: RadiusCode.AccessChallenge,
    identifier: 5,
    authenticator: reqAuth,
    attributes: [
      ...eapMessageAttributes(eap),
      { type: RadiusAttr.State, value: Buffer.from('st') },
      { type: RadiusAttr.MessageAuthenticator, value: Buffer.alloc(16) },
    ],
  });
  computeMessageAuthenticator(resp, secret, reqAuth).copy(resp, resp.length - 16);
  responseAuthenticator(resp, reqAuth, secret).copy(resp, 4);
  const ok = verifyResponse(resp, reqAuth, secret);
  t.ok(ok, 'a well-formed Access-Challenge verifies');
  t.same(eapFromAttributes(ok!.attributes), eap);
  t.equal(verifyResponse(resp, Buffer.alloc(16, 0x12), secret), null, 'another request authenticator: refused');
  t.equal(verifyResponse(resp, reqAuth, Buffer.from('wrong')), null, 'another secret: refused');
  const flipped = Buffer.from(resp);
  flipped[flipped.length - 1]! ^= 1;
  responseAuthenticator(flipped, reqAuth, secret).copy(flipped, 4);
  t.equal(verifyResponse(flipped, reqAuth, secret), null, 'a bad Message-Authenticator is refused even with a good Response Authenticator');
  const noMa = encodeRadius({
    code: RadiusCode.AccessChallenge,
    identifier: 5,
    authenticator: reqAuth,
    attributes: eapMessageAttributes(eap),
  });
  responseAuthenticator(noMa, reqAuth, secret).copy(noMa, 4);
  t.equal(verifyResponse(noMa, reqAuth, secret), null, 'EAP-Message without Message-Authenticator is refused (RFC 3579 §3.2)');
});

t.test('EAP-Message split at 253 octets (RFC 3579 §3.1)', async (t) => {
  const eap = Buffer.alloc(600, 7);
  const attrs = eapMessageAttributes(eap);
  t.same(
    attrs.map((a) => a.value.length),
    [253, 253, 94],
  );
  t.same(eapFromAttributes(attrs), eap);
  t.equal(decodeRadius(Buffer.from('0101001400000000000000000000000000000000', 'hex'))!.attributes.length, 0);
  t.equal(decodeRadius(Buffer.from('01010016000000000000000000000000000000000101', 'hex')), null, 'attribute length 1');
  t.equal(decodeRadius(Buffer.alloc(19)), null);
});

// RFC 2548 §2.4.2 vector built independently (Python hashlib): key 0x40..0x5f, salt 8001,
// Request Authenticator 16 x 0xaa, secret "testing123".
const MPPE_KEY = Buffer.from(Array.from({ length: 32 }, (_, i) => 0x40 + i));
const MPPE_REQ_AUTH = Buffer.alloc(16, 0xaa);
const MPPE_VALUE = Buffer.from(
  '8001b7584da7c755859279b4a24fc53d7e44dbe722256b223c6f488e168ea5e3f3eaec74dab2a5336a2de719cbed01f8ec3b',
  'hex',
);

t.test('MS-MPPE key encryption/decryption (RFC 2548 §2.4.2/§2.4.3)', async (t) => {
  t.same(encryptMppeKey(MPPE_KEY, secret, MPPE_REQ_AUTH, Buffer.from([0x80, 0x01])), MPPE_VALUE, 'encryption matches the vector');
  t.same(decryptMppeKey(MPPE_VALUE, secret, MPPE_REQ_AUTH), MPPE_KEY, 'decryption recovers the key');
  t.not(
    decryptMppeKey(MPPE_VALUE, secret, Buffer.alloc(16, 0xab))?.toString('hex'),
    MPPE_KEY.toString('hex'),
    'another request authenticator does not',
  );
  const noSaltBit = Buffer.from(MPPE_VALUE);
  noSaltBit[0] = 0x00;
  t.equal(decryptMppeKey(noSaltBit, secret, MPPE_REQ_AUTH), null, 'salt without its high bit is malformed');
  t.equal(decryptMppeKey(MPPE_VALUE.subarray(0, 20), secret, MPPE_REQ_AUTH), null, 'not a multiple of 16');
});

t.test('MSK from Access-Accept = MS-MPPE-Recv-Key | MS-MPPE-Send-Key', async (t) => {
  const msk = Buffer.from(Array.from({ length: 64 }, (_, i) => i));
  const reqAuth = Buffer.alloc(16, 3);
  const vsa = (type: number, key: Buffer) => {
    const enc = encryptMppeKey(key, secret, reqAuth);
    const v = Buffer.alloc(4 + 2 + enc.length);
    v.writeUInt32BE(MICROSOFT_VENDOR_ID);
    v[4] = type;
    v[5] = 2 + enc.length;
    enc.copy(v, 6);
    return { type: RadiusAttr.VendorSpecific, value: v };
  };
  const accept = decodeRadius(
    encodeRadius({
      code: RadiusCode.AccessAccept,
      identifier: 1,
      authenticator: Buffer.alloc(16),
      attributes: [vsa(MsAttr.MppeSendKey, msk.subarray(32)), vsa(MsAttr.MppeRecvKey, msk.subarray(0, 32))],
    }),
  )!;
  t.equal(microsoftAttributes(accept).length, 2);
  t.same(mskFromAccept(accept, secret, reqAuth), msk);
  t.equal(mskFromAccept({ ...accept, attributes: accept.attributes.slice(0, 1) }, secret, reqAuth), null, 'one key missing');
});
