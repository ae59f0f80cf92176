/**
 * Issue 9 end to end through the gateway's inspector: a data-channel transfer (JSON header
 * and 16 KiB messages in a synthetic DTLS association, the unit rig of
 * test/unit/gateway/scan-hold.test.ts) judged by a `scan:` rule against a real ICAP and AV
 * chain started here: clamd (clamav-daemon) with a sigtool SHA-256 hash signature (`.hsb`)
 * of a generated file, and c-icap's virus_scan service (libc-icap-mod-virus-scan) over
 * clamd's unix socket, spoken to with RFC 3507 RESPMOD. The infected file is withheld and
 * the flow blocked with the virus name in the alert; a clean one passes whole; clamd's
 * INSTREAM judges alike without ICAP; with c-icap stopped the next transfer follows
 * scan.fail_open.
 */
import t from 'tap';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { IcapScanner } from '../../src/scan/icap.js';
import { scannersFromConfig } from '../../src/scan/index.js';
import { defaultConfig } from '../../src/config/config.js';
import { ManualClock } from '../../src/util/clock.js';
import { MemoryEventSink } from '../../src/events/eve.js';
import { GatewayInspector } from '../../src/gateway/inspector.js';
import { PolicyEngine } from '../../src/policy/engine.js';
import { parseRuleFile } from '../../src/policy/rules-schema.js';
import type { Flow } from '../../src/turn/flow.js';
import { syntheticSession, SctpBuilder } from '../unit/inspect/pipeline-helpers.js';
import { testIdentity } from '../unit/gateway/escrow-helpers.js';
import { SCAN_EVERY_FILE_TYPE, clamdPing, exited, waitReady } from './helpers/av-chain.js';
import { cIcapModulesDir, findProgram, peerSkip } from './helpers/require-peer.js';
import { reservePortBlock } from './helpers/ports.js';

const skip = peerSkip(t, 'c-icap', 'c-icap-virus-scan', 'clamd', 'sigtool');
const CHUNK = 16 * 1024;

/** One flow through a GatewayInspector whose `scan:` rule uses the configured scanners. */
async function rig(scanCfg: { icap?: string; clamd?: string; fail_open: boolean }, scanner: 'icap' | 'clamd') {
  const cfg = { ...defaultConfig().scan, icap: scanCfg.icap ?? null, clamd: scanCfg.clamd ?? null, fail_open: scanCfg.fail_open };
  cfg.timeout_ms = 5000;
  const scanners = scannersFromConfig(cfg);
  const engine = new PolicyEngine([
    parseRuleFile(
      `keys: { required: false, unverified: pass }
rules:
  - { id: av, description: Malware, when: { scan: ${scanner} }, action: block }
`,
      'rules.yaml',
      { scanners: new Set([...(cfg.icap ? ['icap' as const] : []), ...(cfg.clamd ? ['clamd' as const] : [])]) },
    ),
  ]);
  const events = new MemoryEventSink();
  const inspector = new GatewayInspector({
    policy: () => engine,
    identity: await testIdentity(),
    events,
    clock: new ManualClock(),
    transfers: { maxFileBytes: 100 * 1024 * 1024, pauseMs: 2000 },
    scanners: { icap: scanners.icap, clamd: scanners.clamd, failOpen: cfg.fail_open },
  });
  const closed: string[] = [];
  const sent: Buffer[] = [];
  inspector.setRelay({ send: (_f, _d, data) => void sent.push(data), close: (_f, reason) => void closed.push(reason) });
  const flow: Flow = {
    id: 1,
    allocationId: 'alloc-1',
    user: 'alice',
    groups: [],
    client: { proto: 'udp', address: '192.0.2.10', port: 50000 },
    relayed: { address: '127.0.0.1', port: 49200 },
    peerAddress: '198.51.100.7',
    createdAt: 0,
    open: true,
    ctx: undefined,
  };
  inspector.onFlowCreated(flow);
  const s = syntheticSession();
  for (const h of s.hello) inspector.onPacket(flow, h.fromClient ? 'c2p' : 'p2c', h.data, 5000);
  inspector.applyKeySet(flow, s.keySet);
  const sctp = new SctpBuilder();
  let lastDatagram: Buffer | null = null;
  const send = (plain: Buffer) => {
    lastDatagram = s.appData(true, plain);
    return inspector.onPacket(flow, 'c2p', lastDatagram, 5000);
  };
  send(sctp.init());
  send(sctp.open(1, 'file:payload.bin'));
  const guarded = (scanner === 'icap' ? scanners.icap : scanners.clamd)!;
  /** Sends a file; resolves once its scan answered (the guard's counters moved). */
  const transfer = async (file: Buffer, name: string) => {
    const before = guarded.stats.clean + guarded.stats.infected + guarded.stats.failed_open + guarded.stats.failed_closed;
    const verdicts = [send(sctp.message(1, Buffer.from(JSON.stringify({ name, size: file.length }))))];
    for (let o = 0; o < file.length; o += CHUNK)
      for (const frag of sctp.fragmented(1, file.subarray(o, o + CHUNK), 1200)) verdicts.push(send(frag));
    const final = lastDatagram!;
    await waitReady('scan verdict', 15_000, async () => {
      const now = guarded.stats.clean + guarded.stats.infected + guarded.stats.failed_open + guarded.stats.failed_closed;
      return now > before;
    });
    await sleep(20); // the verdict's continuation
    return { verdicts, final };
  };
  return { inspector, events, closed, sent, transfer, guarded };
}

