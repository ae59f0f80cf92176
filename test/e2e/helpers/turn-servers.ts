// TURN servers for end-to-end tests: Gatehouse itself (`node bin/gatehouse.js serve`)
// and coturn (Debian `turnserver`) as a control. Both listen on 127.0.0.1, UDP and TCP
// on one port, relay on 127.0.0.1 from a port range inside a reserved port block, and
// accept long-term credentials. Readiness is a STUN Binding answered over UDP
// (RFC 8489 §6: a TURN server is a STUN server) and a TCP connect.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { connect } from 'node:net';
import { randomBytes } from 'node:crypto';
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { reservePortBlock, type PortBlock } from './ports.js';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

export type TurnTransport = 'udp' | 'tcp';

export interface TurnUser {
  name: string;
  password: string;
  groups?: string[];
}

/** An RTCIceServer as the browser takes it. */
export interface IceServer {
  urls: string;
  username: string;
  credential: string;
}

export interface TurnServer {
  readonly kind: 'gatehouse' | 'coturn';
  readonly host: string;
  /** UDP and TCP listening port. */
  readonly port: number;
  readonly realm: string;
  readonly users: readonly TurnUser[];
  /** Inclusive relay port range handed to the server. */
  readonly relayPorts: readonly [number, number];
  /** Temporary directory owned by this server (Gatehouse's data_dir lives in it). */
  readonly workDir: string;
  /** Gatehouse only: data_dir, admin base URL and token. */
  readonly dataDir: string | null;
  readonly adminUrl: string | null;
  readonly adminToken: string | null;
  /** `turn:HOST:PORT?transport=T`. */
  url(transport: TurnTransport): string;
  /** One iceServers entry for `user` (default: the first user). */
  iceServer(transport: TurnTransport, user?: string): IceServer;
  /** Captured stdout and stderr (the last 256 KiB), for diagnostics. */
  output(): string;
  /**
   * Everything the process wrote to stdout and stderr since it started (kept in
   * workDir/output.log until stop()), for "no secret in the log" checks.
   */
  fullOutput(): Buffer;
  /** Exit code or signal once the process has ended, else null. */
  exitStatus(): string | null;
  /** Stops the process (SIGTERM, then SIGKILL), frees ports and removes workDir. Idempotent. */
  stop(): Promise<void>;
  /** Sends a signal (e.g. SIGKILL: a crash); resolves once the process has exited. stop() still cleans up. */
  kill(signal: NodeJS.Signals): Promise<void>;
}

export interface TurnServerOptions {
  realm?: string;
  users?: TurnUser[];
  transports?: TurnTransport[];
  /** Time allowed for the server to answer STUN, ms (default 30 000). */
  readyTimeoutMs?: number;
  /** Keep workDir on stop (for post-mortem). Default false. */
  keepWorkDir?: boolean;
}

export interface GatehouseOptions extends TurnServerOptions {
  /** log_level in the configuration (default 'warn'). */
  logLevel?: 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'silent';
  /**
   * Policy rules file content (YAML). Default: keys not required and unverified
   * traffic passed, no rules — a plain TURN server for browsers without escrow.
   * null: leave policy.rules pointing to an empty folder (the server's defaults).
   */
  rules?: string | null;
  /** Peers allowed despite the special-range deny list (default 127.0.0.0/8). */
  peersAllow?: string[];
  /** Last-word edits of the configuration object before it is written. */
  configure?: (config: Record<string, any>) => void;
  /** Extra environment for the server process. */
  env?: Record<string, string>;
}

export interface CoturnOptions extends TurnServerOptions {
  /** Pass -v to turnserver. */
  verbose?: boolean;
}

export const DEFAULT_USERS: TurnUser[] = [{ name: 'alice', password: 'alice-secret-pw', groups: [] }];

export const PERMISSIVE_RULES = 'keys:\n  required: false\n  unverified: pass\nrules: []\n';

// Port block layout: +0 TURN (UDP and TCP), +1 admin HTTP, +2 PCP, +10..+99 relay.
const OFF_TURN = 0;
const OFF_ADMIN = 1;
const OFF_PCP = 2;
const OFF_RELAY_LOW = 10;
const OFF_RELAY_HIGH = 99;

