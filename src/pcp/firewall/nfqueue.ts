/**
 * NFQUEUE reader for the PCP firewall path (the gateway inspects mapped flows inline).
 * Loads the optional native binding native/build/Release/gatehouse_nfqueue.node (built by
 * `npm run build:native` where libnetfilter-queue-dev is installed); without it
 * loadNfqueue() returns null and NfQueueReader.open() throws NfqueueUnavailable with the
 * reason, so callers can say so plainly instead of failing later.
 *
 *   const q = NfQueueReader.open({ queue: 0, failOpen: false }, (p) => 'accept');
 *   // p = { id, payload, mark, hook, indev, outdev }: payload is a COPY of the full IP
 *   // packet (IPv4 or IPv6 header first): the handler may keep it.
 *   // return 'accept' | 'drop' | 'hold'; for 'hold' call q.verdict(p.id, 'accept') later.
 *
 * The netlink socket belongs to the network namespace of the process that opens it: run the
 * reader in the namespace whose iptables rules queue the packets (`ip netns exec gw ...`).
 *
 * Bounds: at most `maxHeld` packets held at once (one more: the oldest held gets the
 * fail-mode verdict, counted); each held packet gets `holdTimeoutVerdict` (default: the fail mode) after
 * `maxHoldMs`; close() gives every held packet the fail-mode verdict. The kernel queue
 * itself holds at most `maxLen` packets (then NFQA_CFG_F_FAIL_OPEN decides: accept when
 * fail-open, else drop).
 */
import { loadAddon } from '../../util/native-addon.js';

export type NfVerdict = 'accept' | 'drop';
export type NfHandlerResult = NfVerdict | 'hold';

/** Netfilter hooks (linux/netfilter.h enum nf_inet_hooks). */
export const NF_HOOKS = ['prerouting', 'input', 'forward', 'output', 'postrouting'] as const;
export type NfHook = (typeof NF_HOOKS)[number] | 'unknown';

export interface NfPacket {
  /** Kernel packet id (the verdict names it). */
  id: number;
  /** A copy of the full IP packet; the handler may keep it. */
  payload: Buffer;
  /** The packet's skb mark (nfmark). */
  mark: number;
  hook: NfHook;
  /** Input / output interface index, 0 when none. */
  indev: number;
  outdev: number;
}

export type NfHandler = (p: NfPacket, q: NfQueueReader) => NfHandlerResult | void;

export interface NfQueueOptions {
  /** Queue number (iptables --queue-num). */
  queue: number;
  /** Kernel queue max length (packets waiting for a verdict; default 1024). */
  maxLen?: number;
  /**
   * true: NFQA_CFG_F_FAIL_OPEN (the kernel accepts when the queue is full), and held /
   * failed packets are accepted on timeout or close. false (default): drop.
   */
  failOpen?: boolean;
  /** recv() calls per readable event (default 64). */
  batch?: number;
  /** Netlink socket receive buffer in bytes (default 4 MiB; SO_RCVBUFFORCE as root). */
  rcvbuf?: number;
  /** Held packets at once (default 1024). */
  maxHeld?: number;
  /** Longest hold in ms (default 5000). */
  maxHoldMs?: number;
  /** Verdict for a held packet whose time ran out (default: the fail mode). */
  holdTimeoutVerdict?: NfVerdict;
}

export interface NfQueueStats {
  received: number;
  accepted: number;
  dropped: number;
  held: number;
  /** Held packets that got holdTimeoutVerdict after maxHoldMs. */
  holdTimeouts: number;
  /** Oldest held packets that got the fail-mode verdict because maxHeld was reached. */
  holdOverflow: number;
  /** Handler exceptions (the packet got the fail-mode verdict). */
  exceptions: number;
  /** recv() ENOBUFS: the socket buffer overflowed, the kernel dropped packets. */
  enobufs: number;
  errors: number;
}

export interface NativeQueue {
  verdict(id: number, v: 0 | 1, mark: number): boolean;
  close(): void;
  ref(on: boolean): void;
  stats(): { received: number; enobufs: number; errors: number; exceptions: number; open: boolean };
}

export interface NfqueueBinding {
  /**
   * Deletes the conntrack entries whose ORIGINAL tuple matches (null address / port 0: any) in
   * the namespace at netnsPath (null: ours); resolves with how many. The table dump runs on
   * the libuv thread pool, not on the event loop.
   */
  conntrackDelete(
    netnsPath: string | null,
    family: 4 | 6,
    proto: number,
    src: string | null,
    sport: number,
    dst: string | null,
    dport: number,
  ): Promise<number>;
  NfQueue: new (
    queue: number,
    maxLen: number,
    failOpen: boolean,
    batch: number,
    rcvbuf: number,
    cb: (id: number, payload: Buffer, mark: number, hook: number, indev: number, outdev: number) => void,
  ) => NativeQueue;
}

export class NfqueueUnavailable extends Error {}

let cached: { binding: NfqueueBinding | null; reason: string } | undefined;

/** The binding, or null with the reason (not built, fails to load). Loaded once. */
export function loadNfqueue(): { binding: NfqueueBinding | null; reason: string } {
  if (cached) return cached;
  const r = loadAddon<NfqueueBinding>('gatehouse_nfqueue.node', (m) => typeof m.NfQueue === 'function');
  return (cached = { binding: r.addon, reason: r.addon ? '' : `${r.reason}; it needs libnetfilter-queue-dev` });
}

