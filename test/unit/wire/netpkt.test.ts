import t from 'tap';
import {
  LINKTYPE_ETHERNET,
  LINKTYPE_LINUX_SLL,
  LINKTYPE_LINUX_SLL2,
  LINKTYPE_NULL,
  LINKTYPE_LOOP,
  LINKTYPE_RAW,
  LINKTYPE_IPV4,
  LINKTYPE_IPV6,
  IPPROTO_UDP,
  IPPROTO_TCP,
  TCP_SYN,
  TCP_ACK,
  buildUdpFrame,
  buildIp,
  buildUdp,
  buildTcp,
  buildEthernet,
  wrapLink,
  decodeFrame,
  decodeIp,
  decodeUdp,
  decodeTcp,
  linkPayloadOffset,
  formatIpv6,
  IpReassembler,
  TcpStream,
  TurnStreamFramer,
} from '../../../src/wire/netpkt.js';

const payload = Buffer.from('hello, datagram');

t.test('UDP over every supported link type, IPv4 and IPv6', async (t) => {
  for (const lt of [LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_NULL, LINKTYPE_LOOP, LINKTYPE_RAW]) {
    for (const [src, dst] of [
      ['192.0.2.1', '198.51.100.7'],
      ['2001:db8::1', '2001:db8:0:0:1::7'],
    ] as const) {
      const f = buildUdpFrame(lt, src, 50000, dst, 3478, payload);
      const d = decodeFrame(lt, f);
      t.ok(d, `linktype ${lt} ${src}`);
      t.equal(d!.ip.src, src);
      t.equal(d!.ip.dst, dst === '2001:db8:0:0:1::7' ? '2001:db8::1:0:0:7' : dst);
      t.equal(d!.transport, 'udp');
      t.equal(d!.srcPort, 50000);
      t.equal(d!.dstPort, 3478);
      t.same(d!.payload, payload);
      // Zero-copy: the payload shares memory with the frame.
      t.equal(d!.payload.buffer, f.buffer);
    }
  }
  t.ok(decodeFrame(LINKTYPE_IPV4, buildIp('10.0.0.1', '10.0.0.2', IPPROTO_UDP, buildUdp(1, 2, payload))));
  t.equal(decodeFrame(LINKTYPE_IPV6, buildIp('10.0.0.1', '10.0.0.2', IPPROTO_UDP, buildUdp(1, 2, payload))), null, 'v4 on v6 linktype');
  t.ok(decodeFrame(LINKTYPE_IPV6, buildIp('::1', '::1', IPPROTO_UDP, buildUdp(1, 2, payload))));
});

t.test('802.1Q VLAN tag and Ethernet padding', async (t) => {
  const ip = buildIp('10.1.1.1', '10.1.1.2', IPPROTO_UDP, buildUdp(5, 6, Buffer.from('x')));
  const f = Buffer.concat([buildEthernet(ip, 42), Buffer.alloc(20, 0xee)]);
  const d = decodeFrame(LINKTYPE_ETHERNET, f);
  t.same(d?.payload, Buffer.from('x'), 'trailing padding trimmed by IP/UDP lengths');
  const arp = Buffer.alloc(60);
  arp.writeUInt16BE(0x0806, 12);
  t.equal(decodeFrame(LINKTYPE_ETHERNET, arp), null);
  t.equal(linkPayloadOffset(9999, f), -1, 'unknown linktype');
});

t.test('IPv6 extension headers are skipped', async (t) => {
  const udp = buildUdp(7, 8, payload);
  const ip = buildIp('2001:db8::1', '2001:db8::2', IPPROTO_UDP, udp);
  // Insert a hop-by-hop header (8 bytes) and a destination options header (16 bytes).
  const hbh = Buffer.from([60, 0, 1, 4, 0, 0, 0, 0]);
  const dopt = Buffer.alloc(16);
  dopt[0] = IPPROTO_UDP;
  dopt[1] = 1;
  const hdr = Buffer.from(ip.subarray(0, 40));
  hdr[6] = 0;
  hdr.writeUInt16BE(8 + 16 + udp.length, 4);
  const d = decodeFrame(LINKTYPE_RAW, Buffer.concat([hdr, hbh, dopt, udp]));
  t.equal(d?.ip.proto, IPPROTO_UDP);
  t.same(d?.payload, payload);
  // A header length that runs past the packet is malformed.
  const bad = Buffer.from(dopt);
  bad[1] = 200;
  t.equal(decodeFrame(LINKTYPE_RAW, Buffer.concat([hdr, hbh, bad, udp])), null);
});

