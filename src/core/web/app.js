// Gatehouse web client (core.md): log in, conferences with a key made here, rooms and
// personal invitations, and the call itself — signalling over /v1/signal, one
// RTCPeerConnection per peer through the gateway's TURN only (relay), chat, and files
// over a data channel (a JSON header {name, size}, then 16 KiB binary messages, as the
// WebRTC samples do). No framework, no inline script (the page's CSP forbids it).
import {
  ApiError,
  api,
  digestPost,
  encryptConferenceKey,
  expectOk,
  formatBytes,
  iceServersOf,
  makeConferenceKey,
  negotiatePost,
  offersNegotiate,
  passwordLogin,
  sha256Hex,
  validIdentity,
} from './lib.js';

const CHUNK = 16 * 1024; // the samples' chunk size
const MAX_PEERS = 32; // peer connections one page keeps
const MAX_CHAT_LINES = 500;
const MAX_FILE_ITEMS = 50;
const MAX_RECEIVE_BYTES = 100 * 1024 * 1024; // a file larger than this is refused (memory)
const HIGH_WATER = 1024 * 1024; // data-channel bytes queued before the sender waits
const LOW_WATER = 256 * 1024;

const $ = (id) => document.getElementById(id);
const state = {
  session: null, // {token, user, groups, expires} of a logged-in user
  created: null, // {id, key, joinUrl}
  room: null, // {id}
  call: null,
};

function setStatus(s) {
  $('status').textContent = s;
}
function setError(e) {
  if (e instanceof ApiError && e.code === 'rate_limited') {
    // core.md §2: 429 with Retry-After (RFC 9110 §10.2.3, seconds).
    $('error').textContent = `Too many failed attempts from here: try again in ${e.retryAfter ?? 60} s.`;
    return;
  }
  const msg = e instanceof ApiError ? `${e.message}${e.code ? ` (${e.code})` : ''}` : e ? String(e.message ?? e) : '';
  $('error').textContent = msg;
}
/** Runs an action of a control: errors go to the alert region, never unhandled. */
function action(fn) {
  return async (ev) => {
    ev?.preventDefault?.();
    setError('');
    try {
      await fn(ev);
    } catch (e) {
      setError(e);
    }
  };
}

function bounded(list, max) {
  while (list.children.length > max) list.firstElementChild.remove();
}

// ---- Session -----------------------------------------------------------------------

function showSession() {
  const s = state.session;
  $('whoami').textContent = s ? `Logged in as ${s.user}${s.groups?.length ? ` (${s.groups.join(', ')})` : ''}.` : 'Not logged in.';
  $('login-form').hidden = !!s;
  $('kerberos-login').hidden = !!s;
  $('logout-button').hidden = !s;
  for (const id of ['conference-create', 'room-create', 'invite-accept-button']) $(id).disabled = !s;
}

async function login() {
  const user = $('login-user').value;
  const password = $('login-password').value;
  setStatus('Logging in…');
  // core.md §3: POST /v1/login → 401 with the challenges → the retry with Basic (a
  // directory user, over HTTPS) or Digest (the gateway's own users).
  const r = await passwordLogin('/v1/login', user, password);
  $('login-password').value = '';
  state.session = { token: r.token, user: r.user ?? user, groups: r.groups ?? [], expires: r.expires };
  showSession();
  setStatus(`Logged in as ${state.session.user}.`);
}

/**
 * core.md §3 with Negotiate (RFC 4559): first asked without credentials whether the core
 * offers Negotiate at all (else a browser would answer the Digest challenge of a
 * credentialed request with its own password dialog), then the browser answers the
 * challenge with its Kerberos ticket.
 */
async function loginKerberos() {
  setStatus('Logging in with Kerberos…');
  const probe = await api('POST', '/v1/login');
  await probe.body?.cancel().catch(() => {});
  if (probe.status === 401 && !offersNegotiate(probe))
    throw new ApiError(401, 'unauthenticated', 'This server does not offer Kerberos login: use your password.');
  const r = await negotiatePost('/v1/login');
  state.session = { token: r.token, user: r.user, groups: r.groups ?? [], expires: r.expires };
  showSession();
  setStatus(`Logged in as ${state.session.user} (Kerberos).`);
}

// ---- Conferences -------------------------------------------------------------------

