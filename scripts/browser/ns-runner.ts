/**
 * In-namespace part of the real-browser harness. Started by harness.ts as
 *   unshare -n -- node <tsx cli> scripts/browser/ns-runner.ts <config.json>
 * (or without `unshare -n` when namespaces are not permitted). It brings up loopback,
 * starts the capture (dumpcap), the TURN server (pluggable argv), a local HTTP server with
 * the call page, and Firefox ESR headless; waits for the page's report; stops everything
 * it started (by pid) and writes run.json. Exit code 0 when the page reported ok.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createSocket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, readdirSync, writeFileSync, createWriteStream, rmSync, existsSync, statSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { tmpdir } from 'node:os';
import { firefoxUserJs } from './prefs.js';
import type { RunnerConfig, RunInfo } from './types.js';

const here = dirname(fileURLToPath(import.meta.url));
const t0 = Date.now();
function log(msg: string): void {
  process.stderr.write(`[ns-runner +${((Date.now() - t0) / 1000).toFixed(1)}s] ${msg}\n`);
}

const cfg: RunnerConfig = JSON.parse(readFileSync(process.argv[2]!, 'utf8'));
const out = cfg.outDir;
mkdirSync(out, { recursive: true });
const children: { name: string; proc: ChildProcess }[] = [];
const info: RunInfo = {
  dtls: cfg.dtls,
  netns: cfg.netns,
  startedAt: new Date().toISOString(),
  files: {
    pcap: 'capture.pcap',
    keylog: 'keylog.txt',
    report: 'report.json',
    pageLog: 'page.log',
    turnLog: 'turn.log',
    firefoxLog: 'firefox.log',
  },
  turn: { host: '127.0.0.1', port: 0, minPort: 0, maxPort: 0, argv: [] },
  firefoxVersion: '',
  ok: false,
  errors: [],
};

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function run(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr || r.error}`);
}

/** Free UDP port (bind 0). In a fresh namespace any port is free; this keeps fallback mode safe. */
async function freeUdpPort(): Promise<number> {
  const s = createSocket('udp4');
  await new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()));
  const p = s.address().port;
  await new Promise<void>((r) => s.close(() => r()));
  return p;
}

/** RFC 8489 §6: a Binding request; resolves when any response with our transaction id arrives. */
async function stunProbe(port: number, deadlineMs: number): Promise<boolean> {
  const s = createSocket('udp4');
  const tid = randomBytes(12);
  const req = Buffer.alloc(20);
  req.writeUInt16BE(0x0001, 0);
  req.writeUInt32BE(0x2112a442, 4);
  tid.copy(req, 8);
  let got = false;
  s.on('message', (m) => {
    if (m.length >= 20 && m.subarray(8, 20).equals(tid)) got = true;
  });
  await new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()));
  const end = Date.now() + deadlineMs;
  while (!got && Date.now() < end) {
    s.send(req, port, '127.0.0.1');
    await sleep(200);
  }
  s.close();
  return got;
}

function startChild(name: string, cmd: string, args: string[], logFile: string, env?: NodeJS.ProcessEnv): ChildProcess {
  const logStream = createWriteStream(join(out, logFile), { flags: 'a' });
  // Same process group as this runner: harness.ts can kill the whole group as a last resort.
  const proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: env ?? process.env });
  proc.stdout!.pipe(logStream, { end: false });
  proc.stderr!.pipe(logStream, { end: false });
  proc.on('error', (e) => {
    info.errors.push(`${name}: ${e.message}`);
    log(`${name} error: ${e.message}`);
  });
  proc.on('exit', (code, sig) => log(`${name} exited code=${code} sig=${sig}`));
  children.push({ name, proc });
  const shown = [cmd, ...args].join(' ').split(cfg.turn.password).join('***'); // never log the TURN password
  log(`started ${name} pid=${proc.pid}: ${shown}`);
  return proc;
}

async function stopChild(name: string, sig: NodeJS.Signals, graceMs: number): Promise<void> {
  const c = children.find((x) => x.name === name);
  if (!c || c.proc.exitCode !== null || c.proc.signalCode !== null) return;
  const exited = new Promise<void>((r) => c.proc.once('exit', () => r()));
  c.proc.kill(sig);
  const ok = await Promise.race([exited.then(() => true), sleep(graceMs).then(() => false)]);
  if (!ok) {
    log(`${name} did not exit on ${sig}; SIGKILL`);
    c.proc.kill('SIGKILL');
    await Promise.race([exited, sleep(2000)]);
  }
}

