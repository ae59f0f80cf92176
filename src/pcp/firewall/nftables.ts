/**
 * FirewallBackend over nftables (the `nft` program) plus iptables-nft for NFQUEUE: PCP
 * mappings (RFC 6887 §11 MAP, §12 PEER) become kernel rules a network engineer can read in
 * `nft list ruleset`.
 *
 *   table inet gatehouse                       (created at start, deleted at close)
 *     chain prerouting  nat    prio dstnat     DNAT external:port -> internal:port (inbound)
 *     chain postrouting nat    prio srcnat     SNAT internal:port -> external:port (outbound)
 *     chain forward     filter prio mangle-10  policy drop: only the mappings' flows pass
 *   table ip mangle / ip6 mangle (iptables-nft)
 *     chain GATEHOUSE, jumped to first from FORWARD: the mappings' packets -> NFQUEUE --queue-num N
 *
 * Order of the hooks a mapped packet passes (why it works): prerouting DNAT (-100) rewrites
 * the destination first; the gatehouse forward chain (-160) accepts it only if it matches a
 * mapping (and its FILTERs); the iptables mangle FORWARD chain (-150) queues it to the
 * gateway, which therefore sees the INTERNAL address (inbound: destination internal:port;
 * outbound: source internal:port, before SNAT at postrouting +100). A packet the gatehouse
 * chain drops is never queued. The queue sits in mangle, before the admin's own filter
 * FORWARD rules (0): an ACCEPT there cannot skip the inspection, and a packet the gateway
 * accepts still meets them. The kernel here has no nft `queue` statement, hence iptables
 * `-j NFQUEUE`.
 *
 * Every rule carries the comment "gatehouse <mapping id> <role>"; remove() lists the table
 * (`nft -j`), deletes exactly the rules of that mapping by handle in one `nft -f -`
 * transaction, and deletes the iptables rules by their full specification.
 *
 * The rule text is produced by pure functions (mappingRules, iptablesRules, baseTableScript)
 * so that tests can check it without a kernel.
 */
import { spawn } from 'node:child_process';
import { isIP } from 'node:net';
import type { FirewallBackend, PcpAddress, PcpFilter, PcpMapping } from '../hooks.js';
import { loadNfqueue } from './nfqueue.js';

export const TABLE = 'gatehouse';
export const IPT_CHAIN = 'GATEHOUSE';
/** iptables table of the queue rules (see the top of the file for why mangle). */
export const IPT_TABLE = 'mangle';

export interface NftablesOptions {
  /** NFQUEUE for the mapped flows; null: no queue rules (kernel NAT + filter only). */
  queue: { num: number; failOpen: boolean } | null;
  /** Interfaces on the internal side whose NEW outbound traffic is forwarded (not queued); none: only mapped flows pass. */
  internalInterfaces?: readonly string[];
  /** Run every command inside this network namespace (`ip netns exec <ns>`), for tests. */
  netns?: string;
  /** Mappings installed at once (default 65536); install() beyond throws. */
  maxMappings?: number;
  /**
   * Delete the conntrack entries of a mapping's external address:port at install (an entry
   * made before the mapping, with no NAT binding, keeps the port unreachable until it times
   * out) and of both its sides at remove (the NAT binding ends with the mapping). Needs the
   * native binding (ctnetlink); default true, skipped without it (see `conntrackFlush`).
   */
  conntrack?: boolean;
  /** Program names or paths (default: nft, iptables, ip6tables on PATH). */
  commands?: Partial<Record<'nft' | 'iptables' | 'ip6tables', string>>;
  /** Command time-out, ms (default 10000). */
  timeoutMs?: number;
}

export type NftChain = 'prerouting' | 'postrouting' | 'forward';

export interface NftRule {
  chain: NftChain;
  /** The rule body as `nft add rule inet gatehouse <chain>` takes it, comment included. */
  rule: string;
  comment: string;
}

const ID_RE = /^[A-Za-z0-9._:-]{1,64}$/;
const IFNAME_RE = /^[A-Za-z0-9._@:-]{1,15}$/;

