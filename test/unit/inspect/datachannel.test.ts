// DataChannelTracker unit tests with hand-built SCTP packets (RFC 9260 formats via the
// codec's encoders): DCEP, fragmentation, reordering, retransmissions, unordered,
// I-DATA, FORWARD-TSN, legacy PPIDs, stream reset, caps, checksums, verification tags.
import t from 'tap';
import { createHash } from 'node:crypto';
import { DataChannelTracker, FRAGMENT_OVERHEAD, type DataChannelTrackerOptions } from '../../../src/inspect/datachannel.js';
import type { InspectEvent, Direction } from '../../../src/inspect/events.js';
import {
  encodeDataChunk,
  encodeIDataChunk,
  encodeForwardTsnChunk,
  encodeInitChunk,
  encodeOutgoingResetChunk,
  encodeSackChunk,
  encodeSctpPacket,
  encodeTlv,
  encodeChunk,
  ParamType,
  ChunkType,
} from '../../../src/wire/sctp.js';
import { encodeDcepAck, encodeDcepOpen, ChannelType } from '../../../src/wire/dcep.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** One SCTP endpoint's sending side: assigns TSNs, SSNs, MIDs. */
class Sender {
  tsn: number;
  ssn = new Map<number, number>();
  mid = new Map<string, number>();
  constructor(
    readonly tag: number,
    readonly peerTag: number,
    initialTsn: number,
  ) {
    this.tsn = initialTsn >>> 0;
  }
  private nextTsn(): number {
    const v = this.tsn;
    this.tsn = (this.tsn + 1) >>> 0;
    return v;
  }
  /** DATA chunks of one message, fragmented at `frag` bytes (RFC 9260 §6.9). */
  data(stream: number, ppid: number, data: Buffer, o: { unordered?: boolean; frag?: number } = {}): Buffer[] {
    const ssn = o.unordered ? 0 : (this.ssn.get(stream) ?? 0);
    if (!o.unordered) this.ssn.set(stream, (ssn + 1) & 0xffff);
    const frag = o.frag ?? 1200;
    const out: Buffer[] = [];
    for (let off = 0; off < data.length || off === 0; off += frag) {
      const part = data.subarray(off, Math.min(data.length, off + frag));
      out.push(
        encodeDataChunk({
          tsn: this.nextTsn(),
          stream,
          ssn,
          ppid,
          unordered: o.unordered,
          begin: off === 0,
          end: off + frag >= data.length,
          data: part,
        }),
      );
      if (data.length === 0) break;
    }
    return out;
  }
  /** I-DATA chunks of one message (RFC 8260 §2.1); TSNs assigned by the caller's order. */
  idata(stream: number, ppid: number, data: Buffer, o: { unordered?: boolean; frag?: number } = {}): Array<(tsn: number) => Buffer> {
    const key = `${stream}/${o.unordered ? 1 : 0}`;
    const mid = this.mid.get(key) ?? 0;
    this.mid.set(key, mid + 1);
    const frag = o.frag ?? 1200;
    const out: Array<(tsn: number) => Buffer> = [];
    for (let off = 0, fsn = 0; off < data.length; off += frag, fsn++) {
      const part = data.subarray(off, Math.min(data.length, off + frag));
      const f = fsn;
      out.push((tsn) =>
        encodeIDataChunk({
          tsn,
          stream,
          mid,
          fsn: f,
          ppid,
          unordered: o.unordered,
          begin: f === 0,
          end: off + frag >= data.length,
          data: part,
        }),
      );
    }
    return out;
  }
  takeTsn(): number {
    return this.nextTsn();
  }
  pkt(chunks: Buffer[]): Buffer {
    return encodeSctpPacket(5000, 5000, this.peerTag, chunks);
  }
  init(ack: boolean, params: Buffer[] = []): Buffer {
    return encodeSctpPacket(5000, 5000, ack ? this.peerTag : 0, [
      encodeInitChunk(ack, { initiateTag: this.tag, initialTsn: this.tsn, params }),
    ]);
  }
}

