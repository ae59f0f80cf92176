/**
 * Test helpers for the TURN server: an in-process server on 127.0.0.1 port 0 with a
 * ManualClock, and a small STUN/TURN client over real UDP (or TCP) sockets.
 */
import { createSocket, type Socket } from 'node:dgram';
import { connect, type Socket as NetSocket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { defaultConfig, type GatehouseConfig } from '../../../src/config/config.js';
import { ManualClock } from '../../../src/util/clock.js';
import { MemoryEventSink } from '../../../src/events/eve.js';
import { TurnServer, type TurnServerOptions, type UserRecord } from '../../../src/turn/server.js';
import {
  Attr,
  Class,
  StunWriter,
  decodeStun,
  getString,
  longTermKey,
  messageType,
  encodePasswordAlgorithms,
  type StunMessage,
} from '../../../src/wire/stun.js';
import { StreamFramer } from '../../../src/wire/channeldata.js';
import { loadFastPath, type FastPathAddon } from '../../../src/turn/fastpath.js';
import type { Allocation, Channel, Permission, UdpListener } from '../../../src/turn/state.js';

export const USERS: UserRecord[] = [
  { name: 'alice', password: 'secret', groups: ['trading'] },
  { name: 'bob', password: 'hunter2', groups: [] },
];

export function testConfig(mut?: (c: GatehouseConfig) => void): GatehouseConfig {
  const c = defaultConfig();
  c.turn.listen = ['udp://127.0.0.1:0', 'tcp://127.0.0.1:0'];
  c.turn.relay_address = '127.0.0.1';
  c.turn.relay_ports = [40000, 44999];
  c.turn.peers.allow = ['127.0.0.0/8'];
  c.data_dir = '/nonexistent';
  mut?.(c);
  return c;
}

export interface Harness {
  server: TurnServer;
  clock: ManualClock;
  events: MemoryEventSink;
  udpPort: number;
  tcpPort: number;
  close(): Promise<void>;
}

export async function startServer(mut?: (c: GatehouseConfig) => void, extra: Partial<TurnServerOptions> = {}): Promise<Harness> {
  const clock = new ManualClock();
  const events = new MemoryEventSink();
  const server = new TurnServer({
    config: testConfig(mut),
    users: { lookup: (n) => USERS.find((u) => u.name === n) },
    clock,
    events,
    ...extra,
  });
  await server.start();
  const udp = server.addresses().find((a) => a.proto === 'udp');
  const tcp = server.addresses().find((a) => a.proto === 'tcp');
  return { server, clock, events, udpPort: udp?.port ?? 0, tcpPort: tcp?.port ?? 0, close: () => server.stop() };
}

type Build = (w: StunWriter) => void;

export interface ReqOpts {
  tid?: Buffer;
  fingerprint?: boolean;
  /** Use long-term credentials (default true for TURN methods via authed()). */
  sha256?: boolean;
  username?: string;
  password?: string;
  nonceOverride?: string;
  passwordAlgorithms?: boolean;
}

/** A STUN/TURN client on a UDP socket (or a TCP connection). */
export class Client {
  nonce: string | undefined;
  realm = 'gatehouse.local';
  username = 'alice';
  password = 'secret';
  private waiters: Array<{ pred: (b: Buffer) => boolean; resolve: (b: Buffer) => void }> = [];
  readonly inbox: Buffer[] = [];
  private framer = new StreamFramer(true);

  private constructor(
    readonly udp: Socket | null,
    readonly tcp: NetSocket | null,
    readonly serverPort: number,
    /** The server's (and this client's) address: 127.0.0.1, or ::1 for an IPv6 client. */
    readonly host = '127.0.0.1',
  ) {}

  static async udp(serverPort: number, host = '127.0.0.1'): Promise<Client> {
    const s = createSocket(host.includes(':') ? 'udp6' : 'udp4');
    await new Promise<void>((r) => s.bind(0, host, () => r()));
    const c = new Client(s, null, serverPort, host);
    s.on('message', (m) => c.deliver(m));
    return c;
  }

  static async tcp(serverPort: number): Promise<Client> {
    const s = connect(serverPort, '127.0.0.1');
    await new Promise<void>((r, j) => {
      s.once('connect', () => r());
      s.once('error', j);
    });
    const c = new Client(null, s, serverPort);
    s.on('data', (chunk) => c.framer.push(chunk, (f) => c.deliver(Buffer.from(f))));
    s.on('error', () => {});
    return c;
  }

  get port(): number {
    return this.udp ? this.udp.address().port : this.tcp!.localPort!;
  }

  private deliver(m: Buffer): void {
    const i = this.waiters.findIndex((w) => w.pred(m));
    if (i >= 0) {
      const [w] = this.waiters.splice(i, 1);
      w!.resolve(m);
    } else this.inbox.push(m);
  }

  /** The next datagram/frame matching pred (from the inbox first). */
  next(pred: (b: Buffer) => boolean = () => true, timeoutMs = 5000): Promise<Buffer> {
    const i = this.inbox.findIndex(pred);
    if (i >= 0) return Promise.resolve(this.inbox.splice(i, 1)[0]!);
    return new Promise((resolve, reject) => {
      const w = { pred, resolve: (b: Buffer) => (clearTimeout(timer), resolve(b)) };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        reject(new Error('timed out waiting for a message'));
      }, timeoutMs);
      this.waiters.push(w);
    });
  }

  sendRaw(b: Buffer): void {
    if (this.udp) this.udp.send(b, this.serverPort, this.host);
    else this.tcp!.write(b);
  }

  key(alg: 'md5' | 'sha256' = 'md5', password = this.password, username = this.username): Buffer {
    return longTermKey(username, this.realm, password, alg);
  }

  /** Builds a request; with auth, adds USERNAME/REALM/NONCE and integrity. */
  build(method: number, build: Build | undefined, auth: boolean, o: ReqOpts = {}): Buffer {
    const w = new StunWriter();
    w.reset(messageType(method, Class.Request), o.tid ?? randomBytes(12));
    build?.(w);
    if (auth) {
      const username = o.username ?? this.username;
      w.attr(Attr.Username, username);
      w.attr(Attr.Realm, this.realm);
      w.attr(Attr.Nonce, o.nonceOverride ?? this.nonce ?? 'none');
      const alg = o.sha256 ? 'sha256' : 'md5';
      if (o.passwordAlgorithms) {
        w.attr(Attr.PasswordAlgorithms, encodePasswordAlgorithms([0x0002, 0x0001]));
        w.attr(Attr.PasswordAlgorithm, Buffer.from([0, alg === 'sha256' ? 2 : 1, 0, 0]));
      }
      const key = this.key(alg, o.password ?? this.password, username);
      if (o.sha256) w.integritySha256(key);
      else w.integrity(key);
    }
    if (o.fingerprint) w.fingerprint();
    return w.copy();
  }

  /** Sends a request and waits for the response with its transaction ID. */
  async request(method: number, build?: Build, auth = false, o: ReqOpts = {}): Promise<StunMessage> {
    const buf = this.build(method, build, auth, o);
    const tid = buf.subarray(8, 20);
    const p = this.next((b) => b.length >= 20 && b[0]! < 0x40 && b.subarray(8, 20).equals(tid));
    this.sendRaw(buf);
    const r = decodeStun(await p);
    if (!r) throw new Error('undecodable response');
    return r;
  }

  /** An authenticated request, fetching a nonce first when needed (401/438 retry). */
  async authed(method: number, build?: Build, o: ReqOpts = {}): Promise<StunMessage> {
    if (!this.nonce) {
      const r = await this.request(method, build, false);
      if (r.cls === Class.Success) return r;
      this.nonce = getString(r, Attr.Nonce);
    }
    let r = await this.request(method, build, true, o);
    const code = errCode(r);
    if (code === 438) {
      this.nonce = getString(r, Attr.Nonce);
      r = await this.request(method, build, true, o);
    }
    return r;
  }

  close(): void {
    this.udp?.close();
    this.tcp?.destroy();
  }
}

