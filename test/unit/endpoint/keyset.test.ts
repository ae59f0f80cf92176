// Key-set construction from werift's DTLS state, proven against real records: two werift
// peers talk in-process over loopback; we capture DTLS application_data records on the
// wire (werift's DtlsSocket transport) and decrypt them by hand (AES-GCM, RFC 5288 §3 /
// RFC 6347 §4.1.2.1 AAD) with the key set the agent builds from the master secret.
import t from 'tap';
import { createDecipheriv, randomBytes } from 'node:crypto';
import { keySetFromDtls12, dtlsStateFromWerift, EndpointKeyError, type WeriftDtlsSocketLike } from '../../../src/endpoint/keyset.js';
import { encodeKeySet, decodeKeySet } from '../../../src/wire/keyset.js';
import { connectPeers, plainPeer, until, withTimeout } from './helpers.js';

interface Rec {
  type: number;
  epoch: number;
  seq: number;
  version: number;
  fragment: Buffer;
}

function parseRecords(buf: Buffer): Rec[] {
  const out: Rec[] = [];
  let o = 0;
  while (o + 13 <= buf.length) {
    const len = buf.readUInt16BE(o + 11);
    if (o + 13 + len > buf.length) break;
    out.push({
      type: buf[o]!,
      version: buf.readUInt16BE(o + 1),
      epoch: buf.readUInt16BE(o + 3),
      seq: buf.readUIntBE(o + 5, 6),
      fragment: buf.subarray(o + 13, o + 13 + len),
    });
    o += 13 + len;
  }
  return out;
}

/** Independent AES-GCM record decryption (RFC 5288 §3: nonce = salt(4) || explicit(8)). */
function gcmOpen(key: Buffer, salt: Buffer, r: Rec): Buffer | null {
  const explicit = r.fragment.subarray(0, 8);
  const tag = r.fragment.subarray(r.fragment.length - 16);
  const ct = r.fragment.subarray(8, r.fragment.length - 16);
  const aad = Buffer.alloc(13);
  aad.writeUInt16BE(r.epoch, 0);
  aad.writeUIntBE(r.seq, 2, 6);
  aad[8] = r.type;
  aad.writeUInt16BE(r.version, 9);
  aad.writeUInt16BE(ct.length, 11);
  try {
    const d = createDecipheriv(key.length === 16 ? 'aes-128-gcm' : 'aes-256-gcm', key, Buffer.concat([salt, explicit]));
    d.setAAD(aad);
    d.setAuthTag(tag);
    return Buffer.concat([d.update(ct), d.final()]);
  } catch {
    return null;
  }
}

type Sock = WeriftDtlsSocketLike & {
  transport: { socket: { send: (b: Buffer, a?: unknown) => unknown } };
  extractSessionKeys(k: number, s: number): { localKey: Buffer; localSalt: Buffer; remoteKey: Buffer };
};

