import t from 'tap';
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { createHash } from 'node:crypto';
import { ManualClock } from '../../../src/util/clock.js';
import { applyRetention, RecordingStore, type FlowRecorder } from '../../../src/record/recorder.js';
import { verifyRecordings, ANCHOR } from '../../../src/record/manifest.js';
import { runVerify } from '../../../src/cli/verify.js';
import type { InspectEvent } from '../../../src/inspect/events.js';
import { testSigner } from './identity-helper.js';

const work = mkdtempSync(join(tmpdir(), 'gh-rec-manifest-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

function sink(): { w: Writable; text: () => string } {
  let s = '';
  return {
    w: new Writable({
      write(c, _e, cb) {
        s += String(c);
        cb();
      },
    }),
    text: () => s,
  };
}

async function verifyCli(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const o = sink();
  const e = sink();
  const code = await runVerify(args, { stdout: o.w, stderr: e.w });
  return { code, out: o.text(), err: e.text() };
}

const flow = (n: number) => ({
  flowId: `flow-${n}`,
  client: { ip: '192.0.2.1', port: 5000 + n },
  peer: { ip: '192.0.2.2', port: 6000 + n },
});

/** Feeds a recorder some RTP (fake opus payloads) and data channel traffic. */
function feed(rec: FlowRecorder, clock: ManualClock, n = 20): void {
  const t0 = clock.now();
  rec.onEvent({ type: 'rtp.stream', time: t0, ssrc: 42, payloadType: 111, codec: 'opus', kind: 'audio' });
  for (let i = 0; i < n; i++) {
    const payload = Buffer.from([0xfc, i, 1, 2, 3, 4, 5]); // CELT FB 20 ms
    rec.onEvent({
      type: 'rtp.packet',
      time: t0 + i * 20,
      dir: 'c2s',
      ssrc: 42,
      payloadType: 111,
      seq: i,
      index: i,
      timestamp: i * 960,
      marker: false,
      payloadSize: payload.length,
      payload,
    });
  }
  rec.onEvent({ type: 'datachannel.open', time: t0, dir: 'c2s', stream: 1, label: 'chat', protocol: '', channelType: 0, ordered: true });
  const text = Buffer.from('hello, {"quoted"}\n');
  const bin = Buffer.from([0, 1, 2, 3, 0xff]);
  const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
  rec.onEvent({
    type: 'datachannel.message',
    time: t0 + 1,
    dir: 'c2s',
    stream: 1,
    label: 'chat',
    ppid: 51,
    size: text.length,
    sha256: sha(text),
    data: text,
  });
  rec.onEvent({
    type: 'datachannel.message',
    time: t0 + 2,
    dir: 's2c',
    stream: 1,
    label: 'chat',
    ppid: 53,
    size: bin.length,
    sha256: sha(bin),
    data: bin,
  });
  const exe = Buffer.concat([Buffer.from('MZ'), Buffer.alloc(100, 7)]);
  rec.onEvent({
    type: 'file',
    time: t0 + 3,
    dir: 's2c',
    stream: 1,
    label: 'chat',
    size: exe.length,
    sha256: sha(exe),
    fileType: 'exe',
    data: exe,
  } as InspectEvent);
  clock.advance(2000);
}

async function makeStore(name: string, extra: Partial<ConstructorParameters<typeof RecordingStore>[0]> = {}) {
  const identity = await testSigner();
  const clock = new ManualClock();
  const dir = join(work, name);
  const store = new RecordingStore({ dir, identity, clock, fsync: false, ...extra });
  return { identity, clock, dir, store };
}

t.test('transcripts: text inline, binary and files by SHA-256 under files/', async (t) => {
  const { clock, store } = await makeStore('transcript');
  const rec = store.open(flow(1));
  feed(rec, clock);
  rec.close();
  const lines = readFileSync(join(rec.recordingDir, 'dc-1.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  t.equal(lines.length, 4);
  t.equal(lines[0]!.event, 'open');
  t.equal(lines[0]!.label, 'chat');
  t.equal(lines[1]!.text, 'hello, {"quoted"}\n');
  t.equal(lines[2]!.text, undefined);
  t.equal(lines[2]!.size, 5);
  t.equal(lines[2]!.file, `files/${lines[2]!.sha256 as string}`);
  t.same(readFileSync(join(rec.recordingDir, lines[2]!.file as string)), Buffer.from([0, 1, 2, 3, 0xff]));
  t.equal(lines[3]!.event, 'file');
  t.equal(lines[3]!.fileType, 'exe');
  t.equal(
    readFileSync(join(rec.recordingDir, lines[3]!.file as string))
      .subarray(0, 2)
      .toString(),
    'MZ',
  );
  const m = JSON.parse(readFileSync(join(rec.recordingDir, 'manifest.json'), 'utf8')) as {
    files: Record<string, unknown>;
    seq: number;
    prev: unknown;
  };
  t.same(
    Object.keys(m.files).sort(),
    [
      'audio-42.opus',
      'dc-1.jsonl',
      `files/${lines[2]!.sha256 as string}`,
      `files/${lines[3]!.sha256 as string}`,
      'meta.json',
      'rtp-42.pcap',
    ].sort(),
  );
  t.equal(m.seq, 1);
  t.equal(m.prev, null);
});

t.test('verify: intact chain passes, every kind of tampering is named', async (t) => {
  const { clock, store, dir, identity } = await makeStore('tamper');
  const recs: FlowRecorder[] = [];
  for (let i = 0; i < 4; i++) {
    const r = store.open(flow(i));
    feed(r, clock);
    r.close();
    recs.push(r);
  }
  let r = await verifyCli([dir]);
  t.equal(r.code, 0, r.out);
  t.match(r.out, /^OK: 4 recording/m);
  writeFileSync(join(work, 'gw.crt'), identity.certificatePem);
  t.equal((await verifyCli(['--cert', join(work, 'gw.crt'), dir])).code, 0, 'pinned certificate');
  const other = await testSigner('someone-else');
  writeFileSync(join(work, 'other.crt'), other.certificatePem);
  r = await verifyCli(['--cert', join(work, 'other.crt'), dir]);
  t.equal(r.code, 1, 'another certificate is not trusted');
  t.match(r.out, /untrusted/);

  // Flip one byte.
  const a = join(recs[1]!.recordingDir, 'audio-42.opus');
  const orig = readFileSync(a);
  const bad = Buffer.from(orig);
  bad[bad.length - 3] ^= 0x01;
  writeFileSync(a, bad);
  r = await verifyCli([dir]);
  t.equal(r.code, 1);
  t.match(r.out, `TAMPERED ${recs[1]!.recordingId}/audio-42.opus: changed`);
  t.equal(r.out.match(/TAMPERED/g)?.length, 1, 'only that file is named');
  writeFileSync(a, orig);

  // Remove a file, add a file.
  const dc = join(recs[2]!.recordingDir, 'dc-1.jsonl');
  const dcData = readFileSync(dc);
  rmSync(dc);
  writeFileSync(join(recs[0]!.recordingDir, 'extra.bin'), 'x');
  mkdirSync(join(recs[3]!.recordingDir, 'files', 'sub'), { recursive: true });
  writeFileSync(join(recs[3]!.recordingDir, 'files', 'sub', 'y'), 'y');
  r = await verifyCli([dir]);
  t.equal(r.code, 1);
  t.match(r.out, `${recs[2]!.recordingId}/dc-1.jsonl: removed`);
  t.match(r.out, `${recs[0]!.recordingId}/extra.bin: added`);
  t.match(r.out, `${recs[3]!.recordingId}/files/sub/y: added`);
  writeFileSync(join(dir, 'stray.txt'), 'z');
  r = await verifyCli([dir]);
  t.match(r.out, 'TAMPERED stray.txt: added');
  rmSync(join(dir, 'stray.txt'));
  writeFileSync(dc, dcData);
  rmSync(join(recs[0]!.recordingDir, 'extra.bin'));
  rmSync(join(recs[3]!.recordingDir, 'files', 'sub'), { recursive: true });
  t.equal((await verifyCli([dir])).code, 0, 'restored');

  // Edit the manifest (hide a change): the signature fails and the chain breaks.
  const mf = join(recs[1]!.recordingDir, 'manifest.json');
  const mOrig = readFileSync(mf, 'utf8');
  const m = JSON.parse(mOrig) as { files: Record<string, { sha256: string; size: number }> };
  m.files['audio-42.opus']!.size += 1;
  writeFileSync(mf, JSON.stringify(m, null, 2) + '\n');
  r = await verifyCli([dir]);
  t.equal(r.code, 1);
  t.match(r.out, `${recs[1]!.recordingId}/manifest.json: bad signature`);
  t.match(r.out, `${recs[2]!.recordingId}: chain broken: prev does not match`);
  writeFileSync(mf, mOrig);

  // Single recording verification.
  t.equal((await verifyCli([recs[2]!.recordingDir])).code, 0, 'one recording');

  // Remove a whole recording in the middle, then the newest.
  const mid = recs[1]!.recordingDir;
  renameSync(mid, join(work, 'moved-away'));
  r = await verifyCli([dir]);
  t.equal(r.code, 1);
  t.match(r.out, /seq 2\.\.2 removed/);
  renameSync(join(work, 'moved-away'), mid);
  renameSync(recs[3]!.recordingDir, join(work, 'moved-away'));
  r = await verifyCli([dir]);
  t.equal(r.code, 1);
  t.match(r.out, /newest recording\(s\) with seq 4\.\.4 removed/);
  renameSync(join(work, 'moved-away'), recs[3]!.recordingDir);
  t.equal((await verifyCli([dir])).code, 0);

  // Usage errors.
  t.equal((await verifyCli([])).code, 2);
  t.equal((await verifyCli([join(work, 'nope')])).code, 2);
  t.equal((await verifyCli(['--cert'])).code, 2);
  t.equal((await verifyCli(['--bogus', dir])).code, 2);
  writeFileSync(join(work, 'notcert'), 'hello');
  t.equal((await verifyCli(['--cert', join(work, 'notcert'), dir])).code, 2);
  t.equal((await verifyCli(['--help'])).code, 0);
});

t.test('retention: oldest first by size and age, chain stays verifiable', async (t) => {
  const { clock, store, dir, identity } = await makeStore('retention');
  const ids: string[] = [];
  for (let i = 0; i < 5; i++) {
    const r = store.open(flow(i));
    feed(r, clock);
    r.close();
    ids.push(r.recordingId);
    clock.advance(60_000);
  }
  t.same(applyRetention(dir, {}, clock.now(), identity), [], 'no policy, nothing deleted');
  const sizes = ids.map((id) => readdirSync(join(dir, id)).length);
  t.ok(sizes.every((n) => n > 0));
  const total = verifyRecordings(dir);
  t.ok(total.ok);
  // Size: keep room for about three recordings.
  const one = JSON.parse(readFileSync(join(dir, ids[0]!, 'manifest.json'), 'utf8')) as { files: Record<string, { size: number }> };
  const approx = Object.values(one.files).reduce((a, f) => a + f.size, 0) + 2000;
  const deleted = applyRetention(dir, { maxBytes: approx * 3.5 }, clock.now(), identity);
  t.same(
    deleted.map((d) => d.id),
    ids.slice(0, 2),
    'the two oldest were deleted',
  );
  t.ok(deleted.every((d) => d.reason === 'size' && d.bytes > 0));
  t.notOk(existsSync(join(dir, ids[0]!)));
  t.ok(existsSync(join(dir, ANCHOR)));
  let v = verifyRecordings(dir);
  t.same(v.problems, [], 'chain verifies from the anchor');
  // New recordings continue the chain, also with a new store on the same directory.
  const store2 = new RecordingStore({ dir, identity, clock, fsync: false });
  const r = store2.open(flow(9));
  feed(r, clock);
  t.same(store2.openRecordings, [r.recordingId]);
  const s = r.close();
  t.equal(s?.seq, 6);
  t.ok(verifyRecordings(dir).ok);
  // Age: everything that ended more than 100 s ago (r2 ended at +126 s, r3 at +188 s, now +312 s).
  const byAge = applyRetention(dir, { maxAgeMs: 100_000 }, clock.now(), identity);
  t.same(
    byAge.map((d) => d.id),
    [ids[2]!, ids[3]!],
  );
  t.ok(byAge.every((d) => d.reason === 'age'));
  v = verifyRecordings(dir);
  t.same(v.problems, []);
  // A forged anchor (not signed by the key) is rejected.
  const anchor = JSON.parse(readFileSync(join(dir, ANCHOR), 'utf8')) as Record<string, unknown>;
  writeFileSync(join(dir, ANCHOR), JSON.stringify({ ...anchor, seq: 1 }));
  v = verifyRecordings(dir);
  t.notOk(v.ok);
  t.match(v.problems.join('\n'), /chain-anchor\.json: bad or untrusted signature/);
  writeFileSync(join(dir, ANCHOR), JSON.stringify(anchor));
  // Deleting everything leaves a consistent anchor and head.
  const all = store2.applyRetention();
  t.same(all, [], 'the store has no policy');
  const gone = applyRetention(dir, { maxBytes: 1 }, clock.now(), identity);
  t.equal(gone.length, 2);
  t.same(verifyRecordings(dir).problems, []);
  // An open recording is never deleted.
  const open = store2.open(flow(10));
  feed(open, clock);
  t.same(applyRetention(dir, { maxBytes: 1, maxAgeMs: 1 }, clock.now() + 1e9, identity), []);
  t.ok(existsSync(open.recordingDir));
  open.close();
  t.same(verifyRecordings(dir).problems, []);
});

t.test('rotation seals parts into the chain; a crash leftover is sealed as recovered', async (t) => {
  const { clock, store, dir, identity } = await makeStore('rotate', { rotateMs: 10_000, flushIntervalMs: 1000 });
  const rec = store.open(flow(1));
  feed(rec, clock);
  clock.advance(10_000);
  t.equal(rec.sealed.length, 1, 'one part sealed by rotation');
  feed(rec, clock);
  rec.close();
  t.equal(rec.sealed.length, 2);
  t.same(
    rec.sealed.map((s) => s.seq),
    [1, 2],
  );
  t.ok(existsSync(join(rec.recordingDir, 'dc-1.jsonl')), 'the new part has its own files');
  t.same(verifyRecordings(dir).problems, []);
  // Simulate a crash: an unsealed directory with a half-written transcript.
  const left = join(dir, '20261122T000000Z-crashed-p1-aaaaaa');
  mkdirSync(left);
  appendFileSync(join(left, 'dc-1.jsonl'), '{"a":1}\n');
  t.notOk(verifyRecordings(dir).ok, 'unsealed recordings are reported');
  const store2 = new RecordingStore({ dir, identity, clock, fsync: false });
  t.equal(store2.recovered.length, 1);
  t.equal(store2.recovered[0]!.seq, 3);
  const m = JSON.parse(readFileSync(join(left, 'manifest.json'), 'utf8')) as { recovered?: boolean };
  t.equal(m.recovered, true);
  t.same(verifyRecordings(dir).problems, []);
});
