// Issue 9: a file sent as a JSON header and 16 KiB binary messages (RFC 8831 §6.6 leaves
// large messages to the application) is one `file` event with the whole file's SHA-256.
// Hand-built SCTP packets (RFC 4960 / 9260 DATA, RFC 6525 RE-CONFIG) through the tracker.
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { DataChannelTracker, type DataChannelTrackerOptions } from '../../../src/inspect/datachannel.js';
import type { FileEvent, InspectEvent } from '../../../src/inspect/events.js';
import { parseHeader } from '../../../src/inspect/transfer.js';
import { encodeDataChunk, encodeOutgoingResetChunk, encodeSctpPacket, encodeChunk, ChunkType } from '../../../src/wire/sctp.js';
import { encodeDcepOpen } from '../../../src/wire/dcep.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const CHUNK = 16 * 1024;

function rig(opts: DataChannelTrackerOptions = {}) {
  const events: InspectEvent[] = [];
  const tr = new DataChannelTracker((e) => events.push(e), { association: 'abcd', ...opts });
  let tsn = 1000;
  let time = 1_000_000;
  const pkt = (chunks: Buffer[]) => encodeSctpPacket(5000, 5000, 0, chunks);
  const feed = (p: Buffer, dt = 1) => tr.push(p, 'c2s', (time += dt));
  const msg = (stream: number, ppid: number, data: Buffer, dt = 1) => {
    // Fragments of at most 1200 bytes with consecutive TSNs (RFC 9260 §6.9).
    for (let o = 0; o < data.length || o === 0; o += 1200) {
      const part = data.subarray(o, o + 1200);
      feed(
        pkt([encodeDataChunk({ tsn: tsn++, stream, ppid, begin: o === 0, end: o + 1200 >= data.length, data: part })]),
        o === 0 ? dt : 0,
      );
      if (data.length === 0) break;
    }
  };
  const lastTsn = () => tsn - 1;
  msg(2, 50, encodeDcepOpen({ label: 'file:payload.bin' }));
  const files = () => events.filter((e) => e.type === 'file') as FileEvent[];
  const transfers = () => files().filter((f) => f.transfer);
  const caps = () => events.filter((e) => e.type === 'cap.hit') as Extract<InspectEvent, { type: 'cap.hit' }>[];
  const sendChunks = (data: Buffer, dt = 1) => {
    for (let o = 0; o < data.length; o += CHUNK) msg(2, 53, data.subarray(o, o + CHUNK), dt);
  };
  return { tr, events, feed, pkt, msg, files, transfers, caps, sendChunks, lastTsn, now: () => time };
}

const FILE = randomBytes(150_000);
Buffer.from('%PDF-1.7\n').copy(FILE); // typed from its first bytes

t.test('JSON header + 16 KiB chunks: one file event with the whole SHA-256, at the last chunk', async (t) => {
  const r = rig();
  r.msg(2, 51, Buffer.from(JSON.stringify({ name: 'report.pdf', size: FILE.length, type: 'application/pdf' })));
  let before = 0;
  for (let o = 0, i = 0; o < FILE.length; o += CHUNK, i++) {
    if (o + CHUNK >= FILE.length) before = r.transfers().length;
    r.msg(2, 53, FILE.subarray(o, o + CHUNK));
  }
  t.equal(before, 0, 'no transfer event before the last chunk');
  const [f, ...rest] = r.transfers();
  t.equal(rest.length, 0, 'one transfer');
  t.ok(f, 'file event for the transfer');
  t.equal(f!.sha256, sha(FILE), 'SHA-256 of the whole file');
  t.equal(f!.size, 150_000);
  t.equal(f!.fileType, 'pdf');
  t.equal(f!.name, 'report.pdf');
  t.equal(f!.label, 'file:payload.bin');
  // Message indices on the channel (c2s): 0 = header, 1..10 = chunks.
  t.same(f!.transfer, { firstMessage: 1, lastMessage: 10, messages: 10, end: 'size', announcedSize: 150_000 });
  t.equal(f!.headOnly, true, 'not spooled by default');
  t.ok(f!.data.length <= 64 * 1024 && FILE.subarray(0, f!.data.length).equals(f!.data), 'data: the head');
  t.equal(r.events.filter((e) => e.type === 'datachannel.message').length, 11, 'per-message events kept (header + 10 chunks)');
  t.equal(r.tr.spooledBytes, 0, 'nothing held after the transfer');
  t.equal(r.tr.transfersInFlight, 0);
});