const EXT = [
  encodeTlv(
    ParamType.SUPPORTED_EXTENSIONS,
    Buffer.from([ChunkType.RE_CONFIG, ChunkType.FORWARD_TSN, ChunkType.I_DATA, ChunkType.I_FORWARD_TSN]),
  ),
  encodeTlv(ParamType.FORWARD_TSN_SUPPORTED, Buffer.alloc(0)),
];

function setup(opts: DataChannelTrackerOptions = {}, initC = 1000, initS = 50000) {
  const events: InspectEvent[] = [];
  const tr = new DataChannelTracker((e) => events.push(e), { association: 'abcd', ...opts });
  const c = new Sender(0x1111, 0x2222, initC);
  const s = new Sender(0x2222, 0x1111, initS);
  let time = 1_000_000;
  const feed = (p: Buffer, dir: Direction) => tr.push(p, dir, time++);
  feed(c.init(false, EXT), 'c2s');
  feed(s.init(true, EXT), 's2c');
  const msgs = () => events.filter((e) => e.type === 'datachannel.message') as Extract<InspectEvent, { type: 'datachannel.message' }>[];
  const files = () => events.filter((e) => e.type === 'file') as Extract<InspectEvent, { type: 'file' }>[];
  const caps = () => events.filter((e) => e.type === 'cap.hit') as Extract<InspectEvent, { type: 'cap.hit' }>[];
  return { events, tr, c, s, feed, msgs, files, caps };
}

function rng(seed: number) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 0x100000000;
  };
}
function shuffle<T>(a: T[], r: () => number): T[] {
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

t.test('DCEP open/ack and text messages both ways', async (t) => {
  const { tr, c, s, feed, events, msgs, files } = setup();
  feed(c.pkt(c.data(0, 50, encodeDcepOpen({ label: 'chat', protocol: 'json' }))), 'c2s');
  feed(s.pkt(s.data(0, 50, encodeDcepAck())), 's2c');
  feed(c.pkt(c.data(0, 51, Buffer.from('hello'))), 'c2s');
  feed(s.pkt(s.data(0, 51, Buffer.from('world'))), 's2c');
  const open = events.find((e) => e.type === 'datachannel.open');
  t.match(open, {
    type: 'datachannel.open',
    stream: 0,
    label: 'chat',
    protocol: 'json',
    channelType: 0,
    ordered: true,
    dir: 'c2s',
    association: 'abcd',
  });
  t.same(
    msgs().map((m) => [m.dir, m.stream, m.label, m.ppid, m.data.toString(), m.size, m.sha256]),
    [
      ['c2s', 0, 'chat', 51, 'hello', 5, sha(Buffer.from('hello'))],
      ['s2c', 0, 'chat', 51, 'world', 5, sha(Buffer.from('world'))],
    ],
  );
  t.equal(files().length, 0, 'short text is not a file');
  t.match(tr.channel(0), { label: 'chat', acked: true, openedBy: 'c2s', reliability: 'reliable' });
  t.equal(tr.stats.parityViolations, 0);
  t.equal(tr.stats.dcep, 2);
  // An odd stream opened by the DTLS client violates RFC 8832 §6 parity (counted only).
  feed(c.pkt(c.data(1, 50, encodeDcepOpen({ label: 'odd', channelType: ChannelType.RELIABLE_UNORDERED }))), 'c2s');
  t.equal(tr.stats.parityViolations, 1);
  t.match(tr.channel(1), { ordered: false, label: 'odd' });
});

t.test('200 KB fragmented message, reordered with retransmissions, exactly once', async (t) => {
  const { tr, c, feed, msgs, files } = setup();
  feed(c.pkt(c.data(2, 50, encodeDcepOpen({ label: 'files' }))), 'c2s');
  const big = Buffer.alloc(200 * 1024);
  for (let i = 0; i < big.length; i++) big[i] = (i * 7 + (i >> 8)) & 0xff;
  Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]).copy(big); // PNG magic
  const chunks = c.data(2, 53, big);
  t.ok(chunks.length > 150);
  const r = rng(7);
  // Reorder within windows of 20 and retransmit 10% of packets later.
  const order: Buffer[] = [];
  for (let i = 0; i < chunks.length; i += 20) order.push(...shuffle(chunks.slice(i, i + 20), r));
  const withDups: Buffer[] = [];
  for (const ch of order) {
    withDups.push(ch);
    if (r() < 0.1) withDups.push(ch);
  }
  for (const ch of withDups) feed(c.pkt([ch]), 'c2s');
  // Retransmit everything again after delivery.
  for (const ch of chunks) feed(c.pkt([ch]), 'c2s');
  const m = msgs();
  t.equal(m.length, 1);
  t.equal(m[0]!.size, big.length);
  t.equal(m[0]!.sha256, sha(big));
  t.ok(m[0]!.data.equals(big));
  t.equal(m[0]!.label, 'files');
  t.equal(files().length, 1);
  t.equal(files()[0]!.fileType, 'png');
  t.ok(tr.stats.duplicates >= chunks.length);
  t.equal(tr.bufferedBytes, 0, 'nothing left held');
  t.equal(tr.bufferedFragments, 0);
});

