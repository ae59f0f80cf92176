/**
 * The endpoint agent's PCP client (RFC 6887) with key escrow over PCP (key-escrow.md §4).
 *
 *   const c = new PcpClient({ server: '10.0.1.1', clientAddress: '10.0.1.20' });
 *   await c.start();                              // binds its UDP socket (own port, same source address)
 *   const m = c.map({ protocol: 17, internalPort: 50000, lifetime: 600 });
 *   const info = await m.ready;                   // { externalAddress, externalPort, lifetime, epoch }
 *   ... m.on('refreshed' | 'changed' | 'expired' | 'error', ...)
 *   await m.delete();                             // lifetime 0 (RFC 6887 §15)
 *   await c.close();                              // deletes what is left, closes the socket
 *
 * What it does on the wire:
 *  - MAP (§11) and PEER (§12) requests, with a fresh 96-bit mapping nonce per mapping
 *    (§11.1) kept for every renewal and the delete (§11.2.1, §15);
 *  - retransmission of a request until a response (§8.1.1: IRT 3 s, MRT 1024 s, MRC 0,
 *    RT = (1 + RAND) × min(2 × RTprev, MRT), RAND uniform in [-0.1, +0.1]); a delete
 *    is retransmitted the same way but given up at the mapping's expiry (it is gone
 *    by then anyway) or after `deleteTimeoutMs`;
 *  - renewal (§11.2.1): one request at a random time in [1/2, 5/8] of the lifetime, then
 *    [3/4, 3/4 + 1/16], [7/8, 7/8 + 1/32] ... when no SUCCESS came, never less than 4 s
 *    apart and never after expiry;
 *  - responses accepted only from the server's address and port (§8.3), matched to a
 *    mapping by opcode, nonce, protocol and internal port (and remote peer for PEER,
 *    §11.4 / §12.4); unsolicited MAP/PEER responses (§14.2) update the mapping;
 *  - the server's Epoch Time checked on every response (§8.5); a server that lost state
 *    gets every mapping again (§8.5: "promptly renew"); ANNOUNCE (§14.1) only feeds that;
 *  - with `auth` (an RFC 7652 security association, src/endpoint/pcp-auth-client.ts),
 *    every request carries AUTHENTICATION_TAG and every response must verify, else it
 *    is dropped (RFC 7652 §5.4);
 *  - WRITE_KEYS_REQUEST (option 228) in solicited or unsolicited responses: decoded,
 *    checked against the trusted gateway certificate (fingerprint, and the signature over
 *    the mapping nonce, key-escrow.md §4), then the consent callback; on yes a renewal
 *    of that mapping carries WRITE_KEYS (229) per DTLS association not yet sent on it,
 *    sealed under HKDF(transport key, nonce) with AAD = nonce; on no, KEY_DECLINE (230).
 *    Without an SA nothing is escrowed (§4: unauthenticated clients cannot escrow). A
 *    forged or untrusted request is answered with nothing.
 *
 * Bounds: `maxMappings` mappings (default 64); one request in flight per mapping; at
 * most 3 WRITE_KEYS per request (1100-byte messages, §7); 64 escrow records kept.
 * Exceptions in callbacks are contained (src/util/supervise.ts). Key material and the
 * transport key are never logged, emitted or put in error messages.
 */
