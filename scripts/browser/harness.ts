/**
 * Real-browser capture harness: a WebRTC call between two RTCPeerConnections in one
 * Firefox ESR page (headless), relayed through a TURN server with iceTransportPolicy
 * 'relay', captured on loopback, with the browser's NSS key log.
 *
 *   import { runFirefoxCall } from './scripts/browser/harness.js';
 *   const r = await runFirefoxCall({ outDir, dtls: '1.3' });
 *   // r.pcap (classic pcap, Ethernet-on-lo), r.keylog (SSLKEYLOGFILE), r.report (PageReport)
 *
 * CLI:  npx tsx scripts/browser/harness.ts --out DIR [--dtls 1.2|1.3] [--media-seconds N]
 *         [--no-media] [--turn-argv '<json array>'] [--timeout MS] [--keep-profile] [--no-netns]
 *         [--chromium]   (Firefox calls headless Chromium instead of itself)
 *
 * Everything runs inside a private network namespace (`unshare -n`) when permitted; if not,
 * it runs in the host namespace (logged; r.netns === false) with all background network
 * prefs still off. The TURN server is pluggable (opts.turn.argv); coturn is the default.
 * Output dir: capture.pcap, keylog.txt, report.json, run.json, page.log, turn.log,
 * firefox.log, dumpcap.log, runner.log.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync, createWriteStream, existsSync, rmSync } from 'node:fs';
import { join, dirname, resolve } from 'node:path';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import type { DtlsVersion } from './prefs.js';
import type { PageReport, RunInfo, RunnerConfig, TurnSpec } from './types.js';

export type { PageReport, RunInfo, TurnSpec, MessageRecord } from './types.js';
export type { DtlsVersion } from './prefs.js';

const here = dirname(fileURLToPath(import.meta.url));

/** coturn's turnserver, loopback only, long-term credentials, logs to stdout. */
export const COTURN_ARGV: readonly string[] = [
  'turnserver',
  '-n',
  '--no-cli',
  '--no-tls',
  '--no-dtls',
  '--listening-ip',
  '{ip}',
  '--listening-port',
  '{port}',
  '--relay-ip',
  '{ip}',
  '--min-port',
  '{minPort}',
  '--max-port',
  '{maxPort}',
  '--lt-cred-mech',
  '--user',
  '{user}:{pass}',
  '--realm',
  '{realm}',
  '--allow-loopback-peers',
  '--fingerprint',
  '--no-rfc5780',
  '--no-software-attribute',
  '--userdb',
  '{workDir}/turndb',
  '--pidfile',
  '{workDir}/turnserver.pid',
  '--log-file',
  'stdout',
  '--simple-log',
];

export interface FirefoxCallOptions {
  outDir: string;
  dtls?: DtlsVersion;
  /** TURN server; defaults to coturn with user "gh"/random password, realm "gatehouse". */
  turn?: Partial<TurnSpec>;
  /** 'auto' (default): use `unshare -n` when permitted. */
  netns?: boolean | 'auto';
  firefoxBin?: string;
  media?: boolean;
  mediaSeconds?: number;
  bulkSize?: number;
  /** Time for the page to report after Firefox starts (default 120 s). */
  timeoutMs?: number;
  /** Extra time the whole run may take beyond timeoutMs before it is killed (default 60 s). */
  graceMs?: number;
  keepProfile?: boolean;
  /**
   * 'none' (default): one Firefox page, two RTCPeerConnections. 'chromium': Firefox (pc1,
   * offerer, creates the data channels) calls headless Chromium (pc2) via playwright-core,
   * signalling through the local HTTP server. Only Firefox writes a key log.
   */
  peer?: 'none' | 'chromium';
  chromiumBin?: string;
  /** Receives the runner's progress lines (default: written only to runner.log). */
  onLog?: (line: string) => void;
}

export interface FirefoxCallResult {
  outDir: string;
  pcap: string;
  keylog: string;
  reportPath: string;
  report: PageReport;
  run: RunInfo;
  netns: boolean;
  exitCode: number | null;
}

let netnsOk: boolean | undefined;
/** True when this process may create a network namespace (root or CAP_SYS_ADMIN) and has `ip`. */
export function netnsPermitted(): boolean {
  if (netnsOk === undefined) {
    const r = spawnSync('unshare', ['-n', 'ip', 'link', 'set', 'lo', 'up'], { stdio: 'ignore' });
    netnsOk = r.status === 0;
  }
  return netnsOk;
}

