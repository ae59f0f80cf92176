/**
 * The one P-256 check: ECDSA keys on NIST P-256 (secp256r1, OpenSSL's `prime256v1`, RFC 5480
 * §2.1.1.1), the curve of ES256 (RFC 7518 §3.4) and of the core's keys (core.md §5, §6).
 */
import type { KeyObject } from 'node:crypto';

/** Whether `key` (public or private) is an EC key on P-256. */
export function isP256(key: KeyObject): boolean {
  return key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1';
}
