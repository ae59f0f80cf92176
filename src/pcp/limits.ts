/**
 * Small bounded helpers of the PCP server: a per-client request rate limit and CIDR
 * matching for the THIRD_PARTY allow list (RFC 6887 §13.1, config pcp.third_party).
 */
import { isIP } from 'node:net';
import { encodePcpAddress } from '../wire/pcp.js';

/** Token buckets per client address, at most `maxClients` (the least recently seen is forgotten). */
export class ClientRateLimit {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();

  constructor(
    /** Requests per second (and the burst: one second's worth). */
    private readonly rate: number,
    private readonly maxClients: number,
    private readonly now: () => number,
  ) {}

  get size(): number {
    return this.buckets.size;
  }

  /** True when the client may send one more request now. */
  take(client: string): boolean {
    const t = this.now();
    let b = this.buckets.get(client);
    if (b) {
      this.buckets.delete(client); // re-insert: Map order is recency
      b.tokens = Math.min(this.rate, b.tokens + ((t - b.at) / 1000) * this.rate);
      b.at = t;
    } else {
      b = { tokens: this.rate, at: t };
      if (this.buckets.size >= this.maxClients) {
        const oldest = this.buckets.keys().next().value;
        if (oldest !== undefined) this.buckets.delete(oldest);
      }
    }
    this.buckets.set(client, b);
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }
}

interface Cidr {
  bytes: Buffer;
  bits: number;
}

/** "10.0.0.0/8", "2001:db8::/32" or a bare address; IPv4 is matched in its IPv4-mapped form (RFC 6887 §5). */
export function parseCidr(s: string): Cidr {
  const [addr, len] = s.split('/') as [string, string | undefined];
  const v = isIP(addr);
  if (!v) throw new RangeError(`bad CIDR ${JSON.stringify(s)}`);
  const max = v === 4 ? 32 : 128;
  const n = len === undefined ? max : Number(len);
  if (!Number.isInteger(n) || n < 0 || n > max) throw new RangeError(`bad CIDR ${JSON.stringify(s)}`);
  return { bytes: encodePcpAddress(addr), bits: v === 4 ? n + 96 : n };
}

export class CidrList {
  private readonly list: Cidr[];

  constructor(cidrs: readonly string[]) {
    this.list = cidrs.map(parseCidr);
  }

  get empty(): boolean {
    return this.list.length === 0;
  }

  has(address: string): boolean {
    if (!isIP(address)) return false;
    const a = encodePcpAddress(address);
    return this.list.some((c) => prefixMatch(a, c.bytes, c.bits));
  }
}

export function prefixMatch(a: Buffer, b: Buffer, bits: number): boolean {
  const full = bits >> 3;
  for (let i = 0; i < full; i++) if (a[i] !== b[i]) return false;
  const rest = bits & 7;
  if (!rest) return true;
  const mask = (0xff << (8 - rest)) & 0xff;
  return (a[full]! & mask) === (b[full]! & mask);
}

/** The network address of addr/bits (bits over the 128-bit form), as 16 bytes. */
export function maskAddress(a: Buffer, bits: number): Buffer {
  const out = Buffer.from(a);
  for (let i = 0; i < 16; i++) {
    const keep = Math.max(0, Math.min(8, bits - i * 8));
    out[i] = out[i]! & ((0xff << (8 - keep)) & 0xff);
  }
  return out;
}
