/**
 * The PCP server's mapping table (RFC 6887 §11 MAP, §12 PEER): records, their keys,
 * per-client counts and the external ports of the NAT44 address.
 *
 *  - A MAP mapping is keyed by (internal address, internal port, protocol) (§11.3: "the
 *    mapping is identified by the internal address, protocol and port").
 *  - A PEER mapping adds the remote peer (§12.3).
 *  - Mappings of one internal (address, port, protocol) share one external port
 *    (endpoint-independent mapping, RFC 4787 REQ-1; §12.3: a PEER for an internal port
 *    that has a MAP reports the MAP's external port).
 */
import { randomInt } from 'node:crypto';
import type { TimerHandle } from '../util/clock.js';
import type { PcpAddress, PcpFilter, PcpMapping } from './hooks.js';

export class MappingRecord implements PcpMapping {
  /** Where the last request for it came from (updated on refresh; unsolicited messages go there, §14.2). */
  client: PcpAddress;
  external: PcpAddress;
  filters: PcpFilter[];
  expiresAt: number;
  user: string | null;
  groups: readonly string[];
  /** Server internals: expiry timer, listening socket index, THIRD_PARTY (§13.1). */
  timer: TimerHandle | null = null;
  via = 0;
  thirdParty: boolean;
  /** Installed by the backend (false while install() is pending). */
  installed = false;
  ended = false;

  constructor(
    readonly id: string,
    readonly opcode: 'map' | 'peer',
    client: PcpAddress,
    readonly internal: PcpAddress,
    readonly protocol: number,
    external: PcpAddress,
    readonly remote: PcpAddress | null,
    filters: PcpFilter[],
    readonly nonce: Buffer,
    user: string | null,
    groups: readonly string[],
    readonly createdAt: number,
    expiresAt: number,
    thirdParty: boolean,
  ) {
    this.client = client;
    this.external = external;
    this.filters = filters;
    this.expiresAt = expiresAt;
    this.user = user;
    this.groups = groups;
    this.thirdParty = thirdParty;
  }

  /** The key of this mapping in the table. */
  get key(): string {
    return this.opcode === 'map'
      ? mapKey(this.internal.address, this.internal.port, this.protocol)
      : peerKey(this.internal.address, this.internal.port, this.protocol, this.remote!.address, this.remote!.port);
  }

  get tuple(): string {
    return tupleKey(this.internal.address, this.internal.port, this.protocol);
  }
}

export function tupleKey(address: string, port: number, protocol: number): string {
  return `${address}|${port}|${protocol}`;
}
export function mapKey(address: string, port: number, protocol: number): string {
  return `map|${tupleKey(address, port, protocol)}`;
}
export function peerKey(address: string, port: number, protocol: number, remote: string, remotePort: number): string {
  return `peer|${tupleKey(address, port, protocol)}|${remote}|${remotePort}`;
}

function extKey(address: string, protocol: number, port: number): string {
  return `${address}|${protocol}|${port}`;
}

export class MappingTable {
  private readonly byKey = new Map<string, MappingRecord>();
  private readonly byId = new Map<string, MappingRecord>();
  private readonly perClient = new Map<string, number>();
  /** Users of each internal tuple (MAP and PEER share its external port). */
  private readonly tuples = new Map<string, Set<MappingRecord>>();
  /** External (address, protocol, port) → the internal tuple holding it. */
  private readonly ports = new Map<string, string>();

  get size(): number {
    return this.byKey.size;
  }

  get(key: string): MappingRecord | undefined {
    return this.byKey.get(key);
  }

  byMappingId(id: string): MappingRecord | undefined {
    return this.byId.get(id);
  }

  has(m: MappingRecord): boolean {
    return this.byId.get(m.id) === m;
  }

  all(): MappingRecord[] {
    return [...this.byKey.values()];
  }

  /** Mappings a client (by IP address) holds: the per-client bound counts these. */
  clientCount(address: string): number {
    return this.perClient.get(address) ?? 0;
  }

