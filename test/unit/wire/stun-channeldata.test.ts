import t from 'tap';
import {
  StreamFramer,
  buildChannelData,
  channelDataLengthAt,
  channelDataPadding,
  channelNumberAt,
  isChannelData,
  isValidChannelNumber,
  parseChannelData,
  streamFrameSize,
} from '../../../src/wire/channeldata.js';
import { Class, Method, StunWriter, decodeStun, messageType } from '../../../src/wire/stun.js';

function stunMsg(n: number): Buffer {
  return new StunWriter().reset(messageType(Method.Binding, Class.Request), Buffer.alloc(12, n)).attr(0x8022, 'x'.repeat(n)).copy();
}

t.test('ChannelData header (RFC 8656 §12.4)', async (t) => {
  t.ok(isValidChannelNumber(0x4000));
  t.ok(isValidChannelNumber(0x4fff));
  t.notOk(isValidChannelNumber(0x3fff));
  t.notOk(isValidChannelNumber(0x5000));
  const cd = buildChannelData(0x4001, Buffer.from('hello'));
  t.equal(cd.length, 9, 'no padding over UDP');
  t.ok(isChannelData(cd));
  t.equal(channelNumberAt(cd), 0x4001);
  t.equal(channelDataLengthAt(cd), 5);
  const v = parseChannelData(cd)!;
  t.equal(v.channel, 0x4001);
  t.equal(v.data.toString(), 'hello');
  const padded = buildChannelData(0x4001, Buffer.from('hello'), true);
  t.equal(padded.length, 12, 'padded to 4 over streams');
  t.equal(parseChannelData(padded)!.data.toString(), 'hello', 'padding ignored');
  t.equal(channelDataPadding(0), 0);
  t.equal(channelDataPadding(1), 3);
  t.equal(channelDataPadding(4), 0);
  t.equal(parseChannelData(cd.subarray(0, 8)), null, 'short datagram discarded');
  t.equal(parseChannelData(Buffer.from([0x50, 0, 0, 0])), null, 'reserved range');
  t.equal(parseChannelData(Buffer.from([0x40, 0])), null);
});

t.test('stream framing: coalesced and split frames', async (t) => {
  const frames = [
    stunMsg(3),
    buildChannelData(0x4000, Buffer.from('abcde'), true),
    stunMsg(8),
    buildChannelData(0x4fff, Buffer.alloc(0), true),
  ];
  const all = Buffer.concat(frames);
  t.equal(streamFrameSize(all), frames[0]!.length);
  // Every split point, in two chunks, and byte by byte.
  for (const chunkSize of [1, 2, 3, 5, 7, all.length]) {
    const f = new StreamFramer();
    const got: string[] = [];
    for (let i = 0; i < all.length; i += chunkSize) {
      t.ok(f.push(all.subarray(i, i + chunkSize), (fr) => got.push(fr.toString('hex'))));
    }
    t.same(
      got,
      frames.map((x) => x.toString('hex')),
      `chunk size ${chunkSize}`,
    );
    t.equal(f.buffered, 0);
  }
  const f = new StreamFramer();
  const got: Buffer[] = [];
  f.push(all.subarray(0, 10), (x) => got.push(Buffer.from(x)));
  f.push(all.subarray(10), (x) => got.push(Buffer.from(x)));
  t.equal(got.length, 4);
  t.ok(decodeStun(got[0]!), 'first frame decodes as STUN');
});

t.test('stream framing errors', async (t) => {
  const f = new StreamFramer();
  t.notOk(
    f.push(Buffer.from([0x80, 1, 2, 3]), () => t.fail('no frame')),
    'RTP-like first byte',
  );
  t.ok(f.broken);
  t.notOk(f.push(stunMsg(1), () => t.fail('broken stays broken')));
  const g = new StreamFramer();
  const bad = stunMsg(4);
  bad[4] = 0; // cookie
  t.notOk(g.push(bad, () => t.fail('no frame')));
  const h = new StreamFramer();
  t.notOk(
    h.push(Buffer.from([0x50, 0, 0, 4, 1, 2, 3, 4]), () => t.fail('no frame')),
    'reserved channel range',
  );
});
