/**
 * The PCP server (RFC 6887): UDP listeners on config pcp.listen, MAP (§11) and PEER (§12)
 * mappings made real by a FirewallBackend (hooks.ts), ANNOUNCE (§14.1), unsolicited
 * responses (§14.2), the epoch (§8.5), RFC 7652 authentication through a PcpAuthHook and
 * the gateway's escrow through a PcpRequestExtension.
 *
 * Mappings: an IPv4 internal address gets a NAT44 mapping on `externalAddress` (§11.3);
 * an IPv6 internal address gets a firewall pinhole, external == internal (§11, a
 * "PCP-controlled firewall"). A mapping is reported SUCCESS only after the backend's
 * install() resolved.
 *
 * Bounds (README "PCP server"): mappings in all and per client, FILTERs per mapping,
 * requests per client per second (token bucket; over the rate the datagram is dropped
 * unanswered), clients tracked, requests in flight.
 *
 *   const server = new PcpServer({ listen: ['udp://0.0.0.0:5351'], externalAddress: '203.0.113.1', firewall });
 *   await server.start();
 */
import { createSocket, type Socket } from 'node:dgram';
import { isIPv4, isIPv6 } from 'node:net';
import { networkInterfaces } from 'node:os';
import { systemClock, type Clock } from '../util/clock.js';
import { silentLogger, type Logger } from '../util/log.js';
import { Supervisor } from '../util/supervise.js';
import { eveTimestamp, type EventSink } from '../events/eve.js';
import type { PcpConfig } from '../config/config.js';
import {
  Opcode,
  PCP_CLIENT_PORT,
  OptionCode,
  Result,
  canonicalPcpAddress,
  decodeFilter,
  decodePcpAddress,
  decodePcpRequest,
  encodeNatPmpUnsupportedVersion,
  encodePcpAddress,
  encodePcpErrorResponse,
  encodePcpResponse,
  filterOption,
  isLongLifetimeError,
  isUnspecifiedAddress,
  opcodeName,
  resultName,
  thirdPartyOption,
  type PcpOption,
  type PcpRequest,
} from '../wire/pcp.js';
import { PcpAuthOption } from '../wire/pcp-auth.js';
import type {
  FirewallBackend,
  PcpAddress,
  PcpAuthHook,
  PcpFilter,
  PcpMapping,
  PcpMappingEnd,
  PcpRequestExtension,
  PcpRequestVerdict,
  PcpSecurityAssociation,
} from './hooks.js';
import { PcpEpoch } from './epoch.js';
import { MappingRecord, MappingTable, mapKey, peerKey, tupleKey } from './mappings.js';
import { CidrList, ClientRateLimit, maskAddress } from './limits.js';

/** Defaults of the server's bounds (README "PCP server", config pcp.*). */
export const PCP_DEFAULTS = {
  listen: ['udp://0.0.0.0:5351'],
  /** RFC 6887 §15: lifetimes asked for are clamped to [min, max] seconds. */
  minLifetime: 120,
  maxLifetime: 86400,
  maxMappingsPerClient: 256,
  maxMappings: 65536,
  maxFiltersPerMapping: 16,
  requestRatePerClient: 50,
  maxClients: 10000,
  maxInFlight: 1024,
  /** External ports assigned on the NAT44 address. */
  portMin: 1024,
  portMax: 65535,
  /** §7.4: errors expected to persist ("long lifetime") and temporary ones ("short"), seconds. */
  longErrorLifetime: 1800,
  shortErrorLifetime: 30,
} as const;

/** §11.1: protocols with 16-bit ports that a mapping can name (TCP, UDP, DCCP, SCTP); 0 = all. */
const PORTED_PROTOCOLS = new Set([6, 17, 33, 132]);
const SCTP = 132;

/** The server options that config `pcp:` sets (src/config/config.ts PcpConfig); listen and external_address as given. */
export function pcpOptionsFromConfig(pcp: PcpConfig): Partial<PcpServerOptions> {
  return {
    listen: pcp.listen,
    externalAddress: pcp.external_address,
    minLifetime: pcp.min_lifetime,
    maxLifetime: pcp.max_lifetime,
    maxMappingsPerClient: pcp.max_mappings_per_client,
    requestRatePerClient: pcp.request_rate_per_client,
    thirdPartyClients: pcp.third_party,
  };
}

export interface PcpServerOptions {
  /** udp://address:port URLs (config pcp.listen). */
  listen?: readonly string[];
  /** The IPv4 address NAT44 mappings get (config pcp.external_address); null: IPv4 clients get NETWORK_FAILURE (§7.4). */
  externalAddress?: string | null;
  firewall: FirewallBackend;
  clock?: Clock;
  log?: Logger;
  supervisor?: Supervisor;
  events?: EventSink;
  auth?: PcpAuthHook;
  extension?: PcpRequestExtension;
  minLifetime?: number;
  maxLifetime?: number;
  maxMappingsPerClient?: number;
  maxMappings?: number;
  maxFiltersPerMapping?: number;
  requestRatePerClient?: number;
  maxClients?: number;
  maxInFlight?: number;
  portMin?: number;
  portMax?: number;
  /** CIDRs allowed THIRD_PARTY (§13.1, config pcp.third_party); empty: the option is not supported (UNSUPP_OPTION). */
  thirdPartyClients?: readonly string[];
  /**
   * External ports of the host's own services on the NAT44 address (TURN and PCP
   * listeners, the admin API, the TURN relay range): never assigned (§11.3 "available").
   */
  reservedPorts?: (protocol: number, port: number) => boolean;
  /**
   * Protocols mappings may name; others get UNSUPP_PROTOCOL (§7.4). The gateway inspects
   * UDP only, so it allows [17]: a TCP mapping would get SUCCESS and then carry nothing.
   * Default: TCP, UDP, DCCP, SCTP.
   */
  protocols?: readonly number[];
  /** §11.1: allow "all ports" (internal port 0) and "all protocols" (protocol 0) mappings (IPv6 pinholes only). Default false: NOT_AUTHORIZED. */
  allowAllPorts?: boolean;
  longErrorLifetime?: number;
  shortErrorLifetime?: number;
}

