import { BlockList, isIPv4, isIPv6 } from 'node:net';
import { networkInterfaces } from 'node:os';
import { parseIP } from '../wire/stun.js';

/**
 * Which peers a TURN client may reach (RFC 8656 §21.6 / §22: a TURN server should not
 * become a way into the networks behind it). Built on node's net.BlockList.
 *
 * Decision, first match wins:
 *  1. config.turn.peers.deny  -> refused
 *  2. config.turn.peers.allow -> permitted
 *  3. special-purpose ranges and the server's own addresses -> refused
 *  4. everything else -> permitted
 * IPv4-mapped (::ffff:a.b.c.d) and NAT64 (64:ff9b::/96) IPv6 forms are judged as the
 * IPv4 address they carry; 6to4 (2002::/16) by both the IPv6 address and the embedded
 * IPv4 address.
 */
export const DEFAULT_DENIED_V4: ReadonlyArray<[string, number]> = [
  ['0.0.0.0', 8], // "this network" (RFC 791/1122)
  ['10.0.0.0', 8], // RFC 1918
  ['100.64.0.0', 10], // CGNAT shared space (RFC 6598)
  ['127.0.0.0', 8], // loopback
  ['169.254.0.0', 16], // link-local, incl. 169.254.169.254 cloud metadata
  ['172.16.0.0', 12], // RFC 1918
  ['192.0.0.0', 24], // IETF protocol assignments (RFC 6890)
  ['192.168.0.0', 16], // RFC 1918
  ['198.18.0.0', 15], // benchmarking (RFC 2544)
  ['224.0.0.0', 4], // multicast
  ['240.0.0.0', 4], // reserved, incl. 255.255.255.255 broadcast
];

export const DEFAULT_DENIED_V6: ReadonlyArray<[string, number]> = [
  ['::', 96], // unspecified ::, loopback ::1 and deprecated IPv4-compatible addresses
  ['100::', 64], // discard-only (RFC 6666)
  ['fc00::', 7], // unique local (RFC 4193)
  ['fe80::', 10], // link-local
  ['fec0::', 10], // deprecated site-local
  ['ff00::', 8], // multicast
];

export interface PeerFilterOptions {
  allow: string[];
  deny: string[];
  /** The server's own addresses (relay and listeners); refused unless allowed. */
  selfAddresses?: string[];
}

function addCidr(bl: BlockList, cidr: string): void {
  const [addr, bits] = cidr.split('/') as [string, string | undefined];
  const type = isIPv6(addr) ? 'ipv6' : 'ipv4';
  if (bits === undefined) bl.addAddress(addr, type);
  else bl.addSubnet(addr, Number(bits), type);
}

/** The IPv4 address an IPv6 address stands for (mapped / NAT64), or null. */
function embeddedV4(ip: string): { v4: string; only: boolean } | null {
  const b = parseIP(ip);
  if (!b || b.length !== 16) return null;
  const v4 = `${b[12]}.${b[13]}.${b[14]}.${b[15]}`;
  const zero10 = b.subarray(0, 10).every((x) => x === 0);
  if (zero10 && b[10] === 0xff && b[11] === 0xff) return { v4, only: true }; // ::ffff:0:0/96
  if (b.readUInt32BE(0) === 0x0064ff9b && b.readUInt32BE(4) === 0 && b.readUInt32BE(8) === 0) return { v4, only: true }; // 64:ff9b::/96
  if (b.readUInt16BE(0) === 0x2002) return { v4: `${b[2]}.${b[3]}.${b[4]}.${b[5]}`, only: false }; // 6to4
  return null;
}

export class PeerFilter {
  private readonly deny = new BlockList();
  private readonly allow = new BlockList();
  private readonly special = new BlockList();

  constructor(opts: PeerFilterOptions) {
    for (const c of opts.deny) addCidr(this.deny, c);
    for (const c of opts.allow) addCidr(this.allow, c);
    for (const [a, n] of DEFAULT_DENIED_V4) this.special.addSubnet(a, n, 'ipv4');
    for (const [a, n] of DEFAULT_DENIED_V6) this.special.addSubnet(a, n, 'ipv6');
    for (const s of expandSelf(opts.selfAddresses ?? [])) addCidr(this.special, s);
  }

  /** True when a client may get a permission for this peer IP. */
  permits(ip: string): boolean {
    let candidates: Array<[string, 'ipv4' | 'ipv6']>;
    if (isIPv4(ip)) candidates = [[ip, 'ipv4']];
    else if (isIPv6(ip)) {
      const e = embeddedV4(ip);
      if (e && e.only) candidates = [[e.v4, 'ipv4']];
      else if (e)
        candidates = [
          [ip, 'ipv6'],
          [e.v4, 'ipv4'],
        ];
      else candidates = [[ip, 'ipv6']];
    } else return false;
    for (const [a, t] of candidates) if (this.deny.check(a, t)) return false;
    if (this.allow.check(candidates[0]![0], candidates[0]![1])) return true;
    for (const [a, t] of candidates) if (this.special.check(a, t)) return false;
    return true;
  }
}

/** Own addresses: the unspecified address stands for every local interface address. */
function expandSelf(addrs: string[]): string[] {
  const out = new Set<string>();
  for (const a of addrs) {
    if (a === '0.0.0.0' || a === '::') {
      for (const list of Object.values(networkInterfaces())) {
        for (const i of list ?? []) {
          if (a === '0.0.0.0' && i.family === 'IPv4') out.add(i.address);
          if (a === '::') out.add(i.address.split('%')[0]!);
        }
      }
    } else if (isIPv4(a) || isIPv6(a)) out.add(a);
  }
  return [...out];
}
