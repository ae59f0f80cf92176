// Issue 11, proof of the web client: two headless Chromium instances use the page the
// director serves at GET / of a spawned `gatehouse serve` (keys not required).
//   1. The organizer logs in (RFC 7616 Digest SHA-256 done in the page) and creates a
//      conference (the key made in the page, RSA-OAEP to the front end).
//   2. A guest, in the other Chromium, opens the join URL and joins with the key.
//   3. They receive each other's fake audio and video through the gateway's TURN only
//      (inbound-rtp packetsReceived / framesDecoded > 0, relay candidates), chat both
//      ways, and the guest's 200 KB file reaches the organizer intact (SHA-256).
//   4. The gateway's events show the flows of the call with gatehouse.conference, the
//      guest's with gatehouse.guest: true.
//   5. A rule `guest: true` + `file_type: [exe]`, action drop: a second guest — the
//      compliant endpoint agent (werift, keys escrowed on its guest TURN credentials,
//      since a browser's data channel cannot be read by the gateway without keys) — joins
//      by Digest and the signalling WebSocket like the page does; its ordinary file
//      reaches the organizer's page, its executable (a PE image, "MZ") never does.
// Screenshots of each page go to .tap/artifacts/core-web/ (gitignored).
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Page } from 'playwright-core';
import WebSocket from 'ws';
import type { RTCDataChannel } from 'werift';
import { createEscrowPeerConnection } from '../../src/endpoint/agent.js';
import { launchChromium, type TestBrowser } from './helpers/browser.js';
import { peerSkip } from './helpers/require-peer.js';
import { startGatehouse, type TurnServer } from './helpers/turn-servers.js';
import { freePort } from './helpers/ports.js';
import { closeLeftoverUdpSockets, pinGateway, readEvents, sleep, until, type GwEvent } from './helpers/escrow-events.js';

const skip = peerSkip(t, 'chromium');
const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');
const ARTIFACTS = join(import.meta.dirname, '../../.tap/artifacts/core-web');
const ALICE_PW = `alice-${randomBytes(6).toString('hex')}`;
const BOB_PW = `bob-${randomBytes(6).toString('hex')}`;
const CHUNK = 16 * 1024;

const RULES = `keys:
  required: false
  unverified: pass
rules:
  - id: guests-no-exe
    when: { guest: true, file_type: [exe] }
    action: drop
`;

/** A minimal PE image (PE/COFF spec: "MZ", e_lfanew at 0x3C, "PE\\0\\0", COFF header), padded. */
function peImage(size: number): Buffer {
  const b = randomBytes(size);
  b.fill(0, 0, 0x200);
  b.write('MZ', 0, 'latin1');
  b.writeUInt16LE(0x90, 2); // e_cblp
  b.writeUInt16LE(3, 4); // e_cp
  b.writeUInt16LE(4, 8); // e_cparhdr
  b.writeUInt32LE(0x80, 0x3c); // e_lfanew
  b.write('PE\0\0', 0x80, 'latin1');
  b.writeUInt16LE(0x014c, 0x84); // Machine i386
  b.writeUInt16LE(1, 0x86); // NumberOfSections
  b.writeUInt16LE(0xe0, 0x94); // SizeOfOptionalHeader
  b.writeUInt16LE(0x0102, 0x96); // Characteristics: EXECUTABLE_IMAGE | 32BIT_MACHINE
  return b;
}

interface PeerStats {
  peer: string;
  name: string;
  connectionState: string;
  dc: string | null;
  relay: boolean;
  inbound: { kind: string; packetsReceived: number; framesDecoded: number; bytesReceived: number }[];
}
const stats = (p: Page): Promise<PeerStats[]> =>
  p.evaluate(() => (window as unknown as { gatehouse: { stats(): Promise<PeerStats[]> } }).gatehouse.stats());
const mediaFlowing = (s: PeerStats[]) =>
  s.length > 0 &&
  s.every(
    (p) =>
      p.relay &&
      p.inbound.some((i) => i.kind === 'audio' && i.packetsReceived > 0) &&
      p.inbound.some((i) => i.kind === 'video' && i.packetsReceived > 0 && i.framesDecoded > 0),
  );
interface FileItem {
  direction: string;
  name: string;
  size: number;
  sha256: string;
}
const files = (p: Page): Promise<FileItem[]> =>
  p.evaluate(() =>
    [...document.querySelectorAll<HTMLLIElement>('#files li')].map((li) => ({
      direction: li.dataset.direction ?? '',
      name: li.dataset.name ?? '',
      size: Number(li.dataset.size),
      sha256: li.dataset.sha256 ?? '',
    })),
  );