t.test('spooled: the event carries the whole content', async (t) => {
  const r = rig({ transfers: { spool: () => true } });
  r.msg(2, 51, Buffer.from(JSON.stringify({ name: 'a', size: FILE.length })));
  r.sendChunks(FILE);
  const f = r.transfers()[0]!;
  t.ok(f.data.equals(FILE), 'whole file in data');
  t.notOk(f.headOnly);
  t.equal(r.tr.spooledBytes, 0);
});

t.test('no header: the transfer ends at a pause', async (t) => {
  const r = rig({ transfers: { pauseMs: 500 } });
  r.sendChunks(FILE);
  t.equal(r.transfers().length, 0, 'still in flight');
  t.equal(r.tr.transfersInFlight, 1);
  r.tr.expireTransfers(r.now() + 499);
  t.equal(r.transfers().length, 0, 'not before the pause');
  r.tr.expireTransfers(r.now() + 500);
  const f = r.transfers()[0]!;
  t.equal(f.sha256, sha(FILE));
  t.equal(f.transfer!.end, 'pause');
  t.equal(f.transfer!.messages, 10);
  t.equal(f.name, undefined);
  // A later packet after a pause also ends it (capture replay: no timer).
  const r2 = rig({ transfers: { pauseMs: 500 } });
  r2.sendChunks(FILE);
  r2.msg(4, 51, Buffer.from('other channel'), 600);
  t.equal(r2.transfers()[0]?.sha256, sha(FILE), 'ended by the next packet after the pause');
});

t.test('an announced size not yet reached: a pause shorter than SCTP RTO.Max does not cut the file', async (t) => {
  const r = rig({ transfers: { pauseMs: 500 } });
  r.msg(2, 51, Buffer.from(JSON.stringify({ name: 'report.pdf', size: FILE.length })));
  const half = 5 * CHUNK;
  r.sendChunks(FILE.subarray(0, half));
  // A lost chunk: the sender retransmits after its RTO (RFC 9260 §16: up to 60 s); 3 s here.
  r.tr.expireTransfers(r.now() + 3000);
  t.equal(r.transfers().length, 0, 'still one transfer in flight after 3 s (pause 500 ms)');
  r.sendChunks(FILE.subarray(half), 3000);
  const f = r.transfers();
  t.equal(f.length, 1, 'one transfer');
  t.equal(f[0]!.sha256, sha(FILE), 'the whole file hashed');
  t.equal(f[0]!.transfer!.end, 'size');
  // A sender that announced more than it sends: ended after ANNOUNCED_PAUSE_MS (60 s).
  const r2 = rig({ transfers: { pauseMs: 500 } });
  r2.msg(2, 51, Buffer.from(JSON.stringify({ name: 'x', size: FILE.length * 2 })));
  r2.sendChunks(FILE);
  r2.tr.expireTransfers(r2.now() + 59_999);
  t.equal(r2.transfers().length, 0, 'not before 60 s');
  r2.tr.expireTransfers(r2.now() + 60_000);
  t.match(r2.transfers()[0], { sha256: sha(FILE), transfer: { end: 'pause', announcedSize: FILE.length * 2 } });
  // The live gateway's tracker (expireOnPacket: false): a packet after a gap ends nothing; its timer judges.
  const r3 = rig({ transfers: { pauseMs: 500, expireOnPacket: false } });
  r3.sendChunks(FILE);
  r3.msg(4, 51, Buffer.from('other channel'), 600);
  t.equal(r3.transfers().length, 0, 'not ended by a packet');
  r3.tr.expireTransfers(r3.now() + 500);
  t.equal(r3.transfers()[0]?.sha256, sha(FILE), 'ended by expireTransfers');
});

t.test('a text message ends the transfer; data on the stream keeps it from pausing', async (t) => {
  const r = rig({ transfers: { pauseMs: 500 } });
  // Chunks 400 ms apart: never a pause of 500 ms.
  r.sendChunks(FILE, 400);
  t.equal(r.transfers().length, 0);
  r.msg(2, 51, Buffer.from('{"type":"done"}'));
  const f = r.transfers()[0]!;
  t.equal(f.transfer!.end, 'text');
  t.equal(f.sha256, sha(FILE));
  t.equal(r.transfers().length, 1);
});

