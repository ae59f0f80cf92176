import type { Clock } from '../util/clock.js';

/**
 * Flows refused after a block (key-escrow.md §5.4): allocation × peer IP, for
 * `keys.block_for`. TURN answers a CreatePermission / ChannelBind for them with
 * 403 Forbidden (via FlowHooks.permitPeer). Bounded: the oldest entry goes first.
 * The gateway keys it by user × peer IP (§5.4: "from any allocation of that user"), which is
 * also what identifies the flow on every other gateway of a cluster (src/cluster/blocks.ts).
 */
export class FlowBlockList {
  private readonly until = new Map<string, number>();
  /**
   * Called after each block() made here (not after apply()): the cluster shares the block
   * with the other gateways (src/cluster/blocks.ts). An exception in it is not this list's.
   */
  onBlock: ((subject: string, peerIp: string, forMs: number) => void) | null = null;
  constructor(
    private readonly clock: Clock,
    private readonly max = 100_000,
  ) {}

  private static key(allocationId: string, peerIp: string): string {
    return `${allocationId}|${peerIp}`;
  }

  block(allocationId: string, peerIp: string, forMs: number): void {
    this.apply(allocationId, peerIp, forMs);
    try {
      this.onBlock?.(allocationId, peerIp, forMs);
    } catch {
      /* the block holds here whatever sharing it did */
    }
  }

  /** A block made elsewhere (another gateway of the cluster): recorded, not shared again. */
  apply(allocationId: string, peerIp: string, forMs: number): void {
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
