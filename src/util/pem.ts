/**
 * PEM textual encoding (RFC 7468): the DER inside `-----BEGIN LABEL-----` ...
 * `-----END LABEL-----` blocks (§2), e.g. `CERTIFICATE` (§5) or `X509 CRL` (§6). The base64
 * between the boundaries may be broken by any whitespace (the lax parsing §3 allows);
 * text outside the blocks (explanatory text, §5.2) is ignored.
 */

const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** Whether the text has a `-----BEGIN label-----` boundary (RFC 7468 §2), well-formed block or not. */
export function hasPemBegin(text: string, label: string): boolean {
  return text.includes(`-----BEGIN ${label}-----`);
}

/** The DER bytes of every `label` block of `text`, in order; [] when there is none. */
export function pemBlocks(text: string, label: string): Buffer[] {
  const l = escape(label);
  const re = new RegExp(`-----BEGIN ${l}-----([A-Za-z0-9+/=\\s]+)-----END ${l}-----`, 'g');
  return [...text.matchAll(re)].map((b) => Buffer.from(b[1]!.replace(/\s+/g, ''), 'base64'));
}
