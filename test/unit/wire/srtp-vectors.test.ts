/**
 * SRTP against the published test vectors: RFC 3711 Appendix B.2 (AES-CM keystream),
 * B.3 (key derivation), RFC 7714 §16 (SRTP AES-GCM) and §17 (SRTCP AES-GCM).
 */
import t from 'tap';
import {
  aesCmKeystream,
  deriveSessionKey,
  deriveSrtpSessionKeys,
  SrtpContext,
  SRTP_AEAD_AES_128_GCM,
  SRTP_AEAD_AES_256_GCM,
  SRTP_AES128_CM_HMAC_SHA1_80,
  type SrtpSessionKeys,
} from '../../../src/wire/srtp.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

t.test('RFC 3711 B.2: AES-CM keystream', async (t) => {
  const key = hex('2B7E151628AED2A6ABF7158809CF4F3C');
  const iv = hex('F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000');
  const ks = aesCmKeystream(key, iv, 0xff02 * 16);
  t.equal(ks.subarray(0, 16).toString('hex'), 'e03ead0935c95e80e166b16dd92b4eb4');
  t.equal(ks.subarray(16, 32).toString('hex'), 'd23513162b02d0f72a43a2fe4a5f97ab');
  t.equal(ks.subarray(32, 48).toString('hex'), '41e95b3bb0a2e8dd477901e4fca894c0');
  t.equal(ks.subarray(0xfeff * 16, 0xff00 * 16).toString('hex'), 'ec8cdf7398607cb0f2d21675ea9ea1e4');
  t.equal(ks.subarray(0xff00 * 16, 0xff01 * 16).toString('hex'), '362b7c3c6773516318a077d7fc5073ae');
  t.equal(ks.subarray(0xff01 * 16, 0xff02 * 16).toString('hex'), '6a2cc3787889374fbeb4c81b17ba6c44');
});

t.test('RFC 3711 B.3: key derivation', async (t) => {
  const mk = hex('E1F97A0D3E018BE0D64FA32C06DE4139');
  const ms = hex('0EC675AD498AFEEBB6960B3AABE6');
  t.equal(deriveSessionKey(mk, ms, 0x00, 16).toString('hex'), 'c61e7a93744f39ee10734afe3ff7a087');
  t.equal(deriveSessionKey(mk, ms, 0x02, 14).toString('hex'), '30cbbc08863d8c85d49db34a9ae1');
  t.equal(
    deriveSessionKey(mk, ms, 0x01, 94).toString('hex'),
    hex(`CEBE321F6FF7716B6FD4AB49AF256A156D38BAA48F0A0ACF3C34E2359E6CDBCE
         E049646C43D9327AD175578EF72270986371C10C9A369AC2F94A8C5FBCDDDC25
         6D6E919A48B610EF17C2041E474035766B68642C59BBFC2F34DB60DBDFB2`).toString('hex'),
  );
  const k = deriveSrtpSessionKeys(SRTP_AES128_CM_HMAC_SHA1_80, mk, ms);
  t.equal(k.rtpKey.toString('hex'), 'c61e7a93744f39ee10734afe3ff7a087');
  t.equal(k.rtpAuthKey.toString('hex'), 'cebe321f6ff7716b6fd4ab49af256a156d38baa4');
  t.equal(k.rtpSalt.length, 14);
  t.not(k.rtcpKey.toString('hex'), k.rtpKey.toString('hex'));
});

// RFC 7714 §16/§17 feed the session key and salt directly (no KDF).
const KEY128 = hex('000102030405060708090a0b0c0d0e0f');
const KEY256 = hex('000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f');
const SALT = hex('517569642070726f2071756f');
const RTP = hex(`8040f17b 8041f8d3 5501a0b2 47616c6c 69612065 7374206f 6d6e6973 20646976
                 69736120 696e2070 61727465 73207472 6573`);
const RTCP = hex(`81c8000d 4d617273 4e545031 4e545032 52545020 0000042a 0000e930 4c756e61
                  deadbeef deadbeef deadbeef deadbeef deadbeef`);

function sessionCtx(profile: number, key: Buffer): SrtpContext {
  const sk: SrtpSessionKeys = {
    rtpKey: key,
    rtpSalt: SALT,
    rtpAuthKey: Buffer.alloc(0),
    rtcpKey: key,
    rtcpSalt: SALT,
    rtcpAuthKey: Buffer.alloc(0),
  };
  return new SrtpContext(profile, Buffer.alloc(0), Buffer.alloc(0), { sessionKeys: sk });
}

