// Gatehouse real-browser call page (served by scripts/browser/ns-runner.ts).
// Single-page mode (no ?role=): two RTCPeerConnections in this page call each other
// through the TURN server given in /config.json with iceTransportPolicy 'relay'.
// Two-browser mode (?role=pc1 or ?role=pc2): this page is one peer and signals through
// the local HTTP server (/signal, /barrier). pc1 offers (and creates the data channels),
// pc2 answers. Both send fake audio+video. Messages are sent on three data channels;
// every message sent and received is recorded with its size and SHA-256 and the report
// is POSTed to /report. Plain ES2020, no modules, no dependencies.
'use strict';
const ROLE = new URLSearchParams(location.search).get('role');
const t0 = performance.now();
const lines = [];
const log = (msg) => {
  const line = ((performance.now() - t0) / 1000).toFixed(2) + 's ' + (ROLE ? ROLE + ' ' : '') + msg;
  lines.push(line);
  document.getElementById('log').textContent += line + '\n';
  fetch('/log', { method: 'POST', body: line }).catch(() => {});
};
const hex = (buf) => Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, '0')).join('');
const sha256 = async (bytes) => hex(await crypto.subtle.digest('SHA-256', bytes));
const toBytes = async (data) => {
  if (typeof data === 'string') return { bytes: new TextEncoder().encode(data), kind: 'string' };
  if (data instanceof ArrayBuffer) return { bytes: new Uint8Array(data), kind: 'binary' };
  if (ArrayBuffer.isView(data)) return { bytes: new Uint8Array(data.buffer, data.byteOffset, data.byteLength), kind: 'binary' };
  if (data instanceof Blob) return { bytes: new Uint8Array(await data.arrayBuffer()), kind: 'binary' };
  throw new Error('unknown data type');
};
const randomBytes = (n) => {
  const b = new Uint8Array(n);
  for (let o = 0; o < n; o += 65536) crypto.getRandomValues(b.subarray(o, Math.min(n, o + 65536)));
  return b;
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const withTimeout = (p, ms, what) =>
  Promise.race([
    p,
    sleep(ms).then(() => {
      throw new Error('timeout: ' + what);
    }),
  ]);
const stripPwd = (sdp) =>
  sdp
    .split('\r\n')
    .filter((l) => !l.startsWith('a=ice-pwd'))
    .join('\r\n');
const SPECS = [
  { label: 'chat', init: { ordered: true } },
  { label: 'bulk', init: { ordered: true } },
  { label: 'unordered', init: { ordered: false } },
];
/** Every message of the call: who sends what on which channel (counts are fixed, data random). */
function makePlan(cfg) {
  const plan = [];
  for (let i = 0; i < 5; i++) plan.push({ from: 'pc1', label: 'chat', data: 'hello from pc1 #' + i + ' ' + 'é✓'.repeat(i) });
  for (let i = 0; i < 3; i++) plan.push({ from: 'pc2', label: 'chat', data: 'reply from pc2 #' + i });
  plan.push({ from: 'pc1', label: 'bulk', data: randomBytes(cfg.bulkSize || 150000) });
  plan.push({ from: 'pc2', label: 'bulk', data: randomBytes(20000) });
  for (let i = 0; i < 10; i++) {
    plan.push({ from: 'pc1', label: 'unordered', data: i % 2 ? 'unordered text ' + i : randomBytes(100 + 37 * i) });
  }
  return plan;
}
async function statsSummary(pc) {
  const st = await pc.getStats();
  const out = [];
  st.forEach((r) => {
    if (
      ['candidate-pair', 'local-candidate', 'remote-candidate', 'inbound-rtp', 'outbound-rtp', 'data-channel', 'transport'].includes(r.type)
    ) {
      if (r.type === 'candidate-pair' && r.state !== 'succeeded') return;
      const o = {};
      for (const k of Object.keys(r)) if (typeof r[k] !== 'object') o[k] = r[k];
      out.push(o);
    }
  });
  return out;
}

/** Two-browser mode: this page is `role`; the other peer is in another browser. */
async function twoBrowser(role) {
  const other = role === 'pc1' ? 'pc2' : 'pc1';
  const report = { ok: false, role, userAgent: navigator.userAgent, sent: [], received: [], errors: [], log: lines };
  // One POST at a time, in order: a candidate posted while the offer's POST is still in
  // flight can reach the server first (separate connections), and the other peer would
  // then add it before it has a remote description (InvalidStateError, call lost).
  let outbox = Promise.resolve();
  const signal = (msg) =>
    (outbox = outbox.catch(() => {}).then(() => fetch('/signal?to=' + other, { method: 'POST', body: JSON.stringify(msg) })));
  const barrier = async (name, ms) => {
    await fetch('/barrier?name=' + name + '&role=' + role, { method: 'POST' });
    const end = performance.now() + ms;
    while (performance.now() < end) {
      const b = await (await fetch('/barrier?name=' + name)).json();
      if (b.roles.length >= 2) return;
      await sleep(100);
    }
    throw new Error('timeout: barrier ' + name);
  };
  try {
    const cfg = await (await fetch('/config.json')).json();
    report.config = { dtls: cfg.dtls, mediaSeconds: cfg.mediaSeconds, turnUrl: cfg.turn.url };
    const pc = new RTCPeerConnection({
      iceServers: [{ urls: cfg.turn.url, username: cfg.turn.username, credential: cfg.turn.credential }],
      iceTransportPolicy: 'relay',
    });
    pc.onicecandidate = (e) => {
      if (e.candidate) {
        log('candidate ' + e.candidate.candidate);
        signal({ type: 'candidate', candidate: e.candidate.toJSON() });
      }
    };
    pc.oniceconnectionstatechange = () => log('ice ' + pc.iceConnectionState);
    pc.onconnectionstatechange = () => log('connection ' + pc.connectionState);
    let media = cfg.media !== false;
    if (media) {
      try {
        const s = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
        for (const tr of s.getTracks()) pc.addTrack(tr, s);
      } catch (err) {
        media = false;
        report.errors.push('getUserMedia: ' + err);
      }
    }
    report.media = media;
    const chans = {};
    const expect = {};
    const plan = makePlan(cfg);
    for (const p of plan) if (p.from === other) expect[p.label] = (expect[p.label] || 0) + 1;
    let notify = () => {};
    const arm = (ch) => {
      ch.binaryType = 'arraybuffer';
      let seen = 0;
      ch.onmessage = async (e) => {
        const idx = seen++;
        const { bytes, kind } = await toBytes(e.data);
        report.received.push({ to: role, label: ch.label, index: idx, kind, size: bytes.byteLength, sha256: await sha256(bytes) });
        notify();
      };
    };
    const opened = new Promise((resolve) => {
      const check = () => {
        if (SPECS.every((s) => chans[s.label] && chans[s.label].readyState === 'open')) resolve();
      };
      if (role === 'pc1') {
        for (const s of SPECS) {
          const ch = pc.createDataChannel(s.label, s.init);
          chans[s.label] = ch;
          arm(ch);
          ch.onopen = check;
        }
      } else {
        pc.ondatachannel = (e) => {
          chans[e.channel.label] = e.channel;
          arm(e.channel);
          if (e.channel.readyState === 'open') check();
          else e.channel.onopen = check;
        };
      }
    });
    // Signalling: messages are handled strictly in order (offer/answer before candidates).
    let stop = false;
    let answerSdp = null;
    // Candidates that arrive before the remote description wait for it (JSEP, RFC 8829
    // §5.7: addIceCandidate needs a remote description).
    const early = [];
    const addCandidate = (c) => pc.addIceCandidate(c).catch((err) => report.errors.push('addIceCandidate: ' + err));
    const flushEarly = async () => {
      while (early.length) await addCandidate(early.shift());
    };
    const pump = (async () => {
      while (!stop) {
        const msgs = await (await fetch('/signal?me=' + role)).json();
        for (const m of msgs) {
          if (m.type === 'offer') {
            await pc.setRemoteDescription({ type: 'offer', sdp: m.sdp });
            await flushEarly();
            const ans = await pc.createAnswer();
            await pc.setLocalDescription(ans);
            await signal({ type: 'answer', sdp: pc.localDescription.sdp });
          } else if (m.type === 'answer') {
            answerSdp = m.sdp;
            await pc.setRemoteDescription({ type: 'answer', sdp: m.sdp });
            await flushEarly();
          } else if (m.type === 'candidate') {
            if (pc.remoteDescription) await addCandidate(m.candidate);
            else early.push(m.candidate);
          }
        }
        await sleep(50);
      }
    })();
    if (role === 'pc1') {
      const offer = await pc.createOffer();
      await pc.setLocalDescription(offer);
      await signal({ type: 'offer', sdp: pc.localDescription.sdp });
    }
    await withTimeout(opened, cfg.connectTimeoutMs || 30000, 'data channels open');
    log('data channels open');
    if (role === 'pc1' && answerSdp) {
      report.sdp = { offer: stripPwd(pc.localDescription.sdp), answer: stripPwd(answerSdp) };
      const setup = /a=setup:(\w+)/.exec(answerSdp);
      report.dtlsClient = setup && setup[1] === 'passive' ? 'pc1' : 'pc2';
    }
    await barrier('open', 30000);
    const counters = {};
    for (const p of plan) {
      if (p.from !== role) continue;
      const ck = p.label;
      const index = (counters[ck] = (counters[ck] || 0) + 1) - 1;
      const { bytes, kind } = await toBytes(p.data);
      report.sent.push({ from: role, label: p.label, index, kind, size: bytes.byteLength, sha256: await sha256(bytes) });
      chans[p.label].send(p.data);
    }
    log('sent');
    const allIn = () => Object.keys(expect).every((l) => report.received.filter((r) => r.label === l).length >= expect[l]);
    await withTimeout(
      new Promise((resolve) => {
        notify = () => {
          if (allIn()) resolve();
        };
        notify();
      }),
      cfg.deliverTimeoutMs || 30000,
      'all messages received',
    );
    log('all messages received');
    await barrier('received', 30000);
    if (media) await sleep((cfg.mediaSeconds ?? 3) * 1000);
    report.stats = { [role]: await statsSummary(pc) };
    await barrier('stats', 30000);
    for (const ch of Object.values(chans))
      try {
        ch.close();
      } catch {}
    await sleep(500);
    stop = true;
    await pump.catch(() => {});
    pc.close();
    await sleep(300);
    report.ok = report.errors.length === 0;
    log('done ok=' + report.ok);
  } catch (err) {
    report.errors.push(String((err && err.stack) || err));
    log('error ' + err);
  }
  await fetch('/report?role=' + role, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(report) });
}
(async () => {
  if (ROLE) return twoBrowser(ROLE);
  const report = { ok: false, userAgent: navigator.userAgent, sent: [], received: [], errors: [], log: lines };
  let cfg;
  try {
    cfg = await (await fetch('/config.json')).json();
    report.config = { dtls: cfg.dtls, mediaSeconds: cfg.mediaSeconds, turnUrl: cfg.turn.url };
    const rtcConfig = {
      iceServers: [{ urls: cfg.turn.url, username: cfg.turn.username, credential: cfg.turn.credential }],
      iceTransportPolicy: 'relay',
    };
    const pc1 = new RTCPeerConnection(rtcConfig);
    const pc2 = new RTCPeerConnection(rtcConfig);
    const pcs = { pc1, pc2 };
    for (const [name, pc] of Object.entries(pcs)) {
      const other = name === 'pc1' ? pc2 : pc1;
      pc.onicecandidate = (e) => {
        if (e.candidate) {
          log(name + ' candidate ' + e.candidate.candidate);
          other.addIceCandidate(e.candidate).catch((err) => report.errors.push(name + ' addIceCandidate: ' + err));
        }
      };
      pc.oniceconnectionstatechange = () => log(name + ' ice ' + pc.iceConnectionState);
      pc.onconnectionstatechange = () => log(name + ' connection ' + pc.connectionState);
    }

    // Fake media (media.navigator.streams.fake) on both sides.
    let media = cfg.media !== false;
    if (media) {
      try {
        const s1 = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
        const s2 = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
        for (const tr of s1.getTracks()) pc1.addTrack(tr, s1);
        for (const tr of s2.getTracks()) pc2.addTrack(tr, s2);
        log('media tracks added');
      } catch (err) {
        media = false;
        report.errors.push('getUserMedia: ' + err);
      }
    }
    report.media = media;

    // Data channels (RFC 8831): created by pc1 so they are negotiated in-band (DCEP, RFC 8832).
    const specs = SPECS;
    const chans = { pc1: {}, pc2: {} };
    const rxPromises = [];
    const expectCount = {};
    const recvDone = {};
    const armReceiver = (side, ch) => {
      ch.binaryType = 'arraybuffer';
      let seen = 0;
      ch.onmessage = async (e) => {
        const idx = seen++;
        const { bytes, kind } = await toBytes(e.data);
        const rec = { to: side, label: ch.label, index: idx, kind, size: bytes.byteLength, sha256: await sha256(bytes) };
        report.received.push(rec);
        const key = side + '/' + ch.label;
        const n = report.received.filter((r) => r.to === side && r.label === ch.label).length;
        if (expectCount[key] !== undefined && n >= expectCount[key] && recvDone[key]) recvDone[key]();
      };
    };
    for (const s of specs) {
      const ch = pc1.createDataChannel(s.label, s.init);
      chans.pc1[s.label] = ch;
      armReceiver('pc1', ch);
    }
    const pc2Opened = new Promise((resolve) => {
      let n = 0;
      pc2.ondatachannel = (e) => {
        chans.pc2[e.channel.label] = e.channel;
        armReceiver('pc2', e.channel);
        const done = () => {
          if (++n === specs.length) resolve();
        };
        if (e.channel.readyState === 'open') done();
        else e.channel.onopen = done;
      };
    });
    const pc1Opened = Promise.all(
      specs.map(
        (s) =>
          new Promise((resolve) => {
            const ch = chans.pc1[s.label];
            if (ch.readyState === 'open') resolve();
            else ch.onopen = resolve;
          }),
      ),
    );

    const offer = await pc1.createOffer();
    await pc1.setLocalDescription(offer);
    await pc2.setRemoteDescription(pc1.localDescription);
    const answer = await pc2.createAnswer();
    await pc2.setLocalDescription(answer);
    await pc1.setRemoteDescription(pc2.localDescription);
    report.sdp = { offer: stripPwd(pc1.localDescription.sdp), answer: stripPwd(pc2.localDescription.sdp) };
    // RFC 5763 §5: the answerer's a=setup decides the DTLS client.
    const setup = /a=setup:(\w+)/.exec(pc2.localDescription.sdp);
    report.dtlsClient = setup && setup[1] === 'passive' ? 'pc1' : 'pc2';
    log('negotiated; answerer a=setup:' + (setup ? setup[1] : '?'));

    await withTimeout(Promise.all([pc1Opened, pc2Opened]), cfg.connectTimeoutMs || 30000, 'data channels open');
    log('data channels open');

    // Plan what to send. Every message gets a record in report.sent.
    const plan = makePlan(cfg);
    for (const p of plan) {
      const to = p.from === 'pc1' ? 'pc2' : 'pc1';
      const key = to + '/' + p.label;
      expectCount[key] = (expectCount[key] || 0) + 1;
    }
    for (const key of Object.keys(expectCount)) {
      rxPromises.push(
        new Promise((resolve) => {
          recvDone[key] = resolve;
          const [to, label] = key.split('/');
          if (report.received.filter((r) => r.to === to && r.label === label).length >= expectCount[key]) resolve();
        }),
      );
    }
    const counters = {};
    for (const p of plan) {
      const ck = p.from + '/' + p.label;
      const index = (counters[ck] = (counters[ck] || 0) + 1) - 1;
      const { bytes, kind } = await toBytes(p.data);
      report.sent.push({ from: p.from, label: p.label, index, kind, size: bytes.byteLength, sha256: await sha256(bytes) });
      chans[p.from][p.label].send(p.data);
    }
    log('sent ' + plan.length + ' messages');
    await withTimeout(Promise.all(rxPromises), cfg.deliverTimeoutMs || 30000, 'all messages received');
    log('all messages received');

    // Let media flow for a while so SRTP/SRTCP is captured.
    if (media) await sleep((cfg.mediaSeconds ?? 3) * 1000);

    // getStats summary.
    report.stats = {};
    for (const [name, pc] of Object.entries(pcs)) report.stats[name] = await statsSummary(pc);
    // Verify delivery in-page too: every sent message must be received with the same digest.
    const missing = [];
    for (const s of report.sent) {
      const to = s.from === 'pc1' ? 'pc2' : 'pc1';
      if (!report.received.some((r) => r.to === to && r.label === s.label && r.sha256 === s.sha256 && r.size === s.size)) missing.push(s);
    }
    report.missing = missing;
    // Orderly close: data channels (SCTP stream reset), then DTLS close_notify.
    for (const side of ['pc1', 'pc2'])
      for (const ch of Object.values(chans[side]))
        try {
          ch.close();
        } catch {}
    await sleep(500);
    pc1.close();
    pc2.close();
    await sleep(300);
    report.ok = missing.length === 0 && report.errors.length === 0;
    log('done ok=' + report.ok);
  } catch (err) {
    report.errors.push(String((err && err.stack) || err));
    log('error ' + err);
  }
  await fetch('/report', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(report) });
})();
