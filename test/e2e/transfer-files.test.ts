// Issue 9 (files as people send them), against a spawned `gatehouse serve` with keys
// escrowed by `gatehouse endpoint` (the compliant agent) calling a plain werift answerer:
// (a) `--send-file` of 1 MB (a JSON header, then 16 KiB binary messages, as the WebRTC
//     samples and Snapdrop do) is ONE `file` event with the file's SHA-256, and a
//     `record` rule's recording holds it once under files/<sha256>; `gatehouse verify` passes;
// (b) a `sha256_list` rule (block) naming that hash blocks the flow before the answerer
//     has the whole file (the bytes it got are counted);
// (c) a single 200 KB message is one `file` event with its SHA-256.
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runEndpoint } from '../../src/cli/endpoint.js';
import { startGatehouse, REPO_ROOT, type TurnServer } from './helpers/turn-servers.js';
import { closeLeftoverUdpSockets, pinGateway, readEvents, until, type GwEvent } from './helpers/escrow-events.js';
import { captureIo } from './helpers/run.js';

const KEYS = `keys:
  required: true
  deadline: 20s
  unverified: hold
  media: true
  data: true
  block_for: 5m
`;

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

interface AnswerSummary {
  receivedFiles: Array<{ name: string; size: number; sha256: string; ok: boolean }>;
  receivedBytes: number;
}

/** One call: the agent (offer, escrow) sends `file`; a plain werift answerer receives. */
async function call(
  gh: TurnServer,
  work: string,
  name: string,
  file: string,
  extra: string[] = [],
  hold = 3,
): Promise<{ rcOffer: number; rcAnswer: number; off: ReturnType<typeof captureIo>; ans: ReturnType<typeof captureIo>; sa: AnswerSummary }> {
  const gw = await pinGateway(gh.adminUrl!);
  const sig = join(work, `signal-${name}`);
  const off = captureIo();
  const ans = captureIo();
  const [rcOffer, rcAnswer] = await Promise.all([
    runEndpoint(
      [
        '--role',
        'offer',
        '--signal-dir',
        sig,
        '--turn',
        gh.url('udp'),
        '--user',
        'alice',
        '--password',
        'alice-secret-pw',
        '--gateway-cert-fingerprint',
        gw.fingerprint,
        '--gateway-cert-url',
        gw.url,
        '--consent',
        'always',
        '--send-file',
        file,
        ...extra,
        '--hold',
        String(hold),
        '--timeout',
        '90',
        '--json',
      ],
      off.io,
    ),
    runEndpoint(['--role', 'answer', '--signal-dir', sig, '--no-escrow', '--hold', String(hold + 3), '--timeout', '90', '--json'], ans.io),
  ]);
  const sa = JSON.parse(ans.out() || '{"receivedFiles":[],"receivedBytes":-1}') as AnswerSummary;
  return { rcOffer, rcAnswer, off, ans, sa };
}

type FileEve = GwEvent['file'] & { name?: string; index?: number; transfer?: { messages: number; end: string; announced_size?: number } };
const files = (evs: GwEvent[]) => evs.filter((e) => e.event_type === 'file').map((e) => e.file as FileEve);