/** Protocols with 16-bit ports at the start of their header (th dport works). */
const PORTED = new Set([6, 17, 33, 132, 136]);

function fam(a: string): 'ip' | 'ip6' {
  const v = isIP(a);
  if (v === 4) return 'ip';
  if (v === 6) return 'ip6';
  throw new Error(`not an IP address: ${JSON.stringify(a)}`);
}

function port(p: number): number {
  if (!Number.isInteger(p) || p < 0 || p > 65535) throw new Error(`bad port ${p}`);
  return p;
}

/** nft notation: IPv6 in brackets where a port follows. */
function hostPort(a: PcpAddress, withPort: boolean): string {
  const host = fam(a.address) === 'ip6' ? `[${a.address}]` : a.address;
  return withPort ? `${host}:${port(a.port)}` : a.address;
}

/** The l4 selector for protocol p: "udp", "tcp" or "meta l4proto N"; null for protocol 0 (all). */
function l4(p: number): { proto: string; ports: (dir: 'sport' | 'dport', v: number) => string } | null {
  if (!Number.isInteger(p) || p < 0 || p > 255) throw new Error(`bad protocol ${p}`);
  if (p === 0) return null;
  // RFC 6887 §11.1: protocol is the IANA protocol number; 0 = all protocols (then port 0).
  if (p === 6 || p === 17) {
    const n = p === 6 ? 'tcp' : 'udp';
    return { proto: '', ports: (d, v) => `${n} ${d} ${v}` };
  }
  return { proto: `meta l4proto ${p}`, ports: PORTED.has(p) ? (d, v) => `th ${d} ${v}` : () => '' };
}

/** Prefix of a FILTER (RFC 6887 §13.3) in nft notation; IPv4 carried IPv4-mapped has length 96+n (§5). */
export function filterPrefix(f: PcpFilter): string {
  const v = fam(f.prefix);
  let len = f.prefixLength;
  if (v === 'ip' && len > 32) len -= 96;
  const max = v === 'ip' ? 32 : 128;
  if (!Number.isInteger(len) || len < 0 || len > max) throw new Error(`bad FILTER prefix length ${f.prefixLength}`);
  return len === max ? f.prefix : `${f.prefix}/${len}`;
}

function join(...parts: string[]): string {
  return parts.filter(Boolean).join(' ');
}

function check(m: PcpMapping): void {
  if (!ID_RE.test(m.id)) throw new Error(`bad mapping id ${JSON.stringify(m.id)}`);
  const fi = fam(m.internal.address);
  if (fam(m.external.address) !== fi) throw new Error('internal and external address families differ (NAT64 is not done)');
  if (m.remote && fam(m.remote.address) !== fi) throw new Error('remote peer address family differs from the internal one');
  for (const f of m.filters) if (fam(f.prefix) !== fi) throw new Error('FILTER prefix family differs from the internal one');
  if (m.protocol === 0 && (m.internal.port !== 0 || m.external.port !== 0)) throw new Error('protocol 0 needs port 0 (RFC 6887 §11.1)');
}

/**
 * The nft rules of one mapping (pure). NAT only where internal and external differ (an
 * IPv6 pinhole of a PCP-controlled firewall, RFC 6887 §11: external == internal, filter only).
 */
