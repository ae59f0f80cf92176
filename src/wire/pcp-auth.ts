/**
 * RFC 7652 (PCP Authentication Mechanism) on the wire: the AUTHENTICATION opcode's
 * messages (PA-Initiation, PA-Server, PA-Client), its options, result codes, the MAC of
 * AUTHENTICATION_TAG / PA_AUTHENTICATION_TAG and the derivation of the SA transport key
 * from the EAP MSK.
 *
 * Numbers are those of the IANA PCP registries after RFC 7652 (opcode 3; options 4..12;
 * result codes 14..23), not the earlier drafts' numbers. The option numbers were checked
 * against IANA's pcp-parameters "PCP Options" table (Value 4 NONCE "See Section 5.3 of
 * [RFC7652]" ... 12 ID_INDICATOR "Section 5.11").
 *
 * This file carries a small PCP header/option reader and writer of its own (RFC 6887 §7.1
 * request header, §7.2 response header, §7.3 options with 4-octet padding) so that it
 * does not depend on src/wire/pcp.ts, which another engineer owns.
 *
 * Pure: no I/O, no clock. Decoders return null on malformed input.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { Result, encodePcpAddress as encodeAddress, encodePcpOptions } from './pcp.js';

/** RFC 6887 §7: PCP version 2. */
export const PCP_VERSION = 2;
/** RFC 6887 §7: a PCP message is at most 1100 octets. */
export const PCP_MAX_MESSAGE = 1100;
/** RFC 6887 §7.1/§7.2: both headers are 24 octets. */
export const PCP_HEADER_LENGTH = 24;
/** RFC 6887 §19.2 + RFC 7652 §5.1 (IANA "PCP Opcodes": 3 AUTHENTICATION [RFC7652]): opcodes. */
export const PcpOpcode = { ANNOUNCE: 0, MAP: 1, PEER: 2, AUTHENTICATION: 3 } as const;

/** Opcode-specific information length (RFC 6887 §14.1 ANNOUNCE 0, §11.1 MAP 36, §12.1 PEER 56; RFC 7652 §5.1 AUTHENTICATION 8). */
export function opcodeDataLength(opcode: number): number | null {
  switch (opcode) {
    case PcpOpcode.ANNOUNCE:
      return 0;
    case PcpOpcode.MAP:
      return 36;
    case PcpOpcode.PEER:
      return 56;
    case PcpOpcode.AUTHENTICATION:
      return 8;
    default:
      return null;
  }
}

/** RFC 7652 IANA Considerations ("PCP Options" registry: 4..12, each "See Section 5.x of [RFC7652]"). */
export const PcpAuthOption = {
  NONCE: 4, // §5.3: 4 octets
  AUTHENTICATION_TAG: 5, // §5.4: Session ID, Sequence Number, Key ID, Authentication Data (MAP, PEER, ANNOUNCE)
  PA_AUTHENTICATION_TAG: 6, // §5.5: Key ID, Authentication Data (AUTHENTICATION)
  EAP_PAYLOAD: 7, // §5.6: one EAP message
  PSEUDO_RANDOM_FUNCTION: 8, // §5.7: 4 octets, IKEv2 Transform Type 2 id
  MAC_ALGORITHM: 9, // §5.8: 4 octets, IKEv2 Transform Type 3 id
  SESSION_LIFETIME: 10, // §5.9: 4 octets, seconds (response only)
  RECEIVED_PAK: 11, // §5.10: 4 octets, the sequence number of the PA message received
  ID_INDICATOR: 12, // §5.11: identity of the authentication server (response only)
} as const;

/** RFC 7652 IANA Considerations ("PCP Result Codes" 14..23, after RFC 6887's 0..13): one table, in pcp.ts. */
export const PcpAuthResult = {
  INITIATION: Result.INITIATION,
  AUTHENTICATION_REQUIRED: Result.AUTHENTICATION_REQUIRED,
  AUTHENTICATION_FAILED: Result.AUTHENTICATION_FAILED,
  AUTHENTICATION_SUCCEEDED: Result.AUTHENTICATION_SUCCEEDED,
  AUTHORIZATION_FAILED: Result.AUTHORIZATION_FAILED,
  SESSION_TERMINATED: Result.SESSION_TERMINATED,
  UNKNOWN_SESSION_ID: Result.UNKNOWN_SESSION_ID,
  DOWNGRADE_ATTACK_DETECTED: Result.DOWNGRADE_ATTACK_DETECTED,
  AUTHENTICATION_REQUEST: Result.AUTHENTICATION_REQUEST,
  AUTHENTICATION_REPLY: Result.AUTHENTICATION_REPLY,
} as const;

