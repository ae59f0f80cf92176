/** Helpers for the flow guard / gateway inspector tests (not a test file). */
import { DtlsSession } from '../../../src/inspect/dtls-session.js';
import type { DtlsHandshakeEvent } from '../../../src/inspect/events.js';
import { KeyLog, keySetFromKeyLog } from '../../../src/inspect/keylog.js';
import type { KeySet } from '../../../src/wire/keyset.js';
import { datagrams, loadFixture } from '../inspect/dtls-session-helpers.js';
import type { GuardDirection } from '../../../src/gateway/flow-guard.js';

export interface FixtureFlow {
  packets: { dir: GuardDirection; data: Buffer }[];
  /** Key sets of the fixture's associations, in handshake order (from its key log). */
  keySets: KeySet[];
  /** Payloads the application sent, per association, in order. */
  payloads: { c2s: string[]; s2c: string[]; renegotiated?: { c2s: string[]; s2c: string[] } };
}

/** Loads an OpenSSL DTLS fixture; 'c2s' (the DTLS client) is taken as the TURN client. */
export function fixtureFlow(name: string): FixtureFlow {
  const fx = loadFixture(name);
  const dg = datagrams(fx);
  const kl = KeyLog.parse(fx.keylog);
  const hs: DtlsHandshakeEvent[] = [];
  const s = new DtlsSession({ listener: (e) => e.type === 'dtls.handshake' && hs.push(e), keyLog: kl });
  for (const d of dg) s.feed(d.data, d.dir, 0);
  const assocs = s.associations();
  const keySets: KeySet[] = [];
  for (const h of hs) {
    const a = assocs.find((x) => x.id === h.clientRandom)!;
    const ks = keySetFromKeyLog(
      kl.get(h.clientRandom)!,
      {
        version: h.version,
        clientRandom: Buffer.from(h.clientRandom, 'hex'),
        serverRandom: Buffer.from(h.serverRandom, 'hex'),
        cipherSuite: h.cipherSuite,
        encryptThenMac: !!h.encryptThenMac,
        srtpProfile: h.srtpProfile,
      },
      a.epoch,
    );
    if (!ks) throw new Error('fixture key set');
    keySets.push(ks);
  }
  s.close();
  const f = fx as unknown as FixtureFlow['payloads'];
  return {
    packets: dg.map((d) => ({ dir: d.dir === 'c2s' ? 'c2p' : 'p2c', data: d.data })),
    keySets,
    payloads: { c2s: f.c2s, s2c: f.s2c, renegotiated: f.renegotiated },
  };
}

/** Index of the first datagram whose first byte is 23 (application_data) at `epoch`. */
export function isAppData(d: Buffer, epoch?: number): boolean {
  return d[0] === 23 && (epoch === undefined || d.readUInt16BE(3) === epoch);
}

/** An epoch-0 handshake record that parses as a Certificate message (RFC 6347 §4.2.2) of `len` payload bytes. */
export function certRecord(seq: number, len: number): Buffer {
  const b = Buffer.alloc(13 + 12 + len, 0x41);
  b[0] = 22;
  b.writeUInt16BE(0xfefd, 1);
  b.writeUInt16BE(0, 3);
  b.writeUIntBE(seq, 5, 6);
  b.writeUInt16BE(12 + len, 11);
  b[13] = 11; // certificate
  b.writeUIntBE(len, 14, 3);
  b.writeUInt16BE(seq & 0xffff, 17);
  b.writeUIntBE(0, 19, 3);
  b.writeUIntBE(len, 22, 3);
  return b;
}
