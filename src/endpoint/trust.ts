/**
 * Gateway trust for a compliant endpoint (key-escrow.md §1, §2.1): the gateway
 * certificate is trusted when its SHA-256 fingerprint equals a pinned value, or when it
 * chains to a configured CA. A KEY-REQUEST is accepted only when its fingerprint is the
 * trusted certificate's and its signature verifies with that certificate's P-256 key.
 *
 * Public API:
 *   interface TrustConfig { pinnedFingerprints?: string[]; caPem?: string }
 *   class GatewayTrust(cfg, clock?)
 *     .evaluate(certPemBundle): TrustedGateway      — throws TrustError when not trusted
 *     .acceptKeyRequest(gw, transactionId, kr): void — throws TrustError
 *   interface TrustedGateway { fingerprint: Buffer; fingerprintHex: string; subject: string; publicKey: KeyObject }
 *   parseFingerprint(hex) : Buffer  (accepts "AA:BB:..." or plain hex)
 *   fetchGatewayCertificate(url, timeoutMs?): Promise<string>
 */
import { X509Certificate, createHash, type KeyObject } from 'node:crypto';
import { verifyKeyRequest, type KeyRequest } from '../wire/escrow.js';
import { GatehouseError } from '../util/errors.js';
import { systemClock, type Clock } from '../util/clock.js';

export class TrustError extends GatehouseError {
  constructor(readonly reason: string) {
    super('E_GATEWAY_TRUST', `gateway not trusted: ${reason}`, { reason });
    this.name = 'TrustError';
  }
}

export interface TrustConfig {
  /** SHA-256 fingerprints of trusted gateway certificates (hex, colons allowed). */
  pinnedFingerprints?: string[];
  /** PEM of one or more trusted CA certificates. */
  caPem?: string;
}

export interface TrustedGateway {
  fingerprint: Buffer;
  fingerprintHex: string;
  subject: string;
  publicKey: KeyObject;
  via: 'pin' | 'ca';
}

export function parseFingerprint(s: string): Buffer {
  const h = s.replace(/[:\s]/g, '');
  if (!/^[0-9a-fA-F]{64}$/.test(h)) throw new TrustError('a fingerprint is 32 bytes of hex (SHA-256)');
  return Buffer.from(h, 'hex');
}

const PEM_RE = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

function splitPem(pem: string): X509Certificate[] {
  const blocks = pem.match(PEM_RE) ?? [];
  const out: X509Certificate[] = [];
  for (const b of blocks.slice(0, 16)) {
    try {
      out.push(new X509Certificate(b));
    } catch {
      throw new TrustError('malformed certificate PEM');
    }
  }
  return out;
}

export class GatewayTrust {
  private readonly pins: Buffer[];
  private readonly cas: X509Certificate[];

  constructor(
    cfg: TrustConfig,
    private readonly clock: Clock = systemClock,
  ) {
    this.pins = (cfg.pinnedFingerprints ?? []).map(parseFingerprint);
    this.cas = cfg.caPem ? splitPem(cfg.caPem) : [];
    if (cfg.caPem && this.cas.length === 0) throw new TrustError('no CA certificate in the configured CA file');
    if (this.pins.length === 0 && this.cas.length === 0) throw new TrustError('no pinned fingerprint and no CA configured');
  }

  private inValidity(c: X509Certificate): boolean {
    const now = this.clock.now();
    return Date.parse(c.validFrom) <= now && now <= Date.parse(c.validTo);
  }

  /** `pem`: the gateway certificate first, then any intermediates. */
  evaluate(pem: string): TrustedGateway {
    const chain = splitPem(pem);
    const leaf = chain[0];
    if (!leaf) throw new TrustError('no certificate');
    const fingerprint = createHash('sha256').update(leaf.raw).digest();
    const pk = leaf.publicKey;
    // key-escrow.md §1: the gateway key is ECDSA P-256.
    if (pk.asymmetricKeyType !== 'ec' || pk.asymmetricKeyDetails?.namedCurve !== 'prime256v1')
      throw new TrustError('gateway key is not ECDSA P-256');
    let via: 'pin' | 'ca' | null = null;
    if (this.pins.some((p) => p.equals(fingerprint))) via = 'pin';
    else if (this.cas.length && this.chainsToCa(chain)) via = 'ca';
    if (!via)
      throw new TrustError(
        this.cas.length
          ? 'certificate does not match a pin nor chain to the configured CA'
          : 'certificate fingerprint does not match the pin',
      );
    if (!this.inValidity(leaf)) throw new TrustError('certificate outside its validity period');
    return { fingerprint, fingerprintHex: fingerprint.toString('hex'), subject: leaf.subject, publicKey: pk, via };
  }

  private chainsToCa(chain: X509Certificate[]): boolean {
    let cur = chain[0]!;
    const pool = chain.slice(1);
    for (let depth = 0; depth < 8; depth++) {
      for (const ca of this.cas) {
        if (cur.checkIssued(ca) && cur.verify(ca.publicKey) && this.inValidity(ca)) return true;
      }
      const next = pool.find((p) => p.ca && cur.checkIssued(p) && cur.verify(p.publicKey) && this.inValidity(p));
      if (!next) return false;
      cur = next;
    }
    return false;
  }

  /** key-escrow.md §2.1: fingerprint must be the trusted certificate's; signature over the response transaction ID. */
  acceptKeyRequest(gw: TrustedGateway, transactionId: Buffer, kr: KeyRequest): void {
    if (!kr.fingerprint.equals(gw.fingerprint)) throw new TrustError('KEY-REQUEST names another certificate');
    if (!verifyKeyRequest('turn', transactionId, kr, gw.publicKey)) throw new TrustError('KEY-REQUEST signature does not verify');
  }
}

/** GET the gateway certificate PEM (e.g. http://127.0.0.1:8080/v1/gateway/certificate). */
export async function fetchGatewayCertificate(url: string, timeoutMs = 10_000): Promise<string> {
  const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  if (!res.ok) throw new TrustError(`certificate URL answered ${res.status}`);
  const text = await res.text();
  if (text.length > 64 * 1024) throw new TrustError('certificate document too large');
  return text;
}
