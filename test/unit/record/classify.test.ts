// Issue 9 (media): the recorder holds a stream's first packets until its codec is known
// (rtp.stream after them, or its own look at the payloads), bounded by
// RECORDING_CLASSIFY_MAX_PACKETS / _BYTES; pcaps follow the flow's live peer port and the
// DTLS roles of event directions.
import t from 'tap';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ManualClock } from '../../../src/util/clock.js';
import { RECORDING_CLASSIFY_MAX_PACKETS, RecordingStore, type FlowInfo } from '../../../src/record/recorder.js';
import { verifyRecordings } from '../../../src/record/manifest.js';
import type { RtpPacketEvent } from '../../../src/inspect/events.js';
import { testSigner } from './identity-helper.js';
import { streamEvent } from './media-helpers.js';

const work = mkdtempSync(join(tmpdir(), 'gh-rec-classify-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

// CELT FB 20 ms mono (config 31, code 0; RFC 6716 §3.1) and a few payload bytes.
const OPUS = Buffer.from([0xf8, 0xff, 0xfe, 0x01, 0x02]);

function pkt(ssrc: number, i: number, payload: Buffer, dir: 'c2s' | 's2c' = 'c2s'): RtpPacketEvent {
  return {
    type: 'rtp.packet',
    time: 1000 + i * 20,
    dir,
    ssrc,
    payloadType: 111,
    seq: i,
    index: i,
    timestamp: 5000 + i * 960,
    marker: i === 0,
    payloadSize: payload.length,
    payload,
  };
}

/** Audio packet count of an Ogg/Opus file (lacing; the 2 header packets removed). */
function oggPackets(file: string): number {
  const b = readFileSync(file);
  let n = 0;
  let off = 0;
  while (off + 27 <= b.length) {
    const nseg = b[off + 26]!;
    let len = 0;
    for (let i = 0; i < nseg; i++) {
      len += b[off + 27 + i]!;
      if (b[off + 27 + i]! < 255) n++;
    }
    off += 27 + nseg + len;
  }
  return n - 2;
}

/** UDP ports of each record of a LINKTYPE_RAW IPv4 pcap. */
function pcapPorts(file: string): [number, number][] {
  const b = readFileSync(file);
  const out: [number, number][] = [];
  for (let off = 24; off + 16 <= b.length;) {
    const incl = b.readUInt32LE(off + 8);
    const ip = off + 16;
    const ihl = (b[ip]! & 0x0f) * 4;
    out.push([b.readUInt16BE(ip + ihl), b.readUInt16BE(ip + ihl + 2)]);
    off = ip + incl;
  }
  return out;
}

async function setup(name: string, flow: Partial<FlowInfo> = {}) {
  const store = new RecordingStore({ dir: join(work, name), identity: await testSigner(), clock: new ManualClock(), fsync: false });
  const rec = store.open({ flowId: name, client: { ip: '10.0.0.1', port: 5000 }, peer: { ip: '10.0.0.2', port: 0 }, ...flow });
  return { store, rec };
}

function manifestOf(dir: string) {
  return JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')) as {
    streams: { ssrc: number; codec: string; classifiedBy: string | null; file: string | null; note?: string }[];
    flow: { peer: { port: number } };
  };
}

t.test('packets before rtp.stream are held and written first, with the start pre-skip', async (t) => {
  const peer = { ip: '10.0.0.2', port: 0 };
  const { rec } = await setup('late-stream', { peer });
  peer.port = 40000; // learned from the first datagram, after open()
  for (let i = 0; i < 3; i++) rec.onEvent(pkt(7, i, OPUS));
  t.notOk(
    readdirSync(rec.recordingDir).some((f) => f.startsWith('audio-')),
    'no audio file while the codec is unknown',
  );
  rec.onEvent(streamEvent(7, 'opus', 111, 1060));
  for (let i = 3; i < 10; i++) rec.onEvent(pkt(7, i, OPUS));
  const dir = rec.recordingDir;
  t.ok(rec.close(), 'sealed');
  t.equal(oggPackets(join(dir, 'audio-7.opus')), 10, 'every packet from the first');
  const head = readFileSync(join(dir, 'audio-7.opus'));
  t.equal(head.readUInt16LE(28 + 10), 312, 'pre-skip 312: the stream is whole from its start');
  const m = manifestOf(dir);
  t.same(m.streams, [{ ssrc: 7, codec: 'opus', classifiedBy: 'rtp.stream', file: 'audio-7.opus', pcap: 'rtp-7.pcap' }]);
  t.equal(m.flow.peer.port, 40000, 'manifest has the learned peer port');
  t.same(new Set(pcapPorts(join(dir, 'rtp-7.pcap')).map((p) => p.join('>'))), new Set(['5000>40000']), 'pcap: client → learned peer port');
  t.ok(verifyRecordings(join(work, 'late-stream')).ok, 'verifies');
});

t.test('no rtp.stream: the recorder classifies Opus itself (mid-stream pre-skip)', async (t) => {
  const { rec } = await setup('own-opus');
  for (let i = 0; i < 10; i++) rec.onEvent(pkt(9, i, OPUS));
  const dir = rec.recordingDir;
  rec.close();
  t.equal(oggPackets(join(dir, 'audio-9.opus')), 10, 'the held packets too');
  t.equal(readFileSync(join(dir, 'audio-9.opus')).readUInt16LE(28 + 10), 3840, 'pre-skip 3840: joined mid-stream');
  t.same(manifestOf(dir).streams[0]!.classifiedBy, 'payload');
});

t.test('timestamps that do not step by the packet duration are not Opus; the bound ends the hold', async (t) => {
  const { rec } = await setup('unclassified');
  const n = RECORDING_CLASSIFY_MAX_PACKETS + 5;
  for (let i = 0; i < n; i++) rec.onEvent({ ...pkt(11, i, OPUS), timestamp: 5000 + i * 700 });
  const dir = rec.recordingDir;
  rec.close();
  t.notOk(
    readdirSync(dir).some((f) => f.startsWith('audio-')),
    'no audio file',
  );
  t.same(manifestOf(dir).streams, [
    { ssrc: 11, codec: 'unclassified', classifiedBy: null, file: null, pcap: 'rtp-11.pcap', note: 'unclassified' },
  ]);
  t.equal(pcapPorts(join(dir, 'rtp-11.pcap')).length, n, 'every packet is in the pcap');
});

t.test('an announced codec without a writer is pcap-only (note codec)', async (t) => {
  const { rec } = await setup('vp9');
  rec.onEvent(streamEvent(12, 'vp9', 98, 1000));
  rec.onEvent(pkt(12, 0, OPUS));
  const dir = rec.recordingDir;
  rec.close();
  t.same(manifestOf(dir).streams[0], {
    ssrc: 12,
    codec: 'vp9',
    classifiedBy: 'rtp.stream',
    file: null,
    pcap: 'rtp-12.pcap',
    note: 'codec',
  });
});

t.test('event directions are DTLS roles: with the peer as DTLS client, c2s packets come from the peer', async (t) => {
  const { rec } = await setup('roles', { peer: { ip: '10.0.0.2', port: 6000 }, dtlsClientIsClient: () => false });
  rec.onEvent(pkt(13, 0, OPUS, 'c2s'));
  rec.onEvent(pkt(13, 1, OPUS, 's2c'));
  const dir = rec.recordingDir;
  rec.close();
  t.same(pcapPorts(join(dir, 'rtp-13.pcap')), [
    [6000, 5000],
    [5000, 6000],
  ]);
  t.ok(verifyRecordings(join(work, 'roles')).ok, 'the flow (with its function) seals and verifies');
});
