import type { Clock } from '../util/clock.js';

/**
 * Flows refused after a block (key-escrow.md §5.4): allocation × peer IP, for
 * `keys.block_for`. TURN answers a CreatePermission / ChannelBind for them with
 * 403 Forbidden (via FlowHooks.permitPeer). Bounded: the oldest entry goes first.
 */
export class FlowBlockList {
  private readonly until = new Map<string, number>();
  constructor(
    private readonly clock: Clock,
    private readonly max = 100_000,
  ) {}

  private static key(allocationId: string, peerIp: string): string {
    return `${allocationId}|${peerIp}`;
  }

  block(allocationId: string, peerIp: string, forMs: number): void {
    const k = FlowBlockList.key(allocationId, peerIp);
    this.until.delete(k);
    if (this.until.size >= this.max) {
      const first = this.until.keys().next();
      if (!first.done) this.until.delete(first.value);
    }
    this.until.set(k, this.clock.now() + Math.max(0, forMs));
  }

  isBlocked(allocationId: string, peerIp: string): boolean {
    const k = FlowBlockList.key(allocationId, peerIp);
    const u = this.until.get(k);
    if (u === undefined) return false;
    if (u <= this.clock.now()) {
      this.until.delete(k);
      return false;
    }
    return true;
  }

  get size(): number {
    return this.until.size;
  }
}
