/**
 * Port Control Protocol codec (RFC 6887), version 2, with the NAT-PMP (RFC 6886,
 * version 0) answer of the version negotiation (RFC 6887 §9).
 *
 * Pure: no I/O, no clock, imports nothing of ours outside src/wire. Decoders never
 * throw on hostile input: they return `{ ok: false, error }` where `error.result` is the
 * RFC 6887 §7.4 result code the server answers with (or `error.silent` when §8.3 says
 * to drop the datagram without an answer). Encoders throw only on programmer errors
 * (a bad address string, a field out of range, an option longer than 65535 bytes).
 *
 * Addresses are text everywhere in the API: IPv4 as a dotted quad (also when the wire
 * carries it IPv4-mapped, §5: ::ffff:a.b.c.d), IPv6 in RFC 5952 form. Encoders accept
 * either family and write IPv4 IPv4-mapped.
 *
 *   Server:  const d = decodePcpRequest(datagram);
 *            if (!d.ok) { if (!d.error.silent) send(encodePcpErrorResponse(datagram, d.error.result, ...)); }
 *            else { d.value.map?.nonce ... ; send(encodePcpResponse({ opcode, result, lifetime, epoch, map, options })) }
 *   Client:  send(encodePcpRequest({ opcode: Opcode.MAP, lifetime, clientAddress, map: { nonce, ... } }));
 *            const r = decodePcpResponse(answer); // r.value.result, r.value.map.externalPort ...
 *
 * RFC 7652 (AUTHENTICATION, opcode 3) builds on this: its opcode-specific data (Session
 * ID and Sequence Number, 8 bytes) is left raw in `opcodeData`, and its options are
 * validated by the caller (pass their codes in `knownOptions`).
 */
import { isIPv4, isIPv6 } from 'node:net';
import { formatIpv4, formatIpv6 } from './netpkt.js';

/** RFC 6887 §7: the version of this protocol. */
export const PCP_VERSION = 2;
/** RFC 6886 §3: NAT-PMP's version (RFC 6887 §9 answers it). */
export const NATPMP_VERSION = 0;
/** RFC 6887 §19.1: the server listens on 5351; clients receive unsolicited messages on 5350 (§14.1.1). */
export const PCP_SERVER_PORT = 5351;
export const PCP_CLIENT_PORT = 5350;
/** RFC 6887 §7: maximum UDP payload of a PCP message. */
export const PCP_MAX_MESSAGE = 1100;
/** RFC 6887 §7.1 / §7.2: the common header is 24 bytes. */
export const PCP_HEADER_LENGTH = 24;
/** RFC 6887 §11.1: the mapping nonce is 96 bits. */
export const PCP_NONCE_LENGTH = 12;
/** RFC 6887 §11.1: MAP opcode-specific data (nonce, protocol, ports, address). */
export const MAP_BODY_LENGTH = 36;
/** RFC 6887 §12.1: PEER opcode-specific data (MAP's fields + remote peer port and address). */
export const PEER_BODY_LENGTH = 56;
/** RFC 7652 §6 (AUTHENTICATION opcode): Session ID (32) + Sequence Number (32). */
export const AUTHENTICATION_BODY_LENGTH = 8;

/** RFC 6887 §19.2 opcodes, plus AUTHENTICATION of RFC 7652 §6 / §11 (IANA). */
export const Opcode = {
  ANNOUNCE: 0,
  MAP: 1,
  PEER: 2,
  AUTHENTICATION: 3,
} as const;

/** RFC 6887 §7.4 result codes (0..13), then RFC 7652 §11 (IANA) codes 14..23. */
export const Result = {
  SUCCESS: 0,
  UNSUPP_VERSION: 1,
  NOT_AUTHORIZED: 2,
  MALFORMED_REQUEST: 3,
  UNSUPP_OPCODE: 4,
  UNSUPP_OPTION: 5,
  MALFORMED_OPTION: 6,
  NETWORK_FAILURE: 7,
  NO_RESOURCES: 8,
  UNSUPP_PROTOCOL: 9,
  USER_EX_QUOTA: 10,
  CANNOT_PROVIDE_EXTERNAL: 11,
  ADDRESS_MISMATCH: 12,
  EXCESSIVE_REMOTE_PEERS: 13,
  // RFC 7652 §11 (IANA "PCP Result Codes"):
  INITIATION: 14,
  AUTHENTICATION_REQUIRED: 15,
  AUTHENTICATION_FAILED: 16,
  AUTHENTICATION_SUCCEEDED: 17,
  AUTHORIZATION_FAILED: 18,
  SESSION_TERMINATED: 19,
  UNKNOWN_SESSION_ID: 20,
  DOWNGRADE_ATTACK_DETECTED: 21,
  AUTHENTICATION_REQUEST: 22,
  AUTHENTICATION_REPLY: 23,
} as const;

