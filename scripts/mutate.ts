// Seeded randomness and mutations shared by the fuzzers: the offline parser fuzzer
// (test/unit/fuzz.test.ts) and the live one (scripts/fuzz.ts, test/unit/fuzz-live.test.ts).

/** mulberry32: small, fast, seeded. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

/** Length fields worth lying about: STUN/ChannelData length (2), DTLS record length (11), DTLS handshake length (14). */
export const LENGTH_OFFSETS = [2, 2, 11, 14, 22];

export interface MutatorOptions {
  /** Known length-field offsets, lied about more often than random positions. */
  lengthOffsets?: readonly number[];
  /** Outputs are cut to this length (a UDP datagram the kernel carries on loopback: 1400). */
  maxLength?: number;
}

/** Seeded mutations of valid packets: bit flips, interesting bytes, truncation, length lies, splices, duplicated chunks, insertions. */
export class Mutator {
  constructor(
    readonly r: () => number,
    private readonly opts: MutatorOptions = {},
  ) {}
  int(n: number): number {
    return Math.floor(this.r() * n);
  }
  chance(p: number): boolean {
    return this.r() < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
  mutate(seed: Buffer, corpus: readonly Buffer[]): Buffer {
    let b = Buffer.from(seed);
    const rounds = 1 + this.int(3);
    for (let i = 0; i < rounds; i++) {
      switch (this.int(8)) {
        case 0: {
          if (b.length === 0) break;
          const n = 1 + this.int(4);
          for (let k = 0; k < n; k++) {
            const p = this.int(b.length);
            b[p] = b[p]! ^ (1 << this.int(8));
          }
          break;
        }
        case 1:
          if (b.length === 0) break;
          b[this.int(b.length)] = this.pick([0, 1, 0x7f, 0x80, 0xff, 0xfe, 0x40, 0x16, 0x17, 0x14, 0x15, 0x18, 0x19]);
          break;
        case 2:
          b = b.subarray(0, this.int(b.length + 1));
          break;
        case 3: {
          // a 16-bit length-field lie, at a known length offset or anywhere
          if (b.length < 2) break;
          const known = (this.opts.lengthOffsets ?? []).filter((o) => o + 2 <= b.length);
          const p = known.length && this.chance(0.6) ? this.pick(known) : this.int(b.length - 1);
          const v = (b.readUInt16BE(p) + this.pick([1, -1, 4, -4, 0x100, 0x7fff, 0xffff, this.int(0x10000)])) & 0xffff;
          b.writeUInt16BE(v, p);
          break;
        }
        case 4: {
          const o = this.pick(corpus);
          b = Buffer.concat([b.subarray(0, this.int(b.length + 1)), o.subarray(this.int(o.length + 1))]);
          break;
        }
        case 5: {
          if (b.length === 0) break;
          const s = this.int(b.length);
          const e = Math.min(b.length, s + 1 + this.int(64));
          b = Buffer.concat([b.subarray(0, e), b.subarray(s, e), b.subarray(e)]);
          break;
        }
        case 6: {
          const p = this.int(b.length + 1);
          b = Buffer.concat([b.subarray(0, p), this.bytes(1 + this.int(16)), b.subarray(p)]);
          break;
        }
        default:
          // keep the RFC 7983 class, scramble the rest
          if (b.length > 1) {
            const p = 1 + this.int(b.length - 1);
            b[p] = this.int(256);
          }
      }
    }
    const max = this.opts.maxLength;
    if (max !== undefined && b.length > max) b = b.subarray(0, max);
    return b;
  }
}