interface Held {
  timer: NodeJS.Timeout;
}

const NF_DROP = 0;
const NF_ACCEPT = 1;

export class NfQueueReader {
  private readonly held = new Map<number, Held>();
  private readonly counters = { accepted: 0, dropped: 0, holdTimeouts: 0, holdOverflow: 0, exceptions: 0 };
  private closed = false;
  readonly failOpen: boolean;
  private readonly maxHeld: number;
  private readonly maxHoldMs: number;
  private readonly holdTimeoutVerdict: NfVerdict;
  private q!: NativeQueue;

  private constructor(
    o: NfQueueOptions,
    private handler: NfHandler,
  ) {
    this.failOpen = !!o.failOpen;
    this.maxHeld = o.maxHeld ?? 1024;
    this.maxHoldMs = o.maxHoldMs ?? 5000;
    this.holdTimeoutVerdict = o.holdTimeoutVerdict ?? this.failVerdict;
  }

  /** Binds the queue; throws NfqueueUnavailable without the binding, Error (with errno) when binding fails. */
  static open(o: NfQueueOptions, handler: NfHandler): NfQueueReader {
    const { binding, reason } = loadNfqueue();
    if (!binding) throw new NfqueueUnavailable(reason);
    return NfQueueReader.openWith(binding, o, handler);
  }

  /** open() over a given binding (tests pass a fake one to check the verdict bookkeeping). */
  static openWith(binding: NfqueueBinding, o: NfQueueOptions, handler: NfHandler): NfQueueReader {
    const r = new NfQueueReader(o, handler);
    r.q = new binding.NfQueue(
      o.queue,
      o.maxLen ?? 1024,
      r.failOpen,
      o.batch ?? 64,
      o.rcvbuf ?? 4 << 20,
      (id, payload, mark, hook, indev, outdev) => r.onPacket(id, payload, mark, hook, indev, outdev),
    );
    return r;
  }

  get failVerdict(): NfVerdict {
    return this.failOpen ? 'accept' : 'drop';
  }

  /** Packets currently held. */
  get heldCount(): number {
    return this.held.size;
  }

  /** Replaces the handler (e.g. the gateway's, once it is ready). */
  setHandler(h: NfHandler): void {
    this.handler = h;
  }

  private onPacket(id: number, payload: Buffer, mark: number, hook: number, indev: number, outdev: number): void {
    let r: NfHandlerResult | void;
    try {
      r = this.handler({ id, payload, mark, hook: NF_HOOKS[hook] ?? 'unknown', indev, outdev }, this);
    } catch {
      // An exception in the handler must not leave the packet without a verdict, nor crash
      // the process: the fail-mode verdict, counted.
      this.counters.exceptions++;
      r = this.failVerdict;
    }
    if (this.held.has(id)) return; // the handler called hold(id) itself
    if (r === 'hold') {
      this.hold(id);
      return;
    }
    this.send(id, r === 'accept' || r === 'drop' ? r : this.failVerdict);
  }

  /**
   * Keeps the packet for a later verdict(id, ...). Bounded: beyond maxHeld the oldest held
   * packet gets the fail-mode verdict; after maxHoldMs a held packet gets holdTimeoutVerdict.
   */
  hold(id: number): boolean {
    if (this.closed || this.held.has(id)) return false;
    if (this.held.size >= this.maxHeld) {
      // Full: the OLDEST held packet gets the fail-mode verdict (config pcp.nfqueue.max_held),
      // the new one is held.
      this.counters.holdOverflow++;
      const [oldId, old] = this.held.entries().next().value as [number, Held];
      clearTimeout(old.timer);
      this.held.delete(oldId);
      this.send(oldId, this.failVerdict);
    }
    const timer = setTimeout(() => {
      if (!this.held.delete(id)) return;
      this.counters.holdTimeouts++;
      this.send(id, this.holdTimeoutVerdict);
    }, this.maxHoldMs);
    timer.unref?.();
    this.held.set(id, { timer });
    return true;
  }

  /** The verdict for a held packet. False when the id is not held (already timed out) or the queue is closed. */
  verdict(id: number, v: NfVerdict, mark?: number): boolean {
    const h = this.held.get(id);
    if (!h) return false;
    clearTimeout(h.timer);
    this.held.delete(id);
    return this.send(id, v, mark);
  }

  private send(id: number, v: NfVerdict, mark?: number): boolean {
    if (this.closed) return false;
    if (v === 'accept') this.counters.accepted++;
    else this.counters.dropped++;
    return this.q.verdict(id, v === 'accept' ? NF_ACCEPT : NF_DROP, mark ?? -1);
  }

  /** Whether the reader keeps node's event loop alive (default true). */
  ref(on = true): void {
    if (!this.closed) this.q.ref(on);
  }

  stats(): NfQueueStats {
    const n = this.q.stats();
    return {
      received: n.received,
      ...this.counters,
      held: this.held.size,
      exceptions: this.counters.exceptions + n.exceptions,
      enobufs: n.enobufs,
      errors: n.errors,
    };
  }

  /** Every held packet gets the fail-mode verdict, then the queue is unbound. Idempotent. */
  close(): void {
    if (this.closed) return;
    for (const [id, h] of this.held) {
      clearTimeout(h.timer);
      this.send(id, this.failVerdict);
    }
    this.held.clear();
    this.closed = true;
    this.q.close();
  }
}