t.test('the channel closes (RFC 6525 outgoing reset) or the tracker closes', async (t) => {
  const r = rig();
  r.sendChunks(FILE);
  r.feed(r.pkt([encodeOutgoingResetChunk(1, 0, r.lastTsn(), [2])]));
  t.equal(r.transfers()[0]?.transfer?.end, 'close');
  t.equal(r.transfers()[0]?.sha256, sha(FILE));
  const r2 = rig();
  r2.sendChunks(FILE);
  r2.tr.close();
  t.equal(r2.transfers()[0]?.transfer?.end, 'close', 'tracker close');
  const r3 = rig();
  r3.sendChunks(FILE);
  r3.feed(r3.pkt([encodeChunk(ChunkType.ABORT, 0, Buffer.alloc(0))]));
  t.equal(r3.transfers()[0]?.transfer?.end, 'close', 'ABORT (RFC 4960 §9.1)');
});

t.test('over max_file_bytes: reported then, judged on what was seen, rest skipped', async (t) => {
  const r = rig({ transfers: { maxFileBytes: 100_000 } });
  r.msg(2, 51, Buffer.from(JSON.stringify({ name: 'big', size: FILE.length })));
  r.sendChunks(FILE);
  const [f, ...rest] = r.transfers();
  t.equal(rest.length, 0, 'one report');
  t.equal(f!.overLimit, true);
  t.equal(f!.transfer!.end, 'limit');
  // 7 chunks = 114688 bytes > 100000: the crossing chunk is the 7th.
  t.equal(f!.size, 7 * CHUNK);
  t.equal(f!.sha256, sha(FILE.subarray(0, 7 * CHUNK)));
  t.ok(r.caps().some((c) => c.what === 'datachannel.file_bytes'));
  t.equal(r.tr.spooledBytes, 0);
  r.tr.expireTransfers(r.now() + 10_000);
  t.equal(r.transfers().length, 1, 'no second report for the skipped rest');
});

t.test('single large messages stay files; one announced message is one file with its name', async (t) => {
  const r = rig();
  const one = randomBytes(210_000);
  r.msg(2, 53, one);
  t.same(
    r.files().map((f) => [f.size, f.sha256, !!f.transfer]),
    [[210_000, sha(one), false]],
  );
  r.tr.expireTransfers(r.now() + 10_000);
  t.equal(r.files().length, 1, 'not reported twice');
  r.msg(2, 51, Buffer.from(JSON.stringify({ name: 'x.bin', size: 3000 })));
  const small = randomBytes(3000);
  r.msg(2, 53, small);
  const last = r.files().at(-1)!;
  t.equal(r.files().length, 2, 'one event for the announced single message');
  t.equal(last.name, 'x.bin');
  t.equal(last.sha256, sha(small));
  t.equal(last.transfer!.end, 'size');
});

t.test('a typed chunk inside a transfer is still a file of its own (anti-evasion)', async (t) => {
  const r = rig();
  r.msg(2, 51, Buffer.from(JSON.stringify({ name: 'x', size: 10_000_000 })));
  const exe = Buffer.alloc(4096);
  exe.write('MZ');
  exe.writeUInt16LE(0x90, 2);
  exe.writeUInt16LE(3, 4);
  exe.writeUInt16LE(4, 8);
  r.msg(2, 53, exe);
  t.same(
    r.files().map((f) => f.fileType),
    ['exe'],
    'the header does not hide a typed message',
  );
});

t.test('header parsing: bounded, never throws', async (t) => {
  t.same(parseHeader(Buffer.from('{"name":"a\\u0000b","size":5}')), { name: 'ab', size: 5 });
  t.same(parseHeader(Buffer.from('{"fileName":"n","fileSize":7}')), { name: 'n', size: 7 });
  t.equal(parseHeader(Buffer.from('{"size":-1}')), null);
  t.equal(parseHeader(Buffer.from('{"size":"5"}')), null);
  t.equal(parseHeader(Buffer.from('{not json')), null);
  t.equal(parseHeader(Buffer.from('[1]')), null);
  t.equal(parseHeader(Buffer.from(`{"size":5,"pad":"${'x'.repeat(5000)}"}`)), null, 'over 4 KiB: not a header');
  t.equal(parseHeader(Buffer.from(JSON.stringify({ name: 'n'.repeat(1000), size: 1 })))!.name!.length, 255);
});

t.test('transfers in flight are bounded per association', async (t) => {
  const r = rig({ transfers: { maxTransfers: 2 } });
  for (const s of [4, 6, 8]) r.msg(s, 53, randomBytes(2000));
  t.equal(r.tr.transfersInFlight, 2);
  t.ok(r.caps().some((c) => c.what === 'datachannel.transfers'));
});
