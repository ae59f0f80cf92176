/**
 * `auth` events (issue 12): every login, failed login, guest join and authentication
 * transfer is one EVE event (contract.md "Events"), without secrets: never a password,
 * token, ticket, challenge answer, conference key or credential, only who, how and the
 * outcome.
 *
 *   {"event_type":"auth","src_ip":"192.0.2.1","src_port":50123,"proto":"TCP",
 *    "auth":{"mechanism":"Digest","result":"success","user":"alice","groups":["trading"]}}
 *
 * `result` is `success` or `failure`; a failure has `reason` (the core.md error code:
 * `unauthenticated`, `replayed`, `untrusted`, `rate_limited`, `forbidden`, `unavailable`,
 * or `internal` when the mechanism itself failed: a 500);
 * `user` is the name the client claimed (failures) or the one it proved (successes);
 * transfers carry `org` (the user's organisation) and `mechanism: "transfer"`.
 */
import { eveTimestamp } from '../events/eve.js';
import type { CoreContext } from './director.js';
import type { RequestContext } from './http.js';
import { MAX_NAME } from './names.js';

export interface AuthOutcome {
  mechanism: string;
  result: 'success' | 'failure';
  reason?: string;
  user?: string;
  groups?: string[];
  org?: string;
  conference?: string;
  guest?: true;
}

export function emitAuthEvent(core: Pick<CoreContext, 'events' | 'clock'>, ctx: Pick<RequestContext, 'req'> | null, o: AuthOutcome): void {
  if (!core.events) return;
  const sock = ctx?.req.socket;
  const auth: Record<string, unknown> = { mechanism: o.mechanism, result: o.result };
  if (o.reason) auth.reason = o.reason;
  // A claimed name is attacker-chosen: at most MAX_NAME characters of it (src/core/names.ts).
  if (o.user !== undefined) auth.user = o.user.slice(0, MAX_NAME);
  if (o.groups) auth.groups = [...o.groups];
  if (o.org) auth.org = o.org;
  if (o.conference) auth.conference = o.conference;
  if (o.guest) auth.guest = true;
  core.events.emit({
    timestamp: eveTimestamp(core.clock.now()),
    event_type: 'auth',
    ...(sock?.remoteAddress ? { src_ip: sock.remoteAddress.replace(/^::ffff:/, ''), src_port: sock.remotePort } : {}),
    ...(sock?.localAddress ? { dest_ip: sock.localAddress.replace(/^::ffff:/, ''), dest_port: sock.localPort } : {}),
    proto: 'TCP',
    auth,
  });
}