/** Counters (per opcode, per opcode and result code) for /metrics. */
export class PcpStats {
  received = 0;
  /** Datagrams not answered: over the rate, §8.3 silent drops, too many in flight, RFC 7652 silent discards. */
  readonly dropped = { rate: 0, silent: 0, busy: 0, auth: 0 };
  /** Requests by opcode name (NAT-PMP counted as "NATPMP"). */
  readonly requests = new Map<string, number>();
  /** Responses by "OPCODE/RESULT" names, e.g. "MAP/SUCCESS". */
  readonly results = new Map<string, number>();
  /** Mapping lifecycle. */
  readonly mappings = { created: 0, refreshed: 0, deleted: 0, expired: 0, blocked: 0 };
  backendFailures = 0;
  unsolicited = 0;

  count(map: Map<string, number>, key: string): void {
    map.set(key, (map.get(key) ?? 0) + 1);
  }

  snapshot(): Record<string, unknown> {
    return {
      received: this.received,
      dropped: { ...this.dropped },
      requests: Object.fromEntries(this.requests),
      results: Object.fromEntries(this.results),
      mappings: { ...this.mappings },
      backendFailures: this.backendFailures,
      unsolicited: this.unsolicited,
    };
  }
}

/** The outcome of one request: datagrams to send, then actions once they are sent. */
interface Outcome {
  replies: Buffer[];
  after: (() => void)[];
}

class Refusal {
  constructor(
    readonly result: number,
    readonly reason: string,
  ) {}
}

interface ParsedOptions {
  thirdParty: string | null;
  thirdPartyOption: PcpOption | null;
  preferFailure: boolean;
  filters: { prefixLength: number; port: number; address: string }[];
  filterOptions: PcpOption[];
  /** Options the server does not process (≥ 128, for the extension). */
  other: PcpOption[];
}

const AUTH_OPTION_CODES: readonly number[] = Object.values(PcpAuthOption);

function expandWildcards(
  list: readonly { url: string; host: string; port: number }[],
): { url: string; host: string; port: number; expanded: boolean }[] {
  const out: { url: string; host: string; port: number; expanded: boolean }[] = [];
  const ifaces = Object.values(networkInterfaces()).flatMap((l) => l ?? []);
  for (const l of list) {
    if (l.host !== '0.0.0.0' && l.host !== '::') {
      out.push({ ...l, expanded: false });
      continue;
    }
    const v6 = l.host === '::';
    // IPv6 link-local addresses need a scope: not bound (PCP servers are reached by routable addresses).
    const addrs = ifaces.filter((i) => (v6 ? i.family === 'IPv6' && !i.address.toLowerCase().startsWith('fe80') : i.family === 'IPv4'));
    for (const a of new Set(addrs.map((i) => i.address))) out.push({ url: l.url, host: a, port: l.port, expanded: true });
  }
  return out;
}

function parseListen(url: string): { host: string; port: number } {
  const m = /^udp:\/\/(\[([0-9a-fA-F:.]+)\]|([0-9.]+)):(\d{1,5})$/.exec(url);
  if (!m) throw new Error(`pcp.listen: expected udp://address:port, got ${JSON.stringify(url)}`);
  return { host: m[2] ?? m[3]!, port: Number(m[4]) };
}

export class PcpServer {
  readonly stats = new PcpStats();
  readonly epoch: PcpEpoch;
  private readonly clock: Clock;
  private readonly log: Logger;
  private readonly sup: Supervisor;
  private readonly table = new MappingTable();
  private readonly rate: ClientRateLimit;
  private readonly thirdParty: CidrList;
  private readonly locks = new Map<string, Promise<unknown>>();
  private readonly sockets: Socket[] = [];
  private inFlight = 0;
  private nextId = 1;
  private closed = false;
  private externalAddr: string | null;
  private readonly listenAt: { url: string; host: string; port: number }[];
  private readonly o: Required<
    Omit<
      PcpServerOptions,
      'clock' | 'log' | 'supervisor' | 'events' | 'auth' | 'extension' | 'externalAddress' | 'firewall' | 'reservedPorts' | 'protocols'
    >
  >;

  constructor(private readonly opts: PcpServerOptions) {
    this.clock = opts.clock ?? systemClock;
    this.log = opts.log ?? silentLogger;
    this.sup = opts.supervisor ?? new Supervisor(this.log, 10, () => this.clock.now());
    this.epoch = new PcpEpoch(this.clock);
    this.o = {
      listen: opts.listen ?? PCP_DEFAULTS.listen,
      minLifetime: opts.minLifetime ?? PCP_DEFAULTS.minLifetime,
      maxLifetime: opts.maxLifetime ?? PCP_DEFAULTS.maxLifetime,
      maxMappingsPerClient: opts.maxMappingsPerClient ?? PCP_DEFAULTS.maxMappingsPerClient,
      maxMappings: opts.maxMappings ?? PCP_DEFAULTS.maxMappings,
      maxFiltersPerMapping: opts.maxFiltersPerMapping ?? PCP_DEFAULTS.maxFiltersPerMapping,
      requestRatePerClient: opts.requestRatePerClient ?? PCP_DEFAULTS.requestRatePerClient,
      maxClients: opts.maxClients ?? PCP_DEFAULTS.maxClients,
      maxInFlight: opts.maxInFlight ?? PCP_DEFAULTS.maxInFlight,
      portMin: opts.portMin ?? PCP_DEFAULTS.portMin,
      portMax: opts.portMax ?? PCP_DEFAULTS.portMax,
      thirdPartyClients: opts.thirdPartyClients ?? [],
      allowAllPorts: opts.allowAllPorts ?? false,
      longErrorLifetime: opts.longErrorLifetime ?? PCP_DEFAULTS.longErrorLifetime,
      shortErrorLifetime: opts.shortErrorLifetime ?? PCP_DEFAULTS.shortErrorLifetime,
    };
    if (this.o.minLifetime > this.o.maxLifetime) throw new Error('pcp: minLifetime exceeds maxLifetime');
    if (this.o.portMin < 1 || this.o.portMax > 65535 || this.o.portMin > this.o.portMax) throw new Error('pcp: bad external port range');
    this.externalAddr = opts.externalAddress ? canonicalPcpAddress(opts.externalAddress) : null;
    if (this.externalAddr && !isIPv4(this.externalAddr)) throw new Error('pcp: externalAddress must be IPv4 (NAT44, RFC 6887 §11.3)');
    if (opts.reservedPorts) this.table.reserved = opts.reservedPorts;
    this.rate = new ClientRateLimit(this.o.requestRatePerClient, this.o.maxClients, () => this.clock.now());
    this.thirdParty = new CidrList(this.o.thirdPartyClients);
    this.listenAt = this.o.listen.map((url) => ({ url, ...parseListen(url) }));
  }