/** RFC 6887 §7.4 codes used here. */
export const PcpResult = {
  SUCCESS: Result.SUCCESS,
  NOT_AUTHORIZED: Result.NOT_AUTHORIZED,
  MALFORMED_REQUEST: Result.MALFORMED_REQUEST,
  MALFORMED_OPTION: Result.MALFORMED_OPTION,
  NO_RESOURCES: Result.NO_RESOURCES,
} as const;

/** RFC 7652 §5.7: IKEv2 PRF transform ids (RFC 7296 §3.3.2); HMAC-SHA1 is mandatory to implement. */
export const Prf = { HMAC_SHA1: 2, HMAC_SHA2_256: 5 } as const;
/** RFC 7652 §5.8: IKEv2 integrity transform ids; AUTH_HMAC_SHA1_96 is mandatory to implement. */
export const MacAlg = { HMAC_SHA1_96: 2, HMAC_SHA2_256_128: 12 } as const;

export function prfHash(prf: number): 'sha1' | 'sha256' | null {
  return prf === Prf.HMAC_SHA1 ? 'sha1' : prf === Prf.HMAC_SHA2_256 ? 'sha256' : null;
}

/** Truncated MAC length (RFC 2404: 96 bits; RFC 4868: 128 bits for SHA-256). */
export function macLength(mac: number): number | null {
  return mac === MacAlg.HMAC_SHA1_96 ? 12 : mac === MacAlg.HMAC_SHA2_256_128 ? 16 : null;
}

function macHash(mac: number): 'sha1' | 'sha256' | null {
  return mac === MacAlg.HMAC_SHA1_96 ? 'sha1' : mac === MacAlg.HMAC_SHA2_256_128 ? 'sha256' : null;
}

export function computeMac(mac: number, key: Buffer, data: Buffer): Buffer {
  const h = macHash(mac);
  const n = macLength(mac);
  if (!h || !n) throw new RangeError('unsupported MAC algorithm');
  return createHmac(h, key).update(data).digest().subarray(0, n);
}

/**
 * RFC 7652, derivation of the PCP SA's transport key (the section number could not be
 * checked against the RFC text here): MK = prf(MSK, "IETF PCP" || Session ID ||
 * Nonce || key ID), with prf the negotiated PSEUDO_RANDOM_FUNCTION, "IETF PCP" the 8 ASCII
 * octets without a terminator, Session ID and key ID 32-bit network order and Nonce the
 * 4 octets of the NONCE option.
 */
export function deriveTransportKey(prf: number, msk: Buffer, sessionId: number, nonce: Buffer, keyId: number): Buffer {
  const h = prfHash(prf);
  if (!h) throw new RangeError('unsupported PRF');
  return createHmac(h, msk)
    .update(Buffer.concat([Buffer.from('IETF PCP', 'ascii'), u32(sessionId), nonce, u32(keyId)]))
    .digest();
}

export function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
}

export interface WireOption {
  code: number;
  data: Buffer;
  /** Offset of the option header (code octet) in the message. */
  offset: number;
}

/** RFC 6887 §7.3: options from `start` to the end; data is padded to a multiple of 4. */
export function walkOptions(buf: Buffer, start: number, max = 64): WireOption[] | null {
  const out: WireOption[] = [];
  let off = start;
  while (off < buf.length) {
    if (off + 4 > buf.length || out.length >= max) return null;
    const code = buf[off]!;
    const len = buf.readUInt16BE(off + 2);
    const padded = (len + 3) & ~3;
    if (off + 4 + len > buf.length) return null;
    out.push({ code, data: Buffer.from(buf.subarray(off + 4, off + 4 + len)), offset: off });
    off += 4 + Math.min(padded, buf.length - off - 4);
  }
  return out;
}

/** RFC 6887 §7.3 option encoding, padded with zeros to a 4-octet boundary (pcp.ts). */
export function encodeOption(code: number, data: Buffer): Buffer {
  return encodePcpOptions([{ code, data }]);
}

