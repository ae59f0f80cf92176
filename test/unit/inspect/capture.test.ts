import t from 'tap';
import { writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readCapture, encodePcap, captureFormat, CaptureError, type CapturedPacket } from '../../../src/inspect/capture.js';
import { LINKTYPE_ETHERNET, buildUdpFrame, decodeFrame } from '../../../src/wire/netpkt.js';

const dir = mkdtempSync(join(tmpdir(), 'gh-capture-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

const frames = Array.from({ length: 500 }, (_, i) =>
  buildUdpFrame(LINKTYPE_ETHERNET, '10.0.0.1', 1000 + (i % 7), '10.0.0.2', 2000, Buffer.alloc(i % 300, i & 0xff)),
);
const t0 = Date.UTC(2026, 10, 22, 10, 0, 0);

t.test('reads back what encodePcap wrote, in chunks smaller than records', async (t) => {
  const file = join(dir, 'a.pcap');
  writeFileSync(
    file,
    encodePcap(
      LINKTYPE_ETHERNET,
      frames.map((d, i) => ({ time: t0 + i * 1.5, data: d })),
    ),
  );
  const got: CapturedPacket[] = [];
  const s = await readCapture(file, (p) => got.push({ ...p, data: Buffer.from(p.data) }), { highWaterMark: 97 });
  t.equal(s.packets, frames.length);
  t.equal(s.linktype, LINKTYPE_ETHERNET);
  t.notOk(s.truncated);
  t.equal(got.length, frames.length);
  for (let i = 0; i < frames.length; i += 37) {
    t.same(got[i]!.data, frames[i]);
    t.equal(got[i]!.time, t0 + i * 1.5);
    t.equal(got[i]!.linktype, LINKTYPE_ETHERNET);
    t.equal(decodeFrame(got[i]!.linktype, got[i]!.data)?.dstPort, 2000);
  }
});

t.test('backpressure pauses and resumes', async (t) => {
  const file = join(dir, 'b.pcap');
  writeFileSync(
    file,
    encodePcap(
      LINKTYPE_ETHERNET,
      frames.map((d, i) => ({ time: t0 + i, data: d })),
    ),
  );
  let waits = 0;
  let n = 0;
  await readCapture(file, () => n++, {
    highWaterMark: 4096,
    backpressure: () => (waits++ % 2 === 0 ? new Promise((r) => setTimeout(r, 1)) : null),
  });
  t.equal(n, frames.length);
  t.ok(waits > 1);
});

t.test('nanosecond pcap', async (t) => {
  const img = encodePcap(LINKTYPE_ETHERNET, [{ time: t0, data: frames[3]! }]);
  img.writeUInt32LE(0xa1b23c4d, 0);
  img.writeUInt32LE(123456789, 24 + 4); // ns fraction
  const file = join(dir, 'ns.pcap');
  writeFileSync(file, img);
  const got: CapturedPacket[] = [];
  await readCapture(file, (p) => got.push(p));
  t.equal(got.length, 1);
  t.ok(Math.abs(got[0]!.time - (t0 + 123.456789)) < 1e-6);
  t.same(got[0]!.data, frames[3]);
});

t.test('pcapng is refused with conversion advice', async (t) => {
  const file = join(dir, 'x.pcapng');
  const shb = Buffer.alloc(28);
  shb.writeUInt32BE(0x0a0d0d0a, 0);
  writeFileSync(file, shb);
  t.equal(captureFormat(shb), 'pcapng');
  await t.rejects(
    readCapture(file, () => {}),
    { code: 'E_CAPTURE_PCAPNG', message: /editcap -F pcap/ },
  );
});

t.test('garbage, missing file, truncated record, absurd length', async (t) => {
  const g = join(dir, 'g.pcap');
  writeFileSync(g, Buffer.from('this is not a capture file at all'));
  await t.rejects(
    readCapture(g, () => {}),
    { code: 'E_CAPTURE_FORMAT' },
  );
  await t.rejects(
    readCapture(join(dir, 'nope.pcap'), () => {}),
    { code: 'E_CAPTURE_OPEN' },
  );
  const img = encodePcap(
    LINKTYPE_ETHERNET,
    frames.slice(0, 3).map((d) => ({ time: t0, data: d })),
  );
  const tr = join(dir, 'tr.pcap');
  writeFileSync(tr, img.subarray(0, img.length - 5));
  const s = await readCapture(tr, () => {});
  t.equal(s.packets, 2);
  t.ok(s.truncated);
  const big = Buffer.from(img);
  big.writeUInt32LE(0x7fffffff, 24 + 8);
  const bf = join(dir, 'big.pcap');
  writeFileSync(bf, big);
  const e = await readCapture(bf, () => {}).catch((x: unknown) => x);
  t.ok(e instanceof CaptureError);
});