const RESULT_NAMES = new Map<number, string>(Object.entries(Result).map(([k, v]) => [v, k]));
/** "NOT_AUTHORIZED" for 2; "RESULT_99" for an unassigned code. */
export function resultName(code: number): string {
  return RESULT_NAMES.get(code) ?? `RESULT_${code}`;
}

const OPCODE_NAMES = new Map<number, string>(Object.entries(Opcode).map(([k, v]) => [v, k]));
/** "MAP" for 1; "OPCODE_99" for an unassigned opcode. */
export function opcodeName(code: number): string {
  return OPCODE_NAMES.get(code) ?? `OPCODE_${code}`;
}

/**
 * RFC 6887 §7.4: which errors are "long lifetime" (the client should not retry soon) and
 * which "short lifetime". CANNOT_PROVIDE_EXTERNAL "depends on the reason": short here.
 */
export function isLongLifetimeError(result: number): boolean {
  switch (result) {
    case Result.UNSUPP_VERSION:
    case Result.NOT_AUTHORIZED:
    case Result.MALFORMED_REQUEST:
    case Result.UNSUPP_OPCODE:
    case Result.UNSUPP_OPTION:
    case Result.MALFORMED_OPTION:
    case Result.UNSUPP_PROTOCOL:
    case Result.ADDRESS_MISMATCH:
    case Result.EXCESSIVE_REMOTE_PEERS:
      return true;
    default:
      return false;
  }
}

/** RFC 6887 §19.4 option codes of the base specification. */
export const OptionCode = {
  THIRD_PARTY: 1,
  PREFER_FAILURE: 2,
  FILTER: 3,
} as const;

/** RFC 6887 §7.3: codes 0..127 are mandatory to process, 128..255 optional. */
export function isMandatoryOption(code: number): boolean {
  return code < 128;
}

/** One option as on the wire (RFC 6887 §7.3), data without padding. Same shape as src/pcp/hooks.ts PcpOption. */
export interface PcpOption {
  code: number;
  data: Buffer;
}

/** MAP opcode-specific data (RFC 6887 §11.1); in a response the "suggested" fields are the assigned ones. */
export interface PcpMapData {
  /** 12 bytes (§11.1 Mapping Nonce). A copy, never a view of the datagram. */
  nonce: Buffer;
  /** IANA protocol number; 0 = all protocols (§11.1). */
  protocol: number;
  /** 0 = all ports (§11.1). */
  internalPort: number;
  /** Request: suggested (0 = no preference); response: assigned. */
  externalPort: number;
  /** Request: suggested ("::" / "0.0.0.0" = no preference, §11.1); response: assigned. */
  externalAddress: string;
}

/** PEER opcode-specific data (RFC 6887 §12.1). */
export interface PcpPeerData extends PcpMapData {
  remotePort: number;
  remoteAddress: string;
}

export interface PcpRequest {
  version: typeof PCP_VERSION;
  opcode: number;
  /** §7.1 Requested Lifetime, seconds. */
  lifetime: number;
  /** §7.1 PCP Client's IP Address. */
  clientAddress: string;
  /** Present for opcode MAP. */
  map?: PcpMapData;
  /** Present for opcode PEER. */
  peer?: PcpPeerData;
  /** The raw opcode-specific data (empty for ANNOUNCE; 8 bytes for AUTHENTICATION). */
  opcodeData: Buffer;
  /** Every option in wire order (validated: see decodePcpRequest). */
  options: PcpOption[];
}

export interface PcpResponse {
  version: typeof PCP_VERSION;
  opcode: number;
  result: number;
  /** §7.2: mapping lifetime on success; on error how long the error is likely to persist. */
  lifetime: number;
  /** §7.2 / §8.5 Epoch Time, seconds. */
  epoch: number;
  map?: PcpMapData;
  peer?: PcpPeerData;
  opcodeData: Buffer;
  /** Options as received (not validated: a client ignores what it does not know, §7.3). */
  options: PcpOption[];
}

export interface PcpDecodeError {
  /** The RFC 6887 §7.4 result code to answer with. */
  result: number;
  /** RFC 6887 §8.3: drop the datagram without an answer (shorter than 2 bytes, R bit set). */
  silent: boolean;
  /** The datagram is NAT-PMP (version 0): answer with encodeNatPmpUnsupportedVersion (§9). */
  natPmp: boolean;
  /** Human-readable cause (never carries input bytes). */
  reason: string;
  /** Header fields that were readable (for the error response and for counters). */
  version?: number;
  opcode?: number;
  lifetime?: number;
  clientAddress?: string;
}