// werift offers use_srtp in every DTLS handshake, so SRTP keys are present with a data channel only.
t.test('key set from a real werift session decrypts its records', async (t) => {
  const a = plainPeer();
  const b = plainPeer();
  t.teardown(async () => {
    await Promise.allSettled([a.close(), b.close()]);
  });
  const dc = a.createDataChannel('x');
  const atB: string[] = [];
  let bdc: { send(s: string): void } | null = null;
  b.onDataChannel.subscribe((c) => {
    bdc = c;
    c.onMessage.subscribe((m) => atB.push(m.toString()));
  });
  await withTimeout(connectPeers(a, b), 60_000, 'connect');
  await withTimeout(
    new Promise<void>((r) => (dc.readyState === 'open' ? r() : dc.stateChanged.subscribe((s) => s === 'open' && r()))),
    60_000,
    'open',
  );
  await until(() => bdc !== null, 30_000, 'remote channel');
  const sa = (a.sctpTransport!.dtlsTransport as unknown as { dtls: Sock }).dtls;
  const sb = (b.sctpTransport!.dtlsTransport as unknown as { dtls: Sock }).dtls;
  const client = sa.sessionType === 1 ? sa : sb;
  const server = client === sa ? sb : sa;
  const captured = { client: [] as Rec[], server: [] as Rec[] };
  for (const [s, k] of [
    [client, 'client'],
    [server, 'server'],
  ] as const) {
    const sock = s.transport.socket;
    const orig = sock.send.bind(sock);
    sock.send = (buf: Buffer, addr?: unknown) => {
      for (const r of parseRecords(buf)) if (r.type === 23) captured[k].push(r);
      return orig(buf, addr);
    };
  }
  dc.send('from a');
  bdc!.send('from b');
  await until(() => captured.client.length > 0 && captured.server.length > 0, 30_000, 'captured records');

  const st = dtlsStateFromWerift(client)!;
  t.ok(st, 'state readable');
  const ks = keySetFromDtls12(st);
  t.equal(ks.epoch, 1);
  t.ok(ks.clientWriteIv && ks.clientWriteIv.length === 4, 'GCM implicit nonce part');
  t.equal(ks.clientMacKey, undefined, 'AEAD: no MAC key');
  // Both ends must build the same key set (role mapping of local/remote randoms).
  const ks2 = keySetFromDtls12(dtlsStateFromWerift(server)!);
  t.ok(encodeKeySet(ks).equals(encodeKeySet(ks2)), 'client and server build identical key sets');
  t.same(decodeKeySet(encodeKeySet(ks)).clientRandom, ks.clientRandom, 'round-trips through the §3 TLV codec');

  const c = captured.client[0]!;
  t.equal(c.epoch, 1);
  const pc = gcmOpen(ks.clientWriteKey!, ks.clientWriteIv!, c);
  t.ok(pc, 'client write key decrypts a client record');
  t.equal(pc!.readUInt16BE(0), 5000, 'plaintext is an SCTP packet (RFC 8841 port 5000)');
  const ps = gcmOpen(ks.serverWriteKey!, ks.serverWriteIv!, captured.server[0]!);
  t.ok(ps, 'server write key decrypts a server record');
  t.equal(gcmOpen(ks.serverWriteKey!, ks.serverWriteIv!, c), null, 'wrong direction key fails');

  t.ok(ks.srtpProfile !== undefined, 'SRTP profile present');
  const sk = client.extractSessionKeys(ks.srtpClientMasterKey!.length, ks.srtpClientMasterSalt!.length);
  t.ok(sk.localKey.equals(ks.srtpClientMasterKey!), 'SRTP client master key equals werift exporter output');
  t.ok(sk.localSalt.equals(ks.srtpClientMasterSalt!), 'SRTP client master salt equals werift exporter output');
  t.ok(sk.remoteKey.equals(ks.srtpServerMasterKey!), 'SRTP server master key equals werift exporter output');
});

t.test('CBC suites carry MAC keys and ENCRYPT_THEN_MAC, no IVs', async (t) => {
  const st = {
    masterSecret: randomBytes(48),
    clientRandom: randomBytes(32),
    serverRandom: randomBytes(32),
    cipherSuite: 0xc013,
    encryptThenMac: true,
  };
  const ks = keySetFromDtls12(st);
  t.equal(ks.clientMacKey!.length, 20);
  t.equal(ks.clientWriteKey!.length, 16);
  t.equal(ks.clientWriteIv, undefined);
  t.equal(ks.encryptThenMac, true);
  t.notOk(ks.clientMacKey!.equals(ks.serverMacKey!));
  t.throws(() => keySetFromDtls12({ ...st, cipherSuite: 0x1301 }), EndpointKeyError, 'DTLS 1.3 suite refused');
  t.throws(() => keySetFromDtls12({ ...st, cipherSuite: 0x0005 }), EndpointKeyError, 'unknown suite refused');
  t.throws(() => keySetFromDtls12({ ...st, masterSecret: randomBytes(47) }), EndpointKeyError);
  t.equal(dtlsStateFromWerift({ sessionType: 1 }), null, 'unfinished handshake: null');
});