const live = new Set<ChildProcess>();
let exitHookInstalled = false;
function trackChild(child: ChildProcess): void {
  live.add(child);
  child.once('exit', () => live.delete(child));
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    // A test process that dies (timeout, crash) must not leave servers behind.
    process.once('exit', () => {
      for (const c of live) c.kill('SIGKILL');
    });
  }
}

/** Whether Debian's coturn is installed. */
export function haveCoturn(): boolean {
  const r = spawnSync('turnserver', ['--help'], { stdio: 'ignore' });
  return r.error === undefined;
}

/**
 * Sends one STUN Binding request (RFC 8489 §5: 20-byte header, type 0x0001, length 0,
 * magic cookie 0x2112A442, 96-bit transaction ID) over UDP and waits for a response
 * with the same transaction ID. Resolves the response message type (0x0101 success,
 * 0x0111 error) or null on timeout.
 */
export function stunBindingUdp(host: string, port: number, timeoutMs = 500): Promise<number | null> {
  return new Promise((resolvePromise) => {
    const sock = createSocket('udp4');
    const req = Buffer.alloc(20);
    req.writeUInt16BE(0x0001, 0);
    req.writeUInt16BE(0, 2);
    req.writeUInt32BE(0x2112a442, 4);
    randomBytes(12).copy(req, 8);
    let done = false;
    const finish = (v: number | null): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.close();
      resolvePromise(v);
    };
    const timer = setTimeout(() => finish(null), timeoutMs);
    sock.on('error', () => finish(null));
    sock.on('message', (msg) => {
      if (msg.length >= 20 && msg.readUInt32BE(4) === 0x2112a442 && msg.subarray(8, 20).equals(req.subarray(8, 20))) {
        finish(msg.readUInt16BE(0));
      }
    });
    sock.send(req, port, host, (err) => {
      if (err) finish(null);
    });
  });
}

/** Whether a TCP connection to host:port is accepted within timeoutMs. */
export function tcpConnects(host: string, port: number, timeoutMs = 500): Promise<boolean> {
  return new Promise((resolvePromise) => {
    const s = connect({ host, port });
    const timer = setTimeout(() => {
      s.destroy();
      resolvePromise(false);
    }, timeoutMs);
    s.once('connect', () => {
      clearTimeout(timer);
      s.end();
      s.destroy();
      resolvePromise(true);
    });
    s.once('error', () => {
      clearTimeout(timer);
      resolvePromise(false);
    });
  });
}

class Output {
  private chunks: string[] = [];
  private size = 0;
  /** logFile: every byte also appended here, uncapped. */
  constructor(
    readonly logFile: string,
    private readonly cap = 256 * 1024,
  ) {}
  push(b: Buffer | string): void {
    try {
      appendFileSync(this.logFile, b);
    } catch {
      /* workDir removed by stop(): output after that is only kept in memory */
    }
    const s = b.toString();
    this.chunks.push(s);
    this.size += s.length;
    while (this.size > this.cap && this.chunks.length > 1) this.size -= this.chunks.shift()!.length;
  }
  text(): string {
    return this.chunks.join('');
  }
  all(): Buffer {
    return existsSync(this.logFile) ? readFileSync(this.logFile) : Buffer.alloc(0);
  }
}

interface Spawned {
  child: ChildProcess;
  out: Output;
}

function spawnServer(cmd: string, args: string[], cwd: string, env?: Record<string, string>): Spawned {
  const out = new Output(join(cwd, 'output.log'));
  const child = spawn(cmd, args, { cwd, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  trackChild(child);
  child.stdout!.on('data', (b: Buffer) => out.push(b));
  child.stderr!.on('data', (b: Buffer) => out.push(b));
  child.on('error', (e) => out.push(`\n[spawn error] ${e.message}\n`));
  return { child, out };
}

function statusOf(child: ChildProcess): string | null {
  if (child.exitCode !== null) return `exit code ${child.exitCode}`;
  if (child.signalCode !== null) return `signal ${child.signalCode}`;
  return null;
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (statusOf(child) !== null || child.pid === undefined) return;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(t);
}

/**
 * Polls `ready` every 150 ms until it says yes, the process ends (its output in the
 * error) or `timeoutMs` passes (`state()` says what was still missing).
 */
async function pollUntil(name: string, sp: Spawned, timeoutMs: number, ready: () => Promise<boolean>, state: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await ready())) {
    const st = statusOf(sp.child);
    if (st !== null) throw new Error(`${name} ended before it was ready (${st}). Output:\n${sp.out.text()}`);
    if (Date.now() > deadline) throw new Error(`${name} not ready after ${timeoutMs} ms (${state()}). Output:\n${sp.out.text()}`);
    await new Promise((r) => setTimeout(r, 150));
  }
}