/** RFC 6887 §5: an address as 16 octets (IPv4 as ::ffff:a.b.c.d) (pcp.ts). */
export function encodePcpAddress(address: string): Buffer {
  return encodeAddress(address);
}

export interface PaMessage {
  /** R bit (RFC 6887 §7.1/7.2): true = response (PA-Server), false = request (PA-Client / PA-Initiation). */
  response: boolean;
  /**
   * RFC 7652 §5.1 (as understood here, not checked against the RFC text in this session):
   * PA messages carry a result code in both directions; a request (which
   * has no Result Code field in RFC 6887 §7.1) carries it in the last octet of the
   * Reserved field, at the same offset (3) as the response's Result Code.
   */
  resultCode: number;
  lifetime: number;
  /** Response only (RFC 6887 §7.2 Epoch Time). */
  epoch: number;
  /** Request only: the PCP client's IP address (RFC 6887 §7.1), 16 octets. */
  clientIp: Buffer;
  /** RFC 7652 §5.1 opcode-specific information. */
  sessionId: number;
  sequence: number;
  options: WireOption[];
  /** The decoded datagram (decodePaMessage only). */
  raw?: Buffer;
}

export function encodePaMessage(m: Omit<PaMessage, 'options' | 'raw'> & { options: { code: number; data: Buffer }[] }): Buffer {
  const head = Buffer.alloc(PCP_HEADER_LENGTH + 8);
  head[0] = PCP_VERSION;
  head[1] = (m.response ? 0x80 : 0) | PcpOpcode.AUTHENTICATION;
  head[3] = m.resultCode & 0xff;
  head.writeUInt32BE(m.lifetime >>> 0, 4);
  if (m.response) head.writeUInt32BE(m.epoch >>> 0, 8);
  else m.clientIp.copy(head, 8, 0, 16);
  head.writeUInt32BE(m.sessionId >>> 0, 24);
  head.writeUInt32BE(m.sequence >>> 0, 28);
  const out = Buffer.concat([head, ...m.options.map((o) => encodeOption(o.code, o.data))]);
  if (out.length > PCP_MAX_MESSAGE) throw new RangeError('PCP message above 1100 octets');
  return out;
}

export function decodePaMessage(buf: Buffer): PaMessage | null {
  // RFC 6887 §7: at least the header, at most 1100 octets, a multiple of 4.
  if (buf.length < PCP_HEADER_LENGTH + 8 || buf.length > PCP_MAX_MESSAGE || buf.length % 4 !== 0) return null;
  if (buf[0] !== PCP_VERSION || (buf[1]! & 0x7f) !== PcpOpcode.AUTHENTICATION) return null;
  const response = (buf[1]! & 0x80) !== 0;
  const options = walkOptions(buf, PCP_HEADER_LENGTH + 8);
  if (!options) return null;
  return {
    response,
    resultCode: buf[3]!,
    lifetime: buf.readUInt32BE(4),
    epoch: response ? buf.readUInt32BE(8) : 0,
    clientIp: response ? Buffer.alloc(16) : Buffer.from(buf.subarray(8, 24)),
    sessionId: buf.readUInt32BE(24),
    sequence: buf.readUInt32BE(28),
    options,
    raw: buf,
  };
}

/** Options of any PCP message (common or PA), located after the opcode-specific information. */
export function messageOptions(buf: Buffer): WireOption[] | null {
  if (buf.length < PCP_HEADER_LENGTH || buf[0] !== PCP_VERSION) return null;
  const n = opcodeDataLength(buf[1]! & 0x7f);
  if (n === null || buf.length < PCP_HEADER_LENGTH + n) return null;
  return walkOptions(buf, PCP_HEADER_LENGTH + n);
}

export function findOption(opts: readonly { code: number; data: Buffer }[], code: number): Buffer | undefined {
  return opts.find((o) => o.code === code)?.data;
}

export function optionU32(opts: readonly { code: number; data: Buffer }[], code: number): number | undefined {
  const d = findOption(opts, code);
  return d && d.length === 4 ? d.readUInt32BE(0) : undefined;
}

export interface AuthTag {
  sessionId: number;
  sequence: number;
  keyId: number;
  authData: Buffer;
}

