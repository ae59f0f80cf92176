export interface TurnStats {
  allocations: number;
  permissions: number;
  channels: number;
  packets: { clientToPeer: number; peerToClient: number };
  bytes: { clientToPeer: number; peerToClient: number };
  /**
   * Authentication failures by reason: bad_request (missing USERNAME/REALM/NONCE or bad
   * PASSWORD-ALGORITHM(S)), stale_nonce, bad_realm, unknown_user, rest_expired,
   * bad_integrity, wrong_credentials (441). The initial 401 challenge is not a failure.
   */
  authFailures: Record<string, number>;
  /**
   * Requests, packets and connections refused by a bound, by reason (README "Limits"):
   * permission_cap, channel_cap, flow_cap_user, flow_cap_total (508);
   * connection_cap_source, connection_cap_total (closed at accept); connection_idle
   * (closed); allocate_rate, unauthorized_rate (dropped silently); legacy_channel (400);
   * stream_backlog (an answer dropped: its TCP/TLS client does not read); capacity_alternate
   * (300 Try Alternate at turn.max_allocations), capacity (508 there, no alternate);
   * dont_fragment (DONT-FRAGMENT without the native addon that sets DF: an Allocate's 420,
   * a Send indication discarded, RFC 8656 §7.2 step 4, §11.2).
   */
  refused: Record<string, number>;
}

export function newStats(): TurnStats {
  return {
    allocations: 0,
    permissions: 0,
    channels: 0,
    packets: { clientToPeer: 0, peerToClient: 0 },
    bytes: { clientToPeer: 0, peerToClient: 0 },
    authFailures: {},
    refused: {},
  };
}

export function count(m: Record<string, number>, reason: string): void {
  m[reason] = (m[reason] ?? 0) + 1;
}