  get externalAddress(): string | null {
    return this.externalAddr;
  }

  /** Supervised exceptions (by call site). */
  get supervisor(): Supervisor {
    return this.sup;
  }

  /**
   * Binds every pcp.listen address. A wildcard (0.0.0.0, ::) is bound as one socket per
   * address of this host: a client accepts only answers from the address it sent to
   * (RFC 6887 §8.3 "the source IP address and port match the destination of the
   * request"), and a socket bound to the wildcard answers from whatever address the
   * kernel picks for the route back. Addresses added later need a restart.
   */
  async start(): Promise<void> {
    for (const { url, host, port, expanded } of expandWildcards(this.listenAt)) {
      const v6 = isIPv6(host);
      const sock = createSocket({ type: v6 ? 'udp6' : 'udp4', ipv6Only: v6, reuseAddr: false });
      try {
        await new Promise<void>((resolve, reject) => {
          sock.once('error', reject);
          sock.bind(port, host, () => {
            sock.off('error', reject);
            resolve();
          });
        });
      } catch (err) {
        sock.close();
        // One address of a wildcard that cannot be bound (in use by another program, a
        // tentative IPv6 address) is said and skipped; an address configured as such fails the start.
        if (!expanded) throw err;
        this.log.warn({ err: (err as Error).message, listen: url, address: host }, 'pcp: an address of the wildcard could not be bound');
        continue;
      }
      const via = this.sockets.length;
      this.sockets.push(sock);
      sock.on(
        'message',
        this.sup.guard('pcp.udp.message', (msg: Buffer, rinfo: { address: string; port: number }) => this.onDatagram(msg, rinfo, via)),
      );
      sock.on(
        'error',
        this.sup.guard('pcp.udp.error', (err: Error) => this.log.warn({ err: err.message, listen: url }, 'pcp socket error')),
      );
      this.log.info({ listen: url, ...(expanded ? { address: host } : {}) }, 'pcp server listening');
    }
    if (this.listenAt.length > 0 && this.sockets.length === 0)
      throw new Error(`pcp.listen: no address could be bound (${this.o.listen.join(', ')})`);
    // §14.1.1: a start is a loss of state; clients of a previous run learn it now.
    this.announceMulticast();
  }

  /** The bound addresses (port 0 in pcp.listen picks one). */
  addresses(): PcpAddress[] {
    return this.sockets.map((s) => {
      const a = s.address();
      return { address: a.address, port: a.port };
    });
  }

  /** Live mappings (MAP and PEER). */
  mappings(): PcpMapping[] {
    return this.table.all();
  }