export type PcpDecoded<T> = { ok: true; value: T } | { ok: false; error: PcpDecodeError };

function fail(result: number, reason: string, extra: Partial<PcpDecodeError> = {}): { ok: false; error: PcpDecodeError } {
  return { ok: false, error: { result, silent: false, natPmp: false, reason, ...extra } };
}

// ---------------------------------------------------------------------------------
// Addresses (RFC 6887 §5: IPv4 carried as IPv4-mapped IPv6, ::ffff:a.b.c.d)

/** Reads a 128-bit address: "a.b.c.d" when IPv4-mapped, else RFC 5952 IPv6 text. */
export function decodePcpAddress(buf: Uint8Array, off: number): string {
  let mapped = buf[off + 10] === 0xff && buf[off + 11] === 0xff;
  for (let i = 0; i < 10 && mapped; i++) if (buf[off + i] !== 0) mapped = false;
  return mapped ? formatIpv4(buf, off + 12) : formatIpv6(buf, off, false);
}

function parseIpv4Into(s: string, out: Buffer, off: number): void {
  const parts = s.split('.');
  if (parts.length !== 4) throw new RangeError(`bad IPv4 address ${s}`);
  for (let i = 0; i < 4; i++) out[off + i] = Number(parts[i]);
}

/** Writes an address as 16 bytes: IPv4 (also "::ffff:a.b.c.d") IPv4-mapped (§5), IPv6 as is. */
export function encodePcpAddress(addr: string, out: Buffer = Buffer.alloc(16), off = 0): Buffer {
  out.fill(0, off, off + 16);
  if (isIPv4(addr)) {
    out[off + 10] = 0xff;
    out[off + 11] = 0xff;
    parseIpv4Into(addr, out, off + 12);
    return out;
  }
  if (!isIPv6(addr)) throw new RangeError(`bad address ${JSON.stringify(addr)}`);
  let s = addr;
  const pct = s.indexOf('%');
  if (pct >= 0) s = s.slice(0, pct);
  const groups: number[] = [];
  const [head, tail] = s.includes('::') ? (s.split('::') as [string, string]) : [s, undefined];
  const toGroups = (part: string): number[] => {
    if (!part) return [];
    const r: number[] = [];
    for (const g of part.split(':')) {
      if (g.includes('.')) {
        const b = Buffer.alloc(4);
        parseIpv4Into(g, b, 0);
        r.push(b.readUInt16BE(0), b.readUInt16BE(2));
      } else r.push(parseInt(g, 16));
    }
    return r;
  };
  const h = toGroups(head);
  const tl = tail === undefined ? [] : toGroups(tail);
  groups.push(...h);
  if (tail !== undefined) for (let i = h.length + tl.length; i < 8; i++) groups.push(0);
  groups.push(...tl);
  for (let i = 0; i < 8; i++) out.writeUInt16BE(groups[i] ?? 0, off + 2 * i);
  return out;
}

/** Canonical text of an address (IPv4-mapped IPv6 → dotted quad), as decoding would give it. */
export function canonicalPcpAddress(addr: string): string {
  return decodePcpAddress(encodePcpAddress(addr), 0);
}

/** True when the text is an IPv4 address (after canonicalization: also ::ffff:a.b.c.d). */
export function isPcpIpv4(addr: string): boolean {
  return isIPv4(addr);
}

/** §11.1: "::" (IPv6) or "0.0.0.0" (::ffff:0.0.0.0, IPv4) = no preference / unspecified. */
export function isUnspecifiedAddress(addr: string): boolean {
  return addr === '::' || addr === '0.0.0.0';
}

// ---------------------------------------------------------------------------------
// Options (RFC 6887 §7.3)

/** Encodes options: code (8), reserved (8), length (16) of the data, data, zero padding to 4 bytes. */
export function encodePcpOptions(options: readonly PcpOption[]): Buffer {
  let n = 0;
  for (const o of options) {
    if (!Number.isInteger(o.code) || o.code < 0 || o.code > 255) throw new RangeError(`bad option code ${o.code}`);
    if (o.data.length > 0xffff) throw new RangeError('option data longer than 65535 bytes');
    n += 4 + ((o.data.length + 3) & ~3);
  }
  const out = Buffer.alloc(n);
  let p = 0;
  for (const o of options) {
    out[p] = o.code;
    out[p + 1] = 0; // §7.3 Reserved: MUST be 0 on transmission
    out.writeUInt16BE(o.data.length, p + 2);
    o.data.copy(out, p + 4);
    p += 4 + ((o.data.length + 3) & ~3);
  }
  return out;
}

