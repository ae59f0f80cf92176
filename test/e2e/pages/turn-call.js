// In-browser half of the TURN end-to-end tests. Exposes window.gatehouseE2E:
//   runLoopbackCall(opts) — two RTCPeerConnections in this page, signalling in memory;
//   runPeer(opts)         — one peer, signalling through the page server's mailbox
//                           (/signal/ROOM/NAME), for calls between two pages.
// Everything returns plain JSON so the Node side can assert on it. The offerer sends
// fake audio+video and data-channel messages; the answerer receives, hashes the binary
// message with SHA-256 (crypto.subtle) and acknowledges over the data channel.
//
// Wire conventions, for a non-browser peer that wants to stand in for one side:
// signalling messages are {sdp: {type, sdp}} or {candidate: RTCIceCandidateInit}, sent
// to mailbox name 'offerer' or 'answerer' in the room; the offerer opens data channel
// 'e2e' (ordered), sends the text messages, the binary messages, then the text 'END';
// the answerer then replies with the text {"ack":{"texts":N,"binaries":[{length,sha256}]}}.

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function log(role, ...args) {
  console.log(`[${role}]`, ...args);
}

async function withTimeout(promise, ms, what, state) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timeout after ${ms} ms: ${what}; state: ${JSON.stringify(state ? state() : {})}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function b64ToBytes(b64) {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

async function sha256Hex(buf) {
  const d = new Uint8Array(await crypto.subtle.digest('SHA-256', buf));
  return Array.from(d, (b) => b.toString(16).padStart(2, '0')).join('');
}

function parseCandidateLine(c) {
  // RFC 8839 §5.1: candidate:foundation component transport priority address port typ TYPE ...
  const parts = c.candidate.split(' ');
  const i = parts.indexOf('typ');
  return {
    type: i >= 0 ? parts[i + 1] : null,
    protocol: parts[2] ? parts[2].toLowerCase() : null,
    address: parts[4] ?? null,
    port: parts[5] ? Number(parts[5]) : null,
    relayProtocol: c.relayProtocol ?? null,
    url: c.url ?? null,
  };
}

function pickCandidate(c) {
  if (!c) return null;
  return {
    candidateType: c.candidateType,
    protocol: c.protocol,
    relayProtocol: c.relayProtocol ?? null,
    address: c.address ?? c.ip ?? null,
    port: c.port,
    url: c.url ?? null,
  };
}

/**
 * The selected candidate pair (RTCTransportStats.selectedCandidatePairId), else a nominated
 * succeeded one. Data can flow on a selected pair whose connectivity check answer is still
 * outstanding (state in-progress), so stats are re-read for up to 5 s until it settles.
 */
async function selectedPair(pc) {
  for (let i = 0; i < 50; i++) {
    const p = await selectedPairOnce(pc);
    if (!p || p.state === 'succeeded' || i === 49) return p;
    await new Promise((r) => setTimeout(r, 100));
  }
  return null;
}

async function selectedPairOnce(pc) {
  const stats = await pc.getStats();
  let pair = null;
  stats.forEach((s) => {
    if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId) ?? pair;
  });
  if (!pair) {
    stats.forEach((s) => {
      if (s.type === 'candidate-pair' && s.state === 'succeeded' && s.nominated) pair = s;
    });
  }
  if (!pair) return null;
  return {
    state: pair.state,
    nominated: pair.nominated ?? null,
    bytesSent: pair.bytesSent ?? null,
    bytesReceived: pair.bytesReceived ?? null,
    local: pickCandidate(stats.get(pair.localCandidateId)),
    remote: pickCandidate(stats.get(pair.remoteCandidateId)),
  };
}

