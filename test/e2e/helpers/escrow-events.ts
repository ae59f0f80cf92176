// Helpers for the key-escrow end-to-end scenarios against a spawned `gatehouse serve`:
// the gateway's EVE events (DATA_DIR/events.jsonl and GET /v1/events), the gateway
// certificate the endpoint agent pins, and small waiting utilities.
import { createHash, X509Certificate } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Socket as DgramSocket } from 'node:dgram';
import { GatewayTrust } from '../../../src/endpoint/trust.js';

/** One EVE event as the gateway writes it (only the fields the scenarios read are typed). */
export interface GwEvent {
  event_type: string;
  flow_id?: number;
  src_ip?: string;
  dest_ip?: string;
  gatehouse?: { reason?: string; association?: string; direction?: string; allocation?: string; [k: string]: unknown };
  datachannel?: { stream: number; label: string; ppid: number; size: number; sha256: string };
  file?: { stream: number; label: string; size: number; sha256: string; file_type: string };
  rtp?: { ssrc: number; payload_type: number; codec: string; kind: string };
  undecryptable?: { what: string; reason: string; count: number };
  [k: string]: unknown;
}

/** Every event in DATA_DIR/events.jsonl (a partly written last line is skipped). */
export function readEvents(dataDir: string): GwEvent[] {
  const file = join(dataDir, 'events.jsonl');
  if (!existsSync(file)) return [];
  const out: GwEvent[] = [];
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    try {
      out.push(JSON.parse(line) as GwEvent);
    } catch {
      /* the line being written */
    }
  }
  return out;
}

/** GET /v1/events?event_type=T with the admin token. */
export async function fetchEvents(adminUrl: string, token: string, eventType?: string): Promise<GwEvent[]> {
  const q = new URLSearchParams({ limit: '10000', ...(eventType ? { event_type: eventType } : {}) });
  const r = await fetch(`${adminUrl}/v1/events?${q}`, { headers: { authorization: `Bearer ${token}` } });
  if (!r.ok) throw new Error(`GET /v1/events: HTTP ${r.status}`);
  return (await r.json()) as GwEvent[];
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls cond every 100 ms; throws with `what` and diag() after ms. */
export async function until(cond: () => boolean | Promise<boolean>, ms: number, what: string, diag?: () => string): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timeout after ${ms} ms: ${what}${diag ? `\n${diag()}` : ''}`);
    await sleep(100);
  }
}

/** Waits until events.jsonl holds an event matching pred; returns all events then. */
export async function waitEvent(dataDir: string, pred: (e: GwEvent) => boolean, ms: number, what: string): Promise<GwEvent[]> {
  let evs: GwEvent[] = [];
  await until(
    () => (evs = readEvents(dataDir)).some(pred),
    ms,
    what,
    () => `events so far: ${evs.map((e) => `${e.event_type}${e.gatehouse?.reason ? `(${e.gatehouse.reason})` : ''}`).join(', ')}`,
  );
  return evs;
}

export function sha256Hex(b: Buffer | string): string {
  return createHash('sha256').update(b).digest('hex');
}

/**
 * The gateway certificate from the open admin endpoint and a GatewayTrust pinning its
 * SHA-256 (the operator would read the fingerprint from `gatehouse serve`'s log).
 */
export async function pinGateway(adminUrl: string): Promise<{ url: string; pem: string; fingerprint: string; trust: GatewayTrust }> {
  const url = `${adminUrl}/v1/gateway/certificate`;
  const r = await fetch(url);
  if (!r.ok) throw new Error(`GET ${url}: HTTP ${r.status}`);
  const pem = await r.text();
  const fingerprint = createHash('sha256').update(new X509Certificate(pem).raw).digest('hex');
  return { url, pem, fingerprint, trust: new GatewayTrust({ pinnedFingerprints: [fingerprint] }) };
}

/**
 * Closes every UDP socket still open in this (test) process. werift 0.24 gathers one
 * ICE transport per m-line before BUNDLE is negotiated and never closes the unused
 * one's TURN socket, which would keep the test process alive after pc.close(). Call it
 * after every peer connection of the test was closed; the Gatehouse under test is a
 * separate process and unaffected.
 */
export function closeLeftoverUdpSockets(): number {
  let n = 0;
  const handles = (process as unknown as { _getActiveHandles(): unknown[] })._getActiveHandles();
  for (const h of handles) {
    if (h instanceof DgramSocket) {
      try {
        h.close();
        n++;
      } catch {
        /* already closing */
      }
    }
  }
  return n;
}