/** RFC 7652 §5.4: AUTHENTICATION_TAG = Session ID | Sequence Number | Key ID | Authentication Data. */
export function parseAuthTag(data: Buffer): AuthTag | null {
  if (data.length < 12 + 12) return null;
  return {
    sessionId: data.readUInt32BE(0),
    sequence: data.readUInt32BE(4),
    keyId: data.readUInt32BE(8),
    authData: Buffer.from(data.subarray(12)),
  };
}

/**
 * Appends AUTHENTICATION_TAG (RFC 7652 §5.4) as the last option of a common PCP message
 * and fills its Authentication Data: the MAC, under the SA's transport key, of the whole
 * PCP message with the Authentication Data field set to zero.
 */
export function appendAuthTag(msg: Buffer, t: { sessionId: number; sequence: number; keyId: number; mac: number; key: Buffer }): Buffer {
  const n = macLength(t.mac);
  if (!n) throw new RangeError('unsupported MAC algorithm');
  const data = Buffer.concat([u32(t.sessionId), u32(t.sequence), u32(t.keyId), Buffer.alloc(n)]);
  const out = Buffer.concat([msg, encodeOption(PcpAuthOption.AUTHENTICATION_TAG, data)]);
  if (out.length > PCP_MAX_MESSAGE) throw new RangeError('PCP message above 1100 octets');
  const at = msg.length + 4 + 12;
  computeMac(t.mac, t.key, out).copy(out, at);
  return out;
}

/** Where the Authentication Data of the (first) tag option of `code` lies in msg. */
function tagData(msg: Buffer, code: number, fixed: number): { start: number; end: number } | null {
  const opts = messageOptions(msg);
  if (!opts) return null;
  const o = opts.find((x) => x.code === code);
  if (!o || o.data.length <= fixed) return null;
  return { start: o.offset + 4 + fixed, end: o.offset + 4 + o.data.length };
}

/** Recomputes and compares (constant time) the MAC of a tag option (RFC 7652 §5.4/§5.5: data zeroed). */
function macMatches(msg: Buffer, code: number, fixed: number, mac: number, key: Buffer): boolean {
  const loc = tagData(msg, code, fixed);
  const n = macLength(mac);
  if (!loc || !n || loc.end - loc.start !== n) return false;
  const copy = Buffer.from(msg);
  copy.fill(0, loc.start, loc.end);
  return timingSafeEqual(computeMac(mac, key, copy), msg.subarray(loc.start, loc.end));
}

/** The AUTHENTICATION_TAG of a common message (parsed, not yet verified), or null. */
export function readAuthTag(msg: Buffer): AuthTag | null {
  const opts = messageOptions(msg);
  const d = opts && findOption(opts, PcpAuthOption.AUTHENTICATION_TAG);
  return d ? parseAuthTag(d) : null;
}

export function verifyAuthTag(msg: Buffer, mac: number, key: Buffer): boolean {
  return macMatches(msg, PcpAuthOption.AUTHENTICATION_TAG, 12, mac, key);
}

/**
 * Appends PA_AUTHENTICATION_TAG (RFC 7652 §5.5: Key ID | Authentication Data) to a PA
 * message once the key exists, computed like AUTHENTICATION_TAG over the whole message.
 */
export function appendPaAuthTag(msg: Buffer, t: { keyId: number; mac: number; key: Buffer }): Buffer {
  const n = macLength(t.mac);
  if (!n) throw new RangeError('unsupported MAC algorithm');
  const out = Buffer.concat([msg, encodeOption(PcpAuthOption.PA_AUTHENTICATION_TAG, Buffer.concat([u32(t.keyId), Buffer.alloc(n)]))]);
  if (out.length > PCP_MAX_MESSAGE) throw new RangeError('PCP message above 1100 octets');
  computeMac(t.mac, t.key, out).copy(out, msg.length + 8);
  return out;
}

export function readPaAuthTagKeyId(msg: Buffer): number | null {
  const opts = messageOptions(msg);
  const d = opts && findOption(opts, PcpAuthOption.PA_AUTHENTICATION_TAG);
  return d && d.length > 4 ? d.readUInt32BE(0) : null;
}

export function verifyPaAuthTag(msg: Buffer, mac: number, key: Buffer): boolean {
  return macMatches(msg, PcpAuthOption.PA_AUTHENTICATION_TAG, 4, mac, key);
}
