import t, { type Test } from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CaptureInspector, encodePcap, readCapture, type CapturedPacket } from '../../../src/inspect/capture.js';
import { StaticKeyProvider, type FlowRecord } from '../../../src/inspect/pipeline.js';
import type { InspectEvent } from '../../../src/inspect/events.js';
import { toEve } from '../../../src/inspect/eve-format.js';
import {
  LINKTYPE_ETHERNET,
  LINKTYPE_LINUX_SLL2,
  IPPROTO_TCP,
  IPPROTO_UDP,
  TCP_ACK,
  TCP_SYN,
  buildIp,
  buildTcp,
  buildUdp,
  buildUdpFrame,
  wrapLink,
  buildEthernet,
} from '../../../src/wire/netpkt.js';
import { StunWriter, messageType, Method, Class, Attr } from '../../../src/wire/stun.js';
import { buildChannelData } from '../../../src/wire/channeldata.js';
import { syntheticSession, SctpBuilder } from './pipeline-helpers.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const T0 = Date.UTC(2026, 10, 22, 10, 0, 0);

function stun(method: number, cls: number, fill: (w: StunWriter) => void, tid = randomBytes(12)): Buffer {
  const w = new StunWriter().reset(messageType(method, cls), tid);
  fill(w);
  return w.copy();
}

interface Leg {
  send(fromClient: boolean, inner: Buffer): void;
}

/** Inner datagrams of one session: hellos, data channel with a message and a bulk file, SRTP. */
function sessionDatagrams() {
  const s = syntheticSession();
  const sctp = new SctpBuilder();
  const msg = Buffer.from('hello over the relay');
  const bulk = randomBytes(120_000);
  const out: { fromClient: boolean; data: Buffer }[] = [...s.hello];
  const push = (fromClient: boolean, d: Buffer) => out.push({ fromClient, data: d });
  push(true, s.appData(true, sctp.init()));
  push(true, s.appData(true, sctp.open(0, 'chat')));
  push(true, s.appData(true, sctp.message(0, msg)));
  for (const f of sctp.fragmented(0, bulk, 1000)) push(true, s.appData(true, f));
  for (let i = 0; i < 10; i++) push(i % 2 === 0, s.srtp(i % 2 === 0, i, Buffer.alloc(100, i)));
  return { s, out, hashes: [sha(msg), sha(bulk)] };
}

function collect(keys: StaticKeyProvider) {
  const byFlow = new Map<number, { rec: FlowRecord; events: InspectEvent[] }>();
  const ins = new CaptureInspector({
    keys,
    onEvent: (e, rec) => {
      const f = byFlow.get(rec.meta.flowId) ?? { rec, events: [] };
      f.events.push(e);
      byFlow.set(rec.meta.flowId, f);
    },
  });
  return { ins, byFlow };
}