const chatLines = (p: Page): Promise<string[]> => p.locator('#chat-log li').allTextContents();

/** RFC 7616 Digest SHA-256 over POST, as an independent client (Node's crypto). */
async function digestPost(url: string, username: string, password: string): Promise<Record<string, any>> {
  const first = await fetch(url, { method: 'POST' });
  await first.arrayBuffer();
  if (first.status !== 401) throw new Error(`join without Authorization: ${first.status}`);
  const www = first.headers.get('www-authenticate') ?? '';
  const dig = www.slice(www.indexOf('Digest'));
  const param = (n: string) => new RegExp(`${n}="([^"]*)"`).exec(dig)?.[1] ?? '';
  const realm = param('realm');
  const nonce = param('nonce');
  const opaque = param('opaque');
  const cnonce = randomBytes(12).toString('hex');
  const uri = new URL(url).pathname;
  const ha1 = sha256(`${username}:${realm}:${password}`);
  const response = sha256(`${ha1}:${nonce}:00000001:${cnonce}:auth:${sha256(`POST:${uri}`)}`);
  const auth = `Digest username="${username}", realm="${realm}", uri="${uri}", algorithm=SHA-256, nonce="${nonce}", nc=00000001, cnonce="${cnonce}", qop=auth, response="${response}", opaque="${opaque}"`;
  const res = await fetch(url, { method: 'POST', headers: { Authorization: auth } });
  const body = (await res.json()) as Record<string, any>;
  if (res.status !== 200) throw new Error(`join: ${res.status} ${JSON.stringify(body)}`);
  return body;
}

