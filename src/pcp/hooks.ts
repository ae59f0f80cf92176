/**
 * The seams of the PCP floor (design.md: "pcp/ a PCP server and nothing else: listener,
 * mappings and epoch, RFC 7652 authentication, firewall backends"). The server
 * (server.ts) owns mappings and the wire; these interfaces are what it asks of the
 * pieces around it, so authentication (auth/), firewall backends (firewall/) and the
 * gateway's key escrow (src/gateway) plug in without the server knowing them.
 */

/** One PCP option as on the wire (RFC 6887 §7.3), data without the padding. */
export interface PcpOption {
  code: number;
  data: Buffer;
}

export interface PcpAddress {
  /** Canonical text form: dotted quad for IPv4 (also when carried IPv4-mapped, RFC 6887 §5), else IPv6. */
  address: string;
  port: number;
}

/** FILTER (RFC 6887 §13.3): remote peers allowed through a MAP's pinhole. Port 0 = all ports. */
export interface PcpFilter {
  prefix: string;
  prefixLength: number;
  port: number;
}

/** A mapping the server holds (MAP §11 or PEER §12). The firewall backend makes it real. */
export interface PcpMapping {
  /** Unique per server run ("pcp-1", ...): EVE gatehouse.mapping. */
  readonly id: string;
  readonly opcode: 'map' | 'peer';
  /** Where the requests come from (the PCP client's source address and port). */
  readonly client: PcpAddress;
  /** The internal address and port mapped (the client's, or THIRD_PARTY's, §13.1). */
  readonly internal: PcpAddress;
  /** IANA protocol number; 0 = all protocols (§11.1). */
  readonly protocol: number;
  /** The assigned external address and port (port 0 only with protocol 0). */
  readonly external: PcpAddress;
  /** PEER: the remote peer (§12); MAP: null. */
  readonly remote: PcpAddress | null;
  /** MAP with FILTER options: only these remote peers pass (enforced by the backend). */
  readonly filters: readonly PcpFilter[];
  /** The 12-byte mapping nonce (§11.2). Never log it. */
  readonly nonce: Buffer;
  /** Identity of the RFC 7652 security association that created it; null when unauthenticated. */
  readonly user: string | null;
  readonly groups: readonly string[];
  readonly createdAt: number;
  /** Absolute expiry (ms on the server's clock). */
  expiresAt: number;
}

export type PcpMappingEnd = 'deleted' | 'expired' | 'blocked' | 'shutdown' | 'replaced';

/**
 * Makes mappings real in the kernel (nftables NAT + filter, iptables NFQUEUE for the
 * gateway) or in a userspace forwarder. The server awaits install() before it answers
 * SUCCESS: a mapping that the backend could not create is never reported as created.
 */
export interface FirewallBackend {
  readonly name: string;
  /** False when nothing can be programmed here (no root, no nftables); `reason` says why. */
  readonly available: boolean;
  readonly reason?: string;
  install(m: PcpMapping): Promise<void>;
  /** The mapping's filters, lifetime or external port changed. */
  update(m: PcpMapping): Promise<void>;
  remove(m: PcpMapping): Promise<void>;
  close(): Promise<void>;
}

/** An RFC 7652 PCP security association between the server and one PCP client. */
export interface PcpSecurityAssociation {
  /** The session ID of the PA (RFC 7652 §5.1). */
  readonly sessionId: number;
  /** The authenticated identity (EAP identity or certificate subject); "user" of flows. */
  readonly identity: string;
  readonly groups: readonly string[];
  /** The SA transport key (RFC 7652 §5.1, from the EAP MSK). Never log it. */
  readonly transportKey: Buffer;
  readonly expiresAt: number;
}

export type PcpAuthCheck =
  | { ok: true; sa: PcpSecurityAssociation | null }
  /** silent: discard without an answer (a bad AUTHENTICATION_TAG, a replay: RFC 7652 §5.x). */
  | { ok: false; result: number; silent: boolean };

/** RFC 7652 authentication as the server sees it (auth/). */
export interface PcpAuthHook {
  /** Handles an AUTHENTICATION (opcode 3) request; returns the datagrams to send back. */
  onAuthentication(client: PcpAddress, raw: Buffer): Promise<Buffer[]>;
  /** Checks the AUTHENTICATION_TAG of a common (MAP, PEER, ANNOUNCE) request for this client. */
  verify(client: PcpAddress, raw: Buffer, options: readonly PcpOption[]): PcpAuthCheck;
  /** Appends the AUTHENTICATION_TAG option for the client's SA to an encoded response; unchanged without one. */
  sign(client: PcpAddress, response: Buffer): Buffer;
  /** True when common requests of this client need an SA (config pcp.auth.required). */
  required(client: PcpAddress): boolean;
}

/** What an extension (the gateway's key escrow over PCP) sees of a MAP or PEER request. */
export interface PcpRequestContext {
  opcode: 'map' | 'peer';
  client: PcpAddress;
  /** The mapping this request creates or refreshes (not yet installed when new). */
  mapping: PcpMapping;
  isNew: boolean;
  /** Options of the request that the server does not process itself (≥ 128 included). */
  options: readonly PcpOption[];
  sa: PcpSecurityAssociation | null;
}

export interface PcpRequestVerdict {
  /** Refuse the request with this RFC 6887 §7.4 result code (e.g. NOT_AUTHORIZED = 2). */
  result?: number;
  /** Options for the success response (WRITE_KEYS_REQUEST, key-escrow.md §4). */
  options?: PcpOption[];
  /** Called once the mapping is installed and the response is sent. */
  commit?(m: PcpMapping): void;
  /** Called instead of commit when the request does not take effect (the backend failed, the mapping ended meanwhile). */
  abort?(): void;
}

export interface PcpRequestExtension {
  onRequest?(ctx: PcpRequestContext): PcpRequestVerdict | void;
  onMappingCreated?(m: PcpMapping): void;
  onMappingEnded?(m: PcpMapping, why: PcpMappingEnd): void;
}
