/**
 * Chooses the firewall backend of the PCP server (config pcp.firewall):
 *   nftables  kernel NAT + filter rules (nftables.ts), mapped flows queued to NFQUEUE;
 *   auto      the same (unavailable with its reason when this machine cannot program it);
 *   none      nothing can be mapped: install() always fails, so the server never answers
 *             SUCCESS for a mapping that does not exist (it answers NO_RESOURCES, or what the
 *             server decides for `available: false`).
 * The NFQUEUE reader (nfqueue.ts) is separate: the gateway opens it on the same queue number.
 */
import type { FirewallBackend, PcpMapping } from '../hooks.js';
import { NftablesBackend, type NftablesOptions } from './nftables.js';

export { NftablesBackend } from './nftables.js';
export { NfQueueReader, NfqueueUnavailable, loadNfqueue } from './nfqueue.js';
export type { NfPacket, NfVerdict, NfHandler, NfQueueOptions, NfQueueStats } from './nfqueue.js';

/** A backend that can program nothing (firewall: none, or nftables unusable and not wanted). */
export class UnavailableBackend implements FirewallBackend {
  readonly name = 'none';
  readonly available = false;
  constructor(readonly reason: string) {}
  install(m: PcpMapping): Promise<void> {
    return Promise.reject(new Error(`no firewall backend: ${this.reason} (mapping ${m.id} not created)`));
  }
  update(m: PcpMapping): Promise<void> {
    return this.install(m);
  }
  remove(): Promise<void> {
    return Promise.resolve();
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

export interface FirewallChoice extends NftablesOptions {
  kind: 'auto' | 'nftables' | 'none';
}

/** Never throws: an unusable choice gives a backend with `available: false` and the reason. */
export async function createFirewallBackend(o: FirewallChoice): Promise<FirewallBackend> {
  if (o.kind === 'none') return new UnavailableBackend('pcp.firewall is none');
  const { kind: _kind, ...rest } = o;
  return NftablesBackend.create(rest);
}
