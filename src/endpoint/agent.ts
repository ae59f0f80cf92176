/**
 * Compliant endpoint agent (key-escrow.md §2, issue 4): wraps werift's RTCPeerConnection
 * so the application keeps the normal werift API while the agent escrows the DTLS keys
 * of its associations with a trusted Gatehouse gateway.
 *
 * Seam in werift (v0.24.x, ESM bundle `werift` → lib/index.mjs, same code as
 * lib/ice/src/turn/protocol.js): `TurnProtocol.prototype.handleSTUNMessage(data, addr)`
 * receives every raw STUN message from the TURN server on the allocation's 5-tuple. We
 * wrap it once per process (installWeriftTurnSeam):
 *   - success responses to CreatePermission / ChannelBind carrying KEY-REQUEST (0xC1A0)
 *     are reported to the agent owning that TurnProtocol instance (peer address taken
 *     from werift's pending `transactions[txid].request`), then passed on unchanged;
 *   - responses to the agent's own escrow requests (tracked per instance) are consumed.
 * The agent sends its escrow ChannelBind / CreatePermission through `turn.send(bytes,
 * turn.server)`, i.e. from the same socket (same 5-tuple, RFC 8656 §2) and allocation,
 * authenticated with werift's current USERNAME / REALM / NONCE and the long-term key.
 * Instances not owned by an agent (plain werift peers in the same process) are untouched.
 * The seam also wraps `TurnProtocol.prototype.connectionMade` to give the allocation
 * Refresh loop an unref'd, cancellable timer (werift's own awaits a ref'd ~500 s timer
 * that close() cannot cancel and that keeps the process alive). It applies to
 * allocations made after the first EscrowAgent was constructed.
 * TurnProtocol instances are found through pc.iceTransports[i].connection.protocols
 * (StunOverTurnProtocol.turn); DTLS state through pc.dtlsTransports[i].dtls (DtlsSocket).
 *
 * Public API:
 *   createEscrowPeerConnection(opts: EscrowAgentOptions): { pc: RTCPeerConnection; agent: EscrowAgent }
 *   class EscrowAgent extends EventEmitter  — events: 'keyRequest', 'consent', 'sent', 'declined',
 *       'untrusted', 'error' (payloads carry no key material); .records; .close()
 *   interface ConsentRequest, type ConsentCallback
 *   parseTurnUrl(url): { host, port, transport }
 */
import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import * as werift from 'werift';
import { RTCPeerConnection, type PeerConfig } from 'werift';
import {
  Attr,
  Class,
  Method,
  StunWriter,
  decodeStun,
  getAttr,
  getAttrs,
  getErrorCode,
  longTermKey,
  messageType,
  verifyIntegrity,
  type StunMessage,
} from '../wire/stun.js';
import {
  ATTR_KEY_DECLINE,
  ATTR_KEY_REQUEST,
  ATTR_KEY_STATUS,
  ATTR_WRITE_KEYS,
  KR_FLAG_DATA,
  KR_FLAG_MEDIA,
  KR_FLAG_REQUIRED,
  decodeKeyRequest,
  decodeKeyStatus,
  encodeKeyDecline,
  sealWriteKeys,
  turnWriteKeysAad,
  turnWriteKeysKey,
  type KeyRequest,
} from '../wire/escrow.js';
import { encodeKeySet, wipeKeySet, associationId } from '../wire/keyset.js';
import { systemClock, type Clock, type TimerHandle } from '../util/clock.js';
import { silentLogger, type Logger } from '../util/log.js';
import { GatehouseError } from '../util/errors.js';
import { keySetFromDtls12, dtlsStateFromWerift, type WeriftDtlsSocketLike } from './keyset.js';
import { fetchGatewayCertificate, type GatewayTrust, type TrustedGateway, TrustError } from './trust.js';
import { isIPv4 } from 'node:net';
import { createSocket } from 'node:dgram';
import {
  PcpClient,
  type PcpClientAuth,
  type PcpConsentRequest,
  type PcpEapTlsOptions,
  type PcpEscrowAssociation,
  type PcpEscrowRecord,
  type PcpMapping,
} from './pcp-client.js';

export interface ConsentRequest {
  gateway: { fingerprint: string; subject: string };
  call: { peer: string; relay?: string };
  wants: { media: boolean; data: boolean; required: boolean };
  /** Epoch ms by which the gateway wants keys once the handshake completes (§5.1). */
  deadline: number;
}
export type ConsentCallback = (req: ConsentRequest) => Promise<boolean>;

export interface EscrowAgentOptions {
  /** `turn:host:port[?transport=udp|tcp]` of the gateway. */
  turnUrl: string;
  username: string;
  password: string;
  trust: GatewayTrust;
  /** The gateway certificate PEM, or a URL to GET it from (e.g. http://127.0.0.1:8080/v1/gateway/certificate). */
  gatewayCertificate: { pem: string } | { url: string };
  consent: ConsentCallback;
  declineReason?: string;
  /** Extra werift configuration (iceServers and iceTransportPolicy are set by the agent). */
  pcConfig?: Partial<PeerConfig>;
  logger?: Logger;
  clock?: Clock;
  /** How often the agent looks for new TURN allocations and DTLS associations, ms (default 200). */
  scanIntervalMs?: number;
  /** The firewall path: a PCP server (RFC 6887) that maps the ICE host candidates (see EscrowAgentPcpOptions). */
  pcp?: EscrowAgentPcpOptions;
}

