// Network namespaces for end-to-end tests on a REAL kernel (we run as root; `ip netns`,
// nftables and iptables work inside namespaces). Every namespace, veth pair and process made
// here is removed in t.teardown, also when the test fails (and, as a last resort, on process
// exit). Names are unique per process and call, so parallel test files never collide.
//
//   const lab = new NetnsLab(t);                 // registers the teardown
//   const lan = lab.ns('lan'), gw = lab.ns('gw');
//   lab.link(lan, 'eth0', '10.61.1.2/24', gw, 'lan0', '10.61.1.1/24');
//   lab.route(lan, 'default', '10.61.1.1');
//   lab.forwarding(gw);
//   lab.sh(gw, 'nft', ['list', 'ruleset']);      // sync, throws with stderr on failure
//   const p = lab.spawn(gw, process.execPath, ['--import', 'tsx', 'child.ts']); // killed at teardown
//   const a = await lab.udpAgent(lan, '10.61.1.2', 5000); // a UDP socket inside the namespace
//
// Or the three-namespace firewall layout in one call (lan | gw | wan), addresses in
// THREE_NS below:
//
//   const net = threeNamespaces(t);              // net.lan, net.gw, net.wan: namespace names
//
//   lan 10.61.1.2/24 (eth0) --veth-- 10.61.1.1/24 (lan0) gw (wan0) 203.0.113.1/24 --veth-- (eth0) 203.0.113.2/24 wan
//                                                                                       + 203.0.113.3/24 (a second peer)
//   lan: default via 10.61.1.1; wan: no route to 10.61.1.0/24 (it only reaches the gateway's
//   external address, as on the Internet); gw: net.ipv4.ip_forward=1, IPv6 forwarding too.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';

/** The part of a tap Test used here. */
interface TapLike {
  teardown(fn: () => unknown): void;
}

let counter = 0;
const live = new Set<NetnsLab>();
process.on('exit', () => {
  for (const l of live) l.destroySync();
});

export interface ShResult {
  status: number;
  stdout: string;
  stderr: string;
}

/** A UDP socket bound inside a namespace (a small node child). */
export interface UdpAgent {
  /** Datagrams received so far: payload as UTF-8 text, the sender as seen by the socket. */
  readonly received: { data: string; from: string; port: number; at: number }[];
  send(to: string, port: number, data: string): void;
  /** Resolves with the first datagram (received from now on or earlier) whose data equals `data`, or null after ms. */
  waitFor(data: string, ms: number): Promise<{ data: string; from: string; port: number; at: number } | null>;
  close(): void;
}

export class NetnsLab {
  private readonly spaces: string[] = [];
  private readonly procs = new Set<ChildProcess>();
  private readonly prefix: string;

  constructor(t: TapLike, tag = 'gh') {
    this.prefix = `${tag}${process.pid % 100000}x${++counter}`;
    live.add(this);
    t.teardown(() => this.destroy());
  }

  /** Creates a namespace named <prefix>-<role> with lo up; returns its name. */
  ns(role: string): string {
    const name = `${this.prefix}-${role}`;
    run('ip', ['netns', 'add', name]);
    this.spaces.push(name);
    this.sh(name, 'ip', ['link', 'set', 'lo', 'up']);
    return name;
  }

  /** `ip netns exec ns cmd args` synchronously; throws (with stderr) unless it exits 0. */
  sh(ns: string, cmd: string, args: string[], input?: string): string {
    return run('ip', ['netns', 'exec', ns, cmd, ...args], input).stdout;
  }

  /** Like sh() but returns the status instead of throwing. */
  try(ns: string, cmd: string, args: string[]): ShResult {
    const r = spawnSync('ip', ['netns', 'exec', ns, cmd, ...args], { encoding: 'utf8' });
    return { status: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
  }

  /** A veth pair: ifA (addrA, CIDR) in nsA, ifB (addrB) in nsB, both up. Addresses may be null. */
  link(nsA: string, ifA: string, addrA: string | null, nsB: string, ifB: string, addrB: string | null): void {
    run('ip', ['link', 'add', ifA, 'netns', nsA, 'type', 'veth', 'peer', 'name', ifB, 'netns', nsB]);
    for (const [ns, ifn, addr] of [
      [nsA, ifA, addrA],
      [nsB, ifB, addrB],
    ] as const) {
      if (addr) this.addr(ns, ifn, addr);
      this.sh(ns, 'ip', ['link', 'set', ifn, 'up']);
    }
  }

  /** Adds an address (CIDR) to an interface; IPv6 without duplicate address detection. */
  addr(ns: string, ifn: string, cidr: string): void {
    this.sh(ns, 'ip', ['addr', 'add', cidr, 'dev', ifn, ...(cidr.includes(':') ? ['nodad'] : [])]);
  }

  route(ns: string, dest: string, via: string): void {
    this.sh(ns, 'ip', [...(via.includes(':') ? ['-6'] : []), 'route', 'add', dest, 'via', via]);
  }

  /** IPv4 and IPv6 forwarding on in the namespace. */
  forwarding(ns: string): void {
    this.sh(ns, 'sysctl', ['-q', '-w', 'net.ipv4.ip_forward=1']);
    this.sh(ns, 'sysctl', ['-q', '-w', 'net.ipv6.conf.all.forwarding=1']);
  }

  /** A process inside the namespace, killed (SIGKILL) at teardown if still running. */
  spawn(ns: string, cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv } = {}): ChildProcess {
    const p = spawn('ip', ['netns', 'exec', ns, cmd, ...args], { stdio: ['pipe', 'pipe', 'pipe'], env: opts.env ?? process.env });
    this.procs.add(p);
    p.on('exit', () => this.procs.delete(p));
    return p;
  }

