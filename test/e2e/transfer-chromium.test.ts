// Issue 9, proof: headless Chromium sends a 1 MB file the way the WebRTC samples and
// Snapdrop do (a JSON text header {name, size}, then 16 KiB binary messages) to the
// compliant agent (werift, keys escrowed) through a spawned `gatehouse serve` (Chromium
// relays through coturn, as in escrow-s2: Gatehouse sees the call once, on the agent's
// allocation). The gateway reports the transfer as ONE `file` event with the file's
// SHA-256, and a `sha256_list` block rule naming that hash blocks the flow before the
// agent has the whole file.
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { RTCDataChannel } from 'werift';
import { createEscrowPeerConnection } from '../../src/endpoint/agent.js';
import { launchChromium, type TestBrowser } from './helpers/browser.js';
import { peerSkip } from './helpers/require-peer.js';
import { startPageServer, type PageServer } from './helpers/page-server.js';
import { startCoturn, startGatehouse, type TurnServer } from './helpers/turn-servers.js';
import { openBrowserPeer, type BrowserPeer, type BrowserPeerState } from './helpers/escrow-browser.js';
import { closeLeftoverUdpSockets, pinGateway, readEvents, until, type GwEvent } from './helpers/escrow-events.js';

const skip = peerSkip(t, 'chromium', 'turnserver');
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const CHUNK = 16 * 1024;

t.test(
  'Chromium sends 1 MB in 16 KiB chunks: one file event; a sha256_list block stops it before the agent has it',
  { timeout: 300_000, skip },
  async (t) => {
    const work = mkdtempSync(join(tmpdir(), 'gh-transfer-chromium-'));
    const file = randomBytes(1024 * 1024);
    const fileSha = sha256(file);
    const list = join(work, 'bad-hashes.txt');
    writeFileSync(list, `${randomBytes(32).toString('hex')}\n${fileSha}\n`);
    let gh: TurnServer | null = null;
    let coturn: TurnServer | null = null;
    let pages: PageServer | null = null;
    let tb: TestBrowser | null = null;
    let closePeer = async (): Promise<void> => {};
    t.teardown(async () => {
      await closePeer();
      await tb?.close();
      closeLeftoverUdpSockets();
      await pages?.close();
      await gh?.stop();
      await coturn?.stop();
      rmSync(work, { recursive: true, force: true });
    });
    gh = await startGatehouse({
      rules: `keys:\n  required: true\n  deadline: 20s\n  unverified: hold\n  block_for: 5m\nrules:\n  - { id: bad-file, when: { sha256_list: ${JSON.stringify(list)} }, action: block }\n`,
      users: [{ name: 'agent', password: 'agent-secret-pw' }],
      transports: ['udp'],
      logLevel: 'info',
    });
    coturn = await startCoturn({ users: [{ name: 'browser', password: 'browser-secret-pw' }], transports: ['udp'] });
    pages = await startPageServer();
    tb = await launchChromium({ fakeMedia: false });
    const gw = await pinGateway(gh.adminUrl!);
    const { pc, agent } = createEscrowPeerConnection({
      turnUrl: gh.url('udp'),
      username: 'agent',
      password: 'agent-secret-pw',
      trust: gw.trust,
      gatewayCertificate: { url: gw.url },
      consent: async () => true,
      pcConfig: { iceUseIpv6: false, iceInterfaceAddresses: { udp4: '127.0.0.1' } },
    });
    closePeer = async () => {
      agent.close();
      await pc.close().catch(() => {});
    };
    const browser: BrowserPeer = await openBrowserPeer(tb, pages, 'chromium');
    let bs: BrowserPeerState | null = null;
    const diag = (): string =>
      `browser: ${JSON.stringify(bs && { ...bs, received: bs.received.length })}\nlogs:\n${tb!.logs().slice(-40).join('\n')}\ngatehouse:\n${gh!.output().slice(-4000)}`;

    const room = `transfer-chromium-${process.pid}`;
    let agentDc: RTCDataChannel | null = null;
    let header: string | null = null;
    let gotBytes = 0;
    let gotMessages = 0;
    pc.onDataChannel.subscribe((c) => {
      agentDc = c;
      c.onMessage.subscribe((m) => {
        if (typeof m === 'string') header = m;
        else {
          gotBytes += m.length;
          gotMessages++;
        }
      });
    });
    const answering = (async () => {
      for (;;) {
        const msgs = (await pages!.mailbox.recv(room, 'answerer', 5000)) as Array<{ sdp?: { type: 'offer'; sdp: string } }>;
        const offer = msgs.find((m) => m.sdp)?.sdp;
        if (!offer) continue;
        await pc.setRemoteDescription(offer);
        await pc.setLocalDescription(await pc.createAnswer());
        await new Promise<void>((r) => {
          if (pc.iceGatheringState === 'complete') return r();
          pc.iceGatheringStateChange.subscribe((s) => s === 'complete' && r());
        });
        pages!.mailbox.send(room, 'offerer', { sdp: { type: 'answer', sdp: pc.localDescription!.sdp } });
        return;
      }
    })();
    await browser.start({ role: 'offerer', room, iceServers: [coturn.iceServer('udp', 'browser')] });
    await answering;
    await until(async () => (bs = await browser.state()).dcState === 'open', 90_000, 'Chromium data channel open', diag);
    await until(() => agentDc?.readyState === 'open', 30_000, 'agent data channel open', diag);

    // The samples' way: the header, then the file sliced into 16 KiB binary messages.
    const chunks: Buffer[] = [];
    for (let o = 0; o < file.length; o += CHUNK) chunks.push(file.subarray(o, o + CHUNK));
    t.ok(await browser.send([JSON.stringify({ name: 'quarterly.bin', size: file.length })], chunks), 'Chromium sent header and 64 chunks');

    let evs: GwEvent[] = [];
    await until(
      () => {
        evs = readEvents(gh!.dataDir!);
        return evs.some((e) => e.event_type === 'flow_blocked');
      },
      60_000,
      'flow_blocked',
      () => `events: ${evs.map((e) => e.event_type).join(', ')}\n${diag()}`,
    );
    await new Promise((r) => setTimeout(r, 3000)); // what the agent still gets after the block
    evs = readEvents(gh.dataDir!);
    type F = GwEvent['file'] & { name?: string; transfer?: { messages: number; end: string } };
    const fileEvs = evs.filter((e) => e.event_type === 'file').map((e) => e.file as F);
    const whole = fileEvs.filter((f) => f.sha256 === fileSha);
    t.equal(whole.length, 1, 'exactly one file event with the file’s SHA-256');
    t.match(whole[0], { size: file.length, name: 'quarterly.bin', label: 'e2e', transfer: { messages: 64, end: 'size' } });
    t.equal(fileEvs.filter((f) => f.transfer).length, 1, 'one transfer');
    t.ok(
      evs.some((e) => e.event_type === 'alert' && JSON.stringify(e).includes('bad-file')),
      'the sha256_list rule matched',
    );
    t.equal(header, JSON.stringify({ name: 'quarterly.bin', size: file.length }), 'the agent got the header');
    t.ok(gotBytes < file.length, `the agent got ${gotBytes} of ${file.length} bytes (${gotMessages} of 64 chunks): never the whole file`);
    t.comment(`agent received ${gotBytes} bytes in ${gotMessages} messages of ${file.length}`);
  },
);
