import { BlockList, isIPv4, isIPv6 } from 'node:net';
import { networkInterfaces, type NetworkInterfaceInfo } from 'node:os';
import { performance } from 'node:perf_hooks';
import { formatIPv6, parseIP } from '../wire/stun.js';

/**
 * Which peers a TURN client may reach (RFC 8656 §21.6 / §22: a TURN server should not
 * become a way into the networks behind it). Built on node's net.BlockList (never the
 * `ip` package).
 *
 * Every address is first normalised: an IPv4-mapped IPv6 address (::ffff:a.b.c.d,
 * RFC 4291 §2.5.5.2) is that IPv4 address and is judged as nothing else, whichever
 * transport or attribute family it arrived in. Then one address is judged, first match
 * wins:
 *  1. config.turn.peers.deny  -> refused
 *  2. config.turn.peers.allow -> permitted
 *  3. special-purpose ranges and this host's own addresses -> refused
 *  4. everything else -> permitted
 * An IPv6 address that carries an IPv4 address (IPv4-compatible, SIIT, NAT64, 6to4,
 * Teredo, ISATAP; see embeddedV4) is permitted only when the IPv6 address and every
 * IPv4 address it carries are each permitted: deny beats allow on either, and allowing
 * an IPv6 prefix (say 2000::/3) never lets a client reach 10.0.0.1 through a translator
 * or tunnel; the embedded IPv4 address must be allowed itself.
 */

/**
 * IPv4 ranges refused unless allowed: the IANA IPv4 Special-Purpose Address Registry
 * (RFC 6890) entries that are not globally reachable, plus multicast. Globally reachable
 * special-purpose blocks (AS112 192.31.196.0/24 and 192.175.48.0/24, AMT 192.52.193.0/24)
 * are ordinary peers.
 */
export const DEFAULT_DENIED_V4: ReadonlyArray<[string, number]> = [
  ['0.0.0.0', 8], // "this network" (RFC 791 §3.2, RFC 1122 §3.2.1.3)
  ['10.0.0.0', 8], // private (RFC 1918 §3)
  ['100.64.0.0', 10], // CGNAT shared space (RFC 6598)
  ['127.0.0.0', 8], // loopback (RFC 1122 §3.2.1.3)
  ['169.254.0.0', 16], // link-local (RFC 3927), incl. 169.254.169.254 cloud metadata
  ['172.16.0.0', 12], // private (RFC 1918 §3)
  ['192.0.0.0', 24], // IETF protocol assignments (RFC 6890 §2.1), incl. DS-Lite 192.0.0.0/29
  ['192.0.2.0', 24], // documentation TEST-NET-1 (RFC 5737 §3)
  ['192.88.99.0', 24], // deprecated 6to4 relay anycast (RFC 7526)
  ['192.168.0.0', 16], // private (RFC 1918 §3)
  ['198.18.0.0', 15], // benchmarking (RFC 2544)
  ['198.51.100.0', 24], // documentation TEST-NET-2 (RFC 5737 §3)
  ['203.0.113.0', 24], // documentation TEST-NET-3 (RFC 5737 §3)
  ['224.0.0.0', 4], // multicast (RFC 5771)
  ['240.0.0.0', 4], // reserved (RFC 1112 §4), incl. 255.255.255.255 limited broadcast (RFC 919 §7)
];

/**
 * IPv6 ranges refused unless allowed: the IANA IPv6 Special-Purpose Address Registry
 * (RFC 6890) entries that are not globally reachable, the transition prefixes that
 * tunnel or translate to an IPv4 address, and multicast.
 *
 * 6to4 (2002::/16) and Teredo (2001::/32) are refused outright, besides being judged by
 * the IPv4 addresses they carry: both reach their destination through third-party
 * relays chosen by anycast or routing (RFC 7526 deprecates the 6to4 relay anycast prefix
 * because that made 6to4 unreliable and unsuitable for the Internet; public Teredo
 * service is gone), so an inspection gateway cannot know where the traffic leaves and
 * the IANA registry lists neither as globally reachable. WebRTC endpoints have native
 * addresses or relay candidates; an operator who needs either allows the prefix, and the
 * embedded IPv4 addresses are still checked.
 */
