/** Helpers for the TURN key escrow tests (not a test file). */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { ManualClock } from '../../../src/util/clock.js';
import { MemoryEventSink } from '../../../src/events/eve.js';
import { loadOrCreateIdentity, type GatewayIdentity } from '../../../src/store/identity.js';
import { PolicyEngine } from '../../../src/policy/engine.js';
import { parseRuleFile } from '../../../src/policy/rules-schema.js';
import { GatewayInspector } from '../../../src/gateway/inspector.js';
import { Attr, Class, Method, getXorAddress, type StunWriter } from '../../../src/wire/stun.js';
import { ATTR_WRITE_KEYS, sealWriteKeys, turnWriteKeysKey } from '../../../src/wire/escrow.js';
import { encodeKeySet, type KeySet } from '../../../src/wire/keyset.js';
import { buildChannelData, parseChannelData } from '../../../src/wire/channeldata.js';
import { Client, errCode, peerSocket, startServer, type Harness } from '../turn/helpers.js';

let identityP: Promise<GatewayIdentity> | null = null;
/** One gateway identity per test process, made in a temp dir that is removed at once. */
export function testIdentity(): Promise<GatewayIdentity> {
  identityP ??= (async () => {
    const dir = mkdtempSync(join(tmpdir(), 'gatehouse-escrow-'));
    try {
      return (await loadOrCreateIdentity(dir, { cert: null, key: null }, 'gatehouse-test')).identity;
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  })();
  return identityP;
}

export const KEYS_RULES = 'keys:\n  required: true\n  deadline: 10s\n  unverified: hold\n  block_for: 5m\n';

export interface EscrowRig {
  h: Harness;
  clock: ManualClock;
  events: MemoryEventSink;
  identity: GatewayIdentity;
  inspector: GatewayInspector;
  c: Client;
  relayPort: number;
  peer: Awaited<ReturnType<typeof peerSocket>>;
  close(): Promise<void>;
}

export async function escrowRig(rules = KEYS_RULES): Promise<EscrowRig> {
  const clock = new ManualClock();
  const events = new MemoryEventSink();
  const identity = await testIdentity();
  const engine = new PolicyEngine([parseRuleFile(rules, 'test.yaml')]);
  const inspector = new GatewayInspector({ policy: () => engine, identity, events, clock });
  const h = await startServer(undefined, { clock, events, flowHooks: inspector, extensions: [inspector.extension] });
  inspector.attach(h.server);
  const c = await Client.udp(h.udpPort);
  const r = await c.authed(Method.Allocate, (w) => void w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0])));
  if (r.cls !== Class.Success) throw new Error(`allocate failed ${errCode(r)}`);
  const relayPort = getXorAddress(r, Attr.XorRelayedAddress)!.port;
  const peer = await peerSocket();
  return {
    h,
    clock,
    events,
    identity,
    inspector,
    c,
    relayPort,
    peer,
    close: async () => {
      c.close();
      peer.close();
      await h.close();
    },
  };
}

/** Adds WRITE-KEYS attributes for `sets`, sealed for this client's key and nonce and the request's tid. */
export function writeKeys(
  c: Client,
  tid: Buffer,
  sets: KeySet[],
  mangle?: (v: Buffer) => Buffer,
  nonceForKey?: string,
): (w: StunWriter) => void {
  return (w) => {
    const key = turnWriteKeysKey(c.key('md5'), Buffer.from(nonceForKey ?? c.nonce ?? '', 'utf8'));
    const aad = Buffer.concat([Buffer.from([0x21, 0x12, 0xa4, 0x42]), tid]);
    for (const ks of sets) {
      const v = sealWriteKeys(key, aad, encodeKeySet(ks));
      w.attr(ATTR_WRITE_KEYS, mangle ? mangle(v) : v);
    }
  };
}

export const bindAttrs = (ch: number, port: number) => (w: StunWriter) =>
  void w.attr(Attr.ChannelNumber, Buffer.from([ch >> 8, ch & 255, 0, 0])).xorAddress(Attr.XorPeerAddress, '127.0.0.1', port);

export const both =
  (...fs: ((w: StunWriter) => void)[]) =>
  (w: StunWriter) => {
    for (const f of fs) f(w);
  };

/**
 * A marker datagram to fence what arrived before it: a STUN Binding indication (RFC 8489
 * §5: type 0x0011, length 0, magic cookie, random transaction ID), which the guard always
 * passes between peers (ICE keepalive, RFC 8445 §11).
 */
export function marker(): Buffer {
  const b = Buffer.alloc(20);
  b.writeUInt16BE(0x0011, 0);
  b.writeUInt32BE(0x2112a442, 4);
  randomBytes(12).copy(b, 8);
  return b;
}

/**
 * Sends one datagram through the relay (c2p as ChannelData on `ch`, p2c from the peer
 * socket) followed by a marker, and returns what the other side received before the
 * marker (so a held datagram shows as "nothing arrived").
 */
export async function relayOne(rig: EscrowRig, ch: number, dir: 'c2p' | 'p2c', data: Buffer): Promise<Buffer[]> {
  const m = marker();
  if (dir === 'c2p') {
    rig.c.sendRaw(buildChannelData(ch, data));
    rig.c.sendRaw(buildChannelData(ch, m));
    const got: Buffer[] = [];
    for (;;) {
      const x = await rig.peer.next(5000);
      if (x.msg.equals(m)) return got;
      got.push(x.msg);
    }
  }
  rig.peer.sock.send(data, rig.relayPort, '127.0.0.1');
  rig.peer.sock.send(m, rig.relayPort, '127.0.0.1');
  return drainClientUntil(rig, m);
}

/** Client-side ChannelData payloads received up to `m` (exclusive). */
export async function drainClientUntil(rig: EscrowRig, m: Buffer): Promise<Buffer[]> {
  const isM = (b: Buffer): boolean => !!parseChannelData(b)?.data.equals(m);
  await rig.c.next(isM, 5000);
  const got: Buffer[] = [];
  while (rig.c.inbox.length) {
    const b = rig.c.inbox.shift()!;
    const cd = parseChannelData(b);
    if (cd) got.push(Buffer.from(cd.data));
  }
  return got;
}

/** Waits until the peer got `n` more datagrams (released ones); marker-fenced from the client side. */
export async function peerReceivedAfterFence(rig: EscrowRig, ch: number): Promise<Buffer[]> {
  const m = marker();
  rig.c.sendRaw(buildChannelData(ch, m));
  const got: Buffer[] = [];
  for (;;) {
    const x = await rig.peer.next(5000);
    if (x.msg.equals(m)) return got;
    got.push(x.msg);
  }
}

export async function clientReceivedAfterFence(rig: EscrowRig): Promise<Buffer[]> {
  const m = marker();
  rig.peer.sock.send(m, rig.relayPort, '127.0.0.1');
  return drainClientUntil(rig, m);
}