/** Waits until the TURN listener answers a STUN Binding over UDP and accepts TCP, as configured. */
async function waitReady(
  name: string,
  sp: Spawned,
  host: string,
  port: number,
  transports: TurnTransport[],
  timeoutMs: number,
): Promise<void> {
  let udpOk = !transports.includes('udp');
  let tcpOk = !transports.includes('tcp');
  await pollUntil(
    name,
    sp,
    timeoutMs,
    async () => {
      if (!udpOk) udpOk = (await stunBindingUdp(host, port, 400)) !== null;
      if (!tcpOk) tcpOk = await tcpConnects(host, port, 400);
      return udpOk && tcpOk;
    },
    () => `udp STUN answered: ${udpOk}, tcp accepted: ${tcpOk}`,
  );
}

/** The core's http(s) listener host and port when the configuration has one. */
function coreListenerOf(config: Record<string, any>): { host: string; port: number } | null {
  const listen = config.core?.listen;
  if (typeof listen !== 'string') return null;
  const u = new URL(listen);
  const port = Number(u.port || (u.protocol === 'https:' ? 443 : 80));
  return { host: u.hostname.replace(/^\[|\]$/g, ''), port };
}

/** Waits until `host:port` accepts a TCP connection, or the process ends. */
async function waitTcpListener(name: string, sp: Spawned, host: string, port: number, timeoutMs: number): Promise<void> {
  await pollUntil(
    name,
    sp,
    timeoutMs,
    () => tcpConnects(host, port, 400),
    () => `nothing listening on ${host}:${port}`,
  );
}

function makeHandle(
  kind: 'gatehouse' | 'coturn',
  sp: Spawned,
  block: PortBlock,
  workDir: string,
  realm: string,
  users: TurnUser[],
  extra: { dataDir: string | null; adminUrl: string | null; adminToken: string | null },
  keepWorkDir: boolean,
): TurnServer {
  const host = '127.0.0.1';
  const port = block.port(OFF_TURN);
  let stopping: Promise<void> | null = null;
  return {
    kind,
    host,
    port,
    realm,
    users,
    relayPorts: [block.port(OFF_RELAY_LOW), block.port(OFF_RELAY_HIGH)],
    workDir,
    ...extra,
    url: (transport) => `turn:${host}:${port}?transport=${transport}`,
    iceServer(transport, user) {
      const u = user === undefined ? users[0] : users.find((x) => x.name === user);
      if (!u) throw new Error(`no TURN user ${user}`);
      return { urls: `turn:${host}:${port}?transport=${transport}`, username: u.name, credential: u.password };
    },
    output: () => sp.out.text(),
    fullOutput: () => sp.out.all(),
    exitStatus: () => statusOf(sp.child),
    kill(signal) {
      if (statusOf(sp.child) !== null) return Promise.resolve();
      return new Promise<void>((resolve) => {
        sp.child.once('exit', () => resolve());
        sp.child.kill(signal);
      });
    },
    stop() {
      stopping ??= (async () => {
        await stopChild(sp.child);
        block.release();
        if (!keepWorkDir) rmSync(workDir, { recursive: true, force: true });
      })();
      return stopping;
    },
  };
}

