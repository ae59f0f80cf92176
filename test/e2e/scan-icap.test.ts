/**
 * Malware scanning against a real ICAP and AV chain (issue 9): clamd (clamav-daemon) with a
 * signature database this test makes (sigtool SHA-256 hash signatures, `.hsb`, of generated
 * files; no freshclam download), and c-icap's virus_scan service (libc-icap-mod-virus-scan)
 * using the clamd engine (clamd_mod) over clamd's unix socket. The Gatehouse clients speak
 * RFC 3507 RESPMOD and REQMOD to c-icap, and clamd's INSTREAM directly (unix and TCP).
 */
import t from 'tap';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ClamdScanner } from '../../src/scan/clamd.js';
import { GuardedScanner } from '../../src/scan/guard.js';
import { IcapScanner } from '../../src/scan/icap.js';
import { scannersFromConfig } from '../../src/scan/index.js';
import { defaultConfig } from '../../src/config/config.js';
import { SCAN_EVERY_FILE_TYPE, clamdPing, exited, waitReady } from './helpers/av-chain.js';
import { cIcapModulesDir, findProgram, peerSkip } from './helpers/require-peer.js';
import { reservePortBlock } from './helpers/ports.js';

const skip = peerSkip(t, 'c-icap', 'c-icap-virus-scan', 'clamd', 'sigtool');

async function* pieces(b: Buffer, n: number): AsyncGenerator<Buffer> {
  for (let o = 0; o < b.length; o += n) yield b.subarray(o, o + n);
}

