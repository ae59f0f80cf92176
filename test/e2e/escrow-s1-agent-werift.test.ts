// Issue 4, proof 1, against a spawned `gatehouse serve` (keys.required true, hold):
// the compliant endpoint agent (werift, src/endpoint/agent.ts) calls a plain werift
// peer through Gatehouse. The gateway asks for keys (signed KEY-REQUEST), the agent
// escrows them (WRITE-KEYS), the gateway verifies them (keys_verified) and inspects the
// whole call: every data-channel message and a binary file (> 100 KB) arrive intact at
// the peer AND the gateway's events (events.jsonl and GET /v1/events) carry the same
// SHA-256s; synthetic audio RTP from the agent is decrypted (rtp.stream, no
// undecryptable SRTP) and reaches the peer.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { MediaStreamTrack, RTCPeerConnection, RtpHeader, RtpPacket, type RTCDataChannel } from 'werift';
import { createEscrowPeerConnection } from '../../src/endpoint/agent.js';
import { startGatehouse, type TurnServer } from './helpers/turn-servers.js';
import {
  closeLeftoverUdpSockets,
  fetchEvents,
  pinGateway,
  readEvents,
  sha256Hex,
  sleep,
  until,
  waitEvent,
  type GwEvent,
} from './helpers/escrow-events.js';
import { connectPeers, withTimeout } from '../unit/endpoint/helpers.js';
import { assertNoSecrets, Secrets } from './helpers/secrets.js';

const RULES = 'keys:\n  required: true\n  deadline: 20s\n  unverified: hold\n  media: true\n  data: true\n  block_for: 5m\nrules: []\n';

function waitOpen(dc: RTCDataChannel): Promise<void> {
  return new Promise((r) => {
    if (dc.readyState === 'open') return r();
    dc.stateChanged.subscribe((s) => s === 'open' && r());
  });
}

