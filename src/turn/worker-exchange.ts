/**
 * What relay workers ask of each other through the supervisor (issue 13, turn.workers > 1),
 * over their IPC channels: what worker 0 shows of all of them on the admin listener
 * (/metrics, src/admin/worker-metrics.ts; /v1/flows and the dashboard's flows; the other
 * workers' events in its recent events and dashboard stream; src/cli/worker-views.ts), and
 * RESERVATION-TOKENs a worker does not hold (src/turn/reservations.ts). The supervisor
 * relays and bounds these; it keeps no state of its own but the requests in flight.
 */
import type { ChildProcess } from 'node:child_process';
import type { Logger } from '../util/log.js';

/** A worker's requests and answers in the exchange (beside its lifecycle messages, workers.ts). */
export type ExchangeRequest =
  // Worker 0 asks for every worker's metrics or flows; every worker answers a collect with its part.
  | { type: 'gather-request'; id: number; kind: GatherKind }
  | { type: 'gather-part'; id: number; part: unknown }
  // A worker > 0's events, batched, for worker 0's recent events and dashboard.
  | { type: 'events'; events: unknown[] }
  // RESERVATION-TOKENs: a worker claims a token it does not hold; the holder answers a
  // give with the bound relay socket as the message's handle.
  | { type: 'reservation-claim'; id: number; token: string }
  | { type: 'reservation-given'; id: number; port: number | null; family: 4 | 6 | null };

/** What the supervisor sends a serving worker besides its start message. */
export type WorkerCommand =
  | { type: 'gather-collect'; id: number; kind: GatherKind }
  /** metrics: the exposition text; flows, quotas: every worker's items, in worker order; null: serve your own. */
  | { type: 'gather-response'; id: number; result: string | unknown[] | null }
  | { type: 'sibling-events'; events: unknown[] }
  | { type: 'reservation-give'; id: number; token: string }
  | { type: 'reservation-claimed'; id: number; port: number | null; family: 4 | 6 | null };

export type GatherKind = 'metrics' | 'flows' | 'quotas';

/** Events one forwarded batch may carry (the sender drops beyond, counted). */
export const MAX_EVENTS_PER_BATCH = 1000;

export interface ServingWorker {
  index: number;
  child: ChildProcess;
}

/** Gathers: how long the supervisor waits for the workers' parts, and how many run at once. */
const GATHER_TIMEOUT_MS = 2_000;
const MAX_GATHERS = 4;
/** RESERVATION-TOKEN claims: the siblings' time to answer (under the claimant's 1 s), and claims at once. */
const CLAIM_TIMEOUT_MS = 800;
const MAX_CLAIMS = 256;
const TOKEN_HEX = /^[0-9a-f]{16}$/;

/** A descriptor passed over IPC (a dgram.Socket here) that nobody will use: closed. */
function closeHandle(h: unknown): void {
  try {
    (h as { close?: () => void } | undefined)?.close?.();
  } catch {
    // already closed
  }
}

export interface WorkerExchangeOptions {
  log: Logger;
  /** The workers serving now (said ready, connected). */
  serving(): ServingWorker[];
  /** Workers restarted over the supervisor's life (gatehouse_worker_restarts_total). */
  restarts(): number;
  /** The workers' metrics parts, in worker order, and the restart count, as exposition text. */
  aggregateMetrics?: (parts: unknown[], restarts: number) => Promise<string>;
}

export class WorkerExchange {
  private readonly gathers = new Map<number, (worker: number, part: unknown) => void>();
  private gatherId = 0;
  private readonly claims = new Map<number, (worker: number, m: { port?: unknown; family?: unknown }, handle: unknown) => void>();
  private claimId = 0;

  constructor(private readonly o: WorkerExchangeOptions) {}

  /**
   * A message of `from`; its lifecycle messages (workers.ts) carry no id and are not for
   * here. `serving`: it is its slot's live, ready worker (a dead one's late words are not).
   */
  onMessage(from: ServingWorker, serving: boolean, msg: unknown, handle: unknown): void {
    const m = msg as {
      type?: unknown;
      id?: unknown;
      kind?: unknown;
      part?: unknown;
      events?: unknown;
      token?: unknown;
      port?: unknown;
      family?: unknown;
    } | null;
    if (serving && m?.type === 'events' && from.index > 0) return this.forwardEvents(m.events);
    if (!serving || !m || typeof m.id !== 'number' || !Number.isInteger(m.id)) return closeHandle(handle);
    const id = m.id;
    // Only worker 0 serves the admin listener: a request from another is ignored.
    if (m.type === 'gather-request' && from.index === 0 && (m.kind === 'metrics' || m.kind === 'flows' || m.kind === 'quotas'))
      void this.answerGather(from.child, id, m.kind);
    else if (m.type === 'gather-part') this.gathers.get(id)?.(from.index, m.part);
    else if (m.type === 'reservation-claim') this.claimReservation(from, id, m.token);
    else if (m.type === 'reservation-given') {
      const claim = this.claims.get(id);
      if (claim) return claim(from.index, m, handle);
    }
    closeHandle(handle); // a socket nobody waits for any more (a late answer)
  }