  /** Stops listening and removes every mapping (backend.remove, 'shutdown'). The backend itself is the caller's to close. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const s of this.sockets) {
      try {
        s.close();
      } catch {
        /* already closed */
      }
    }
    await Promise.allSettled(this.table.all().map((m) => this.end(m, 'shutdown')));
  }

  private onDatagram(msg: Buffer, rinfo: { address: string; port: number }, via: number): void {
    const from: PcpAddress = { address: canonicalPcpAddress(rinfo.address), port: rinfo.port };
    if (this.inFlight >= this.o.maxInFlight) {
      this.stats.dropped.busy++;
      return;
    }
    this.inFlight++;
    this.process(msg, from, via)
      .then((out) => {
        for (const r of out.replies) this.sendTo(r, from, via);
        for (const a of out.after) this.sup.run('pcp.after', a);
      })
      .catch((err) => this.sup.caught('pcp.request', err))
      .finally(() => this.inFlight--);
  }

  /**
   * Handles one datagram from `from` as if it arrived on listener `via`: returns the
   * datagrams to answer with (none for a silent drop) and runs the post-send actions
   * (extension commits). What the socket path does; tests call it directly.
   */
  async handle(msg: Buffer, from: PcpAddress, via = 0): Promise<Buffer[]> {
    const out = await this.process(msg, { address: canonicalPcpAddress(from.address), port: from.port }, via);
    for (const a of out.after) this.sup.run('pcp.after', a);
    return out.replies;
  }

  private sendTo(msg: Buffer, to: PcpAddress, via: number): void {
    const sock = this.sockets[via] ?? this.sockets[0];
    if (!sock || this.closed) return;
    const v6sock = sock.address().family === 'IPv6';
    // A udp6 socket (ipv6Only) cannot reach an IPv4 client; the IPv4 listener answers those.
    const s =
      v6sock === isIPv6(to.address) ? sock : (this.sockets.find((x) => (x.address().family === 'IPv6') === isIPv6(to.address)) ?? sock);
    s.send(msg, to.port, to.address, (err) => {
      if (err) this.log.debug({ err: err.message }, 'pcp send failed');
    });
  }

  private errorLifetime(result: number): number {
    return isLongLifetimeError(result) ? this.o.longErrorLifetime : this.o.shortErrorLifetime;
  }

  private count(opcode: number | string, result: number): void {
    this.stats.count(this.stats.results, `${typeof opcode === 'string' ? opcode : opcodeName(opcode)}/${resultName(result)}`);
  }

  private sign(from: PcpAddress, msg: Buffer): Buffer {
    return this.opts.auth ? this.opts.auth.sign(from, msg) : msg;
  }

  private errorReply(raw: Buffer, from: PcpAddress, opcode: number, result: number): Outcome {
    this.count(opcode, result);
    return { replies: [this.sign(from, encodePcpErrorResponse(raw, result, this.errorLifetime(result), this.epoch.seconds()))], after: [] };
  }

  private async process(raw: Buffer, from: PcpAddress, via: number): Promise<Outcome> {
    try {
      return await this.processRequest(raw, from, via);
    } catch (err) {
      // A bug here or in a hook: contained, counted, the datagram unanswered (never the process).
      this.sup.caught('pcp.request', err);
      return { replies: [], after: [] };
    }
  }

  private async processRequest(raw: Buffer, from: PcpAddress, via: number): Promise<Outcome> {
    this.stats.received++;
    const none: Outcome = { replies: [], after: [] };
    if (this.closed) return none;
    if (!this.rate.take(from.address)) {
      this.stats.dropped.rate++;
      return none;
    }
    const d = decodePcpRequest(raw, { knownOptions: this.opts.auth ? AUTH_OPTION_CODES : [] });
    if (!d.ok) {
      const e = d.error;
      if (e.silent) {
        this.stats.dropped.silent++;
        return none;
      }
      if (e.natPmp) {
        // RFC 6887 §9: a NAT-PMP client gets NAT-PMP's Unsupported Version (RFC 6886 §3.5).
        this.stats.count(this.stats.requests, 'NATPMP');
        this.count('NATPMP', Result.UNSUPP_VERSION);
        const r = encodeNatPmpUnsupportedVersion(raw, this.epoch.seconds());
        return { replies: r ? [r] : [], after: [] };
      }
      this.stats.count(this.stats.requests, e.opcode === undefined ? 'UNKNOWN' : opcodeName(e.opcode));
      return this.errorReply(raw, from, e.opcode ?? 0, e.result);
    }
    const req = d.value;
    this.stats.count(this.stats.requests, opcodeName(req.opcode));

    if (req.opcode === Opcode.AUTHENTICATION) {
      // RFC 7652 §6: the AUTHENTICATION opcode is the auth hook's; without one it is an opcode we do not support.
      if (!this.opts.auth) return this.errorReply(raw, from, req.opcode, Result.UNSUPP_OPCODE);
      const replies = await this.opts.auth.onAuthentication(from, raw);
      this.count(req.opcode, Result.SUCCESS);
      return { replies, after: [] };
    }

    let sa: PcpSecurityAssociation | null = null;
    if (this.opts.auth) {
      const check = this.opts.auth.verify(from, raw, req.options);
      if (!check.ok) {
        if (check.silent) {
          this.stats.dropped.auth++;
          return none;
        }
        return this.errorReply(raw, from, req.opcode, check.result);
      }
      sa = check.sa;
      // RFC 7652 §4 / §8: a server that requires authentication answers common requests
      // without a PCP SA with AUTHENTICATION_REQUIRED. ANNOUNCE stays answerable (discovery).
      if (!sa && req.opcode !== Opcode.ANNOUNCE && this.opts.auth.required(from))
        return this.errorReply(raw, from, req.opcode, Result.AUTHENTICATION_REQUIRED);
    }

    // §8.3: the PCP Client's IP Address must be the packet's source address (an unexpected NAT in between).
    if (req.clientAddress !== from.address) return this.errorReply(raw, from, req.opcode, Result.ADDRESS_MISMATCH);

    try {
      switch (req.opcode) {
        case Opcode.ANNOUNCE:
          // §14.1: ANNOUNCE is answered with SUCCESS, lifetime 0 and the epoch.
          this.count(req.opcode, Result.SUCCESS);
          return {
            replies: [
              this.sign(
                from,
                encodePcpResponse({ opcode: Opcode.ANNOUNCE, result: Result.SUCCESS, lifetime: 0, epoch: this.epoch.seconds() }),
              ),
            ],
            after: [],
          };
        case Opcode.MAP:
        case Opcode.PEER:
          return await this.mapOrPeer(req, raw, from, via, sa);
        default:
          return this.errorReply(raw, from, req.opcode, Result.UNSUPP_OPCODE);
      }
    } catch (err) {
      if (err instanceof Refusal) return this.errorReply(raw, from, req.opcode, err.result);
      throw err;
    }
  }

  private parseOptions(req: PcpRequest, from: PcpAddress): ParsedOptions {
    const p: ParsedOptions = { thirdParty: null, thirdPartyOption: null, preferFailure: false, filters: [], filterOptions: [], other: [] };
    for (const o of req.options) {
      if (o.code === OptionCode.THIRD_PARTY) {
        // §13.1: a server not configured for THIRD_PARTY does not support it (UNSUPP_OPTION: it is
        // mandatory to process); one that supports it refuses unauthorized clients with NOT_AUTHORIZED.
        if (this.thirdParty.empty) throw new Refusal(Result.UNSUPP_OPTION, 'THIRD_PARTY not supported');
        if (!this.thirdParty.has(from.address)) throw new Refusal(Result.NOT_AUTHORIZED, 'THIRD_PARTY not allowed for this client');
        const addr = decodePcpAddress(o.data, 0);
        if (isUnspecifiedAddress(addr)) throw new Refusal(Result.MALFORMED_OPTION, 'THIRD_PARTY unspecified address');
        // §13.1: THIRD_PARTY naming the request's own source address is MALFORMED_REQUEST.
        if (addr === from.address) throw new Refusal(Result.MALFORMED_REQUEST, 'THIRD_PARTY with the source address');
        p.thirdParty = addr;
        p.thirdPartyOption = o;
      } else if (o.code === OptionCode.PREFER_FAILURE) p.preferFailure = true;
      else if (o.code === OptionCode.FILTER) {
        const f = decodeFilter(o);
        if (!f.ok) throw new Refusal(f.error.result, f.error.reason);
        p.filters.push(f.value);
        p.filterOptions.push(o);
      } else if (!AUTH_OPTION_CODES.includes(o.code) || !this.opts.auth) p.other.push(o);
    }
    return p;
  }

  private clampLifetime(requested: number): number {
    return Math.min(this.o.maxLifetime, Math.max(this.o.minLifetime, requested));
  }

  /** Serializes requests on one mapping key (a retransmission waits for the first and finds its mapping). */
  private async locked<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(key) ?? Promise.resolve();
    const run = prev.then(fn, fn);
    const tail = run.catch(() => undefined);
    this.locks.set(key, tail);
    try {
      return await run;
    } finally {
      if (this.locks.get(key) === tail) this.locks.delete(key);
    }
  }

  private async mapOrPeer(
    req: PcpRequest,
    raw: Buffer,
    from: PcpAddress,
    via: number,
    sa: PcpSecurityAssociation | null,
  ): Promise<Outcome> {
    const isMap = req.opcode === Opcode.MAP;
    const body = isMap ? req.map! : req.peer!;
    const opts = this.parseOptions(req, from);
    const internalAddress = opts.thirdParty ?? from.address;
    const protocol = body.protocol;
    if (protocol !== 0 && !PORTED_PROTOCOLS.has(protocol)) throw new Refusal(Result.UNSUPP_PROTOCOL, `protocol ${protocol}`);
    if (protocol !== 0 && this.opts.protocols && !this.opts.protocols.includes(protocol))
      throw new Refusal(Result.UNSUPP_PROTOCOL, `protocol ${protocol} not mapped here`);
    // §11.1: with protocol 0 (all protocols) the internal port is ignored (all ports).
    const internalPort = protocol === 0 ? 0 : body.internalPort;
    let key: string;
    let remote: PcpAddress | null = null;
    if (isMap) key = mapKey(internalAddress, internalPort, protocol);
    else {
      const peer = req.peer!;
      // §12.1: a PEER names one flow: a protocol, an internal port and a remote peer.
      if (protocol === 0 || internalPort === 0 || peer.remotePort === 0 || isUnspecifiedAddress(peer.remoteAddress))
        throw new Refusal(Result.MALFORMED_REQUEST, 'PEER without protocol, ports or remote peer');
      // No NAT64/NAT46 here: the remote peer has the internal address's family.
      if (isIPv4(peer.remoteAddress) !== isIPv4(internalAddress))
        throw new Refusal(Result.MALFORMED_REQUEST, 'PEER remote peer of another family');
      remote = { address: peer.remoteAddress, port: peer.remotePort };
      key = peerKey(internalAddress, internalPort, protocol, remote.address, remote.port);
    }
    return this.locked(key, () => this.mapOrPeerLocked(req, raw, from, via, sa, opts, key, internalAddress, internalPort, remote));
  }

  private async mapOrPeerLocked(
    req: PcpRequest,
    raw: Buffer,
    from: PcpAddress,
    via: number,
    sa: PcpSecurityAssociation | null,
    opts: ParsedOptions,
    key: string,
    internalAddress: string,
    internalPort: number,
    remote: PcpAddress | null,
  ): Promise<Outcome> {
    const isMap = req.opcode === Opcode.MAP;
    const body = isMap ? req.map! : req.peer!;
    const protocol = body.protocol;
    const now = this.clock.now();
    if (this.closed) return { replies: [], after: [] };

    if (req.lifetime === 0) return this.deleteRequest(req, from, opts, key, internalAddress, internalPort);

    const allPorts = isMap && internalPort === 0;
    // §11.1: "all ports" / "all protocols" opens the whole host: an administrative choice.
    if (allPorts && !this.o.allowAllPorts) throw new Refusal(Result.NOT_AUTHORIZED, 'all-ports mappings disabled');
    const nat44 = isIPv4(internalAddress);
    // NAT44 shares one external address: it cannot be given whole to one host.
    if (allPorts && nat44) throw new Refusal(Result.NO_RESOURCES, 'all-ports mapping on the shared NAT44 address');
    // §7.4 NETWORK_FAILURE: "e.g., has not yet obtained an external IP address".
    if (nat44 && !this.externalAddr) throw new Refusal(Result.NETWORK_FAILURE, 'no external address');

    const existing = this.table.get(key) as MappingRecord | undefined;
    // §11.2 / §12.3: the mapping nonce must match on every refresh (and delete).
    if (existing && !existing.nonce.equals(body.nonce)) throw new Refusal(Result.NOT_AUTHORIZED, 'mapping nonce mismatch');
    // A mapping made under an RFC 7652 identity is refreshed (and escrowed for) only under it:
    // another user's SA on the same host must not push keys or KEY_DECLINE into its flows.
    if (existing && existing.user !== null && sa?.identity !== existing.user)
      throw new Refusal(Result.NOT_AUTHORIZED, 'the mapping belongs to another identity');

    const lifetime = this.clampLifetime(req.lifetime);
    const filters = this.applyFilters(existing?.filters ?? [], opts, internalAddress);
    // SCTP MAP requests imply PREFER_FAILURE (§7.4 CANNOT_PROVIDE_EXTERNAL, §11.3).
    const preferFailure = isMap && (opts.preferFailure || protocol === SCTP);
    const user = sa?.identity ?? null;

    if (existing) {
      const before = { expiresAt: existing.expiresAt, filters: existing.filters, client: existing.client, via: existing.via };
      existing.expiresAt = now + lifetime * 1000;
      existing.filters = filters;
      this.table.moveClient(existing, from);
      existing.via = via;
      const verdict = this.ask(existing, false, opts, sa);
      if (verdict?.result !== undefined && verdict.result !== Result.SUCCESS) {
        verdict.abort?.();
        this.rollback(existing, before);
        throw new Refusal(verdict.result, 'refused by the extension');
      }
      try {
        if (existing.installed) await this.opts.firewall.update(existing);
      } catch (err) {
        verdict?.abort?.();
        this.stats.backendFailures++;
        this.log.warn({ mapping: existing.id, err: (err as Error).message }, 'pcp backend update failed');
        if (this.table.has(existing)) this.rollback(existing, before);
        throw new Refusal(Result.NO_RESOURCES, 'backend update failed');
      }
      if (!this.table.has(existing)) {
        verdict?.abort?.();
        throw new Refusal(Result.NO_RESOURCES, 'mapping ended meanwhile');
      }
      this.schedule(existing);
      this.stats.mappings.refreshed++;
      this.emit(existing, 'refreshed', lifetime);
      return this.success(req, from, existing, lifetime, opts, verdict);
    }

    // A new mapping.
    if (this.table.size >= this.o.maxMappings) throw new Refusal(Result.NO_RESOURCES, 'mapping table full');
    // §7.4 USER_EX_QUOTA: "would exceed this subscriber's port quota".
    if (this.table.clientCount(from.address) >= this.o.maxMappingsPerClient)
      throw new Refusal(Result.USER_EX_QUOTA, 'per-client mapping quota');
    // A backend that can create nothing: never SUCCESS (§7.4 NO_RESOURCES, "cannot create more mappings at this time").
    if (!this.opts.firewall.available)
      throw new Refusal(Result.NO_RESOURCES, `firewall backend unavailable: ${this.opts.firewall.reason ?? ''}`);

    const external = this.chooseExternal(
      nat44,
      internalAddress,
      internalPort,
      protocol,
      body.externalPort,
      body.externalAddress,
      preferFailure,
      isMap,
    );
    const m = new MappingRecord(
      `pcp-${this.nextId++}`,
      isMap ? 'map' : 'peer',
      from,
      { address: internalAddress, port: internalPort },
      protocol,
      external,
      remote,
      filters,
      Buffer.from(body.nonce),
      user,
      sa?.groups ?? [],
      now,
      now + lifetime * 1000,
      opts.thirdParty !== null,
    );
    m.via = via;
    const verdict = this.ask(m, true, opts, sa);
    if (verdict?.result !== undefined && verdict.result !== Result.SUCCESS) {
      verdict.abort?.();
      throw new Refusal(verdict.result, 'refused by the extension');
    }
    // Reserve the key and the external port before awaiting the backend.
    this.table.add(m);
    try {
      await this.opts.firewall.install(m);
    } catch (err) {
      verdict?.abort?.();
      this.table.remove(m);
      this.stats.backendFailures++;
      this.log.warn({ mapping: m.id, err: (err as Error).message }, 'pcp backend install failed');
      throw new Refusal(Result.NO_RESOURCES, 'backend install failed');
    }
    m.installed = true;
    if (this.closed || !this.table.has(m)) {
      verdict?.abort?.();
      this.table.remove(m);
      await this.opts.firewall.remove(m).catch(() => undefined);
      return { replies: [], after: [] };
    }
    this.schedule(m);
    this.stats.mappings.created++;
    this.emit(m, 'created', lifetime);
    const out = this.success(req, from, m, lifetime, opts, verdict);
    out.after.unshift(() => this.opts.extension?.onMappingCreated?.(m));
    return out;
  }

  private rollback(m: MappingRecord, before: { expiresAt: number; filters: PcpFilter[]; client: PcpAddress; via: number }): void {
    m.expiresAt = before.expiresAt;
    m.filters = before.filters;
    this.table.moveClient(m, before.client);
    m.via = before.via;
  }

  private ask(m: MappingRecord, isNew: boolean, opts: ParsedOptions, sa: PcpSecurityAssociation | null): PcpRequestVerdict | undefined {
    const ext = this.opts.extension;
    if (!ext?.onRequest) return undefined;
    try {
      return ext.onRequest({ opcode: m.opcode, client: m.client, mapping: m, isNew, options: opts.other, sa }) ?? undefined;
    } catch (err) {
      // An extension that fails cannot vouch for the mapping: refuse (§7.4 NO_RESOURCES, the catch-all).
      this.sup.caught('pcp.extension.request', err);
      return { result: Result.NO_RESOURCES };
    }
  }

  /**
   * §13.3 FILTER: each FILTER adds a permitted remote peer (prefix, port 0 = any);
   * prefix length 0 removes all filters of the mapping. More than the bound →
   * EXCESSIVE_REMOTE_PEERS. The family must be the internal address's.
   */
  private applyFilters(current: readonly PcpFilter[], opts: ParsedOptions, internalAddress: string): PcpFilter[] {
    if (!opts.filters.length) return [...current];
    let out = [...current];
    const v4 = isIPv4(internalAddress);
    for (const f of opts.filters) {
      if (f.prefixLength === 0) {
        out = [];
        continue;
      }
      if (isIPv4(f.address) !== v4) throw new Refusal(Result.MALFORMED_OPTION, 'FILTER of another address family');
      const prefix = decodePcpAddress(maskAddress(encodePcpAddress(f.address), f.prefixLength), 0);
      // PcpFilter lengths are those of the address family (IPv4 0..32: the wire's minus 96, §5).
      const pf: PcpFilter = { prefix, prefixLength: v4 ? f.prefixLength - 96 : f.prefixLength, port: f.port };
      if (!out.some((x) => x.prefix === pf.prefix && x.prefixLength === pf.prefixLength && x.port === pf.port)) out.push(pf);
    }
    if (out.length > this.o.maxFiltersPerMapping) throw new Refusal(Result.EXCESSIVE_REMOTE_PEERS, 'too many FILTERs');
    return out;
  }

  /**
   * §11.3 external address and port. NAT44: the tuple's existing external port (shared
   * with its MAP/PEER mappings), else the suggested port when free, else (without
   * PREFER_FAILURE) the internal port or another free one. IPv6 firewall: external ==
   * internal; a different suggestion is CANNOT_PROVIDE_EXTERNAL only with PREFER_FAILURE.
   */
  private chooseExternal(
    nat44: boolean,
    internalAddress: string,
    internalPort: number,
    protocol: number,
    suggestedPort: number,
    suggestedAddress: string,
    preferFailure: boolean,
    isMap: boolean,
  ): PcpAddress {
    if (!nat44) {
      const other =
        (suggestedPort !== 0 && suggestedPort !== internalPort) ||
        (!isUnspecifiedAddress(suggestedAddress) && suggestedAddress !== internalAddress);
      if (other && preferFailure) throw new Refusal(Result.CANNOT_PROVIDE_EXTERNAL, 'firewall: external is the internal address and port');
      return { address: internalAddress, port: internalPort };
    }
    const extAddr = this.externalAddr!;
    const wrongAddress = !isUnspecifiedAddress(suggestedAddress) && suggestedAddress !== extAddr;
    if (wrongAddress && preferFailure) throw new Refusal(Result.CANNOT_PROVIDE_EXTERNAL, 'suggested external address not ours');
    const tuple = tupleKey(internalAddress, internalPort, protocol);
    const shared = this.table.externalOf(tuple);
    if (shared) {
      if (preferFailure && suggestedPort !== 0 && suggestedPort !== shared.port)
        throw new Refusal(Result.CANNOT_PROVIDE_EXTERNAL, 'the tuple has another external port');
      return { ...shared };
    }
    const inRange = (p: number): boolean => p >= this.o.portMin && p <= this.o.portMax;
    if (suggestedPort !== 0) {
      if (inRange(suggestedPort) && this.table.portFree(extAddr, protocol, suggestedPort, tuple))
        return { address: extAddr, port: suggestedPort };
      // §13.2: PREFER_FAILURE: fail rather than assign another port.
      if (preferFailure) throw new Refusal(Result.CANNOT_PROVIDE_EXTERNAL, 'suggested external port not available');
    }
    const port = this.table.choosePort(extAddr, protocol, tuple, this.o.portMin, this.o.portMax, isMap ? [internalPort] : []);
    if (port === null) throw new Refusal(Result.NO_RESOURCES, 'no free external port');
    return { address: extAddr, port };
  }

  /** §11.3 / §12.3: lifetime 0 deletes; protocol 0 or internal port 0 (MAP) deletes every match. */
  private async deleteRequest(
    req: PcpRequest,
    from: PcpAddress,
    opts: ParsedOptions,
    key: string,
    internalAddress: string,
    internalPort: number,
  ): Promise<Outcome> {
    const isMap = req.opcode === Opcode.MAP;
    const body = isMap ? req.map! : req.peer!;
    let victims: MappingRecord[];
    if (isMap && (body.protocol === 0 || internalPort === 0)) {
      const all = this.table
        .mapsOf(internalAddress)
        .filter((m) => (body.protocol === 0 || m.protocol === body.protocol) && (internalPort === 0 || m.internal.port === internalPort));
      victims = all.filter((m) => m.nonce.equals(body.nonce));
      if (all.length && !victims.length) throw new Refusal(Result.NOT_AUTHORIZED, 'mapping nonce mismatch');
    } else {
      const m = this.table.get(key);
      // §11.2: a delete with another nonce is refused.
      if (m && !m.nonce.equals(body.nonce)) throw new Refusal(Result.NOT_AUTHORIZED, 'mapping nonce mismatch');
      victims = m ? [m] : [];
    }
    const first = victims[0];
    for (const m of victims) await this.end(m, 'deleted');
    // §11.3: deleting a mapping that does not exist is SUCCESS too (idempotent retransmissions).
    this.count(req.opcode, Result.SUCCESS);
    const ext = first?.external ?? { address: body.externalAddress, port: body.externalPort };
    const options: PcpOption[] = opts.thirdPartyOption ? [opts.thirdPartyOption] : [];
    const map = {
      nonce: body.nonce,
      protocol: body.protocol,
      internalPort: body.internalPort,
      externalPort: ext.port,
      externalAddress: ext.address,
    };
    const res = isMap
      ? encodePcpResponse({ opcode: req.opcode, result: Result.SUCCESS, lifetime: 0, epoch: this.epoch.seconds(), map, options })
      : encodePcpResponse({
          opcode: req.opcode,
          result: Result.SUCCESS,
          lifetime: 0,
          epoch: this.epoch.seconds(),
          peer: { ...map, remotePort: req.peer!.remotePort, remoteAddress: req.peer!.remoteAddress },
          options,
        });
    return { replies: [this.sign(from, res)], after: [] };
  }

  /**
   * The success response (§11.4 MAP, §12.3 PEER): the request's nonce, protocol and
   * internal port, the assigned external port and address; options: THIRD_PARTY when the
   * request had it (§13.1), the request's FILTERs (§13.3: accepted), and the extension's.
   * PREFER_FAILURE is a request-only option (§13.2) and is not echoed.
   */
  private success(
    req: PcpRequest,
    from: PcpAddress,
    m: MappingRecord,
    lifetime: number,
    opts: ParsedOptions,
    verdict: PcpRequestVerdict | undefined,
  ): Outcome {
    const options: PcpOption[] = [];
    if (opts.thirdPartyOption) options.push(opts.thirdPartyOption);
    if (req.opcode === Opcode.MAP) options.push(...opts.filterOptions);
    if (verdict?.options) options.push(...verdict.options);
    const body = req.opcode === Opcode.MAP ? req.map! : req.peer!;
    const map = {
      nonce: body.nonce,
      protocol: body.protocol,
      internalPort: body.internalPort,
      externalPort: m.external.port,
      externalAddress: m.external.address,
    };
    const msg =
      req.opcode === Opcode.MAP
        ? encodePcpResponse({ opcode: Opcode.MAP, result: Result.SUCCESS, lifetime, epoch: this.epoch.seconds(), map, options })
        : encodePcpResponse({
            opcode: Opcode.PEER,
            result: Result.SUCCESS,
            lifetime,
            epoch: this.epoch.seconds(),
            peer: { ...map, remotePort: req.peer!.remotePort, remoteAddress: req.peer!.remoteAddress },
            options,
          });
    this.count(req.opcode, Result.SUCCESS);
    const after: (() => void)[] = [];
    if (verdict?.commit) {
      const c = verdict.commit;
      after.push(() => c(m));
    }
    return { replies: [this.sign(from, msg)], after };
  }

  private schedule(m: MappingRecord): void {
    m.timer?.cancel();
    const ms = Math.max(0, m.expiresAt - this.clock.now());
    m.timer = this.clock.setTimeout(
      this.sup.guard('pcp.expiry', () => {
        if (m.ended || !this.table.has(m)) return;
        if (this.clock.now() < m.expiresAt) return this.schedule(m);
        this.end(m, 'expired').catch((err) => this.sup.caught('pcp.expiry', err));
      }),
      ms,
    );
  }

  /** Ends a mapping: out of the table, timer cancelled, backend.remove awaited, extension and event told. */
  private async end(m: MappingRecord, why: PcpMappingEnd): Promise<void> {
    if (m.ended) return;
    m.ended = true;
    m.timer?.cancel();
    m.timer = null;
    this.table.remove(m);
    try {
      if (m.installed) await this.opts.firewall.remove(m);
    } catch (err) {
      this.stats.backendFailures++;
      this.log.warn({ mapping: m.id, err: (err as Error).message }, 'pcp backend remove failed');
    }
    if (why === 'deleted' || why === 'expired' || why === 'blocked') this.stats.mappings[why]++;
    this.emit(m, why === 'expired' || why === 'blocked' ? why : 'deleted', 0, why);
    const ext = this.opts.extension;
    if (ext?.onMappingEnded) this.sup.run('pcp.extension.ended', () => ext.onMappingEnded!(m, why));
  }

  /**
   * Deletes a mapping on the server's own initiative (a block by policy, an operator):
   * removed like a client delete, and the client is told with an unsolicited response of
   * lifetime 0 (§14.2).
   */
  async deleteMapping(mapping: PcpMapping, why: PcpMappingEnd): Promise<void> {
    const m = this.table.byMappingId(mapping.id);
    if (!m || m !== mapping) return;
    this.sendUnsolicitedRecord(m, [], 0);
    await this.end(m, why);
  }

  /**
   * §14.2: an unsolicited MAP or PEER response for a live mapping, to the client's address
   * and port, with its remaining lifetime and `options` (the gateway's WRITE_KEYS_REQUEST).
   */
  sendUnsolicited(mapping: PcpMapping, options: PcpOption[]): void {
    const m = this.table.byMappingId(mapping.id);
    if (!m || m !== mapping) return;
    this.sendUnsolicitedRecord(m, options, Math.max(0, Math.ceil((m.expiresAt - this.clock.now()) / 1000)));
  }

  private sendUnsolicitedRecord(m: MappingRecord, options: PcpOption[], lifetime: number): void {
    const opts: PcpOption[] = [];
    if (m.thirdParty) opts.push(thirdPartyOption(m.internal.address));
    opts.push(...options);
    const map = {
      nonce: m.nonce,
      protocol: m.protocol,
      internalPort: m.internal.port,
      externalPort: m.external.port,
      externalAddress: m.external.address,
    };
    const msg =
      m.opcode === 'map'
        ? encodePcpResponse({ opcode: Opcode.MAP, result: Result.SUCCESS, lifetime, epoch: this.epoch.seconds(), map, options: opts })
        : encodePcpResponse({
            opcode: Opcode.PEER,
            result: Result.SUCCESS,
            lifetime,
            epoch: this.epoch.seconds(),
            peer: { ...map, remotePort: m.remote!.port, remoteAddress: m.remote!.address },
            options: opts,
          });
    this.stats.unsolicited++;
    this.sendTo(this.sign(m.client, msg), m.client, m.via);
  }

  /**
   * Unsolicited ANNOUNCE (§14.1.1) to the clients of live mappings (unicast: multicast to
   * 224.0.0.1 / ff02::1 is not done), so they check their mappings against the epoch.
   */
  /**
   * RFC 6887 §14.1.1: after a start (the server lost its state) or an external address
   * change, an unsolicited ANNOUNCE goes to the all-hosts multicast group on the client
   * port, 224.0.0.1:5350 and [ff02::1]:5350, from every listener, so clients re-create their
   * mappings (their epoch check fails, §8.5). Unsigned: no SA covers a multicast message.
   */
  announceMulticast(): void {
    const msg = encodePcpResponse({ opcode: Opcode.ANNOUNCE, result: Result.SUCCESS, lifetime: 0, epoch: this.epoch.seconds() });
    for (const sock of this.sockets) {
      if (this.closed) return;
      const a = sock.address();
      // A loopback listener has no group to reach.
      if (a.address === '127.0.0.1' || a.address === '::1') continue;
      const v6 = a.family === 'IPv6';
      try {
        // Out of the listener's own interface (IPv4: IP_MULTICAST_IF by address).
        if (!v6) sock.setMulticastInterface(a.address);
      } catch {
        /* the kernel's default interface */
      }
      this.stats.unsolicited++;
      sock.send(msg, PCP_CLIENT_PORT, v6 ? 'ff02::1' : '224.0.0.1', (err) => {
        if (err) this.log.debug({ err: err.message, listen: a.address }, 'pcp multicast ANNOUNCE not sent');
      });
    }
  }

  announce(): void {
    const seen = new Set<string>();
    for (const m of this.table.all()) {
      const k = `${m.client.address}|${m.client.port}`;
      if (seen.has(k)) continue;
      seen.add(k);
      this.stats.unsolicited++;
      const msg = encodePcpResponse({ opcode: Opcode.ANNOUNCE, result: Result.SUCCESS, lifetime: 0, epoch: this.epoch.seconds() });
      this.sendTo(this.sign(m.client, msg), m.client, m.via);
    }
  }

  /**
   * The NAT44 external address changed: mappings move to the new address (backend.update;
   * one that fails ends), the epoch restarts (§8.5), every client gets an unsolicited
   * response per mapping with the new address (§14.2) and an ANNOUNCE (§14.1.1).
   */
  async setExternalAddress(address: string): Promise<void> {
    const a = canonicalPcpAddress(address);
    if (!isIPv4(a)) throw new Error('pcp: externalAddress must be IPv4');
    if (a === this.externalAddr) return;
    const old = this.externalAddr;
    this.externalAddr = a;
    this.epoch.reset();
    for (const m of this.table.all()) {
      if (!isIPv4(m.internal.address) || m.external.address !== old) continue;
      this.table.readdress(m, { address: a, port: m.external.port });
      try {
        await this.opts.firewall.update(m);
        this.sendUnsolicited(m, []);
      } catch (err) {
        this.stats.backendFailures++;
        this.log.warn({ mapping: m.id, err: (err as Error).message }, 'pcp backend update failed (external address change)');
        await this.end(m, 'deleted');
      }
    }
    this.announce();
    this.announceMulticast();
  }

  private emit(
    m: MappingRecord,
    action: 'created' | 'refreshed' | 'deleted' | 'expired' | 'blocked',
    lifetime: number,
    why?: PcpMappingEnd,
  ): void {
    const sink = this.opts.events;
    if (!sink) return;
    const dest = m.remote ?? m.external;
    const proto = m.protocol === 6 ? 'TCP' : m.protocol === 17 ? 'UDP' : undefined;
    // EVE shape (contract.md "Events"); never the nonce.
    sink.emit({
      timestamp: eveTimestamp(this.clock.now()),
      event_type: 'pcp_mapping',
      src_ip: m.internal.address,
      src_port: m.internal.port,
      dest_ip: dest.address,
      dest_port: dest.port,
      ...(proto ? { proto } : {}),
      gatehouse: {
        mapping: m.id,
        action,
        opcode: m.opcode,
        protocol: m.protocol,
        external: `${m.external.address}:${m.external.port}`,
        client: `${m.client.address}:${m.client.port}`,
        lifetime,
        filters: m.filters.length,
        user: m.user,
        ...(why && why !== action ? { reason: why } : {}),
      },
    });
  }
}
