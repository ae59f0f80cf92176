/**
 * Round-trip latency through a TURN server while it carries a load: turnutils_uclient
 * prints an average RTT only, so the relay bench runs this beside it. One allocation of
 * its own (bench/lib/turn-client.ts), a channel bound to the echoing peer, and every
 * `intervalMs` a ChannelData message (RFC 8656 §12.4) carrying a sequence number and the
 * send time; the peer's echo comes back through the relay on the same channel and the
 * round trip is timed per message. Percentiles are over the messages that came back;
 * the ones that did not are counted as lost.
 *
 * It runs in the bench's own process, so its CPU is part of what the whole-system figure
 * takes off as load (bench/lib/syscpu.ts).
 */
import { HOST } from './ports.js';
import { openTurnClient, channelData, type TurnClient } from './turn-client.js';

export interface LatencyFigures {
  sent: number;
  received: number;
  p50Ms: number | null;
  p99Ms: number | null;
  maxMs: number | null;
}

export interface LatencyProbe {
  /** Starts sending (the allocation is made already). */
  begin(): void;
  /** Stops sending at once, waits `graceMs` for the last echoes, closes the socket. */
  stop(graceMs?: number): Promise<LatencyFigures>;
}

/** The RFC 8656 §12 channel the probe binds (the uclient's channels come from the server's answers). */
const CHANNEL = 0x4000;

function percentile(sorted: number[], p: number): number | null {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

/**
 * Allocates through the server at `port` and starts sending; throws when the allocation
 * or the channel binding fails (the caller reports it and carries on without a probe).
 */
export async function startLatencyProbe(port: number, peerPort: number, intervalMs = 5, size = 100): Promise<LatencyProbe> {
  const c: TurnClient = await openTurnClient();
  try {
    const a = await c.allocate(port);
    if (!a.ok) throw new Error(`latency probe: Allocate failed (${a.code || 'timeout'})`);
    const b = await c.channelBind(port, CHANNEL, peerPort);
    if (!b.ok) throw new Error(`latency probe: ChannelBind failed (${b.code || 'timeout'})`);
  } catch (e) {
    c.sock.close();
    throw e;
  }
  const sentAt = new Map<number, bigint>();
  const rtts: number[] = [];
  let seq = 0;
  c.onChannelData = (channel, data) => {
    if (channel !== CHANNEL || data.length < 4) return;
    const n = data.readUInt32BE(0);
    const t0 = sentAt.get(n);
    if (t0 === undefined) return; // a duplicate, or not ours
    sentAt.delete(n);
    rtts.push(Number(process.hrtime.bigint() - t0) / 1e6);
  };
  const payload = Buffer.alloc(Math.max(4, size));
  let timer: NodeJS.Timeout | null = null;
  return {
    begin(): void {
      timer ??= setInterval(() => {
        payload.writeUInt32BE(seq, 0);
        sentAt.set(seq, process.hrtime.bigint());
        seq++;
        c.sock.send(channelData(CHANNEL, payload), port, HOST);
      }, intervalMs);
    },
    async stop(graceMs = 300): Promise<LatencyFigures> {
      if (timer) clearInterval(timer);
      timer = null;
      await new Promise((r) => setTimeout(r, graceMs));
      c.onChannelData = null;
      c.sock.close();
      const s = [...rtts].sort((x, y) => x - y);
      return {
        sent: seq,
        received: rtts.length,
        p50Ms: percentile(s, 50),
        p99Ms: percentile(s, 99),
        maxMs: s.length ? s[s.length - 1]! : null,
      };
    },
  };
}