/**
 * PCP for the agent's ICE host candidates (issue 10): during ICE gathering each UDP IPv4
 * host candidate on `clientAddress` gets a MAP (RFC 6887 §11) for its port, and the mapped
 * external address is advertised as a server-reflexive candidate (RFC 8445 §5.1.1.2, its
 * base the host candidate). WRITE_KEYS_REQUEST in the MAP responses (solicited, or
 * unsolicited when the gateway sees a new flow, RFC 6887 §14.2) is answered with WRITE_KEYS
 * for the DTLS associations (or KEY_DECLINE), through the same trust and consent callback as
 * on TURN. Mappings are renewed at about 1/2 lifetime and deleted on close().
 */
export interface EscrowAgentPcpOptions {
  /** PCP server address (the default gateway of the LAN, or Gatehouse's PCP listener). */
  server: string;
  /** Default 5351 (RFC 6887 §19.1). */
  port?: number;
  /** Requested mapping lifetime, seconds (default 600). */
  lifetime?: number;
  /** The host candidate address to map (and the PCP client's source address); default: the first IPv4 host candidate. */
  clientAddress?: string;
  /** RFC 7652 EAP-TLS with the endpoint's client certificate (needed to escrow keys, key-escrow.md §4). */
  eapTls?: PcpEapTlsOptions;
  /** An RFC 7652 SA made elsewhere (tests). */
  auth?: PcpClientAuth;
  /** How long ICE gathering waits for each MAP answer, ms (default 5000); a late answer is still used for escrow. */
  gatherTimeoutMs?: number;
  /**
   * Also a PEER (RFC 6887 §12) for each selected candidate pair once ICE connects: the
   * firewall learns the remote peer of the flow, and escrow can name it (default false).
   */
  peer?: boolean;
}

export interface EscrowRecord {
  kind: 'write-keys' | 'decline';
  method: 'ChannelBind' | 'CreatePermission';
  peer: string;
  /** client_random hex of each association sent (key-escrow.md §1). */
  associations: string[];
  /** KEY-STATUS values in order, or null until answered / on error. */
  statuses: number[] | null;
  error?: string;
}

export class EscrowError extends GatehouseError {
  constructor(reason: string) {
    super('E_ESCROW', reason);
    this.name = 'EscrowError';
  }
}

export function parseTurnUrl(url: string): { host: string; port: number; transport: 'udp' | 'tcp' } {
  const m = /^turns?:(\[[^\]]+\]|[^:?]+)(?::(\d+))?(?:\?transport=(udp|tcp))?$/.exec(url);
  if (!m) throw new EscrowError(`not a turn: URL: ${url}`);
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port: m[2] ? Number(m[2]) : 3478, transport: (m[3] as 'udp' | 'tcp' | undefined) ?? 'udp' };
}

// ---------------------------------------------------------------- werift seam

type Addr = [string, number];
/** The parts of werift's TurnProtocol we use (lib/ice/src/turn/protocol.d.ts). */
interface WeriftTurn {
  server: Addr;
  username: string;
  password: string;
  realm?: string;
  nonce?: Buffer | string;
  relayedAddress?: Addr;
  transport?: { type?: string };
  transactions: Record<string, { request?: { getAttributeValue(n: string): unknown } }>;
  channelByAddr: Record<string, { number: number; address: Addr; refreshAt: number }>;
  send(data: Buffer, addr: Addr): Promise<void>;
  handleSTUNMessage(data: Buffer, addr: Addr): void;
}

interface RefreshableTurn {
  server: Addr;
  refresh: (exp: number) => void;
  refreshHandle?: { resolve?: () => void };
  requestWithRetry(req: unknown, addr: Addr): Promise<[{ getAttributeValue(n: string): unknown }, Addr]>;
}

interface TurnHook {
  /** Our own escrow transactions, by transaction ID hex. */
  own: Map<string, (msg: StunMessage, raw: Buffer) => void>;
  onKeyRequest(msg: StunMessage, peer: Addr | null): void;
}

const hooks = new WeakMap<object, TurnHook>();
let seamInstalled = false;