function fillTemplate(argv: string[], vars: Record<string, string | number>): string[] {
  return argv.map((a) => a.replace(/\{(\w+)\}/g, (m, k: string) => (k in vars ? String(vars[k]) : m)));
}

async function main(): Promise<number> {
  if (cfg.netns) {
    // Private network namespace: only loopback. A default route via lo gives Firefox a
    // "default address" (127.0.0.1) for ICE gathering.
    run('ip', ['link', 'set', 'lo', 'up']);
    run('ip', ['route', 'add', 'default', 'dev', 'lo', 'src', '127.0.0.1']);
    log('network namespace: lo up, default route via lo');
    if (cfg.peer === 'chromium') {
      // Chromium ignores loopback interfaces when gathering, so it would find no network at
      // all. A veth pair gives it one (10.231.0.1); traffic between local addresses still
      // runs over lo, so the capture is unchanged. (No `dummy` module on every kernel.)
      run('ip', ['link', 'add', 'gh0', 'type', 'veth', 'peer', 'name', 'gh1']);
      run('ip', ['addr', 'add', '10.231.0.1/24', 'dev', 'gh0']);
      run('ip', ['link', 'set', 'gh1', 'up']);
      run('ip', ['link', 'set', 'gh0', 'up']);
      log('network namespace: veth gh0 10.231.0.1/24 for Chromium');
    }
  } else {
    log('WARNING: running without a private network namespace (unshare -n not permitted); network prefs are still off');
  }

  const ff = spawnSync(cfg.firefoxBin, ['--version'], { encoding: 'utf8', env: { ...process.env, HOME: tmpdir() } });
  info.firefoxVersion = (ff.stdout || '').trim();

  // TURN server ports.
  const port = cfg.turn.port || (await freeUdpPort());
  const minPort = cfg.turn.minPort || 40000 + Math.floor(Math.random() * 200) * 100;
  const maxPort = cfg.turn.maxPort || minPort + 99;
  const vars = {
    port,
    minPort,
    maxPort,
    ip: '127.0.0.1',
    user: cfg.turn.username,
    pass: cfg.turn.password,
    realm: cfg.turn.realm,
    outDir: out,
    workDir: cfg.workDir,
    logFile: join(out, 'turn.log'),
  };
  const argv = fillTemplate(cfg.turn.argv, vars);
  info.turn = { host: '127.0.0.1', port, minPort, maxPort, argv: argv.map((a) => a.split(cfg.turn.password).join('***')) };

  // 1. Capture first, so the whole call is in the pcap.
  if (cfg.capture) {
    const filter = cfg.netns ? 'udp' : `udp and (port ${port} or portrange ${minPort}-${maxPort})`;
    const dc = startChild(
      'dumpcap',
      'dumpcap',
      ['-i', 'lo', '-P', '-B', '32', '-f', filter, '-w', join(out, 'capture.pcap')],
      'dumpcap.log',
    );
    let started = false;
    dc.stderr!.on('data', (d: Buffer) => {
      if (/Capturing on/i.test(d.toString())) started = true;
    });
    const end = Date.now() + 15000;
    while (!started && Date.now() < end && dc.exitCode === null) await sleep(100);
    if (!started) throw new Error('dumpcap did not start capturing');
    await sleep(300);
  }

  // 2. TURN server.
  startChild('turn', argv[0]!, argv.slice(1), 'turn.log', { ...process.env, ...(cfg.turn.env ?? {}) });
  if (!(await stunProbe(port, 15000))) throw new Error('TURN server did not answer a STUN Binding request');
  log(`TURN server answers on 127.0.0.1:${port}`);

  // 3. HTTP server with the page, signalling and barriers (two-browser mode).
  const roles = cfg.peer === 'chromium' ? ['pc1', 'pc2'] : [''];
  const reports = new Map<string, Record<string, unknown>>();
  let resolveReport!: (r: unknown) => void;
  const reportP = new Promise<unknown>((r) => (resolveReport = r));
  const onReport = (role: string, rep: Record<string, unknown>) => {
    reports.set(role, rep);
    if (roles.every((r) => reports.has(r)))
      resolveReport(roles.length === 1 ? { mode: 'single-page', ...reports.get('')! } : mergeReports(reports));
  };
  const queues = new Map<string, string[]>();
  const barriers = new Map<string, Set<string>>();
  const pageLog = createWriteStream(join(out, 'page.log'));
  const pageCfg = {
    dtls: cfg.dtls,
    mediaSeconds: cfg.mediaSeconds,
    media: cfg.media,
    bulkSize: cfg.bulkSize,
    turn: { url: `turn:127.0.0.1:${port}?transport=udp`, username: cfg.turn.username, credential: cfg.turn.password },
  };
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size <= 32 * 1024 * 1024) chunks.push(c);
    });
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const [url, qs] = (req.url ?? '/').split('?') as [string, string | undefined];
      const q = new URLSearchParams(qs ?? '');
      if (req.method === 'GET' && (url === '/' || url === '/call.html')) {
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(readFileSync(join(here, 'page', 'call.html')));
      } else if (req.method === 'GET' && url === '/call.js') {
        res.writeHead(200, { 'content-type': 'text/javascript; charset=utf-8' }).end(readFileSync(join(here, 'page', 'call.js')));
      } else if (req.method === 'GET' && url === '/config.json') {
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(pageCfg));
      } else if (req.method === 'POST' && url === '/log') {
        pageLog.write(body.toString('utf8') + '\n');
        res.writeHead(204).end();
      } else if (req.method === 'POST' && url === '/report') {
        res.writeHead(204).end();
        const role = q.get('role') ?? '';
        try {
          onReport(role, JSON.parse(body.toString('utf8')));
        } catch (e) {
          onReport(role, { ok: false, sent: [], received: [], errors: ['bad report JSON: ' + String(e)] });
        }
      } else if (url === '/signal' && req.method === 'POST') {
        const to = q.get('to') ?? '';
        if (!queues.has(to)) queues.set(to, []);
        queues.get(to)!.push(body.toString('utf8'));
        res.writeHead(204).end();
      } else if (url === '/signal' && req.method === 'GET') {
        const me = q.get('me') ?? '';
        const msgs = queues.get(me) ?? [];
        queues.set(me, []);
        res.writeHead(200, { 'content-type': 'application/json' }).end('[' + msgs.join(',') + ']');
      } else if (url === '/barrier') {
        const name = q.get('name') ?? '';
        if (!barriers.has(name)) barriers.set(name, new Set());
        if (req.method === 'POST') barriers.get(name)!.add(q.get('role') ?? '');
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ roles: [...barriers.get(name)!] }));
      } else {
        res.writeHead(404).end();
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const httpPort = (server.address() as { port: number }).port;
  log(`HTTP server on 127.0.0.1:${httpPort}`);

  // 4. Firefox ESR headless with a fresh profile.
  const profile = join(cfg.workDir, 'profile');
  const home = join(cfg.workDir, 'home');
  mkdirSync(profile, { recursive: true });
  mkdirSync(home, { recursive: true });
  // Remote settings point at a closed local port (RFC-less, Firefox internals).
  writeFileSync(join(profile, 'user.js'), firefoxUserJs({ dtls: cfg.dtls, settingsServer: 'http://127.0.0.1:9/v1' }));
  const keylog = join(out, 'keylog.txt');
  writeFileSync(keylog, '');
  const ffEnv: NodeJS.ProcessEnv = {
    ...process.env,
    HOME: home,
    SSLKEYLOGFILE: keylog,
    MOZ_REMOTE_SETTINGS_DEVTOOLS: '1',
    MOZ_CRASHREPORTER_DISABLE: '1',
    MOZ_DISABLE_AUTO_SAFE_MODE: '1',
    MOZ_HEADLESS: '1',
  };
  delete ffEnv.DISPLAY;
  delete ffEnv.WAYLAND_DISPLAY;
  const base = `http://127.0.0.1:${httpPort}/call.html`;
  startChild(
    'firefox',
    cfg.firefoxBin,
    ['--headless', '--no-remote', '--profile', profile, cfg.peer === 'chromium' ? `${base}?role=pc1` : base],
    'firefox.log',
    ffEnv,
  );
  if (cfg.peer === 'chromium') await startChromium(`${base}?role=pc2`);

  const ffProc = children.find((c) => c.name === 'firefox')!.proc;
  const ffExit = new Promise<string>((r) => ffProc.once('exit', (c) => r(`firefox exited early (code ${c})`)));
  const report = (await Promise.race([
    reportP,
    sleep(cfg.timeoutMs).then(() => ({ ok: false, errors: [`no report within ${cfg.timeoutMs} ms`] })),
    ffExit.then((m) => ({ ok: false, errors: [m] })),
  ])) as { ok?: boolean; errors?: string[] };
  writeFileSync(join(out, 'report.json'), JSON.stringify(report, null, 1));
  log(`report: ok=${report.ok} errors=${JSON.stringify(report.errors ?? [])}`);
  await sleep(cfg.lingerMs);

  await stopChild('firefox', 'SIGTERM', 8000);
  await stopChromium();
  await new Promise<void>((r) => server.close(() => r()));
  server.closeAllConnections?.();
  await stopChild('turn', 'SIGTERM', 5000);
  await sleep(300);
  await stopChild('dumpcap', 'SIGINT', 8000);
  pageLog.end();

  info.ok = report.ok === true;
  if (report.errors?.length) info.errors.push(...report.errors);
  const pcapPath = join(out, 'capture.pcap');
  info.pcapBytes = existsSync(pcapPath) ? statSync(pcapPath).size : 0;
  info.keylogLines = readFileSync(keylog, 'utf8')
    .split('\n')
    .filter((l) => l.trim() && !l.startsWith('#')).length;
  return info.ok ? 0 : 1;
}

