// Real-peer proof for the data channel layer: two werift RTCPeerConnections (werift has
// its own SCTP stack in JS) talk over loopback ICE; a tap on each side's DTLS transport
// (RTCDtlsTransport.sendData, i.e. the plaintext SCTP packet handed to DTLS, RFC 8261)
// records every SCTP packet in both directions, as a gateway holding the DTLS keys would
// see them after decryption. The packets are fed into DataChannelTracker, and every
// message the peers exchanged must come out byte-identical (SHA-256), with the right
// labels, including a >200 KB binary message fragmented over ~170 DATA chunks.
// The second case makes the receiving peer drop some DATA packets after the tap (a
// deterministic rule on first-seen TSNs), so the tap sees genuine SCTP retransmissions.
// Loss is applied only while the big message is alone in flight: werift 0.24's SCTP
// stalls for good when packets are lost while several streams are active (a werift bug,
// seen without any tap, not ours).
import t from 'tap';
import { createHash } from 'node:crypto';
import { RTCPeerConnection, type RTCDataChannel } from 'werift';
import { DataChannelTracker } from '../../src/inspect/datachannel.js';
import type { InspectEvent, Direction } from '../../src/inspect/events.js';

const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');

interface Tap {
  pkts: Array<{ pkt: Buffer; dir: Direction; time: number }>;
}

function peer(): RTCPeerConnection {
  return new RTCPeerConnection({
    iceServers: [],
    iceUseIpv6: false,
    iceInterfaceAddresses: { udp4: '127.0.0.1' },
    iceAdditionalHostAddresses: ['127.0.0.1'],
    iceFilterCandidatePair: (pair) => pair.remoteCandidate.host === '127.0.0.1' && pair.localCandidate.host === '127.0.0.1',
    maxMessageSize: 1024 * 1024,
  });
}

/** Wraps the DTLS transport's sendData of pc once: records plaintext SCTP packets. */
function tapPeer(pc: RTCPeerConnection, tap: Tap): boolean {
  const dtls = pc.sctpTransport?.dtlsTransport as unknown as
    { sendData: (d: Buffer) => Promise<void>; role: string; __tapped?: boolean } | undefined;
  if (!dtls) return false;
  if (dtls.__tapped) return true;
  const orig = dtls.sendData;
  dtls.sendData = (data: Buffer) => {
    // RFC 8832 §6 / events.ts: c2s = from the DTLS client.
    tap.pkts.push({ pkt: Buffer.from(data), dir: dtls.role === 'client' ? 'c2s' : 's2c', time: Date.now() });
    return orig(data);
  };
  dtls.__tapped = true;
  return true;
}

function onlyLoopback(sdp: string): string {
  return sdp
    .split('\r\n')
    .filter((l) => !l.startsWith('a=candidate:') || l.includes(' 127.0.0.1 '))
    .join('\r\n');
}

async function gathered(pc: RTCPeerConnection): Promise<void> {
  if (pc.iceGatheringState === 'complete') return;
  await new Promise<void>((resolve) => {
    const sub = pc.iceGatheringStateChange.subscribe((s) => {
      if (s === 'complete') {
        sub.unSubscribe();
        resolve();
      }
    });
  });
}

async function connect(a: RTCPeerConnection, b: RTCPeerConnection, tap: Tap): Promise<void> {
  await a.setLocalDescription(await a.createOffer());
  tapPeer(a, tap);
  await gathered(a);
  await b.setRemoteDescription({ type: 'offer', sdp: onlyLoopback(a.localDescription!.sdp) });
  tapPeer(b, tap);
  await b.setLocalDescription(await b.createAnswer());
  await gathered(b);
  await a.setRemoteDescription({ type: 'answer', sdp: onlyLoopback(b.localDescription!.sdp) });
  if (!tapPeer(a, tap) || !tapPeer(b, tap)) throw new Error('no SCTP/DTLS transport to tap');
}