t.test('scan: icap and scan: clamd rules against c-icap + clamd', { skip }, async (t) => {
  const work = mkdtempSync(join(tmpdir(), 'gh-scangw-'));
  const procs: ChildProcess[] = [];
  const ports = await reservePortBlock(4);
  t.teardown(async () => {
    for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGTERM');
    await Promise.all(procs.map(exited));
    ports.release();
    rmSync(work, { recursive: true, force: true });
  });

  const infected = randomBytes(150_000);
  const clean = randomBytes(150_000);
  writeFileSync(join(work, 'infected.bin'), infected);
  const sig = spawnSync('sigtool', ['--sha256', join(work, 'infected.bin')], { encoding: 'utf8' });
  t.equal(sig.status, 0, `sigtool --sha256: ${sig.stderr}`);
  const db = sig.stdout.trim().replace(/:[^:]*$/, ':Gatehouse.Test.Transfer') + '\n';
  t.match(db, /^[0-9a-f]{64}:150000:Gatehouse\.Test\.Transfer\n$/);
  rmSync(join(work, 'infected.bin'));
  const dbDir = join(work, 'db');
  mkdirSync(dbDir);
  writeFileSync(join(dbDir, 'gatehouse-test.hsb'), db);

  const sock = join(work, 'clamd.sock');
  writeFileSync(
    join(work, 'clamd.conf'),
    [
      'Foreground yes',
      `LocalSocket ${sock}`,
      `DatabaseDirectory ${dbDir}`,
      `LogFile ${join(work, 'clamd.log')}`,
      `PidFile ${join(work, 'clamd.pid')}`,
      `TemporaryDirectory ${work}`,
      'SelfCheck 0',
      '',
    ].join('\n'),
  );
  const clamd = spawn(findProgram('clamd')!, ['-c', join(work, 'clamd.conf')], { stdio: ['ignore', 'ignore', 'pipe'] });
  procs.push(clamd);
  let clamdErr = '';
  clamd.stderr!.on('data', (d) => (clamdErr += d));
  await waitReady('clamd', 60_000, () => clamdPing(sock), clamd).catch((e) => {
    throw new Error(`${(e as Error).message}\n${clamdErr}`);
  });
  t.match(readFileSync(join(work, 'clamd.log'), 'utf8'), /Loaded 1 signature/, 'clamd loaded the test signature');

  const icapPort = ports.port(0);
  const mods = cIcapModulesDir()!;
  writeFileSync(
    join(work, 'c-icap.conf'),
    [
      `PidFile ${join(work, 'c-icap.pid')}`,
      `CommandsSocket ${join(work, 'c-icap.ctl')}`,
      'Timeout 30',
      'StartServers 1',
      'MaxServers 2',
      'MinSpareThreads 2',
      'MaxSpareThreads 8',
      'ThreadsPerChild 8',
      `Port 127.0.0.1:${icapPort}`,
      `TmpDir ${work}`,
      'MaxMemObject 131072',
      'DebugLevel 1',
      `ModulesDir ${mods}`,
      `ServicesDir ${mods}`,
      'TemplateDir /usr/share/c_icap/templates/',
      'TemplateDefaultLanguage en',
      'LoadMagicFile /etc/c-icap/c-icap.magic',
      `ServerLog ${join(work, 'c-icap-server.log')}`,
      `AccessLog ${join(work, 'c-icap-access.log')}`,
      'Module common clamd_mod.so',
      `clamd_mod.ClamdSocket ${sock}`,
      'Service antivirus_module virus_scan.so',
      // mode=simple: nothing is sent back before the verdict (the gateway holds the file anyway).
      'ServiceAlias gatehouse_av virus_scan?allow204=on&mode=simple',
      SCAN_EVERY_FILE_TYPE,
      'virus_scan.MaxObjectSize 5M',
      'virus_scan.DefaultEngine clamd',
      '',
    ].join('\n'),
  );
  const icap = spawn('c-icap', ['-N', '-f', join(work, 'c-icap.conf')], { stdio: ['ignore', 'ignore', 'pipe'] });
  procs.push(icap);
  const url = `icap://127.0.0.1:${icapPort}/gatehouse_av`;
  await waitReady(
    'c-icap',
    30_000,
    () =>
      new IcapScanner({ url, timeoutMs: 2000 }).options().then(
        () => true,
        () => false,
      ),
    icap,
  );

  // Rigs made while c-icap runs; the fail_open ones are used after it stops.
  const closedRig = await rig({ icap: url, fail_open: false }, 'icap');
  const openRig = await rig({ icap: url, fail_open: true }, 'icap');

  await t.test('ICAP: infected withheld and blocked with the virus name; clean passes', async (t) => {
    const r = await rig({ icap: url, fail_open: false }, 'icap');
    const ok = await r.transfer(clean, 'clean.bin');
    t.ok(ok.verdicts.slice(0, -1).every(Boolean), 'everything before the final datagram forwarded');
    t.equal(ok.verdicts.at(-1), false, 'the final datagram held for the scan');
    t.equal(r.sent.length, 1, 'released after the clean verdict');
    t.ok(r.sent[0]!.equals(ok.final), 'the final datagram itself');
    t.same(r.closed, []);
    const bad = await r.transfer(infected, 'evil.bin');
    t.equal(bad.verdicts.at(-1), false);
    t.equal(r.sent.length, 1, 'the infected file’s final datagram never sent');
    t.same(r.closed, ['blocked_policy'], 'flow blocked');
    const alert = r.events.events.find((e) => e.event_type === 'alert');
    t.match(alert, {
      alert: { action: 'blocked', signature_id: 'av', signature: 'Malware: Gatehouse.Test.Transfer.UNOFFICIAL' },
      gatehouse: { virus: 'Gatehouse.Test.Transfer.UNOFFICIAL', scan: { scanner: 'icap', verdict: 'infected' } },
      file: { name: 'evil.bin', size: infected.length },
    });
    t.match(r.guarded.stats, { clean: 1, infected: 1 });
  });

  await t.test('clamd INSTREAM without ICAP: infected blocked, clean passes', async (t) => {
    const r = await rig({ clamd: `unix:${sock}`, fail_open: false }, 'clamd');
    await r.transfer(clean, 'clean.bin');
    t.equal(r.sent.length, 1);
    await r.transfer(infected, 'evil.bin');
    t.same(r.closed, ['blocked_policy']);
    t.match(
      r.events.events.find((e) => e.event_type === 'alert'),
      {
        gatehouse: { virus: 'Gatehouse.Test.Transfer.UNOFFICIAL', scan: { scanner: 'clamd' } },
      },
    );
  });

  await t.test('c-icap stopped: the next transfer follows fail_open', async (t) => {
    icap.kill('SIGTERM');
    await exited(icap);
    await waitReady('c-icap port closed', 10_000, () =>
      new IcapScanner({ url, timeoutMs: 1000 }).options().then(
        () => false,
        () => true,
      ),
    );
    const c = await closedRig.transfer(clean, 'clean.bin');
    t.equal(c.verdicts.at(-1), false);
    t.same(closedRig.sent, [], 'fail_open false: unscanned, withheld');
    t.same(closedRig.closed, ['blocked_policy']);
    t.match(
      closedRig.events.events.find((e) => e.event_type === 'alert'),
      { alert: { signature: 'Malware: unscanned (unreachable)' } },
    );
    t.match(closedRig.guarded.stats, { failed_closed: 1, errors: { unreachable: 1 } });

    const o = await openRig.transfer(clean, 'clean.bin');
    t.equal(o.verdicts.at(-1), false);
    t.equal(openRig.sent.length, 1, 'fail_open true: released');
    t.same(openRig.closed, []);
    t.match(openRig.guarded.stats, { failed_open: 1, errors: { unreachable: 1 } });
  });
});
