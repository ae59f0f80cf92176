/**
 * Memory bounds of the live composition (issue 8; README limits table): what the flows of
 * one allocation buffer (held datagrams, the DTLS backlog, SCTP reassembly) is bounded by
 * `gateway.allocation_buffer_bytes`, and all flows together by `gateway.max_buffered_bytes`.
 *
 * Accounting is by difference: after each datagram the inspector reads the flow's buffered
 * bytes (a few field reads, no allocation) and moves the delta into its allocation's and
 * the global sum. A flow that closes gives everything back.
 */
export const DEFAULT_ALLOCATION_BUFFER_BYTES = 4 * 1024 * 1024;
export const DEFAULT_MAX_BUFFERED_BYTES = 1024 * 1024 * 1024;

/** One allocation's sum (shared by its flows). */
export interface AllocationAccount {
  readonly id: string;
  bytes: number;
  flows: number;
}

/** One flow's share. */
export interface FlowAccount {
  readonly alloc: AllocationAccount;
  bytes: number;
  closed: boolean;
}

export type OverWhat = 'allocation_buffer_bytes' | 'max_buffered_bytes';

export class BufferAccounts {
  private readonly allocs = new Map<string, AllocationAccount>();
  /** Bytes buffered by every flow. */
  total = 0;

  constructor(
    readonly perAllocation = DEFAULT_ALLOCATION_BUFFER_BYTES,
    readonly global = DEFAULT_MAX_BUFFERED_BYTES,
  ) {}

  open(allocationId: string): FlowAccount {
    let a = this.allocs.get(allocationId);
    if (!a) {
      a = { id: allocationId, bytes: 0, flows: 0 };
      this.allocs.set(allocationId, a);
    }
    a.flows++;
    return { alloc: a, bytes: 0, closed: false };
  }

  /** The flow now buffers `bytes`; returns which bound is passed, if any. */
  set(f: FlowAccount, bytes: number): OverWhat | null {
    if (f.closed) return null;
    const d = bytes - f.bytes;
    if (d !== 0) {
      f.bytes = bytes;
      f.alloc.bytes += d;
      this.total += d;
    }
    if (f.alloc.bytes > this.perAllocation) return 'allocation_buffer_bytes';
    if (this.total > this.global) return 'max_buffered_bytes';
    return null;
  }

  limit(what: OverWhat): number {
    return what === 'allocation_buffer_bytes' ? this.perAllocation : this.global;
  }

  /** The flow closed: everything it buffered is released. */
  close(f: FlowAccount): void {
    if (f.closed) return;
    f.closed = true;
    f.alloc.bytes -= f.bytes;
    this.total -= f.bytes;
    f.bytes = 0;
    if (--f.alloc.flows <= 0) this.allocs.delete(f.alloc.id);
  }

  allocationBytes(allocationId: string): number {
    return this.allocs.get(allocationId)?.bytes ?? 0;
  }
}