/** Wraps TurnProtocol.prototype.handleSTUNMessage once per process (see file comment). */
export function installWeriftTurnSeam(): void {
  if (seamInstalled) return;
  const TP = (werift as unknown as { TurnProtocol?: { prototype: WeriftTurn } }).TurnProtocol;
  if (!TP || typeof TP.prototype.handleSTUNMessage !== 'function')
    throw new EscrowError('werift TurnProtocol seam not found (werift version changed?)');
  // werift's allocation refresh loop awaits a ref'd 500 s timer that close() cannot
  // cancel, which keeps a process alive long after the call ended. Same behaviour
  // (Refresh at 5/6 of the lifetime, RFC 8656 §8), but with a cancellable, unref'd timer.
  const W = werift as unknown as {
    Message?: new (m: number, c: number) => { setAttribute(n: string, v: unknown): unknown };
    methods?: { REFRESH: number };
    classes?: { REQUEST: number };
  };
  const protoAny = TP.prototype as unknown as { connectionMade(this: RefreshableTurn): Promise<void> };
  const origConnectionMade = protoAny.connectionMade;
  if (W.Message && W.methods && W.classes && typeof origConnectionMade === 'function') {
    const Msg = W.Message;
    const REFRESH = W.methods.REFRESH;
    const REQUEST = W.classes.REQUEST;
    protoAny.connectionMade = function (this: RefreshableTurn): Promise<void> {
      this.refresh = (exp: number) => {
        let timer: NodeJS.Timeout | null = null;
        let run = true;
        const loop = (lifetime: number): void => {
          timer = setTimeout(
            () => {
              if (!run) return;
              const req = new Msg(REFRESH, REQUEST);
              req.setAttribute('LIFETIME', lifetime);
              this.requestWithRetry(req, this.server).then(
                ([m]) => loop(Number(m.getAttributeValue('LIFETIME')) || lifetime),
                () => loop(lifetime),
              );
            },
            (5 / 6) * lifetime * 1000,
          );
          timer.unref();
        };
        loop(exp);
        this.refreshHandle = {
          resolve: () => {
            run = false;
            if (timer) clearTimeout(timer);
          },
        };
      };
      return origConnectionMade.call(this);
    };
  }
  const orig = TP.prototype.handleSTUNMessage;
  TP.prototype.handleSTUNMessage = function (this: WeriftTurn, data: Buffer, addr: Addr): void {
    const h = hooks.get(this);
    if (h && data.length >= 20) {
      const msg = decodeStun(data);
      // RFC 8489 §6.3: responses are matched to requests by transaction ID.
      if (msg && (msg.cls === Class.Success || msg.cls === Class.Error)) {
        const hex = msg.transactionId.toString('hex');
        const mine = h.own.get(hex);
        if (mine) {
          h.own.delete(hex);
          try {
            mine(msg, data);
          } catch {
            /* the agent reports its own errors */
          }
          return;
        }
        if (
          msg.cls === Class.Success &&
          (msg.method === Method.ChannelBind || msg.method === Method.CreatePermission) &&
          getAttr(msg, ATTR_KEY_REQUEST)
        ) {
          let peer: Addr | null = null;
          const v = this.transactions[hex]?.request?.getAttributeValue('XOR-PEER-ADDRESS');
          if (Array.isArray(v) && typeof v[0] === 'string' && typeof v[1] === 'number') peer = [v[0], v[1]];
          try {
            h.onKeyRequest(msg, peer);
          } catch {
            /* never break werift's TURN client */
          }
        }
      }
    }
    orig.call(this, data, addr);
  };
  seamInstalled = true;
}

// ---------------------------------------------------------------- agent

interface PeerState {
  ip: string;
  addr: Addr;
  turn: WeriftTurn;
  kr: KeyRequest;
  gateway: TrustedGateway;
  consent: 'asking' | 'yes' | 'no';
  declined: boolean;
  sent: Set<string>;
  sending: boolean;
}

interface Association {
  id: string;
  socket: WeriftDtlsSocketLike;
}

const RTO_MS = 500; // RFC 8489 §6.2.1: initial RTO 500 ms, doubling
const MAX_SENDS = 7; // RFC 8489 §6.2.1: Rc = 7
const MAX_STALE_RETRIES = 2;

export class EscrowAgent extends EventEmitter {
  readonly records: EscrowRecord[] = [];
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly turns = new Set<WeriftTurn>();
  private readonly peers = new Map<string, PeerState>();
  private readonly associations = new Map<string, Association>();
  private gateway: Promise<TrustedGateway> | null = null;
  private scanTimer: TimerHandle | null;
  private closed = false;
  private readonly w = new StunWriter(2048);

  constructor(
    readonly pc: RTCPeerConnection,
    private readonly opts: EscrowAgentOptions,
  ) {
    super();
    installWeriftTurnSeam();
    this.log = (opts.logger ?? silentLogger).child({ component: 'endpoint-agent' });
    this.clock = opts.clock ?? systemClock;
    this.scanTimer = this.clock.setInterval(() => this.scan(), opts.scanIntervalMs ?? 200);
    if (opts.pcp) {
      installWeriftPcpSeam();
      if (pcpOwners.size < MAX_PCP_AGENTS) pcpOwners.add(this);
      else this.log.warn('too many PCP agents in this process: PCP not used');
    }
    pc.connectionStateChange.subscribe(() => this.scan());
    pc.onIceCandidate.subscribe(() => this.scan());
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.scanTimer?.cancel();
    this.scanTimer = null;
    for (const t of this.turns) hooks.delete(t);
    this.turns.clear();
    this.peers.clear();
    this.associations.clear();
    this.closePcp();
  }

  // ---------------------------------------------------------------- PCP (EscrowAgentPcpOptions)

  private pcpClient: Promise<PcpClient> | null = null;
  private pcpClientNow: PcpClient | null = null;
  /** What PCP did (bounded: MAX_PCP_RECORDS): each mapping and its external address. */
  readonly pcpMappings: { internal: string; external: string; lifetime: number }[] = [];

  /** The PCP client's escrow records (WRITE_KEYS / KEY_DECLINE and their results). */
  get pcpRecords(): readonly PcpEscrowRecord[] {
    return this.pcpClientNow?.records ?? [];
  }