async function inboundMedia(pc) {
  const stats = await pc.getStats();
  const out = { video: null, audio: null };
  stats.forEach((s) => {
    if (s.type !== 'inbound-rtp') return;
    if (s.kind === 'video') {
      out.video = {
        packetsReceived: s.packetsReceived ?? 0,
        bytesReceived: s.bytesReceived ?? 0,
        framesReceived: s.framesReceived ?? 0,
        framesDecoded: s.framesDecoded ?? 0,
        frameWidth: s.frameWidth ?? null,
        frameHeight: s.frameHeight ?? null,
      };
    } else if (s.kind === 'audio') {
      out.audio = {
        packetsReceived: s.packetsReceived ?? 0,
        bytesReceived: s.bytesReceived ?? 0,
        totalSamplesReceived: s.totalSamplesReceived ?? 0,
      };
    }
  });
  return out;
}

/** In-memory signalling pair for two peers in one page. */
function memorySignallers() {
  const make = () => ({ queue: [], waiters: [] });
  const a = make();
  const b = make();
  const deliver = (box, msg) => {
    const w = box.waiters.shift();
    if (w) w(msg);
    else box.queue.push(msg);
  };
  const side = (mine, theirs) => ({
    send: async (msg) => deliver(theirs, JSON.parse(JSON.stringify(msg))),
    recv: () => (mine.queue.length ? Promise.resolve(mine.queue.shift()) : new Promise((r) => mine.waiters.push(r))),
    close() {},
  });
  return [side(a, b), side(b, a)];
}

