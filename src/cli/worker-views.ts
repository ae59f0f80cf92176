/**
 * What worker 0 shows of every relay worker on the admin listener (issue 13,
 * turn.workers > 1; the supervisor's side is src/turn/worker-exchange.ts):
 *
 *   - /metrics: every worker's registry, aggregated by the supervisor
 *     (src/admin/worker-metrics.ts);
 *   - /v1/flows and the dashboard's flows: every worker's flows, each with its `worker`;
 *   - the recent events (/v1/events) and the dashboard's live stream: the other workers'
 *     events too (each names its worker in `host`), sent in batches every 250 ms.
 *
 * When the supervisor does not answer in time worker 0 serves its own (metrics marked so).
 * Every worker answers the supervisor's collects with its part.
 */
import type { EventSink, EveEvent } from '../events/eve.js';
import type { RunningGateway } from '../gateway/gateway.js';
import type { Logger } from '../util/log.js';
import { PendingReplies } from '../util/pending-replies.js';
import { MAX_EVENTS_PER_BATCH, type GatherKind, type WorkerCommand } from '../turn/worker-exchange.js';
import type { WorkerReply } from '../turn/workers.js';

/** Worker 0 waits this long for the supervisor's answer, and this many wait at once, before serving its own. */
const GATHER_WAIT_MS = 5_000;
const MAX_GATHERS_WAITING = 16;
/** A worker > 0 sends its events to worker 0 this often (at most MAX_EVENTS_PER_BATCH each time). */
const EVENT_BATCH_MS = 250;

interface QuotaRow {
  quota: string;
  subject: string;
  window: string;
  used: number;
}

export function workerViews(o: { index: number; reply: (m: WorkerReply) => void; gateway: () => RunningGateway | undefined; log: Logger }) {
  const pending = new PendingReplies<string | unknown[]>(MAX_GATHERS_WAITING, GATHER_WAIT_MS);
  const ask = (kind: GatherKind) => pending.ask((id) => o.reply({ type: 'gather-request', id, kind }));
  const ownMetrics = async (why: string): Promise<string> =>
    `# gatehouse: this worker's metrics only (${why})\n${await o.gateway()!.registry.metrics()}`;
  const tagged = (gw: RunningGateway): unknown[] => gw.flows().map((f) => ({ ...(f as object), worker: o.index }));

  // Workers > 0: this worker's events, batched for worker 0.
  let batch: EveEvent[] = [];
  let dropped = 0;
  let timer: NodeJS.Timeout | null = null;
  const flush = (): void => {
    timer = null;
    if (batch.length) o.reply({ type: 'events', events: batch });
    if (dropped) o.log.warn({ dropped }, 'relay worker: events not shown on worker 0 (batch full)');
    batch = [];
    dropped = 0;
  };
  const eventTap: EventSink = {
    emit(e: EveEvent): void {
      if (batch.length >= MAX_EVENTS_PER_BATCH) return void dropped++;
      batch.push(e);
      timer ??= setTimeout(flush, EVENT_BATCH_MS).unref();
    },
    close(): void {
      if (timer) clearTimeout(timer);
      flush();
    },
  };

  return {
    /** Worker 0's /metrics. */
    async metrics(): Promise<string> {
      if (pending.size >= MAX_GATHERS_WAITING) return ownMetrics('too many requests at once');
      const text = await ask('metrics');
      return typeof text === 'string' ? text : ownMetrics('the supervisor did not aggregate the workers');
    },
    /** Worker 0's /v1/flows and dashboard flows. */
    async flows(): Promise<unknown[]> {
      const all = await ask('flows'); // null at once when MAX_GATHERS_WAITING already wait
      return Array.isArray(all) ? all : tagged(o.gateway()!);
    },
    /**
     * Worker 0's dashboard quota view: every worker's windows; the same (quota, subject,
     * window) on several workers is one row with the highest use (each worker's counter
     * is the cluster's total it knows, src/cluster).
     */
    async quotas(): Promise<unknown[]> {
      const all = await ask('quotas');
      if (!Array.isArray(all)) return o.gateway()!.quotas();
      const rows = new Map<string, QuotaRow>();
      for (const r of all as QuotaRow[]) {
        if (!r || typeof r !== 'object') continue;
        const key = `${r.quota}\0${r.subject}\0${r.window}`;
        const had = rows.get(key);
        if (!had || Number(r.used) > Number(had.used)) rows.set(key, r);
      }
      return [...rows.values()];
    },
    eventTap,
    onCommand(m: WorkerCommand): void {
      const gw = o.gateway();
      if (m?.type === 'gather-collect' && Number.isInteger(m.id)) {
        if (!gw) return; // not serving yet: the supervisor does not wait for it
        if (m.kind === 'flows') return o.reply({ type: 'gather-part', id: m.id, part: tagged(gw) });
        if (m.kind === 'quotas') return o.reply({ type: 'gather-part', id: m.id, part: gw.quotas() });
        gw.registry.getMetricsAsJSON().then(
          (part) => o.reply({ type: 'gather-part', id: m.id, part }),
          () => o.reply({ type: 'gather-part', id: m.id, part: [] }),
        );
      } else if (m?.type === 'gather-response' && Number.isInteger(m.id)) pending.answer(m.id, m.result ?? null);
      else if (m?.type === 'sibling-events' && gw && Array.isArray(m.events)) {
        for (const e of m.events.slice(0, MAX_EVENTS_PER_BATCH))
          if (e && typeof e === 'object' && typeof (e as EveEvent).event_type === 'string') gw.showEvent(e as EveEvent);
      }
    },
  };
}