  /** @internal (werift gather seam) Whether this ICE connection is one of our pc's. */
  ownsIceConnection(conn: unknown): boolean {
    const its = (this.pc as unknown as { iceTransports?: Array<{ connection?: unknown }> }).iceTransports ?? [];
    return !this.closed && its.some((t) => t.connection === conn);
  }

  private pcpAssociations(): PcpEscrowAssociation[] {
    return [...this.associations.values()].map((a) => ({
      id: a.id,
      keySet: () => {
        const st = dtlsStateFromWerift(a.socket);
        if (!st || associationId(st.clientRandom) !== a.id) return null; // renegotiated meanwhile; the scan picks it up
        const ks = keySetFromDtls12(st);
        const tlv = encodeKeySet(ks);
        wipeKeySet(ks);
        return tlv;
      },
    }));
  }

  private pcpConsent(r: PcpConsentRequest): Promise<boolean> {
    // The TURN callback's shape: the call's peer (PEER) or the mapping, its external address as the "relay".
    const req: ConsentRequest = {
      gateway: r.gateway,
      call: { peer: r.mapping.remote ?? `any (${r.mapping.kind.toUpperCase()} ${r.mapping.internal})`, relay: r.mapping.external },
      wants: r.wants,
      deadline: r.deadline,
    };
    return Promise.resolve().then(() => this.opts.consent(req));
  }

  /** The PCP client on `address`, made, started and (with eapTls) authenticated once. */
  private pcpFor(address: string): Promise<PcpClient> {
    if (this.pcpClient) return this.pcpClient;
    const o = this.opts.pcp!;
    const c = new PcpClient({
      server: o.server,
      ...(o.port ? { port: o.port } : {}),
      clientAddress: address,
      ...(o.auth ? { auth: o.auth } : {}),
      clock: this.clock,
      logger: this.log,
      escrow: {
        gateway: () => this.trusted(),
        consent: (r) => this.pcpConsent(r),
        associations: () => this.pcpAssociations(),
        ...(this.opts.declineReason !== undefined ? { declineReason: this.opts.declineReason } : {}),
      },
    });
    c.on('untrusted', (u: { mapping: string; reason: string }) => this.emit('untrusted', { peer: u.mapping, reason: u.reason }));
    c.on('keyRequest', (k: unknown) => this.emit('pcpKeyRequest', k));
    c.on('consent', (k: { mapping: string; granted: boolean }) => this.emit('consent', { peer: k.mapping, granted: k.granted }));
    c.on('sent', (r: PcpEscrowRecord) => this.emit('pcpSent', r));
    c.on('declined', (r: PcpEscrowRecord) => this.emit('pcpDeclined', r));
    c.on('failure', (_m: unknown, e: Error) => this.emit('pcpError', e));
    c.on('changed', (m: PcpMapping) =>
      this.emit('pcpChanged', { mapping: m.label, external: m.info && `${m.info.externalAddress}:${m.info.externalPort}` }),
    );
    this.pcpClientNow = c;
    this.pcpClient = (async () => {
      await c.start();
      if (o.eapTls) await c.authenticate(o.eapTls);
      return c;
    })();
    this.pcpClient.catch(() => undefined);
    return this.pcpClient;
  }

  /**
   * @internal (werift gather seam) After werift made its host candidates: one MAP per UDP IPv4
   * host candidate on the client address, and a srflx candidate for each mapped address.
   */
  async pcpGather(conn: WeriftIceConnection): Promise<void> {
    const o = this.opts.pcp;
    if (!o || this.closed) return;
    const hosts = conn.protocols
      .map((p) => p.localCandidate)
      .filter((c): c is WeriftCandidate => !!c && c.type === 'host' && c.transport.toLowerCase() === 'udp' && isIPv4(c.host));
    // RFC 6887 §8.1: the client's address is the source address it uses to reach the server.
    const address = o.clientAddress ?? (await sourceAddressToward(o.server, o.port ?? 5351)) ?? hosts[0]?.host;
    if (!address) return;
    if (!hosts.some((h) => h.host === address)) {
      this.emit('pcpError', new EscrowError(`no UDP host candidate on ${address}, the address the PCP server sees`));
      return;
    }
    let client: PcpClient;
    try {
      client = await this.pcpFor(address);
    } catch (e) {
      this.log.warn({ err: (e as Error).message }, 'PCP client could not start');
      this.emit('pcpError', e instanceof Error ? e : new EscrowError(String(e)));
      return;
    }
    const W = werift as unknown as {
      Candidate: new (...a: unknown[]) => WeriftCandidate;
      candidateFoundation(type: string, transport: string, base: string): string;
      candidatePriority(type: string, o?: { transport: string }): number;
    };
    await Promise.all(
      hosts
        .filter((h) => h.host === address)
        .map(async (h) => {
          if (client.mappings.size >= 64) return;
          const m = client.map({ protocol: 17, internalPort: h.port, suggestedExternalPort: h.port, lifetime: o.lifetime ?? 600 });
          let timer: TimerHandle | null = null;
          const info = await Promise.race([
            m.ready,
            new Promise<null>((r) => (timer = this.clock.setTimeout(() => r(null), o.gatherTimeoutMs ?? 5000))),
          ]).catch(() => null);
          (timer as TimerHandle | null)?.cancel();
          if (!info || this.closed) return;
          // RFC 8445 §5.1.1.2: a server-reflexive candidate whose base is the host candidate.
          const cand = new W.Candidate(
            W.candidateFoundation('srflx', 'udp', h.host),
            h.component,
            'udp',
            W.candidatePriority('srflx', { transport: 'udp' }),
            info.externalAddress,
            info.externalPort,
            'srflx',
            h.host,
            h.port,
            undefined,
            conn.generation,
            conn.localUsername,
          );
          conn.appendLocalCandidate(cand);
          if (this.pcpMappings.length < MAX_PCP_RECORDS)
            this.pcpMappings.push({
              internal: `${h.host}:${h.port}`,
              external: `${info.externalAddress}:${info.externalPort}`,
              lifetime: info.lifetime,
            });
          this.emit('pcpMapped', {
            internal: `${h.host}:${h.port}`,
            external: `${info.externalAddress}:${info.externalPort}`,
            lifetime: info.lifetime,
          });
        }),
    );
  }