/** Polls `probe` every 100 ms until it is true, at most `ms`; throws with `what` otherwise. */
/** clamd's zPING\0 → PONG\0 on the unix socket. */
t.test('c-icap virus_scan over clamd with a sigtool-made database', { skip }, async (t) => {
  const work = mkdtempSync(join(tmpdir(), 'gh-scan-'));
  const procs: ChildProcess[] = [];
  const ports = await reservePortBlock(10);
  t.teardown(async () => {
    for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGTERM');
    await Promise.all(procs.map(exited));
    ports.release();
    rmSync(work, { recursive: true, force: true });
  });

  // Files: two infected (one inside c-icap's 1024-byte preview, one far beyond it) and two clean.
  const small = randomBytes(700);
  // It starts like an MP3 frame (c-icap.magic: STREAM): a scanner told to scan only some
  // file types would let it through; it is infected all the same (SCAN_EVERY_FILE_TYPE).
  small.write('\xff\xfb', 0, 'latin1');
  const large = randomBytes(300 * 1024 + 17);
  const cleanSmall = randomBytes(900);
  const cleanLarge = randomBytes(256 * 1024);
  writeFileSync(join(work, 'small.bin'), small);
  writeFileSync(join(work, 'large.bin'), large);
  const sig = spawnSync('sigtool', ['--sha256', join(work, 'small.bin'), join(work, 'large.bin')], { encoding: 'utf8' });
  t.equal(sig.status, 0, `sigtool --sha256: ${sig.stderr}`);
  // hash:size:name; the name becomes the virus name (clamd adds .UNOFFICIAL).
  const lines = sig.stdout.trim().split('\n');
  t.equal(lines.length, 2, 'one hash signature per file');
  const db = lines.map((l, i) => l.replace(/:[^:]*$/, `:Gatehouse.Test.${i === 0 ? 'Small' : 'Large'}`)).join('\n') + '\n';
  t.match(db, /^[0-9a-f]{64}:700:Gatehouse\.Test\.Small\n[0-9a-f]{64}:307217:Gatehouse\.Test\.Large\n$/);
  rmSync(join(work, 'small.bin'));
  rmSync(join(work, 'large.bin'));
  const dbDir = join(work, 'db');
  spawnSync('mkdir', [dbDir]);
  writeFileSync(join(dbDir, 'gatehouse-test.hsb'), db);

  // clamd: foreground, unix socket and loopback TCP, our database only.
  const sock = join(work, 'clamd.sock');
  const clamdTcp = ports.port(0);
  writeFileSync(
    join(work, 'clamd.conf'),
    [
      'Foreground yes',
      `LocalSocket ${sock}`,
      `TCPSocket ${clamdTcp}`,
      'TCPAddr 127.0.0.1',
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
  const clamdMs = await waitReady('clamd', 60_000, () => clamdPing(sock), clamd).catch((e) => {
    throw new Error(
      `${(e as Error).message}\n${clamdErr}\n${existsSync(join(work, 'clamd.log')) ? readFileSync(join(work, 'clamd.log'), 'utf8') : ''}`,
    );
  });
  t.pass(`clamd answers PING after ${clamdMs} ms`);
  t.match(readFileSync(join(work, 'clamd.log'), 'utf8'), /Loaded 2 signatures/, 'clamd loaded exactly the two test signatures');

  // c-icap: foreground, loopback, virus_scan with the clamd engine on the unix socket.
  const icapPort = ports.port(1);
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
      // srv_clamav: the default mode, which may start sending a large object back before
      // the scan ends (then a virus found truncates it: "partiallyblocked", no headers).
      // gatehouse_av: mode=simple (nothing sent before the verdict), as a gateway that holds
      // the file until the verdict wants; the Debian default config has the same alias (avscan).
      'ServiceAlias srv_clamav virus_scan',
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
  const urlEarly = `icap://127.0.0.1:${icapPort}/srv_clamav`;
  const probe = new IcapScanner({ url, timeoutMs: 2000 });
  const icapMs = await waitReady(
    'c-icap',
    30_000,
    () =>
      probe.options().then(
        () => true,
        () => false,
      ),
    icap,
  );
  t.pass(`c-icap answers OPTIONS after ${icapMs} ms`);

  await t.test('OPTIONS (RFC 3507 §4.10): methods, preview, ISTag, Allow 204', async (t) => {
    const o = await new IcapScanner({ url, timeoutMs: 5000 }).options();
    t.ok(o.methods.includes('RESPMOD') && o.methods.includes('REQMOD'), `Methods: ${o.methods.join(', ')}`);
    t.type(o.preview, 'number');
    t.ok(o.preview! > 0, `Preview: ${o.preview}`);
    t.match(o.istag, /^"[^"]+"$/, 'ISTag is a quoted string (§4.7)');
    t.equal(o.allow204, true);
    // Both test files are on either side of the preview, so both paths of §4.5 are exercised.
    t.ok(small.length <= o.preview! && large.length > o.preview!, 'small fits the preview (ieof), large needs 100 Continue');
  });

  for (const method of ['RESPMOD', 'REQMOD'] as const) {
    await t.test(`${method}: infected files found with the signature name, clean files pass`, async (t) => {
      const s = new IcapScanner({ url, timeoutMs: 10_000, method });
      t.same(await s.scan(small, { name: 'small.bin', size: small.length }), {
        verdict: 'infected',
        virus: 'Gatehouse.Test.Small.UNOFFICIAL',
        reason: 'icap: infection reported',
      });
      const r = await s.scan(pieces(large, 10_000), { name: 'big file (1).bin', size: large.length });
      t.equal(r.verdict, 'infected');
      t.equal(r.virus, 'Gatehouse.Test.Large.UNOFFICIAL', `beyond the preview (100 Continue): ${JSON.stringify(r)}`);
      t.same(await s.scan(cleanSmall, { name: 'ok.bin', size: cleanSmall.length }), { verdict: 'clean', reason: 'icap: 204 No Content' });
      t.equal((await s.scan(pieces(cleanLarge, 4096), { size: cleanLarge.length })).verdict, 'clean');
      // One byte changed: the hash signature no longer matches.
      const near = Buffer.from(small);
      near[0]! ^= 1;
      t.equal((await s.scan(near, { size: near.length })).verdict, 'clean', 'a one-byte change is clean (hash signature)');
    });
  }

  await t.test('a service that sends early: the truncated answer is a modified response (infected)', async (t) => {
    for (const method of ['RESPMOD', 'REQMOD'] as const) {
      const s = new IcapScanner({ url: urlEarly, timeoutMs: 10_000, method });
      const r = await s.scan(large, { size: large.length });
      t.same(r, { verdict: 'infected', reason: `icap: modified ${method === 'RESPMOD' ? 'response' : 'request'} body` }, method);
      // The same large file when clean comes back whole: 200 with the unmodified message.
      t.same(await s.scan(cleanLarge, { size: cleanLarge.length }), { verdict: 'clean', reason: 'icap: 200, message unmodified' }, method);
      t.equal(
        (await s.scan(small, { size: small.length })).virus,
        'Gatehouse.Test.Small.UNOFFICIAL',
        `${method}: within the preview the name is sent`,
      );
    }
  });

  await t.test('clamd INSTREAM over the unix socket and over TCP gives the same verdicts', async (t) => {
    for (const address of [`unix:${sock}`, `tcp://127.0.0.1:${clamdTcp}`]) {
      const c = new ClamdScanner({ address, timeoutMs: 10_000 });
      t.same(
        await c.scan(small, { size: small.length }),
        { verdict: 'infected', virus: 'Gatehouse.Test.Small.UNOFFICIAL', reason: 'clamd: FOUND' },
        address,
      );
      t.equal((await c.scan(pieces(large, 100_000), { size: large.length })).virus, 'Gatehouse.Test.Large.UNOFFICIAL', address);
      t.same(await c.scan(cleanLarge, { size: cleanLarge.length }), { verdict: 'clean' }, address);
    }
  });

  await t.test('the configured scanners block the infected file with the virus name; concurrency bounded', async (t) => {
    const cfg = { ...defaultConfig().scan, icap: url, clamd: `unix:${sock}`, max_concurrent: 2 };
    const { icap: gi, clamd: gc } = scannersFromConfig(cfg);
    const files = [small, cleanSmall, large, cleanLarge, small, cleanSmall];
    let maxInFlight = 0;
    const results = await Promise.all(
      files.map((f) => {
        const p = gi!.scan(f, { size: f.length });
        maxInFlight = Math.max(maxInFlight, gi!.stats.in_flight);
        return p;
      }),
    );
    t.same(
      results.map((r) => [r.verdict, r.block, r.virus ?? null]),
      [
        ['infected', true, 'Gatehouse.Test.Small.UNOFFICIAL'],
        ['clean', false, null],
        ['infected', true, 'Gatehouse.Test.Large.UNOFFICIAL'],
        ['clean', false, null],
        ['infected', true, 'Gatehouse.Test.Small.UNOFFICIAL'],
        ['clean', false, null],
      ],
    );
    t.equal(maxInFlight, 2, 'never more than max_concurrent scans in flight');
    t.match(gi!.stats, { scans: 6, clean: 3, infected: 3, failed_open: 0, failed_closed: 0, in_flight: 0, queued: 0 });
    const r = await gc!.scan(large, { size: large.length });
    t.match(r, { verdict: 'infected', block: true, virus: 'Gatehouse.Test.Large.UNOFFICIAL', scanner: 'clamd' });
  });

  await t.test('c-icap stopped: the next transfer follows fail_open, and is counted', async (t) => {
    const closed = new GuardedScanner(new IcapScanner({ url, timeoutMs: 5000 }), { timeoutMs: 5000, failOpen: false, maxConcurrent: 4 });
    const open = new GuardedScanner(new IcapScanner({ url, timeoutMs: 5000 }), { timeoutMs: 5000, failOpen: true, maxConcurrent: 4 });
    // Both learned OPTIONS while c-icap ran (cached): the failure is on the transfer itself.
    t.equal((await closed.scan(cleanSmall, { size: cleanSmall.length })).verdict, 'clean');
    t.equal((await open.scan(cleanSmall, { size: cleanSmall.length })).verdict, 'clean');
    icap.kill('SIGTERM');
    await exited(icap);
    await waitReady('c-icap port closed', 10_000, () =>
      new IcapScanner({ url, timeoutMs: 1000 }).options().then(
        () => false,
        () => true,
      ),
    );

    const c = await closed.scan(small, { name: 'x.bin', size: small.length });
    t.match(c, { verdict: 'unscanned', block: true, error: 'unreachable', scanner: 'icap' });
    t.match(c.reason, /ECONNREFUSED/);
    t.match(closed.stats, { scans: 2, clean: 1, infected: 0, failed_closed: 1, failed_open: 0, errors: { unreachable: 1 } });

    const o = await open.scan(cleanSmall, { size: cleanSmall.length });
    t.match(o, { verdict: 'clean', block: false, error: 'unreachable' });
    t.match(o.reason, /fail_open/);
    t.match(open.stats, { scans: 2, clean: 1, failed_open: 1, failed_closed: 0, errors: { unreachable: 1 } });

    // clamd itself still answers: scanning without ICAP (INSTREAM) is unaffected.
    const direct = await new ClamdScanner({ address: `unix:${sock}`, timeoutMs: 5000 }).scan(small, { size: small.length });
    t.equal(direct.verdict, 'infected');
  });
});
