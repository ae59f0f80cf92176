/**
 * NSS key log files (the SSLKEYLOGFILE format written by OpenSSL, NSS, BoringSSL,
 * browsers) and the key sets derived from them.
 *
 * Public API:
 *   class KeyLog
 *     static parse(text): KeyLog; addText(text): number (lines accepted)
 *     get(clientRandomHex): KeyLogEntry | undefined; size; version (bumps on every change)
 *     wipe()
 *   interface KeyLogEntry { clientRandom; masterSecret?; clientHsTrafficSecret?; ... exporterSecret? }
 *   interface HandshakeInfo { version, clientRandom, serverRandom, cipherSuite, encryptThenMac, srtpProfile? }
 *   keySetFromKeyLog(entry, hs, opts?): KeySet | null   — validated key set, or null when the
 *       entry lacks what the handshake needs or the suite/profile is unsupported.
 *
 * Lines: `LABEL <client_random hex> <secret hex>`; '#' comments and unknown labels are
 * ignored; malformed lines are counted in `rejected`, never thrown.
 */
import { cipherSuiteInfo } from '../wire/dtls-crypto.js';
import { deriveSrtpTls12, deriveSrtpTls13, tls12KeyBlock } from '../wire/tls-prf.js';
import { validateKeySet, type KeySet, KeySetError } from '../wire/keyset.js';

export interface KeyLogEntry {
  /** Lower-case hex of the 32-byte client random. */
  clientRandom: string;
  /** CLIENT_RANDOM: the TLS 1.2 master secret (48 bytes). */
  masterSecret?: Buffer;
  clientHsTrafficSecret?: Buffer;
  serverHsTrafficSecret?: Buffer;
  /** CLIENT_TRAFFIC_SECRET_0 */
  clientAppTrafficSecret?: Buffer;
  /** SERVER_TRAFFIC_SECRET_0 */
  serverAppTrafficSecret?: Buffer;
  /** EXPORTER_SECRET (TLS 1.3 exporter_master_secret) */
  exporterSecret?: Buffer;
}

const LABELS: Record<string, keyof Omit<KeyLogEntry, 'clientRandom'>> = {
  CLIENT_RANDOM: 'masterSecret',
  CLIENT_HANDSHAKE_TRAFFIC_SECRET: 'clientHsTrafficSecret',
  SERVER_HANDSHAKE_TRAFFIC_SECRET: 'serverHsTrafficSecret',
  CLIENT_TRAFFIC_SECRET_0: 'clientAppTrafficSecret',
  SERVER_TRAFFIC_SECRET_0: 'serverAppTrafficSecret',
  EXPORTER_SECRET: 'exporterSecret',
};

/** Cap on entries, so a huge or hostile file cannot grow memory without bound. */
const MAX_ENTRIES = 100_000;

export class KeyLog {
  private readonly entries = new Map<string, KeyLogEntry>();
  /** Lines that looked like key lines but were malformed, or exceeded the cap. */
  rejected = 0;
  /** Incremented whenever an entry is added or changed. */
  version = 0;

  static parse(text: string): KeyLog {
    const k = new KeyLog();
    k.addText(text);
    return k;
  }

  /** Adds the lines of `text`; returns the number of key lines accepted. */
  addText(text: string): number {
    let n = 0;
    for (const raw of text.split('\n')) {
      const line = raw.trim();
      if (!line || line.startsWith('#')) continue;
      const parts = line.split(/\s+/);
      const field = LABELS[parts[0]!];
      if (!field) continue; // unknown label (e.g. EARLY_EXPORTER_SECRET, RSA)
      const cr = parts[1];
      const secret = parts[2];
      if (parts.length !== 3 || !cr || !secret || !/^[0-9a-fA-F]{64}$/.test(cr) || !/^(?:[0-9a-fA-F]{2}){16,64}$/.test(secret)) {
        this.rejected++;
        continue;
      }
      const key = cr.toLowerCase();
      let e = this.entries.get(key);
      if (!e) {
        if (this.entries.size >= MAX_ENTRIES) {
          this.rejected++;
          continue;
        }
        e = { clientRandom: key };
        this.entries.set(key, e);
      }
      e[field] = Buffer.from(secret, 'hex');
      this.version++;
      n++;
    }
    return n;
  }

  get(clientRandomHex: string): KeyLogEntry | undefined {
    return this.entries.get(clientRandomHex.toLowerCase());
  }

  get size(): number {
    return this.entries.size;
  }

  /** Zeroes and forgets every secret. */
  wipe(): void {
    for (const e of this.entries.values()) for (const f of Object.values(LABELS)) e[f]?.fill(0);
    this.entries.clear();
    this.version++;
  }
}

