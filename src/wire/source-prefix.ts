/**
 * The key a per-source limit counts under. An IPv4 source is its address. An IPv6 source
 * is its /64: the interface identifier is the low 64 bits (RFC 4291 §2.5.4) and a host
 * chooses it at will, minting new temporary addresses whenever it likes (RFC 8981 §3), and
 * a network routinely gives one host or subscriber a whole /64 (RFC 6177 §3, RFC 8273). A
 * limit per full IPv6 address would give one client 2^64 fresh buckets.
 */
import { parseIP } from './stun.js';

export function sourcePrefix(ip: string): string {
  if (ip.indexOf(':') < 0) return ip;
  const b = parseIP(ip);
  if (b === null || b.length !== 16) return ip;
  // ::ffff:a.b.c.d is an IPv4 source (RFC 4291 §2.5.5.2): its own address.
  if (b.readUInt32BE(0) === 0 && b.readUInt32BE(4) === 0 && b.readUInt32BE(8) === 0xffff) return `${b[12]}.${b[13]}.${b[14]}.${b[15]}`;
  const h = (i: number): string => b.readUInt16BE(i).toString(16);
  return `${h(0)}:${h(2)}:${h(4)}:${h(6)}::/64`;
}