/** Two-browser report: union of both pages' records, delivery checked across browsers. */
function mergeReports(reports: Map<string, Record<string, unknown>>): Record<string, unknown> {
  const a = reports.get('pc1') as Record<string, any>;
  const b = reports.get('pc2') as Record<string, any>;
  const sent = [...(a.sent ?? []), ...(b.sent ?? [])];
  const received = [...(a.received ?? []), ...(b.received ?? [])];
  const missing = sent.filter(
    (s: any) => !received.some((r: any) => r.to !== s.from && r.label === s.label && r.sha256 === s.sha256 && r.size === s.size),
  );
  const errors = [...(a.errors ?? []).map((e: string) => 'pc1: ' + e), ...(b.errors ?? []).map((e: string) => 'pc2: ' + e)];
  return {
    mode: 'firefox-chromium',
    ok: a.ok === true && b.ok === true && missing.length === 0,
    peers: { pc1: { userAgent: a.userAgent, ok: a.ok }, pc2: { userAgent: b.userAgent, ok: b.ok } },
    media: a.media === true && b.media === true,
    dtlsClient: a.dtlsClient,
    sdp: a.sdp,
    sent,
    received,
    missing,
    errors,
    stats: { ...(a.stats ?? {}), ...(b.stats ?? {}) },
    log: [...(a.log ?? []), ...(b.log ?? [])],
  };
}

