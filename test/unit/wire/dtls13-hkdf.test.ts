// Known-answer tests for src/wire/hkdf.ts: RFC 5869 Appendix A.1 and the RFC 8448 §3
// "Simple 1-RTT Handshake" key schedule (TLS_AES_128_GCM_SHA256).
import t from 'tap';
import { createHash } from 'node:crypto';
import {
  hkdfExtract,
  hkdfExpand,
  hkdfExpandLabel,
  deriveSecret,
  tls13Exporter,
  DTLS13_PREFIX,
  TLS13_PREFIX,
} from '../../../src/wire/hkdf.js';
import { srtpKeysFromExporter, splitSrtpKeyMaterial, srtpProfileLengths } from '../../../src/wire/tls-prf.js';

const h = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const hex = (b: Buffer) => b.toString('hex');

t.test('RFC 5869 A.1 (SHA-256)', async (t) => {
  const ikm = Buffer.alloc(22, 0x0b);
  const salt = h('000102030405060708090a0b0c');
  const info = h('f0f1f2f3f4f5f6f7f8f9');
  const prk = hkdfExtract('sha256', salt, ikm);
  t.equal(hex(prk), '077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5');
  t.equal(hex(hkdfExpand('sha256', prk, info, 42)), '3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865');
  t.throws(() => hkdfExpand('sha256', prk, info, 255 * 32 + 1), RangeError);
});

// RFC 8448 §3 values.
const V = {
  early: '33ad0a1c607ec03b09e6cd9893680ce210adf300aa1f2660e1b22e10f170f92a',
  derivedForHs: '6f2615a108c702c5678f54fc9dbab69716c076189c48250cebeac3576c3611ba',
  ecdhe: '8bd4054fb55b9d63fdfbacf9f04b9f0d35e6d63f537563efd46272900f89492d',
  hs: '1dc826e93606aa6fdc0aadc12f741b01046aa6b99f691ed221a9f0ca043fbeac',
  thChSh: '860c06edc07858ee8e78f0e7428c58edd6b43f2ca3e6e95f02ed063cf0e1cad8',
  cHs: 'b3eddb126e067f35a780b3abf45e2d8f3b1a950738f52e9600746a0e27a55a21',
  sHs: 'b67b7d690cc16c4e75e54213cb2d37b4e9c912bcded9105d42befd59d391ad38',
  masterDerived: '43de77e0c77713859a944db9db2590b53190a65b3ee2e4f12dd7a0bb7ce254b4',
  master: '18df06843d13a08bf2a449844c5f8a478001bc4d4c627984d5a41da8d0402919',
  thChSf: '9608102a0f1ccc6db6250b7b7e417b1a000eaada3daae4777a7686c9ff83df13',
  cAp: '9e40646ce79a7f9dc05af8889bce6552875afa0b06df0087f792ebb7c17504a5',
  sAp: 'a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643',
  exp: 'fe22f881176eda18eb8f44529e6792c50c9a3f89452f68d8ae311b4309d3cf50',
  sHsKey: '3fce516009c21727d0f2e4e86ee403bc',
  sHsIv: '5d313eb2671276ee13000b30',
  cHsKey: 'dbfaa693d1762c5b666af5d950258d01',
  cHsIv: '5bd3c71b836e0b76bb73265f',
  sApKey: '9f02283b6c9c07efc26bb9f2ac92e356',
  sApIv: 'cf782b88dd83549aadf1e984',
  cApKey: '17422dda596ed5d9acd890e3c63f5051',
  cApIv: '5b78923dee08579033e523d9',
};

