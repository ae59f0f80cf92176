import { Attr, getXorAddresses } from '../../wire/stun.js';
import type { Req } from '../responder.js';
import type { FlowImpl } from '../state.js';
import { checkPeer, commitVerdicts, ownAllocation, overFlowCaps, runExtensions, type TurnContext } from './context.js';

/** CreatePermission (RFC 8656 §10.2): all XOR-PEER-ADDRESSes or none. */
export function onCreatePermission(ctx: TurnContext, r: Req): void {
  const a = ownAllocation(ctx, r);
  if (!a) return;
  const peers = getXorAddresses(r.msg, Attr.XorPeerAddress);
  if (!peers || peers.length === 0) return ctx.res.fail(r, 400, 'Missing or malformed XOR-PEER-ADDRESS');
  for (const p of peers) {
    const code = checkPeer(ctx, a, p);
    if (code) return ctx.res.fail(r, code);
  }
  if (
    overFlowCaps(
      ctx,
      r,
      a,
      ctx.table.newPermissions(
        a,
        peers.map((p) => p.address),
      ),
    )
  )
    return;
  const verdicts = runExtensions(ctx, a, r, peers);
  if (!Array.isArray(verdicts)) return ctx.res.fail(r, verdicts.code, verdicts.reason);
  const flows: FlowImpl[] = [];
  for (const p of peers) flows.push(ctx.table.installPermission(a, p.address, p.port, null));
  // A flow hook that threw closed its flow (supervision): the request did not take effect.
  if (flows.some((f) => !f.open)) return ctx.res.fail(r, 500);
  const w = ctx.res.success(r.msg);
  for (const v of verdicts) for (const x of v.attrs ?? []) w.attr(x.type, x.value);
  ctx.res.ok(r, w);
  commitVerdicts(ctx, verdicts, flows);
}
