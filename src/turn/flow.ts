import type { StunMessage, TransportAddress } from '../wire/stun.js';

/**
 * The seam for key escrow and inspection (design.md "One packet's walk").
 *
 * A flow is one allocation × one peer IP address (key-escrow.md §1: TURN permissions
 * are per IP, RFC 8656 §9). It is created when a permission for that IP is installed
 * (CreatePermission or ChannelBind) and closed when the permission expires, the
 * allocation goes away, or TurnServer.closeFlow() is called. Re-installing a permission
 * after that makes a new flow with a new id.
 */
export interface Flow {
  /** Unique per server run; used as EVE flow_id. */
  readonly id: number;
  readonly allocationId: string;
  /** Account the allocation is charged to (REST: the part after "expiry:"). */
  readonly user: string;
  readonly groups: readonly string[];
  /** A conference guest (TURN REST `EXPIRY:guest/CONFERENCE/IDENTITY`, core.md §8). */
  readonly guest?: true;
  /** The core conference of the flow's credential (core.md §8: guests by their username, users by the core's issue record). */
  readonly conference?: string;
  /** The core room of the flow's credential (core.md §7, users admitted to a room). */
  readonly room?: string;
  /** The user's organisation when the core admitted them by authentication transfer (core.md §6). */
  readonly org?: string;
  readonly client: { proto: 'udp' | 'tcp' | 'tls'; address: string; port: number };
  readonly relayed: { address: string; port: number };
  readonly peerAddress: string;
  readonly createdAt: number;
  /** False once closed. */
  readonly open: boolean;
  /** Free slot for the inspection layer's per-flow state (the server never reads it). */
  ctx: unknown;
}

export type FlowDirection = 'c2p' | 'p2c';

/**
 * Optional hooks; every one is called synchronously on the server's event loop. The
 * per-packet hook receives a view of the datagram (valid only during the call: copy what
 * you keep) and must not allocate closures per call. Default: forward everything.
 */
export interface FlowHooks {
  onFlowCreated?(flow: Flow): void;
  /**
   * Called for every relayed payload (ChannelData, Send and peer datagrams) before it is
   * forwarded. Return false to drop that packet.
   */
  onPacket?(flow: Flow, dir: FlowDirection, data: Buffer, peerPort: number): boolean;
  onFlowClosed?(flow: Flow, reason: string): void;
  /**
   * Called before a permission for a new flow is installed; return false to refuse it
   * (the request fails with 403 Forbidden, key-escrow.md §5.4).
   */
  permitPeer?(info: { allocationId: string; user: string; groups: readonly string[] }, peerAddress: string): boolean;
}

/** What a request extension sees (authenticated CreatePermission / ChannelBind). */
export interface TurnRequestContext {
  method: number;
  msg: StunMessage;
  /** The long-term key that verified the request (for HKDF of escrowed keys). Never log it. */
  key: Buffer;
  nonce: string;
  user: string;
  username: string;
  groups: readonly string[];
  allocationId: string;
  peers: TransportAddress[];
  /** Transaction ID shared by request and response. */
  transactionId: Buffer;
}

export interface TurnRequestVerdict {
  /** Reject the request; nothing of it takes effect. */
  error?: { code: number; reason?: string };
  /** Attributes for the success response, placed before MESSAGE-INTEGRITY. */
  attrs?: { type: number; value: Buffer }[];
  /** Called after the request took effect, with the flows of its peers. */
  commit?(flows: Flow[]): void;
}

/**
 * Extends request handling (key escrow: KEY-REQUEST / WRITE-KEYS / KEY-DECLINE /
 * KEY-STATUS, 0xC1A0-0xC1A3). Comprehension-optional attributes need no registration;
 * list comprehension-required ones in `attributes` so they do not draw a 420.
 */
export interface TurnRequestExtension {
  readonly attributes?: readonly number[];
  onRequest?(ctx: TurnRequestContext): TurnRequestVerdict | void;
}
