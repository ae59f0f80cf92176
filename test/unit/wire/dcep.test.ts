// DCEP (RFC 8832 §5) and PPID (RFC 8831 §8) tests.
import t from 'tap';
import {
  ChannelType,
  decodeDcep,
  encodeDcepAck,
  encodeDcepOpen,
  isEmptyPpid,
  isPartialPpid,
  isStringPpid,
  Ppid,
  reliabilityOf,
} from '../../../src/wire/dcep.js';

const h = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

t.test('DATA_CHANNEL_OPEN from the RFC 8832 §5.1 layout', async (t) => {
  // type 03, channel type 0x81 (rexmit unordered), priority 0x0100, reliability 3,
  // label "chat" (4), protocol "x" (1)
  const m = decodeDcep(h('03 81 0100 00000003 0004 0001 63686174 78'))!;
  t.same(m, {
    type: 'open',
    channelType: 0x81,
    ordered: false,
    reliability: 'rexmit',
    priority: 256,
    reliabilityParameter: 3,
    label: 'chat',
    protocol: 'x',
  });
  const e = encodeDcepOpen({ channelType: ChannelType.PARTIAL_RELIABLE_TIMED, label: 'ünï', protocol: 'p', reliabilityParameter: 1500 });
  const d = decodeDcep(e)!;
  t.equal(d.type, 'open');
  if (d.type === 'open') {
    t.equal(d.label, 'ünï');
    t.equal(d.protocol, 'p');
    t.equal(d.reliability, 'timed');
    t.ok(d.ordered);
    t.equal(d.reliabilityParameter, 1500);
  }
  t.same(decodeDcep(encodeDcepAck()), { type: 'ack' });
  t.same(decodeDcep(h('02')), { type: 'ack' });
});

t.test('malformed DCEP', async (t) => {
  t.equal(decodeDcep(Buffer.alloc(0)), null);
  t.equal(decodeDcep(h('03 00 0000 00000000 0000')), null, 'short header');
  t.equal(decodeDcep(h('03 00 0000 00000000 0005 0000 6162')), null, 'label overruns');
  t.equal(decodeDcep(h('03 00 0000 00000000 0000 ffff')), null, 'protocol overruns');
  t.equal(decodeDcep(h('01')), null, 'reserved type');
  t.equal(decodeDcep(h('04 00')), null, 'unknown type');
  const empty = decodeDcep(h('03 00 0000 00000000 0000 0000'));
  t.same(empty && empty.type === 'open' ? [empty.label, empty.protocol, empty.reliability] : null, ['', '', 'reliable']);
  t.throws(() => encodeDcepOpen({ label: 'x'.repeat(70000) }), RangeError);
});

t.test('channel types and PPIDs', async (t) => {
  t.equal(reliabilityOf(ChannelType.RELIABLE_UNORDERED), 'reliable');
  t.equal(reliabilityOf(ChannelType.PARTIAL_RELIABLE_REXMIT_UNORDERED), 'rexmit');
  t.equal(reliabilityOf(0x05), 'unknown');
  t.same(
    [Ppid.DCEP, Ppid.STRING, Ppid.BINARY_PARTIAL, Ppid.BINARY, Ppid.STRING_PARTIAL, Ppid.STRING_EMPTY, Ppid.BINARY_EMPTY],
    [50, 51, 52, 53, 54, 56, 57],
  );
  t.ok(isEmptyPpid(56) && isEmptyPpid(57) && !isEmptyPpid(53));
  t.ok(isStringPpid(51) && isStringPpid(54) && isStringPpid(56) && !isStringPpid(53) && !isStringPpid(0));
  t.ok(isPartialPpid(52) && isPartialPpid(54) && !isPartialPpid(53));
});
