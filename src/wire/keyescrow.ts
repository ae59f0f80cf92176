/**
 * key-escrow.md §6 (escrow without an allocation): the KeyEscrow STUN method and the
 * KEY-PENDING attribute. Pure codecs; WRITE-KEYS, KEY-STATUS and KEY-REQUEST are those of
 * ./escrow.js (§2), unchanged.
 */

/**
 * §6.1: STUN method 0x0C1, from the Expert Review range 0x080-0x0FF of RFC 8489 §18.2.
 * 0x100-0xFFF are reserved (RFC 7983 §7): their first byte would leave the STUN range
 * [0..3] of RFC 7983 demultiplexing (src/turn/server.ts drops such datagrams).
 */
export const METHOD_KEY_ESCROW = 0x0c1;
/** §6.5: comprehension-optional (0x8000-0xFFFF, RFC 8489 §14). */
export const ATTR_KEY_PENDING = 0xc1a4;
/** §6.4: KEY-STATUS 3, neither applied nor held (the hold is full). */
export const KEY_STATUS_UNKNOWN = 3;
/** §6.1 / §6.3 step 4: WRITE-KEYS per KeyEscrow request, at most. */
export const MAX_ESCROW_KEY_SETS = 8;
/** §6.5: KEY-PENDING attributes per response, at most. */
export const MAX_KEY_PENDING = 16;
export const KEY_PENDING_LENGTH = 72;

// §6.5 KEY-PENDING flags.
export const KP_FLAG_ETM = 0x01;
export const KP_FLAG_MEDIA = 0x02;
export const KP_FLAG_SRTP_UNKNOWN = 0x04;
export const KP_FLAG_RECORD_KEYS_HELD = 0x08;
const KP_KNOWN = KP_FLAG_ETM | KP_FLAG_MEDIA | KP_FLAG_SRTP_UNKNOWN | KP_FLAG_RECORD_KEYS_HELD;

export interface KeyPending {
  clientRandom: Buffer;
  serverRandom: Buffer;
  cipherSuite: number;
  /** 0: none negotiated, or not known yet (KP_FLAG_SRTP_UNKNOWN). */
  srtpProfile: number;
  /** 2: DTLS 1.2, 3: DTLS 1.3. */
  version: 2 | 3;
  flags: number;
  /** The EPOCH the key set must name. */
  epoch: number;
}

/** §6.5: the 72-byte value. */
export function encodeKeyPending(p: KeyPending): Buffer {
  if (p.clientRandom.length !== 32 || p.serverRandom.length !== 32) throw new RangeError('randoms are 32 bytes');
  const b = Buffer.alloc(KEY_PENDING_LENGTH);
  p.clientRandom.copy(b, 0);
  p.serverRandom.copy(b, 32);
  b.writeUInt16BE(p.cipherSuite & 0xffff, 64);
  b.writeUInt16BE(p.srtpProfile & 0xffff, 66);
  b[68] = p.version;
  b[69] = p.flags & KP_KNOWN; // §6.5: other bits are zero
  b.writeUInt16BE(p.epoch & 0xffff, 70);
  return b;
}

/** null when the value is not 72 bytes or names an unknown version. Unknown flag bits are ignored (§6.5). */
export function decodeKeyPending(v: Buffer): KeyPending | null {
  if (v.length !== KEY_PENDING_LENGTH) return null;
  const version = v[68];
  if (version !== 2 && version !== 3) return null;
  return {
    clientRandom: Buffer.from(v.subarray(0, 32)),
    serverRandom: Buffer.from(v.subarray(32, 64)),
    cipherSuite: v.readUInt16BE(64),
    srtpProfile: v.readUInt16BE(66),
    version,
    flags: v[69]! & KP_KNOWN,
    epoch: v.readUInt16BE(70),
  };
}
