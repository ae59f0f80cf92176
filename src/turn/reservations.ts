/**
 * RESERVATION-TOKENs across relay workers (issue 13, turn.workers > 1). RFC 8656 §7.2: an
 * Allocate with EVEN-PORT's R bit reserves the next port and answers with a
 * RESERVATION-TOKEN; a later Allocate carrying that token (step 5), typically from the
 * client's RTCP socket, gets the reserved port. With workers, that second 5-tuple hashes
 * to any worker's SO_REUSEPORT socket (socket(7)), so the token may reach a worker that
 * did not make it. Such a worker asks its siblings through the supervisor
 * (src/cli/worker-reservations.ts, src/turn/worker-exchange.ts); the worker holding the reservation hands
 * over the bound socket itself (a descriptor over the IPC channel), so the relayed port is
 * exactly the reserved one. A token no worker holds is 508, as on one server.
 */
import type { Socket } from 'node:dgram';

/** A reservation as it travels between workers: the bound socket, its port and family. */
export interface HandedReservation {
  socket: Socket;
  port: number;
  family: 4 | 6;
}

export interface ReservationExchange {
  /** A token this server does not hold: the reservation from the sibling that does, or null (then 508). */
  claim(tokenHex: string): Promise<HandedReservation | null>;
}