t.test('many messages, several streams, bundled and shuffled packets', async (t) => {
  const { c, feed, msgs } = setup();
  const sent: Array<[number, string]> = [];
  const all: Buffer[] = [];
  const r = rng(99);
  for (let i = 0; i < 300; i++) {
    const stream = i % 5;
    const len = Math.floor(r() * 5000);
    const data = Buffer.alloc(len, i & 0xff);
    data.write(`m${i}`);
    sent.push([stream, sha(data)]);
    all.push(...c.data(stream, 53, data, { unordered: i % 3 === 0, frag: 700 }));
  }
  // Bundle 1-3 chunks per packet, then shuffle packets within windows of 30.
  const pkts: Buffer[] = [];
  for (let i = 0; i < all.length;) {
    const n = 1 + Math.floor(r() * 3);
    pkts.push(c.pkt(all.slice(i, i + n)));
    i += n;
  }
  for (let i = 0; i < pkts.length; i += 30) for (const p of shuffle(pkts.slice(i, i + 30), r)) feed(p, 'c2s');
  const got = msgs().map((m) => [m.stream, m.sha256]);
  t.equal(got.length, 300);
  t.same(new Set(got.map((g) => g.join(':'))), new Set(sent.map((g) => g.join(':'))));
});

t.test('empty messages (PPID 56/57) and PPID 0', async (t) => {
  const { c, feed, msgs, files } = setup();
  feed(c.pkt(c.data(0, 56, Buffer.from([0]))), 'c2s');
  feed(c.pkt(c.data(0, 57, Buffer.from([0]))), 'c2s');
  feed(c.pkt(c.data(0, 0, Buffer.alloc(2000, 1))), 'c2s');
  t.same(
    msgs().map((m) => [m.ppid, m.size, m.label]),
    [
      [56, 0, ''],
      [57, 0, ''],
      [0, 2000, ''],
    ],
  );
  t.equal(msgs()[0]!.sha256, sha(Buffer.alloc(0)));
  t.same(
    files().map((f) => [f.fileType, f.size]),
    [['unknown', 2000]],
    'binary >= 1 KiB is a file',
  );
});

t.test('file rule: magic in string PPID, threshold, option', async (t) => {
  const pdf = Buffer.from('%PDF-1.7\n%âãÏÓ\n1 0 obj\n<<>>\nendobj\n');
  {
    const { c, feed, files } = setup();
    feed(c.pkt(c.data(0, 51, pdf)), 'c2s');
    feed(c.pkt(c.data(0, 51, Buffer.alloc(5000, 0x41))), 'c2s');
    feed(c.pkt(c.data(0, 53, Buffer.alloc(1023, 0x41))), 'c2s');
    feed(c.pkt(c.data(0, 53, Buffer.alloc(1024, 0x41))), 'c2s');
    t.same(
      files().map((f) => [f.fileType, f.size]),
      [
        ['pdf', pdf.length],
        ['unknown', 1024],
      ],
    );
  }
  {
    const { c, feed, files } = setup({ fileOnStringPpid: false, fileMinBytes: 10 });
    feed(c.pkt(c.data(0, 51, pdf)), 'c2s');
    feed(c.pkt(c.data(0, 53, Buffer.alloc(10, 0x41))), 'c2s');
    t.same(
      files().map((f) => [f.fileType, f.size]),
      [['unknown', 10]],
    );
  }
});

