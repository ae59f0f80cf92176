import type { RemoteInfo, Socket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { Attr, Family, getAttr, hasAttr } from '../../wire/stun.js';
import { closeSocket } from '../allocations.js';
import { bindUdp } from '../relay.js';
import type { Req } from '../responder.js';
import { PROTO_UDP, RESERVATION_MS, type Allocation } from '../state.js';
import { lifetimeFor, type TurnContext } from './context.js';
import { shedAllocate } from '../shedding.js';

/**
 * Allocate (RFC 8656 §7.2), steps in the RFC's order. Synchronous up to the quota slot;
 * then the relay socket is bound (async) and the allocation registered.
 */
export function onAllocate(ctx: TurnContext, r: Req, onMessage: (a: Allocation, m: Buffer, rinfo: RemoteInfo) => void): void {
  const { ep, msg } = r;
  const err = (code: number, reason?: string): void => ctx.res.fail(r, code, reason);
  // Step 2: one allocation per 5-tuple.
  if (ctx.table.find(ep) || ctx.pending.has(ep.key)) return err(437);
  // Step 3: REQUESTED-TRANSPORT is mandatory; only UDP is relayed.
  const rt = getAttr(msg, Attr.RequestedTransport);
  if (!rt || rt.length !== 4) return err(400, 'Missing or malformed REQUESTED-TRANSPORT');
  if (rt[0] !== PROTO_UDP) return err(442);
  // Step 4: DONT-FRAGMENT asks whether the server can send with DF set. A server that
  // cannot (no native addon, src/turn/dont-fragment.ts) does not know the attribute
  // (ctx.known), so such an Allocate got 420 before this handler (RFC 8489 §6.3.1.1). DF is
  // then set per Send indication that asks for it (§11.2, §14), not for the allocation.
  const dontFragment = hasAttr(msg, Attr.DontFragment);
  // Steps 5-9: RESERVATION-TOKEN, address families, EVEN-PORT.
  const tokenV = getAttr(msg, Attr.ReservationToken);
  const evenV = getAttr(msg, Attr.EvenPort);
  const rafV = getAttr(msg, Attr.RequestedAddressFamily);
  const aafV = getAttr(msg, Attr.AdditionalAddressFamily);
  if (tokenV && (evenV || rafV || aafV)) return err(400, 'RESERVATION-TOKEN with EVEN-PORT or an address family');
  if (tokenV && tokenV.length !== 8) return err(400, 'Malformed RESERVATION-TOKEN');
  if (evenV && evenV.length !== 1) return err(400, 'Malformed EVEN-PORT');
  if (rafV && aafV) return err(400, 'REQUESTED-ADDRESS-FAMILY with ADDITIONAL-ADDRESS-FAMILY');
  // Issue 14, load shedding: at turn.max_allocations a well-formed Allocate is sent to a
  // less loaded server (300 + ALTERNATE-SERVER, RFC 8489 §10) or refused (508, RFC 8656
  // §19). A RESERVATION-TOKEN names a port reserved on this server (RFC 8656 §7.2 step 5)
  // by an allocation it already admitted: it is never sent elsewhere.
  if (!tokenV && shedAllocate(ctx, r)) return;
  let family: 4 | 6 = 4;
  if (rafV) {
    if (rafV.length !== 4) return err(400, 'Malformed REQUESTED-ADDRESS-FAMILY');
    if (rafV[0] === Family.IPv4) family = 4;
    else if (rafV[0] === Family.IPv6) family = 6;
    else return err(440);
  }
  // Step 9: ADDITIONAL-ADDRESS-FAMILY may only ask for IPv6.
  if (aafV && (aafV.length !== 4 || aafV[0] !== Family.IPv6)) return err(400, 'Malformed ADDITIONAL-ADDRESS-FAMILY');
  let reservation = null;
  // Issue 13: a token this worker does not hold may be a sibling worker's (src/turn/reservations.ts).
  let claim: string | null = null;
  if (tokenV) {
    // Step 5: an unknown or expired token: 508.
    reservation = ctx.table.takeReservation(tokenV.toString('hex'));
    if (!reservation && !ctx.reservations) return err(508);
    if (reservation) family = reservation.family;
    else {
      claim = tokenV.toString('hex');
      family = ctx.relayFamily; // every worker relays from turn.relay_address's family
    }
  }
  // Step 7: only the family of config.turn.relay_address can be relayed.
  if (family !== ctx.relayFamily && !aafV) {
    if (reservation) giveBack(ctx, reservation);
    return err(440);
  }
  const lifetime = lifetimeFor(ctx, msg);
  if (lifetime === null) {
    if (reservation) giveBack(ctx, reservation);
    return err(400, 'Malformed LIFETIME');
  }
  // Step 10: the per-user quota (486). The slot is taken now, before any await, so
  // concurrent Allocates of one user cannot all pass on the same count.
  const user = r.auth.cred.user;
  if (!ctx.table.takeSlot(user, ctx.cfg.turn.max_allocations_per_user)) {
    if (reservation) giveBack(ctx, reservation);
    return err(486);
  }
  ctx.pending.set(ep.key, msg.transactionId.toString('hex'));
  const even = !!evenV;
  const reserve = even && (evenV![0]! & 0x80) !== 0;
  const bound: Promise<{ socket: Socket; port: number; token: Buffer | null } | null> = reservation
    ? Promise.resolve({ socket: reservation.socket, port: reservation.port, token: null })
    : claim !== null
      ? ctx.reservations!.claim(claim).then((h) => {
          if (!h) return null;
          if (h.family === family) return { socket: h.socket, port: h.port, token: null };
          closeSocket(h.socket);
          return null;
        })
      : bindRelay(ctx, even, reserve);
  bound
    .then((got) => {
      ctx.pending.delete(ep.key);
      if (!got) {
        ctx.table.releaseSlot(user);
        return err(508); // RFC 8656 §7.4 / §19: no relayed transport address available
      }
      if (ctx.stopped() || (ep.conn && ep.conn.closed)) {
        ctx.table.releaseSlot(user);
        closeSocket(got.socket);
        ctx.pool.release(got.port);
        return;
      }
      created(ctx, r, got, lifetime, dontFragment, !!aafV, onMessage);
    })
    .catch((e: unknown) => {
      ctx.pending.delete(ep.key);
      ctx.sup.caught('turn.allocate', e);
    });
}

/** A reservation taken for a request that then failed goes back (RFC 8656 §7.2). */
function giveBack(ctx: TurnContext, r: { token: string; socket: Socket; port: number; family: 4 | 6; expiresAt: number }): void {
  ctx.table.reservations.set(r.token, r);
}

function created(
  ctx: TurnContext,
  r: Req,
  got: { socket: Socket; port: number; token: Buffer | null },
  lifetime: number,
  dontFragment: boolean,
  wantsAdditionalV6: boolean,
  onMessage: (a: Allocation, m: Buffer, rinfo: RemoteInfo) => void,
): void {
  const { ep, msg, auth } = r;
  const alloc: Allocation = {
    id: randomBytes(8).toString('hex'),
    ep,
    user: auth.cred.user,
    username: auth.cred.username,
    groups: auth.cred.groups,
    ...(auth.cred.guest ? { guest: true as const } : {}),
    ...(auth.cred.conference !== undefined ? { conference: auth.cred.conference } : {}),
    ...(auth.cred.room !== undefined ? { room: auth.cred.room } : {}),
    ...(auth.cred.org !== undefined ? { org: auth.cred.org } : {}),
    family: ctx.relayFamily,
    relayAddress: ctx.cfg.turn.relay_address,
    relayPort: got.port,
    socket: got.socket,
    expiresAt: ctx.clock.now() + lifetime * 1000,
    permissions: new Map(),
    channels: new Map(),
    activeChannels: 0,
    dontFragment,
    deleted: false,
  };
  const socket = got.socket;
  socket.removeAllListeners('message');
  socket.on(
    'message',
    ctx.sup.guard('turn.relay.message', (m: Buffer, rinfo: RemoteInfo) => onMessage(alloc, m, rinfo)),
  );
  socket.on('error', (e) => ctx.log.debug({ err: e.message, allocation: alloc.id }, 'relay socket error'));
  ctx.table.add(alloc);

  const w = ctx.res.success(msg);
  w.xorAddress(Attr.XorRelayedAddress, alloc.relayAddress, alloc.relayPort);
  if (wantsAdditionalV6) {
    // RFC 8656 §7.2 step 9: a dual allocation was asked but only the relay's family is
    // served; ADDRESS-ERROR-CODE (§18.12) names the family that failed, with 440.
    const reason = Buffer.from('Address Family not Supported');
    const v = Buffer.alloc(4 + reason.length);
    v[0] = ctx.relayFamily === 6 ? Family.IPv4 : Family.IPv6;
    v[2] = 4;
    v[3] = 40;
    reason.copy(v, 4);
    w.attr(Attr.AddressErrorCode, v);
  }
  w.u32(Attr.Lifetime, lifetime);
  if (got.token) w.attr(Attr.ReservationToken, got.token);
  w.xorAddress(Attr.XorMappedAddress, ep.remoteAddress, ep.remotePort);
  ctx.res.ok(r, w);
  ctx.log.debug({ allocation: alloc.id, user: alloc.user, relayed: `${alloc.relayAddress}:${alloc.relayPort}` }, 'allocation created');
  ctx.events.allocation(alloc, 'created', lifetime);
}

/** Binds a relay socket on a free port (even, and reserving port+1, on request; RFC 8656 §7.2). */
async function bindRelay(
  ctx: TurnContext,
  even: boolean,
  reserve: boolean,
): Promise<{ socket: Socket; port: number; token: Buffer | null } | null> {
  const type = ctx.relayFamily === 6 ? 'udp6' : 'udp4';
  const addr = ctx.cfg.turn.relay_address;
  const pool = ctx.pool;
  for (const p of pool.candidates(64, even)) {
    if (pool.isUsed(p) || (reserve && pool.isUsed(p + 1))) continue;
    pool.take(p);
    if (reserve) pool.take(p + 1);
    let s: Socket;
    try {
      s = await bindUdp(type, addr, p);
    } catch {
      pool.release(p);
      if (reserve) pool.release(p + 1);
      continue;
    }
    if (!reserve) return { socket: s, port: p, token: null };
    try {
      const s2 = await bindUdp(type, addr, p + 1);
      const token = randomBytes(8);
      ctx.table.reservations.set(token.toString('hex'), {
        token: token.toString('hex'),
        port: p + 1,
        socket: s2,
        family: ctx.relayFamily,
        expiresAt: ctx.clock.now() + RESERVATION_MS,
      });
      return { socket: s, port: p, token };
    } catch {
      closeSocket(s);
      pool.release(p);
      pool.release(p + 1);
    }
  }
  return null;
}