/** Signalling through the page server: POST /signal/ROOM/TO, long-poll GET /signal/ROOM/ME. */
function httpSignaller(room, me, peer) {
  const pending = [];
  const waiters = [];
  let closed = false;
  (async () => {
    while (!closed) {
      try {
        const r = await fetch(`/signal/${encodeURIComponent(room)}/${encodeURIComponent(me)}`);
        if (!r.ok) throw new Error(`GET ${r.status}`);
        for (const m of await r.json()) {
          const w = waiters.shift();
          if (w) w(m);
          else pending.push(m);
        }
      } catch (e) {
        if (!closed) {
          console.log(`[${me}] signalling poll failed: ${e}`);
          await sleep(200);
        }
      }
    }
  })();
  let chain = Promise.resolve();
  const post = async (msg) => {
    const r = await fetch(`/signal/${encodeURIComponent(room)}/${encodeURIComponent(peer)}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(msg),
    });
    if (!r.ok) throw new Error(`signalling POST ${r.status}`);
  };
  return {
    // Sends in call order: an offer must not be overtaken by its own candidates.
    send(msg) {
      const p = chain.then(() => post(msg));
      chain = p.catch(() => {});
      return p;
    },
    recv: () => (pending.length ? Promise.resolve(pending.shift()) : new Promise((r) => waiters.push(r))),
    close() {
      closed = true;
    },
  };
}

/**
 * One peer. opts: { role: 'offerer'|'answerer', iceServers, texts: string[] (offerer),
 * binaryB64 (offerer), media: bool, timeoutMs, minFrames }. signal: { send, recv }.
 */
async function peer(opts, signal) {
  const role = opts.role;
  const timeoutMs = opts.timeoutMs ?? 60000;
  const t0 = performance.now();
  const result = {
    role,
    gathered: [],
    events: [],
    received: { texts: [], binaries: [] },
    ack: null,
    media: null,
    pair: null,
    error: null,
  };
  const ev = (what) => {
    result.events.push({ at: Math.round(performance.now() - t0), what });
    log(role, what);
  };
  const pc = new RTCPeerConnection({ iceServers: opts.iceServers, iceTransportPolicy: 'relay' });
  const state = () => ({
    signalingState: pc.signalingState,
    iceGatheringState: pc.iceGatheringState,
    iceConnectionState: pc.iceConnectionState,
    connectionState: pc.connectionState,
    gathered: result.gathered,
    received: { texts: result.received.texts.length, binaries: result.received.binaries.length },
  });
  pc.addEventListener('icecandidate', (e) => {
    if (e.candidate && e.candidate.candidate) {
      result.gathered.push(parseCandidateLine(e.candidate));
      ev(`local candidate ${e.candidate.candidate}`);
      Promise.resolve(signal.send({ candidate: e.candidate.toJSON() })).catch((err) => ev(`signalling send failed: ${err}`));
    } else if (!e.candidate) {
      ev('gathering complete');
    }
  });
  pc.addEventListener('icecandidateerror', (e) => {
    ev(`icecandidateerror url=${e.url} code=${e.errorCode} text=${e.errorText} address=${e.address}:${e.port}`);
  });
  pc.addEventListener('track', (e) => {
    ev(`remote track ${e.track.kind}`);
    if (e.track.kind === 'audio') {
      // WebRTC decodes audio only when something pulls it: play it (muted) through an
      // element, so totalSamplesReceived counts decoded samples.
      const el = document.createElement('audio');
      el.muted = true;
      el.srcObject = new MediaStream([e.track]);
      document.body.appendChild(el);
      el.play().catch((err) => ev(`audio play failed: ${err}`));
    }
  });
  pc.addEventListener('iceconnectionstatechange', () => ev(`iceConnectionState ${pc.iceConnectionState}`));
  pc.addEventListener('connectionstatechange', () => ev(`connectionState ${pc.connectionState}`));

  const connected = new Promise((resolve, reject) => {
    const check = () => {
      if (pc.connectionState === 'connected') resolve();
      if (pc.connectionState === 'failed') reject(new Error(`connection failed; state: ${JSON.stringify(state())}`));
    };
    pc.addEventListener('connectionstatechange', check);
    check();
  });

  // Signalling pump: offer/answer and trickled candidates, in arrival order.
  let pumping = true;
  const early = [];
  const pump = (async () => {
    while (pumping) {
      const m = await signal.recv();
      if (!pumping) break;
      if (m.sdp) {
        await pc.setRemoteDescription(m.sdp);
        ev(`remote ${m.sdp.type} set`);
        if (m.sdp.type === 'offer') {
          await pc.setLocalDescription();
          await signal.send({ sdp: pc.localDescription.toJSON() });
          ev('answer sent');
        }
        for (const c of early.splice(0)) await pc.addIceCandidate(c);
      } else if (m.candidate) {
        // A candidate that overtook the description waits for it.
        if (pc.remoteDescription) await pc.addIceCandidate(m.candidate);
        else early.push(m.candidate);
      }
    }
  })().catch((e) => {
    ev(`signalling error ${e}`);
  });

  let dc = null;
  let stream = null;
  const dcDone = new Promise((resolveDone, rejectDone) => {
    const wire = (channel) => {
      dc = channel;
      channel.binaryType = 'arraybuffer';
      channel.addEventListener('open', () => ev(`datachannel ${channel.label} open`));
      channel.addEventListener('error', (e) => ev(`datachannel error ${e.error ? e.error.message : e}`));
      channel.addEventListener('message', async (e) => {
        try {
          if (typeof e.data === 'string') {
            if (role === 'answerer' && e.data === 'END') {
              await Promise.all(hashing);
              channel.send(JSON.stringify({ ack: { texts: result.received.texts.length, binaries: result.received.binaries } }));
              ev('END received, ack sent');
              resolveDone();
            } else if (role === 'offerer' && e.data.startsWith('{"ack"')) {
              result.ack = JSON.parse(e.data).ack;
              ev('ack received');
              resolveDone();
            } else {
              result.received.texts.push(e.data);
            }
          } else {
            const p = sha256Hex(e.data).then((h) => {
              result.received.binaries.push({ length: e.data.byteLength, sha256: h });
            });
            hashing.push(p);
          }
        } catch (err) {
          rejectDone(err);
        }
      });
    };
    const hashing = [];
    if (role === 'offerer') {
      wire(pc.createDataChannel('e2e', { ordered: true }));
    } else {
      pc.addEventListener('datachannel', (e) => wire(e.channel));
    }
  });

  try {
    if (role === 'offerer') {
      if (opts.media !== false) {
        stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 320, height: 240, frameRate: 15 } });
        for (const track of stream.getTracks()) pc.addTrack(track, stream);
        ev(
          `local tracks: ${stream
            .getTracks()
            .map((t) => t.kind)
            .join(',')}`,
        );
      }
      await pc.setLocalDescription();
      await signal.send({ sdp: pc.localDescription.toJSON() });
      ev('offer sent');
    }
    await withTimeout(connected, timeoutMs, 'peer connection to reach connected', state);
    ev('connected');

    if (role === 'offerer') {
      const channel = dc;
      if (channel.readyState !== 'open') {
        await withTimeout(new Promise((r) => channel.addEventListener('open', r, { once: true })), timeoutMs, 'data channel open', state);
      }
      for (const text of opts.texts ?? []) channel.send(text);
      if (opts.binaryB64) channel.send(b64ToBytes(opts.binaryB64));
      channel.send('END');
      ev('data sent');
    }
    await withTimeout(dcDone, timeoutMs, role === 'offerer' ? 'ack from answerer' : 'END from offerer', state);

    if (role === 'answerer' && opts.media !== false) {
      const minFrames = opts.minFrames ?? 5;
      const waitMedia = (async () => {
        for (;;) {
          const m = await inboundMedia(pc);
          result.media = m;
          if (
            m.video &&
            m.video.framesDecoded >= minFrames &&
            m.audio &&
            m.audio.packetsReceived >= minFrames &&
            m.audio.totalSamplesReceived > 0
          )
            return;
          await sleep(250);
        }
      })();
      await withTimeout(waitMedia, timeoutMs, `media: ${minFrames} decoded video frames and audio packets`, () => ({
        ...state(),
        media: result.media,
      }));
      ev(`media ok ${JSON.stringify(result.media)}`);
    }
    result.pair = await selectedPair(pc);
  } catch (e) {
    result.error = String(e && e.message ? e.message : e);
    try {
      result.pair = await selectedPair(pc);
      result.media = await inboundMedia(pc);
    } catch {
      /* best effort */
    }
  }
  result.final = state();
  pumping = false;
  signal.close();
  // Tracks keep sending until closeAll(): the other side may still be counting frames.
  if (stream) (window.__gatehouseE2EStreams = window.__gatehouseE2EStreams || []).push(stream);
  // The peer connection stays open (the other side may still be measuring media);
  // closeAll() ends it.
  window.__gatehouseE2EPeers = window.__gatehouseE2EPeers || [];
  window.__gatehouseE2EPeers.push(pc);
  void pump;
  return result;
}

async function runLoopbackCall(opts) {
  const [s1, s2] = memorySignallers();
  const common = { iceServers: opts.iceServers, timeoutMs: opts.timeoutMs, media: opts.media, minFrames: opts.minFrames };
  const [offerer, answerer] = await Promise.all([
    peer({ ...common, role: 'offerer', texts: opts.texts, binaryB64: opts.binaryB64 }, s1),
    peer({ ...common, role: 'answerer' }, s2),
  ]);
  closeAll();
  return { offerer, answerer };
}

async function runPeer(opts) {
  const signal = httpSignaller(opts.room, opts.role, opts.role === 'offerer' ? 'answerer' : 'offerer');
  return peer(opts, signal);
}

function closeAll() {
  for (const pc of window.__gatehouseE2EPeers || []) pc.close();
  window.__gatehouseE2EPeers = [];
  for (const st of window.__gatehouseE2EStreams || []) for (const t of st.getTracks()) t.stop();
  window.__gatehouseE2EStreams = [];
}

window.gatehouseE2E = { runLoopbackCall, runPeer, closeAll, ready: true };
