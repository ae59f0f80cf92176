import { createCipheriv, createDecipheriv, hkdfSync, randomBytes, sign, verify, type KeyObject } from 'node:crypto';

/**
 * Gatehouse key escrow, wire format v1 (shared/spec/key-escrow.md). Pure codecs: the
 * caller supplies keys, transaction IDs and nonces. Every byte below follows that page.
 */

// key-escrow.md §2: comprehension-optional STUN attributes (0x8000-0xFFFF, RFC 8489 §14).
export const ATTR_KEY_REQUEST = 0xc1a0;
export const ATTR_WRITE_KEYS = 0xc1a1;
export const ATTR_KEY_DECLINE = 0xc1a2;
export const ATTR_KEY_STATUS = 0xc1a3;

// key-escrow.md §4: PCP options ≥ 128 are optional-to-process (RFC 6887 §7.3).
export const PCP_OPT_WRITE_KEYS_REQUEST = 228;
export const PCP_OPT_WRITE_KEYS = 229;
export const PCP_OPT_KEY_DECLINE = 230;

// key-escrow.md §2.1 flags.
export const KR_FLAG_MEDIA = 0x0001;
export const KR_FLAG_DATA = 0x0002;
export const KR_FLAG_REQUIRED = 0x0004;
const KR_KNOWN_FLAGS = KR_FLAG_MEDIA | KR_FLAG_DATA | KR_FLAG_REQUIRED;

export const KEY_REQUEST_LENGTH = 100; // 2 + 2 + 32 + 64
const SIG_LABEL_TURN = Buffer.from('gatehouse key-request v1', 'ascii');
const SIG_LABEL_PCP = Buffer.from('gatehouse pcp key-request v1', 'ascii');
const HKDF_INFO_TURN = Buffer.from('gatehouse write-keys v1', 'ascii');
const HKDF_INFO_PCP = Buffer.from('gatehouse pcp write-keys v1', 'ascii');

export interface KeyRequest {
  /** Seconds to wait for verified keys once the handshake completes (§5.1); 0 = before any data. */
  deadline: number;
  flags: number;
  /** SHA-256 of the gateway certificate's DER (32 bytes). */
  fingerprint: Buffer;
  /** ECDSA P-256 / SHA-256, r || s (64 bytes). */
  signature: Buffer;
}

/** §2.1 / §4: the signed bytes. `id` is the 12-byte transaction ID (TURN) or mapping nonce (PCP). */
export function keyRequestSignedBytes(kind: 'turn' | 'pcp', id: Buffer, deadline: number, flags: number, fingerprint: Buffer): Buffer {
  if (id.length !== 12) throw new RangeError('transaction ID / mapping nonce must be 12 bytes');
  if (fingerprint.length !== 32) throw new RangeError('fingerprint must be 32 bytes');
  const label = kind === 'turn' ? SIG_LABEL_TURN : SIG_LABEL_PCP;
  const out = Buffer.alloc(label.length + 12 + 4 + 32);
  label.copy(out, 0);
  id.copy(out, label.length);
  out.writeUInt16BE(deadline, label.length + 12);
  out.writeUInt16BE(flags, label.length + 14);
  fingerprint.copy(out, label.length + 16);
  return out;
}

/** Builds a signed KEY-REQUEST (or PCP WRITE_KEYS_REQUEST) value. */
export function encodeKeyRequest(
  kind: 'turn' | 'pcp',
  id: Buffer,
  req: { deadline: number; flags: number; fingerprint: Buffer },
  privateKey: KeyObject,
): Buffer {
  if (!Number.isInteger(req.deadline) || req.deadline < 0 || req.deadline > 0xffff) throw new RangeError('deadline is a u16');
  // §2.1: senders set unknown flag bits to zero.
  const flags = req.flags & KR_KNOWN_FLAGS;
  const signed = keyRequestSignedBytes(kind, id, req.deadline, flags, req.fingerprint);
  const signature = sign('sha256', signed, { key: privateKey, dsaEncoding: 'ieee-p1363' });
  const out = Buffer.alloc(KEY_REQUEST_LENGTH);
  out.writeUInt16BE(req.deadline, 0);
  out.writeUInt16BE(flags, 2);
  req.fingerprint.copy(out, 4);
  signature.copy(out, 36);
  return out;
}

/** Parses a KEY-REQUEST value; null when it is not 100 bytes. */
export function decodeKeyRequest(value: Buffer): KeyRequest | null {
  if (value.length !== KEY_REQUEST_LENGTH) return null;
  return {
    deadline: value.readUInt16BE(0),
    flags: value.readUInt16BE(2),
    fingerprint: Buffer.from(value.subarray(4, 36)),
    signature: Buffer.from(value.subarray(36, 100)),
  };
}

/** Checks a KEY-REQUEST signature against the gateway's public key. */
export function verifyKeyRequest(kind: 'turn' | 'pcp', id: Buffer, kr: KeyRequest, publicKey: KeyObject): boolean {
  // §2.1: the signature covers the flags exactly as encoded, unknown bits included.
  const signed = keyRequestSignedBytes(kind, id, kr.deadline, kr.flags, kr.fingerprint);
  try {
    return verify('sha256', signed, { key: publicKey, dsaEncoding: 'ieee-p1363' }, kr.signature);
  } catch {
    return false;
  }
}