t.test('1 MB in 16 KiB chunks and a 200 KB message: one file event each; recorded once; verify passes', { timeout: 300_000 }, async (t) => {
  const work = mkdtempSync(join(tmpdir(), 'gh-transfer-'));
  const gh = await startGatehouse({
    rules: `${KEYS}rules:\n  - { id: rec-alice, when: { user: [alice] }, action: record }\n`,
    users: [{ name: 'alice', password: 'alice-secret-pw' }],
    transports: ['udp'],
    logLevel: 'info',
    keepWorkDir: true,
  });
  let stopped = false;
  t.teardown(async () => {
    closeLeftoverUdpSockets();
    if (!stopped) await gh.stop();
    rmSync(gh.workDir, { recursive: true, force: true });
    rmSync(work, { recursive: true, force: true });
  });
  const big = randomBytes(1024 * 1024);
  const bigFile = join(work, 'big.bin');
  writeFileSync(bigFile, big);
  const bigSha = sha256(big);
  const a = await call(gh, work, 'big', bigFile);
  t.equal(a.rcOffer, 0, `offerer ok: ${a.off.err()}`);
  t.equal(a.rcAnswer, 0, `answerer ok: ${a.ans.err()}`);
  t.same(
    a.sa.receivedFiles.map((f) => [f.name, f.size, f.sha256, f.ok]),
    [['big.bin', big.length, bigSha, true]],
    'the answerer got the whole file',
  );

  const one = randomBytes(200 * 1024);
  const oneFile = join(work, 'one.bin');
  writeFileSync(oneFile, one);
  const oneSha = sha256(one);
  const c = await call(gh, work, 'one', oneFile, ['--chunk-size', '0']);
  t.equal(c.rcOffer, 0, `offerer ok: ${c.off.err()}`);
  t.equal(c.sa.receivedFiles[0]?.sha256, oneSha, 'the answerer got the 200 KB message');

  let evs: GwEvent[] = [];
  await until(
    () => {
      evs = readEvents(gh.dataDir!);
      return files(evs).some((f) => f.sha256 === bigSha) && files(evs).some((f) => f.sha256 === oneSha);
    },
    30_000,
    'file events',
    () => `events: ${evs.map((e) => e.event_type).join(', ')}\n${gh.output()}`,
  );
  await new Promise((r) => setTimeout(r, 2500)); // a late duplicate (a pause-ended transfer) would show by now
  evs = readEvents(gh.dataDir!);
  const bigEvs = files(evs).filter((f) => f.sha256 === bigSha);
  t.equal(bigEvs.length, 1, 'exactly one file event with the 1 MB file’s SHA-256');
  t.match(bigEvs[0], {
    size: big.length,
    name: 'big.bin',
    label: 'file:big.bin',
    transfer: { messages: 64, end: 'size', announced_size: big.length },
  });
  const bigTransfers = files(evs).filter((f) => f.label === 'file:big.bin' && f.transfer);
  t.equal(bigTransfers.length, 1, 'one transfer on the channel');
  const chunks = files(evs).filter((f) => f.label === 'file:big.bin' && f.index !== undefined);
  t.equal(chunks.length, 64, 'the 64 chunks remain per-message file events (with index)');
  const oneEvs = files(evs).filter((f) => f.sha256 === oneSha);
  t.equal(oneEvs.length, 1, 'exactly one file event with the 200 KB message’s SHA-256');
  t.equal(oneEvs[0]!.size, one.length);
  t.equal(files(evs).filter((f) => f.label === 'file:one.bin').length, 1, 'and no other file event on its channel');

  // The 1 MB transfer went through DATA_DIR/spool (recorded: beyond 64 KiB on disk); its
  // spool file is gone once recorded.
  t.ok(existsSync(join(gh.dataDir!, 'spool')), 'DATA_DIR/spool exists');
  t.same(readdirSync(join(gh.dataDir!, 'spool')), [], 'no spool file left after the transfers');

  // Stopping serve seals the recordings.
  await gh.stop();
  stopped = true;
  const recs = join(gh.dataDir!, 'recordings');
  const dirs = readdirSync(recs).filter((d) => !d.endsWith('.json') && d !== 'certs');
  const withBig = dirs.filter((d) => existsSync(join(recs, d, 'files', bigSha)));
  t.equal(withBig.length, 1, `one recording holds files/${bigSha}: ${dirs.join(', ')}`);
  const rdir = join(recs, withBig[0]!);
  t.same(readFileSync(join(rdir, 'files', bigSha)), big, 'byte for byte');
  const stored = readdirSync(join(rdir, 'files'));
  t.same(stored, [bigSha], 'the file once, and no chunk objects');
  const manifest = JSON.parse(readFileSync(join(rdir, 'manifest.json'), 'utf8')) as { files: Record<string, unknown> };
  t.ok(manifest.files[`files/${bigSha}`], 'the manifest covers it');
  const transcript = readdirSync(rdir).filter((f) => /^dc-\d+\.jsonl$/.test(f));
  const lines = transcript.flatMap((f) =>
    readFileSync(join(rdir, f), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>),
  );
  const tl = lines.filter((l) => l.event === 'file' && l.sha256 === bigSha);
  t.equal(tl.length, 1, 'the transcript names the transfer once');
  t.match(tl[0], { name: 'big.bin', size: big.length, file: `files/${bigSha}`, transfer: { messages: 64 } });
  t.equal(lines.filter((l) => l.event === 'message' && l.transfer === bigSha).length, 64, 'each chunk listed, naming it');
  const v = spawnSync(process.execPath, [join(REPO_ROOT, 'bin', 'gatehouse.js'), 'verify', recs], { encoding: 'utf8', timeout: 60_000 });
  t.equal(v.status, 0, `gatehouse verify exits 0: ${v.stdout}${v.stderr}`);
  // The 200 KB message: stored once too (own recording).
  t.ok(
    dirs.some((d) => existsSync(join(recs, d, 'files', oneSha))),
    'the 200 KB message is recorded under its SHA-256',
  );
});

t.test('a sha256_list block rule naming the 1 MB file blocks before the answerer has it', { timeout: 300_000 }, async (t) => {
  const work = mkdtempSync(join(tmpdir(), 'gh-transfer-block-'));
  const big = randomBytes(1024 * 1024);
  const bigFile = join(work, 'big.bin');
  writeFileSync(bigFile, big);
  const bigSha = sha256(big);
  const list = join(work, 'bad-hashes.txt');
  writeFileSync(list, `# known bad\n${randomBytes(32).toString('hex')}\n${bigSha}\n`);
  const gh = await startGatehouse({
    rules: `${KEYS}rules:\n  - { id: bad-file, when: { sha256_list: ${JSON.stringify(list)} }, action: block }\n`,
    users: [{ name: 'alice', password: 'alice-secret-pw' }],
    transports: ['udp'],
    logLevel: 'info',
    keepWorkDir: true,
  });
  t.teardown(async () => {
    closeLeftoverUdpSockets();
    await gh.stop();
    rmSync(gh.workDir, { recursive: true, force: true });
    rmSync(work, { recursive: true, force: true });
  });
  const b = await call(gh, work, 'block', bigFile, [], 4);
  t.equal(b.sa.receivedFiles.length, 0, 'the answerer never completed the file');
  t.ok(b.sa.receivedBytes >= 0 && b.sa.receivedBytes < big.length, `the answerer got ${b.sa.receivedBytes} of ${big.length} bytes`);
  let evs: GwEvent[] = [];
  await until(
    () => {
      evs = readEvents(gh.dataDir!);
      return evs.some((e) => e.event_type === 'flow_blocked');
    },
    30_000,
    'flow_blocked',
    () => `events: ${evs.map((e) => e.event_type).join(', ')}\n${gh.output()}`,
  );
  const whole = files(evs).filter((f) => f.sha256 === bigSha);
  t.equal(whole.length, 1, 'one file event with the file’s SHA-256 (the verdict’s)');
  t.ok(
    evs.some((e) => e.event_type === 'alert' && JSON.stringify(e).includes('bad-file')),
    'the rule matched',
  );
  t.comment(`answerer received ${b.sa.receivedBytes} bytes of ${big.length}`);
});