/** Maximum options in one message (a 1100-byte message holds at most 269 empty options). */
export const MAX_OPTIONS = 275;

/**
 * Decodes the options of buf[off..end]: structure only (§7.3). An option whose length
 * (padded) runs past the end, or a truncated option header, is MALFORMED_OPTION.
 */
export function decodePcpOptions(buf: Buffer, off: number, end = buf.length): PcpDecoded<PcpOption[]> {
  const options: PcpOption[] = [];
  let p = off;
  while (p < end) {
    if (end - p < 4) return fail(Result.MALFORMED_OPTION, 'truncated option header');
    const code = buf[p]!;
    const len = buf.readUInt16BE(p + 2);
    const padded = (len + 3) & ~3;
    // §7.3: the option length excludes the padding; data + padding must fit the message.
    if (p + 4 + padded > end) return fail(Result.MALFORMED_OPTION, `option ${code} longer than the message`);
    if (options.length >= MAX_OPTIONS) return fail(Result.MALFORMED_OPTION, 'too many options');
    options.push({ code, data: Buffer.from(buf.subarray(p + 4, p + 4 + len)) });
    p += 4 + padded;
  }
  return { ok: true, value: options };
}

/** THIRD_PARTY (§13.1): data is the 128-bit internal address. */
export function thirdPartyOption(internalAddress: string): PcpOption {
  return { code: OptionCode.THIRD_PARTY, data: encodePcpAddress(internalAddress) };
}

export function decodeThirdParty(o: PcpOption): string | null {
  return o.code === OptionCode.THIRD_PARTY && o.data.length === 16 ? decodePcpAddress(o.data, 0) : null;
}

/** PREFER_FAILURE (§13.2): no data. */
export function preferFailureOption(): PcpOption {
  return { code: OptionCode.PREFER_FAILURE, data: Buffer.alloc(0) };
}

/** FILTER (§13.3): remote peers allowed through a MAP's pinhole. */
export interface PcpFilterData {
  /** Prefix length over the 128-bit wire form (§13.3: an IPv4 /24 is 120); 0 = remove all filters. */
  prefixLength: number;
  /** Remote peer port; 0 = all ports. */
  port: number;
  /** Remote peer address (dotted quad for IPv4). */
  address: string;
}

/** FILTER data: Reserved (8), Prefix Length (8), Remote Peer Port (16), Remote Peer IP Address (128). */
export function filterOption(f: PcpFilterData): PcpOption {
  if (!Number.isInteger(f.prefixLength) || f.prefixLength < 0 || f.prefixLength > 128) throw new RangeError('bad prefix length');
  const data = Buffer.alloc(20);
  data[1] = f.prefixLength;
  data.writeUInt16BE(f.port, 2);
  encodePcpAddress(f.address, data, 4);
  return { code: OptionCode.FILTER, data };
}

/**
 * Decodes a FILTER (§13.3). Prefix length > 128, or an IPv4-mapped address with a prefix
 * length between 1 and 95 (it would cover non-IPv4 space), is MALFORMED_OPTION.
 */
export function decodeFilter(o: PcpOption): PcpDecoded<PcpFilterData> {
  if (o.code !== OptionCode.FILTER || o.data.length !== 20) return fail(Result.MALFORMED_OPTION, 'FILTER length is not 20');
  const prefixLength = o.data[1]!;
  const address = decodePcpAddress(o.data, 4);
  if (prefixLength > 128) return fail(Result.MALFORMED_OPTION, 'FILTER prefix length > 128');
  if (isIPv4(address) && prefixLength > 0 && prefixLength < 96)
    return fail(Result.MALFORMED_OPTION, 'FILTER prefix length < 96 on an IPv4 address');
  return { ok: true, value: { prefixLength, port: o.data.readUInt16BE(2), address } };
}

/** What the base specification says of each of its options (§13.1, §13.2, §13.3). */
const BASE_OPTIONS: Record<number, { opcodes: readonly number[]; length: number; repeat: boolean }> = {
  [OptionCode.THIRD_PARTY]: { opcodes: [Opcode.MAP, Opcode.PEER], length: 16, repeat: false },
  [OptionCode.PREFER_FAILURE]: { opcodes: [Opcode.MAP], length: 0, repeat: false },
  [OptionCode.FILTER]: { opcodes: [Opcode.MAP], length: 20, repeat: true },
};

export interface PcpOptionRules {
  /**
   * Option codes the caller processes itself (e.g. RFC 7652's AUTHENTICATION_TAG): not
   * UNSUPP_OPTION even when < 128; their lengths and repeats are the caller's to check.
   */
  knownOptions?: Iterable<number>;
}

