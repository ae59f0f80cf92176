/**
 * The one supervision wrapper of design.md ("Every socket callback and timer runs inside
 * one supervision wrapper: an exception closes the offending flow or connection and is
 * counted, never the process").
 *
 *   const sup = new Supervisor(log);
 *   socket.on('data', sup.guard('turn.tcp.data', (chunk) => ..., () => socket.destroy()));
 *   sup.run('gateway.hook.packet', () => hook(...), () => closeFlow(flow));
 *
 * `where` names the call site (a short dotted name, the label of
 * gatehouse_supervised_exceptions_total); `onFail` contains the damage (close the flow or
 * connection) and is itself guarded. Error messages are logged, never the arguments the
 * callback got (they may be packets carrying key material).
 */
import type { Logger } from './log.js';

export class Supervisor {
  /** Exceptions caught, by call site (read by /metrics). */
  readonly failures = new Map<string, number>();
  private readonly logged = new Map<string, number>();

  constructor(
    private readonly log: Logger,
    /** At most this many log lines per call site per minute (a crash loop must not flood the log). */
    private readonly logPerMinute = 10,
    private readonly now: () => number = Date.now,
  ) {}

  /** Total exceptions caught at every call site. */
  get total(): number {
    let n = 0;
    for (const v of this.failures.values()) n += v;
    return n;
  }

  /** Runs fn; an exception is counted, logged and handed to onFail, and undefined is returned. */
  run<T>(where: string, fn: () => T, onFail?: (err: unknown) => void): T | undefined {
    try {
      return fn();
    } catch (err) {
      this.caught(where, err, onFail);
      return undefined;
    }
  }

  /** A callback that runs inside run(where, ...). */
  guard<A extends unknown[]>(where: string, fn: (...args: A) => void, onFail?: (err: unknown, ...args: A) => void): (...args: A) => void {
    return (...args: A) => {
      try {
        fn(...args);
      } catch (err) {
        this.caught(where, err, onFail ? (e) => onFail(e, ...args) : undefined);
      }
    };
  }

  /** Records an exception caught elsewhere (a rejected promise, a process-level handler). */
  caught(where: string, err: unknown, onFail?: (err: unknown) => void): void {
    this.failures.set(where, (this.failures.get(where) ?? 0) + 1);
    const minute = Math.floor(this.now() / 60_000);
    const key = `${where}@${minute}`;
    const n = (this.logged.get(key) ?? 0) + 1;
    this.logged.set(key, n);
    if (this.logged.size > 1000) this.logged.clear();
    if (n <= this.logPerMinute) {
      const e = err instanceof Error ? err : new Error(String(err));
      this.log.error({ where, err: { type: e.name, message: e.message, stack: e.stack } }, 'exception contained');
    }
    if (onFail) {
      try {
        onFail(err);
      } catch (err2) {
        this.failures.set(`${where}.onFail`, (this.failures.get(`${where}.onFail`) ?? 0) + 1);
        if (n <= this.logPerMinute) this.log.error({ where, err: (err2 as Error)?.message }, 'containment failed');
      }
    }
  }
}
