/**
 * Revoked TURN REST subjects (core.md §8, issue 11): when the core revokes a participant
 * (room removal, guest removal or leave), the credentials it already handed out must stop
 * working before their EXPIRY, and the subject's allocations close.
 *
 * A REST credential `EXPIRY:SUBJECT` carries no issue time, only EXPIRY = issue second +
 * ttl, where ttl <= core.turn_ttl (src/core/turn-credentials.ts issue()). So its issue
 * second is >= EXPIRY - ttlS. A credential is refused when EXPIRY - ttlS <= the revocation
 * second, i.e. when it may have been issued at or before the revocation: every credential
 * handed out before the revocation is refused, and one issued in a later second (after a
 * re-admission) works. A credential issued in the same second as the revocation is refused
 * too (seconds cannot tell them apart): the safe side.
 *
 * An entry is needed only until every credential it refuses has expired: revokedAt + ttlS.
 * Bounded: at most `max` subjects; when full, expired entries go first, then the oldest
 * revocation (the one whose credentials are closest to expiring anyway).
 */
import type { Clock } from '../util/clock.js';

export const DEFAULT_MAX_REVOKED = 10_000;

export class RevokedSubjects {
  /** subject -> revocation second (Unix); insertion order = revocation order. */
  private readonly bySubject = new Map<string, number>();

  constructor(
    private readonly clock: Clock,
    /** core.turn_ttl: the longest life of a REST credential the core issues. */
    readonly ttlS: number,
    readonly max = DEFAULT_MAX_REVOKED,
  ) {}

  private nowS(): number {
    return Math.floor(this.clock.now() / 1000);
  }

  get size(): number {
    return this.bySubject.size;
  }

  /** Revokes every credential of `subject` issued up to now. */
  revoke(subject: string): void {
    const now = this.nowS();
    this.bySubject.delete(subject); // re-inserted last: order stays the revocation order
    if (this.bySubject.size >= this.max) this.sweep();
    if (this.bySubject.size >= this.max) {
      const oldest = this.bySubject.keys().next().value as string;
      this.bySubject.delete(oldest);
    }
    this.bySubject.set(subject, now);
  }

  /** True when a REST credential of `subject` expiring at `expiryS` was issued at or before its revocation. */
  refuses(subject: string, expiryS: number): boolean {
    const at = this.bySubject.get(subject);
    if (at === undefined) return false;
    if (at + this.ttlS <= this.nowS()) {
      // Every credential this entry refused has expired.
      this.bySubject.delete(subject);
      return false;
    }
    return expiryS - this.ttlS <= at;
  }

  /** Drops entries whose credentials have all expired. */
  sweep(): number {
    const now = this.nowS();
    let n = 0;
    for (const [s, at] of this.bySubject) {
      if (at + this.ttlS > now) break; // insertion order = revocation order
      this.bySubject.delete(s);
      n++;
    }
    return n;
  }
}