const dir = mkdtempSync(join(tmpdir(), 'gh-capture-inspector-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

/**
 * `gatehouse inspect` reads with ReadCaptureOptions.reuseChunks: a record's bytes are
 * overwritten by later reads, so CaptureInspector must copy whatever it keeps (IP
 * fragments, TCP segments, TURN framing cut by a segment, DTLS records held); and with
 * borrowedPlaintext each record is decrypted into one buffer, so the data channel
 * tracker must copy the fragments of a message it reassembles. The packets
 * of `linktype` written to a pcap and read back in small reused chunks (most records cut
 * by a chunk's end, every chunk's bytes overwritten twice) give the events they give fed
 * one by one from buffers of their own.
 */
async function sameThroughReusedChunks(t: Test, keys: StaticKeyProvider, packets: CapturedPacket[], linktype: number) {
  const frames = packets.filter((p) => p.linktype === linktype).map((p) => ({ time: p.time, data: Buffer.from(p.data) }));
  const run =
    (feed: (ins: CaptureInspector) => Promise<void> | void, borrowedPlaintext = false) =>
    async () => {
      const lines: string[] = [];
      const ins = new CaptureInspector({ keys, borrowedPlaintext, onEvent: (e, f) => lines.push(JSON.stringify(toEve(e, f.meta))) });
      await feed(ins);
      ins.finish();
      return lines;
    };
  const direct = await run((ins) => {
    for (const f of frames) ins.packet({ time: f.time, linktype, data: Buffer.from(f.data), origLength: f.data.length });
  })();
  t.ok(
    direct.some((l) => l.includes('"event_type":"datachannel.message"')),
    'the packets carry data-channel messages',
  );
  const file = join(dir, `reuse-${linktype}-${frames.length}.pcap`);
  writeFileSync(file, encodePcap(linktype, frames));
  for (const hwm of [700, 4096]) {
    // As `gatehouse inspect` reads: plaintexts borrowed too (the data channel's fragments copied).
    const viaChunks = await run(async (ins) => {
      await readCapture(file, (p) => ins.packet(p), { highWaterMark: hwm, reuseChunks: true });
    }, true)();
    t.same(viaChunks, direct, `reused chunks of ${hwm} bytes, borrowed plaintexts: the same events`);
  }
}

function checkFlow(t: Test, events: InspectEvent[], hashes: string[], label: string) {
  const got = events.filter((e) => e.type === 'datachannel.message').map((e) => (e.type === 'datachannel.message' ? e.sha256 : ''));
  t.same(got, hashes, `${label}: every message recovered`);
  t.equal(events.filter((e) => e.type === 'rtp.packet').length, 10, `${label}: every SRTP packet authenticated`);
  t.notOk(
    events.some((e) => e.type === 'undecryptable'),
    `${label}: nothing undecryptable`,
  );
}

t.test('relay leg (plain UDP) and TURN-wrapped leg (ChannelData and Send/Data) in one capture', async (t) => {
  const { s, out, hashes } = sessionDatagrams();
  const { ins, byFlow } = collect(new StaticKeyProvider([s.keySet]));
  const client = { ip: '192.0.2.10', port: 50000 };
  const turn = { ip: '198.51.100.1', port: 3478 };
  const relayed = { ip: '198.51.100.1', port: 49170 };
  const peer = { ip: '203.0.113.5', port: 61000 };
  let time = T0;
  const frame = (src: typeof client, dst: typeof client, payload: Buffer) =>
    ins.packet({
      time: (time += 1),
      linktype: LINKTYPE_ETHERNET,
      data: buildUdpFrame(LINKTYPE_ETHERNET, src.ip, src.port, dst.ip, dst.port, payload),
      origLength: 0,
    });
  // TURN control on the client leg: Allocate success (relayed address), ChannelBind for the peer.
  frame(
    turn,
    client,
    stun(Method.Allocate, Class.Success, (w) => w.xorAddress(Attr.XorRelayedAddress, relayed.ip, relayed.port)),
  );
  const tid = randomBytes(12);
  frame(
    client,
    turn,
    stun(
      Method.ChannelBind,
      Class.Request,
      (w) => w.attr(Attr.ChannelNumber, Buffer.from([0x40, 0x01, 0, 0])).xorAddress(Attr.XorPeerAddress, peer.ip, peer.port),
      tid,
    ),
  );
  frame(
    turn,
    client,
    stun(Method.ChannelBind, Class.Success, () => {}, tid),
  );
  out.forEach((d, i) => {
    // Client leg: alternate ChannelData and Send/Data indications.
    if (i % 3 === 0) {
      const m = d.fromClient ? Method.Send : Method.Data;
      const ind = stun(m, Class.Indication, (w) => w.xorAddress(Attr.XorPeerAddress, peer.ip, peer.port).attr(Attr.Data, d.data));
      frame(d.fromClient ? client : turn, d.fromClient ? turn : client, ind);
    } else {
      frame(d.fromClient ? client : turn, d.fromClient ? turn : client, buildChannelData(0x4001, d.data));
    }
    // Relay leg: the same inner datagram between the relayed address and the peer.
    frame(d.fromClient ? relayed : peer, d.fromClient ? peer : relayed, d.data);
  });
  ins.finish();
  t.equal(byFlow.size, 2, 'two flows: wrapped leg and relay leg');
  const flows = [...byFlow.values()];
  const wrapped = flows.find((f) => f.rec.meta.turn);
  const relay = flows.find((f) => !f.rec.meta.turn);
  t.ok(wrapped && relay);
  checkFlow(t, wrapped!.events, hashes, 'wrapped leg');
  checkFlow(t, relay!.events, hashes, 'relay leg');
  t.same(wrapped!.rec.meta.turn!.relayed, relayed);
  t.same(wrapped!.rec.meta.turn!.client, client);
  const eve = toEve(
    wrapped!.events.find((e) => e.type === 'datachannel.message')!,
    wrapped!.rec.meta,
  );
  t.equal(eve.src_ip, client.ip, 'wrapped leg: from the client');
  t.equal(eve.dest_ip, peer.ip, 'to the peer');
  t.equal((eve.gatehouse as Record<string, unknown>).relayed, '198.51.100.1:49170');
  t.equal(ins.stats.turnUnbound, 0);
  t.ok(ins.stats.turnData > 0 && ins.stats.turnControl === 3);
});

t.test('TURN over TCP: segments split and coalesced, ChannelData padded (RFC 8656 §12.5)', async (t) => {
  const { s, out, hashes } = sessionDatagrams();
  const { ins, byFlow } = collect(new StaticKeyProvider([s.keySet]));
  const C = { ip: '2001:db8::10', port: 50001 };
  const S = { ip: '2001:db8::1', port: 3478 };
  const peer = { ip: '2001:db8:1::5', port: 61000 };
  const tid = randomBytes(12);
  const c2s: Buffer[] = [
    stun(
      Method.ChannelBind,
      Class.Request,
      (w) => w.attr(Attr.ChannelNumber, Buffer.from([0x40, 0x02, 0, 0])).xorAddress(Attr.XorPeerAddress, peer.ip, peer.port),
      tid,
    ),
  ];
  const s2c: Buffer[] = [stun(Method.ChannelBind, Class.Success, () => {}, tid)];
  for (const d of out) (d.fromClient ? c2s : s2c).push(buildChannelData(0x4002, d.data, true));
  let time = T0;
  const sent: CapturedPacket[] = [];
  const seq = { c: 1000, s: 9000 };
  const send = (fromC: boolean, payload: Buffer, flags = TCP_ACK) => {
    const [a, b] = fromC ? [C, S] : [S, C];
    const k = fromC ? 'c' : 's';
    const tcp = buildTcp(a.port, b.port, seq[k], flags, payload);
    seq[k] = (seq[k] + payload.length + (flags & TCP_SYN ? 1 : 0)) >>> 0;
    const pkt = {
      time: (time += 1),
      linktype: LINKTYPE_LINUX_SLL2,
      data: wrapLink(LINKTYPE_LINUX_SLL2, buildIp(a.ip, b.ip, IPPROTO_TCP, tcp)),
      origLength: 0,
    };
    sent.push(pkt);
    ins.packet(pkt);
  };
  send(true, Buffer.alloc(0), TCP_SYN);
  send(false, Buffer.alloc(0), TCP_SYN | TCP_ACK);
  // The handshake must come first: send the bind, then interleave by original order.
  const cs = Buffer.concat(c2s);
  const ss = Buffer.concat(s2c);
  // Odd segment sizes so messages straddle segments; the server side in big chunks.
  let ci = 0;
  let si = 0;
  while (ci < cs.length || si < ss.length) {
    if (ci < cs.length) {
      const n = Math.min(cs.length - ci, 1337);
      send(true, cs.subarray(ci, ci + n));
      ci += n;
    }
    if (si < ss.length && ci > 600) {
      const n = Math.min(ss.length - si, 4000);
      send(false, ss.subarray(si, si + n));
      si += n;
    }
  }
  ins.finish();
  t.equal(byFlow.size, 1);
  const f = [...byFlow.values()][0]!;
  t.equal(f.rec.meta.proto, 'TCP');
  const got = f.events.filter((e) => e.type === 'datachannel.message').map((e) => (e.type === 'datachannel.message' ? e.sha256 : ''));
  t.same(got, hashes, 'messages recovered through TCP reassembly and framing');
  t.equal(ins.stats.tcpNotTurn, 0);
  await sameThroughReusedChunks(t, new StaticKeyProvider([s.keySet]), sent, LINKTYPE_LINUX_SLL2);
});

t.test('non-TURN TCP, other protocols, bad link types, VLAN, IPv4 fragments', async (t) => {
  const { s, out, hashes } = sessionDatagrams();
  const { ins, byFlow } = collect(new StaticKeyProvider([s.keySet]));
  const sent: CapturedPacket[] = [];
  const p = (data: Buffer, linktype = LINKTYPE_ETHERNET): void => {
    const pkt: CapturedPacket = { time: T0, linktype, data, origLength: data.length };
    sent.push(pkt);
    ins.packet(pkt);
  };
  p(
    buildEthernet(
      buildIp('10.0.0.1', '10.0.0.2', IPPROTO_TCP, buildTcp(1, 443, 1, TCP_ACK, Buffer.from([0x16, 3, 1, 0, 5, 1, 2, 3, 4, 5]))),
    ),
  );
  t.equal(ins.stats.tcpNotTurn, 1, 'TLS on TCP is not TURN framing');
  p(buildEthernet(buildIp('10.0.0.1', '10.0.0.2', 1, Buffer.alloc(8))));
  t.equal(ins.stats.otherProto, 1, 'ICMP');
  p(Buffer.alloc(30), 147);
  t.equal(ins.stats.unsupportedLink, 1);
  // The session over VLAN-tagged Ethernet, with the big datagrams IPv4-fragmented.
  let id = 1;
  for (const d of out) {
    const [a, b] = d.fromClient
      ? ([
          ['10.1.0.1', 5000],
          ['10.1.0.2', 6000],
        ] as const)
      : ([
          ['10.1.0.2', 6000],
          ['10.1.0.1', 5000],
        ] as const);
    const udp = buildUdp(a[1], b[1], d.data);
    if (udp.length > 600) {
      const ip1 = buildIp(a[0], b[0], IPPROTO_UDP, udp.subarray(0, 504), { id, moreFragments: true });
      const ip2 = buildIp(a[0], b[0], IPPROTO_UDP, udp.subarray(504), { id, fragOffset: 504 });
      p(buildEthernet(ip2, 7));
      p(buildEthernet(ip1, 7));
    } else p(buildEthernet(buildIp(a[0], b[0], IPPROTO_UDP, udp), 7));
    id++;
  }
  ins.finish();
  t.ok(ins.stats.ipReassembled > 0, 'fragments were reassembled');
  const f = [...byFlow.values()].find((x) => x.events.some((e) => e.type === 'datachannel.message'));
  t.ok(f);
  t.same(
    f!.events.filter((e) => e.type === 'datachannel.message').map((e) => (e.type === 'datachannel.message' ? e.sha256 : '')),
    hashes,
  );
  await sameThroughReusedChunks(t, new StaticKeyProvider([s.keySet]), sent, LINKTYPE_ETHERNET);
});
