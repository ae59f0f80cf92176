/**
 * The desktop key agent (key-escrow.md §6): follows a browser's NSS key log
 * (SSLKEYLOGFILE, src/keyagent/tail.ts), parses it with the inspection engine's parser
 * (src/inspect/keylog.ts), and escrows the secrets of each new association to the
 * gateway it trusts with KeyEscrow requests (src/keyagent/client.ts), but only for
 * client_randoms the gateway lists in KEY-PENDING (§6.5): associations that do not cross
 * that gateway are never sent anywhere.
 *
 * Per new client_random: a pending query at once, again after 50 ms, doubling up to 1 s,
 * for at most 10 s (§6.5). A listed association gets its key set (keySetFromKeyLog with
 * the handshake facts KEY-PENDING gives: server_random, suite, version, SRTP profile,
 * epoch). DTLS 1.3 whose SRTP profile the gateway cannot know yet (flag 0x04): the record
 * keys and handshake secrets first; the answer lists it again with the profile, then the
 * SRTP keys follow. Secrets live in memory only, are wiped when their client_random is
 * done or forgotten, and never appear in events or logs (events carry client_randoms,
 * which are public on the wire, and statuses).
 *
 * Public API:
 *   class KeyAgent extends EventEmitter (events: 'escrowed' {clientRandom, status, ms},
 *     'unknown' {clientRandom}, 'error' Error) .start() .stop() .stats
 */
import { EventEmitter } from 'node:events';
import { KeyLog, keySetFromKeyLog, type KeyLogEntry } from '../inspect/keylog.js';
import {
  KP_FLAG_ETM,
  KP_FLAG_MEDIA,
  KP_FLAG_SRTP_UNKNOWN,
  MAX_ESCROW_KEY_SETS,
  KEY_STATUS_UNKNOWN,
  type KeyPending,
} from '../wire/keyescrow.js';
import { wipeKeySet, type KeySet } from '../wire/keyset.js';
import type { KeyEscrowClient } from './client.js';
import { KeyLogTail } from './tail.js';

/** §6.5 schedule. */
const FIRST_RETRY_MS = 50;
const MAX_RETRY_MS = 1000;
const GIVE_UP_MS = 10_000;
/** Client randoms tracked at most (a key log can be long). */
const MAX_TRACKED = 4096;

interface Tracked {
  entry: KeyLogEntry;
  /** When the first line of it was read (ms, performance clock). */
  seenAt: number;
  /** Line-read time of the newest line (bench: line written → keys_verified). */
  lastLineAt: number;
  /** What was sent already: 'record' (record keys), 'srtp' (with SRTP keys). */
  sent: Set<string>;
}

const LABELS = new Set([
  'CLIENT_RANDOM',
  'CLIENT_HANDSHAKE_TRAFFIC_SECRET',
  'SERVER_HANDSHAKE_TRAFFIC_SECRET',
  'CLIENT_TRAFFIC_SECRET_0',
  'SERVER_TRAFFIC_SECRET_0',
  'EXPORTER_SECRET',
]);

export interface KeyAgentOptions {
  keylog: string;
  client: KeyEscrowClient;
  /** Read the key log from its start (default: only lines written after start). */
  fromStart?: boolean;
  pollMs?: number;
}

export class KeyAgent extends EventEmitter {
  private readonly tail: KeyLogTail;
  private readonly tracked = new Map<string, Tracked>();
  private timer: NodeJS.Timeout | null = null;
  private retryMs = FIRST_RETRY_MS;
  private busy = false;
  private again = false;
  private stopped = false;
  readonly stats = { lines: 0, escrowed: 0, unknown: 0, refused: 0, forgotten: 0 };

  constructor(private readonly o: KeyAgentOptions) {
    super();
    this.tail = new KeyLogTail(o.keylog, (lines) => this.onLines(lines), { fromEnd: !o.fromStart, pollMs: o.pollMs });
  }

  start(): void {
    this.tail.start();
  }

  stop(): void {
    this.stopped = true;
    this.tail.stop();
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    for (const t of this.tracked.values()) this.wipe(t);
    this.tracked.clear();
    this.o.client.close();
  }

  get tailStats(): KeyLogTail['stats'] {
    return this.tail.stats;
  }

  private onLines(lines: string[]): void {
    const now = performance.now();
    // The inspection engine's parser (one KeyLog per batch; merged into our entries).
    const kl = KeyLog.parse(lines.join('\n'));
    let fresh = false;
    for (const line of lines) {
      const parts = line.trim().split(/\s+/);
      if (parts.length !== 3 || !LABELS.has(parts[0]!)) continue;
      const cr = parts[1]!.toLowerCase();
      const e = kl.get(cr);
      if (!e) continue;
      this.stats.lines++;
      let t = this.tracked.get(cr);
      if (!t) {
        if (this.tracked.size >= MAX_TRACKED) this.forget(this.tracked.keys().next().value!);
        t = { entry: { clientRandom: cr }, seenAt: now, lastLineAt: now, sent: new Set() };
        this.tracked.set(cr, t);
      }
      t.lastLineAt = now;
      for (const k of Object.keys(e) as (keyof KeyLogEntry)[]) {
        if (k === 'clientRandom') continue;
        const v = e[k] as Buffer | undefined;
        if (v) {
          (t.entry[k] as Buffer | undefined)?.fill(0);
          (t.entry as unknown as Record<string, Buffer>)[k] = Buffer.from(v);
        }
      }
      fresh = true;
    }
    kl.wipe();
    if (fresh) {
      this.retryMs = FIRST_RETRY_MS;
      this.kick(0);
    }
  }