t.test('RFC 8448 §3 key schedule', async (t) => {
  const empty = createHash('sha256').digest();
  const early = hkdfExtract('sha256', null, Buffer.alloc(32));
  t.equal(hex(early), V.early);
  const d1 = deriveSecret('sha256', early, 'derived', empty);
  t.equal(hex(d1), V.derivedForHs);
  const hs = hkdfExtract('sha256', d1, h(V.ecdhe));
  t.equal(hex(hs), V.hs);
  t.equal(hex(deriveSecret('sha256', hs, 'c hs traffic', h(V.thChSh))), V.cHs);
  t.equal(hex(deriveSecret('sha256', hs, 's hs traffic', h(V.thChSh))), V.sHs);
  const d2 = deriveSecret('sha256', hs, 'derived', empty);
  t.equal(hex(d2), V.masterDerived);
  const master = hkdfExtract('sha256', d2, Buffer.alloc(32));
  t.equal(hex(master), V.master);
  t.equal(hex(deriveSecret('sha256', master, 'c ap traffic', h(V.thChSf))), V.cAp);
  t.equal(hex(deriveSecret('sha256', master, 's ap traffic', h(V.thChSf))), V.sAp);
  t.equal(hex(deriveSecret('sha256', master, 'exp master', h(V.thChSf))), V.exp);
});

t.test('RFC 8448 §3 traffic keys (RFC 8446 §7.3)', async (t) => {
  for (const [sec, key, iv] of [
    [V.sHs, V.sHsKey, V.sHsIv],
    [V.cHs, V.cHsKey, V.cHsIv],
    [V.sAp, V.sApKey, V.sApIv],
    [V.cAp, V.cApKey, V.cApIv],
  ] as const) {
    t.equal(hex(hkdfExpandLabel('sha256', h(sec), 'key', Buffer.alloc(0), 16)), key);
    t.equal(hex(hkdfExpandLabel('sha256', h(sec), 'iv', Buffer.alloc(0), 12)), iv);
    // The explicit TLS prefix is the default.
    t.equal(hex(hkdfExpandLabel('sha256', h(sec), 'key', Buffer.alloc(0), 16, TLS13_PREFIX)), key);
  }
});

t.test('DTLS 1.3 prefix changes the output and follows HkdfLabel layout', async (t) => {
  const s = h(V.sAp);
  const tls = hkdfExpandLabel('sha256', s, 'key', Buffer.alloc(0), 16);
  const dtls = hkdfExpandLabel('sha256', s, 'key', Buffer.alloc(0), 16, DTLS13_PREFIX);
  t.not(hex(tls), hex(dtls));
  // HkdfLabel = u16 length | u8 len "dtls13key" | u8 0  (RFC 8446 §7.1 with RFC 9147 §5.9 prefix)
  const info = Buffer.concat([Buffer.of(0, 16, 9), Buffer.from('dtls13key'), Buffer.of(0)]);
  t.equal(hex(dtls), hex(hkdfExpand('sha256', s, info, 16)));
});

t.test('exporter and RFC 5764 split', async (t) => {
  const secret = h(V.exp);
  const a = tls13Exporter('sha256', secret, 'EXTRACTOR-dtls_srtp', Buffer.alloc(0), 60, DTLS13_PREFIX);
  // Independent recomputation of RFC 8446 §7.5 from hkdfExpand.
  const lbl = (l: string, ctx: Buffer, len: number) => {
    const full = Buffer.from('dtls13' + l);
    return Buffer.concat([Buffer.of(len >> 8, len & 255, full.length), full, Buffer.of(ctx.length), ctx]);
  };
  const e = createHash('sha256').digest();
  const s1 = hkdfExpand('sha256', secret, lbl('EXTRACTOR-dtls_srtp', e, 32), 32);
  const b = hkdfExpand('sha256', s1, lbl('exporter', e, 60), 60);
  t.equal(hex(a), hex(b));
  const k = srtpKeysFromExporter('sha256', secret, 0x0001)!;
  t.equal(hex(k.clientKey), hex(a.subarray(0, 16)));
  t.equal(hex(k.serverKey), hex(a.subarray(16, 32)));
  t.equal(hex(k.clientSalt), hex(a.subarray(32, 46)));
  t.equal(hex(k.serverSalt), hex(a.subarray(46, 60)));
  const g = srtpKeysFromExporter('sha256', secret, 0x0008)!;
  t.equal(g.clientKey.length, 32);
  t.equal(g.serverSalt.length, 12);
  t.equal(srtpKeysFromExporter('sha256', secret, 0x1234), null);
  t.same(srtpProfileLengths(0x0007), { keyLen: 16, saltLen: 12 });
  const sp = splitSrtpKeyMaterial(Buffer.from([...Array(60).keys()]), 16, 14);
  t.equal(sp.serverSalt[0], 46);
});