export function mappingRules(m: PcpMapping): NftRule[] {
  check(m);
  const f = fam(m.internal.address);
  const t = l4(m.protocol);
  const ported = t !== null && PORTED.has(m.protocol) && m.internal.port !== 0;
  const I = m.internal;
  const E = m.external;
  const R = m.remote;
  const rules: NftRule[] = [];
  const add = (chain: NftChain, role: string, body: string) => {
    const comment = `gatehouse ${m.id} ${role}`;
    rules.push({ chain, rule: `${body} comment "${comment}"`, comment });
  };
  const p = (d: 'sport' | 'dport', v: number) => (t && ported ? t.ports(d, port(v)) : '');
  const proto = t ? t.proto : '';
  // PEER (RFC 6887 §12): the mapping is for the one remote peer only, in both directions.
  const remoteSrc = R ? join(`${f} saddr ${R.address}`, R.port ? p('sport', R.port) : '') : '';
  const remoteDst = R ? join(`${f} daddr ${R.address}`, R.port ? p('dport', R.port) : '') : '';
  const nat = I.address !== E.address || I.port !== E.port;
  if (nat) {
    // Inbound: external:port -> internal:port (RFC 6887 §11.3 / §12.3: the mapping's external address and port).
    add('prerouting', 'dnat', join(proto, remoteSrc, `${f} daddr ${E.address}`, p('dport', E.port), `dnat ${f} to ${hostPort(I, ported)}`));
    // Outbound: internal:port leaves as external:port.
    add(
      'postrouting',
      'snat',
      join(proto, `${f} saddr ${I.address}`, p('sport', I.port), remoteDst, `snat ${f} to ${hostPort(E, ported)}`),
    );
  }
  const toI = join(proto, `${f} daddr ${I.address}`, p('dport', I.port));
  if (R) {
    add('forward', 'in', join(remoteSrc, toI, 'accept'));
  } else if (m.filters.length) {
    // FILTER (RFC 6887 §13.3): only the listed remote peers (prefix, port 0 = any port) pass inbound.
    m.filters.forEach((fl, i) => {
      const src = join(`${f} saddr ${filterPrefix(fl)}`, fl.port && ported ? p('sport', fl.port) : '');
      add('forward', `in${i}`, join(proto, src, `${f} daddr ${I.address}`, p('dport', I.port), 'accept'));
    });
  } else {
    add('forward', 'in', join(toI, 'accept'));
  }
  add('forward', 'out', join(proto, `${f} saddr ${I.address}`, p('sport', I.port), remoteDst, 'accept'));
  return rules;
}

/** iptables protocol argument and whether --sport/--dport are available for it. */
function iptProto(p: number): { args: string[]; ports: boolean } {
  if (p === 0) return { args: [], ports: false };
  const name = p === 6 ? 'tcp' : p === 17 ? 'udp' : p === 132 ? 'sctp' : p === 33 ? 'dccp' : String(p);
  return { args: ['-p', name], ports: name !== String(p) };
}

/**
 * The iptables rule specifications (after `-A GATEHOUSE`) sending one mapping's packets to
 * the NFQUEUE (pure). Both directions, matched on the internal side (the packet is seen
 * after DNAT and before SNAT). failOpen adds --queue-bypass (accept when nobody reads).
 */
export function iptablesRules(m: PcpMapping, queue: { num: number; failOpen: boolean }): string[][] {
  check(m);
  if (!Number.isInteger(queue.num) || queue.num < 0 || queue.num > 65535) throw new Error(`bad queue ${queue.num}`);
  const pr = iptProto(m.protocol);
  const ported = pr.ports && m.internal.port !== 0;
  const I = m.internal;
  const R = m.remote;
  const target = ['-j', 'NFQUEUE', '--queue-num', String(queue.num), ...(queue.failOpen ? ['--queue-bypass'] : [])];
  const inbound = [
    ...(R ? ['-s', R.address] : []),
    '-d',
    I.address,
    ...pr.args,
    ...(R && R.port && ported ? ['--sport', String(R.port)] : []),
    ...(ported ? ['--dport', String(I.port)] : []),
  ];
  const outbound = [
    '-s',
    I.address,
    ...(R ? ['-d', R.address] : []),
    ...pr.args,
    ...(ported ? ['--sport', String(I.port)] : []),
    ...(R && R.port && ported ? ['--dport', String(R.port)] : []),
  ];
  return [
    [...inbound, '-m', 'comment', '--comment', `gatehouse ${m.id} q-in`, ...target],
    [...outbound, '-m', 'comment', '--comment', `gatehouse ${m.id} q-out`, ...target],
  ];
}

/** `nft -f -` script adding one mapping's rules (one transaction). */
export function installScript(m: PcpMapping): string {
  return mappingRules(m)
    .map((r) => `add rule inet ${TABLE} ${r.chain} ${r.rule}\n`)
    .join('');
}

/**
 * The table created at start (pure). An existing `inet gatehouse` (a previous run: mappings
 * do not survive a restart, RFC 6887 §8.5 epoch) is replaced in the same transaction.
 */