function waitOpen(dc: RTCDataChannel): Promise<void> {
  if (dc.readyState === 'open') return Promise.resolve();
  return new Promise((resolve) => {
    const sub = dc.stateChanged.subscribe((s) => {
      if (s === 'open') {
        sub.unSubscribe();
        resolve();
      }
    });
  });
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, rej) => {
      timer = setTimeout(() => rej(new Error(`timeout: ${what}`)), ms);
    }),
  ]);
}

interface Sent {
  label: string;
  sha256: string;
  size: number;
  ppid: number;
}

/**
 * Drops, once, every `every`-th first-seen ordered DATA packet among the next 200 TSNs
 * that pc receives (after the sender's tap), forcing retransmissions. Returns a counter.
 */
function dropOnReceive(pc: RTCPeerConnection, every: number): { drops: number } {
  const dtls = pc.sctpTransport!.dtlsTransport as unknown as { dataReceiver: (b: Buffer) => void };
  const orig = dtls.dataReceiver;
  const seen = new Set<number>();
  let first = -1;
  const st = { drops: 0 };
  dtls.dataReceiver = (buf: Buffer) => {
    // RFC 9260 §3.3.1: first chunk DATA (type 0) with U flag clear; TSN at offset 16.
    if (buf.length > 28 && buf[12] === 0 && (buf[13]! & 0x04) === 0) {
      const tsn = buf.readUInt32BE(16);
      if (first < 0) first = tsn;
      const idx = (tsn - first) >>> 0;
      if (!seen.has(tsn)) {
        seen.add(tsn);
        if (idx < 200 && idx % every === 3) {
          st.drops++;
          return;
        }
      }
    }
    orig(buf);
  };
  return st;
}

async function scenario(t: Tap & { dropEvery?: number }) {
  const a = peer();
  const b = peer();
  const received: Array<{ label: string; sha256: string }> = [];
  const remote = new Map<string, RTCDataChannel>();
  const remoteOpen = new Promise<void>((resolve) => {
    b.onDataChannel.subscribe((dc) => {
      remote.set(dc.label, dc);
      dc.onMessage.subscribe((m) => received.push({ label: dc.label, sha256: sha(m) }));
      if (remote.size === 3) resolve();
    });
  });
  const ordered = a.createDataChannel('ordered-chat', { protocol: 'chat-v1' });
  const unordered = a.createDataChannel('unordered-bin', { ordered: false });
  const files = a.createDataChannel('files', { protocol: 'ft' });
  const sent: Sent[] = [];
  try {
    await withTimeout(connect(a, b, t), 60000, 'connect');
    await withTimeout(Promise.all([waitOpen(ordered), waitOpen(unordered), waitOpen(files), remoteOpen]), 60000, 'channels open');
    for (let i = 0; i < 20; i++) {
      const s = `hello #${i} ${'é'.repeat(i)}`;
      ordered.send(s);
      sent.push({ label: 'ordered-chat', sha256: sha(s), size: Buffer.byteLength(s), ppid: 51 });
      const bin = Buffer.alloc(100 + i * 150, i);
      unordered.send(bin);
      sent.push({ label: 'unordered-bin', sha256: sha(bin), size: bin.length, ppid: 53 });
    }
    const waitReceived = (n: number) =>
      withTimeout(
        (async () => {
          while (received.length < n) await new Promise((r) => setTimeout(r, 50));
        })(),
        120000,
        `${n} messages delivered to b`,
      );
    await waitReceived(sent.length);
    // Loss is applied while only the big message is in flight (see header comment).
    const dropper = t.dropEvery ? dropOnReceive(b, t.dropEvery) : { drops: 0 };
    const big = Buffer.alloc(210 * 1024);
    for (let i = 0; i < big.length; i++) big[i] = (i * 31 + (i >>> 9)) & 0xff;
    Buffer.from('%PDF-1.7\n').copy(big);
    files.send(big);
    sent.push({ label: 'files', sha256: sha(big), size: big.length, ppid: 53 });
    // Reply from the answerer side on a channel it did not open.
    const reply = 'reply from b';
    remote.get('ordered-chat')!.send(reply);
    await waitReceived(sent.length);
    // Let the reply and the final SACKs cross.
    await new Promise((r) => setTimeout(r, 500));
    return { sent, reply, received, drops: dropper.drops };
  } finally {
    await a.close().catch(() => undefined);
    await b.close().catch(() => undefined);
  }
}