/** The conference ID in a join URL (or the ID itself), and a key in its fragment. */
export function parseJoinTarget(text) {
  const s = text.trim();
  let url = null;
  try {
    url = new URL(s, location.href);
  } catch {
    /* not a URL */
  }
  if (/^[A-Za-z0-9_-]+$/.test(s)) return { id: s, key: null };
  if (!url) return { id: null, key: null };
  const frag = new URLSearchParams(url.hash.replace(/^#/, ''));
  const key = frag.get('key');
  const fromQuery = url.searchParams.get('conference') ?? frag.get('conference');
  if (fromQuery) return { id: fromQuery, key };
  const m = /\/conferences?\/([^/?#]+)/.exec(url.pathname) ?? /\/(?:c|join)\/([^/?#]+)/.exec(url.pathname);
  return { id: m ? decodeURIComponent(m[1]) : null, key };
}

async function createConference() {
  const token = state.session?.token;
  if (!token) throw new Error('Log in first.');
  const title = $('conference-title').value.trim();
  const key = makeConferenceKey(); // core.md §4.2: ≥128 random bits, base64url
  for (let attempt = 0; ; attempt++) {
    setStatus('Getting the front end’s key…');
    const ck = await expectOk(await api('GET', '/v1/conference-key', { token }));
    const body = { fe: ck.fe, key: await encryptConferenceKey(ck.public_key, key) };
    if (title) body.title = title;
    const res = await api('POST', '/v1/conferences', { token, body });
    if (res.status === 409 && attempt === 0) {
      const j = await res
        .clone()
        .json()
        .catch(() => ({}));
      if (j?.error?.code === 'unknown_fe') continue; // core.md §4.2: get a new key
    }
    const c = await expectOk(res);
    const joinUrl = new URL(c.join_url, location.href).href;
    state.created = { id: c.id, key, joinUrl };
    $('conference-url').value = joinUrl;
    $('conference-key').value = key;
    // RFC 3986 §3.5: the fragment is not sent to the server.
    $('conference-link').value = `${joinUrl}${joinUrl.includes('#') ? '&' : '#'}key=${encodeURIComponent(key)}`;
    $('conference-created').hidden = false;
    setStatus(`Conference ${c.id} created. Share the join URL and the key.`);
    $('conference-url').focus();
    return;
  }
}

async function joinAsGuest() {
  const target = parseJoinTarget($('join-conference').value);
  if (!target.id) throw new Error('That is not a join URL or a conference ID.');
  const identity = $('join-identity').value;
  if (!validIdentity(identity)) throw new Error('Your name must be 1 to 64 characters, without "/", ":" or control characters.');
  const key = $('join-key').value || target.key || '';
  setStatus('Joining…');
  let r;
  try {
    // core.md §4.3: Digest with the identity as username and K as password.
    r = await digestPost(`/v1/conferences/${encodeURIComponent(target.id)}/join`, identity, key);
  } catch (e) {
    if (e instanceof ApiError && e.code === 'identity_in_use')
      throw new Error(`The name “${identity}” is taken in this conference; pick another.`);
    if (e instanceof ApiError && e.status === 401) throw new Error('Wrong conference key (or unknown conference).');
    throw e;
  }
  await startCall({ token: r.token, conference: r.conference ?? target.id, turn: r.turn, label: identity });
}

// ---- Rooms -------------------------------------------------------------------------

async function createRoom() {
  const token = state.session?.token;
  if (!token) throw new Error('Log in first.');
  const r = await expectOk(await api('POST', '/v1/rooms', { token, body: { title: $('room-title').value.trim() } }));
  state.room = { id: r.id };
  $('room-id').textContent = r.id;
  $('room-created').hidden = false;
  setStatus(`Room ${r.id} created.`);
  $('room-invitee').focus();
}

async function invite() {
  const token = state.session?.token;
  const minutes = Number($('room-expires').value);
  const r = await expectOk(
    await api('POST', `/v1/rooms/${encodeURIComponent(state.room.id)}/invites`, {
      token,
      body: { invitee: $('room-invitee').value.trim(), expires_in: Math.round(minutes * 60) },
    }),
  );
  $('room-invite-url').value = new URL(r.url, location.href).href;
  setStatus(`Personal URL made for ${$('room-invitee').value.trim()}; it works once.`);
  $('room-invite-url').focus();
}

async function acceptInvite() {
  const token = state.session?.token;
  if (!token) throw new Error('Log in first, as the person the invitation is for.');
  const url = new URL($('invite-url').value, location.href);
  if (url.origin !== location.origin) throw new Error('That invitation is for another server.');
  // core.md §7: POST of the URL with the invitee's token admits, once.
  const res = await api('POST', url.pathname + url.search, { token });
  if (res.status === 410) throw new Error('This invitation was already used or has expired.');
  if (res.status === 403) throw new Error('This invitation is for someone else.');
  const r = await expectOk(res);
  await startCall({ token: r.token, room: r.room, turn: r.turn, label: state.session.user });
}

// ---- The call ----------------------------------------------------------------------

class Call {
  constructor({ token, conference, room, turn, label }) {
    this.token = token;
    this.conference = conference ?? null;
    this.room = room ?? null;
    this.label = label;
    this.iceServers = iceServersOf(turn);
    this.me = null;
    this.peers = new Map(); // peer id → {id, name, pc, dc, pending[], rx, tile}
    this.local = null;
    this.closed = false;
    this.ws = null;
  }

  async start() {
    this.local = await getMedia();
    this.addTile('me', `${this.label} (you)`, this.local, true);
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new WebSocket(`${proto}//${location.host}/v1/signal`);
    this.ws = ws;
    ws.onopen = () => {
      // core.md §8: the first message is the hello with the token, then the join.
      this.send({ type: 'hello', token: this.token });
      this.send(this.conference ? { type: 'join', conference: this.conference } : { type: 'join', room: this.room });
    };
    ws.onmessage = (ev) => {
      let m;
      try {
        m = JSON.parse(ev.data);
      } catch {
        return;
      }
      this.onSignal(m).catch((e) => setError(e));
    };
    ws.onclose = (ev) => {
      if (this.closed) return;
      const why =
        ev.code === 4001
          ? 'you joined from another window (replaced)'
          : ev.code === 1008
            ? 'the server refused this session'
            : `closed (${ev.code})`;
      setStatus(`Signalling ended: ${why}.`);
    };
  }

  send(m) {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(m));
  }

  nameOf(p) {
    return p.user ?? p.identity ?? p.peer;
  }

  async onSignal(m) {
    switch (m.type) {
      case 'join': {
        this.me = m.peer;
        if (m.turn) this.iceServers = iceServersOf(m.turn); // the join answer's TURN credentials
        setStatus(`In the call as ${this.label}.`);
        // The newcomer offers to everyone already there; they answer.
        for (const p of m.peers ?? []) if (p.peer !== this.me) await this.connect(p, true);
        break;
      }
      case 'peers': {
        const now = new Set();
        for (const p of m.peers ?? []) {
          if (p.peer === this.me) continue;
          now.add(p.peer);
          const known = this.peers.get(p.peer);
          if (known) known.name = this.nameOf(p);
          else this.pendingNames.set(p.peer, this.nameOf(p));
        }
        for (const [id, peer] of this.peers) if (!now.has(id)) this.drop(peer);
        break;
      }
      case 'offer': {
        const peer = this.peers.get(m.from) ?? (await this.connect({ peer: m.from }, false));
        if (!peer) return;
        await peer.pc.setRemoteDescription({ type: 'offer', sdp: sdpOf(m.sdp) });
        await this.flushCandidates(peer);
        await peer.pc.setLocalDescription(await peer.pc.createAnswer());
        this.send({ type: 'answer', to: peer.id, sdp: peer.pc.localDescription.sdp });
        break;
      }
      case 'answer': {
        const peer = this.peers.get(m.from);
        if (!peer) return;
        await peer.pc.setRemoteDescription({ type: 'answer', sdp: sdpOf(m.sdp) });
        await this.flushCandidates(peer);
        break;
      }
      case 'candidate': {
        const peer = this.peers.get(m.from);
        if (!peer || !m.candidate) return;
        if (!peer.pc.remoteDescription) {
          if (peer.pending.length < 256) peer.pending.push(m.candidate);
        } else await peer.pc.addIceCandidate(m.candidate).catch(() => {});
        break;
      }
      case 'chat': {
        if (m.from && m.from === this.me) return; // shown when sent
        const name = this.peers.get(m.from)?.name ?? this.pendingNames.get(m.from) ?? m.from ?? '?';
        addChat(name, String(m.text ?? ''));
        break;
      }
      case 'leave': {
        const peer = this.peers.get(m.from ?? m.peer);
        if (peer) this.drop(peer);
        break;
      }
      case 'turn': {
        // Fresh TURN credentials before the last expire (used by ICE restarts and new peers).
        this.iceServers = iceServersOf(m.turn);
        for (const p of this.peers.values()) {
          try {
            p.pc.setConfiguration({ iceServers: this.iceServers, iceTransportPolicy: 'relay' });
          } catch {
            /* a closed connection */
          }
        }
        break;
      }
      case 'error':
        setError(new ApiError(0, m.error?.code ?? '', m.error?.message ?? 'signalling error'));
        break;
      default:
        break; // hello acknowledgements and future messages
    }
  }

  pendingNames = new Map();

  async flushCandidates(peer) {
    for (const c of peer.pending.splice(0)) await peer.pc.addIceCandidate(c).catch(() => {});
  }

  async connect(p, initiator) {
    if (this.peers.has(p.peer)) return this.peers.get(p.peer);
    if (this.peers.size >= MAX_PEERS) {
      setError(`More than ${MAX_PEERS} participants: not connecting to more.`);
      return null;
    }
    const name = p.user ?? p.identity ?? this.pendingNames.get(p.peer) ?? p.peer;
    this.pendingNames.delete(p.peer);
    // Through the gateway's TURN only (core.md §8): relay candidates, nothing else.
    const pc = new RTCPeerConnection({ iceServers: this.iceServers, iceTransportPolicy: 'relay' });
    const peer = { id: p.peer, name, pc, dc: null, pending: [], rx: null, tile: null, stream: new MediaStream() };
    this.peers.set(p.peer, peer);
    peer.tile = this.addTile(p.peer, name, peer.stream, false);
    if (this.local) for (const tr of this.local.getTracks()) pc.addTrack(tr, this.local);
    else {
      pc.addTransceiver('audio', { direction: 'recvonly' });
      pc.addTransceiver('video', { direction: 'recvonly' });
    }
    pc.ontrack = (ev) => {
      if (!peer.stream.getTracks().includes(ev.track)) peer.stream.addTrack(ev.track);
    };
    pc.onicecandidate = (ev) => {
      if (ev.candidate) this.send({ type: 'candidate', to: peer.id, candidate: ev.candidate.toJSON() });
    };
    pc.onconnectionstatechange = () => {
      peer.tile?.setAttribute('data-state', pc.connectionState);
      if (pc.connectionState === 'failed') setStatus(`The connection to ${peer.name} failed.`);
    };
    pc.ondatachannel = (ev) => this.useChannel(peer, ev.channel);
    if (initiator) {
      this.useChannel(peer, pc.createDataChannel('files', { ordered: true }));
      await pc.setLocalDescription(await pc.createOffer());
      this.send({ type: 'offer', to: peer.id, sdp: pc.localDescription.sdp });
    }
    return peer;
  }

  useChannel(peer, dc) {
    dc.binaryType = 'arraybuffer';
    dc.bufferedAmountLowThreshold = LOW_WATER;
    peer.dc = dc;
    dc.onmessage = (ev) => receiveFile(peer, ev.data);
  }

  addTile(id, name, stream, muted) {
    const li = document.createElement('li');
    li.dataset.peer = id;
    const fig = document.createElement('figure');
    const v = document.createElement('video');
    v.autoplay = true;
    v.playsInline = true;
    v.muted = muted;
    v.srcObject = stream;
    v.setAttribute('aria-label', `Video of ${name}`);
    const cap = document.createElement('figcaption');
    cap.textContent = name;
    fig.append(v, cap);
    li.append(fig);
    $('videos').append(li);
    return li;
  }

  drop(peer) {
    peer.pc.close();
    peer.tile?.remove();
    this.peers.delete(peer.id);
  }

  async sendFile(file) {
    const open = [...this.peers.values()].filter((p) => p.dc?.readyState === 'open');
    if (open.length === 0) throw new Error('Nobody to send to yet.');
    const buf = new Uint8Array(await file.arrayBuffer());
    const sha = await sha256Hex(buf);
    for (const p of open) {
      const dc = p.dc;
      dc.send(JSON.stringify({ name: file.name, size: buf.length }));
      for (let o = 0; o < buf.length; o += CHUNK) {
        if (dc.readyState !== 'open') throw new Error(`The channel to ${p.name} closed during the transfer.`);
        if (dc.bufferedAmount > HIGH_WATER) await new Promise((r) => dc.addEventListener('bufferedamountlow', r, { once: true }));
        dc.send(buf.subarray(o, Math.min(o + CHUNK, buf.length)));
      }
    }
    addFileItem({ direction: 'sent', name: file.name, size: buf.length, sha256: sha, to: open.map((p) => p.name).join(', ') });
  }

  async stats() {
    const out = [];
    for (const p of this.peers.values()) {
      const r = await p.pc.getStats();
      const inbound = [];
      let pairId = null;
      r.forEach((s) => {
        if (s.type === 'inbound-rtp')
          inbound.push({
            kind: s.kind,
            packetsReceived: s.packetsReceived ?? 0,
            framesDecoded: s.framesDecoded ?? 0,
            bytesReceived: s.bytesReceived ?? 0,
          });
        if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
      });
      // The selected pair's local candidate (W3C webrtc-stats §7.5, §7.9): a relay one.
      const local = pairId ? r.get(r.get(pairId)?.localCandidateId) : null;
      const relay = local?.candidateType === 'relay';
      out.push({ peer: p.id, name: p.name, connectionState: p.pc.connectionState, dc: p.dc?.readyState ?? null, relay, inbound });
    }
    return out;
  }

  leave() {
    this.closed = true;
    this.send({ type: 'leave' });
    this.ws?.close(1000);
    for (const p of [...this.peers.values()]) this.drop(p);
    for (const tr of this.local?.getTracks() ?? []) tr.stop();
  }
}

function sdpOf(x) {
  return typeof x === 'string' ? x : (x?.sdp ?? '');
}

async function getMedia() {
  for (const c of [{ audio: true, video: true }, { audio: true }]) {
    try {
      return await navigator.mediaDevices.getUserMedia(c);
    } catch {
      /* try less */
    }
  }
  setStatus('No camera or microphone: you will only receive.');
  return null;
}

function addChat(name, text) {
  const li = document.createElement('li');
  const b = document.createElement('strong');
  b.textContent = `${name}: `;
  li.append(b, document.createTextNode(text));
  $('chat-log').append(li);
  bounded($('chat-log'), MAX_CHAT_LINES);
  li.scrollIntoView({ block: 'nearest' });
}

function addFileItem({ direction, name, size, sha256, from, to, blob }) {
  const li = document.createElement('li');
  li.dataset.direction = direction;
  li.dataset.name = name;
  li.dataset.size = String(size);
  li.dataset.sha256 = sha256;
  const what =
    direction === 'sent' ? `Sent ${name} (${formatBytes(size)}) to ${to}` : `Received ${name} (${formatBytes(size)}) from ${from}`;
  li.append(document.createTextNode(`${what}. SHA-256 `));
  const code = document.createElement('code');
  code.textContent = sha256;
  li.append(code);
  if (blob) {
    li.append(document.createTextNode(' '));
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = name;
    a.textContent = `Save ${name}`;
    li.append(a);
  }
  $('files').append(li);
  while ($('files').children.length > MAX_FILE_ITEMS) {
    const old = $('files').firstElementChild;
    const a = old.querySelector('a[href^="blob:"]');
    if (a) URL.revokeObjectURL(a.href);
    old.remove();
  }
}

/** A data-channel message: a JSON header {name, size} starts a file, binary messages fill it. */
function receiveFile(peer, data) {
  if (typeof data === 'string') {
    let h;
    try {
      h = JSON.parse(data);
    } catch {
      return;
    }
    const size = Number(h?.size);
    if (!Number.isSafeInteger(size) || size < 0 || size > MAX_RECEIVE_BYTES) {
      setError(`${peer.name} offered a file of ${size} bytes: refused.`);
      peer.rx = null;
      return;
    }
    peer.rx = { name: String(h.name ?? 'file').slice(0, 255), size, parts: [], got: 0 };
    setStatus(`Receiving ${peer.rx.name} from ${peer.name}…`);
    if (size === 0) finishFile(peer);
    return;
  }
  const rx = peer.rx;
  if (!rx) return;
  const chunk = new Uint8Array(data);
  if (rx.got + chunk.length > rx.size) {
    setError(`${peer.name} sent more than the announced size of ${rx.name}: dropped.`);
    peer.rx = null;
    return;
  }
  rx.parts.push(chunk);
  rx.got += chunk.length;
  if (rx.got === rx.size) finishFile(peer);
}

function finishFile(peer) {
  const rx = peer.rx;
  peer.rx = null;
  const all = new Uint8Array(rx.size);
  let o = 0;
  for (const p of rx.parts) {
    all.set(p, o);
    o += p.length;
  }
  sha256Hex(all)
    .then((sha) => {
      addFileItem({ direction: 'received', name: rx.name, size: rx.size, sha256: sha, from: peer.name, blob: new Blob([all]) });
      setStatus(`Received ${rx.name} from ${peer.name}.`);
    })
    .catch((e) => setError(e));
}

async function startCall(opts) {
  if (state.call) state.call.leave();
  const call = new Call(opts);
  state.call = call;
  $('setup').hidden = true;
  $('call').hidden = false;
  $('call-h').textContent = opts.conference ? `Conference ${opts.conference}` : `Room ${opts.room}`;
  $('call-h').focus();
  await call.start();
}

function leaveCall() {
  state.call?.leave();
  state.call = null;
  $('videos').replaceChildren();
  $('call').hidden = true;
  $('setup').hidden = false;
  setStatus('You left the call.');
}

// For tests and diagnostics: read-only views of the call (no secrets).
window.gatehouse = {
  stats: () => state.call?.stats() ?? Promise.resolve([]),
  me: () => state.call?.me ?? null,
};

// ---- Wiring ------------------------------------------------------------------------

function init() {
  showSession();
  $('login-form').addEventListener('submit', action(login));
  $('kerberos-button').addEventListener('click', action(loginKerberos));
  $('logout-button').addEventListener(
    'click',
    action(() => {
      state.session = null;
      showSession();
      setStatus('Logged out.');
    }),
  );
  $('conference-form').addEventListener('submit', action(createConference));
  $('conference-enter').addEventListener(
    'click',
    action(() => startCall({ token: state.session.token, conference: state.created.id, label: state.session.user })),
  );
  $('room-form').addEventListener('submit', action(createRoom));
  $('room-invite-form').addEventListener('submit', action(invite));
  $('room-enter').addEventListener(
    'click',
    action(() => startCall({ token: state.session.token, room: state.room.id, label: state.session.user })),
  );
  $('join-form').addEventListener('submit', action(joinAsGuest));
  $('invite-accept-form').addEventListener('submit', action(acceptInvite));
  $('chat-form').addEventListener(
    'submit',
    action(() => {
      const text = $('chat-input').value;
      if (!text || !state.call) return;
      state.call.send({ type: 'chat', text });
      addChat(`${state.call.label} (you)`, text);
      $('chat-input').value = '';
    }),
  );
  $('file-form').addEventListener(
    'submit',
    action(async () => {
      const f = $('file-input').files?.[0];
      if (!f || !state.call) return;
      $('file-send').disabled = true;
      try {
        setStatus(`Sending ${f.name}…`);
        await state.call.sendFile(f);
        setStatus(`Sent ${f.name}.`);
      } finally {
        $('file-send').disabled = false;
      }
    }),
  );
  $('leave-button').addEventListener('click', action(leaveCall));
  $('mute-button').addEventListener('click', () => toggle('audio', $('mute-button'), 'Mute microphone', 'Unmute microphone'));
  $('camera-button').addEventListener('click', () => toggle('video', $('camera-button'), 'Turn camera off', 'Turn camera on'));

  // Opened from a link: a join URL (conference) fills the join form; any other path is
  // a personal invitation (core.md §7: GET serves this page and spends nothing).
  if (location.pathname !== '/' || location.hash) {
    const t = parseJoinTarget(location.href);
    if (t.id && location.pathname !== '/') {
      $('join-conference').value = location.href.split('#')[0];
      if (t.key) $('join-key').value = t.key;
      $('join-identity').focus();
    } else if (location.pathname !== '/') {
      $('invite-section').hidden = false;
      $('invite-url').value = location.href.split('#')[0];
      $('login-user').focus();
    }
    // The key must not linger in the address bar or history.
    if (t.key) history.replaceState(null, '', location.pathname + location.search);
  }
}

function toggle(kind, button, onLabel, offLabel) {
  const tracks = state.call?.local?.getTracks().filter((t) => t.kind === kind) ?? [];
  const off = button.getAttribute('aria-pressed') !== 'true';
  for (const t of tracks) t.enabled = !off;
  button.setAttribute('aria-pressed', String(off));
  button.textContent = off ? offLabel : onLabel;
}

init();