  /** MAP mappings of one internal address (for the wildcard delete of §11.3). */
  mapsOf(internalAddress: string): MappingRecord[] {
    return this.all().filter((m) => m.opcode === 'map' && m.internal.address === internalAddress);
  }

  /** The external address and port already used by this internal tuple, if any (§12.3 / RFC 4787). */
  externalOf(tuple: string): PcpAddress | null {
    const s = this.tuples.get(tuple);
    if (!s) return null;
    for (const m of s) return m.external;
    return null;
  }

  /** Whether the external port is free for this internal tuple (unused, or used by the tuple itself). */
  /**
   * Ports the host itself serves on the external address (TURN, PCP, admin, the relay
   * range): never available to a mapping (RFC 6887 §11.3 assigns an *available* port; a
   * DNAT on them would hand the gateway's own services to a client).
   */
  reserved: (protocol: number, port: number) => boolean = () => false;

  portFree(address: string, protocol: number, port: number, tuple: string): boolean {
    if (this.reserved(protocol, port)) return false;
    const owner = this.ports.get(extKey(address, protocol, port));
    return owner === undefined || owner === tuple;
  }

  /**
   * A free external port in [min, max]: `prefer` first when free, then random ports
   * (unpredictable, RFC 6056 §2), then a scan from a random start. Null when all are taken.
   */
  choosePort(address: string, protocol: number, tuple: string, min: number, max: number, prefer: number[]): number | null {
    for (const p of prefer) if (p >= min && p <= max && this.portFree(address, protocol, p, tuple)) return p;
    const span = max - min + 1;
    for (let i = 0; i < 32; i++) {
      const p = min + randomInt(span);
      if (this.portFree(address, protocol, p, tuple)) return p;
    }
    const start = randomInt(span);
    for (let i = 0; i < span; i++) {
      const p = min + ((start + i) % span);
      if (this.portFree(address, protocol, p, tuple)) return p;
    }
    return null;
  }

  add(m: MappingRecord): void {
    this.byKey.set(m.key, m);
    this.byId.set(m.id, m);
    this.perClient.set(m.client.address, this.clientCount(m.client.address) + 1);
    let s = this.tuples.get(m.tuple);
    if (!s) this.tuples.set(m.tuple, (s = new Set()));
    s.add(m);
    if (m.external.port) this.ports.set(extKey(m.external.address, m.protocol, m.external.port), m.tuple);
  }

  remove(m: MappingRecord): boolean {
    if (this.byId.get(m.id) !== m) return false;
    this.byKey.delete(m.key);
    this.byId.delete(m.id);
    const n = this.clientCount(m.client.address) - 1;
    if (n > 0) this.perClient.set(m.client.address, n);
    else this.perClient.delete(m.client.address);
    const s = this.tuples.get(m.tuple);
    s?.delete(m);
    if (s && s.size === 0) {
      this.tuples.delete(m.tuple);
      if (m.external.port) this.ports.delete(extKey(m.external.address, m.protocol, m.external.port));
    }
    return true;
  }

  /** Moves a mapping to another client (a refresh from another source keeps per-client counts right). */
  moveClient(m: MappingRecord, client: PcpAddress): void {
    if (m.client.address !== client.address) {
      const n = this.clientCount(m.client.address) - 1;
      if (n > 0) this.perClient.set(m.client.address, n);
      else this.perClient.delete(m.client.address);
      this.perClient.set(client.address, this.clientCount(client.address) + 1);
    }
    m.client = client;
  }

  /** Re-keys the external ports after the external address changed (§14.2). */
  readdress(m: MappingRecord, external: PcpAddress): void {
    if (m.external.port) this.ports.delete(extKey(m.external.address, m.protocol, m.external.port));
    m.external = external;
    if (external.port) this.ports.set(extKey(external.address, m.protocol, external.port), m.tuple);
  }
}