t.test(
  'two Chromiums meet through the web client: login, conference, guest by key, media, chat, a file; exe kept from the organizer',
  { timeout: 420_000, skip },
  async (t) => {
    mkdirSync(ARTIFACTS, { recursive: true });
    const shot = (p: Page, name: string) => p.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
    let gh: TurnServer | null = null;
    let tbOrg: TestBrowser | null = null;
    let tbGuest: TestBrowser | null = null;
    let closeAgent = async (): Promise<void> => {};
    t.teardown(async () => {
      await closeAgent();
      await tbOrg?.close();
      await tbGuest?.close();
      closeLeftoverUdpSockets();
      await gh?.stop();
    });
    const corePort = await freePort('tcp');
    gh = await startGatehouse({
      rules: RULES,
      users: [
        { name: 'alice', password: ALICE_PW, groups: ['staff'] },
        { name: 'bob', password: BOB_PW, groups: ['staff'] },
      ],
      transports: ['udp'],
      logLevel: 'info',
      configure: (c) => {
        c.core = { listen: `http://127.0.0.1:${corePort}` };
      },
    });
    const base = `http://127.0.0.1:${corePort}`;
    await until(
      async () =>
        (await fetch(`${base}/`)
          .then((r) => r.arrayBuffer().then(() => r.status))
          .catch(() => 0)) === 200,
      30_000,
      'the director serves GET /',
      () => gh!.output().slice(-3000),
    );
    tbOrg = await launchChromium();
    tbGuest = await launchChromium();
    const org = await tbOrg.newPage('organizer');
    const guest = await tbGuest.newPage('guest');
    const diag = () =>
      `organizer:\n${tbOrg!.logs().slice(-30).join('\n')}\nguest:\n${tbGuest!.logs().slice(-30).join('\n')}\n` +
      `gatehouse:\n${gh!.output().slice(-4000)}`;
    const seen = { org: '', guest: '' };
    const look = async (p: Page, who: 'org' | 'guest') => {
      const [status, error, whoami] = await Promise.all(['#status', '#error', '#whoami'].map((s) => p.locator(s).textContent()));
      seen[who] = `status=${status} error=${error} whoami=${whoami}`;
      return { status: status ?? '', error: error ?? '', whoami: whoami ?? '' };
    };
    const diagAll = () => `organizer page: ${seen.org}\nguest page: ${seen.guest}\n${diag()}`;

    // 1. Log in and create the conference.
    await org.goto(`${base}/`);
    await shot(org, '1-organizer-start');
    await org.getByLabel('User name', { exact: true }).fill('alice');
    await org.getByLabel('Password', { exact: true }).fill(ALICE_PW);
    await org.getByRole('button', { name: 'Log in' }).click();
    await until(async () => /Logged in as alice/.test((await look(org, 'org')).whoami), 15_000, 'logged in', diagAll);
    t.pass('the organizer logged in with Digest SHA-256 from the page');
    await org.getByLabel('Conference title', { exact: true }).fill('Board meeting');
    await org.getByRole('button', { name: 'Create conference' }).click();
    await until(
      async () => (await look(org, 'org'), await org.locator('#conference-created').isVisible()),
      15_000,
      'conference created',
      diagAll,
    );
    const joinUrl = await org.getByLabel('Join URL', { exact: true }).inputValue();
    const key = await org.getByLabel('Conference key to share', { exact: true }).inputValue();
    t.match(key, /^[A-Za-z0-9_-]{43}$/, 'the page made a 256-bit base64url key');
    t.ok(joinUrl.startsWith(base), `join URL on the director: ${joinUrl}`);
    await shot(org, '2-organizer-conference-created');
    await org.getByRole('button', { name: 'Enter conference' }).click();
    await until(async () => /In the call/.test((await look(org, 'org')).status), 20_000, 'organizer in the call', diagAll);
    const conferenceId = (await org.locator('#call-h').textContent())!.replace(/^Conference /, '');

    // 2. The guest opens the join URL and joins with the key.
    await guest.goto(joinUrl);
    await guest.getByLabel('Your name', { exact: true }).fill('ann');
    await guest.getByLabel('Conference key', { exact: true }).fill(key);
    await shot(guest, '3-guest-join-form');
    await guest.getByRole('button', { name: 'Join' }).click();
    await until(async () => /In the call/.test((await look(guest, 'guest')).status), 20_000, 'guest in the call', diagAll);

    // 3. Media both ways, relayed.
    let so: PeerStats[] = [];
    let sg: PeerStats[] = [];
    await until(
      async () => {
        so = await stats(org);
        sg = await stats(guest);
        return mediaFlowing(so) && mediaFlowing(sg);
      },
      90_000,
      'audio and video frames both ways',
      () => `org: ${JSON.stringify(so)}\nguest: ${JSON.stringify(sg)}\n${diag()}`,
    );
    t.equal(so.length, 1, 'the organizer has one peer');
    t.equal(so[0]!.name, 'ann', 'named by the guest identity');
    t.equal(sg[0]!.name, 'alice', 'the guest sees the organizer by user name');
    for (const [who, s] of [
      ['organizer', so],
      ['guest', sg],
    ] as const) {
      const v = s[0]!.inbound.find((i) => i.kind === 'video')!;
      const a = s[0]!.inbound.find((i) => i.kind === 'audio')!;
      t.ok(v.framesDecoded > 0 && v.packetsReceived > 0, `${who}: video frames decoded (${v.framesDecoded}, ${v.packetsReceived} packets)`);
      t.ok(a.packetsReceived > 0, `${who}: audio packets received (${a.packetsReceived})`);
      t.ok(s[0]!.relay, `${who}: through a relay candidate`);
    }
    await shot(org, '4-organizer-call');
    await shot(guest, '5-guest-call');

    // Chat both ways (signalling `chat`).
    await org.getByLabel('Message', { exact: true }).fill('hello ann, from alice');
    await org.getByLabel('Message', { exact: true }).press('Enter');
    await guest.getByLabel('Message', { exact: true }).fill('hi alice — ann here');
    await guest.getByRole('button', { name: 'Send', exact: true }).click();
    await until(
      async () => (await guest.locator('#chat-log').textContent())!.includes('alice: hello ann, from alice'),
      15_000,
      'chat at the guest',
      diag,
    );
    await until(
      async () => (await org.locator('#chat-log').textContent())!.includes('ann: hi alice — ann here'),
      15_000,
      'chat at the organizer',
      diag,
    );
    t.ok(
      (await chatLines(guest)).some((l) => l === 'alice: hello ann, from alice'),
      'the guest got the organizer’s line',
    );
    t.ok(
      (await chatLines(org)).some((l) => l === 'ann: hi alice — ann here'),
      'the organizer got the guest’s line',
    );

    // The guest's 200 KB file over the data channel.
    const report = randomBytes(200 * 1024);
    await guest
      .getByLabel('File to send', { exact: true })
      .setInputFiles({ name: 'report.bin', mimeType: 'application/octet-stream', buffer: report });
    await guest.getByRole('button', { name: 'Send file' }).click();
    let got: FileItem[] = [];
    await until(
      async () => (await look(guest, 'guest'), (got = await files(org)).some((f) => f.name === 'report.bin')),
      60_000,
      'the file at the organizer',
      diagAll,
    );
    t.same(
      got.find((f) => f.name === 'report.bin'),
      { direction: 'received', name: 'report.bin', size: report.length, sha256: sha256(report) },
      'the organizer got report.bin whole: same size and SHA-256',
    );
    t.ok(
      (await files(guest)).some((f) => f.direction === 'sent' && f.sha256 === sha256(report)),
      'the guest’s page lists it as sent, same SHA-256',
    );
    await shot(org, '6-organizer-file-received');

    // 4. The gateway's events: the guest's flows carry gatehouse.conference and guest: true
    // (TURN username EXPIRY:guest/CONFERENCE/IDENTITY); the organizer's (EXPIRY:alice)
    // carry the user, never guest.
    let evs: GwEvent[] = [];
    const guestUser = `guest/${conferenceId}/ann`;
    const isGuestEv = (e: GwEvent) => e.gatehouse?.user === guestUser;
    await until(
      () => {
        evs = readEvents(gh!.dataDir!);
        return ['allocation', 'permission', 'dtls.handshake'].every((ty) => evs.some((e) => isGuestEv(e) && e.event_type === ty));
      },
      30_000,
      'the guest’s allocation, permission and DTLS events',
      () => `events: ${JSON.stringify(evs.filter(isGuestEv).slice(0, 5))}\n${evs.map((e) => e.event_type).join(',')}`,
    );
    const guestEv = evs.filter(isGuestEv);
    t.ok(
      guestEv.every((e) => e.gatehouse?.conference === conferenceId && e.gatehouse?.guest === true),
      `all ${guestEv.length} events of the guest's flows carry conference ${conferenceId} and guest: true (${[...new Set(guestEv.map((e) => e.event_type))].join(', ')})`,
    );
    const orgEv = evs.filter((e) => e.gatehouse?.user === 'alice');
    t.ok(
      orgEv.length > 0 && orgEv.some((e) => e.event_type === 'permission'),
      `the organizer's flows are in the events too (${orgEv.length})`,
    );
    t.notOk(
      orgEv.some((e) => e.gatehouse?.guest === true),
      'none of them is marked guest',
    );
    // The organizer's username (EXPIRY:alice) names no conference: the core's issue record
    // does (src/core/turn-credentials.ts), so the user's flows carry it as well.
    const orgFlowEv = orgEv.filter((e) => ['allocation', 'permission', 'dtls.handshake'].includes(e.event_type));
    t.ok(
      orgFlowEv.length > 0 && orgFlowEv.every((e) => e.gatehouse?.conference === conferenceId),
      `all ${orgFlowEv.length} allocation/permission/DTLS events of the organizer carry conference ${conferenceId}: ${JSON.stringify(orgFlowEv.map((e) => e.gatehouse?.conference))}`,
    );
    // Every login is an auth event, without secrets (the secrets check below reads them too).
    t.ok(
      evs.some(
        (e) =>
          e.event_type === 'auth' &&
          (e as { auth?: { user?: string; result?: string } }).auth?.user === 'alice' &&
          (e as { auth?: { result?: string } }).auth?.result === 'success',
      ),
      'the organizer’s login is an auth event',
    );
    t.notOk(
      evs.some((e) => e.gatehouse?.guest === true && e.gatehouse?.conference !== conferenceId),
      'no guest event without its conference',
    );

    // 5. The agent joins as a second guest and escrows its keys: its files are inspected.
    const joined = await digestPost(`${base}/v1/conferences/${encodeURIComponent(conferenceId)}/join`, 'tool-agent', key);
    t.equal(joined.identity, 'tool-agent');
    const gw = await pinGateway(gh.adminUrl!);
    const ws = new WebSocket(`${base.replace(/^http/, 'ws')}/v1/signal`);
    const inbox: Record<string, any>[] = [];
    ws.on('message', (d) => {
      try {
        inbox.push(JSON.parse(String(d)));
      } catch {
        /* not JSON */
      }
    });
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    ws.send(JSON.stringify({ type: 'hello', token: joined.token }));
    ws.send(JSON.stringify({ type: 'join', conference: conferenceId }));
    await until(
      () => inbox.some((m) => m.type === 'join'),
      10_000,
      'the agent’s signalling join',
      () => JSON.stringify(inbox),
    );
    const j = inbox.find((m) => m.type === 'join')!;
    const alicePeer = (j.peers as { peer: string; user?: string }[]).find((p) => p.user === 'alice')?.peer;
    t.ok(alicePeer, 'the join answer names the organizer’s peer');
    const turn = j.turn as { urls: string[]; username: string; credential: string };
    t.match(turn.username, new RegExp(`^\\d+:guest/${conferenceId}/tool-agent$`), 'guest TURN username EXPIRY:guest/CONFERENCE/IDENTITY');
    const turnUrl = turn.urls.find((u) => /transport=udp/.test(u)) ?? turn.urls[0]!;
    const { pc, agent } = createEscrowPeerConnection({
      turnUrl,
      username: turn.username,
      password: turn.credential,
      trust: gw.trust,
      gatewayCertificate: { url: gw.url },
      consent: async () => true,
      pcConfig: { iceUseIpv6: false, iceInterfaceAddresses: { udp4: '127.0.0.1' } },
    });
    closeAgent = async () => {
      ws.close();
      agent.close();
      await pc.close().catch(() => {});
    };
    const dc: RTCDataChannel = pc.createDataChannel('files', { ordered: true });
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise<void>((r) => {
      if (pc.iceGatheringState === 'complete') return r();
      pc.iceGatheringStateChange.subscribe((s) => s === 'complete' && r());
    });
    ws.send(JSON.stringify({ type: 'offer', to: alicePeer, sdp: pc.localDescription!.sdp }));
    await until(
      () => inbox.some((m) => m.type === 'answer' && m.from === alicePeer),
      20_000,
      'the organizer’s answer',
      () => JSON.stringify(inbox.map((m) => m.type)),
    );
    const answer = inbox.find((m) => m.type === 'answer')!;
    await pc.setRemoteDescription({ type: 'answer', sdp: typeof answer.sdp === 'string' ? answer.sdp : answer.sdp.sdp });
    const added = new Set<unknown>();
    const addCandidates = async () => {
      for (const m of inbox) {
        if (m.type !== 'candidate' || m.from !== alicePeer || added.has(m)) continue;
        added.add(m);
        await pc.addIceCandidate(m.candidate).catch(() => {});
      }
    };
    await until(
      async () => {
        await addCandidates();
        return dc.readyState === 'open';
      },
      60_000,
      'the agent’s data channel open (keys verified)',
      diag,
    );
    const sendFile = async (name: string, data: Buffer) => {
      dc.send(JSON.stringify({ name, size: data.length }));
      for (let o = 0; o < data.length; o += CHUNK) dc.send(data.subarray(o, o + CHUNK));
    };
    // Control: an ordinary file from the agent reaches the organizer (the path works).
    const notes = randomBytes(100 * 1024);
    await sendFile('notes.bin', notes);
    await until(
      async () => (got = await files(org)).some((f) => f.name === 'notes.bin'),
      60_000,
      'the agent’s ordinary file at the organizer',
      diag,
    );
    t.equal(got.find((f) => f.name === 'notes.bin')!.sha256, sha256(notes), 'the agent’s notes.bin arrived intact');
    // The executable: the rule drops it.
    const exe = peImage(64 * 1024);
    t.equal(exe.subarray(0, 2).toString('latin1'), 'MZ');
    await sendFile('setup.exe', exe);
    await until(
      () => (evs = readEvents(gh!.dataDir!)).some((e) => e.event_type === 'alert' && JSON.stringify(e).includes('guests-no-exe')),
      30_000,
      'the guests-no-exe rule matched',
      () => evs.map((e) => e.event_type).join(','),
    );
    await sleep(5000); // what the organizer might still get after the drop
    got = await files(org);
    evs = readEvents(gh.dataDir!);
    t.notOk(
      got.some((f) => f.name === 'setup.exe' || f.sha256 === sha256(exe)),
      'the organizer never got the guest’s executable',
    );
    const exeEv = evs.find((e) => e.event_type === 'file' && (e.file as { sha256?: string } | undefined)?.sha256 === sha256(exe));
    t.ok(exeEv, 'the gateway saw the executable as one file (the whole transfer’s SHA-256)');
    t.match(exeEv?.file, { name: 'setup.exe', size: exe.length, transfer: { end: 'size' } }, 'named and sized by the header');
    t.equal((exeEv?.file as { file_type?: string } | undefined)?.file_type, 'exe', 'typed exe');
    t.equal(exeEv?.gatehouse?.guest, true, 'on a guest flow');
    t.equal(exeEv?.gatehouse?.conference, conferenceId, 'of the conference');
    await shot(org, '7-organizer-after-exe');

    // 6. A room and a personal URL: alice invites bob; bob opens the link, logs in, accepts.
    const orgRoom = await tbOrg.newPage('organizer-room');
    await orgRoom.goto(`${base}/`);
    await orgRoom.getByLabel('User name', { exact: true }).fill('alice');
    await orgRoom.getByLabel('Password', { exact: true }).fill(ALICE_PW);
    await orgRoom.getByRole('button', { name: 'Log in' }).click();
    await until(async () => /Logged in as alice/.test((await look(orgRoom, 'org')).whoami), 15_000, 'alice logged in (room page)', diagAll);
    await orgRoom.getByLabel('Room title', { exact: true }).fill('1:1');
    await orgRoom.getByRole('button', { name: 'Create room' }).click();
    await until(
      async () => (await look(orgRoom, 'org'), await orgRoom.locator('#room-created').isVisible()),
      15_000,
      'room created',
      diagAll,
    );
    await orgRoom.getByLabel('Invite user', { exact: true }).fill('bob');
    await orgRoom.getByRole('button', { name: 'Invite', exact: true }).click();
    let inviteUrl = '';
    await until(
      async () => (await look(orgRoom, 'org'), (inviteUrl = await orgRoom.getByLabel('Personal URL', { exact: true }).inputValue()) !== ''),
      15_000,
      'personal URL',
      diagAll,
    );
    t.ok(inviteUrl.startsWith(base), 'the personal URL is on the director');
    await shot(orgRoom, '8-organizer-room-invite');
    await orgRoom.getByRole('button', { name: 'Enter room' }).click();
    await until(async () => /In the call/.test((await look(orgRoom, 'org')).status), 20_000, 'alice in the room', diagAll);
    const bob = await tbGuest.newPage('bob');
    await bob.goto(inviteUrl);
    t.ok(await bob.getByRole('heading', { name: 'Personal invitation' }).isVisible(), 'the link opens the invitation');
    t.equal(await bob.getByLabel('Invitation URL', { exact: true }).inputValue(), inviteUrl);
    await shot(bob, '9-invitee-invitation');
    await bob.getByLabel('User name', { exact: true }).fill('bob');
    await bob.getByLabel('Password', { exact: true }).fill(BOB_PW);
    await bob.getByRole('button', { name: 'Log in' }).click();
    await until(async () => /Logged in as bob/.test((await look(bob, 'guest')).whoami), 15_000, 'bob logged in', diagAll);
    await bob.getByRole('button', { name: 'Accept invitation' }).click();
    await until(async () => /In the call/.test((await look(bob, 'guest')).status), 20_000, 'bob in the room', diagAll);
    await bob.getByLabel('Message', { exact: true }).fill('bob in the room');
    await bob.getByLabel('Message', { exact: true }).press('Enter');
    await until(
      async () => (await orgRoom.locator('#chat-log').textContent())!.includes('bob: bob in the room'),
      15_000,
      'room chat at alice',
      diagAll,
    );
    t.pass('the invitee is in the room: alice got his chat line');
    let sr: PeerStats[] = [];
    await until(
      async () => mediaFlowing((sr = await stats(orgRoom))),
      60_000,
      'room media at alice',
      () => JSON.stringify(sr),
    );
    t.ok(
      sr.some((p) => p.name === 'bob'),
      'alice receives bob’s audio and video in the room',
    );
    await shot(bob, '10-invitee-room');
    // Spent: the same URL again is 410 gone (core.md §7).
    const bobLogin = await digestPost(`${base}/v1/login`, 'bob', BOB_PW);
    const again = await fetch(inviteUrl, { method: 'POST', headers: { Authorization: `Bearer ${bobLogin.token}` } });
    t.equal(again.status, 410, 'bob’s second POST of his spent URL: 410');
    t.match(await again.json(), { error: { code: 'gone' } });

    // Secrets stay out of the gateway's log and events.
    const all = gh.output() + readFileSync(join(gh.dataDir!, 'events.jsonl'), 'utf8');
    for (const [what, secret] of [
      ['conference key', key],
      ['alice’s password', ALICE_PW],
      ['bob’s password', BOB_PW],
      ['guest token', String(joined.token)],
      ['bob’s token', String(bobLogin.token)],
      ['TURN credential', turn.credential],
    ] as const) {
      t.notOk(all.includes(secret), `the ${what} is not in the gateway’s log or events`);
    }
    const pageErrors = [...tbOrg.logs(), ...tbGuest.logs()].filter((l) => /pageerror/.test(l));
    t.same(pageErrors, [], 'no page errors');
  },
);