  private readonly pcpPeerDone = new Set<string>();

  /** One PEER per selected pair (local host candidate on the client address → remote candidate), bounded. */
  private pcpPeers(): void {
    const o = this.opts.pcp;
    const c = this.pcpClientNow;
    if (!o || !c || this.closed) return;
    const its = (this.pc as unknown as { iceTransports?: Array<{ connection?: { nominated?: WeriftPair } }> }).iceTransports ?? [];
    for (const it of its) {
      const pair = it.connection?.nominated;
      const local = pair?.protocol.localCandidate;
      const remote = pair?.remoteCandidate;
      if (!local || !remote || local.type !== 'host' || !isIPv4(remote.host)) continue;
      const key = `${local.host}:${local.port}>${remote.host}:${remote.port}`;
      if (this.pcpPeerDone.has(key) || this.pcpPeerDone.size >= MAX_PCP_RECORDS) continue;
      this.pcpPeerDone.add(key);
      // Only for host candidates this agent MAPped (on the PCP client's address).
      const mapped = this.pcpMappings.find((m) => m.internal === `${local.host}:${local.port}`);
      if (!mapped) continue;
      try {
        const m = c.peer({
          protocol: 17,
          internalPort: local.port,
          // RFC 6887 §12.2: suggest the external port the MAP of the same internal address and port got.
          suggestedExternalPort: Number(mapped.external.split(':').pop()),
          lifetime: o.lifetime ?? 600,
          remoteAddress: remote.host,
          remotePort: remote.port,
        });
        m.ready.then(
          (info) =>
            this.emit('pcpPeer', {
              internal: `${local.host}:${local.port}`,
              remote: `${remote.host}:${remote.port}`,
              external: `${info.externalAddress}:${info.externalPort}`,
            }),
          (e: unknown) => this.emit('pcpError', e instanceof Error ? e : new EscrowError(String(e))),
        );
      } catch (e) {
        this.emit('pcpError', e instanceof Error ? e : new EscrowError(String(e)));
      }
    }
  }

  private closePcp(): void {
    pcpOwners.delete(this);
    const c = this.pcpClientNow;
    this.pcpClientNow = null;
    this.pcpClient = null;
    // RFC 6887 §15: delete every mapping (lifetime 0); bounded by the client's delete timeout.
    if (c) void c.close().catch(() => undefined);
  }

  /** Resolves when the PCP mappings are deleted (or given up); close() starts it. */
  async closeAndDeleteMappings(): Promise<void> {
    const c = this.pcpClientNow;
    this.close();
    if (c) await c.close().catch(() => undefined);
  }

  private trusted(): Promise<TrustedGateway> {
    if (!this.gateway) {
      const src = this.opts.gatewayCertificate;
      this.gateway = ('pem' in src ? Promise.resolve(src.pem) : fetchGatewayCertificate(src.url)).then((pem) =>
        this.opts.trust.evaluate(pem),
      );
      this.gateway.catch(() => {
        this.gateway = null; // retry on the next KEY-REQUEST
      });
    }
    return this.gateway;
  }

  /** Finds werift TURN clients and DTLS associations of this pc. */
  private scan(): void {
    if (this.closed) return;
    const pcx = this.pc as unknown as {
      iceTransports: Array<{ connection?: { protocols?: Array<{ type?: string; turn?: WeriftTurn }> } }>;
      dtlsTransports: Array<{ dtls?: WeriftDtlsSocketLike }>;
    };
    for (const it of pcx.iceTransports ?? []) {
      for (const p of it.connection?.protocols ?? []) {
        const turn = p.type === 'turn' ? p.turn : undefined;
        if (turn && !this.turns.has(turn)) this.attach(turn);
      }
    }
    let fresh = false;
    for (const dt of pcx.dtlsTransports ?? []) {
      const sock = dt.dtls;
      if (!sock || !sock.connected) continue;
      const st = dtlsStateFromWerift(sock);
      if (!st) continue;
      const id = associationId(st.clientRandom);
      if (!this.associations.has(id)) {
        // key-escrow.md §1: new randoms (first handshake, renegotiation, ICE restart) = new association.
        this.associations.set(id, { id, socket: sock });
        fresh = true;
        this.log.info({ association: id }, 'new DTLS association');
      }
    }
    if (fresh) for (const ps of this.peers.values()) this.maybeSend(ps);
    if (fresh) this.pcpClientNow?.associationsChanged(); // key-escrow.md §5.3: new association, new keys
    // The selected pair is known once ICE connected (werift sets `nominated` around then).
    if (this.opts.pcp?.peer && this.pc.connectionState === 'connected') this.pcpPeers();
  }