  /** A UDP socket bound to addr:port inside ns; resolves once it is bound. */
  async udpAgent(ns: string, addr: string, port: number): Promise<UdpAgent> {
    const code = `
      const s = require('node:dgram').createSocket(${JSON.stringify(addr.includes(':') ? 'udp6' : 'udp4')});
      s.on('message', (m, r) => process.stdout.write(JSON.stringify({ data: m.toString(), from: r.address, port: r.port }) + '\\n'));
      s.on('error', (e) => { process.stderr.write(String(e)); process.exit(1); });
      s.bind(${port}, ${JSON.stringify(addr)}, () => process.stdout.write('{"ready":true}\\n'));
      require('node:readline').createInterface({ input: process.stdin }).on('line', (l) => {
        const c = JSON.parse(l); s.send(Buffer.from(c.data), c.port, c.to);
      }).on('close', () => process.exit(0));`;
    const p = this.spawn(ns, process.execPath, ['-e', code]);
    const received: UdpAgent['received'] = [];
    const waiters = new Set<() => void>();
    let ready!: () => void;
    let failed!: (e: Error) => void;
    const isReady = new Promise<void>((res, rej) => ((ready = res), (failed = rej)));
    let err = '';
    p.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    p.on('exit', (c) => failed(new Error(`udp agent in ${ns} exited ${c}: ${err}`)));
    createInterface({ input: p.stdout! }).on('line', (l) => {
      const m = JSON.parse(l) as { ready?: boolean; data: string; from: string; port: number };
      if (m.ready) return ready();
      received.push({ data: m.data, from: m.from, port: m.port, at: Date.now() });
      for (const w of waiters) w();
    });
    await isReady;
    return {
      received,
      send: (to, port, data) => p.stdin!.write(JSON.stringify({ to, port, data }) + '\n'),
      waitFor: (data, ms) =>
        new Promise((resolve) => {
          const find = () => received.find((r) => r.data === data);
          const hit = find();
          if (hit) return resolve(hit);
          const w = () => {
            const h = find();
            if (h) done(h);
          };
          const timer = setTimeout(() => done(null), ms);
          const done = (v: ReturnType<typeof find> | null) => {
            clearTimeout(timer);
            waiters.delete(w);
            resolve(v ?? null);
          };
          waiters.add(w);
        }),
      close: () => p.kill('SIGKILL'),
    };
  }

  /** Kills the processes, deletes the namespaces (their veths go with them). Idempotent. */
  async destroy(): Promise<void> {
    const exits = [...this.procs].map(
      (p) => new Promise<void>((r) => (p.exitCode !== null ? r() : (p.once('exit', () => r()), p.kill('SIGKILL')))),
    );
    await Promise.race([Promise.all(exits), new Promise((r) => setTimeout(r, 2000))]);
    this.destroySync();
  }

  destroySync(): void {
    for (const p of this.procs) p.kill('SIGKILL');
    this.procs.clear();
    while (this.spaces.length) spawnSync('ip', ['netns', 'del', this.spaces.pop()!], { stdio: 'ignore' });
    live.delete(this);
  }
}

function run(cmd: string, args: string[], input?: string): ShResult {
  const r = spawnSync(cmd, args, { encoding: 'utf8', input });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${(r.stderr || r.error?.message || `exit ${r.status}`).trim()}`);
  return { status: 0, stdout: r.stdout, stderr: r.stderr };
}

/** The addresses of threeNamespaces(). */
export const THREE_NS = {
  lanHost: '10.61.1.2',
  gwLan: '10.61.1.1',
  gwWan: '203.0.113.1',
  wanPeer: '203.0.113.2',
  wanPeer2: '203.0.113.3',
  lanHost6: 'fd61:1::2',
  gwLan6: 'fd61:1::1',
  gwWan6: 'fd61:2::1',
  wanPeer6: 'fd61:2::2',
  /** Interface names: in gw, lan0 faces lan and wan0 faces wan; lan and wan use eth0. */
  gwLanIf: 'lan0',
  gwWanIf: 'wan0',
} as const;

export interface ThreeNs {
  lab: NetnsLab;
  lan: string;
  gw: string;
  wan: string;
}

/** lan | gw | wan with veth links, addresses (IPv4 and IPv6), routes and forwarding in gw (see the top of this file). */
export function threeNamespaces(t: TapLike, tag = 'gh'): ThreeNs {
  const lab = new NetnsLab(t, tag);
  const a = THREE_NS;
  const lan = lab.ns('lan');
  const gw = lab.ns('gw');
  const wan = lab.ns('wan');
  lab.link(lan, 'eth0', `${a.lanHost}/24`, gw, a.gwLanIf, `${a.gwLan}/24`);
  lab.link(gw, a.gwWanIf, `${a.gwWan}/24`, wan, 'eth0', `${a.wanPeer}/24`);
  lab.addr(wan, 'eth0', `${a.wanPeer2}/24`);
  lab.addr(lan, 'eth0', `${a.lanHost6}/64`);
  lab.addr(gw, a.gwLanIf, `${a.gwLan6}/64`);
  lab.addr(gw, a.gwWanIf, `${a.gwWan6}/64`);
  lab.addr(wan, 'eth0', `${a.wanPeer6}/64`);
  lab.route(lan, 'default', a.gwLan);
  lab.route(lan, 'default', a.gwLan6);
  // wan reaches lan's IPv6 prefix through gw (an IPv6 pinhole is routed, not translated),
  // but has no IPv4 route to 10.61.1.0/24 (NAT44: only the external address is reachable).
  lab.route(wan, 'fd61:1::/64', a.gwWan6);
  lab.forwarding(gw);
  return { lab, lan, gw, wan };
}