// Chromium (two-browser mode) via playwright-core; loaded only when needed.
let chromiumClose: (() => Promise<void>) | null = null;
async function startChromium(url: string): Promise<void> {
  const { chromium } = await import('playwright-core');
  const logStream = createWriteStream(join(out, 'chromium.log'));
  const browser = await chromium.launch({
    executablePath: cfg.chromiumBin,
    headless: true,
    timeout: 60000,
    // the team's browser flags, plus fake capture devices without prompts
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--disable-quic',
      '--use-fake-device-for-media-stream',
      '--use-fake-ui-for-media-stream',
      '--disable-breakpad',
      '--disable-crash-reporter',
    ],
  });
  chromiumClose = async () => {
    await browser.close().catch(() => undefined);
    logStream.end();
  };
  // playwright starts Chromium in its own process group; note its pid so harness.ts can
  // reap that group (by id) should this runner die before closing the browser.
  for (const pid of childPids(process.pid)) {
    try {
      if (/chrom/i.test(readFileSync(`/proc/${pid}/comm`, 'utf8'))) writeFileSync(join(cfg.workDir, 'chromium.pid'), String(pid));
    } catch {
      /* raced with exit */
    }
  }
  const page = await browser.newPage();
  page.on('console', (m) => logStream.write(`${m.type()}: ${m.text()}\n`));
  page.on('pageerror', (e) => logStream.write(`pageerror: ${e.message}\n`));
  log(`chromium ${browser.version()} opening ${url}`);
  info.chromiumVersion = browser.version();
  await page.goto(url);
}
/** Direct children of `ppid` (Linux /proc). */
function childPids(ppid: number): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const st = readFileSync(`/proc/${d}/stat`, 'utf8');
      const fields = st.slice(st.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[1]) === ppid) out.push(Number(d));
    } catch {
      /* gone */
    }
  }
  return out;
}

async function stopChromium(): Promise<void> {
  const c = chromiumClose;
  chromiumClose = null;
  if (c) await Promise.race([c(), sleep(10000)]);
}

async function cleanup(): Promise<void> {
  await stopChromium();
  for (const c of [...children].reverse()) await stopChild(c.name, 'SIGTERM', 3000).catch(() => undefined);
  if (!cfg.keepProfile) rmSync(cfg.workDir, { recursive: true, force: true });
}

let code = 1;
try {
  code = await main();
} catch (e) {
  info.errors.push(String((e as Error).message ?? e));
  log(`failed: ${(e as Error).stack ?? e}`);
}
await cleanup();
info.finishedAt = new Date().toISOString();
writeFileSync(join(out, 'run.json'), JSON.stringify(info, null, 1));
log(`exit ${code}`);
process.exit(code);