t.test('I-DATA: interleaved fragments of several messages, shuffled, duplicated', async (t) => {
  const { c, feed, msgs, tr } = setup();
  const a = Buffer.alloc(10000, 0xaa);
  a.write('first');
  const b = Buffer.alloc(7000, 0xbb);
  b.write('second');
  const u = Buffer.alloc(5000, 0xcc);
  u.write('third');
  const fa = c.idata(1, 53, a, { frag: 1000 });
  const fb = c.idata(3, 51, b, { frag: 1000 });
  const fu = c.idata(1, 53, u, { frag: 1000, unordered: true });
  // Interleave round robin (RFC 8260 allows it), assign TSNs in send order.
  const chunks: Buffer[] = [];
  for (let i = 0; i < 10; i++) for (const f of [fa, fb, fu]) if (f[i]) chunks.push(f[i]!(c.takeTsn()));
  const r = rng(3);
  const seq = shuffle([...chunks, ...chunks.slice(0, 5)], r);
  for (const ch of seq) feed(c.pkt([ch]), 'c2s');
  const got = msgs().map((m) => [m.stream, m.ppid, m.sha256]);
  t.same(
    new Set(got.map((g) => g.join(':'))),
    new Set(
      [
        [1, 53, sha(a)],
        [3, 51, sha(b)],
        [1, 53, sha(u)],
      ].map((g) => g.join(':')),
    ),
  );
  t.equal(got.length, 3);
  t.equal(tr.bufferedBytes, 0);
});

t.test('FORWARD-TSN abandons a partial message; held complete messages survive', async (t) => {
  const { c, feed, msgs, tr } = setup();
  const lost = c.data(4, 53, Buffer.alloc(5000, 1), { unordered: true, frag: 1000 }); // 5 fragments
  const after = c.data(4, 51, Buffer.from('after'), { unordered: true });
  const later = c.data(4, 51, Buffer.from('later'));
  feed(c.pkt([lost[0]!, lost[1]!]), 'c2s'); // in order: partial started
  feed(c.pkt(after), 'c2s'); // held (gap)
  // Sender abandons the message (RFC 3758 §3.5): new cumulative TSN = after's TSN - 1.
  const lastLostTsn = lost[4]!.readUInt32BE(4);
  feed(c.pkt([encodeForwardTsnChunk(lastLostTsn, [])]), 'c2s');
  feed(c.pkt(later), 'c2s');
  // A late retransmission of an abandoned fragment is ignored.
  feed(c.pkt([lost[3]!]), 'c2s');
  t.same(
    msgs().map((m) => m.data.toString()),
    ['after', 'later'],
  );
  t.equal(tr.stats.abandoned, 1);
  t.equal(tr.stats.skippedTsns, 3);
  t.equal(tr.bufferedBytes, 0);
});

t.test('FORWARD-TSN ignored when the receiver did not advertise PR-SCTP', async (t) => {
  const events: InspectEvent[] = [];
  const tr = new DataChannelTracker((e) => events.push(e));
  const c = new Sender(1, 2, 10);
  const s = new Sender(2, 1, 20);
  tr.push(c.init(false, EXT), 'c2s', 0);
  tr.push(s.init(true), 's2c', 0); // no Forward-TSN-Supported
  const m = c.data(0, 51, Buffer.from('x'.repeat(30)), { frag: 10 });
  tr.push(c.pkt([m[0]!]), 'c2s', 0);
  tr.push(c.pkt([encodeForwardTsnChunk(12)]), 'c2s', 0);
  tr.push(c.pkt([m[1]!, m[2]!]), 'c2s', 0);
  t.equal(events.filter((e) => e.type === 'datachannel.message').length, 1);
  t.equal(tr.stats.forwardTsn, 0);
});

