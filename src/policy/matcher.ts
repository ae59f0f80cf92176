/**
 * Multi-pattern byte matcher (Aho–Corasick, compiled to a dense DFA) so `contains`
 * rules cost one pass over a message whatever the number of keywords, instead of a
 * loop over patterns. Case-insensitive patterns run through an ASCII fold table.
 */

/** The addon's DFA scan (native/dfa.c; NativeCrypto.dfaScan in src/wire/native.ts). */
export type NativeDfaScan = (
  next: Int32Array,
  accepts: Uint8Array,
  seen: Uint8Array,
  data: Uint8Array,
  fold: boolean,
  hits: Int32Array,
) => number;

let nativeScan: NativeDfaScan | null = null;

/**
 * Installs the addon's scan for every matcher (null: the JS loop only). Policy loads no
 * addon itself (design.md floors: policy does not import wire); the CLI installs it at start
 * (src/cli/main.ts), after GATEHOUSE_NATIVE is honoured. Both give the same matches.
 */
export function useNativeScan(fn: NativeDfaScan | null | undefined): void {
  nativeScan = fn ?? null;
}

export interface PatternSpec<T> {
  bytes: Buffer;
  caseInsensitive: boolean;
  tag: T;
}

/** Messages shorter than this are scanned in JS (one N-API call costs about as much). */
const NATIVE_MIN_BYTES = 64;

const FOLD = new Uint8Array(256);
for (let i = 0; i < 256; i++) FOLD[i] = i >= 0x41 && i <= 0x5a ? i + 32 : i;

class Automaton<T> {
  /** next[state * 256 + byte] */
  private next: Int32Array;
  /** outputs[state]: tags of every pattern ending here (incl. via failure links). */
  private outputs: T[][];
  /** accepts[state]: 1 when outputs[state] is not empty. */
  private accepts: Uint8Array;
  /** Scratch of the native scan: a mark per state, and the accepting states it reached. */
  private seen: Uint8Array | null = null;
  private readonly hits = new Int32Array(64);
  readonly states: number;

  constructor(patterns: Buffer[], tags: T[]) {
    const goto: Map<number, number>[] = [new Map()];
    const out: T[][] = [[]];
    patterns.forEach((p, idx) => {
      let s = 0;
      for (const b of p) {
        let n = goto[s]!.get(b);
        if (n === undefined) {
          n = goto.length;
          goto.push(new Map());
          out.push([]);
          goto[s]!.set(b, n);
        }
        s = n;
      }
      out[s]!.push(tags[idx]!);
    });
    const n = goto.length;
    this.states = n;
    const next = new Int32Array(n * 256);
    const fail = new Int32Array(n);
    // Breadth-first: fill the DFA rows from the trie and failure links.
    const queue: number[] = [];
    for (let b = 0; b < 256; b++) {
      const s = goto[0]!.get(b);
      next[b] = s ?? 0;
      if (s !== undefined) {
        fail[s] = 0;
        queue.push(s);
      }
    }
    for (let qi = 0; qi < queue.length; qi++) {
      const r = queue[qi]!;
      out[r]!.push(...out[fail[r]!]!);
      for (let b = 0; b < 256; b++) {
        const s = goto[r]!.get(b);
        if (s !== undefined) {
          fail[s] = next[fail[r]! * 256 + b]!;
          next[r * 256 + b] = s;
          queue.push(s);
        } else {
          next[r * 256 + b] = next[fail[r]! * 256 + b]!;
        }
      }
    }
    this.next = next;
    this.outputs = out;
    this.accepts = new Uint8Array(n);
    for (let i = 0; i < n; i++) this.accepts[i] = out[i]!.length ? 1 : 0;
  }

  /**
   * One pass over data. The loop reads only typed arrays (the DFA row and a per-state
   * "some pattern ends here" flag), one loop per fold mode: this runs over every byte of
   * every inspected message.
   */
  scan(data: Uint8Array, fold: boolean, found: Set<T>): void {
    // The addon's loop (native/dfa.c) runs the same table about twice as fast; below
    // NATIVE_MIN_BYTES the call costs more than it saves.
    const dfaScan = data.length >= NATIVE_MIN_BYTES ? nativeScan : null;
    if (dfaScan) {
      this.seen ??= new Uint8Array(this.states);
      const n = dfaScan(this.next, this.accepts, this.seen, data, fold, this.hits);
      if (n >= 0) {
        for (let k = 0; k < n; k++) this.report(this.hits[k]!, found);
        return;
      }
      // More distinct pattern ends than `hits` holds: the JS loop below reports them all.
    }
    const next = this.next;
    const accepts = this.accepts;
    const n = data.length;
    let s = 0;
    // In the root state most bytes lead back to it: those are skipped by a loop whose loads
    // do not depend on each other (next[0..255] is the root's row), which the CPU overlaps.
    if (fold) {
      for (let i = 0; i < n; i++) {
        if (s === 0) {
          while (i < n && next[FOLD[data[i]!]!] === 0) i++;
          if (i === n) break;
        }
        s = next[(s << 8) | FOLD[data[i]!]!]!;
        if (accepts[s] !== 0) this.report(s, found);
      }
    } else {
      for (let i = 0; i < n; i++) {
        if (s === 0) {
          while (i < n && next[data[i]!] === 0) i++;
          if (i === n) break;
        }
        s = next[(s << 8) | data[i]!]!;
        if (accepts[s] !== 0) this.report(s, found);
      }
    }
  }

  private report(s: number, found: Set<T>): void {
    const o = this.outputs[s]!;
    for (let k = 0; k < o.length; k++) found.add(o[k]!);
  }
}

export class MultiMatcher<T> {
  private exact: Automaton<T> | null;
  private folded: Automaton<T> | null;
  readonly size: number;

  constructor(specs: PatternSpec<T>[]) {
    const ex = specs.filter((s) => !s.caseInsensitive && s.bytes.length > 0);
    const ci = specs.filter((s) => s.caseInsensitive && s.bytes.length > 0);
    this.exact = ex.length
      ? new Automaton(
          ex.map((s) => s.bytes),
          ex.map((s) => s.tag),
        )
      : null;
    this.folded = ci.length
      ? new Automaton(
          ci.map((s) => Buffer.from(s.bytes.map((b) => FOLD[b]!))),
          ci.map((s) => s.tag),
        )
      : null;
    this.size = ex.length + ci.length;
  }

  /** Tags of every pattern found anywhere in data. */
  match(data: Uint8Array, into: Set<T> = new Set()): Set<T> {
    this.exact?.scan(data, false, into);
    this.folded?.scan(data, true, into);
    return into;
  }
}
