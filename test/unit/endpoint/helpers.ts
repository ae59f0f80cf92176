/**
 * Test helpers for the endpoint agent: a gateway identity, a stub gateway-side escrow
 * extension for TurnServer (emits signed KEY-REQUEST, opens WRITE-KEYS with
 * src/wire/escrow.ts, answers KEY-STATUS), and werift peer plumbing.
 * The stub stands in for src/gateway/escrow.ts until that lands.
 */
import { createHash, createPrivateKey, X509Certificate, type KeyObject } from 'node:crypto';
import { RTCPeerConnection } from 'werift';
import { createSelfSigned } from '../../../src/store/identity.js';
import { Attr, Method, getAttr, getAttrs, getXorAddresses } from '../../../src/wire/stun.js';
import {
  ATTR_KEY_DECLINE,
  ATTR_KEY_REQUEST,
  ATTR_KEY_STATUS,
  ATTR_WRITE_KEYS,
  decodeKeyDecline,
  encodeKeyRequest,
  encodeKeyStatus,
  openWriteKeys,
  turnWriteKeysAad,
  turnWriteKeysKey,
} from '../../../src/wire/escrow.js';
import { decodeKeySet, type KeySet } from '../../../src/wire/keyset.js';
import { TurnServer, type FlowHooks, type TurnRequestExtension } from '../../../src/turn/server.js';
import type { EventSink } from '../../../src/events/eve.js';
import { defaultConfig } from '../../../src/config/config.js';
import { createEscrowPeerConnection, type EscrowAgent, type EscrowAgentOptions } from '../../../src/endpoint/agent.js';

export interface TestGateway {
  keyPem: string;
  certPem: string;
  privateKey: KeyObject;
  fingerprint: Buffer;
}

export async function makeGateway(cn = 'gatehouse test gateway'): Promise<TestGateway> {
  const { keyPem, certPem } = await createSelfSigned(cn);
  const cert = new X509Certificate(certPem);
  return { keyPem, certPem, privateKey: createPrivateKey(keyPem), fingerprint: createHash('sha256').update(cert.raw).digest() };
}

export interface StubLog {
  keyRequests: Array<{ method: number; peers: string[] }>;
  writeKeys: Array<{ method: number; peers: string[]; keySets: KeySet[]; nonce: string }>;
  declines: Array<{ method: number; peers: string[]; reason: string | null }>;
  bad: number;
}

/** Gateway side stub of key-escrow.md §2 for TurnServer's `extensions` option. */
export function stubEscrowExtension(
  gw: TestGateway,
  opts: { deadline?: number; flags?: number } = {},
): { ext: TurnRequestExtension; log: StubLog } {
  const log: StubLog = { keyRequests: [], writeKeys: [], declines: [], bad: 0 };
  const ext: TurnRequestExtension = {
    onRequest(ctx) {
      const peers = (getXorAddresses(ctx.msg, Attr.XorPeerAddress) ?? []).map((p) => `${p.address}:${p.port}`);
      const wk = getAttrs(ctx.msg, ATTR_WRITE_KEYS);
      const attrs: { type: number; value: Buffer }[] = [];
      if (wk.length) {
        const nonce = getAttr(ctx.msg, Attr.Nonce)!;
        const key = turnWriteKeysKey(ctx.key, nonce);
        const aad = turnWriteKeysAad(ctx.msg.raw);
        const sets: KeySet[] = [];
        for (const v of wk) {
          const r = openWriteKeys(key, aad, v);
          if (!r.ok) {
            log.bad++;
            return { error: { code: 400, reason: 'Invalid WRITE-KEYS' } };
          }
          try {
            sets.push(decodeKeySet(r.keySet));
          } catch {
            log.bad++;
            return { error: { code: 400, reason: 'Invalid WRITE-KEYS' } };
          }
          attrs.push({ type: ATTR_KEY_STATUS, value: encodeKeyStatus(0) });
        }
        log.writeKeys.push({ method: ctx.method, peers, keySets: sets, nonce: nonce.toString('utf8') });
      }
      const kd = getAttr(ctx.msg, ATTR_KEY_DECLINE);
      if (kd) log.declines.push({ method: ctx.method, peers, reason: decodeKeyDecline(kd) });
      if (!wk.length && !kd) {
        attrs.push({
          type: ATTR_KEY_REQUEST,
          value: encodeKeyRequest(
            'turn',
            ctx.transactionId,
            { deadline: opts.deadline ?? 10, flags: opts.flags ?? 0x0003, fingerprint: gw.fingerprint },
            gw.privateKey,
          ),
        });
        log.keyRequests.push({ method: ctx.method, peers });
      }
      return { attrs };
    },
  };
  return { ext, log };
}

export const METHOD_CHANNEL_BIND = Method.ChannelBind;