export const DEFAULT_DENIED_V6: ReadonlyArray<[string, number]> = [
  ['::', 128], // unspecified (RFC 4291 §2.5.2)
  ['::1', 128], // loopback (RFC 4291 §2.5.3)
  ['::', 96], // deprecated IPv4-compatible addresses (RFC 4291 §2.5.5.1)
  ['::ffff:0:0:0', 96], // SIIT "IPv4-translated" ::ffff:0:a.b.c.d (RFC 2765 §2.1; RFC 6052 / RFC 7915 replace it)
  ['64:ff9b:1::', 48], // local-use IPv4/IPv6 translation (RFC 8215)
  ['100::', 64], // discard-only (RFC 6666)
  ['2001::', 32], // Teredo (RFC 4380 §4); see above
  ['2001:2::', 48], // benchmarking (RFC 5180)
  ['2001:10::', 28], // deprecated ORCHID (RFC 4843)
  ['2001:db8::', 32], // documentation (RFC 3849)
  ['2002::', 16], // 6to4 (RFC 3056 §2); see above
  ['3fff::', 20], // documentation (RFC 9637)
  ['5f00::', 16], // SRv6 SIDs (RFC 9602)
  ['fc00::', 7], // unique local (RFC 4193)
  ['fe80::', 10], // link-local (RFC 4291 §2.5.6)
  ['fec0::', 10], // deprecated site-local (RFC 3879)
  ['ff00::', 8], // multicast (RFC 4291 §2.7)
];

/** Reads this host's interface addresses (os.networkInterfaces by default). */
export type InterfaceReader = () => NodeJS.Dict<NetworkInterfaceInfo[]>;

export interface PeerFilterOptions {
  allow: string[];
  deny: string[];
  /**
   * The server's own addresses (relay and listeners); refused unless allowed. Every
   * address of this host's interfaces is refused too (it reaches this host whatever the
   * relay is bound to), re-read as interfaces change.
   */
  selfAddresses?: string[];
  /** Milliseconds, monotonic; default performance.now. */
  now?: () => number;
  /** Default os.networkInterfaces. */
  interfaces?: InterfaceReader;
  /** How often, at most, the interface addresses are re-read (ms; default 5000). */
  refreshMs?: number;
}

const MAPPED_PREFIX = /^::ffff:(?:0{1,4}:)?/i;

/**
 * Adds an address or CIDR; an IPv4-mapped one (::ffff:a.b.c.d, prefix >= 96) is added
 * as the IPv4 address or subnet it stands for, so it matches the normalised form.
 */
function addCidr(bl: BlockList, cidr: string): void {
  const [rawAddr, bits] = cidr.split('/') as [string, string | undefined];
  const addr = rawAddr.split('%')[0]!;
  if (isIPv6(addr)) {
    const b = parseIP(addr);
    if (b && isMapped(b) && (bits === undefined || Number(bits) >= 96)) {
      const v4 = v4At(b, 12);
      if (bits === undefined) bl.addAddress(v4, 'ipv4');
      else bl.addSubnet(v4, Number(bits) - 96, 'ipv4');
      return;
    }
    if (bits === undefined) bl.addAddress(addr, 'ipv6');
    else bl.addSubnet(addr, Number(bits), 'ipv6');
    return;
  }
  if (bits === undefined) bl.addAddress(addr, 'ipv4');
  else bl.addSubnet(addr, Number(bits), 'ipv4');
}

function v4At(b: Buffer, off: number): string {
  return `${b[off]}.${b[off + 1]}.${b[off + 2]}.${b[off + 3]}`;
}

/** ::ffff:0:0/96, IPv4-mapped (RFC 4291 §2.5.5.2). */
function isMapped(b: Buffer): boolean {
  for (let i = 0; i < 10; i++) if (b[i] !== 0) return false;
  return b[10] === 0xff && b[11] === 0xff;
}

/**
 * The IPv4 addresses an IPv6 address carries, each judged like any IPv4 peer:
 *  - IPv4-compatible ::a.b.c.d (RFC 4291 §2.5.5.1): the last 32 bits;
 *  - SIIT IPv4-translated ::ffff:0:a.b.c.d (RFC 2765 §2.1): the last 32 bits;
 *  - NAT64 well-known prefix 64:ff9b::/96 (RFC 6052 §2.1, §2.2): the last 32 bits (the
 *    prefix must not carry non-global IPv4 addresses, RFC 6052 §3.1);
 *  - 6to4 2002:V4ADDR::/48 (RFC 3056 §2): bits 16-47;
 *  - Teredo 2001:0:SSSS:SSSS:flags:port:CCCC:CCCC (RFC 4380 §4): the server's IPv4 in
 *    bits 32-63 and the client's mapped IPv4, stored with every bit inverted, in 96-127;
 *  - ISATAP interface identifiers ::0:5efe:a.b.c.d / ::200:5efe:a.b.c.d under any
 *    prefix (RFC 5214 §6.1): the last 32 bits.
 * The local-use prefix 64:ff9b:1::/48 (RFC 8215) is refused outright: where it carries
 * the IPv4 address depends on a prefix length only its network knows (RFC 6052 §2.2).
 */