/** What the handshake revealed, needed to turn key-log secrets into a key set. */
export interface HandshakeInfo {
  version: 'DTLS1.2' | 'DTLS1.3';
  clientRandom: Buffer;
  serverRandom: Buffer;
  cipherSuite: number;
  /** RFC 7366 negotiated (both hellos carried encrypt_then_mac). */
  encryptThenMac: boolean;
  /** RFC 5764 use_srtp profile selected by the server. */
  srtpProfile?: number;
}

export interface KeyLogOptions {
  /**
   * HKDF-Expand-Label prefix for the DTLS 1.3 exporter. RFC 9147 §5.9 replaces "tls13 " with
   * "dtls13" in every HKDF-Expand-Label of DTLS 1.3 (wolfSSL does so for exporters too).
   * Default 'dtls13'.
   */
  dtls13ExporterPrefix?: string;
}

/**
 * Derives the key set of an association from its key-log entry:
 * DTLS 1.2: key block (RFC 5246 §6.3) at epoch 1 — for a renegotiated association use
 * `epoch` = the old epoch + 1 — and SRTP keys via the RFC 5705 exporter (RFC 5764 §4.2).
 * DTLS 1.3: application traffic secrets at epoch 3 (RFC 9147 §6.1), handshake secrets,
 * SRTP keys via the RFC 8446 §7.5 exporter from EXPORTER_SECRET.
 * Returns null when the entry lacks the secrets needed or the suite is unsupported.
 */
export function keySetFromKeyLog(entry: KeyLogEntry, hs: HandshakeInfo, epoch?: number, opts: KeyLogOptions = {}): KeySet | null {
  const suite = cipherSuiteInfo(hs.cipherSuite);
  if (!suite) return null;
  const base = {
    clientRandom: Buffer.from(hs.clientRandom),
    serverRandom: Buffer.from(hs.serverRandom),
    cipherSuite: hs.cipherSuite,
  };
  let ks: KeySet;
  if (hs.version === 'DTLS1.3' || suite.tls13) {
    if (!suite.tls13 || !entry.clientAppTrafficSecret || !entry.serverAppTrafficSecret) return null;
    ks = {
      ...base,
      epoch: epoch ?? 3,
      clientAppTrafficSecret: Buffer.from(entry.clientAppTrafficSecret),
      serverAppTrafficSecret: Buffer.from(entry.serverAppTrafficSecret),
    };
    if (entry.clientHsTrafficSecret) ks.clientHsTrafficSecret = Buffer.from(entry.clientHsTrafficSecret);
    if (entry.serverHsTrafficSecret) ks.serverHsTrafficSecret = Buffer.from(entry.serverHsTrafficSecret);
    if (hs.srtpProfile !== undefined && entry.exporterSecret) {
      const m = deriveSrtpTls13(suite.prfHash, entry.exporterSecret, hs.srtpProfile, opts.dtls13ExporterPrefix ?? 'dtls13');
      if (m) {
        ks.srtpProfile = m.profile;
        ks.srtpClientMasterKey = m.clientMasterKey;
        ks.srtpServerMasterKey = m.serverMasterKey;
        ks.srtpClientMasterSalt = m.clientMasterSalt;
        ks.srtpServerMasterSalt = m.serverMasterSalt;
      }
    }
  } else {
    const ms = entry.masterSecret;
    if (!ms || ms.length !== 48) return null; // RFC 5246 §8.1: master_secret is 48 bytes
    const kb = tls12KeyBlock(suite.prfHash, ms, hs.clientRandom, hs.serverRandom, suite);
    ks = { ...base, epoch: epoch ?? 1, clientWriteKey: kb.clientWriteKey, serverWriteKey: kb.serverWriteKey };
    if (suite.kind === 'cbc') {
      ks.clientMacKey = kb.clientMacKey;
      ks.serverMacKey = kb.serverMacKey;
      ks.encryptThenMac = hs.encryptThenMac;
    } else {
      ks.clientWriteIv = kb.clientWriteIv;
      ks.serverWriteIv = kb.serverWriteIv;
    }
    if (hs.srtpProfile !== undefined) {
      const m = deriveSrtpTls12(suite.prfHash, ms, hs.clientRandom, hs.serverRandom, hs.srtpProfile);
      if (m) {
        ks.srtpProfile = m.profile;
        ks.srtpClientMasterKey = m.clientMasterKey;
        ks.srtpServerMasterKey = m.serverMasterKey;
        ks.srtpClientMasterSalt = m.clientMasterSalt;
        ks.srtpServerMasterSalt = m.serverMasterSalt;
      }
    }
  }
  try {
    validateKeySet(ks);
  } catch (e) {
    if (e instanceof KeySetError) return null;
    throw e;
  }
  return ks;
}
