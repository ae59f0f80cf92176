/**
 * EAP packet codec (RFC 3748 §4) and EAP-TLS framing (RFC 5216 §3.1, also used by
 * RFC 9190 for TLS 1.3): the Flags octet (L, M, S), the optional TLS Message Length,
 * fragmentation of a TLS flight into EAP-TLS fragments and bounded reassembly.
 *
 * Pure: no I/O, no clock, imports nothing of ours. Decoders return null on malformed
 * input (never throw); encoders throw RangeError only on programmer errors.
 *
 * API:
 *   decodeEap(buf) → EapPacket | null          RFC 3748 §4 (Code, Identifier, Length, Type, Type-Data)
 *   encodeEap(p) → Buffer
 *   decodeEapTls(typeData) → EapTlsFragment | null    RFC 5216 §3.1
 *   encodeEapTls(f) → Buffer (the Type-Data: Flags [Length] [Data])
 *   fragmentTls(data, maxFragment) → EapTlsFragment[]  (L on the first of several, M on all but the last)
 *   class EapTlsReassembler(maxTotal)                  push(fragment) → {done, data} | {more} | {error}
 *   eapTlsMskFrom(keyMaterial) → Buffer                RFC 5216 §2.3 / RFC 9190 §2.3: MSK = first 64 octets
 */

/** RFC 3748 §4: Code field. */
export const EapCode = {
  Request: 1,
  Response: 2,
  Success: 3,
  Failure: 4,
} as const;

/** RFC 3748 §5 and IANA "Method Types": the types used here. */
export const EapType = {
  Identity: 1,
  Notification: 2,
  Nak: 3, // RFC 3748 §5.3.1 (legacy Nak)
  Tls: 13, // RFC 5216 §3.1
} as const;

/** RFC 5216 §3.1: Flags octet bits (L = length included, M = more fragments, S = start). */
export const EapTlsFlag = {
  L: 0x80,
  M: 0x40,
  S: 0x20,
} as const;

export interface EapPacket {
  code: number;
  identifier: number;
  /** Request/Response only (RFC 3748 §4.1); undefined for Success/Failure (§4.2). */
  type?: number;
  /** The Type-Data (Request/Response) — empty for Success/Failure. */
  data: Buffer;
}

/** RFC 3748 §4: a packet is at least 4 octets; Request/Response carry a Type octet (5+). */
export function decodeEap(buf: Buffer): EapPacket | null {
  if (buf.length < 4) return null;
  const code = buf[0]!;
  const identifier = buf[1]!;
  const length = buf.readUInt16BE(2);
  // RFC 3748 §4.1: octets beyond Length are padding and ignored; fewer is malformed.
  if (length < 4 || length > buf.length) return null;
  if (code === EapCode.Request || code === EapCode.Response) {
    if (length < 5) return null;
    return { code, identifier, type: buf[4]!, data: Buffer.from(buf.subarray(5, length)) };
  }
  if (code === EapCode.Success || code === EapCode.Failure) {
    // RFC 3748 §4.2: Success and Failure have Length 4 (no data).
    return { code, identifier, data: Buffer.alloc(0) };
  }
  return null;
}

export function encodeEap(p: EapPacket): Buffer {
  if (p.code === EapCode.Success || p.code === EapCode.Failure) {
    const b = Buffer.alloc(4);
    b[0] = p.code;
    b[1] = p.identifier & 0xff;
    b.writeUInt16BE(4, 2);
    return b;
  }
  if (p.type === undefined) throw new RangeError('EAP Request/Response needs a Type');
  const len = 5 + p.data.length;
  if (len > 0xffff) throw new RangeError('EAP packet too long');
  const b = Buffer.alloc(len);
  b[0] = p.code;
  b[1] = p.identifier & 0xff;
  b.writeUInt16BE(len, 2);
  b[4] = p.type;
  p.data.copy(b, 5);
  return b;
}

export interface EapTlsFragment {
  flags: number;
  /** RFC 5216 §3.1 TLS Message Length: present iff the L flag is set. */
  totalLength?: number;
  data: Buffer;
}

/** Type-Data of an EAP-TLS packet (after the Type octet 13). */
export function decodeEapTls(typeData: Buffer): EapTlsFragment | null {
  if (typeData.length < 1) return null;
  const flags = typeData[0]!;
  if (flags & EapTlsFlag.L) {
    if (typeData.length < 5) return null;
    return { flags, totalLength: typeData.readUInt32BE(1), data: Buffer.from(typeData.subarray(5)) };
  }
  return { flags, data: Buffer.from(typeData.subarray(1)) };
}