/** Runs `node bin/gatehouse.js serve --config FILE` with a fresh data_dir. */
export async function startGatehouse(opts: GatehouseOptions = {}): Promise<TurnServer> {
  const realm = opts.realm ?? 'test.local';
  const users = opts.users ?? DEFAULT_USERS;
  const transports = opts.transports ?? ['udp', 'tcp'];
  const block = await reservePortBlock(100);
  const workDir = mkdtempSync(join(tmpdir(), 'gatehouse-e2e-'));
  const dataDir = join(workDir, 'data');
  const rulesDir = join(workDir, 'rules');
  const adminToken = randomBytes(16).toString('hex');
  const adminUrl = `http://127.0.0.1:${block.port(OFF_ADMIN)}`;
  const turnPort = block.port(OFF_TURN);
  try {
    mkdirSync(dataDir);
    mkdirSync(rulesDir);
    const rules = opts.rules === undefined ? PERMISSIVE_RULES : opts.rules;
    if (rules !== null) writeFileSync(join(rulesDir, 'e2e.yaml'), rules);
    const config: Record<string, any> = {
      realm,
      data_dir: dataDir,
      log_level: opts.logLevel ?? 'warn',
      turn: {
        listen: transports.map((t) => `${t}://127.0.0.1:${turnPort}`),
        relay_address: '127.0.0.1',
        relay_ports: [block.port(OFF_RELAY_LOW), block.port(OFF_RELAY_HIGH)],
        peers: { allow: opts.peersAllow ?? ['127.0.0.0/8'] },
      },
      pcp: { listen: [`udp://127.0.0.1:${block.port(OFF_PCP)}`] },
      admin: { listen: adminUrl, token: adminToken },
      users: users.map((u) => ({ name: u.name, password: u.password, groups: u.groups ?? [] })),
      policy: { rules: rulesDir },
    };
    opts.configure?.(config);
    const configFile = join(workDir, 'gatehouse.yaml');
    writeFileSync(configFile, stringify(config));
    const sp = spawnServer(process.execPath, [join(REPO_ROOT, 'bin', 'gatehouse.js'), 'serve', '--config', configFile], workDir, opts.env);
    const handle = makeHandle('gatehouse', sp, block, workDir, realm, users, { dataDir, adminUrl, adminToken }, opts.keepWorkDir ?? false);
    try {
      await waitReady('gatehouse', sp, '127.0.0.1', turnPort, transports, opts.readyTimeoutMs ?? 30_000);
      // The conferencing core starts after TURN answers: a test that logs in right away
      // must not race its listener (core-revoke saw ECONNREFUSED on its first login).
      const core = coreListenerOf(config);
      if (core) await waitTcpListener('gatehouse core', sp, core.host, core.port, opts.readyTimeoutMs ?? 30_000);
    } catch (e) {
      await handle.stop();
      throw e;
    }
    return handle;
  } catch (e) {
    block.release();
    if (!opts.keepWorkDir) rmSync(workDir, { recursive: true, force: true });
    throw e;
  }
}

/** Runs Debian's coturn with long-term credentials, loopback peers allowed. */
export async function startCoturn(opts: CoturnOptions = {}): Promise<TurnServer> {
  const realm = opts.realm ?? 'test.local';
  const users = opts.users ?? DEFAULT_USERS;
  const transports = opts.transports ?? ['udp', 'tcp'];
  const block = await reservePortBlock(100);
  const workDir = mkdtempSync(join(tmpdir(), 'coturn-e2e-'));
  const turnPort = block.port(OFF_TURN);
  try {
    const args = [
      '-n', // no configuration file
      '--no-cli',
      '--no-tls',
      '--no-dtls',
      '--no-rfc5780',
      '--no-stun-backward-compatibility',
      '--listening-ip',
      '127.0.0.1',
      '--listening-port',
      String(turnPort),
      '--relay-ip',
      '127.0.0.1',
      '--min-port',
      String(block.port(OFF_RELAY_LOW)),
      '--max-port',
      String(block.port(OFF_RELAY_HIGH)),
      '--lt-cred-mech',
      '--realm',
      realm,
      '--allow-loopback-peers',
      '--userdb',
      join(workDir, 'turndb'),
      '--pidfile',
      join(workDir, 'turnserver.pid'),
      '--log-file',
      'stdout',
      '--simple-log',
    ];
    for (const u of users) args.push('--user', `${u.name}:${u.password}`);
    if (!transports.includes('udp')) args.push('--no-udp');
    if (!transports.includes('tcp')) args.push('--no-tcp');
    if (opts.verbose) args.push('-v');
    const sp = spawnServer('turnserver', args, workDir);
    const handle = makeHandle(
      'coturn',
      sp,
      block,
      workDir,
      realm,
      users,
      { dataDir: null, adminUrl: null, adminToken: null },
      opts.keepWorkDir ?? false,
    );
    try {
      await waitReady('coturn', sp, '127.0.0.1', turnPort, transports, opts.readyTimeoutMs ?? 30_000);
    } catch (e) {
      await handle.stop();
      throw e;
    }
    return handle;
  } catch (e) {
    block.release();
    if (!opts.keepWorkDir) rmSync(workDir, { recursive: true, force: true });
    throw e;
  }
}
