// The in-browser peer of the key-escrow scenarios: one RTCPeerConnection per page,
// relay-only through the given TURN server, signalling through the page server's
// mailbox (POST / long-poll GET /signal/ROOM/NAME) with the wire conventions of
// pages/turn-call.js: {sdp: {type, sdp}} to 'offerer' / 'answerer'. Descriptions are
// sent once ICE gathering is complete (no trickle), so a werift peer needs no
// candidate handling. The offerer opens data channel 'e2e' (ordered). Unlike
// turn-call.js it is driven step by step from Node (start, send, state), so a test can
// observe what the browser sees while the gateway holds or blocks the flow.
import type { Page } from 'playwright-core';
import type { TestBrowser } from './browser.js';
import type { PageServer } from './page-server.js';
import type { IceServer } from './turn-servers.js';

const PEER_JS = String.raw`
(() => {
  const t0 = performance.now();
  const st = { log: [], received: [], ice: [], conn: [], dcOpened: false, dcClosed: false, error: null };
  let pc = null;
  let dc = null;
  const note = (what) => { st.log.push(Math.round(performance.now() - t0) + 'ms ' + what); };
  async function sha256Hex(bytes) {
    const d = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
    return Array.from(d, (b) => b.toString(16).padStart(2, '0')).join('');
  }
  function b64ToBytes(b64) {
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  function wire(ch) {
    dc = ch;
    ch.binaryType = 'arraybuffer';
    ch.addEventListener('open', () => { st.dcOpened = true; note('datachannel open'); });
    ch.addEventListener('close', () => { st.dcClosed = true; note('datachannel close'); });
    ch.addEventListener('error', (e) => note('datachannel error ' + (e.error ? e.error.message : e)));
    ch.addEventListener('message', (e) => {
      const text = typeof e.data === 'string' ? e.data : null;
      const bytes = text !== null ? new TextEncoder().encode(text) : new Uint8Array(e.data);
      const rec = { kind: text !== null ? 'text' : 'binary', size: bytes.length, sha256: null, text };
      st.received.push(rec);
      sha256Hex(bytes).then((h) => { rec.sha256 = h; });
    });
  }
  async function start(o) {
    const me = o.role;
    const other = me === 'offerer' ? 'answerer' : 'offerer';
    const base = '/signal/' + encodeURIComponent(o.room) + '/';
    pc = new RTCPeerConnection({ iceServers: o.iceServers, iceTransportPolicy: 'relay' });
    pc.addEventListener('iceconnectionstatechange', () => { st.ice.push(pc.iceConnectionState); note('ice ' + pc.iceConnectionState); });
    pc.addEventListener('connectionstatechange', () => { st.conn.push(pc.connectionState); note('connection ' + pc.connectionState); });
    pc.addEventListener('icecandidateerror', (e) => note('icecandidateerror ' + e.errorCode + ' ' + e.errorText));
    const post = async (msg) => {
      const r = await fetch(base + encodeURIComponent(other), { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(msg) });
      if (!r.ok) throw new Error('signalling POST ' + r.status);
    };
    const recvSdp = async () => {
      for (;;) {
        const r = await fetch(base + encodeURIComponent(me));
        if (!r.ok) throw new Error('signalling GET ' + r.status);
        for (const m of await r.json()) if (m && m.sdp) return m.sdp;
      }
    };
    const gathered = () => new Promise((resolve) => {
      if (pc.iceGatheringState === 'complete') return resolve();
      pc.addEventListener('icegatheringstatechange', () => { if (pc.iceGatheringState === 'complete') resolve(); });
    });
    try {
      if (me === 'offerer') {
        wire(pc.createDataChannel('e2e', { ordered: true }));
        await pc.setLocalDescription();
        await gathered();
        await post({ sdp: pc.localDescription.toJSON() });
        note('offer sent');
        await pc.setRemoteDescription(await recvSdp());
        note('answer set');
      } else {
        pc.addEventListener('datachannel', (e) => wire(e.channel));
        await pc.setRemoteDescription(await recvSdp());
        await pc.setLocalDescription();
        await gathered();
        await post({ sdp: pc.localDescription.toJSON() });
        note('answer sent');
      }
    } catch (e) {
      st.error = String(e && e.message ? e.message : e);
      note('error ' + st.error);
    }
  }
  function send(texts, binariesB64) {
    if (!dc || dc.readyState !== 'open') return false;
    for (const t of texts || []) dc.send(t);
    for (const b of binariesB64 || []) dc.send(b64ToBytes(b));
    return true;
  }
  function state() {
    return {
      ...st,
      iceState: pc ? pc.iceConnectionState : null,
      connState: pc ? pc.connectionState : null,
      dcState: dc ? dc.readyState : null,
      bufferedAmount: dc ? dc.bufferedAmount : 0,
    };
  }
  function close() { if (pc) pc.close(); }
  window.escrowE2E = { start, send, state, close };
})();
`;

export interface BrowserPeerState {
  log: string[];
  received: Array<{ kind: 'text' | 'binary'; size: number; sha256: string | null; text: string | null }>;
  ice: string[];
  conn: string[];
  dcOpened: boolean;
  dcClosed: boolean;
  error: string | null;
  iceState: string | null;
  connState: string | null;
  dcState: string | null;
  bufferedAmount: number;
}

export interface BrowserPeer {
  readonly page: Page;
  /** Starts the offer/answer; resolves once this side's description was sent. */
  start(o: { role: 'offerer' | 'answerer'; room: string; iceServers: IceServer[] }): Promise<void>;
  /** Sends on the data channel; false when it is not open. */
  send(texts: string[], binaries?: Buffer[]): Promise<boolean>;
  state(): Promise<BrowserPeerState>;
  close(): Promise<void>;
}

/** A page of the page server with the escrow peer script loaded. */
export async function openBrowserPeer(tb: TestBrowser, pages: PageServer, label: string): Promise<BrowserPeer> {
  const page = await tb.newPage(label);
  await page.goto(pages.url('/turn-call.html'));
  await page.addScriptTag({ content: PEER_JS });
  await page.waitForFunction('window.escrowE2E !== undefined', undefined, { timeout: 30_000 });
  return {
    page,
    start: async (o) => {
      await page.evaluate(`window.escrowE2E.start(${JSON.stringify(o)})`);
    },
    send: async (texts, binaries = []) =>
      (await page.evaluate(
        `window.escrowE2E.send(${JSON.stringify(texts)}, ${JSON.stringify(binaries.map((b) => b.toString('base64')))})`,
      )) as boolean,
    state: async () => (await page.evaluate('window.escrowE2E.state()')) as BrowserPeerState,
    close: async () => {
      await page.evaluate('window.escrowE2E.close()').catch(() => {});
      await page
        .context()
        .close()
        .catch(() => {});
    },
  };
}