export function encodeEapTls(f: EapTlsFragment): Buffer {
  const withLen = (f.flags & EapTlsFlag.L) !== 0;
  const b = Buffer.alloc(1 + (withLen ? 4 : 0) + f.data.length);
  b[0] = f.flags;
  if (withLen) b.writeUInt32BE(f.totalLength ?? f.data.length, 1);
  f.data.copy(b, withLen ? 5 : 1);
  return b;
}

/**
 * Splits a TLS flight into EAP-TLS fragments of at most maxFragment data octets.
 * RFC 5216 §3.1: "The L flag ... MUST be set for the first fragment of a fragmented TLS
 * message or set of messages"; "The M flag is set on all but the last fragment".
 * An unfragmented message is sent without L (allowed: L is only required when fragmented).
 */
export function fragmentTls(data: Buffer, maxFragment: number): EapTlsFragment[] {
  if (maxFragment < 1) throw new RangeError('fragment size must be positive');
  if (data.length <= maxFragment) return [{ flags: 0, data }];
  const out: EapTlsFragment[] = [];
  for (let off = 0; off < data.length; off += maxFragment) {
    const chunk = data.subarray(off, Math.min(off + maxFragment, data.length));
    const last = off + maxFragment >= data.length;
    let flags = last ? 0 : EapTlsFlag.M;
    if (off === 0) flags |= EapTlsFlag.L;
    out.push({ flags, totalLength: off === 0 ? data.length : undefined, data: Buffer.from(chunk) });
  }
  return out;
}

export type ReassemblyResult = { done: true; data: Buffer } | { done: false; error?: string };

/**
 * Reassembles EAP-TLS fragments (RFC 5216 §3.1, §3.2: each fragment but the last has M,
 * the receiver acknowledges it with an empty EAP-TLS packet). Bounded: a TLS Message
 * Length or a sum of fragments above maxTotal is an error and the buffer is dropped.
 */
export class EapTlsReassembler {
  private parts: Buffer[] = [];
  private have = 0;
  private expected: number | null = null;

  constructor(readonly maxTotal: number) {}

  get inProgress(): boolean {
    return this.parts.length > 0;
  }

  reset(): void {
    this.parts = [];
    this.have = 0;
    this.expected = null;
  }

  push(f: EapTlsFragment): ReassemblyResult {
    if (f.flags & EapTlsFlag.L && f.totalLength !== undefined && this.parts.length === 0) {
      if (f.totalLength > this.maxTotal) {
        this.reset();
        return { done: false, error: 'TLS message length above the limit' };
      }
      this.expected = f.totalLength;
    }
    this.have += f.data.length;
    if (this.have > this.maxTotal || (this.expected !== null && this.have > this.expected)) {
      this.reset();
      return { done: false, error: this.have > this.maxTotal ? 'TLS message above the limit' : 'fragments exceed the TLS message length' };
    }
    this.parts.push(f.data);
    if (f.flags & EapTlsFlag.M) return { done: false };
    if (this.expected !== null && this.have !== this.expected) {
      this.reset();
      return { done: false, error: 'fragments shorter than the TLS message length' };
    }
    const data = Buffer.concat(this.parts);
    this.reset();
    return { done: true, data };
  }
}

/** RFC 5216 §2.3 (TLS 1.2) and RFC 9190 §2.3 (TLS 1.3): MSK = Key_Material(0, 63). */
export function eapTlsMskFrom(keyMaterial: Buffer): Buffer {
  if (keyMaterial.length < 64) throw new RangeError('EAP-TLS key material must be at least 64 octets');
  return Buffer.from(keyMaterial.subarray(0, 64));
}

/** RFC 5216 §2.3: exporter label and length for TLS 1.2 (no context: RFC 5705 without context_value). */
export const EAP_TLS12_EXPORTER = { label: 'client EAP encryption', length: 128 } as const;
/** RFC 9190 §2.3: TLS-Exporter("EXPORTER_EAP_TLS_Key_Material", Type-Code 0x0D, 128). */
export const EAP_TLS13_EXPORTER = { label: 'EXPORTER_EAP_TLS_Key_Material', context: Buffer.from([EapType.Tls]), length: 128 } as const;

/**
 * RFC 5705 §4: an exporter call "without context" differs from one with an empty context.
 * node's exportKeyingMaterial uses no context when the third argument is undefined (its
 * type declaration requires a Buffer): pass this.
 */
export const NO_CONTEXT = undefined as unknown as Buffer;
