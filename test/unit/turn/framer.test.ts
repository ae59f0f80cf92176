import t from 'tap';
import { randomBytes } from 'node:crypto';
import { StunWriter, messageType, Class, Method } from '../../../src/wire/stun.js';
import { buildChannelData } from '../../../src/wire/channeldata.js';
import { StreamFramer } from '../../../src/turn/framer.js';

const binding = (): Buffer => new StunWriter().reset(messageType(Method.Binding, Class.Request), randomBytes(12)).copy();

t.test('a 64 KB frame in 16-byte pieces is copied once (linear, RFC 8656 §5 framing)', async (t) => {
  const payload = randomBytes(65532); // 4 + 65532 = 65536 bytes, no padding
  const frame = buildChannelData(0x4001, payload, true);
  t.equal(frame.length, 65536);
  const f = new StreamFramer();
  const got: Buffer[] = [];
  let accepted = 0;
  for (let i = 0; i < frame.length; i += 16) if (f.push(frame.subarray(i, i + 16), (x) => got.push(x))) accepted++;
  t.equal(accepted, frame.length / 16, 'every piece accepted');
  t.equal(got.length, 1, 'one frame');
  t.ok(got[0]!.equals(frame), 'intact');
  // The old framer re-concatenated everything buffered on every chunk: sum over 4096
  // chunks of the bytes held, about 134 MB for this frame. Linear means each byte once.
  t.equal(f.copied, frame.length, 'bytes copied == frame size');
  t.equal(f.buffered, 0);
});

t.test('random splits of a mixed stream: same frames, copies bounded by the stream size', async (t) => {
  const frames = [
    binding(),
    buildChannelData(0x4002, randomBytes(3), true),
    buildChannelData(0x4003, Buffer.alloc(0), true),
    binding(),
    buildChannelData(0x4fff, randomBytes(1500), true),
    binding(),
  ];
  const stream = Buffer.concat(frames);
  for (let round = 0; round < 50; round++) {
    const f = new StreamFramer();
    const got: Buffer[] = [];
    let off = 0;
    let refused = 0;
    while (off < stream.length) {
      const n = 1 + Math.floor(Math.random() * 40);
      if (!f.push(stream.subarray(off, off + n), (x) => got.push(Buffer.from(x)))) refused++;
      off += n;
    }
    t.equal(refused, 0);
    t.same(
      got.map((x) => x.toString('hex')),
      frames.map((x) => x.toString('hex')),
    );
    t.ok(f.copied <= stream.length, 'never more copying than bytes received');
  }
});

t.test('a frame assembled across chunks stays valid after the next push', async (t) => {
  const a = binding();
  const b = binding();
  const f = new StreamFramer();
  const got: Buffer[] = [];
  f.push(a.subarray(0, 10), (x) => got.push(x));
  f.push(Buffer.concat([a.subarray(10), b.subarray(0, 5)]), (x) => got.push(x));
  f.push(b.subarray(5), (x) => got.push(x));
  t.ok(got[0]!.equals(a), 'first frame not overwritten by the second');
  t.ok(got[1]!.equals(b));
});

t.test('framing errors: not STUN/ChannelData, bad cookie, reserved channel range', async (t) => {
  t.notOk(
    new StreamFramer().push(Buffer.from([0x80, 0, 0, 0]), () => {}),
    'RTP-looking first byte',
  );
  t.notOk(
    new StreamFramer().push(Buffer.from([0x80]), () => {}),
    'rejected on its first byte',
  );
  const bad = binding();
  bad.writeUInt32BE(0xdeadbeef, 4);
  const f = new StreamFramer();
  t.ok(f.push(bad.subarray(0, 3), () => {}));
  t.notOk(
    f.push(bad.subarray(3), () => {}),
    'bad magic cookie, split',
  );
  t.notOk(
    f.push(binding(), () => {}),
    'broken stays broken',
  );
  t.notOk(
    new StreamFramer().push(buildChannelData(0x5000, Buffer.alloc(4), true), () => {}),
    '0x5000 reserved (RFC 8656 §12.6)',
  );
  const got: Buffer[] = [];
  t.ok(
    new StreamFramer(true).push(buildChannelData(0x5000, Buffer.alloc(4), true), (x) => got.push(x)),
    'legacy range accepted',
  );
  t.equal(got.length, 1);
});