export function embeddedV4(b: Buffer): string[] {
  const w0 = b.readUInt32BE(0);
  const w1 = b.readUInt32BE(4);
  const w2 = b.readUInt32BE(8);
  if (w0 === 0 && w1 === 0 && (w2 === 0 || w2 === 0xffff0000)) return [v4At(b, 12)]; // compatible, SIIT
  if (w0 === 0x0064ff9b && w1 === 0 && w2 === 0) return [v4At(b, 12)]; // NAT64 WKP
  if (b.readUInt16BE(0) === 0x2002) return [v4At(b, 2)]; // 6to4
  if (w0 === 0x20010000) {
    const c = ~b.readUInt32BE(12) >>> 0;
    return [v4At(b, 4), `${c >>> 24}.${(c >>> 16) & 255}.${(c >>> 8) & 255}.${c & 255}`]; // Teredo
  }
  if (w2 === 0x00005efe || w2 === 0x02005efe) return [v4At(b, 12)]; // ISATAP
  return [];
}

export class PeerFilter {
  private readonly deny = new BlockList();
  private readonly allow = new BlockList();
  private readonly special = new BlockList();
  private readonly staticSelf: string[];
  private self = new BlockList();
  private selfSignature: string | null = null;
  private nextRefresh = 0;
  private readonly now: () => number;
  private readonly interfaces: InterfaceReader;
  private readonly refreshMs: number;

  constructor(opts: PeerFilterOptions) {
    for (const c of opts.deny) addCidr(this.deny, c);
    for (const c of opts.allow) addCidr(this.allow, c);
    for (const [a, n] of DEFAULT_DENIED_V4) this.special.addSubnet(a, n, 'ipv4');
    for (const [a, n] of DEFAULT_DENIED_V6) this.special.addSubnet(a, n, 'ipv6');
    // The unspecified address stands for every interface address: those are always in.
    this.staticSelf = (opts.selfAddresses ?? []).filter((a) => a !== '0.0.0.0' && a !== '::' && (isIPv4(a) || isIPv6(a)));
    this.now = opts.now ?? (() => performance.now());
    this.interfaces = opts.interfaces ?? networkInterfaces;
    this.refreshMs = opts.refreshMs ?? 5000;
    this.refresh(this.now());
  }

  /** True when a client may get a permission for this peer IP. */
  permits(ip: string): boolean {
    // Hot path: one clock read and a compare; the interfaces are re-read at most every
    // refreshMs, and the self list is rebuilt only when they changed.
    const t = this.now();
    if (t >= this.nextRefresh) this.refresh(t);
    const b = parseIP(ip);
    if (!b) return false;
    if (b.length === 4) return this.judge(ip, 'ipv4');
    if (isMapped(b)) return this.judge(v4At(b, 12), 'ipv4');
    if (!this.judge(formatIPv6(b), 'ipv6')) return false;
    for (const v4 of embeddedV4(b)) if (!this.judge(v4, 'ipv4')) return false;
    return true;
  }

  private judge(addr: string, family: 'ipv4' | 'ipv6'): boolean {
    if (this.deny.check(addr, family)) return false;
    if (this.allow.check(addr, family)) return true;
    if (this.special.check(addr, family)) return false;
    return !this.self.check(addr, family);
  }

  /** Re-reads the interface addresses; rebuilds the self list only when they changed. */
  private refresh(t: number): void {
    this.nextRefresh = t + this.refreshMs;
    let found: string[];
    try {
      found = [];
      for (const list of Object.values(this.interfaces())) {
        for (const i of list ?? []) found.push(i.address.split('%')[0]!);
      }
    } catch {
      return; // keep the last known addresses
    }
    found.sort();
    const signature = found.join(',');
    if (signature === this.selfSignature) return;
    this.selfSignature = signature;
    const bl = new BlockList();
    for (const a of [...this.staticSelf, ...found]) if (isIPv4(a) || isIPv6(a)) addCidr(bl, a);
    this.self = bl;
  }
}