const vectors = [
  {
    name: '§16.1 AEAD_AES_128_GCM SRTP',
    profile: SRTP_AEAD_AES_128_GCM,
    key: KEY128,
    srtp: hex(`8040f17b 8041f8d3 5501a0b2 f24de3a3 fb34de6c acba861c 9d7e4bca be633bd5
               0d294e6f 42a5f47a 51c7d19b 36de3adf 8833899d 7f27beb1 6a9152cf 765ee439 0cce`),
  },
  {
    name: '§16.2 AEAD_AES_256_GCM SRTP',
    profile: SRTP_AEAD_AES_256_GCM,
    key: KEY256,
    srtp: hex(`8040f17b 8041f8d3 5501a0b2 32b1de78 a822fe12 ef9f78fa 332e33aa b1801238
               9a58e2f3 b50b2a02 76ffae0f 1ba63799 b87b7aa3 db36dfff d6b0f9bb 7878d7a7 6c13`),
  },
];

for (const v of vectors) {
  t.test(`RFC 7714 ${v.name}`, async (t) => {
    t.equal(sessionCtx(v.profile, v.key).protectRtp(RTP).toString('hex'), v.srtp.toString('hex'), 'protect');
    const rx = sessionCtx(v.profile, v.key);
    const out = rx.unprotectRtp(v.srtp);
    t.ok(out, 'unprotect');
    t.equal(out!.toString('hex'), RTP.toString('hex'));
    t.equal(rx.lastRtpIndex, 0xf17b);
    for (const pos of [3, 20, v.srtp.length - 1]) {
      const bad = Buffer.from(v.srtp);
      bad[pos] ^= 0x01;
      t.equal(sessionCtx(v.profile, v.key).unprotectRtp(bad), null, `bit flip at ${pos} fails`);
    }
  });
}

const rtcpVectors = [
  {
    name: '§17.1 SRTCP AEAD_AES_128_GCM encrypted',
    profile: SRTP_AEAD_AES_128_GCM,
    key: KEY128,
    encrypt: true,
    srtcp: hex(`81c8000d 4d617273 63e94885 dcdab67c a727d766 2f6b7e99 7ff5c0f7 6c06f32d
                c676a5f1 730d6fda 4ce09b46 86303ded 0bb9275b c84aa458 96cf4d2f c5abf872
                45d9eade 800005d4`),
  },
  {
    name: '§17.2 SRTCP AEAD_AES_256_GCM encrypted',
    profile: SRTP_AEAD_AES_256_GCM,
    key: KEY256,
    encrypt: true,
    srtcp: hex(`81c8000d 4d617273 d50ae4d1 f5ce5d30 4ba297e4 7d470c28 2c3ece5d bffe0a50
                a2eaa5c1 110555be 8415f658 c61de047 6f1b6fad 1d1eb30c 4446839f 57ff6f6c
                b26ac3be 800005d4`),
  },
  {
    name: '§17.3 SRTCP AEAD_AES_128_GCM authenticated only',
    profile: SRTP_AEAD_AES_128_GCM,
    key: KEY128,
    encrypt: false,
    srtcp: hex(`81c8000d 4d617273 4e545031 4e545032 52545020 0000042a 0000e930 4c756e61
                deadbeef deadbeef deadbeef deadbeef deadbeef 841dd968 3dd78ec9 2ae58790
                125f62b3 000005d4`),
  },
  {
    name: '§17.4 SRTCP AEAD_AES_256_GCM authenticated only',
    profile: SRTP_AEAD_AES_256_GCM,
    key: KEY256,
    encrypt: false,
    srtcp: hex(`81c8000d 4d617273 4e545031 4e545032 52545020 0000042a 0000e930 4c756e61
                deadbeef deadbeef deadbeef deadbeef deadbeef 91db4afb feee5a97 8fab4393
                ed2615fe 000005d4`),
  },
];

for (const v of rtcpVectors) {
  t.test(`RFC 7714 ${v.name}`, async (t) => {
    t.equal(sessionCtx(v.profile, v.key).protectRtcp(RTCP, 0x5d4, v.encrypt).toString('hex'), v.srtcp.toString('hex'), 'protect');
    const rx = sessionCtx(v.profile, v.key);
    const out = rx.unprotectRtcp(v.srtcp);
    t.ok(out, 'unprotect');
    t.equal(out?.toString('hex'), RTCP.toString('hex'));
    t.equal(rx.lastRtcpIndex, 0x5d4);
    for (const pos of [1, 12, v.srtcp.length - 1]) {
      const bad = Buffer.from(v.srtcp);
      bad[pos] ^= 0x80;
      t.equal(sessionCtx(v.profile, v.key).unprotectRtcp(bad), null, `bit flip at ${pos} fails`);
    }
  });
}