function inspect(tap: Tap) {
  const events: InspectEvent[] = [];
  const tr = new DataChannelTracker((e) => events.push(e), { association: 'e2e' });
  for (const { pkt, dir, time } of tap.pkts) tr.push(pkt, dir, time);
  const msgs = events.filter((e) => e.type === 'datachannel.message') as Extract<InspectEvent, { type: 'datachannel.message' }>[];
  const opens = events.filter((e) => e.type === 'datachannel.open') as Extract<InspectEvent, { type: 'datachannel.open' }>[];
  const files = events.filter((e) => e.type === 'file') as Extract<InspectEvent, { type: 'file' }>[];
  return { tr, events, msgs, opens, files };
}

t.test('werift peers over loopback: every message recovered byte-identical', async (t) => {
  const tap: Tap = { pkts: [] };
  const { sent, reply } = await scenario(tap);
  t.ok(tap.pkts.length > 200, `captured ${tap.pkts.length} SCTP packets`);
  t.ok(tap.pkts.some((p) => p.dir === 'c2s') && tap.pkts.some((p) => p.dir === 's2c'), 'both directions');
  const { tr, msgs, opens, files } = inspect(tap);
  t.equal(tr.stats.badChecksum, 0);
  t.equal(tr.stats.internalErrors, 0);
  t.same(opens.map((o) => [o.label, o.protocol, o.ordered]).sort(), [
    ['files', 'ft', true],
    ['ordered-chat', 'chat-v1', true],
    ['unordered-bin', '', false],
  ]);
  const fromA = msgs.filter((m) => m.label !== 'ordered-chat' || m.sha256 !== sha(reply));
  t.same(
    fromA.map((m) => [m.label, m.sha256, m.size, m.ppid]).sort(),
    sent.map((s) => [s.label, s.sha256, s.size, s.ppid]).sort(),
    'each message exactly once, byte-identical',
  );
  const dirs = new Set(fromA.map((m) => m.dir));
  t.equal(dirs.size, 1, 'all from the offerer side');
  const r = msgs.filter((m) => m.sha256 === sha(reply));
  t.equal(r.length, 1, 'reply seen once');
  t.equal(r[0]!.label, 'ordered-chat');
  t.not(r[0]!.dir, fromA[0]!.dir, 'reply in the other direction on the same stream');
  const bigOne = msgs.find((m) => m.label === 'files')!;
  t.ok(bigOne.size > 200 * 1024);
  t.same(
    files.filter((f) => f.fileType !== 'unknown').map((f) => [f.label, f.fileType, f.size]),
    [['files', 'pdf', bigOne.size]],
  );
  // File rule: binary messages >= 1 KiB are files even when their type is unknown.
  t.equal(files.filter((f) => f.fileType === 'unknown').length, sent.filter((s) => s.ppid === 53 && s.size >= 1024).length - 1);
  t.equal(tr.bufferedBytes, 0, 'nothing left held');
});

t.test('with packet loss: retransmissions are de-duplicated', async (t) => {
  const tap: Tap & { dropEvery: number } = { pkts: [], dropEvery: 7 };
  const { sent, reply, received, drops } = await scenario(tap);
  const { tr, msgs } = inspect(tap);
  t.equal(tr.stats.internalErrors, 0);
  t.ok(drops > 5, `receiver dropped ${drops} packets`);
  t.ok(tr.stats.duplicates >= drops, `retransmissions seen as duplicates: ${tr.stats.duplicates}`);
  const fromA = msgs.filter((m) => m.sha256 !== sha(reply));
  t.same(
    fromA.map((m) => [m.label, m.sha256]).sort(),
    sent.map((s) => [s.label, s.sha256]).sort(),
    'each message exactly once, byte-identical',
  );
  t.same(received.map((m) => [m.label, m.sha256]).sort(), sent.map((s) => [s.label, s.sha256]).sort(), 'peer agrees');
});