  private attach(turn: WeriftTurn): void {
    this.turns.add(turn);
    hooks.set(turn, { own: new Map(), onKeyRequest: (msg, peer) => this.onKeyRequest(turn, msg, peer) });
    this.log.debug({ server: `${turn.server[0]}:${turn.server[1]}` }, 'watching TURN allocation');
  }

  private ltKey(turn: WeriftTurn): Buffer | null {
    if (!turn.realm) return null;
    // RFC 8489 §9.2.2 long-term key (MD5; werift does not use PASSWORD-ALGORITHM SHA-256).
    return longTermKey(this.opts.username, String(turn.realm), this.opts.password, 'md5');
  }

  private onKeyRequest(turn: WeriftTurn, msg: StunMessage, peer: Addr | null): void {
    const kr = decodeKeyRequest(getAttr(msg, ATTR_KEY_REQUEST)!);
    if (!kr || !peer) return;
    const k = this.ltKey(turn);
    // RFC 8489 §9.2.5: the response must carry a valid MESSAGE-INTEGRITY for our key.
    if (!k || !verifyIntegrity(msg, k)) {
      this.emit('untrusted', { peer: peer[0], reason: 'response integrity' });
      return;
    }
    const txid = Buffer.from(msg.transactionId);
    this.trusted().then(
      (gw) => {
        try {
          this.opts.trust.acceptKeyRequest(gw, txid, kr);
        } catch (e) {
          this.log.warn({ peer: peer[0], reason: (e as TrustError).reason }, 'KEY-REQUEST refused');
          this.emit('untrusted', { peer: peer[0], reason: (e as TrustError).reason });
          return;
        }
        this.onTrustedKeyRequest(turn, peer, kr, gw);
      },
      (e: unknown) => {
        const reason = e instanceof TrustError ? e.reason : 'gateway certificate unavailable';
        this.log.warn({ peer: peer[0], reason }, 'gateway not trusted');
        this.emit('untrusted', { peer: peer[0], reason });
      },
    );
  }

  private onTrustedKeyRequest(turn: WeriftTurn, peer: Addr, kr: KeyRequest, gw: TrustedGateway): void {
    if (this.closed) return;
    const ip = peer[0];
    let ps = this.peers.get(ip);
    const wants = { media: !!(kr.flags & KR_FLAG_MEDIA), data: !!(kr.flags & KR_FLAG_DATA), required: !!(kr.flags & KR_FLAG_REQUIRED) };
    this.emit('keyRequest', { peer: `${peer[0]}:${peer[1]}`, deadline: kr.deadline, wants, gateway: gw.fingerprintHex });
    if (ps) {
      ps.kr = kr; // key-escrow.md §2.1: the latest KEY-REQUEST holds
      if (ps.gateway.fingerprintHex === gw.fingerprintHex) {
        if (ps.consent === 'yes') this.maybeSend(ps);
        return;
      }
    }
    ps = { ip, addr: peer, turn, kr, gateway: gw, consent: 'asking', declined: false, sent: new Set(), sending: false };
    this.peers.set(ip, ps);
    const req: ConsentRequest = {
      gateway: { fingerprint: gw.fingerprintHex, subject: gw.subject },
      call: {
        peer: `${peer[0]}:${peer[1]}`,
        ...(turn.relayedAddress ? { relay: `${turn.relayedAddress[0]}:${turn.relayedAddress[1]}` } : {}),
      },
      wants,
      deadline: this.clock.now() + kr.deadline * 1000,
    };
    const state = ps;
    Promise.resolve()
      .then(() => this.opts.consent(req))
      .then(
        (ok) => !!ok,
        () => false,
      )
      .then((ok) => {
        if (this.closed) return;
        state.consent = ok ? 'yes' : 'no';
        this.emit('consent', { peer: req.call.peer, granted: ok });
        if (ok) this.maybeSend(state);
        else this.decline(state);
      });
  }

  private maybeSend(ps: PeerState): void {
    if (this.closed || ps.consent !== 'yes' || ps.sending) return;
    const todo = [...this.associations.values()].filter((a) => !ps.sent.has(a.id));
    if (todo.length === 0) return;
    ps.sending = true;
    for (const a of todo) ps.sent.add(a.id);
    this.escrow(ps, 'write-keys', todo, 0)
      .catch((e: unknown) => {
        for (const a of todo) ps.sent.delete(a.id);
        this.emit('error', e instanceof Error ? e : new EscrowError(String(e)));
      })
      .finally(() => {
        ps.sending = false;
        // Associations that appeared meanwhile.
        if ([...this.associations.keys()].some((id) => !ps.sent.has(id)) && this.records.filter((r) => r.error).length < 32)
          this.maybeSend(ps);
      });
  }