t.test('I-FORWARD-TSN abandons I-DATA partial messages by MID', async (t) => {
  const { c, feed, msgs, tr } = setup();
  const x = c.idata(6, 53, Buffer.alloc(3000, 5), { frag: 1000, unordered: true });
  const y = c.idata(6, 53, Buffer.alloc(100, 6), { unordered: true });
  const tx0 = c.takeTsn();
  feed(c.pkt([x[0]!(tx0)]), 'c2s');
  c.takeTsn();
  c.takeTsn(); // the other two fragments are never seen
  const ty = c.takeTsn();
  feed(c.pkt([y[0]!(ty)]), 'c2s'); // held: gap before it
  feed(c.pkt([encodeForwardTsnChunk(tx0 + 2, [{ stream: 6, unordered: true, mid: 0 }], true)]), 'c2s');
  t.same(
    msgs().map((m) => m.size),
    [100],
  );
  t.equal(tr.stats.abandoned, 1);
  t.equal(tr.bufferedBytes, 0);
});

t.test('legacy PPID 52/54 partial runs are concatenated', async (t) => {
  const { c, feed, msgs } = setup();
  feed(c.pkt(c.data(0, 54, Buffer.from('Hel'))), 'c2s');
  feed(c.pkt(c.data(0, 54, Buffer.from('lo '))), 'c2s');
  feed(c.pkt(c.data(2, 51, Buffer.from('other stream'))), 'c2s');
  feed(c.pkt(c.data(0, 51, Buffer.from('world'))), 'c2s');
  feed(c.pkt(c.data(0, 52, Buffer.from([1, 2]))), 'c2s');
  feed(c.pkt(c.data(0, 53, Buffer.from([3]))), 'c2s');
  feed(c.pkt(c.data(0, 52, Buffer.from([9]))), 'c2s');
  feed(c.pkt(c.data(0, 51, Buffer.from('t'))), 'c2s'); // run ended by a different kind
  t.same(
    msgs().map((m) => [m.stream, m.ppid, m.data.toString('hex')]),
    [
      [2, 51, Buffer.from('other stream').toString('hex')],
      [0, 51, Buffer.from('Hello world').toString('hex')],
      [0, 53, '010203'],
      [0, 53, '09'],
      [0, 51, Buffer.from('t').toString('hex')],
    ],
  );
});

t.test('RE-CONFIG outgoing reset closes the channel after both sides reset', async (t) => {
  const { tr, c, s, feed, msgs } = setup();
  feed(c.pkt(c.data(0, 50, encodeDcepOpen({ label: 'a' }))), 'c2s');
  feed(s.pkt(s.data(0, 50, encodeDcepAck())), 's2c');
  const m1 = c.data(0, 51, Buffer.from('before'));
  const lastTsn = m1[0]!.readUInt32BE(4);
  // The reset request arrives before the data it covers (reordering): it waits for it.
  feed(c.pkt([encodeOutgoingResetChunk(1, 0, lastTsn, [0])]), 'c2s');
  t.ok(tr.channel(0));
  feed(c.pkt(m1), 'c2s');
  t.equal(tr.channel(0)!.resetMask, 1);
  feed(s.pkt(s.data(0, 51, Buffer.from('reply'))), 's2c');
  feed(s.pkt([encodeOutgoingResetChunk(1, 1, (s.tsn - 1) >>> 0, [0])]), 's2c');
  t.equal(tr.channel(0), undefined, 'closed');
  t.equal(tr.stats.channelsClosed, 1);
  feed(c.pkt(c.data(0, 50, encodeDcepOpen({ label: 'b' }))), 'c2s');
  feed(c.pkt(c.data(0, 51, Buffer.from('new'))), 'c2s');
  t.same(
    msgs().map((m) => [m.label, m.data.toString()]),
    [
      ['a', 'before'],
      ['a', 'reply'],
      ['b', 'new'],
    ],
  );
});

