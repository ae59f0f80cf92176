/**
 * RADIUS for EAP pass-through: the packet codec of RFC 2865 (§3 packet format, §5
 * attributes), EAP-Message and Message-Authenticator of RFC 3579 (§3.1, §3.2), and the
 * MS-MPPE-Send-Key / MS-MPPE-Recv-Key vendor attributes of RFC 2548 (§2.4.2, §2.4.3) that
 * carry the EAP MSK in Access-Accept.
 *
 * Pure: no I/O, no clock. Decoders return null on malformed input. Never log values of
 * State, Message-Authenticator, MPPE keys or the shared secret.
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

/** RFC 2865 §3 (and §4): codes. */
export const RadiusCode = {
  AccessRequest: 1,
  AccessAccept: 2,
  AccessReject: 3,
  AccessChallenge: 11,
} as const;

/** RFC 2865 §5 / RFC 3579 §3 attribute types used here. */
export const RadiusAttr = {
  UserName: 1, // RFC 2865 §5.1
  NasIpAddress: 4, // §5.4
  ServiceType: 6, // §5.6
  FramedMtu: 12, // §5.12
  ReplyMessage: 18, // §5.18
  State: 24, // §5.24
  VendorSpecific: 26, // §5.26
  CallingStationId: 31, // §5.31
  NasIdentifier: 32, // §5.32
  NasPortType: 61, // §5.41
  EapMessage: 79, // RFC 3579 §3.1
  MessageAuthenticator: 80, // RFC 3579 §3.2
} as const;

/** RFC 2548 §2: Microsoft's vendor id and the MPPE key attributes (§2.4.2 Send, §2.4.3 Recv). */
export const MICROSOFT_VENDOR_ID = 311;
export const MsAttr = { MppeSendKey: 16, MppeRecvKey: 17 } as const;

/** RFC 2865 §3: 20..4096 octets. */
export const RADIUS_MIN = 20;
export const RADIUS_MAX = 4096;

export interface RadiusAttribute {
  type: number;
  value: Buffer;
}

export interface RadiusPacket {
  code: number;
  identifier: number;
  authenticator: Buffer;
  attributes: RadiusAttribute[];
}

export function decodeRadius(buf: Buffer): RadiusPacket | null {
  if (buf.length < RADIUS_MIN) return null;
  const length = buf.readUInt16BE(2);
  // RFC 2865 §3: octets beyond Length are padding (ignored); a shorter packet is discarded.
  if (length < RADIUS_MIN || length > RADIUS_MAX || length > buf.length) return null;
  const attributes: RadiusAttribute[] = [];
  let off = 20;
  while (off < length) {
    if (off + 2 > length) return null;
    const type = buf[off]!;
    const len = buf[off + 1]!;
    // RFC 2865 §5: Length counts Type and Length; at least 2.
    if (len < 2 || off + len > length) return null;
    attributes.push({ type, value: Buffer.from(buf.subarray(off + 2, off + len)) });
    off += len;
  }
  return { code: buf[0]!, identifier: buf[1]!, authenticator: Buffer.from(buf.subarray(4, 20)), attributes };
}

export function encodeRadius(p: RadiusPacket): Buffer {
  const attrs = p.attributes.map((a) => {
    if (a.value.length > 253) throw new RangeError('RADIUS attribute value above 253 octets');
    return Buffer.concat([Buffer.from([a.type, a.value.length + 2]), a.value]);
  });
  const body = Buffer.concat(attrs);
  const len = 20 + body.length;
  if (len > RADIUS_MAX) throw new RangeError('RADIUS packet above 4096 octets');
  const head = Buffer.alloc(20);
  head[0] = p.code;
  head[1] = p.identifier & 0xff;
  head.writeUInt16BE(len, 2);
  p.authenticator.copy(head, 4, 0, 16);
  return Buffer.concat([head, body]);
}

/** RFC 3579 §3.1: an EAP packet split over EAP-Message attributes of up to 253 octets. */
export function eapMessageAttributes(eap: Buffer): RadiusAttribute[] {
  const out: RadiusAttribute[] = [];
  for (let off = 0; off < eap.length; off += 253) out.push({ type: RadiusAttr.EapMessage, value: eap.subarray(off, off + 253) });
  return out;
}