/**
 * The request checks of RFC 6887 §7.3 and §13 on a decoded option list:
 *  - an unknown mandatory option (code < 128) → UNSUPP_OPTION; unknown optional ones pass;
 *  - a base option not valid for the opcode → UNSUPP_OPTION (the server does not support it there);
 *  - a base option with the wrong length, or repeated when it may not be → MALFORMED_OPTION;
 *  - a FILTER whose prefix is invalid → MALFORMED_OPTION.
 */
export function validatePcpOptions(opcode: number, options: readonly PcpOption[], rules: PcpOptionRules = {}): PcpDecodeError | null {
  const known = new Set(rules.knownOptions ?? []);
  const seen = new Set<number>();
  for (const o of options) {
    const spec = BASE_OPTIONS[o.code];
    if (!spec) {
      if (isMandatoryOption(o.code) && !known.has(o.code))
        return fail(Result.UNSUPP_OPTION, `unsupported mandatory option ${o.code}`).error;
      continue;
    }
    if (!spec.opcodes.includes(opcode)) return fail(Result.UNSUPP_OPTION, `option ${o.code} not valid for opcode ${opcode}`).error;
    if (o.data.length !== spec.length) return fail(Result.MALFORMED_OPTION, `option ${o.code} length ${o.data.length}`).error;
    if (!spec.repeat && seen.has(o.code)) return fail(Result.MALFORMED_OPTION, `option ${o.code} repeated`).error;
    seen.add(o.code);
    if (o.code === OptionCode.FILTER) {
      const f = decodeFilter(o);
      if (!f.ok) return f.error;
    }
  }
  return null;
}

// ---------------------------------------------------------------------------------
// Opcode-specific data

function bodyLength(opcode: number): number | undefined {
  switch (opcode) {
    case Opcode.ANNOUNCE:
      return 0; // §14.1: no opcode-specific data
    case Opcode.MAP:
      return MAP_BODY_LENGTH;
    case Opcode.PEER:
      return PEER_BODY_LENGTH;
    case Opcode.AUTHENTICATION:
      return AUTHENTICATION_BODY_LENGTH;
    default:
      return undefined;
  }
}

function readMap(buf: Buffer, off: number): PcpMapData {
  // §11.1: Nonce (96), Protocol (8), Reserved (24), Internal Port (16), External Port (16), External Address (128).
  return {
    nonce: Buffer.from(buf.subarray(off, off + 12)),
    protocol: buf[off + 12]!,
    internalPort: buf.readUInt16BE(off + 16),
    externalPort: buf.readUInt16BE(off + 18),
    externalAddress: decodePcpAddress(buf, off + 20),
  };
}

function readPeer(buf: Buffer, off: number): PcpPeerData {
  // §12.1: MAP's layout, then Remote Peer Port (16), Reserved (16), Remote Peer IP Address (128).
  return { ...readMap(buf, off), remotePort: buf.readUInt16BE(off + 36), remoteAddress: decodePcpAddress(buf, off + 40) };
}

function u16(v: number, what: string): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xffff) throw new RangeError(`bad ${what} ${v}`);
  return v;
}

function writeMap(m: PcpMapData, out: Buffer, off: number): void {
  if (m.nonce.length !== PCP_NONCE_LENGTH) throw new RangeError('mapping nonce must be 12 bytes');
  if (!Number.isInteger(m.protocol) || m.protocol < 0 || m.protocol > 255) throw new RangeError(`bad protocol ${m.protocol}`);
  m.nonce.copy(out, off);
  out[off + 12] = m.protocol; // bytes 13..15 Reserved: 0 (§11.1)
  out.writeUInt16BE(u16(m.internalPort, 'internal port'), off + 16);
  out.writeUInt16BE(u16(m.externalPort, 'external port'), off + 18);
  encodePcpAddress(m.externalAddress, out, off + 20);
}

function writePeer(p: PcpPeerData, out: Buffer, off: number): void {
  writeMap(p, out, off);
  out.writeUInt16BE(u16(p.remotePort, 'remote port'), off + 36); // then Reserved (16): 0 (§12.1)
  encodePcpAddress(p.remoteAddress, out, off + 40);
}

function opcodeBody(opcode: number, map: PcpMapData | undefined, peer: PcpPeerData | undefined, opcodeData: Buffer | undefined): Buffer {
  if (opcode === Opcode.MAP && map) {
    const b = Buffer.alloc(MAP_BODY_LENGTH);
    writeMap(map, b, 0);
    return b;
  }
  if (opcode === Opcode.PEER && peer) {
    const b = Buffer.alloc(PEER_BODY_LENGTH);
    writePeer(peer, b, 0);
    return b;
  }
  const d = opcodeData ?? Buffer.alloc(0);
  if (d.length % 4) throw new RangeError('opcode data must be a multiple of 4 bytes (§7)');
  return d;
}

