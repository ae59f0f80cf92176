/**
 * The one clock of the process (design.md: "Time comes from one clock that tests can
 * drive"). Servers take a Clock; tests pass a ManualClock and call advance() instead of
 * sleeping, so lifetimes and deadlines are tested exactly.
 */
export interface TimerHandle {
  cancel(): void;
}

export interface Clock {
  /** Milliseconds since the Unix epoch. */
  now(): number;
  /** Runs fn once after ms. */
  setTimeout(fn: () => void, ms: number): TimerHandle;
  /** Runs fn every ms until cancelled. */
  setInterval(fn: () => void, ms: number): TimerHandle;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout(fn, ms) {
    const t = setTimeout(fn, ms);
    t.unref?.();
    return { cancel: () => clearTimeout(t) };
  },
  setInterval(fn, ms) {
    const t = setInterval(fn, ms);
    t.unref?.();
    return { cancel: () => clearInterval(t) };
  },
};

interface ManualTimer {
  at: number;
  every: number; // 0 for one-shot
  fn: () => void;
  live: boolean;
  seq: number;
}

/** A clock that moves only when told to. Timers fire in time order during advance(). */
export class ManualClock implements Clock {
  private t: number;
  private timers: ManualTimer[] = [];
  private seq = 0;

  constructor(start = Date.UTC(2026, 10, 22, 10, 0, 0)) {
    this.t = start;
  }

  now(): number {
    return this.t;
  }

  setTimeout(fn: () => void, ms: number): TimerHandle {
    return this.add(fn, ms, 0);
  }

  setInterval(fn: () => void, ms: number): TimerHandle {
    return this.add(fn, ms, Math.max(1, ms));
  }

  /**
   * Moves time forward by ms without firing the timers that fall due: an event loop that
   * was busy, whose timers run late (they fire at the next advance()).
   */
  stall(ms: number): void {
    this.t += ms;
  }

  /** Moves time forward by ms, firing every timer that falls due on the way. */
  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      let next: ManualTimer | undefined;
      for (const tm of this.timers) {
        if (!tm.live || tm.at > end) continue;
        if (!next || tm.at < next.at || (tm.at === next.at && tm.seq < next.seq)) next = tm;
      }
      if (!next) break;
      this.t = Math.max(this.t, next.at);
      if (next.every) next.at += next.every;
      else next.live = false;
      next.fn();
    }
    this.t = end;
    this.timers = this.timers.filter((x) => x.live);
  }

  private add(fn: () => void, ms: number, every: number): TimerHandle {
    const tm: ManualTimer = { at: this.t + Math.max(0, ms), every, fn, live: true, seq: this.seq++ };
    this.timers.push(tm);
    return { cancel: () => void (tm.live = false) };
  }
}