t.test(
  'compliant agent ↔ plain werift peer through gatehouse serve: keys verified, data and SRTP inspected',
  { timeout: 240_000 },
  async (t) => {
    const gh: TurnServer = await startGatehouse({
      rules: RULES,
      users: [{ name: 'alice', password: 'alice-secret-pw' }],
      transports: ['udp'],
      logLevel: 'info',
    });
    let closePeers = async (): Promise<void> => {};
    t.teardown(async () => {
      // Peers first (werift deallocates on close), then the server.
      await closePeers();
      closeLeftoverUdpSockets();
      await gh.stop();
    });
    const gw = await pinGateway(gh.adminUrl!);
    const consents: string[] = [];
    const { pc, agent } = createEscrowPeerConnection({
      turnUrl: gh.url('udp'),
      username: 'alice',
      password: 'alice-secret-pw',
      trust: gw.trust,
      gatewayCertificate: { url: gw.url },
      consent: async (r) => {
        consents.push(r.gateway.fingerprint);
        return true;
      },
      pcConfig: { iceUseIpv6: false, iceInterfaceAddresses: { udp4: '127.0.0.1' } },
    });
    // A plain werift peer (no escrow, host candidates on loopback) that accepts the file
    // as one 210 KB message (SDP a=max-message-size, RFC 8841 §6).
    const peer = new RTCPeerConnection({
      iceServers: [],
      iceUseIpv6: false,
      iceInterfaceAddresses: { udp4: '127.0.0.1' },
      iceAdditionalHostAddresses: ['127.0.0.1'],
      maxMessageSize: 262_144,
    });
    closePeers = async () => {
      agent.close();
      await Promise.allSettled([pc.close(), peer.close()]);
    };

    const texts = Array.from({ length: 25 }, (_, i) => `msg-${i}:${randomBytes(8 + i * 13).toString('base64')}`);
    texts.push(`long:${'0123456789abcdef'.repeat(900)}`);
    const file = randomBytes(210_000);
    const loose = Array.from({ length: 12 }, (_, i) => `unordered-${i}:${randomBytes(40).toString('hex')}`);
    const fileSha = sha256Hex(file);

    const chat = pc.createDataChannel('chat');
    const fileDc = pc.createDataChannel('file:payload.bin');
    // RFC 8831 §6.6 / RFC 8832: an unordered channel (DCEP channel type with the 0x80 bit).
    const looseDc = pc.createDataChannel('unordered', { ordered: false });
    const audio = new MediaStreamTrack({ kind: 'audio' });
    pc.addTransceiver(audio, { direction: 'sendonly' });

    const gotTexts: string[] = [];
    const gotFiles: Buffer[] = [];
    const gotLoose = new Set<string>();
    let rtpAtPeer = 0;
    peer.onDataChannel.subscribe((c) =>
      c.onMessage.subscribe((m) => {
        if (c.label === 'chat') gotTexts.push(m.toString());
        else if (c.label === 'unordered') gotLoose.add(m.toString());
        else gotFiles.push(Buffer.from(m as Buffer));
      }),
    );
    peer.onTrack.subscribe((track) => track.onReceiveRtp.subscribe(() => rtpAtPeer++));

    await withTimeout(connectPeers(pc, peer), 60_000, 'signalling and ICE gathering');
    await withTimeout(
      Promise.all([waitOpen(chat), waitOpen(fileDc), waitOpen(looseDc)]),
      90_000,
      'data channels open (released by the gateway once keys verified)',
    );
    for (const m of texts) chat.send(m);
    for (const m of loose) looseDc.send(m);
    fileDc.send(file);
    // Synthetic audio: 20 ms frames; werift sets SSRC and encrypts with SRTP.
    let seq = 1;
    let ts = 0;
    for (let i = 0; i < 50; i++) {
      audio.writeRtp(
        new RtpPacket(new RtpHeader({ sequenceNumber: seq++, timestamp: ts, payloadType: 111, marker: i === 0 }), Buffer.alloc(60, 0xf8)),
      );
      ts += 960;
      await sleep(20);
    }

    await until(
      () => gotTexts.length >= texts.length && gotFiles.length >= 1 && gotLoose.size >= loose.length,
      90_000,
      'messages and file at the peer',
      () => `texts ${gotTexts.length}/${texts.length}, files ${gotFiles.length}`,
    );
    t.same(gotTexts, texts, 'every text message arrived intact and in order at the peer');
    t.same([...gotLoose].sort(), [...loose].sort(), 'every unordered message arrived intact at the peer');
    t.equal(gotFiles.length, 1, 'one file message at the peer');
    t.equal(sha256Hex(gotFiles[0]!), fileSha, 'file arrived intact at the peer (SHA-256)');
    await until(
      () => rtpAtPeer >= 10,
      30_000,
      'audio RTP at the peer',
      () => `rtp at peer: ${rtpAtPeer}`,
    );
    t.ok(rtpAtPeer >= 10, `audio RTP reached the peer (${rtpAtPeer} packets)`);

    // The gateway's view (events.jsonl).
    const want = new Set([...texts, ...loose].map((m) => sha256Hex(m)));
    let evs: GwEvent[] = [];
    await until(
      () => {
        evs = readEvents(gh.dataDir!);
        const seen = new Set(evs.filter((e) => e.event_type === 'datachannel.message').map((e) => e.datachannel!.sha256));
        return (
          [...want].every((h) => seen.has(h)) &&
          evs.some((e) => e.event_type === 'file' && e.file!.sha256 === fileSha) &&
          evs.some((e) => e.event_type === 'rtp.stream')
        );
      },
      60_000,
      'gateway events for every message, the file and the audio stream',
      () => `events: ${evs.map((e) => e.event_type).join(', ')}\n${gh.output()}`,
    );
    const types = evs.map((e) => e.event_type);
    t.ok(types.includes('key_request'), 'gateway sent KEY-REQUEST');
    t.ok(types.includes('keys_received'), 'gateway received the key set');
    t.ok(types.includes('keys_verified'), 'keys_verified');
    t.equal(consents.length, 1, 'the agent asked for consent once');
    t.equal(consents[0], gw.fingerprint, 'consent names the pinned gateway');
    t.notOk(types.includes('flow_blocked'), 'no flow blocked');
    t.notOk(types.includes('keys_invalid'), 'no invalid keys');
    const dcMsgs = evs.filter((e) => e.event_type === 'datachannel.message');
    const chatShas = dcMsgs.filter((e) => e.datachannel!.label === 'chat').map((e) => e.datachannel!.sha256);
    t.same(
      chatShas,
      texts.map((m) => sha256Hex(m)),
      'gateway saw every chat message, in order, with the sent SHA-256s',
    );
    const looseShas = dcMsgs.filter((e) => e.datachannel!.label === 'unordered').map((e) => e.datachannel!.sha256);
    t.same(looseShas.sort(), loose.map((m) => sha256Hex(m)).sort(), 'gateway saw every unordered message with the sent SHA-256s');
    const fileEv = evs.find((e) => e.event_type === 'file' && e.file!.sha256 === fileSha)!;
    t.equal(fileEv.file!.size, file.length, 'file event size');
    t.equal(fileEv.file!.label, 'file:payload.bin', 'file event label');
    const rtp = evs.filter((e) => e.event_type === 'rtp.stream');
    // The codec is recognised from the decrypted payload (werift maps PT 111 to the
    // negotiated dynamic type; the Opus guess in src/inspect/media.ts needs plaintext).
    t.ok(
      rtp.some((e) => e.rtp!.kind === 'audio' && e.rtp!.codec === 'opus'),
      `decrypted audio stream: ${JSON.stringify(rtp.map((e) => e.rtp))}`,
    );
    const badSrtp = evs.filter(
      (e) => e.event_type === 'undecryptable' && (e.undecryptable!.what === 'srtp' || e.undecryptable!.what === 'srtcp'),
    );
    t.same(badSrtp, [], 'no undecryptable SRTP/SRTCP');
    t.same(
      evs.filter((e) => e.event_type === 'undecryptable'),
      [],
      'nothing undecryptable at all',
    );

    // The same through the admin API.
    const api = await fetchEvents(gh.adminUrl!, gh.adminToken!, 'datachannel.message,file,keys_verified');
    t.ok(
      api.some((e) => e.event_type === 'keys_verified'),
      '/v1/events has keys_verified',
    );
    t.ok(
      api.some((e) => e.event_type === 'file' && e.file!.sha256 === fileSha),
      '/v1/events has the file with its SHA-256',
    );
    const apiShas = new Set(api.filter((e) => e.event_type === 'datachannel.message').map((e) => e.datachannel!.sha256));
    t.ok(
      [...want].every((h) => apiShas.has(h)),
      '/v1/events has every chat message SHA-256',
    );

    // No secrets in what the gateway wrote: its whole log, every file of DATA_DIR, the API.
    const secrets = new Secrets()
      .werift(pc, 'agent')
      .werift(peer, 'plain peer')
      .turnPassword('alice', 'alice-secret-pw', gh.realm)
      .adminToken(gh.adminToken!);
    t.ok(
      secrets.list.some((s) => s.kind === 'srtp_client_master_key'),
      'the agent’s key set (with SRTP keys) is in the list',
    );
    const apiAll = await fetchEvents(gh.adminUrl!, gh.adminToken!);
    assertNoSecrets(
      t,
      secrets,
      { texts: { 'gatehouse log': gh.fullOutput(), 'GET /v1/events': JSON.stringify(apiAll) }, dirs: { DATA_DIR: gh.dataDir! } },
      'no key material, password or token in the log, DATA_DIR or the API',
    );
    await waitEvent(gh.dataDir!, (e) => e.event_type === 'keys_verified', 1000, 'keys_verified still there');
  },
);