export function baseTableScript(o: Pick<NftablesOptions, 'internalInterfaces'> = {}): string {
  const ifs = o.internalInterfaces ?? [];
  for (const i of ifs) if (!IFNAME_RE.test(i)) throw new Error(`bad interface name ${JSON.stringify(i)}`);
  const outbound = ifs.length
    ? `\t\tiifname { ${ifs.map((i) => `"${i}"`).join(', ')} } ct state new accept comment "gatehouse outbound"\n`
    : '';
  return (
    `add table inet ${TABLE}\n` +
    `delete table inet ${TABLE}\n` +
    `table inet ${TABLE} {\n` +
    `\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t}\n` +
    `\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t}\n` +
    `\tchain forward {\n` +
    `\t\ttype filter hook forward priority mangle - 10; policy drop;\n` +
    `\t\tct state invalid drop comment "gatehouse invalid"\n` +
    // Replies of connections whose first packet was let through (by a mapping rule or the
    // outbound rule) pass; the ORIGINAL direction of a flow always needs a live rule, so a
    // removed mapping's inbound packets stop at once even while conntrack remembers the flow.
    `\t\tct state established,related ct direction reply accept comment "gatehouse replies"\n` +
    outbound +
    `\t}\n` +
    `}\n`
  );
}

interface NftJsonRule {
  rule?: { family: string; table: string; chain: string; handle: number; comment?: string };
}

/** Handles of the rules of mapping `id` in `nft -j list table inet gatehouse` output (pure). */
export function handlesOf(json: string, id: string): { chain: string; handle: number }[] {
  const doc = JSON.parse(json) as { nftables?: NftJsonRule[] };
  const prefix = `gatehouse ${id} `;
  const out: { chain: string; handle: number }[] = [];
  for (const e of doc.nftables ?? []) {
    const r = e.rule;
    if (r && r.table === TABLE && r.family === 'inet' && r.comment?.startsWith(prefix)) out.push({ chain: r.chain, handle: r.handle });
  }
  return out;
}

export function deleteScript(handles: readonly { chain: string; handle: number }[]): string {
  return handles.map((h) => `delete rule inet ${TABLE} ${h.chain} handle ${h.handle}\n`).join('');
}

interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

interface Installed {
  nft: string;
  ipt: string[][];
  v6: boolean;
}

export class NftablesBackend implements FirewallBackend {
  readonly name = 'nftables';
  available = false;
  reason?: string;
  private readonly installed = new Map<string, Installed>();
  private chain: Promise<unknown> = Promise.resolve();
  private ip6 = false;

  private constructor(private readonly o: NftablesOptions) {}

  /**
   * Detects whether the firewall can be programmed here (root, `nft list tables` works,
   * iptables for the queue) and creates the table and the GATEHOUSE chains. Never throws:
   * an unusable machine gives `available: false` and the reason.
   */
  static async create(o: NftablesOptions): Promise<NftablesBackend> {
    const b = new NftablesBackend(o);
    try {
      await b.start();
      b.available = true;
    } catch (err) {
      b.available = false;
      b.reason = (err as Error).message;
    }
    return b;
  }