  private decline(ps: PeerState): void {
    if (ps.declined) return;
    ps.declined = true;
    this.escrow(ps, 'decline', [], 0).catch((e: unknown) => this.emit('error', e instanceof Error ? e : new EscrowError(String(e))));
  }

  /** Builds, sends and awaits one escrow request (ChannelBind refresh, else CreatePermission). */
  private async escrow(ps: PeerState, kind: 'write-keys' | 'decline', assocs: Association[], stale: number): Promise<void> {
    const turn = ps.turn;
    const k = this.ltKey(turn);
    if (!k || turn.nonce === undefined) throw new EscrowError('TURN client not authenticated yet');
    const nonce = Buffer.isBuffer(turn.nonce) ? turn.nonce : Buffer.from(String(turn.nonce), 'utf8');
    const channel = turn.channelByAddr[JSON.stringify(ps.addr)];
    const method = channel && channel.refreshAt > 0 ? Method.ChannelBind : Method.CreatePermission;
    const tid = randomBytes(12);
    const w = this.w.reset(messageType(method, Class.Request), tid);
    if (method === Method.ChannelBind) w.u32(Attr.ChannelNumber, (channel!.number << 16) >>> 0); // RFC 8656 §18.1: number, then RFFU
    w.xorAddress(Attr.XorPeerAddress, ps.addr[0], ps.addr[1]);
    const ids: string[] = [];
    if (kind === 'write-keys') {
      // key-escrow.md §2.2: key = HKDF(long-term key, NONCE of this request); AAD = header bytes 4..19.
      const aead = turnWriteKeysKey(k, nonce);
      const aad = Buffer.from(turnWriteKeysAad(w.view()));
      try {
        for (const a of assocs) {
          const st = dtlsStateFromWerift(a.socket);
          if (!st || associationId(st.clientRandom) !== a.id) continue; // renegotiated meanwhile; the scan picks it up
          const ks = keySetFromDtls12(st);
          const tlv = encodeKeySet(ks);
          wipeKeySet(ks);
          w.attr(ATTR_WRITE_KEYS, sealWriteKeys(aead, aad, tlv)); // fresh random IV per attribute
          tlv.fill(0);
          ids.push(a.id);
        }
      } finally {
        aead.fill(0);
      }
      if (ids.length === 0) return;
    } else {
      w.attr(ATTR_KEY_DECLINE, encodeKeyDecline(truncateUtf8(this.opts.declineReason ?? 'user declined', 128)));
    }
    w.attr(Attr.Username, this.opts.username);
    w.attr(Attr.Realm, String(turn.realm));
    w.attr(Attr.Nonce, nonce);
    w.integrity(k).fingerprint(); // RFC 8489 §9.2.3 / §14.7
    const bytes = w.copy();
    const methodName = method === Method.ChannelBind ? 'ChannelBind' : 'CreatePermission';
    const rec: EscrowRecord = { kind, method: methodName, peer: `${ps.addr[0]}:${ps.addr[1]}`, associations: ids, statuses: null };
    const res = await this.transact(turn, tid, bytes);
    if (res.cls === Class.Error) {
      const ec = getErrorCode(res);
      // RFC 8489 §9.2.5: 438 Stale Nonce → retry with the new NONCE (re-sealed: new HKDF salt).
      if (ec?.code === 438 && stale < MAX_STALE_RETRIES) {
        const n = getAttr(res, Attr.Nonce);
        if (n) turn.nonce = typeof turn.nonce === 'string' ? n.toString('utf8') : Buffer.from(n);
        return this.escrow(ps, kind, assocs, stale + 1);
      }
      rec.error = `${ec?.code ?? 0} ${ec?.reason ?? ''}`.trim();
      this.records.push(rec);
      this.emit(kind === 'decline' ? 'declined' : 'sent', rec);
      throw new EscrowError(`escrow request failed: ${rec.error}`);
    }
    if (!verifyIntegrity(res, k)) throw new EscrowError('escrow response failed MESSAGE-INTEGRITY');
    // key-escrow.md §2.4: one KEY-STATUS per WRITE-KEYS, same order.
    rec.statuses = getAttrs(res, ATTR_KEY_STATUS).map((v) => decodeKeyStatus(v) ?? -1);
    this.records.push(rec);
    this.log.info({ peer: rec.peer, method: methodName, kind, associations: ids, statuses: rec.statuses }, 'escrow request answered');
    this.emit(kind === 'decline' ? 'declined' : 'sent', rec);
  }