t.test('malformed and truncated input gives null', async (t) => {
  const f = buildUdpFrame(LINKTYPE_ETHERNET, '192.0.2.1', 1, '192.0.2.2', 2, payload);
  for (let n = 0; n < f.length; n++) t.equal(decodeFrame(LINKTYPE_ETHERNET, f.subarray(0, n)), null, `truncated at ${n}`);
  const badIhl = Buffer.from(f);
  badIhl[14] = 0x44;
  t.equal(decodeFrame(LINKTYPE_ETHERNET, badIhl), null, 'IHL < 5');
  const badUdpLen = Buffer.from(f);
  badUdpLen.writeUInt16BE(7, 14 + 20 + 4);
  t.equal(decodeFrame(LINKTYPE_ETHERNET, badUdpLen), null, 'UDP length < 8');
  t.equal(decodeUdp(Buffer.alloc(3)), null);
  t.equal(decodeTcp(Buffer.alloc(19)), null);
  const tcp = buildTcp(1, 2, 3, 0, Buffer.alloc(0));
  tcp[12] = 0xf0; // data offset 60 > length
  t.equal(decodeTcp(tcp), null);
  t.equal(decodeIp(Buffer.from([0x70])), null);
});

t.test('IPv6 text form (RFC 5952)', async (t) => {
  const b = (s: string) => Buffer.from(s.replace(/ /g, ''), 'hex');
  t.equal(formatIpv6(b('20010db8 00000000 00000000 00000001'), 0), '2001:db8::1');
  t.equal(formatIpv6(b('20010db8 00000001 00000000 00000001'), 0), '2001:db8:0:1::1');
  t.equal(formatIpv6(b('20010db8 00000001 00010001 00010001'), 0), '2001:db8:0:1:1:1:1:1', 'single zero group not compressed');
  t.equal(formatIpv6(b('00000000 00000000 00000000 00000000'), 0), '::');
  t.equal(formatIpv6(b('00000000 00000000 0000ffff c0000201'), 0), '::ffff:192.0.2.1');
  t.equal(formatIpv6(b('20010000 00000001 00000000 00000000'), 0), '2001:0:0:1::', 'longest run wins');
});

t.test('IPv4 and IPv6 fragments reassemble; non-first fragments are not decoded alone', async (t) => {
  for (const [src, dst] of [
    ['10.0.0.1', '10.0.0.2'],
    ['fe80::1', 'fe80::2'],
  ] as const) {
    const data = Buffer.alloc(3000);
    for (let i = 0; i < data.length; i++) data[i] = i & 0xff;
    const udp = buildUdp(4000, 5000, data);
    const parts = [0, 1480, 2960].map((off) => udp.subarray(off, Math.min(off + 1480, udp.length)));
    const frames = parts.map((p, i) =>
      wrapLink(LINKTYPE_RAW, buildIp(src, dst, IPPROTO_UDP, p, { id: 77, fragOffset: i * 1480, moreFragments: i < 2 })),
    );
    t.equal(decodeFrame(LINKTYPE_RAW, frames[1]!), null);
    const r = new IpReassembler();
    // Out of order: last, first, middle.
    t.equal(r.push(decodeIp(frames[2]!)!, 0), null);
    t.equal(r.push(decodeIp(frames[0]!)!, 1), null);
    const whole = r.push(decodeIp(frames[1]!)!, 2);
    t.ok(whole, `${src} reassembled`);
    t.same(decodeUdp(whole!.payload)?.payload, data);
    t.equal(r.stats.reassembled, 1);
    // Expiry: a lone fragment is dropped after the timeout.
    r.push(decodeIp(frames[0]!)!, 10);
    r.push(decodeIp(frames[2]!)!, 100_000);
    t.equal(r.stats.dropped, 1);
  }
});