export function errCode(m: StunMessage): number {
  if (m.cls !== Class.Error) return 0;
  const v = m.raw.subarray(m.attrs.find((a) => a.type === Attr.ErrorCode)?.offset ?? 0);
  return (v[2]! & 7) * 100 + v[3]!;
}

/** A UDP "peer" on 127.0.0.1. */
export async function peerSocket(
  ip = '127.0.0.1',
): Promise<{ sock: Socket; port: number; next(timeoutMs?: number): Promise<{ msg: Buffer; port: number }>; close(): void }> {
  const sock = createSocket(ip.includes(':') ? 'udp6' : 'udp4');
  await new Promise<void>((r) => sock.bind(0, ip, () => r()));
  const queue: { msg: Buffer; port: number }[] = [];
  const waiters: ((x: { msg: Buffer; port: number }) => void)[] = [];
  sock.on('message', (msg, rinfo) => {
    const item = { msg, port: rinfo.port };
    const w = waiters.shift();
    if (w) w(item);
    else queue.push(item);
  });
  return {
    sock,
    port: sock.address().port,
    next(timeoutMs = 5000) {
      const q = queue.shift();
      if (q) return Promise.resolve(q);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('peer: timed out')), timeoutMs);
        waiters.push((x) => (clearTimeout(timer), resolve(x)));
      });
    },
    close: () => sock.close(),
  };
}

/**
 * The TURN state the fast path mirrors (FastPath's TableObserver calls), built by hand for
 * tests that drive a FastPath without a TurnServer: one allocation of a UDP client on
 * 127.0.0.1, a permission for 127.0.0.1 and channel 0x4005 to the peer's port.
 * Lifetimes are ms from `now`.
 */
export function mirroredFlow(o: {
  id: string;
  listener: UdpListener;
  relay: Socket;
  clientPort: number;
  peerPort: number;
  now: number;
  allocationMs: number;
  permissionMs: number;
  channelMs: number;
}): { a: Allocation; perm: Permission; ch: Channel } {
  const a = {
    id: o.id,
    ep: { udp: o.listener, sendAddress: '127.0.0.1', remotePort: o.clientPort },
    socket: o.relay,
    expiresAt: o.now + o.allocationMs,
    deleted: false,
  } as unknown as Allocation;
  const perm = {
    ip: '127.0.0.1',
    ipBytes: Buffer.from([127, 0, 0, 1]),
    expiresAt: o.now + o.permissionMs,
    flow: {},
    channelsByPort: new Map(),
  } as unknown as Permission;
  const ch = {
    number: 0x4005,
    peerIp: '127.0.0.1',
    peerPort: o.peerPort,
    perm,
    expiresAt: o.now + o.channelMs,
    active: true,
    reuseAfter: 0,
  } as Channel;
  perm.channelsByPort.set(o.peerPort, ch);
  return { a, perm, ch };
}

/**
 * The native fast-path addon for a test file, and the `skip` its tests take: without the
 * addon they skip, except under CI, where the file fails (.ci/run builds the addon).
 */
export function fastPathForTests(t: { fail(message: string): unknown }): { addon: FastPathAddon | null; skip: string | false } {
  const addon = loadFastPath();
  if (addon) return { addon, skip: false };
  if (process.env.CI) {
    t.fail('the fast path addon is not built (npm run build:native) in CI');
    return { addon, skip: false };
  }
  return { addon, skip: 'native/build/Release/gatehouse_fastpath.node not built (npm run build:native, Linux)' };
}