t.test('caps: message size, reassembly bytes, partial messages', async (t) => {
  {
    const { c, feed, msgs, caps, tr } = setup({ maxMessageBytes: 4000 });
    feed(c.pkt(c.data(0, 53, Buffer.alloc(5000, 1), { frag: 1000 })), 'c2s');
    feed(c.pkt(c.data(0, 53, Buffer.alloc(3000, 2), { frag: 1000 })), 'c2s');
    t.same(
      msgs().map((m) => m.size),
      [3000],
      'oversized message dropped, next one fine',
    );
    t.same(
      caps().map((x) => [x.what, x.limit]),
      [['datachannel.message_bytes', 4000]],
    );
    t.equal(tr.bufferedBytes, 0);
  }
  {
    const total = 10 * (1000 + FRAGMENT_OVERHEAD);
    const { c, feed, msgs, caps, tr } = setup({ maxReassemblyBytes: total });
    const first = c.data(0, 53, Buffer.alloc(1000, 9));
    const rest: Buffer[] = [];
    for (let i = 0; i < 20; i++) rest.push(...c.data(0, 53, Buffer.alloc(1000, i)));
    // The first packet is lost before the tracker: later ones pile up out of order.
    for (const ch of rest) {
      feed(c.pkt([ch]), 'c2s');
      t.ok(tr.bufferedBytes <= total, 'bounded');
    }
    t.ok(caps().some((x) => x.what === 'datachannel.reassembly_bytes' && x.limit === total));
    t.equal(msgs().length, 20, 'the tracker gave up on the gap and delivered the rest');
    feed(c.pkt(first), 'c2s');
    t.equal(msgs().length, 20, 'late chunk behind the skipped gap is not delivered');
  }
  {
    const { c, feed, caps, tr, msgs } = setup({ maxPartialMessages: 3 });
    const parts = [0, 1, 2, 3, 4].map((i) => c.idata(i, 53, Buffer.alloc(2000, i), { frag: 1000 }));
    const firsts = parts.map((p) => p[0]!(c.takeTsn()));
    const seconds = parts.map((p) => p[1]!(c.takeTsn()));
    for (const ch of firsts) feed(c.pkt([ch]), 'c2s');
    t.equal(caps().filter((x) => x.what === 'datachannel.partial_messages').length, 2);
    for (const ch of seconds) feed(c.pkt([ch]), 'c2s');
    t.same(
      msgs().map((m) => m.stream),
      [2, 3, 4],
    );
    t.equal(tr.bufferedBytes, 0);
  }
});

t.test('checksum: bad CRC ignored, zero checksum only when advertised (RFC 9653)', async (t) => {
  const { c, feed, msgs, tr } = setup();
  const p = c.pkt(c.data(0, 51, Buffer.from('ok')));
  const bad = Buffer.from(p);
  bad[bad.length - 1]! ^= 0xff;
  feed(bad, 'c2s');
  t.equal(tr.stats.badChecksum, 1);
  t.equal(msgs().length, 0);
  const zero = Buffer.from(p);
  zero.writeUInt32LE(0, 8);
  feed(zero, 'c2s');
  t.equal(tr.stats.badChecksum, 2, 'zero checksum not negotiated');
  feed(p, 'c2s');
  t.same(
    msgs().map((m) => m.data.toString()),
    ['ok'],
  );

  const events: InspectEvent[] = [];
  const tr2 = new DataChannelTracker((e) => events.push(e));
  const a = new Sender(1, 2, 1);
  const b = new Sender(2, 1, 1);
  tr2.push(a.init(false), 'c2s', 0);
  tr2.push(b.init(true, [encodeTlv(ParamType.ZERO_CHECKSUM_ACCEPTABLE, Buffer.from([0, 0, 0, 1]))]), 's2c', 0);
  const z = a.pkt(a.data(0, 51, Buffer.from('zero')));
  z.writeUInt32LE(0, 8);
  tr2.push(z, 'c2s', 0);
  t.equal(events.filter((e) => e.type === 'datachannel.message').length, 1, 'accepted: receiver advertised it');
});

