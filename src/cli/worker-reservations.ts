/**
 * A relay worker's side of RESERVATION-TOKENs across workers (src/turn/reservations.ts):
 * it asks the supervisor for a token it does not hold (the supervisor asks the siblings,
 * src/turn/worker-exchange.ts), and hands over a reservation it holds when the supervisor asks,
 * the bound relay socket itself going as a descriptor over the IPC channel
 * (child_process send with a dgram.Socket handle).
 */
import type { Socket } from 'node:dgram';
import type { TurnServer } from '../turn/server.js';
import type { HandedReservation, ReservationExchange } from '../turn/reservations.js';
import type { WorkerCommand, WorkerReply } from '../turn/workers.js';
import { PendingReplies } from '../util/pending-replies.js';

/** How long a claim waits for the supervisor, and how many wait at once (beyond: 508 at once). */
const CLAIM_WAIT_MS = 1_000;
const MAX_CLAIMS_WAITING = 64;

type Send = (m: WorkerReply, handle?: Socket, done?: (err: Error | null) => void) => void;

const closeQuietly = (s: Socket): void => {
  try {
    s.close();
  } catch {
    // already closed
  }
};

export function workerReservations(send: Send, turn: () => TurnServer | undefined) {
  const pending = new PendingReplies<HandedReservation>(MAX_CLAIMS_WAITING, CLAIM_WAIT_MS);
  const exchange: ReservationExchange = {
    claim: (token) => pending.ask((id) => send({ type: 'reservation-claim', id, token })),
  };
  return {
    exchange,
    onCommand(m: WorkerCommand, handle: unknown): void {
      if (m?.type === 'reservation-give' && Number.isInteger(m.id) && typeof m.token === 'string') {
        const r = turn()?.giveReservation(m.token) ?? null;
        if (!r) return send({ type: 'reservation-given', id: m.id, port: null, family: null });
        // Our copy closes once the descriptor is on its way; the kernel socket lives on there.
        send({ type: 'reservation-given', id: m.id, port: r.port, family: r.family }, r.socket, () => closeQuietly(r.socket));
      } else if (m?.type === 'reservation-claimed' && Number.isInteger(m.id)) {
        const socket = handle as Socket | undefined;
        const handed = socket && m.port !== null && m.family !== null ? { socket, port: m.port, family: m.family } : null;
        // Late (the claim gave up), or no reservation after all: the socket is nobody's.
        if ((!pending.answer(m.id, handed) || !handed) && socket) closeQuietly(socket);
      }
    },
  };
}
