// Issue 9: TransferTracker with an injected SpoolFactory (the inspect floor does no file
// I/O itself). 'disk' keeps at most SPOOL_MEMORY_BYTES in memory and writes the rest to the
// spool; a small transfer stays in memory; a failing write drops the content with a
// `cap.hit` `datachannel.spool`; the spool file is released after the event's call.
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import type { FileEvent, InspectEvent } from '../../../src/inspect/events.js';
import {
  HEAD_BYTES,
  SPOOL_MEMORY_BYTES,
  TransferTracker,
  spoolOf,
  type SpoolFactory,
  type SpoolFile,
  type SpoolMode,
} from '../../../src/inspect/transfer.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const CHUNK = 16 * 1024;

/** An in-memory stand-in for DiskSpool: what was written, and whether it was released. */
function fakeSpool(failAfter = Infinity) {
  const files: { parts: Buffer[]; finished: boolean; released: boolean; holds: number }[] = [];
  const factory: SpoolFactory = {
    create(): SpoolFile {
      const f = { parts: [] as Buffer[], finished: false, released: false, holds: 0 };
      files.push(f);
      let size = 0;
      return {
        write(b) {
          if (size + b.length > failAfter) throw new Error('ENOSPC');
          f.parts.push(Buffer.from(b));
          size += b.length;
        },
        finish: () => void (f.finished = true),
        release: () => void (f.released = true),
        content: {
          path: '/nonexistent/spool',
          get size() {
            return size;
          },
          hold: () => {
            f.holds++;
            return () => void f.holds--;
          },
        },
      };
    },
  };
  return { factory, files };
}

function rig(mode: SpoolMode, factory: SpoolFactory | null) {
  const events: InspectEvent[] = [];
  let inCall: (e: FileEvent) => void = () => {};
  const tr = new TransferTracker(
    {
      time: 1,
      association: 'a',
      emit: (e) => {
        events.push(e);
        if (e.type === 'file') inCall(e);
      },
      capHit: (dir, what, limit) => events.push({ type: 'cap.hit', time: 1, dir, what, limit }),
    },
    { spool: () => mode, spoolFiles: factory },
  );
  const send = (file: Buffer, each: () => void = () => {}) => {
    tr.text('c2s', 1, Buffer.from(JSON.stringify({ name: 'f.bin', size: file.length })));
    for (let o = 0, i = 1; o < file.length; o += CHUNK, i++) {
      tr.binary('c2s', 1, 'file', i, file.subarray(o, o + CHUNK), false);
      each();
    }
  };
  return { tr, events, send, onFile: (f: (e: FileEvent) => void) => (inCall = f) };
}

t.test("'disk': beyond SPOOL_MEMORY_BYTES to the spool; memory stays at the head", async (t) => {
  const sp = fakeSpool();
  const r = rig('disk', sp.factory);
  const file = randomBytes(1024 * 1024);
  let max = 0;
  let seen: { path?: string; size?: number; finished?: boolean } = {};
  r.onFile((e) => {
    const s = spoolOf(e);
    seen = { ...(s ? { path: s.path, size: s.size } : {}), finished: sp.files[0]?.finished };
  });
  r.send(file, () => (max = Math.max(max, r.tr.spooledBytes)));
  t.ok(max <= HEAD_BYTES + SPOOL_MEMORY_BYTES + CHUNK, `held at most ${max} bytes in memory for 1 MiB`);
  t.equal(sp.files.length, 1, 'one spool file');
  t.equal(sha(Buffer.concat(sp.files[0]!.parts)), sha(file), 'the spool holds the whole file, in order');
  t.same(seen, { path: '/nonexistent/spool', size: file.length, finished: true }, 'the event carries the finished spool');
  const f = r.events.find((e) => e.type === 'file') as FileEvent;
  t.equal(f.headOnly, true, 'data is the head');
  t.equal(f.data.length, HEAD_BYTES);
  t.equal(f.sha256, sha(file));
  t.notOk(Object.keys(f).includes('spool'), 'the spool is not enumerable (never serialised)');
  t.equal(sp.files[0]!.released, true, "the tracker's reference is released after the call");
  t.equal(r.tr.spooledBytes, 0);
});

t.test("'disk' and a small transfer: in memory, no spool file", async (t) => {
  const sp = fakeSpool();
  const r = rig('disk', sp.factory);
  const file = randomBytes(40_000);
  r.send(file);
  const f = r.events.find((e) => e.type === 'file') as FileEvent;
  t.notOk(f.headOnly);
  t.ok(f.data.equals(file));
  t.equal(spoolOf(f), undefined);
  t.equal(sp.files.length, 0);
});

t.test('a failing spool write: content dropped, cap.hit datachannel.spool, hash and size of the whole', async (t) => {
  const sp = fakeSpool(200 * 1024);
  const r = rig('disk', sp.factory);
  const file = randomBytes(512 * 1024);
  r.send(file);
  const cap = r.events.filter((e) => e.type === 'cap.hit');
  t.match(cap, [{ what: 'datachannel.spool' }]);
  t.equal(r.tr.spoolStats.failures, 1);
  const f = r.events.find((e) => e.type === 'file') as FileEvent;
  t.equal(f.headOnly, true);
  t.equal(spoolOf(f), undefined, 'no spool on the event');
  t.equal(f.size, file.length);
  t.equal(f.sha256, sha(file), 'judged on the hash of what was seen');
  t.equal(sp.files[0]!.released, true, 'the failed spool file was released');
});

t.test("'disk' without a factory keeps the content in memory (as true)", async (t) => {
  const r = rig('disk', null);
  const file = randomBytes(300_000);
  r.send(file);
  const f = r.events.find((e) => e.type === 'file') as FileEvent;
  t.ok(f.data.equals(file));
  t.notOk(f.headOnly);
});