/** §2.2: the AES-256-GCM key of WRITE-KEYS on TURN. `longTermKey` is RFC 8489 §9.2.2's key. */
export function turnWriteKeysKey(longTermKey: Buffer, nonceAttrValue: Buffer): Buffer {
  return Buffer.from(hkdfSync('sha256', longTermKey, nonceAttrValue, HKDF_INFO_TURN, 32));
}

/** §4: the AES-256-GCM key of the PCP WRITE_KEYS option (RFC 7652 SA transport key). */
export function pcpWriteKeysKey(transportKey: Buffer, mappingNonce: Buffer): Buffer {
  return Buffer.from(hkdfSync('sha256', transportKey, mappingNonce, HKDF_INFO_PCP, 32));
}

/** §2.2 AAD on TURN: bytes 4..19 of the request's STUN header (magic cookie + transaction ID). */
export function turnWriteKeysAad(stunMessage: Buffer): Buffer {
  return stunMessage.subarray(4, 20);
}

const WK_HEADER = 14; // ver, 0, iv(12)
const GCM_TAG = 16;

/** Encrypts a key set (§3 TLVs) into a WRITE-KEYS value with 12 fresh random IV bytes. */
export function sealWriteKeys(key: Buffer, aad: Buffer, keySetTlvs: Buffer, iv: Buffer = randomBytes(12)): Buffer {
  if (iv.length !== 12) throw new RangeError('iv must be 12 bytes');
  const c = createCipheriv('aes-256-gcm', key, iv);
  c.setAAD(aad);
  const ct = Buffer.concat([c.update(keySetTlvs), c.final()]);
  const out = Buffer.alloc(WK_HEADER + ct.length + GCM_TAG);
  out[0] = 1; // §2.2: ver = 1
  out[1] = 0;
  iv.copy(out, 2);
  ct.copy(out, WK_HEADER);
  c.getAuthTag().copy(out, WK_HEADER + ct.length);
  return out;
}

export type OpenResult = { ok: true; keySet: Buffer } | { ok: false; reason: 'version' | 'length' | 'decrypt' };

/** Decrypts a WRITE-KEYS value; any failure maps to §2.2's `400 Invalid WRITE-KEYS`. */
export function openWriteKeys(key: Buffer, aad: Buffer, value: Buffer): OpenResult {
  if (value.length < WK_HEADER + GCM_TAG) return { ok: false, reason: 'length' };
  if (value[0] !== 1 || value[1] !== 0) return { ok: false, reason: 'version' };
  let body: Buffer | undefined;
  try {
    const d = createDecipheriv('aes-256-gcm', key, value.subarray(2, 14));
    d.setAAD(aad);
    d.setAuthTag(value.subarray(value.length - GCM_TAG));
    body = d.update(value.subarray(WK_HEADER, value.length - GCM_TAG));
    const fin = d.final(); // GCM: empty; throws when the tag does not authenticate
    if (fin.length === 0) return { ok: true, keySet: body };
    // One buffer holds the plaintext, so the caller's wipe reaches every copy.
    const pt = Buffer.concat([body, fin]);
    body.fill(0);
    fin.fill(0);
    return { ok: true, keySet: pt };
  } catch {
    body?.fill(0); // unauthenticated plaintext is not kept either
    return { ok: false, reason: 'decrypt' };
  }
}

/** §2.3: KEY-DECLINE reason, UTF-8, at most 128 bytes. */
export const KEY_DECLINE_MAX = 128;
export function encodeKeyDecline(reason: string): Buffer {
  const b = Buffer.from(reason, 'utf8');
  if (b.length > KEY_DECLINE_MAX) throw new RangeError('KEY-DECLINE reason is at most 128 bytes');
  return b;
}
/** null when longer than 128 bytes (→ 400 Bad Request) or not valid UTF-8. */
export function decodeKeyDecline(value: Buffer): string | null {
  if (value.length > KEY_DECLINE_MAX) return null;
  const s = value.toString('utf8');
  if (!Buffer.from(s, 'utf8').equals(value)) return null;
  return s;
}

/** §2.4: KEY-STATUS values. */
export const KEY_STATUS_RECEIVED = 0;
export const KEY_STATUS_VERIFIED = 1;
export const KEY_STATUS_FAILED = 2;
export function encodeKeyStatus(status: 0 | 1 | 2): Buffer {
  const b = Buffer.alloc(4); // status u8, then 3 zero bytes
  b[0] = status;
  return b;
}
export function decodeKeyStatus(value: Buffer): number | null {
  if (value.length !== 4 || value[1] !== 0 || value[2] !== 0 || value[3] !== 0) return null;
  return value[0]!;
}

// key-escrow.md §3: the key-set TLVs carried inside WRITE-KEYS (and the JSON key-set file form).
export * from './keyset.js';
