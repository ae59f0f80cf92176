/**
 * DONT-FRAGMENT (RFC 8656 §18.9): sending a relayed datagram with the DF bit set.
 *
 * Node's dgram cannot set DF, so this uses the fast path addon's sendDontFragment
 * (native/fastpath.c: IP_MTU_DISCOVER / IPV6_MTU_DISCOVER = *_PMTUDISC_DO for that one
 * sendto, then the socket's previous mode), loaded whether or not `turn.fast_path` is on.
 *
 * What the server does with the attribute follows from whether this is available:
 *   - available: an Allocate with DONT-FRAGMENT succeeds (RFC 8656 §7.2 step 4: it asks
 *     whether the server can set DF), and the datagram of a Send indication with
 *     DONT-FRAGMENT goes to the peer with DF set (§11.2, §14 "IPv4 Fragmentation fields",
 *     preferred behaviour: DF for that datagram; every other datagram keeps the socket's
 *     default, so DF is per Send, not for the allocation's life);
 *   - not available (addon not built, out of date, not Linux): DONT-FRAGMENT is an unknown
 *     comprehension-required attribute (§7.2 step 4, §11.2): an Allocate with it gets 420
 *     with UNKNOWN-ATTRIBUTES 0x001A (RFC 8489 §14.9), a Send indication with it is
 *     discarded (RFC 8489 §6.3.2).
 */
import type { DontFragmentSend } from './datapath.js';
import { dgramFd, loadFastPath } from './fastpath.js';

export type { DontFragmentSend };

export interface DontFragmentAddon {
  /** 0 or errno: one datagram with DF set (EMSGSIZE: larger than the path MTU, not sent). */
  sendDontFragment(fd: number, family: 4 | 6, data: Buffer, ip: string, port: number): number;
  /** 0 or errno: the socket's IP(V6)_MTU_DISCOVER to *_PMTUDISC_DO (on) or *_WANT. */
  setDontFragment(fd: number, family: 4 | 6, on: boolean): number;
  /** The socket's IP(V6)_MTU_DISCOVER value, or -errno. */
  dontFragmentMode(fd: number, family: 4 | 6): number;
}

/** The addon's DF functions, or null (not built, out of date, not Linux). */
export function loadDontFragmentAddon(): DontFragmentAddon | null {
  const a = loadFastPath() as Partial<DontFragmentAddon> | null;
  return a && typeof a.sendDontFragment === 'function' && typeof a.dontFragmentMode === 'function' ? (a as DontFragmentAddon) : null;
}

/** The sender the server uses, or null: DONT-FRAGMENT is then unknown to it. */
export function loadDontFragment(): DontFragmentSend | null {
  const a = loadDontFragmentAddon();
  if (!a) return null;
  return (socket, family, data, port, ip) => {
    const fd = dgramFd(socket);
    if (fd === null) return 9; // EBADF: not bound, or closed
    return a.sendDontFragment(fd, family, data, ip, port);
  };
}
