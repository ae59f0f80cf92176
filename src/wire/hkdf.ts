/**
 * HKDF (RFC 5869) and the TLS 1.3 / DTLS 1.3 key-schedule helpers (RFC 8446 §7) used by
 * the DTLS 1.3 record decryptor and by SRTP key extraction. Pure: no I/O, no clock.
 *
 * API:
 *   type HashName = 'sha256' | 'sha384'
 *   hashLength(hash): number
 *   hkdfExtract(hash, salt, ikm): Buffer                          RFC 5869 §2.2
 *   hkdfExpand(hash, prk, info, length): Buffer                   RFC 5869 §2.3
 *   hkdfExpandLabel(hash, secret, label, context, length, prefix?) RFC 8446 §7.1
 *   deriveSecret(hash, secret, label, transcriptHash, prefix?)    RFC 8446 §7.1
 *   tls13Exporter(hash, exporterSecret, label, context, length, prefix?)  RFC 8446 §7.5
 *   srtpKeysFromExporter(hash, exporterSecret, profile, prefix?)  RFC 5764 §4.2 split
 *   TLS13_PREFIX = 'tls13 ', DTLS13_PREFIX = 'dtls13' (RFC 9147 §5.9)
 *
 * Labels and contexts are given without the prefix; `prefix` defaults to the TLS one.
 * Inputs of the wrong size throw RangeError (these are programming errors, not wire input).
 */
import { createHash, createHmac } from 'node:crypto';

export type HashName = 'sha256' | 'sha384';

/** RFC 8446 §7.1: the label prefix of TLS 1.3. */
export const TLS13_PREFIX = 'tls13 ';
/** RFC 9147 §5.9: DTLS 1.3 uses "dtls13" instead of "tls13 " in HkdfLabel. */
export const DTLS13_PREFIX = 'dtls13';

export function hashLength(hash: HashName): number {
  return hash === 'sha384' ? 48 : 32;
}

/** RFC 5869 §2.2: PRK = HMAC-Hash(salt, IKM); an empty salt means HashLen zero bytes. */
export function hkdfExtract(hash: HashName, salt: Buffer | null, ikm: Buffer): Buffer {
  const s = salt && salt.length > 0 ? salt : Buffer.alloc(hashLength(hash));
  return createHmac(hash, s).update(ikm).digest();
}

/** RFC 5869 §2.3: OKM = T(1) | T(2) | ... truncated to `length` (at most 255*HashLen). */
export function hkdfExpand(hash: HashName, prk: Buffer, info: Buffer, length: number): Buffer {
  const hl = hashLength(hash);
  if (!Number.isInteger(length) || length < 0 || length > 255 * hl) {
    throw new RangeError('hkdfExpand: length out of range'); // RFC 5869 §2.3: L <= 255*HashLen
  }
  const out = Buffer.allocUnsafe(Math.ceil(length / hl) * hl);
  let prev: Buffer = Buffer.alloc(0);
  for (let i = 1, off = 0; off < length; i++, off += hl) {
    const h = createHmac(hash, prk);
    h.update(prev);
    h.update(info);
    h.update(Buffer.of(i));
    prev = h.digest();
    prev.copy(out, off);
  }
  return out.subarray(0, length);
}

/**
 * RFC 8446 §7.1:
 *   struct { uint16 length; opaque label<7..255> = prefix + Label; opaque context<0..255>; } HkdfLabel;
 *   HKDF-Expand-Label(Secret, Label, Context, Length) = HKDF-Expand(Secret, HkdfLabel, Length)
 */
export function hkdfExpandLabel(
  hash: HashName,
  secret: Buffer,
  label: string,
  context: Buffer,
  length: number,
  prefix: string = TLS13_PREFIX,
): Buffer {
  const fullLabel = Buffer.from(prefix + label, 'latin1');
  if (fullLabel.length > 255 || context.length > 255 || length > 0xffff) {
    throw new RangeError('hkdfExpandLabel: field too long');
  }
  const info = Buffer.allocUnsafe(2 + 1 + fullLabel.length + 1 + context.length);
  let o = info.writeUInt16BE(length, 0);
  o = info.writeUInt8(fullLabel.length, o);
  o += fullLabel.copy(info, o);
  o = info.writeUInt8(context.length, o);
  context.copy(info, o);
  return hkdfExpand(hash, secret, info, length);
}

/** RFC 8446 §7.1: Derive-Secret(Secret, Label, Messages) with Transcript-Hash(Messages) given. */
export function deriveSecret(hash: HashName, secret: Buffer, label: string, transcriptHash: Buffer, prefix: string = TLS13_PREFIX): Buffer {
  return hkdfExpandLabel(hash, secret, label, transcriptHash, hashLength(hash), prefix);
}

/**
 * RFC 8446 §7.5:
 *   TLS-Exporter(label, context_value, key_length) =
 *     HKDF-Expand-Label(Derive-Secret(Secret, label, ""), "exporter", Hash(context_value), key_length)
 * Secret is the exporter_master_secret (the key log's EXPORTER_SECRET). TLS 1.3 makes no
 * difference between an absent and an empty context (§7.5).
 */
export function tls13Exporter(
  hash: HashName,
  exporterSecret: Buffer,
  label: string,
  context: Buffer,
  length: number,
  prefix: string = TLS13_PREFIX,
): Buffer {
  const empty = createHash(hash).digest();
  const s = deriveSecret(hash, exporterSecret, label, empty, prefix);
  const ctxHash = createHash(hash).update(context).digest();
  const out = hkdfExpandLabel(hash, s, 'exporter', ctxHash, length, prefix);
  s.fill(0); // the derived exporter secret is key material: not kept
  return out;
}