  private kick(ms: number): void {
    if (this.stopped) return;
    if (ms === 0) {
      if (this.timer) clearTimeout(this.timer);
      this.timer = null;
      void this.run();
      return;
    }
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.run();
    }, ms);
    this.timer.unref?.();
  }

  /** One round: query, send what is listed and ready, repeat while the answers ask for more. */
  private async run(): Promise<void> {
    if (this.busy) {
      this.again = true;
      return;
    }
    this.busy = true;
    try {
      do {
        this.again = false;
        this.expire();
        if (!this.tracked.size) return;
        let ans = await this.o.client.query();
        for (let round = 0; round < 4; round++) {
          const batch = this.buildFor(ans.pending);
          if (!batch.sets.length) break;
          try {
            ans = await this.o.client.send(batch.sets);
          } finally {
            for (const ks of batch.sets) wipeKeySet(ks);
          }
          ans.statuses.forEach((s, i) => {
            const cr = batch.ids[i]!;
            const t = this.tracked.get(cr);
            if (s === KEY_STATUS_UNKNOWN) {
              this.stats.unknown++;
              this.emit('unknown', { clientRandom: cr });
            } else {
              this.stats.escrowed++;
              this.emit('escrowed', { clientRandom: cr, status: s, ms: t ? performance.now() - t.lastLineAt : 0, what: batch.what[i] });
            }
          });
        }
        // Done with associations the gateway no longer lists after we sent their keys.
        const listed = new Set(ans.pending.map((p) => p.clientRandom.toString('hex')));
        for (const [cr, t] of this.tracked) if (t.sent.size && !listed.has(cr) && t.sent.has('final')) this.forget(cr);
      } while (this.again && !this.stopped);
    } catch (err) {
      this.stats.refused++;
      this.emit('error', err);
    } finally {
      this.busy = false;
    }
    if (this.tracked.size && !this.stopped) {
      const ms = this.retryMs;
      this.retryMs = Math.min(MAX_RETRY_MS, this.retryMs * 2);
      this.kick(ms);
    }
  }

  /** Key sets for the listed associations we hold secrets of (at most 8, §6.3). */
  private buildFor(pending: KeyPending[]): { sets: KeySet[]; ids: string[]; what: string[] } {
    const sets: KeySet[] = [];
    const ids: string[] = [];
    const what: string[] = [];
    for (const p of pending) {
      if (sets.length >= MAX_ESCROW_KEY_SETS) break;
      const cr = p.clientRandom.toString('hex');
      const t = this.tracked.get(cr);
      if (!t) continue; // not ours (another desktop of the same user), or forgotten
      const media = (p.flags & KP_FLAG_MEDIA) !== 0;
      const srtpUnknown = (p.flags & KP_FLAG_SRTP_UNKNOWN) !== 0;
      const withSrtp = media && !srtpUnknown && p.srtpProfile !== 0;
      const kind = withSrtp ? 'srtp' : 'record';
      // Already sent this kind and the gateway still lists it without new facts: wait.
      // Sent this kind already: the gateway has it (or found it failed): nothing new to send.
      if (t.sent.has(kind)) continue;
      const ks = keySetFromKeyLog(
        t.entry,
        {
          version: p.version === 3 ? 'DTLS1.3' : 'DTLS1.2',
          clientRandom: p.clientRandom,
          serverRandom: p.serverRandom,
          cipherSuite: p.cipherSuite,
          encryptThenMac: (p.flags & KP_FLAG_ETM) !== 0,
          ...(withSrtp ? { srtpProfile: p.srtpProfile } : {}),
        },
        p.epoch,
      );
      if (!ks) continue; // not all the secrets yet (more lines will come)
      if (withSrtp && ks.srtpProfile === undefined) {
        wipeKeySet(ks); // DTLS 1.3 without EXPORTER_SECRET yet
        continue;
      }
      t.sent.add(kind);
      if (!media || withSrtp) t.sent.add('final');
      sets.push(ks);
      ids.push(cr);
      what.push(kind);
    }
    return { sets, ids, what };
  }

  private expire(): void {
    const now = performance.now();
    for (const [cr, t] of this.tracked) if (now - t.seenAt > GIVE_UP_MS) this.forget(cr);
  }

  private forget(cr: string): void {
    const t = this.tracked.get(cr);
    if (!t) return;
    this.wipe(t);
    this.tracked.delete(cr);
    this.stats.forgotten++;
  }

  private wipe(t: Tracked): void {
    for (const v of Object.values(t.entry)) if (Buffer.isBuffer(v)) v.fill(0);
  }
}