  private run(cmd: string, args: string[], input?: string): Promise<RunResult> {
    const bin = this.o.commands?.[cmd as 'nft' | 'iptables' | 'ip6tables'] ?? cmd;
    const argv = this.o.netns ? ['ip', 'netns', 'exec', this.o.netns, bin, ...args] : [bin, ...args];
    return new Promise((resolve) => {
      let child;
      try {
        child = spawn(argv[0]!, argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe'], timeout: this.o.timeoutMs ?? 10_000 });
      } catch (err) {
        resolve({ code: -1, stdout: '', stderr: (err as Error).message });
        return;
      }
      const out: Buffer[] = [];
      const errb: Buffer[] = [];
      let size = 0;
      const cap = (arr: Buffer[]) => (d: Buffer) => {
        // Bounded: a ruleset listing of 64 MiB is far beyond any sane table.
        if ((size += d.length) <= 64 << 20) arr.push(d);
      };
      child.stdout.on('data', cap(out));
      child.stderr.on('data', cap(errb));
      child.on('error', (err) => resolve({ code: -1, stdout: '', stderr: err.message }));
      child.on('close', (code) =>
        resolve({ code: code ?? -1, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(errb).toString().trim() }),
      );
      child.stdin.on('error', () => {});
      child.stdin.end(input ?? '');
    });
  }

  private async must(cmd: string, args: string[], input?: string): Promise<string> {
    const r = await this.run(cmd, args, input);
    if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr || `exit ${r.code}`}`);
    return r.stdout;
  }

  /** Serialises the operations of this backend (list-then-delete must not interleave). */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.chain.then(fn, fn);
    this.chain = p.catch(() => {});
    return p;
  }

  private async start(): Promise<void> {
    if (!this.o.netns && process.getuid?.() !== 0) throw new Error('not root: cannot program nftables (run as root or with CAP_NET_ADMIN)');
    const probe = await this.run('nft', ['list', 'tables']);
    if (probe.code !== 0) throw new Error(`nftables unusable (nft list tables: ${probe.stderr || `exit ${probe.code}`})`);
    await this.must('nft', ['-f', '-'], baseTableScript(this.o));
    if (this.o.queue) {
      try {
        await this.iptChain('iptables');
      } catch (err) {
        // Unusable without the queue rules: leave no half-made firewall behind (the table's
        // drop policy would cut forwarding with no mapping able to open it).
        await this.run('nft', ['delete', 'table', 'inet', TABLE]);
        throw new Error(`iptables (nf_tables backend, for -j NFQUEUE) unusable: ${(err as Error).message}`);
      }
      // IPv6 pinholes need ip6tables; without it IPv6 mappings are refused (install throws).
      this.ip6 = await this.iptChain('ip6tables').then(
        () => true,
        () => false,
      );
    }
  }

  private async iptChain(cmd: 'iptables' | 'ip6tables'): Promise<void> {
    const exists = await this.run(cmd, ['-w', '-t', IPT_TABLE, '-n', '-L', IPT_CHAIN]);
    if (exists.code === 0) await this.must(cmd, ['-w', '-t', IPT_TABLE, '-F', IPT_CHAIN]);
    else await this.must(cmd, ['-w', '-t', IPT_TABLE, '-N', IPT_CHAIN]);
    const jump = await this.run(cmd, ['-w', '-t', IPT_TABLE, '-C', 'FORWARD', '-j', IPT_CHAIN]);
    if (jump.code !== 0) await this.must(cmd, ['-w', '-t', IPT_TABLE, '-I', 'FORWARD', '1', '-j', IPT_CHAIN]);
  }

  private unavailable(): Error {
    return new Error(`firewall backend unavailable: ${this.reason ?? 'not started'}`);
  }

  install(m: PcpMapping): Promise<void> {
    return this.serial(async () => {
      if (!this.available) throw this.unavailable();
      if (this.installed.has(m.id)) return this.replace(m);
      if (this.installed.size >= (this.o.maxMappings ?? 65536)) throw new Error('firewall backend: too many mappings');
      const nft = installScript(m);
      const v6 = fam(m.internal.address) === 'ip6';
      const ipt = this.o.queue ? iptablesRules(m, this.o.queue) : [];
      if (v6 && ipt.length && !this.ip6) throw new Error('ip6tables unavailable: IPv6 mappings cannot be queued');
      // The queue rules first, then the accepting nft rules: a packet of the mapping can
      // never pass uninspected (before, the forward chain's drop policy stops it).
      const added: string[][] = [];
      try {
        for (const spec of ipt) {
          await this.must(v6 ? 'ip6tables' : 'iptables', ['-w', '-t', IPT_TABLE, '-A', IPT_CHAIN, ...spec]);
          added.push(spec);
        }
        await this.must('nft', ['-f', '-'], nft);
      } catch (err) {
        await this.undo(m.id, added, v6);
        throw err;
      }
      this.installed.set(m.id, { nft, ipt, v6 });
      await this.flushConntrack(m, false);
    });
  }

  update(m: PcpMapping): Promise<void> {
    return this.serial(async () => {
      if (!this.available) throw this.unavailable();
      return this.replace(m);
    });
  }

  /** Rules changed (filters, external port): old rules out, new in, in ONE nft transaction. */
  private async replace(m: PcpMapping): Promise<void> {
    const cur = this.installed.get(m.id);
    const nft = installScript(m);
    if (!cur) throw new Error(`mapping ${m.id} is not installed`);
    if (cur.nft === nft) return; // a lifetime change only: the kernel rules do not carry it
    const listing = await this.must('nft', ['-j', 'list', 'table', 'inet', TABLE]);
    await this.must('nft', ['-f', '-'], deleteScript(handlesOf(listing, m.id)) + nft);
    cur.nft = nft;
    await this.flushConntrack(m, false);
  }

  remove(m: PcpMapping): Promise<void> {
    return this.serial(async () => {
      const cur = this.installed.get(m.id);
      if (!cur || !this.available) return;
      // Order matters (fail closed): the accept rules go first, then the mapping's
      // conntrack entries (so no reply-direction packet rides `ct direction reply accept`),
      // and only then the queue rules: at no point does a packet of the flow pass unqueued.
      await this.undoNft(m.id);
      await this.flushConntrack(m, true);
      await this.undoIpt(cur.ipt, cur.v6);
      this.installed.delete(m.id);
    });
  }

  /** Whether conntrack entries are flushed (the native binding is there and not disabled). */
  get conntrackFlush(): boolean {
    return this.o.conntrack !== false && loadNfqueue().binding !== null;
  }

  /** Conntrack entries deleted so far (install and remove). */
  conntrackDeleted = 0;

  private async flushConntrack(m: PcpMapping, both: boolean): Promise<void> {
    const b = this.o.conntrack === false ? null : loadNfqueue().binding;
    if (!b) return;
    const ns = this.o.netns ? `/var/run/netns/${this.o.netns}` : null;
    const v = fam(m.internal.address) === 'ip6' ? 6 : 4;
    try {
      // Entries whose original direction went to the external address:port (inbound).
      this.conntrackDeleted += await b.conntrackDelete(ns, v, m.protocol, null, 0, m.external.address, m.external.port);
      // ... and, at the end, those the internal side started (outbound, SNAT'd).
      if (both) this.conntrackDeleted += await b.conntrackDelete(ns, v, m.protocol, m.internal.address, m.internal.port, null, 0);
    } catch {
      // Best effort: the rules are already right; a stale entry only times out later.
    }
  }

  private async undo(id: string, ipt: string[][], v6: boolean): Promise<void> {
    await this.undoNft(id);
    await this.undoIpt(ipt, v6);
  }

  private async undoNft(id: string): Promise<void> {
    const listing = await this.must('nft', ['-j', 'list', 'table', 'inet', TABLE]);
    const handles = handlesOf(listing, id);
    if (handles.length) await this.must('nft', ['-f', '-'], deleteScript(handles));
  }

  private async undoIpt(ipt: string[][], v6: boolean): Promise<void> {
    for (const spec of ipt) await this.run(v6 ? 'ip6tables' : 'iptables', ['-w', '-t', IPT_TABLE, '-D', IPT_CHAIN, ...spec]);
  }

  /** Deletes the table and the GATEHOUSE chains (every mapping ends with the server). */
  close(): Promise<void> {
    return this.serial(async () => {
      if (!this.available) return;
      this.available = false;
      this.reason = 'closed';
      this.installed.clear();
      await this.run('nft', ['delete', 'table', 'inet', TABLE]);
      if (this.o.queue) {
        for (const cmd of this.ip6 ? ['iptables', 'ip6tables'] : ['iptables']) {
          await this.run(cmd, ['-w', '-t', IPT_TABLE, '-D', 'FORWARD', '-j', IPT_CHAIN]);
          await this.run(cmd, ['-w', '-t', IPT_TABLE, '-F', IPT_CHAIN]);
          await this.run(cmd, ['-w', '-t', IPT_TABLE, '-X', IPT_CHAIN]);
        }
      }
    });
  }
}
