import t from 'tap';
import fc from 'fast-check';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ManualClock } from '../../../src/util/clock.js';
import { RecordingStore } from '../../../src/record/recorder.js';
import { verifyRecordings } from '../../../src/record/manifest.js';
import { testSigner } from './identity-helper.js';

const work = mkdtempSync(join(tmpdir(), 'gh-rec-recorder-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

t.test('hostile RTP payloads never throw, and the result still seals and verifies', async (t) => {
  const identity = await testSigner();
  const clock = new ManualClock();
  const dir = join(work, 'fuzz');
  const store = new RecordingStore({ dir, identity, clock, fsync: false, rotateBytes: 20_000, flushIntervalMs: 100 });
  const rec = store.open({ flowId: 'fuzz/../x', client: { ip: '::1', port: 1 }, peer: { ip: 'bogus', port: 2 } });
  const codecs = ['opus', 'vp8', 'h264', 'vp9', 'unknown'];
  codecs.forEach((codec, i) => rec.onEvent({ type: 'rtp.stream', time: clock.now(), ssrc: i, payloadType: 96 + i, codec, kind: 'video' }));
  fc.assert(
    fc.property(
      fc.array(
        fc.record({
          ssrc: fc.integer({ min: 0, max: 5 }),
          seq: fc.integer({ min: 0, max: 0xffff }),
          ts: fc.integer({ min: 0, max: 0xffffffff }),
          m: fc.boolean(),
          p: fc.uint8Array({ maxLength: 300 }),
          rtcp: fc.boolean(),
        }),
        { maxLength: 40 },
      ),
      (xs) => {
        for (const x of xs) {
          const payload = Buffer.from(x.p);
          rec.onEvent({
            type: 'rtp.packet',
            time: clock.now(),
            dir: 's2c',
            ssrc: x.ssrc,
            payloadType: 96,
            seq: x.seq,
            index: x.seq,
            timestamp: x.ts,
            marker: x.m,
            payloadSize: payload.length,
            payload,
            rtcp: x.rtcp,
          });
        }
        clock.advance(100);
        return true;
      },
    ),
    { numRuns: 200 },
  );
  rec.close();
  t.ok(rec.sealed.length >= 2, `rotation by size sealed ${rec.sealed.length} parts`);
  t.ok(rec.recordingId.includes('fuzz_.._x'), 'the flow id is made safe for a directory name');
  t.same(verifyRecordings(dir).problems, []);
  t.equal(rec.close(), null, 'close is idempotent');
});
