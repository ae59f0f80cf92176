/**
 * Key sets (key-escrow.md §3) from the state of a finished DTLS 1.2 handshake, as a
 * compliant endpoint builds them for WRITE-KEYS.
 *
 * Public API:
 *   interface DtlsAssociationState { masterSecret, clientRandom, serverRandom, cipherSuite, srtpProfile?, encryptThenMac? }
 *   keySetFromDtls12(state, epoch = 1): KeySet        — RFC 5246 §6.3 key block + RFC 5764 §4.2 SRTP split
 *   dtlsStateFromWerift(socket): DtlsAssociationState | null — reads a werift DtlsSocket (seam, see agent.ts)
 */
import { cipherSuiteInfo } from '../wire/dtls-crypto.js';
import { deriveSrtpTls12, tls12KeyBlock } from '../wire/tls-prf.js';
import { validateKeySet, type KeySet } from '../wire/keyset.js';
import { GatehouseError } from '../util/errors.js';

export interface DtlsAssociationState {
  /** The 48-byte master secret (extended master secret, RFC 7627, when negotiated). */
  masterSecret: Buffer;
  clientRandom: Buffer;
  serverRandom: Buffer;
  /** IANA TLS cipher suite value. */
  cipherSuite: number;
  /** RFC 5764 use_srtp profile negotiated in the handshake, if any. */
  srtpProfile?: number;
  /** RFC 7366 negotiated (only meaningful for CBC suites). */
  encryptThenMac?: boolean;
  /** The DTLS epoch the new keys protect (RFC 6347 §4.1); default 1. */
  epoch?: number;
}

export class EndpointKeyError extends GatehouseError {
  constructor(reason: string) {
    super('E_ENDPOINT_KEYS', reason);
    this.name = 'EndpointKeyError';
  }
}

/**
 * key-escrow.md §3: record keys from the TLS 1.2 key block (RFC 5246 §6.3) at `epoch`
 * (1 for the first DTLS 1.2 handshake, RFC 6347 §4.1), SRTP master keys/salts from the
 * `EXTRACTOR-dtls_srtp` export (RFC 5705 §4) split per RFC 5764 §4.2.
 */
export function keySetFromDtls12(st: DtlsAssociationState, epoch = st.epoch ?? 1): KeySet {
  const suite = cipherSuiteInfo(st.cipherSuite);
  if (!suite) throw new EndpointKeyError(`unsupported cipher suite 0x${st.cipherSuite.toString(16).padStart(4, '0')}`);
  if (suite.tls13) throw new EndpointKeyError('DTLS 1.3 suites need traffic secrets, not a master secret');
  if (st.masterSecret.length !== 48) throw new EndpointKeyError('master secret must be 48 bytes');
  if (st.clientRandom.length !== 32 || st.serverRandom.length !== 32) throw new EndpointKeyError('randoms must be 32 bytes');
  const cbc = suite.kind === 'cbc';
  // RFC 5246 §6.3: AEAD suites have no MAC key; their IV is the implicit nonce part
  // (RFC 5288 §3: 4 bytes for GCM; RFC 7905 §2: 12 bytes for ChaCha20-Poly1305).
  // CBC suites in (D)TLS 1.2 use explicit per-record IVs (RFC 5246 §6.2.3.2): no IV field.
  const kb = tls12KeyBlock(suite.prfHash, st.masterSecret, st.clientRandom, st.serverRandom, {
    macLen: cbc ? suite.macLen : 0,
    keyLen: suite.keyLen,
    ivLen: cbc ? 0 : suite.ivLen,
  });
  const ks: KeySet = {
    clientRandom: Buffer.from(st.clientRandom),
    serverRandom: Buffer.from(st.serverRandom),
    cipherSuite: st.cipherSuite,
    epoch,
    clientWriteKey: kb.clientWriteKey,
    serverWriteKey: kb.serverWriteKey,
  };
  if (cbc) {
    ks.clientMacKey = kb.clientMacKey;
    ks.serverMacKey = kb.serverMacKey;
    ks.encryptThenMac = !!st.encryptThenMac; // key-escrow.md §3: ENCRYPT_THEN_MAC for CBC suites
  } else {
    ks.clientWriteIv = kb.clientWriteIv;
    ks.serverWriteIv = kb.serverWriteIv;
  }
  if (st.srtpProfile !== undefined) {
    const srtp = deriveSrtpTls12(suite.prfHash, st.masterSecret, st.clientRandom, st.serverRandom, st.srtpProfile);
    if (!srtp) throw new EndpointKeyError(`unsupported SRTP profile 0x${st.srtpProfile.toString(16).padStart(4, '0')}`);
    ks.srtpProfile = st.srtpProfile;
    ks.srtpClientMasterKey = srtp.clientMasterKey;
    ks.srtpServerMasterKey = srtp.serverMasterKey;
    ks.srtpClientMasterSalt = srtp.clientMasterSalt;
    ks.srtpServerMasterSalt = srtp.serverMasterSalt;
  }
  validateKeySet(ks);
  return ks;
}

/** The parts of werift's DtlsSocket (node_modules/werift/lib/dtls/src/socket.d.ts) we read. */
export interface WeriftDtlsSocketLike {
  sessionType: number; // werift SessionType: CLIENT = 1, SERVER = 2
  connected?: boolean;
  cipher?: {
    masterSecret?: Buffer;
    localRandom?: { serialize(): Buffer };
    remoteRandom?: { serialize(): Buffer };
    cipherSuite?: number;
  };
  srtp?: { srtpProfile?: number };
  dtls?: { epoch?: number };
}

const WERIFT_CLIENT = 1;

/** The association state of a connected werift DtlsSocket; null while the handshake is unfinished. */
export function dtlsStateFromWerift(sock: WeriftDtlsSocketLike): DtlsAssociationState | null {
  const c = sock.cipher;
  if (!c || !c.masterSecret || c.masterSecret.length !== 48 || !c.localRandom || !c.remoteRandom || c.cipherSuite === undefined)
    return null;
  let local: Buffer;
  let remote: Buffer;
  try {
    local = Buffer.from(c.localRandom.serialize());
    remote = Buffer.from(c.remoteRandom.serialize());
  } catch {
    return null;
  }
  if (local.length !== 32 || remote.length !== 32) return null;
  const isClient = sock.sessionType === WERIFT_CLIENT;
  const st: DtlsAssociationState = {
    masterSecret: c.masterSecret,
    clientRandom: isClient ? local : remote,
    serverRandom: isClient ? remote : local,
    cipherSuite: c.cipherSuite,
  };
  // RFC 6347 §4.1: the write epoch after the handshake's ChangeCipherSpec (werift starts
  // every handshake, including one on a connected socket, from epoch 0).
  const ep = sock.dtls?.epoch;
  if (typeof ep === 'number' && ep >= 1 && ep <= 0xffff) st.epoch = ep;
  // werift negotiates only AEAD suites (no RFC 7366); use_srtp profile if negotiated.
  if (sock.srtp?.srtpProfile !== undefined) st.srtpProfile = sock.srtp.srtpProfile;
  return st;
}