// ---------------------------------------------------------------------------------
// Requests (§7.1)

export interface PcpRequestInput {
  opcode: number;
  lifetime: number;
  clientAddress: string;
  map?: PcpMapData;
  peer?: PcpPeerData;
  /** Opcode-specific data for other opcodes (AUTHENTICATION, tests). */
  opcodeData?: Buffer;
  options?: readonly PcpOption[];
}

/** Encodes a request: Version 2, R=0, Opcode (7), Reserved (16), Requested Lifetime, Client IP, data, options (§7.1). */
export function encodePcpRequest(r: PcpRequestInput): Buffer {
  if (!Number.isInteger(r.opcode) || r.opcode < 0 || r.opcode > 127) throw new RangeError(`bad opcode ${r.opcode}`);
  const head = Buffer.alloc(PCP_HEADER_LENGTH);
  head[0] = PCP_VERSION;
  head[1] = r.opcode & 0x7f; // R bit 0 = request
  head.writeUInt32BE(r.lifetime >>> 0, 4);
  encodePcpAddress(r.clientAddress, head, 8);
  return Buffer.concat([head, opcodeBody(r.opcode, r.map, r.peer, r.opcodeData), encodePcpOptions(r.options ?? [])]);
}

export interface PcpRequestDecodeOptions extends PcpOptionRules {
  /** Skip validatePcpOptions (structure is still checked). */
  skipOptionRules?: boolean;
}

/**
 * Decodes and validates a request in the order of RFC 6887 §8.3:
 *  1. shorter than 2 bytes: silent drop;
 *  2. version 0 (NAT-PMP): UNSUPP_VERSION with `natPmp` (answer with encodeNatPmpUnsupportedVersion, §9),
 *     except a NAT-PMP response (opcode ≥ 128), dropped silently;
 *  3. any other version than 2: UNSUPP_VERSION (§9);
 *  4. R bit set (a response): silent drop;
 *  5. shorter than 24 bytes, longer than 1100, or not a multiple of 4: MALFORMED_REQUEST (§7, §8.3);
 *  6. an opcode not known: UNSUPP_OPCODE;
 *  7. shorter than the opcode's data: MALFORMED_REQUEST;
 *  8. option structure: MALFORMED_OPTION; option rules (validatePcpOptions): UNSUPP_OPTION / MALFORMED_OPTION.
 * The error carries the header fields that could be read.
 */
export function decodePcpRequest(buf: Buffer, opts: PcpRequestDecodeOptions = {}): PcpDecoded<PcpRequest> {
  if (buf.length < 2)
    return { ok: false, error: { result: Result.MALFORMED_REQUEST, silent: true, natPmp: false, reason: 'shorter than 2 bytes' } };
  const version = buf[0]!;
  if (version === NATPMP_VERSION) {
    // RFC 6886 §3: NAT-PMP opcodes ≥ 128 are responses; never answer those.
    if (buf[1]! >= 128)
      return { ok: false, error: { result: Result.UNSUPP_VERSION, silent: true, natPmp: true, reason: 'NAT-PMP response', version } };
    return fail(Result.UNSUPP_VERSION, 'NAT-PMP (version 0) request', { natPmp: true, version, opcode: buf[1]! });
  }
  if (version !== PCP_VERSION) return fail(Result.UNSUPP_VERSION, `version ${version}`, { version, opcode: buf[1]! & 0x7f });
  if (buf[1]! & 0x80)
    return {
      ok: false,
      error: { result: Result.MALFORMED_REQUEST, silent: true, natPmp: false, reason: 'R bit set (a response)', version },
    };
  const opcode = buf[1]! & 0x7f;
  const head: Partial<PcpDecodeError> = { version, opcode };
  if (buf.length >= 8) head.lifetime = buf.readUInt32BE(4);
  if (buf.length >= PCP_HEADER_LENGTH) head.clientAddress = decodePcpAddress(buf, 8);
  if (buf.length < PCP_HEADER_LENGTH) return fail(Result.MALFORMED_REQUEST, 'shorter than the 24-byte header', head);
  if (buf.length > PCP_MAX_MESSAGE) return fail(Result.MALFORMED_REQUEST, 'longer than 1100 bytes', head);
  if (buf.length % 4) return fail(Result.MALFORMED_REQUEST, 'length not a multiple of 4', head);
  const blen = bodyLength(opcode);
  if (blen === undefined) return fail(Result.UNSUPP_OPCODE, `opcode ${opcode}`, head);
  if (buf.length < PCP_HEADER_LENGTH + blen) return fail(Result.MALFORMED_REQUEST, 'shorter than the opcode data', head);
  const options = decodePcpOptions(buf, PCP_HEADER_LENGTH + blen);
  if (!options.ok) return { ok: false, error: { ...options.error, ...head } };
  if (!opts.skipOptionRules) {
    const bad = validatePcpOptions(opcode, options.value, opts);
    if (bad) return { ok: false, error: { ...bad, ...head } };
  }
  const req: PcpRequest = {
    version: PCP_VERSION,
    opcode,
    lifetime: head.lifetime!,
    clientAddress: head.clientAddress!,
    opcodeData: Buffer.from(buf.subarray(PCP_HEADER_LENGTH, PCP_HEADER_LENGTH + blen)),
    options: options.value,
  };
  if (opcode === Opcode.MAP) req.map = readMap(buf, PCP_HEADER_LENGTH);
  else if (opcode === Opcode.PEER) req.peer = readPeer(buf, PCP_HEADER_LENGTH);
  return { ok: true, value: req };
}