  private transact(turn: WeriftTurn, tid: Buffer, bytes: Buffer): Promise<StunMessage> {
    const h = hooks.get(turn);
    if (!h) return Promise.reject(new EscrowError('agent closed'));
    const hex = tid.toString('hex');
    return new Promise((resolve, reject) => {
      let sends = 0;
      let timer: TimerHandle | null = null;
      // RFC 8489 §6.2.2: no retransmissions over TCP/TLS; wait Ti = 39.5 s.
      const reliable = turn.transport?.type === 'tcp' || turn.transport?.type === 'tls';
      const fire = (): void => {
        if (this.closed) {
          h.own.delete(hex);
          reject(new EscrowError('agent closed'));
          return;
        }
        if (sends >= (reliable ? 1 : MAX_SENDS)) {
          h.own.delete(hex);
          reject(new EscrowError('escrow request timed out'));
          return;
        }
        sends++;
        turn.send(bytes, turn.server).catch(() => undefined);
        // RFC 8489 §6.2.1: RTO doubles; the last wait is 16 × RTO.
        timer = this.clock.setTimeout(fire, reliable ? 39_500 : sends === MAX_SENDS ? 16 * RTO_MS : RTO_MS * 2 ** (sends - 1));
      };
      h.own.set(hex, (msg) => {
        timer?.cancel();
        resolve(msg);
      });
      fire();
    });
  }
}

function truncateUtf8(s: string, max: number): string {
  let b = Buffer.from(s, 'utf8');
  if (b.length <= max) return s;
  b = b.subarray(0, max);
  let out = b.toString('utf8');
  while (Buffer.byteLength(out, 'utf8') > max || out.endsWith('\uFFFD')) out = out.slice(0, -1);
  return out;
}

/**
 * A werift RTCPeerConnection that uses the gateway as its only TURN server (relay
 * policy, so every flow crosses the gateway) with an escrow agent attached.
 */
export function createEscrowPeerConnection(opts: EscrowAgentOptions): { pc: RTCPeerConnection; agent: EscrowAgent } {
  const u = parseTurnUrl(opts.turnUrl);
  const host = u.host.includes(':') ? `[${u.host}]` : u.host;
  const pc = new RTCPeerConnection({
    ...opts.pcConfig,
    iceServers: [{ urls: `turn:${host}:${u.port}?transport=${u.transport}`, username: opts.username, credential: opts.password }],
    iceTransportPolicy: 'relay',
  });
  const agent = new EscrowAgent(pc, opts);
  return { pc, agent };
}

// ---------------------------------------------------------------- werift ICE gather seam (PCP)

/** The parts of werift's ICE Connection (lib/ice/src/ice.d.ts) the PCP path uses. */
interface WeriftCandidate {
  host: string;
  port: number;
  type: string;
  transport: string;
  component: number;
}
interface WeriftPair {
  protocol: { localCandidate?: WeriftCandidate };
  remoteCandidate: WeriftCandidate;
}
interface WeriftIceConnection {
  protocols: Array<{ localCandidate?: WeriftCandidate }>;
  generation: number;
  localUsername: string;
  appendLocalCandidate(c: WeriftCandidate): void;
}

/** The local address the kernel picks to reach `server` (a connected UDP socket sends nothing), or null. */
async function sourceAddressToward(server: string, port: number): Promise<string | null> {
  if (!isIPv4(server)) return null;
  const s = createSocket('udp4');
  try {
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.connect(port, server, () => resolve());
    });
    return s.address().address;
  } catch {
    return null;
  } finally {
    s.close();
  }
}

const MAX_PCP_AGENTS = 256;
const MAX_PCP_RECORDS = 64;
const pcpOwners = new Set<EscrowAgent>();
let pcpSeamInstalled = false;

/**
 * Wraps werift's `Connection.prototype.getCandidatePromises(addresses, timeout)` once per
 * process: gatherCandidates() awaits every promise it returns before gathering completes,
 * so the srflx candidates of the PCP mappings are in the offer / answer like werift's own
 * STUN srflx candidates. Connections not owned by a PCP agent are untouched.
 */
export function installWeriftPcpSeam(): void {
  if (pcpSeamInstalled) return;
  const C = (werift as unknown as { Connection?: { prototype: Record<string, unknown> } }).Connection;
  const orig = C?.prototype.getCandidatePromises as ((this: unknown, a: string[], t: number) => Promise<unknown>[]) | undefined;
  if (!C || typeof orig !== 'function') throw new EscrowError('werift ICE Connection seam not found (werift version changed?)');
  C.prototype.getCandidatePromises = function (this: WeriftIceConnection, addresses: string[], timeout: number): Promise<unknown>[] {
    const list = orig.call(this, addresses, timeout);
    let owner: EscrowAgent | null = null;
    for (const a of pcpOwners)
      if (a.ownsIceConnection(this)) {
        owner = a;
        break;
      }
    if (!owner) return list;
    const agent = owner;
    const extra = Promise.allSettled(list)
      .then(() => agent.pcpGather(this))
      .catch(() => undefined); // never break werift's gathering
    return [...list, extra];
  };
  pcpSeamInstalled = true;
}

/**
 * A werift RTCPeerConnection for the firewall path: no TURN, host candidates mapped through
 * the PCP server and advertised as srflx, keys escrowed over PCP (EscrowAgentPcpOptions).
 */
export function createPcpEscrowPeerConnection(
  opts: Omit<EscrowAgentOptions, 'turnUrl' | 'username' | 'password' | 'pcp'> & { pcp: EscrowAgentPcpOptions },
): { pc: RTCPeerConnection; agent: EscrowAgent } {
  const pc = new RTCPeerConnection({ ...opts.pcConfig, iceServers: opts.pcConfig?.iceServers ?? [] });
  const agent = new EscrowAgent(pc, { ...opts, turnUrl: '', username: '', password: '' });
  return { pc, agent };
}