export function plainPeer(): RTCPeerConnection {
  return new RTCPeerConnection({
    iceServers: [],
    iceUseIpv6: false,
    iceInterfaceAddresses: { udp4: '127.0.0.1' },
    iceAdditionalHostAddresses: ['127.0.0.1'],
  });
}

export async function gathered(pc: RTCPeerConnection): Promise<void> {
  if (pc.iceGatheringState === 'complete') return;
  await new Promise<void>((resolve) => {
    const sub = pc.iceGatheringStateChange.subscribe((s) => {
      if (s === 'complete') {
        sub.unSubscribe();
        resolve();
      }
    });
  });
}

export function onlyLoopback(sdp: string): string {
  return sdp
    .split('\r\n')
    .filter((l) => !l.startsWith('a=candidate:') || l.includes(' 127.0.0.1 '))
    .join('\r\n');
}

/** Offer/answer between two werift peers in-process. */
export async function connectPeers(offerer: RTCPeerConnection, answerer: RTCPeerConnection): Promise<void> {
  await offerer.setLocalDescription(await offerer.createOffer());
  await gathered(offerer);
  await answerer.setRemoteDescription({ type: 'offer', sdp: onlyLoopback(offerer.localDescription!.sdp) });
  await answerer.setLocalDescription(await answerer.createAnswer());
  await gathered(answerer);
  await offerer.setRemoteDescription({ type: 'answer', sdp: onlyLoopback(answerer.localDescription!.sdp) });
}

export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, rej) => {
      timer = setTimeout(() => rej(new Error(`timeout: ${what}`)), ms);
    }),
  ]);
}

export async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timeout: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export interface EscrowCall {
  server: TurnServer;
  port: number;
  log: StubLog;
  pc: RTCPeerConnection;
  agent: EscrowAgent;
  peer: RTCPeerConnection;
  /** Resolves once a message crossed the relay (agent → peer). */
  exchange(): Promise<void>;
  close(): Promise<void>;
}

/**
 * An in-process TurnServer for user alice / password secret on UDP 127.0.0.1 (a free
 * port), relaying from relayPorts on 127.0.0.1 to loopback peers.
 */
export async function startTestTurn(o: {
  relayPorts: [number, number];
  extensions: TurnRequestExtension[];
  flowHooks?: FlowHooks;
  events?: EventSink;
  dataDir?: string;
}): Promise<{ server: TurnServer; port: number }> {
  const cfg = defaultConfig();
  cfg.turn.listen = ['udp://127.0.0.1:0'];
  cfg.turn.relay_address = '127.0.0.1';
  cfg.turn.relay_ports = o.relayPorts;
  cfg.turn.peers.allow = ['127.0.0.0/8'];
  cfg.data_dir = o.dataDir ?? '/nonexistent';
  const server = new TurnServer({
    config: cfg,
    users: { lookup: (n) => (n === 'alice' ? { name: 'alice', password: 'secret', groups: [] } : undefined) },
    extensions: o.extensions,
    ...(o.flowHooks ? { flowHooks: o.flowHooks } : {}),
    ...(o.events ? { events: o.events } : {}),
  });
  await server.start();
  return { server, port: server.addresses().find((a) => a.proto === 'udp')!.port };
}

/** In-process TurnServer (UDP 127.0.0.1:0, peers 127.0.0.0/8) with the stub escrow extension; agent ↔ plain werift peer. */
export async function escrowCall(
  gw: TestGateway,
  agentOpts: Pick<EscrowAgentOptions, 'trust' | 'consent' | 'gatewayCertificate'> & Partial<EscrowAgentOptions>,
): Promise<EscrowCall> {
  const { ext, log } = stubEscrowExtension(gw, { deadline: 5, flags: 0x0007 });
  const { server, port } = await startTestTurn({ relayPorts: [47000, 47999], extensions: [ext] });
  const { pc, agent } = createEscrowPeerConnection({
    turnUrl: `turn:127.0.0.1:${port}`,
    username: 'alice',
    password: 'secret',
    pcConfig: { iceUseIpv6: false, iceInterfaceAddresses: { udp4: '127.0.0.1' } },
    ...agentOpts,
  });
  const peer = plainPeer();
  const dc = pc.createDataChannel('chat');
  const got: string[] = [];
  peer.onDataChannel.subscribe((c) => c.onMessage.subscribe((m) => got.push(m.toString())));
  return {
    server,
    port,
    log,
    pc,
    agent,
    peer,
    async exchange() {
      await withTimeout(connectPeers(pc, peer), 60_000, 'connect');
      await withTimeout(
        new Promise<void>((r) => (dc.readyState === 'open' ? r() : dc.stateChanged.subscribe((s) => s === 'open' && r()))),
        60_000,
        'open',
      );
      dc.send('ping');
      await until(() => got.length > 0, 30_000, 'message at peer');
    },
    async close() {
      agent.close();
      await Promise.allSettled([pc.close(), peer.close()]);
      await server.stop();
    },
  };
}