// ---------------------------------------------------------------------------------
// Responses (§7.2)

export interface PcpResponseInput {
  opcode: number;
  result: number;
  lifetime: number;
  epoch: number;
  map?: PcpMapData;
  peer?: PcpPeerData;
  opcodeData?: Buffer;
  options?: readonly PcpOption[];
}

function responseHeader(opcode: number, result: number, lifetime: number, epoch: number, version = PCP_VERSION): Buffer {
  const h = Buffer.alloc(PCP_HEADER_LENGTH);
  h[0] = version;
  h[1] = 0x80 | (opcode & 0x7f); // R bit 1 = response
  // h[2] Reserved (8): 0
  h[3] = result & 0xff;
  h.writeUInt32BE(lifetime >>> 0, 4);
  h.writeUInt32BE(epoch >>> 0, 8);
  // h[12..24] Reserved (96): 0
  return h;
}

/** Encodes a response: Version 2, R=1, Opcode, Reserved (8), Result Code, Lifetime, Epoch Time, Reserved (96), data, options (§7.2). */
export function encodePcpResponse(r: PcpResponseInput): Buffer {
  if (!Number.isInteger(r.opcode) || r.opcode < 0 || r.opcode > 127) throw new RangeError(`bad opcode ${r.opcode}`);
  return Buffer.concat([
    responseHeader(r.opcode, r.result, r.lifetime, r.epoch),
    opcodeBody(r.opcode, r.map, r.peer, r.opcodeData),
    encodePcpOptions(r.options ?? []),
  ]);
}

/**
 * The error response of §8.3: "a complete copy of the request packet with the error code
 * and other appropriate fields set in the header": the response header (Version 2, R=1,
 * the request's opcode, result, lifetime, epoch) followed by the request's bytes after
 * its header: for a known opcode its data and its well-formed options (a malformed
 * option and what follows it are not copied, so the answer itself decodes); for an
 * unknown opcode the rest as is (§8.3); cut to 1100 bytes and zero-padded to a multiple
 * of 4 (§7). A known opcode's data cut short (or absent: a request shorter than 24
 * bytes, UNSUPP_VERSION) is zero-filled to its length, so the answer has its opcode's
 * layout. For UNSUPP_VERSION the version field says 2, the version supported (§9).
 */
export function encodePcpErrorResponse(request: Buffer, result: number, lifetime: number, epoch: number): Buffer {
  const opcode = request.length >= 2 ? request[1]! & 0x7f : 0;
  const head = responseHeader(opcode, result, lifetime, epoch);
  // UNSUPP_VERSION: the request's layout is unknown, nothing after its header is copied.
  let rest = result === Result.UNSUPP_VERSION ? Buffer.alloc(0) : request.subarray(PCP_HEADER_LENGTH, PCP_MAX_MESSAGE);
  const blen = bodyLength(opcode);
  if (blen !== undefined && rest.length < blen) {
    // A known opcode cut short: what there is of its data, zero-filled to its length, so
    // the answer has the layout of its opcode (a MAP answer always carries §11.1's 36 bytes).
    const body = Buffer.alloc(blen);
    rest.copy(body, 0);
    rest = body;
  } else if (blen !== undefined) {
    // A known opcode: its data, then the options up to the first malformed one (the
    // response must itself be well-formed, §7.3, so the client can decode and match it).
    let p = blen;
    while (rest.length - p >= 4) {
      const padded = (rest.readUInt16BE(p + 2) + 3) & ~3;
      if (p + 4 + padded > rest.length) break;
      p += 4 + padded;
    }
    rest = rest.subarray(0, p);
  }
  const out = Buffer.alloc(PCP_HEADER_LENGTH + ((rest.length + 3) & ~3));
  head.copy(out, 0);
  rest.copy(out, PCP_HEADER_LENGTH);
  return out;
}