t.test('reassembler caps the number of pending datagrams', async (t) => {
  const r = new IpReassembler(4);
  for (let id = 0; id < 10; id++)
    r.push(decodeIp(buildIp('10.0.0.1', '10.0.0.2', IPPROTO_UDP, Buffer.alloc(16), { id, moreFragments: true }))!, 0);
  t.equal(r.stats.dropped, 6);
});

t.test('TCP stream: in order, retransmission, reordering, gap', async (t) => {
  const got: Buffer[] = [];
  const gaps: boolean[] = [];
  const s = new TcpStream((d, g) => {
    got.push(Buffer.from(d));
    gaps.push(g);
  }, 2);
  const seg = (seq: number, data: string, flags = TCP_ACK) => decodeTcp(buildTcp(1, 2, seq, flags, Buffer.from(data)))!;
  s.push(seg(0xfffffff0, '', TCP_SYN));
  s.push(seg(0xfffffff1, 'abc'));
  s.push(seg(0xfffffff1, 'abc')); // retransmission
  s.push(seg(0xfffffff1, 'abcdef')); // overlapping, new tail
  s.push(seg(0xfffffffa, 'jkl')); // out of order (hole at ghi), wraps around 2^32
  s.push(seg(0xfffffff7, 'ghi'));
  t.equal(Buffer.concat(got).toString(), 'abcdefghijkl');
  t.equal(s.stats.retransmitted, 1);
  t.equal(s.stats.outOfOrder, 1);
  // A gap that never fills: after 3 held segments (cap 2) delivery skips it.
  const base = (0xfffffff1 + 12) >>> 0;
  s.push(seg(base + 3, 'PQR'));
  s.push(seg(base + 6, 'STU'));
  s.push(seg(base + 9, 'VWX'));
  t.equal(Buffer.concat(got).toString(), 'abcdefghijklPQRSTUVWX');
  t.ok(s.lost);
  t.equal(gaps.filter((g) => g).length, 1, 'one delivery flagged after the gap');
});

t.test('TURN framing on a TCP stream (RFC 8656 §5, §12.5)', async (t) => {
  const stun = Buffer.alloc(28);
  stun.writeUInt16BE(0x0001, 0);
  stun.writeUInt16BE(8, 2);
  stun.writeUInt32BE(0x2112a442, 4);
  const cd = Buffer.from([0x40, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0]); // padded to 12
  const stream = Buffer.concat([stun, cd, stun]);
  for (const split of [1, 3, 5, 17, 29, 33, 40]) {
    const msgs: Buffer[] = [];
    const f = new TurnStreamFramer((m) => msgs.push(Buffer.from(m)));
    for (let i = 0; i < stream.length; i += split) f.push(stream.subarray(i, i + split));
    t.equal(msgs.length, 3, `split ${split}`);
    t.same(msgs[0], stun);
    t.same(msgs[1], cd.subarray(0, 9), 'padding removed');
    t.same(msgs[2], stun);
    t.notOk(f.broken);
  }
  const f = new TurnStreamFramer(() => {});
  f.push(Buffer.from([0x16, 0xfe, 0xfd, 0, 0])); // TLS/DTLS: not TURN framing
  t.ok(f.broken);
});

t.test('TCP decode', async (t) => {
  const f = wrapLink(
    LINKTYPE_LINUX_SLL2,
    buildIp('127.0.0.1', '127.0.0.1', IPPROTO_TCP, buildTcp(40000, 3478, 1234, TCP_ACK, payload, 99)),
  );
  const d = decodeFrame(LINKTYPE_LINUX_SLL2, f);
  t.equal(d?.transport, 'tcp');
  t.equal(d?.tcp?.seq, 1234);
  t.equal(d?.tcp?.ack, 99);
  t.same(d?.payload, payload);
});