t.test('verification tag mismatch is ignored like the receiver would (RFC 9260 §8.5)', async (t) => {
  const { c, feed, msgs, tr } = setup();
  const chunk = c.data(0, 51, Buffer.from('evil'));
  feed(encodeSctpPacket(5000, 5000, 0x9999, chunk), 'c2s');
  t.equal(tr.stats.badVtag, 1);
  c.tsn = (c.tsn - 1) >>> 0;
  feed(c.pkt(c.data(0, 51, Buffer.from('good'))), 'c2s');
  t.same(
    msgs().map((m) => m.data.toString()),
    ['good'],
    'the TSN was not consumed by the bogus packet',
  );
});

t.test('SACK from the receiver skips a capture gap, but not beyond what was seen', async (t) => {
  const { c, s, feed, msgs, tr } = setup();
  const m0 = c.data(0, 51, Buffer.from('m0'));
  const m1 = c.data(0, 51, Buffer.from('m1'));
  const m2 = c.data(0, 51, Buffer.from('m2'));
  feed(c.pkt(m0), 'c2s');
  feed(c.pkt(m2), 'c2s'); // m1 never seen by the tracker
  t.equal(msgs().length, 1);
  const m2tsn = m2[0]!.readUInt32BE(4);
  // Hostile SACK acking far beyond: only up to m2 is skipped.
  feed(s.pkt([encodeSackChunk((m2tsn + 1000) >>> 0)]), 's2c');
  t.same(
    msgs().map((m) => m.data.toString()),
    ['m0', 'm2'],
  );
  t.equal(tr.stats.skippedTsns, 1);
  feed(c.pkt(c.data(0, 51, Buffer.from('m3'))), 'c2s');
  t.same(
    msgs().map((m) => m.data.toString()),
    ['m0', 'm2', 'm3'],
    'data after the SACK still inspected',
  );
  void m1;
});

t.test('TSN wrap-around and start without INIT', async (t) => {
  {
    const { c, feed, msgs } = setup({}, 0xfffffffd);
    const big = Buffer.alloc(6000, 3);
    const ch = c.data(0, 53, big, { frag: 1000 });
    for (const x of shuffle([...ch], rng(1))) feed(c.pkt([x]), 'c2s');
    t.equal(msgs().length, 1);
    t.equal(msgs()[0]!.sha256, sha(big));
  }
  {
    const events: InspectEvent[] = [];
    const tr = new DataChannelTracker((e) => events.push(e));
    const c = new Sender(1, 2, 777);
    tr.push(c.pkt(c.data(0, 51, Buffer.from('mid-stream'))), 'c2s', 5);
    tr.push(c.pkt(c.data(0, 51, Buffer.from('next'))), 'c2s', 6);
    t.same(
      events.map((e) => (e.type === 'datachannel.message' ? [e.data.toString(), e.time] : null)),
      [
        ['mid-stream', 5],
        ['next', 6],
      ],
    );
    t.notOk('association' in events[0]!, 'no association key when unknown');
  }
});

t.test('association restart: new initial TSN applied when data uses it', async (t) => {
  const { c, feed, msgs } = setup();
  feed(c.pkt(c.data(0, 51, Buffer.from('old'))), 'c2s');
  const c2 = new Sender(0x1111, 0x2222, 900000);
  feed(c2.init(false, EXT), 'c2s');
  feed(c.pkt(c.data(0, 51, Buffer.from('old2'))), 'c2s');
  feed(c2.pkt(c2.data(0, 51, Buffer.from('new'))), 'c2s');
  t.same(
    msgs().map((m) => m.data.toString()),
    ['old', 'old2', 'new'],
  );
});

t.test('ABORT drops held state', async (t) => {
  const { c, feed, tr } = setup();
  const ch = c.data(0, 53, Buffer.alloc(5000, 1), { frag: 1000 });
  feed(c.pkt([ch[0]!, ch[2]!]), 'c2s');
  t.ok(tr.bufferedBytes > 0);
  feed(c.pkt([encodeChunk(ChunkType.ABORT, 0, Buffer.alloc(0))]), 'c2s');
  t.equal(tr.bufferedBytes, 0);
  t.equal(tr.bufferedFragments, 0);
  t.equal(tr.stats.aborts, 1);
});
