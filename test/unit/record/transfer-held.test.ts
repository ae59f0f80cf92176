/**
 * Issue 9: the transcript lines of a run of binary messages wait for their transfer's
 * `file` event, outside the inspector's memory account: bounded per recording by
 * RECORDING_HELD_LINES (then written at once, marked `flushed: true`) and
 * RECORDING_HELD_BYTES of message bytes (beyond, a message's bytes are not kept with its
 * line: named by a whole transfer as usual, else `content: "not kept"`).
 */
import t from 'tap';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { ManualClock } from '../../../src/util/clock.js';
import { RECORDING_HELD_BYTES, RECORDING_HELD_LINES, RecordingStore, type FlowRecorder } from '../../../src/record/recorder.js';
import type { FileEvent, InspectEvent } from '../../../src/inspect/events.js';
import { testSigner } from './identity-helper.js';

const work = mkdtempSync(join(tmpdir(), 'gh-rec-held-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const flow = { flowId: 'flow-h', client: { ip: '192.0.2.1', port: 5000 }, peer: { ip: '192.0.2.2', port: 6000 } };
const base = { dir: 'c2s' as const, stream: 1, label: 'file' };

async function open(name: string): Promise<{ rec: FlowRecorder; store: RecordingStore; clock: ManualClock }> {
  const clock = new ManualClock();
  const store = new RecordingStore({ dir: join(work, name), identity: await testSigner(), clock, fsync: false });
  return { rec: store.open(flow), store, clock };
}
const msg = (time: number, index: number, data: Buffer): InspectEvent => ({
  type: 'datachannel.message',
  time,
  ...base,
  ppid: 53,
  size: data.length,
  sha256: sha(data),
  index,
  data,
});
function lines(dir: string): Record<string, unknown>[] {
  return readFileSync(join(dir, 'dc-1.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}
const stored = (dir: string) => (existsSync(join(dir, 'files')) ? readdirSync(join(dir, 'files')) : []);

t.test('more lines than RECORDING_HELD_LINES: written at once, marked flushed; the rest at the end', async (t) => {
  const { rec, clock } = await open('lines');
  const n = RECORDING_HELD_LINES + 500;
  for (let i = 0; i < n; i++) rec.onEvent(msg(clock.now() + i, i, Buffer.from([i & 0xff, 1, 2, 3])));
  t.equal(rec.heldStats.flushes, 1, 'one flush at the bound');
  rec.close();
  const ls = lines(rec.recordingDir).filter((l) => l.event === 'message');
  t.equal(ls.length, n, 'every message has its line, once');
  t.same(
    ls.map((l) => l.index),
    [...Array(n).keys()],
    'in order',
  );
  t.equal(ls.filter((l) => l.flushed === true).length, RECORDING_HELD_LINES, 'the flushed ones are marked');
  t.ok(
    ls.every((l) => typeof l.file === 'string'),
    'no transfer followed: each message kept as it came',
  );
});

t.test('more bytes than RECORDING_HELD_BYTES: named by a whole transfer, else "not kept"', async (t) => {
  const chunk = 16 * 1024;
  const count = RECORDING_HELD_BYTES / chunk + 16; // 16 messages beyond the bound
  for (const whole of [false, true]) {
    const { rec, store, clock } = await open(`bytes-${whole}`);
    const file = randomBytes(count * chunk);
    for (let i = 0; i < count; i++) rec.onEvent(msg(clock.now() + i, i, file.subarray(i * chunk, (i + 1) * chunk)));
    t.equal(store.heldBytes, RECORDING_HELD_BYTES, 'the store holds at most the bound');
    t.equal(rec.heldStats.dataDropped, 16);
    const tf: FileEvent = {
      type: 'file',
      time: clock.now() + count,
      ...base,
      size: file.length,
      sha256: sha(file),
      fileType: 'unknown',
      data: whole ? file : file.subarray(0, 65536),
      transfer: { firstMessage: 0, lastMessage: count - 1, messages: count, end: 'pause' },
      ...(whole ? {} : { headOnly: true }),
    };
    rec.onEvent(tf);
    t.equal(store.heldBytes, 0, 'given back once the transfer is known');
    rec.close();
    const ls = lines(rec.recordingDir).filter((l) => l.event === 'message');
    t.equal(ls.length, count);
    if (whole) {
      t.ok(
        ls.every((l) => l.transfer === sha(file) && l.file === null),
        'whole transfer: every line names it',
      );
      t.same(stored(rec.recordingDir), [sha(file)], 'stored once, whole');
    } else {
      t.equal(ls.filter((l) => typeof l.file === 'string').length, count - 16, 'the messages held are kept as they came');
      t.equal(ls.filter((l) => l.content === 'not kept' && l.file === null).length, 16, 'the others say so');
      t.ok(
        ls.every((l) => l.transfer === sha(file)),
        'all name their transfer',
      );
    }
  }
});