import { EventEmitter } from 'node:events';
import { createSocket, type Socket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { isIPv6 } from 'node:net';
import {
  Opcode,
  PCP_MAX_MESSAGE,
  PCP_SERVER_PORT,
  Result,
  canonicalPcpAddress,
  decodePcpResponse,
  encodePcpRequest,
  filterOption,
  resultName,
  type PcpOption,
  type PcpResponse,
} from '../wire/pcp.js';
import {
  KR_FLAG_DATA,
  KR_FLAG_MEDIA,
  KR_FLAG_REQUIRED,
  PCP_OPT_KEY_DECLINE,
  PCP_OPT_WRITE_KEYS,
  PCP_OPT_WRITE_KEYS_REQUEST,
  decodeKeyRequest,
  encodeKeyDecline,
  pcpWriteKeysKey,
  sealWriteKeys,
  verifyKeyRequest,
  type KeyRequest,
} from '../wire/escrow.js';
import { systemClock, type Clock, type TimerHandle } from '../util/clock.js';
import { silentLogger, type Logger } from '../util/log.js';
import { Supervisor } from '../util/supervise.js';
import { GatehouseError } from '../util/errors.js';
import type { TrustedGateway } from './trust.js';
import { authenticate, type PcpAuthClientOptions, type PcpAuthSession, type PcpSend } from './pcp-auth-client.js';

/** RFC 7652 EAP-TLS credentials for PcpClient.authenticate (the client address is the client's). */
export type PcpEapTlsOptions = Omit<PcpAuthClientOptions, 'clientAddress' | 'now'>;
/** Give up a PA exchange (RFC 7652 PA-Initiation / EAP rounds; retransmitted as RFC 6887 §8.1.1) without an answer after this long. */
export const PA_TIMEOUT_MS = 30_000;
/** At most one re-authentication per this long (a spoofed AUTHENTICATION_REQUIRED cannot make a storm). */
export const REAUTH_MIN_INTERVAL_MS = 10_000;

/** RFC 6887 §8.1.1 retransmission constants (ms). */
export const PCP_IRT_MS = 3_000;
export const PCP_MRT_MS = 1_024_000;
/** RFC 6887 §11.2.1: renewals are never less than 4 s apart. */
export const PCP_MIN_RENEW_GAP_MS = 4_000;
/** key-escrow.md §4 within RFC 6887 §7's 1100 bytes: WRITE_KEYS options per request. */
export const MAX_WRITE_KEYS_PER_REQUEST = 3;
export const MAX_ESCROW_RECORDS = 64;

/** The RFC 7652 security association seam (PcpAuthSession of pcp-auth-client.ts fits via pcpAuthFromSession). */
export interface PcpClientAuth {
  /** Appends AUTHENTICATION_TAG (RFC 7652 §5.4) with the next sequence number. */
  tag(request: Buffer): Buffer;
  /** True when the response's AUTHENTICATION_TAG verifies and its sequence number is fresh. */
  verify(response: Buffer): boolean;
  /** The SA transport key (never logged). */
  readonly transportKey: Buffer;
}

/** Adapts pcp-auth-client.ts's session ({ sa: { transportKey }, tag, verify }) to the seam. */
export function pcpAuthFromSession(s: { sa: { transportKey: Buffer }; tag(b: Buffer): Buffer; verify(b: Buffer): boolean }): PcpClientAuth {
  return {
    tag: (b) => s.tag(b),
    verify: (b) => s.verify(b),
    get transportKey() {
      return s.sa.transportKey;
    },
  };
}

/** A DTLS association whose keys can be escrowed (the agent's view of werift's DTLS sockets). */
export interface PcpEscrowAssociation {
  /** associationId(client_random), key-escrow.md §1. */
  id: string;
  /** The §3 key-set TLVs, or null when the association is gone; the client wipes the buffer. */
  keySet(): Buffer | null;
}

export interface PcpConsentRequest {
  gateway: { fingerprint: string; subject: string };
  mapping: { kind: 'map' | 'peer'; internal: string; external: string; remote?: string };
  wants: { media: boolean; data: boolean; required: boolean };
  /** Epoch ms by which the gateway wants keys once the handshake completes (key-escrow.md §5.1). */
  deadline: number;
}

export interface PcpEscrowOptions {
  /** The trusted gateway (certificate evaluated by src/endpoint/trust.ts); rejects when not trusted. */
  gateway(): Promise<TrustedGateway>;
  consent(req: PcpConsentRequest): Promise<boolean> | boolean;
  associations(): PcpEscrowAssociation[];
  declineReason?: string;
}

export interface PcpEscrowRecord {
  kind: 'write-keys' | 'decline';
  mapping: string;
  associations: string[];
  /** RFC 6887 §7.4 result of the request that carried it, or null while unanswered. */
  result: number | null;
}

/** A datagram transport (tests inject one; the default is a UDP socket). */
export interface PcpTransport {
  send(datagram: Buffer): void;
  close(): void;
}

export interface PcpClientOptions {
  /** PCP server address (RFC 6887 §8.1: the default router or a configured address). */
  server: string;
  port?: number;
  /** The client's IP: written in every request (§7.1, PCP Client's IP Address) and the socket's source address. */
  clientAddress: string;
  /** Local UDP port of the client's socket (default 0: any). */
  localPort?: number;
  auth?: PcpClientAuth;
  escrow?: PcpEscrowOptions;
  clock?: Clock;
  logger?: Logger;
  maxMappings?: number;
  /** Give up retransmitting a delete after this long (default 10 s). */
  deleteTimeoutMs?: number;
  /** Random in [0, 1) (tests pin it). */
  random?: () => number;
  transport?: PcpTransport;
}

export interface PcpMapRequest {
  protocol: number;
  internalPort: number;
  /** Requested lifetime, seconds (§11.1). */
  lifetime: number;
  suggestedExternalPort?: number;
  suggestedExternalAddress?: string;
  /** FILTER options (§13.3), MAP only. */
  filters?: { prefixLength: number; port: number; address: string }[];
}

export interface PcpPeerRequest extends PcpMapRequest {
  remoteAddress: string;
  remotePort: number;
}

export interface PcpMappingInfo {
  externalAddress: string;
  externalPort: number;
  /** Seconds assigned by the server. */
  lifetime: number;
  epoch: number;
}

export class PcpError extends GatehouseError {
  constructor(
    reason: string,
    readonly result?: number,
  ) {
    super('E_PCP', reason);
    this.name = 'PcpError';
  }
}

type MappingState = 'pending' | 'active' | 'deleting' | 'deleted' | 'failed';

interface Tx {
  kind: 'create' | 'renew' | 'delete' | 'escrow';
  timer: TimerHandle | null;
  rt: number;
  /** Epoch ms after which a retransmission is pointless (delete: expiry). */
  giveUpAt: number;
  options: PcpOption[];
  escrow?: PcpEscrowRecord;
  done?: () => void;
}

interface KeysState {
  gateway: string;
  kr: KeyRequest;
  consent: 'asking' | 'yes' | 'no';
  sent: Set<string>;
  declined: boolean;
}

export class PcpMapping extends EventEmitter {
  readonly nonce = randomBytes(12); // RFC 6887 §11.1: a fresh random mapping nonce
  state: MappingState = 'pending';
  info: PcpMappingInfo | null = null;
  expiresAt = 0;
  /** The server's answer to the delete (RFC 6887 §15), null while none came. */
  deleteResult: number | null = null;
  readonly ready: Promise<PcpMappingInfo>;
  /** @internal */ tx: Tx | null = null;
  /** @internal */ renewTimer: TimerHandle | null = null;
  /** @internal */ renewAttempt = 0;
  /** @internal */ lastRenewAt = 0;
  /** @internal */ keys: KeysState | null = null;
  /** @internal */ resolveReady!: (i: PcpMappingInfo) => void;
  /** @internal */ rejectReady!: (e: Error) => void;

  constructor(
    private readonly client: PcpClient,
    readonly kind: 'map' | 'peer',
    readonly req: PcpMapRequest & Partial<Pick<PcpPeerRequest, 'remoteAddress' | 'remotePort'>>,
  ) {
    super();
    this.ready = new Promise((res, rej) => {
      this.resolveReady = res;
      this.rejectReady = rej;
    });
    this.ready.catch(() => undefined); // observed through the promise or 'error'
  }

  get opcode(): number {
    return this.kind === 'map' ? Opcode.MAP : Opcode.PEER;
  }

  get label(): string {
    const r = this.kind === 'peer' ? ` → ${this.req.remoteAddress}:${this.req.remotePort}` : '';
    return `${this.kind.toUpperCase()} ${this.req.protocol}/${this.req.internalPort}${r}`;
  }

  /** RFC 6887 §15: lifetime 0 deletes the mapping; resolves when answered or given up. */
  delete(): Promise<void> {
    return this.client.deleteMapping(this);
  }

  // EventEmitter 'error' without listeners throws; the client reports through 'failure'.
  override emit(ev: string | symbol, ...args: unknown[]): boolean {
    if (ev === 'error' && this.listenerCount('error') === 0) return false;
    return super.emit(ev, ...args);
  }
}

/** RFC 6887 §8.5: the client's record of the server's Epoch Time. */
export class EpochTracker {
  private prevServer = -1;
  private prevClient = 0;

  /** true when valid; false when the server lost its state (§8.5). `clientMs` is the client's clock. */
  check(serverEpoch: number, clientMs: number): boolean {
    const client = Math.floor(clientMs / 1000);
    let valid = true;
    // §8.5: the first response is necessarily valid.
    if (this.prevServer >= 0) {
      // §8.5: going backwards by more than one second is invalid.
      if (serverEpoch + 1 < this.prevServer) valid = false;
      else {
        const clientDelta = client - this.prevClient;
        const serverDelta = serverEpoch - this.prevServer;
        // §8.5: integer arithmetic, 1/16 tolerance plus 2 s either way.
        if (clientDelta + 2 < serverDelta - Math.floor(serverDelta / 16) || serverDelta + 2 < clientDelta - Math.floor(clientDelta / 16))
          valid = false;
      }
    }
    this.prevServer = serverEpoch;
    this.prevClient = client;
    return valid;
  }
}

export class PcpClient extends EventEmitter {
  readonly mappings = new Set<PcpMapping>();
  readonly records: PcpEscrowRecord[] = [];
  readonly epoch = new EpochTracker();
  /** Responses dropped, by reason (source, decode, auth, unmatched). */
  readonly dropped = new Map<string, number>();
  private readonly clock: Clock;
  private readonly log: Logger;
  private readonly sup: Supervisor;
  private readonly rand: () => number;
  private readonly server: string;
  private readonly port: number;
  private transport: PcpTransport | null;
  private socket: Socket | null = null;
  private closed = false;
  private auth: PcpClientAuth | null;
  private session: PcpAuthSession | null = null;
  private eapTls: PcpEapTlsOptions | null = null;
  private reauthing: Promise<void> | null = null;
  private lastAuthAt = 0;
  /** The PA exchange in progress (RFC 7652: one PA message outstanding at a time; section not checked against the RFC text). */
  private paWaiter: ((b: Buffer) => void) | null = null;

  constructor(private readonly opts: PcpClientOptions) {
    super();
    this.clock = opts.clock ?? systemClock;
    this.log = (opts.logger ?? silentLogger).child({ component: 'endpoint-pcp' });
    this.sup = new Supervisor(this.log, 10, () => this.clock.now());
    this.rand = opts.random ?? Math.random;
    this.server = canonicalPcpAddress(opts.server);
    this.port = opts.port ?? PCP_SERVER_PORT;
    this.transport = opts.transport ?? null;
    this.auth = opts.auth ?? null;
  }

  /** Whether requests are authenticated (an RFC 7652 SA is in place). */
  get authenticated(): boolean {
    return this.auth !== null;
  }

  /**
   * RFC 7652: PA-Initiation, EAP-TLS and the SA, over this client's socket (the server binds
   * the SA to this source address and port). Later requests carry AUTHENTICATION_TAG; when the
   * SA's lifetime ends or the server answers AUTHENTICATION_REQUIRED / UNKNOWN_SESSION_ID, the
   * client authenticates again with the same credentials.
   */
  async authenticate(o: PcpEapTlsOptions): Promise<void> {
    if (!this.transport) throw new PcpError('PCP client not started');
    this.eapTls = o;
    this.lastAuthAt = this.clock.now();
    const send: PcpSend = (buf, expectReply) => {
      if (!expectReply) {
        this.transport?.send(buf);
        return Promise.resolve(null);
      }
      return this.paExchange(buf);
    };
    const s = await authenticate(send, { ...o, clientAddress: this.opts.clientAddress, now: () => this.clock.now() });
    this.session = s;
    this.auth = pcpAuthFromSession(s);
    this.log.info({ tls: s.sa.tlsVersion, lifetime: s.sa.lifetime }, 'PCP security association established');
    this.emit('authenticated', { lifetime: s.sa.lifetime, tlsVersion: s.sa.tlsVersion });
  }

  /** One PA request/answer with RFC 6887 §8.1.1 retransmission, bounded by PA_TIMEOUT_MS. */
  private paExchange(buf: Buffer): Promise<Buffer | null> {
    return new Promise((resolve) => {
      let rt = 0;
      let timer: TimerHandle | null = null;
      const end = this.clock.now() + PA_TIMEOUT_MS;
      const finish = (b: Buffer | null): void => {
        timer?.cancel();
        if (this.paWaiter === onAnswer) this.paWaiter = null;
        resolve(b);
      };
      const onAnswer = (b: Buffer): void => finish(b);
      this.paWaiter = onAnswer;
      const fire = (): void => {
        if (this.paWaiter !== onAnswer || this.closed) return finish(null);
        if (this.clock.now() >= end) return finish(null);
        this.transport?.send(buf);
        rt = (1 + (this.rand() * 0.2 - 0.1)) * (rt === 0 ? PCP_IRT_MS : Math.min(2 * rt, PCP_MRT_MS));
        timer = this.clock.setTimeout(this.sup.guard('endpoint.pcp.pa', fire), Math.min(rt, Math.max(0, end - this.clock.now())));
      };
      fire();
    });
  }

  /**
   * Re-authenticates, then renews every mapping with the new SA. `unverified`: triggered by
   * an untagged answer anyone could forge, so at most once per REAUTH_MIN_INTERVAL_MS.
   */
  private reauthenticate(why: string, unverified: boolean): void {
    if (!this.eapTls || this.reauthing || this.closed) return;
    if (unverified && this.clock.now() - this.lastAuthAt < REAUTH_MIN_INTERVAL_MS) return;
    this.log.info({ why }, 'PCP re-authentication');
    this.reauthing = this.authenticate(this.eapTls)
      .then(() => {
        for (const m of this.mappings)
          if (m.state === 'active' && (!m.tx || m.tx.kind === 'renew'))
            this.transmit(m, { kind: 'renew', timer: null, rt: 0, giveUpAt: m.expiresAt, options: [] });
      })
      .catch((e: unknown) => {
        this.emit('failure', null, e instanceof Error ? e : new PcpError(String(e)));
      })
      .finally(() => {
        this.reauthing = null;
      });
  }

  /** The local UDP address and port (the default transport only). */
  localAddress(): { address: string; port: number } | null {
    if (!this.socket) return null;
    const a = this.socket.address();
    return { address: a.address, port: a.port };
  }

  /** Binds the UDP socket to the client's address (unsolicited responses come to it, RFC 6887 §14.2). */
  async start(): Promise<void> {
    if (this.transport) return;
    const sock = createSocket(isIPv6(this.opts.clientAddress) ? 'udp6' : 'udp4');
    await new Promise<void>((res, rej) => {
      sock.once('error', rej);
      sock.bind({ address: this.opts.clientAddress, port: this.opts.localPort ?? 0 }, () => {
        sock.off('error', rej);
        res();
      });
    });
    sock.on('error', (e) => this.log.warn({ err: e.message }, 'PCP socket error'));
    sock.on(
      'message',
      this.sup.guard('endpoint.pcp.message', (msg: Buffer, rinfo: { address: string; port: number }) => this.receive(msg, rinfo)),
    );
    sock.unref();
    this.socket = sock;
    this.transport = {
      send: (d) => sock.send(d, this.port, this.server),
      close: () => sock.close(),
    };
  }

  map(req: PcpMapRequest): PcpMapping {
    return this.add(new PcpMapping(this, 'map', req));
  }

  peer(req: PcpPeerRequest): PcpMapping {
    return this.add(new PcpMapping(this, 'peer', req));
  }

  private add(m: PcpMapping): PcpMapping {
    if (this.closed) throw new PcpError('PCP client closed');
    if (!this.transport) throw new PcpError('PCP client not started');
    if (this.mappings.size >= (this.opts.maxMappings ?? 64)) throw new PcpError('too many PCP mappings');
    this.mappings.add(m);
    this.transmit(m, { kind: 'create', timer: null, rt: 0, giveUpAt: Infinity, options: [] });
    return m;
  }

  /** New DTLS associations exist: escrow them on every mapping whose consent is yes. */
  associationsChanged(): void {
    for (const m of this.mappings) if (m.keys?.consent === 'yes' && m.state === 'active') this.sendKeys(m);
  }

  private closing: Promise<void> | null = null;

  /** Deletes every mapping (RFC 6887 §15), ends the SA, closes the socket. Idempotent. */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    if (this.closed) return;
    await Promise.all([...this.mappings].map((m) => m.delete().catch(() => undefined)));
    // RFC 7652 (result SESSION_TERMINATED, §5.1 codes as pcp-auth-client.ts reads them): end the SA on the server; no answer awaited.
    if (this.session && this.transport) {
      const tr = this.transport;
      await this.session.terminate((b) => (tr.send(b), Promise.resolve(null))).catch(() => undefined);
    }
    this.closed = true;
    for (const m of this.mappings) this.stopTimers(m);
    this.mappings.clear();
    this.transport?.close();
    this.transport = null;
    this.socket = null;
  }

  // ------------------------------------------------------------ requests

  private buildRequest(m: PcpMapping, lifetime: number, extra: PcpOption[]): Buffer {
    const r = m.req;
    const ext = m.info ?? null;
    // §11.2.1: a renewal suggests the assigned external address and port.
    const externalPort = ext ? ext.externalPort : (r.suggestedExternalPort ?? 0);
    const externalAddress = ext
      ? ext.externalAddress
      : (r.suggestedExternalAddress ?? (isIPv6(this.opts.clientAddress) ? '::' : '0.0.0.0'));
    const body = { nonce: m.nonce, protocol: r.protocol, internalPort: r.internalPort, externalPort, externalAddress };
    const options: PcpOption[] = [];
    // §13.3: FILTER only in MAP requests.
    if (m.kind === 'map') for (const f of r.filters ?? []) options.push(filterOption(f));
    options.push(...extra);
    const buf = encodePcpRequest({
      opcode: m.opcode,
      lifetime,
      clientAddress: this.opts.clientAddress,
      ...(m.kind === 'map' ? { map: body } : { peer: { ...body, remotePort: r.remotePort!, remoteAddress: r.remoteAddress! } }),
      options,
    });
    // RFC 7652 §5.4: AUTHENTICATION_TAG last, over the whole message.
    return this.auth ? this.auth.tag(buf) : buf;
  }

  /** Starts (or replaces) the one transaction of a mapping. */
  private transmit(m: PcpMapping, tx: Tx): void {
    if (m.tx) {
      m.tx.timer?.cancel();
      // An escrow request replaced by another keeps its record unanswered.
      m.tx.done?.();
    }
    m.tx = tx;
    const lifetime = tx.kind === 'delete' ? 0 : m.req.lifetime;
    const fire = (): void => {
      if (m.tx !== tx || this.closed) return;
      if (this.clock.now() >= tx.giveUpAt) {
        m.tx = null;
        tx.done?.();
        return;
      }
      const bytes = this.buildRequest(m, lifetime, tx.options);
      if (bytes.length > PCP_MAX_MESSAGE) throw new PcpError('PCP request over 1100 bytes');
      this.transport?.send(bytes);
      if (tx.kind === 'renew') return; // §11.2.1: one renewal packet per slot; the renewal schedule retries
      // §8.1.1: RT = (1 + RAND) × IRT, then (1 + RAND) × min(2 × RTprev, MRT); MRC = 0, MRD = 0.
      const base = tx.rt === 0 ? PCP_IRT_MS : Math.min(2 * tx.rt, PCP_MRT_MS);
      tx.rt = (1 + (this.rand() * 0.2 - 0.1)) * base;
      // A bounded transaction (delete, escrow) ends at giveUpAt even between retransmissions.
      const wait = Math.min(tx.rt, Math.max(0, tx.giveUpAt - this.clock.now()));
      tx.timer = this.clock.setTimeout(this.sup.guard('endpoint.pcp.retransmit', fire), wait);
    };
    this.sup.run('endpoint.pcp.send', fire, (e) => this.fail(m, e));
  }

  /** §11.2.1 renewal schedule. */
  private scheduleRenewal(m: PcpMapping): void {
    m.renewTimer?.cancel();
    m.renewTimer = null;
    if (m.state !== 'active' || !m.info || m.info.lifetime <= 0) return;
    const lifeMs = m.info.lifetime * 1000;
    const start = m.expiresAt - lifeMs;
    const k = m.renewAttempt;
    // k = 0: [1/2, 5/8]; k = 1: [3/4, 3/4 + 1/16]; k = 2: [7/8, 7/8 + 1/32] ...
    const lo = 1 - 2 ** -(k + 1);
    const span = 2 ** -(k + 3);
    let at = start + lifeMs * (lo + span * this.rand());
    if (m.lastRenewAt) at = Math.max(at, m.lastRenewAt + PCP_MIN_RENEW_GAP_MS);
    if (at >= m.expiresAt) return; // the 'expired' timer ends it
    m.renewTimer = this.clock.setTimeout(
      this.sup.guard('endpoint.pcp.renew', () => {
        m.renewTimer = null;
        if (m.state !== 'active') return;
        m.lastRenewAt = this.clock.now();
        m.renewAttempt++;
        // RFC 7652 §5.9: past the PA lifetime the SA is gone on the server too.
        if (this.session?.expired()) this.reauthenticate('SA lifetime over', false);
        // A request in flight (escrow, re-creation) renews the mapping too; an unanswered renewal is replaced.
        if (!m.tx || m.tx.kind === 'renew') this.transmit(m, { kind: 'renew', timer: null, rt: 0, giveUpAt: m.expiresAt, options: [] });
        this.scheduleRenewal(m); // the next slot, in case this one gets no SUCCESS
      }),
      Math.max(0, at - this.clock.now()),
    );
  }

  private expiryTimer = new WeakMap<PcpMapping, TimerHandle>();

  private scheduleExpiry(m: PcpMapping): void {
    this.expiryTimer.get(m)?.cancel();
    const h = this.clock.setTimeout(
      this.sup.guard('endpoint.pcp.expire', () => {
        if (m.state !== 'active') return;
        m.state = 'failed';
        this.stopTimers(m);
        this.mappings.delete(m);
        this.log.warn({ mapping: m.label }, 'PCP mapping expired without renewal');
        m.emit('expired');
        this.emit('expired', m);
      }),
      Math.max(0, m.expiresAt - this.clock.now()),
    );
    this.expiryTimer.set(m, h);
  }

  private stopTimers(m: PcpMapping): void {
    m.tx?.timer?.cancel();
    m.tx = null;
    m.renewTimer?.cancel();
    m.renewTimer = null;
    this.expiryTimer.get(m)?.cancel();
  }

  /** @internal (PcpMapping.delete) */
  deleteMapping(m: PcpMapping): Promise<void> {
    if (m.state === 'deleted' || m.state === 'failed' || this.closed) return Promise.resolve();
    if (m.state === 'pending' && !m.info) {
      // Nothing was granted yet: still tell the server (a lost response may have created it).
      m.rejectReady(new PcpError('mapping deleted before it was granted'));
    }
    m.state = 'deleting';
    m.renewTimer?.cancel();
    m.renewTimer = null;
    const timeout = this.opts.deleteTimeoutMs ?? 10_000;
    const giveUpAt = Math.min(m.expiresAt || Infinity, this.clock.now() + timeout);
    return new Promise<void>((resolve) => {
      this.transmit(m, {
        kind: 'delete',
        timer: null,
        rt: 0,
        giveUpAt,
        options: [],
        done: () => {
          this.finishDelete(m, m.deleteResult);
          resolve();
        },
      });
    });
  }

  /** `result`: the server's answer to lifetime 0, or null when none came (given up). */
  private finishDelete(m: PcpMapping, result: number | null): void {
    if (m.state === 'deleted') return;
    m.state = 'deleted';
    m.deleteResult = result;
    this.stopTimers(m);
    this.mappings.delete(m);
    m.emit('deleted', result);
    this.emit('deleted', m, result);
  }

  private fail(m: PcpMapping, e: unknown): void {
    const err = e instanceof Error ? e : new PcpError(String(e));
    this.emit('failure', m, err);
    m.emit('error', err);
  }

  // ------------------------------------------------------------ responses

  private drop(reason: string): void {
    this.dropped.set(reason, (this.dropped.get(reason) ?? 0) + 1);
  }

  /** One datagram from the socket (or a test). */
  receive(msg: Buffer, from: { address: string; port: number }): void {
    if (this.closed) return;
    // RFC 6887 §8.3: only responses from the server's address and port.
    if (canonicalPcpAddress(from.address.replace(/^::ffff:/i, '')) !== this.server || from.port !== this.port) return this.drop('source');
    // RFC 7652 §5.1 (opcode 3 AUTHENTICATION) with RFC 6887 §7.2's R bit: PA-Server messages belong to the PA exchange in progress.
    if (msg.length >= 2 && msg[1] === (0x80 | Opcode.AUTHENTICATION)) {
      if (this.paWaiter) this.paWaiter(msg);
      else this.drop('pa');
      return;
    }
    const d = decodePcpResponse(msg);
    if (!d.ok) return this.drop('decode');
    const r = d.value;
    // RFC 7652 §5.4: with an SA, a response must carry a valid AUTHENTICATION_TAG.
    if (this.auth && !this.auth.verify(msg)) {
      // RFC 7652 result codes AUTHENTICATION_REQUIRED (15) / UNKNOWN_SESSION_ID (20): the server has no SA for us (expired, restarted): authenticate again. Unverified, so rate-bounded.
      if (r.result === Result.AUTHENTICATION_REQUIRED || r.result === Result.UNKNOWN_SESSION_ID)
        this.reauthenticate(resultName(r.result), true);
      return this.drop('auth');
    }
    const lost = !this.epoch.check(r.epoch, this.clock.now());
    if (r.opcode === Opcode.MAP || r.opcode === Opcode.PEER) this.onMappingResponse(r);
    // §8.5: a server whose epoch is invalid lost its state: renew every mapping now.
    if (lost) {
      this.log.info({ epoch: r.epoch }, 'PCP server epoch jumped: re-creating mappings');
      this.emit('epochReset', r.epoch);
      for (const m of this.mappings) {
        if (m.state !== 'active' || (m.tx && m.tx.kind !== 'renew')) continue;
        m.renewAttempt = 0;
        this.transmit(m, { kind: 'create', timer: null, rt: 0, giveUpAt: Infinity, options: [] });
      }
    }
  }

  private findMapping(r: PcpResponse): PcpMapping | undefined {
    const body = r.map ?? r.peer;
    if (!body) return undefined;
    for (const m of this.mappings) {
      // §11.4 / §12.4 (processing a MAP / PEER response): opcode, nonce, protocol, internal port (and remote peer for PEER).
      if (m.opcode !== r.opcode || !m.nonce.equals(body.nonce)) continue;
      if (m.req.protocol !== body.protocol || (m.req.protocol !== 0 && m.req.internalPort !== body.internalPort)) continue;
      if (
        m.kind === 'peer' &&
        (r.peer!.remotePort !== m.req.remotePort ||
          canonicalPcpAddress(r.peer!.remoteAddress) !== canonicalPcpAddress(m.req.remoteAddress!))
      )
        continue;
      return m;
    }
    return undefined;
  }

  private onMappingResponse(r: PcpResponse): void {
    const m = this.findMapping(r);
    if (!m) return this.drop('unmatched');
    const body = (r.map ?? r.peer)!;
    const tx = m.tx;
    const solicited = !!tx;
    if (tx) {
      tx.timer?.cancel();
      m.tx = null;
    }
    if (tx?.kind === 'delete' || m.state === 'deleting') {
      // §15: the answer to lifetime 0 (SUCCESS, or an error: either way we are done).
      m.deleteResult = r.result;
      tx?.done?.();
      if (!tx) this.finishDelete(m, r.result);
      return;
    }
    if (r.result !== Result.SUCCESS) {
      const err = new PcpError(`PCP ${m.label}: ${resultName(r.result)}`, r.result);
      if (tx?.escrow) tx.escrow.result = r.result;
      tx?.done?.();
      if (m.state === 'pending') {
        // §11.4 / §8.3: an error ends the attempt; the caller decides whether to retry after `lifetime`.
        m.state = 'failed';
        this.stopTimers(m);
        this.mappings.delete(m);
        m.rejectReady(err);
      }
      this.log.info({ mapping: m.label, result: resultName(r.result) }, 'PCP error response');
      this.fail(m, err);
      return;
    }
    const info: PcpMappingInfo = {
      externalAddress: canonicalPcpAddress(body.externalAddress),
      externalPort: body.externalPort,
      lifetime: r.lifetime,
      epoch: r.epoch,
    };
    const prev = m.info;
    m.info = info;
    m.expiresAt = this.clock.now() + r.lifetime * 1000;
    m.renewAttempt = 0;
    if (tx?.escrow) tx.escrow.result = r.result;
    tx?.done?.();
    if (m.state === 'pending') {
      m.state = 'active';
      m.resolveReady(info);
      this.log.info(
        { mapping: m.label, external: `${info.externalAddress}:${info.externalPort}`, lifetime: info.lifetime },
        'PCP mapping granted',
      );
      m.emit('mapped', info);
      this.emit('mapped', m, info);
    } else if (prev && (prev.externalAddress !== info.externalAddress || prev.externalPort !== info.externalPort)) {
      // §11.2.1 / §14.2: the server moved the mapping.
      m.emit('changed', info, prev);
      this.emit('changed', m, info, prev);
    } else {
      m.emit('refreshed', info, solicited);
      this.emit('refreshed', m, info, solicited);
    }
    this.scheduleExpiry(m);
    this.scheduleRenewal(m);
    const wkr = r.options.find((o) => o.code === PCP_OPT_WRITE_KEYS_REQUEST);
    if (wkr) this.onKeyRequest(m, wkr.data);
  }

  // ------------------------------------------------------------ key escrow (key-escrow.md §4)

  private untrusted(m: PcpMapping, reason: string): void {
    this.log.warn({ mapping: m.label, reason }, 'WRITE_KEYS_REQUEST refused');
    this.emit('untrusted', { mapping: m.label, reason });
  }

  private onKeyRequest(m: PcpMapping, value: Buffer): void {
    const esc = this.opts.escrow;
    if (!esc) return;
    const kr = decodeKeyRequest(value);
    if (!kr) return this.untrusted(m, 'malformed WRITE_KEYS_REQUEST');
    // §4: unauthenticated PCP clients cannot escrow keys.
    if (!this.auth) return this.untrusted(m, 'no PCP security association (RFC 7652)');
    const nonce = Buffer.from(m.nonce);
    Promise.resolve()
      .then(() => esc.gateway())
      .then(
        (gw) => {
          if (m.state !== 'active' || this.closed) return;
          // §2.1 / §4: the fingerprint names the trusted certificate; the signature covers the mapping nonce.
          if (!kr.fingerprint.equals(gw.fingerprint)) return this.untrusted(m, 'WRITE_KEYS_REQUEST names another certificate');
          if (!verifyKeyRequest('pcp', nonce, kr, gw.publicKey)) return this.untrusted(m, 'WRITE_KEYS_REQUEST signature does not verify');
          this.onTrustedKeyRequest(m, kr, gw);
        },
        (e: unknown) => this.untrusted(m, e instanceof GatehouseError ? e.message : 'gateway certificate unavailable'),
      )
      .catch((e: unknown) => this.sup.caught('endpoint.pcp.keyRequest', e));
  }

  private onTrustedKeyRequest(m: PcpMapping, kr: KeyRequest, gw: TrustedGateway): void {
    const wants = { media: !!(kr.flags & KR_FLAG_MEDIA), data: !!(kr.flags & KR_FLAG_DATA), required: !!(kr.flags & KR_FLAG_REQUIRED) };
    this.emit('keyRequest', { mapping: m.label, deadline: kr.deadline, wants, gateway: gw.fingerprintHex });
    const ks = m.keys;
    if (ks && ks.gateway === gw.fingerprintHex) {
      ks.kr = kr; // key-escrow.md §2.1: the latest request holds
      if (ks.consent === 'yes') this.sendKeys(m);
      return;
    }
    const state: KeysState = { gateway: gw.fingerprintHex, kr, consent: 'asking', sent: new Set(), declined: false };
    m.keys = state;
    const info = m.info!;
    const req: PcpConsentRequest = {
      gateway: { fingerprint: gw.fingerprintHex, subject: gw.subject },
      mapping: {
        kind: m.kind,
        internal: `${this.opts.clientAddress}:${m.req.internalPort}`,
        external: `${info.externalAddress}:${info.externalPort}`,
        ...(m.kind === 'peer' ? { remote: `${m.req.remoteAddress}:${m.req.remotePort}` } : {}),
      },
      wants,
      deadline: this.clock.now() + kr.deadline * 1000,
    };
    Promise.resolve()
      .then(() => this.opts.escrow!.consent(req))
      .then(
        (ok) => !!ok,
        () => false, // a failing consent callback is a no
      )
      .then((ok) => {
        if (m.keys !== state || m.state !== 'active' || this.closed) return;
        state.consent = ok ? 'yes' : 'no';
        this.emit('consent', { mapping: m.label, granted: ok });
        if (ok) this.sendKeys(m);
        else this.sendDecline(m);
      })
      .catch((e: unknown) => this.sup.caught('endpoint.pcp.consent', e));
  }

  private pushRecord(r: PcpEscrowRecord): void {
    this.records.push(r);
    while (this.records.length > MAX_ESCROW_RECORDS) this.records.shift();
  }

  /** A renewal of the mapping carrying WRITE_KEYS for associations not yet sent on it. */
  private sendKeys(m: PcpMapping): void {
    const st = m.keys;
    const auth = this.auth;
    if (!st || st.consent !== 'yes' || !auth || m.state !== 'active') return;
    if (m.tx?.kind === 'escrow') return; // one at a time; the answer triggers the next batch
    const todo = this.opts.escrow!.associations().filter((a) => !st.sent.has(a.id));
    if (todo.length === 0) return;
    const options: PcpOption[] = [];
    const ids: string[] = [];
    // key-escrow.md §4: key = HKDF(transport key, salt = mapping nonce); AAD = mapping nonce.
    const key = pcpWriteKeysKey(auth.transportKey, m.nonce);
    try {
      for (const a of todo) {
        if (ids.length >= MAX_WRITE_KEYS_PER_REQUEST) break;
        const tlv = a.keySet();
        if (!tlv) continue;
        try {
          options.push({ code: PCP_OPT_WRITE_KEYS, data: sealWriteKeys(key, m.nonce, tlv) }); // fresh random IV each
        } finally {
          tlv.fill(0);
        }
        ids.push(a.id);
      }
    } finally {
      key.fill(0);
    }
    if (ids.length === 0) return;
    for (const id of ids) st.sent.add(id);
    const rec: PcpEscrowRecord = { kind: 'write-keys', mapping: m.label, associations: ids, result: null };
    this.pushRecord(rec);
    this.transmit(m, {
      kind: 'escrow',
      timer: null,
      rt: 0,
      giveUpAt: m.expiresAt,
      options,
      escrow: rec,
      done: () => {
        if (rec.result === null) for (const id of ids) st.sent.delete(id); // unanswered: send again later
        this.emit('sent', rec);
        if (rec.result === Result.SUCCESS) queueMicrotask(() => this.sendKeys(m));
      },
    });
  }

  private sendDecline(m: PcpMapping): void {
    const st = m.keys;
    if (!st || st.declined || m.state !== 'active') return;
    st.declined = true;
    const reason = truncateUtf8(this.opts.escrow?.declineReason ?? 'user declined', 128);
    const rec: PcpEscrowRecord = { kind: 'decline', mapping: m.label, associations: [], result: null };
    this.pushRecord(rec);
    this.transmit(m, {
      kind: 'escrow',
      timer: null,
      rt: 0,
      giveUpAt: m.expiresAt,
      options: [{ code: PCP_OPT_KEY_DECLINE, data: encodeKeyDecline(reason) }], // key-escrow.md §2.3 / §4
      escrow: rec,
      done: () => this.emit('declined', rec),
    });
  }
}

function truncateUtf8(s: string, max: number): string {
  if (Buffer.byteLength(s, 'utf8') <= max) return s;
  let out = Buffer.from(s, 'utf8').subarray(0, max).toString('utf8');
  while (Buffer.byteLength(out, 'utf8') > max || out.endsWith('\uFFFD')) out = out.slice(0, -1);
  return out;
}

/** `host[:port]` or `[v6]:port` of `--pcp`. */
export function parsePcpServer(s: string): { server: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]+))(?::(\d{1,5}))?$/.exec(s.trim());
  const v6 = !m && isIPv6(s.trim());
  if (!m && !v6) throw new PcpError(`not a PCP server address: ${s}`);
  const server = v6 ? s.trim() : (m![1] ?? m![2])!;
  const port = m?.[3] ? Number(m[3]) : PCP_SERVER_PORT;
  if (port < 1 || port > 65535) throw new PcpError(`bad PCP server port: ${s}`);
  return { server, port };
}
