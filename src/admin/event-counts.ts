/**
 * Counts of the events the gateway emits, for /metrics (issue 14): every event by
 * event_type, alerts by action, quota crossings by quota id. It is one more sink of the
 * FanoutEventSink, so it sees exactly what events.jsonl, the admin API and Redis see.
 * Bounded: at most MAX_LABEL_VALUES distinct values per label, the rest counted as "other"
 * (event types and quota ids come from code and the rules file, but an unbounded label is
 * never built from event content).
 */
import type { EveEvent, EventSink } from '../events/eve.js';

export const MAX_LABEL_VALUES = 64;

/** contract.md "Events": the event_type values every scrape shows, at 0 until one happens. */
export const CONTRACT_EVENT_TYPES = [
  'allocation',
  'permission',
  'pcp_mapping',
  'key_request',
  'keys_received',
  'keys_verified',
  'keys_invalid',
  'keys_declined',
  'flow_blocked',
  'alert',
  'file',
  'recording',
  'quota',
] as const;

/** alert.action as the inspector writes it (Suricata's EVE words): block and drop rules say blocked. */
export const ALERT_ACTIONS = ['allowed', 'blocked'] as const;

export interface EventCountsSource {
  byType: Record<string, number>;
  alertsByAction: Record<string, number>;
  quotaCrossings: Record<string, number>;
}

/** A label -> count table without a prototype: a quota id `constructor` or `__proto__` is a label like any other. */
function table(keys: readonly string[] = []): Record<string, number> {
  const m = Object.create(null) as Record<string, number>;
  for (const k of keys) m[k] = 0;
  return m;
}

function bump(m: Record<string, number>, key: unknown): void {
  let k = typeof key === 'string' && key !== '' ? key : 'unknown';
  if (!Object.hasOwn(m, k) && Object.keys(m).length >= MAX_LABEL_VALUES) k = 'other';
  m[k] = (m[k] ?? 0) + 1;
}

export class EventCounter implements EventSink {
  readonly counts: EventCountsSource = {
    byType: table(CONTRACT_EVENT_TYPES),
    alertsByAction: table(ALERT_ACTIONS),
    quotaCrossings: table(),
  };

  emit(e: EveEvent): void {
    bump(this.counts.byType, e.event_type);
    if (e.event_type === 'alert') bump(this.counts.alertsByAction, (e.alert as { action?: unknown } | undefined)?.action);
    else if (e.event_type === 'quota') bump(this.counts.quotaCrossings, (e.quota as { id?: unknown } | undefined)?.id);
  }

  /** Quota ids in force (the rules file) show at 0 before their first crossing. */
  knowQuotas(ids: readonly string[]): void {
    for (const id of ids) {
      if (Object.hasOwn(this.counts.quotaCrossings, id) || Object.keys(this.counts.quotaCrossings).length >= MAX_LABEL_VALUES) continue;
      this.counts.quotaCrossings[id] = 0;
    }
  }

  close(): void {}
}