/** RFC 3579 §3.1: the EAP packet is the concatenation of the EAP-Message attributes, in order. */
export function eapFromAttributes(attrs: readonly RadiusAttribute[]): Buffer | null {
  const parts = attrs.filter((a) => a.type === RadiusAttr.EapMessage).map((a) => a.value);
  return parts.length ? Buffer.concat(parts) : null;
}

export function getAttr(p: RadiusPacket, type: number): Buffer | undefined {
  return p.attributes.find((a) => a.type === type)?.value;
}

/** Offset of the Message-Authenticator value in an encoded packet, or -1. */
function messageAuthenticatorOffset(buf: Buffer): number {
  const length = buf.readUInt16BE(2);
  let off = 20;
  while (off + 2 <= length) {
    const len = buf[off + 1]!;
    if (len < 2) return -1;
    if (buf[off] === RadiusAttr.MessageAuthenticator) return len === 18 ? off + 2 : -1;
    off += len;
  }
  return -1;
}

/**
 * RFC 3579 §3.2: Message-Authenticator = HMAC-MD5(secret, Type | Identifier | Length |
 * Authenticator | Attributes) with the Message-Authenticator value set to 16 zero octets.
 * For a response, Authenticator is the Request Authenticator of the request it answers.
 */
export function computeMessageAuthenticator(buf: Buffer, secret: Buffer, authenticator?: Buffer): Buffer {
  const at = messageAuthenticatorOffset(buf);
  if (at < 0) throw new RangeError('no Message-Authenticator attribute');
  const copy = Buffer.from(buf.subarray(0, buf.readUInt16BE(2)));
  copy.fill(0, at, at + 16);
  if (authenticator) authenticator.copy(copy, 4, 0, 16);
  return createHmac('md5', secret).update(copy).digest();
}

/**
 * Builds an Access-Request carrying an EAP packet (RFC 3579 §3.1) with
 * Message-Authenticator (RFC 3579 §3.2: MUST be present with EAP-Message) and a random
 * Request Authenticator (RFC 2865 §3). Returns the datagram and its authenticator.
 */
export function buildAccessRequest(o: {
  identifier: number;
  secret: Buffer;
  eap: Buffer;
  attributes?: RadiusAttribute[];
  authenticator?: Buffer;
}): { packet: Buffer; authenticator: Buffer } {
  const authenticator = o.authenticator ?? randomBytes(16);
  const packet = encodeRadius({
    code: RadiusCode.AccessRequest,
    identifier: o.identifier,
    authenticator,
    attributes: [
      ...(o.attributes ?? []),
      ...eapMessageAttributes(o.eap),
      { type: RadiusAttr.MessageAuthenticator, value: Buffer.alloc(16) },
    ],
  });
  computeMessageAuthenticator(packet, o.secret).copy(packet, messageAuthenticatorOffset(packet));
  return { packet, authenticator };
}

/** RFC 2865 §3: Response Authenticator = MD5(Code | ID | Length | Request Authenticator | Attributes | Secret). */
export function responseAuthenticator(buf: Buffer, requestAuthenticator: Buffer, secret: Buffer): Buffer {
  const len = buf.readUInt16BE(2);
  const copy = Buffer.from(buf.subarray(0, len));
  requestAuthenticator.copy(copy, 4, 0, 16);
  return createHash('md5').update(copy).update(secret).digest();
}

/**
 * Verifies a response (Accept, Reject, Challenge) to a request: the Response Authenticator
 * (RFC 2865 §3) and, when present or when EAP-Message is present (RFC 3579 §3.2: then it
 * MUST be), the Message-Authenticator. A response that fails is silently discarded.
 */
export function verifyResponse(buf: Buffer, requestAuthenticator: Buffer, secret: Buffer): RadiusPacket | null {
  const p = decodeRadius(buf);
  if (!p) return null;
  const expect = responseAuthenticator(buf, requestAuthenticator, secret);
  if (!timingSafeEqual(expect, p.authenticator)) return null;
  const at = messageAuthenticatorOffset(buf);
  const hasEap = p.attributes.some((a) => a.type === RadiusAttr.EapMessage);
  if (at < 0) return hasEap ? null : p;
  const ma = computeMessageAuthenticator(buf, secret, requestAuthenticator);
  return timingSafeEqual(ma, buf.subarray(at, at + 16)) ? p : null;
}

