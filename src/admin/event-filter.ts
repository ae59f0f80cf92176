import type { EveEvent } from '../events/eve.js';

/**
 * GET /v1/events filters: event_type (comma list), since (ISO time), flow_id, user,
 * src_ip, dest_ip, signature_id (alerts), reason (flow_blocked), limit (default 100,
 * max 10000; the newest are returned).
 */
export function filterEvents(events: readonly EveEvent[], q: URLSearchParams): EveEvent[] {
  const types = q.get('event_type')?.split(',').filter(Boolean);
  const since = q.get('since');
  const sinceMs = since ? Date.parse(since) : NaN;
  const flowId = q.get('flow_id');
  const user = q.get('user');
  const src = q.get('src_ip');
  const dest = q.get('dest_ip');
  const sig = q.get('signature_id');
  const reason = q.get('reason');
  const limit = Math.min(10000, Math.max(1, Number(q.get('limit') ?? 100) || 100));
  const out: EveEvent[] = [];
  for (let i = events.length - 1; i >= 0 && out.length < limit; i--) {
    const e = events[i]!;
    const g = (e.gatehouse ?? {}) as Record<string, unknown>;
    if (types && !types.includes(e.event_type)) continue;
    if (!Number.isNaN(sinceMs) && Date.parse(e.timestamp.replace(/(\d{3})\d{3}\+0000$/, '$1Z')) < sinceMs) continue;
    if (flowId && String(e.flow_id) !== flowId) continue;
    if (user && g.user !== user) continue;
    if (src && e.src_ip !== src) continue;
    if (dest && e.dest_ip !== dest) continue;
    if (sig && e.alert?.signature_id !== sig) continue;
    if (reason && g.reason !== reason) continue;
    out.push(e);
  }
  return out.reverse();
}
