/**
 * The policy around a Scanner: a deadline per file, a bound on scans in flight
 * (`max_concurrent`) and on those waiting (MAX_SCAN_QUEUE), and `fail_open`: a scan that
 * errs or times out passes the file (fail_open: true) or blocks it as "unscanned"
 * (false, the default). Every outcome is counted in `stats` (for /metrics).
 */
import type { ScanErrorKind, ScanInput, ScanMeta, ScanResult, Scanner } from './scanner.js';

/** Scans waiting for a slot beyond max_concurrent; more are an error at once (→ fail_open). */
export const MAX_SCAN_QUEUE = 1024;

export interface GuardOptions {
  timeoutMs: number;
  failOpen: boolean;
  maxConcurrent: number;
  maxQueued?: number;
}

export interface GuardedResult {
  /** clean and infected as the scanner said; unscanned: no answer and fail_open false. */
  verdict: 'clean' | 'infected' | 'unscanned';
  /** Whether the file must be held back (infected or unscanned). */
  block: boolean;
  virus?: string;
  reason?: string;
  /** The scanner gave no answer (its error kind); the verdict came from fail_open. */
  error?: ScanErrorKind | 'queue_full';
  /** Which scanner ('icap', 'clamd'). */
  scanner: string;
}

export interface ScanStats {
  scans: number;
  clean: number;
  infected: number;
  /** Errors by kind; each one also counted in failed_open or failed_closed. */
  errors: Record<ScanErrorKind | 'queue_full', number>;
  failed_open: number;
  failed_closed: number;
  in_flight: number;
  queued: number;
}

export function emptyStats(): ScanStats {
  return {
    scans: 0,
    clean: 0,
    infected: 0,
    errors: { timeout: 0, unreachable: 0, protocol: 0, refused: 0, queue_full: 0 },
    failed_open: 0,
    failed_closed: 0,
    in_flight: 0,
    queued: 0,
  };
}

export class GuardedScanner {
  readonly stats: ScanStats = emptyStats();
  private readonly waiting: (() => void)[] = [];

  constructor(
    readonly scanner: Scanner,
    private readonly o: GuardOptions,
  ) {
    if (!(o.maxConcurrent >= 1)) throw new Error('maxConcurrent must be at least 1');
  }

  get kind(): string {
    return this.scanner.kind;
  }

  /** The deadline runs from the call: time waiting for a slot counts. */
  async scan(file: ScanInput, meta: ScanMeta): Promise<GuardedResult> {
    this.stats.scans++;
    // A ref'd timer (AbortSignal.timeout's is unref'd): a pending verdict keeps the process up.
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(), this.o.timeoutMs);
    try {
      return await this.run(file, meta, ac.signal);
    } finally {
      clearTimeout(timer);
    }
  }

  private async run(file: ScanInput, meta: ScanMeta, signal: AbortSignal): Promise<GuardedResult> {
    if (this.stats.in_flight >= this.o.maxConcurrent) {
      if (this.waiting.length >= (this.o.maxQueued ?? MAX_SCAN_QUEUE))
        return this.failed('queue_full', `more than ${this.o.maxQueued ?? MAX_SCAN_QUEUE} scans waiting`);
      // A freed slot is handed over as it is (in_flight unchanged), so the bound holds.
      const got = await this.slot(signal);
      if (!got) return this.failed('timeout', `no scan slot within ${this.o.timeoutMs} ms (max_concurrent ${this.o.maxConcurrent})`);
    } else this.stats.in_flight++;
    let r: ScanResult;
    try {
      r = await raceAbort(this.scanner.scan(file, meta, { signal }), signal, this.o.timeoutMs);
    } catch (e) {
      r = { verdict: 'error', error: 'protocol', reason: (e as Error).message };
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.stats.in_flight--;
    }
    if (r.verdict === 'clean') {
      this.stats.clean++;
      return { verdict: 'clean', block: false, scanner: this.kind, ...(r.reason ? { reason: r.reason } : {}) };
    }
    if (r.verdict === 'infected') {
      this.stats.infected++;
      return {
        verdict: 'infected',
        block: true,
        scanner: this.kind,
        ...(r.virus ? { virus: r.virus } : {}),
        ...(r.reason ? { reason: r.reason } : {}),
      };
    }
    return this.failed(r.error ?? 'protocol', r.reason ?? 'scan failed');
  }

  private failed(kind: ScanErrorKind | 'queue_full', reason: string): GuardedResult {
    this.stats.errors[kind]++;
    if (this.o.failOpen) {
      this.stats.failed_open++;
      return { verdict: 'clean', block: false, error: kind, reason: `${reason} (fail_open)`, scanner: this.kind };
    }
    this.stats.failed_closed++;
    return { verdict: 'unscanned', block: true, error: kind, reason, scanner: this.kind };
  }

  /** Waits for a free slot; false when the deadline passes first. */
  private slot(signal: AbortSignal): Promise<boolean> {
    this.stats.queued++;
    return new Promise((resolve) => {
      const go = () => {
        signal.removeEventListener('abort', onAbort);
        this.stats.queued--;
        resolve(true);
      };
      const onAbort = () => {
        const i = this.waiting.indexOf(go);
        if (i >= 0) this.waiting.splice(i, 1);
        this.stats.queued--;
        resolve(false);
      };
      this.waiting.push(go);
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }
}

/** The scanner's promise, or a timeout error once the signal fires (a scanner that ignores it). */
function raceAbort(p: Promise<ScanResult>, signal: AbortSignal, ms: number): Promise<ScanResult> {
  if (signal.aborted) return Promise.resolve({ verdict: 'error', error: 'timeout', reason: `timed out after ${ms} ms` });
  return new Promise((resolve, reject) => {
    const onAbort = () => resolve({ verdict: 'error', error: 'timeout', reason: `timed out after ${ms} ms` });
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (r) => {
        signal.removeEventListener('abort', onAbort);
        resolve(r);
      },
      (e) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}