/** The sub-attributes of Microsoft's Vendor-Specific attributes (RFC 2865 §5.26, RFC 2548 §2). */
export function microsoftAttributes(p: RadiusPacket): RadiusAttribute[] {
  const out: RadiusAttribute[] = [];
  for (const a of p.attributes) {
    if (a.type !== RadiusAttr.VendorSpecific || a.value.length < 6) continue;
    if (a.value.readUInt32BE(0) !== MICROSOFT_VENDOR_ID) continue;
    let off = 4;
    while (off + 2 <= a.value.length) {
      const t = a.value[off]!;
      const l = a.value[off + 1]!;
      if (l < 2 || off + l > a.value.length) break;
      out.push({ type: t, value: Buffer.from(a.value.subarray(off + 2, off + l)) });
      off += l;
    }
  }
  return out;
}

/**
 * RFC 2548 §2.4.2/§2.4.3 decryption of MS-MPPE-Send-Key / Recv-Key: the value is Salt (2
 * octets, high bit set) | String, String = c(1)..c(n) with
 *   b(1) = MD5(S + R + A), p(1) = c(1) xor b(1); b(i) = MD5(S + c(i-1)), p(i) = c(i) xor b(i),
 * S the shared secret, R the Request Authenticator of the Access-Request, A the Salt;
 * the plaintext is Key-Length (1 octet) | Key | padding. Null when malformed.
 */
export function decryptMppeKey(value: Buffer, secret: Buffer, requestAuthenticator: Buffer): Buffer | null {
  if (value.length < 2 + 16 || (value.length - 2) % 16 !== 0) return null;
  const salt = value.subarray(0, 2);
  if (!(salt[0]! & 0x80)) return null; // §2.4.2: "The most significant bit (leftmost) of the Salt field MUST be set (1)"
  const c = value.subarray(2);
  const p = Buffer.alloc(c.length);
  let prev: Buffer = Buffer.concat([requestAuthenticator, salt]);
  for (let i = 0; i < c.length; i += 16) {
    const b = createHash('md5').update(secret).update(prev).digest();
    for (let j = 0; j < 16; j++) p[i + j] = c[i + j]! ^ b[j]!;
    prev = c.subarray(i, i + 16);
  }
  const keyLen = p[0]!;
  if (keyLen + 1 > p.length) return null;
  return Buffer.from(p.subarray(1, 1 + keyLen));
}

/** The inverse of decryptMppeKey (RFC 2548 §2.4.2), for test vectors and a RADIUS server role. */
export function encryptMppeKey(key: Buffer, secret: Buffer, requestAuthenticator: Buffer, salt: Buffer = randomBytes(2)): Buffer {
  const a = Buffer.from(salt);
  a[0] = a[0]! | 0x80;
  const plainLen = Math.ceil((key.length + 1) / 16) * 16;
  const p = Buffer.alloc(plainLen);
  p[0] = key.length;
  key.copy(p, 1);
  const c = Buffer.alloc(plainLen);
  let prev: Buffer = Buffer.concat([requestAuthenticator, a]);
  for (let i = 0; i < plainLen; i += 16) {
    const b = createHash('md5').update(secret).update(prev).digest();
    for (let j = 0; j < 16; j++) c[i + j] = p[i + j]! ^ b[j]!;
    prev = c.subarray(i, i + 16);
  }
  return Buffer.concat([a, c]);
}

/**
 * The EAP MSK from an Access-Accept: MSK = MS-MPPE-Recv-Key | MS-MPPE-Send-Key (32 octets
 * each). RFC 5216 §2.3 (and RFC 3748 / RFC 5247 key naming) puts the first 32 octets of the
 * MSK in MS-MPPE-Recv-Key and the last 32 in MS-MPPE-Send-Key, as hostapd and FreeRADIUS do.
 */
export function mskFromAccept(p: RadiusPacket, secret: Buffer, requestAuthenticator: Buffer): Buffer | null {
  const ms = microsoftAttributes(p);
  const send = ms.find((a) => a.type === MsAttr.MppeSendKey);
  const recv = ms.find((a) => a.type === MsAttr.MppeRecvKey);
  if (!send || !recv) return null;
  const s = decryptMppeKey(send.value, secret, requestAuthenticator);
  const r = decryptMppeKey(recv.value, secret, requestAuthenticator);
  if (!s || !r || s.length < 32 || r.length < 32) return null;
  return Buffer.concat([r.subarray(0, 32), s.subarray(0, 32)]);
}
