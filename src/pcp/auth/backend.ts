/**
 * The EAP authenticator backends of RFC 7652 authentication (auth/): the built-in EAP-TLS
 * server (eap-tls-server.ts) and the RADIUS pass-through (radius-backend.ts, RFC 3579).
 * The PA state machine (pa-server.ts) carries EAP packets between the PCP client and one
 * EapSession per PA session, and takes the MSK when the backend says Success.
 */

export type EapOutcome =
  /** RFC 3748 §4.2 Success: the MSK (64 octets, RFC 5247 §2.1) and who authenticated. Never log the MSK. */
  { ok: true; msk: Buffer; identity: string; groups: string[] } | { ok: false; reason: string };

export interface EapStep {
  /** The next EAP packet for the peer (Request, Success or Failure); null = send nothing (silently discard). */
  eap: Buffer | null;
  /** Set with the Success or Failure packet. */
  outcome?: EapOutcome;
}

export interface EapSession {
  /**
   * The peer's EAP Response (RFC 3748 §4.1). The first call gets the Response/Identity to
   * the Request/Identity that `firstRequest` returned.
   */
  step(response: Buffer): Promise<EapStep>;
  /** The EAP Request/Identity that starts the conversation (RFC 3748 §5.1). */
  firstRequest(): Buffer;
  close(): void;
}

export interface EapBackend {
  readonly name: string;
  open(): EapSession;
  close?(): void;
}
