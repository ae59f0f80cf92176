// Browser calls through a TURN server, driven from Node: payload generation and the
// two call shapes of pages/turn-call.js (one page with both peers, or two pages in
// separate browser contexts signalling through the page server).
import { createHash, randomBytes } from 'node:crypto';
import type { Page } from 'playwright-core';
import type { TestBrowser } from './browser.js';
import type { PageServer } from './page-server.js';
import type { IceServer } from './turn-servers.js';

export interface CandidateInfo {
  candidateType: string;
  protocol: string;
  relayProtocol: string | null;
  address: string | null;
  port: number;
  url: string | null;
}

export interface PairInfo {
  state: string;
  nominated: boolean | null;
  bytesSent: number | null;
  bytesReceived: number | null;
  local: CandidateInfo | null;
  remote: CandidateInfo | null;
}

export interface MediaInfo {
  video: {
    packetsReceived: number;
    bytesReceived: number;
    framesReceived: number;
    framesDecoded: number;
    frameWidth: number | null;
    frameHeight: number | null;
  } | null;
  audio: { packetsReceived: number; bytesReceived: number; totalSamplesReceived: number } | null;
}

export interface PeerResult {
  role: 'offerer' | 'answerer';
  gathered: Array<{
    type: string | null;
    protocol: string | null;
    address: string | null;
    port: number | null;
    relayProtocol: string | null;
    url: string | null;
  }>;
  events: Array<{ at: number; what: string }>;
  received: { texts: string[]; binaries: Array<{ length: number; sha256: string }> };
  /** Offerer only: what the answerer reported receiving. */
  ack: { texts: number; binaries: Array<{ length: number; sha256: string }> } | null;
  media: MediaInfo | null;
  pair: PairInfo | null;
  error: string | null;
  final: Record<string, unknown>;
}

export interface CallResult {
  offerer: PeerResult;
  answerer: PeerResult;
}

export interface CallPayload {
  texts: string[];
  binary: Buffer;
  binarySha256: string;
}

/**
 * Text messages of varied length and script (ASCII, accents, CJK, emoji, empty-ish)
 * and one binary message of `binarySize` random bytes, with its SHA-256.
 */
export function makePayload(textCount = 40, binarySize = 220_000): CallPayload {
  const alphabet = ['a', 'Z', '0', ' ', 'é', 'ß', '中', '文', '🙂', '\n', '{', '"'];
  const texts: string[] = [];
  for (let i = 0; i < textCount; i++) {
    const r = randomBytes(2 + (i % 7) * 40);
    let s = `msg-${i}:`;
    for (const b of r) s += alphabet[b % alphabet.length];
    texts.push(s);
  }
  // One longer text message, well above a single SCTP chunk at common MTUs.
  texts.push(`long:${'0123456789abcdef'.repeat(1024)}`);
  const binary = randomBytes(binarySize);
  return { texts, binary, binarySha256: createHash('sha256').update(binary).digest('hex') };
}

export interface CallOptions {
  iceServers: IceServer[];
  payload: CallPayload;
  /** Per-step timeout inside the page, ms (default 60 000). */
  stepTimeoutMs?: number;
  media?: boolean;
  /** Decoded video frames (and audio packets) to wait for (default 5). */
  minFrames?: number;
}

async function openCallPage(tb: TestBrowser, server: PageServer, label: string): Promise<Page> {
  const page = await tb.newPage(label);
  await page.goto(server.url('/turn-call.html'));
  await page.waitForFunction(() => (window as any).gatehouseE2E?.ready === true, undefined, { timeout: 30_000 });
  return page;
}

/** Both peers in one page; the page is closed afterwards. */
export async function runLoopbackCall(tb: TestBrowser, server: PageServer, opts: CallOptions): Promise<CallResult> {
  const page = await openCallPage(tb, server, 'loopback');
  try {
    return (await page.evaluate((o) => (window as any).gatehouseE2E.runLoopbackCall(o), {
      iceServers: opts.iceServers,
      texts: opts.payload.texts,
      binaryB64: opts.payload.binary.toString('base64'),
      timeoutMs: opts.stepTimeoutMs ?? 60_000,
      media: opts.media ?? true,
      minFrames: opts.minFrames ?? 5,
    })) as CallResult;
  } finally {
    await page
      .context()
      .close()
      .catch(() => {});
  }
}

let roomSeq = 0;

/** Offerer and answerer in two pages of separate browser contexts, signalling over HTTP. */
export async function runTwoPageCall(
  tb: TestBrowser,
  server: PageServer,
  opts: CallOptions & { answererIceServers?: IceServer[] },
): Promise<CallResult> {
  const room = `room-${process.pid}-${++roomSeq}`;
  const [pa, pb] = await Promise.all([openCallPage(tb, server, 'offerer'), openCallPage(tb, server, 'answerer')]);
  try {
    const common = { room, timeoutMs: opts.stepTimeoutMs ?? 60_000, media: opts.media ?? true, minFrames: opts.minFrames ?? 5 };
    const [offerer, answerer] = await Promise.all([
      pa.evaluate((o) => (window as any).gatehouseE2E.runPeer(o), {
        ...common,
        role: 'offerer',
        iceServers: opts.iceServers,
        texts: opts.payload.texts,
        binaryB64: opts.payload.binary.toString('base64'),
      }) as Promise<PeerResult>,
      pb.evaluate((o) => (window as any).gatehouseE2E.runPeer(o), {
        ...common,
        role: 'answerer',
        iceServers: opts.answererIceServers ?? opts.iceServers,
      }) as Promise<PeerResult>,
    ]);
    return { offerer, answerer };
  } finally {
    await pa
      .context()
      .close()
      .catch(() => {});
    await pb
      .context()
      .close()
      .catch(() => {});
  }
}
