/**
 * readUdp4 (the capture reader's object-free IPv4/UDP path, issue 13) reads exactly what
 * decodeIp + decodeTransport read: for any bytes, it accepts a packet only when they
 * give an unfragmented IPv4 UDP datagram, with the same addresses, ports and payload, and
 * refuses everything else (which then takes their path). Random headers around valid ones:
 * header lengths, total lengths (0 as in TSO captures), fragment bits, protocols, UDP
 * lengths, truncations.
 */
import t from 'tap';
import fc from 'fast-check';
import { IPPROTO_UDP, buildIp, buildUdp, decodeIp, decodeTransport, newUdp4View, readUdp4 } from '../../../src/wire/netpkt.js';

const view = newUdp4View();

function compare(buf: Buffer, off: number): string | null {
  const ok = readUdp4(buf, off, view);
  const ip = decodeIp(buf, off);
  const tr = ip && ip.version === 4 && !ip.fragment ? decodeTransport(ip) : null;
  const want = tr !== null && tr.transport === 'udp';
  if (ok !== want) return `readUdp4 ${ok}, decoders ${want}`;
  if (!ok || !tr) return null;
  if (view.src !== ip!.src || view.dst !== ip!.dst) return 'addresses differ';
  if (view.srcPort !== tr.srcPort || view.dstPort !== tr.dstPort) return 'ports differ';
  if (!buf.subarray(view.payloadStart, view.payloadEnd).equals(tr.payload)) return 'payloads differ';
  return null;
}

t.test('valid datagrams, then every header field and length disturbed', (t) => {
  const arb = fc.record({
    payload: fc.uint8Array({ maxLength: 300 }),
    lead: fc.nat({ max: 6 }),
    mutations: fc.array(fc.tuple(fc.nat({ max: 40 }), fc.nat({ max: 255 })), { maxLength: 4 }),
    cut: fc.nat({ max: 400 }),
    proto: fc.constantFrom(IPPROTO_UDP, IPPROTO_UDP, 6, 1),
    frag: fc.constantFrom(0, 0, 0x2000, 0x0001, 0x4000, 0x4001),
    zeroTotal: fc.boolean(),
    pad: fc.nat({ max: 8 }),
  });
  let accepted = 0;
  let refused = 0;
  fc.assert(
    fc.property(arb, (a) => {
      const udp = buildUdp(40000, 3478, Buffer.from(a.payload));
      const ip = buildIp('192.0.2.1', '198.51.100.7', a.proto, udp);
      ip.writeUInt16BE(a.frag, 6);
      if (a.zeroTotal) ip.writeUInt16BE(0, 2);
      let buf = Buffer.concat([Buffer.alloc(a.lead, 0xaa), ip, Buffer.alloc(a.pad, 0x55)]);
      for (const [at, v] of a.mutations) if (a.lead + at < buf.length) buf[a.lead + at] = v;
      if (a.cut < buf.length && a.cut % 3 === 0) buf = buf.subarray(0, a.cut);
      const why = compare(buf, a.lead);
      if (readUdp4(buf, a.lead, view)) accepted++;
      else refused++;
      return why === null;
    }),
    { numRuns: 20_000 },
  );
  t.ok(accepted > 1000 && refused > 1000, `both sides exercised: ${accepted} accepted, ${refused} refused`);
  t.end();
});

t.test('IPv6 and offsets past the end are refused', (t) => {
  const v6 = buildIp('2001:db8::1', '2001:db8::2', IPPROTO_UDP, buildUdp(1, 2, Buffer.from('x')));
  t.equal(readUdp4(v6, 0, view), false);
  const v4 = buildIp('192.0.2.1', '192.0.2.2', IPPROTO_UDP, buildUdp(1, 2, Buffer.from('x')));
  t.equal(readUdp4(v4, 0, view), true);
  t.equal(readUdp4(v4, v4.length, view), false);
  t.equal(readUdp4(v4, -1, view), false);
  t.end();
});
