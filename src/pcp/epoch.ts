/**
 * The PCP server's epoch (RFC 6887 §8.5): Epoch Time in every response is the number
 * of seconds since the server's mapping state began. It starts at 0 when the server
 * starts (its state is new: explicit mappings do not survive a restart) and is reset
 * when the state is lost or the external address changes, so clients detect the loss
 * (§8.5: the client compares the epoch against its own elapsed time) and re-create
 * their mappings.
 */
import type { Clock } from '../util/clock.js';

export class PcpEpoch {
  private start: number;

  constructor(private readonly clock: Clock) {
    this.start = clock.now();
  }

  /** §8.5: seconds since the epoch began, 32 bits (wraps after 136 years). */
  seconds(): number {
    return Math.floor(Math.max(0, this.clock.now() - this.start) / 1000) >>> 0;
  }

  /** Starts a new epoch at 0 (§8.5: state lost, external address changed). */
  reset(): void {
    this.start = this.clock.now();
  }
}