/** Decodes a response (for PCP clients). Structure only; unknown opcodes keep `opcodeData` raw. */
export function decodePcpResponse(buf: Buffer): PcpDecoded<PcpResponse> {
  if (buf.length < 2) return fail(Result.MALFORMED_REQUEST, 'shorter than 2 bytes');
  const version = buf[0]!;
  if (version === NATPMP_VERSION) return fail(Result.UNSUPP_VERSION, 'a NAT-PMP message', { natPmp: true, version });
  if (version !== PCP_VERSION) {
    // §9: an UNSUPP_VERSION response names the version the server supports.
    return fail(Result.UNSUPP_VERSION, `version ${version}`, { version });
  }
  if (!(buf[1]! & 0x80)) return fail(Result.MALFORMED_REQUEST, 'R bit clear (a request)', { version });
  const opcode = buf[1]! & 0x7f;
  if (buf.length < PCP_HEADER_LENGTH || buf.length > PCP_MAX_MESSAGE || buf.length % 4)
    return fail(Result.MALFORMED_REQUEST, 'bad response length', { version, opcode });
  const result = buf[3]!;
  const lifetime = buf.readUInt32BE(4);
  const epoch = buf.readUInt32BE(8);
  const known = bodyLength(opcode);
  let blen = known ?? buf.length - PCP_HEADER_LENGTH;
  let withOptions = known !== undefined;
  // An error response may carry less than the opcode's data (§9 UNSUPP_VERSION is a bare
  // header; a short request is copied as is, §8.3); an unknown opcode's payload is opaque.
  if (buf.length < PCP_HEADER_LENGTH + blen) {
    if (result === Result.SUCCESS) return fail(Result.MALFORMED_REQUEST, 'shorter than the opcode data', { version, opcode });
    blen = buf.length - PCP_HEADER_LENGTH;
    withOptions = false;
  }
  const options = withOptions ? decodePcpOptions(buf, PCP_HEADER_LENGTH + blen) : ({ ok: true, value: [] } as PcpDecoded<PcpOption[]>);
  if (!options.ok) return { ok: false, error: { ...options.error, version, opcode } };
  const res: PcpResponse = {
    version: PCP_VERSION,
    opcode,
    result,
    lifetime,
    epoch,
    opcodeData: Buffer.from(buf.subarray(PCP_HEADER_LENGTH, PCP_HEADER_LENGTH + blen)),
    options: options.value,
  };
  if (blen === MAP_BODY_LENGTH && opcode === Opcode.MAP) res.map = readMap(buf, PCP_HEADER_LENGTH);
  else if (blen === PEER_BODY_LENGTH && opcode === Opcode.PEER) res.peer = readPeer(buf, PCP_HEADER_LENGTH);
  return { ok: true, value: res };
}

// ---------------------------------------------------------------------------------
// NAT-PMP (RFC 6886) for the version negotiation of RFC 6887 §9

/** RFC 6886 §3.5 result code 1: Unsupported Version. */
export const NATPMP_RESULT_UNSUPPORTED_VERSION = 1;

/**
 * RFC 6887 §9 / RFC 6886 §3.5: the answer of a PCP-only server to a NAT-PMP request: a
 * NAT-PMP response, Version 0, Opcode 128 + the request's, Result Code 1 (Unsupported
 * Version, 16 bits), Seconds Since Start of Epoch (32 bits). The rest of the response of
 * that opcode follows as zeros (External Address for opcode 0, §3.2; Internal Port
 * copied, Mapped Port and Lifetime 0 for opcodes 1 and 2, §3.3) so that a client reading
 * the full-length response finds one. Null for a datagram that is not a NAT-PMP request.
 */
export function encodeNatPmpUnsupportedVersion(request: Buffer, epoch: number): Buffer | null {
  if (request.length < 2 || request[0] !== NATPMP_VERSION || request[1]! >= 128) return null;
  const op = request[1]!;
  const len = op === 0 ? 12 : op === 1 || op === 2 ? 16 : 8;
  const out = Buffer.alloc(len);
  out[0] = NATPMP_VERSION;
  out[1] = 128 + op;
  out.writeUInt16BE(NATPMP_RESULT_UNSUPPORTED_VERSION, 2);
  out.writeUInt32BE(epoch >>> 0, 4);
  if (len === 16 && request.length >= 6) request.copy(out, 8, 4, 6); // RFC 6886 §3.3: Internal Port of the request
  return out;
}