  /**
   * A worker got an Allocate with a RESERVATION-TOKEN it does not hold: every other serving
   * worker is asked; the one holding it sends the reserved socket, which goes on to the
   * claimant. None, or no answer in CLAIM_TIMEOUT_MS: the claimant answers 508.
   */
  private claimReservation(from: ServingWorker, reqId: number, token: unknown): void {
    const child = from.child;
    const reply = (port: number | null, family: 4 | 6 | null, handle?: unknown): void => {
      const answer: WorkerCommand = { type: 'reservation-claimed', id: reqId, port, family };
      if (!child.connected) return closeHandle(handle);
      if (handle) child.send(answer, handle as Parameters<ChildProcess['send']>[1], () => closeHandle(handle));
      else child.send(answer);
    };
    const siblings = this.o.serving().filter((s) => s.index !== from.index);
    if (typeof token !== 'string' || !TOKEN_HEX.test(token) || siblings.length === 0 || this.claims.size >= MAX_CLAIMS)
      return reply(null, null);
    const id = ++this.claimId;
    let left = siblings.length;
    const finish = (port: number | null, family: 4 | 6 | null, handle?: unknown): void => {
      clearTimeout(timer);
      this.claims.delete(id);
      reply(port, family, handle);
    };
    const timer = setTimeout(() => finish(null, null), CLAIM_TIMEOUT_MS);
    this.claims.set(id, (worker, m, handle) => {
      if (!siblings.some((s) => s.index === worker)) return closeHandle(handle);
      const { port, family } = m;
      if (handle && typeof port === 'number' && Number.isInteger(port) && (family === 4 || family === 6))
        return finish(port, family, handle);
      closeHandle(handle);
      if (--left === 0) finish(null, null);
    });
    const give: WorkerCommand = { type: 'reservation-give', id, token };
    for (const s of siblings) s.child.send(give);
  }

  /** A batch of a worker > 0's events, passed on to worker 0 (bounded by the sender; cut here too). */
  private forwardEvents(events: unknown): void {
    if (!Array.isArray(events) || events.length === 0) return;
    const zero = this.o.serving().find((s) => s.index === 0);
    const batch: WorkerCommand = { type: 'sibling-events', events: events.slice(0, MAX_EVENTS_PER_BATCH) };
    if (zero) zero.child.send(batch);
  }

  /**
   * Worker 0's /metrics (every serving worker's registry, aggregated) or flows (every
   * worker's, in worker order); null tells it to serve its own.
   */
  private async answerGather(child: ChildProcess, id: number, kind: GatherKind): Promise<void> {
    let result: string | unknown[] | null = null;
    if (this.gathers.size < MAX_GATHERS && (kind !== 'metrics' || this.o.aggregateMetrics)) {
      try {
        const parts = await this.gather(kind);
        result =
          kind === 'metrics' ? await this.o.aggregateMetrics!(parts, this.o.restarts()) : parts.flatMap((p) => (Array.isArray(p) ? p : []));
      } catch (err) {
        this.o.log.warn({ err: (err as Error).message, kind }, 'relay workers: not gathered');
      }
    }
    const answer: WorkerCommand = { type: 'gather-response', id, result };
    if (child.connected) child.send(answer);
  }

  /** Asks every serving worker for its part; what arrived within GATHER_TIMEOUT_MS, in worker order. */
  private gather(kind: GatherKind): Promise<unknown[]> {
    const id = ++this.gatherId;
    const live = this.o.serving();
    return new Promise((resolve) => {
      const parts = new Map<number, unknown>();
      const finish = (): void => {
        clearTimeout(timer);
        this.gathers.delete(id);
        resolve([...parts.entries()].sort((a, b) => a[0] - b[0]).map(([, p]) => p));
      };
      const timer = setTimeout(finish, GATHER_TIMEOUT_MS);
      this.gathers.set(id, (worker, part) => {
        if (!live.some((s) => s.index === worker) || parts.has(worker)) return;
        parts.set(worker, part);
        if (parts.size === live.length) finish();
      });
      const collect: WorkerCommand = { type: 'gather-collect', id, kind };
      for (const s of live) s.child.send(collect);
      if (live.length === 0) finish();
    });
  }
}