export async function runFirefoxCall(opts: FirefoxCallOptions): Promise<FirefoxCallResult> {
  const outDir = resolve(opts.outDir);
  mkdirSync(outDir, { recursive: true });
  const workDir = mkdtempSync(join(tmpdir(), 'gh-ff-'));
  const netns = opts.netns === 'auto' || opts.netns === undefined ? netnsPermitted() : opts.netns;
  const password = opts.turn?.password ?? 'p' + Math.random().toString(36).slice(2, 12);
  const cfg: RunnerConfig = {
    outDir,
    workDir,
    dtls: opts.dtls ?? '1.3',
    netns,
    turn: {
      argv: opts.turn?.argv ?? [...COTURN_ARGV],
      username: opts.turn?.username ?? 'gh',
      password,
      realm: opts.turn?.realm ?? 'gatehouse',
      port: opts.turn?.port,
      minPort: opts.turn?.minPort,
      maxPort: opts.turn?.maxPort,
      env: opts.turn?.env,
    },
    firefoxBin: opts.firefoxBin ?? 'firefox-esr',
    capture: true,
    media: opts.media ?? true,
    mediaSeconds: opts.mediaSeconds ?? 3,
    bulkSize: opts.bulkSize ?? 150000,
    timeoutMs: opts.timeoutMs ?? 120000,
    lingerMs: 500,
    keepProfile: opts.keepProfile ?? false,
    peer: opts.peer ?? 'none',
    chromiumBin: opts.chromiumBin ?? '/usr/bin/chromium',
  };
  const cfgPath = join(workDir, 'runner-config.json');
  writeFileSync(cfgPath, JSON.stringify(cfg));

  const require = createRequire(import.meta.url);
  const tsxCli = require.resolve('tsx/cli');
  const nodeArgs = [tsxCli, join(here, 'ns-runner.ts'), cfgPath];
  const cmd = netns ? 'unshare' : process.execPath;
  const args = netns ? ['-n', '--', process.execPath, ...nodeArgs] : nodeArgs;
  const logStream = createWriteStream(join(outDir, 'runner.log'));
  if (!netns) logStream.write('harness: unshare -n not permitted; running in the host network namespace\n');
  // detached: the runner leads its own process group, which all its children share, so a
  // last-resort kill of that group (by its id) reaps Firefox, the TURN server and dumpcap.
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true, cwd: resolve(here, '../..') });
  const onData = (d: Buffer) => {
    logStream.write(d);
    if (opts.onLog) for (const l of d.toString().split('\n')) if (l) opts.onLog(l);
  };
  child.stdout!.on('data', onData);
  child.stderr!.on('data', onData);
  const limit = cfg.timeoutMs + (opts.graceMs ?? 60000);
  let timedOut = false;
  const exitCode = await new Promise<number | null>((res) => {
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }, limit);
    child.on('exit', (code) => {
      clearTimeout(timer);
      res(code);
    });
    child.on('error', () => {
      clearTimeout(timer);
      res(null);
    });
  });
  // Reap anything left in the runner's process group (normally nothing), and Chromium's
  // own process group when the runner recorded it.
  try {
    process.kill(-child.pid!, 'SIGKILL');
  } catch {
    /* none left */
  }
  try {
    const cpid = Number(readFileSync(join(workDir, 'chromium.pid'), 'utf8'));
    if (cpid > 1) process.kill(-cpid, 'SIGKILL');
  } catch {
    /* no Chromium, or already gone */
  }
  await new Promise<void>((r) => logStream.end(() => r()));
  if (!cfg.keepProfile) rmSync(workDir, { recursive: true, force: true });

  const reportPath = join(outDir, 'report.json');
  const raw: Partial<PageReport> = existsSync(reportPath)
    ? JSON.parse(readFileSync(reportPath, 'utf8'))
    : { ok: false, errors: [timedOut ? 'harness timed out' : 'no report'] };
  // Failure reports (timeouts, early exits) carry only ok/errors: normalise.
  const report: PageReport = { ...raw, ok: raw.ok === true, sent: raw.sent ?? [], received: raw.received ?? [], errors: raw.errors ?? [] };
  const runPath = join(outDir, 'run.json');
  const run: RunInfo = existsSync(runPath)
    ? JSON.parse(readFileSync(runPath, 'utf8'))
    : {
        dtls: cfg.dtls,
        netns,
        startedAt: '',
        files: {} as RunInfo['files'],
        turn: {} as RunInfo['turn'],
        firefoxVersion: '',
        ok: false,
        errors: ['runner wrote no run.json'],
      };
  return { outDir, pcap: join(outDir, 'capture.pcap'), keylog: join(outDir, 'keylog.txt'), reportPath, report, run, netns, exitCode };
}

// CLI
if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const a = process.argv.slice(2);
  const get = (k: string) => {
    const i = a.indexOf(k);
    return i >= 0 ? a[i + 1] : undefined;
  };
  const outDir = get('--out');
  if (!outDir) {
    process.stderr.write(
      'usage: harness.ts --out DIR [--dtls 1.2|1.3] [--media-seconds N] [--no-media] [--turn-argv JSON] [--timeout MS] [--keep-profile] [--no-netns] [--chromium]\n',
    );
    process.exit(2);
  }
  const dtls = (get('--dtls') ?? '1.3') as DtlsVersion;
  const turnArgv = get('--turn-argv');
  const r = await runFirefoxCall({
    outDir,
    dtls,
    media: !a.includes('--no-media'),
    mediaSeconds: get('--media-seconds') ? Number(get('--media-seconds')) : undefined,
    timeoutMs: get('--timeout') ? Number(get('--timeout')) : undefined,
    keepProfile: a.includes('--keep-profile'),
    netns: a.includes('--no-netns') ? false : 'auto',
    peer: a.includes('--chromium') ? 'chromium' : 'none',
    turn: turnArgv ? { argv: JSON.parse(turnArgv) } : undefined,
    onLog: (l) => process.stderr.write(l + '\n'),
  });
  process.stdout.write(
    JSON.stringify(
      {
        ok: r.report.ok,
        netns: r.netns,
        exitCode: r.exitCode,
        outDir: r.outDir,
        sent: r.report.sent.length,
        received: r.report.received.length,
        errors: r.report.errors,
      },
      null,
      1,
    ) + '\n',
  );
  process.exit(r.report.ok ? 0 : 1);
}
