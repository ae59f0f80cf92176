/**
 * RFC 7652 PCP authentication, server side: the PA state machine per PCP client and the
 * PCP security associations, behind the PcpAuthHook seam of hooks.ts.
 *
 *   PA-Initiation (client, result INITIATION, Session ID 0)            RFC 7652 §4.1
 *   → PA-Server AUTHENTICATION_REQUEST: new Session ID, NONCE (§5.3), the PRFs (§5.7) and
 *     MAC algorithms (§5.8) supported, EAP_PAYLOAD (§5.6) = EAP Request/Identity
 *   ← PA-Client AUTHENTICATION_REPLY: EAP_PAYLOAD, RECEIVED_PAK (§5.10); the first one echoes
 *     the NONCE and names one PRF and one MAC algorithm
 *   … EAP round trips (the backend: built-in EAP-TLS or RADIUS pass-through) …
 *   → PA-Server AUTHENTICATION_SUCCEEDED: EAP-Success, SESSION_LIFETIME (§5.9) and
 *     PA_AUTHENTICATION_TAG (§5.5) under the new transport key; the SA exists from here
 *   ← PA-Client AUTHENTICATION_SUCCEEDED with PA_AUTHENTICATION_TAG (acknowledgement)
 *   or → PA-Server AUTHENTICATION_FAILED with EAP-Failure.
 *
 * Sequence numbers of PA messages: each side numbers its PA messages; a PA-Client with the
 * last sequence number seen is a retransmission and gets the last PA-Server again, anything
 * else out of order is discarded. Common messages: AUTHENTICATION_TAG (§5.4) carries its own
 * sequence numbers, one counter per direction; a tag whose sequence number is not above the
 * last accepted, or whose MAC does not verify, is silently discarded.
 *
 * Transport key (RFC 7652 key derivation, see wire/pcp-auth.ts deriveTransportKey): MK = prf(MSK, "IETF PCP" || Session ID || Nonce || key ID).
 *
 * Bounded: at most maxSessions PA sessions in progress (a new one past that is refused with
 * NO_RESOURCES), at most maxSas SAs (the oldest-expiring is dropped), each session has a
 * deadline. Backend exceptions end the session with AUTHENTICATION_FAILED, never the process.
 * No key, MSK or EAP payload is ever logged.
 */
import { randomBytes, randomInt } from 'node:crypto';
import type { PcpAddress, PcpAuthCheck, PcpAuthHook, PcpOption, PcpSecurityAssociation } from '../hooks.js';
import {
  MacAlg,
  PcpAuthOption,
  PcpAuthResult,
  PcpResult,
  Prf,
  appendAuthTag,
  appendPaAuthTag,
  decodePaMessage,
  deriveTransportKey,
  encodePaMessage,
  findOption,
  macLength,
  optionU32,
  parseAuthTag,
  prfHash,
  readPaAuthTagKeyId,
  u32,
  verifyAuthTag,
  verifyPaAuthTag,
  type PaMessage,
} from '../../wire/pcp-auth.js';
import type { EapBackend, EapSession } from './backend.js';

export interface PaServerOptions {
  backend: EapBackend;
  /** PA (and SA) lifetime in seconds, sent as SESSION_LIFETIME (default 3600). */
  lifetime?: number;
  /** PA sessions in progress at once (default 256). */
  maxSessions?: number;
  /** SAs held at once (default 4096). */
  maxSas?: number;
  /** Seconds a PA session may take from PA-Initiation to completion (default 60). */
  sessionTimeout?: number;
  /** Common requests need an SA (pcp.auth.required); a function decides per client. */
  required?: boolean | ((client: PcpAddress) => boolean);
  /** RFC 6887 §8.5 epoch of the PCP server (seconds); default: seconds since this object was made. */
  epoch?: () => number;
  now?: () => number;
  /** Supported algorithms, in preference order (defaults: all of RFC 7652 §5.7/§5.8 named in wire/pcp-auth.ts). */
  prfs?: number[];
  macs?: number[];
  /** Called on PA outcomes (no secrets): for events and metrics. */
  onEvent?: (e: {
    kind: 'succeeded' | 'failed' | 'terminated' | 'expired';
    client: PcpAddress;
    sessionId: number;
    identity?: string;
    reason?: string;
  }) => void;
}

interface PaSession {
  sessionId: number;
  client: PcpAddress;
  nonce: Buffer;
  prf: number;
  mac: number;
  negotiated: boolean;
  serverSeq: number;
  clientSeq: number;
  lastReply: Buffer | null;
  eap: EapSession;
  busy: boolean;
  deadline: number;
}

interface Sa extends PcpSecurityAssociation {
  client: PcpAddress;
  keyId: number;
  mac: number;
  inSeq: number;
  outSeq: number;
}

const key = (c: PcpAddress) => `${c.address}|${c.port}`;

export class PcpAuthServer implements PcpAuthHook {
  private readonly sessions = new Map<number, PaSession>();
  /** SAs by Session ID, and the current SA of each client address|port. */
  private readonly sas = new Map<number, Sa>();
  private readonly byClient = new Map<string, number>();
  private readonly started: number;
  private nextKeyId = randomInt(1, 0x7fffffff);
  readonly stats = { initiations: 0, succeeded: 0, failed: 0, refused: 0, discarded: 0 };

  constructor(private readonly o: PaServerOptions) {
    this.started = this.now();
  }

  private now(): number {
    return (this.o.now ?? Date.now)();
  }

  private epoch(): number {
    return this.o.epoch ? this.o.epoch() : Math.floor((this.now() - this.started) / 1000);
  }

  private get prfs(): number[] {
    return (this.o.prfs ?? [Prf.HMAC_SHA2_256, Prf.HMAC_SHA1]).filter((p) => prfHash(p));
  }

  private get macs(): number[] {
    return (this.o.macs ?? [MacAlg.HMAC_SHA2_256_128, MacAlg.HMAC_SHA1_96]).filter((m) => macLength(m));
  }

  required(client: PcpAddress): boolean {
    const r = this.o.required ?? false;
    return typeof r === 'function' ? r(client) : r;
  }

  /** Number of PA sessions in progress and SAs held (for metrics and tests). */
  get counts(): { sessions: number; sas: number } {
    this.sweep();
    return { sessions: this.sessions.size, sas: this.sas.size };
  }

  /** The SA of a client (address|port), if any and unexpired. */
  saFor(client: PcpAddress): PcpSecurityAssociation | null {
    const id = this.byClient.get(key(client));
    const sa = id === undefined ? undefined : this.sas.get(id);
    return sa && sa.expiresAt > this.now() ? sa : null;
  }

  private sweep(): void {
    const now = this.now();
    for (const [id, s] of this.sessions) {
      if (s.deadline <= now) {
        s.eap.close();
        this.sessions.delete(id);
      }
    }
    for (const [id, sa] of this.sas) {
      if (sa.expiresAt <= now) this.dropSa(id, 'expired');
    }
  }

  private dropSa(id: number, why: 'expired' | 'terminated' | 'replaced' | 'evicted'): void {
    const sa = this.sas.get(id);
    if (!sa) return;
    this.sas.delete(id);
    if (this.byClient.get(key(sa.client)) === id) this.byClient.delete(key(sa.client));
    sa.transportKey.fill(0);
    if (why === 'expired' || why === 'terminated') this.o.onEvent?.({ kind: why, client: sa.client, sessionId: id, identity: sa.identity });
  }

  private reply(
    s: PaSession | null,
    client: PcpAddress,
    resultCode: number,
    sessionId: number,
    options: { code: number; data: Buffer }[],
    tagKey?: { keyId: number; mac: number; key: Buffer },
  ): Buffer {
    const seq = s ? ++s.serverSeq : 0;
    let msg = encodePaMessage({
      response: true,
      resultCode,
      lifetime: resultCode === PcpAuthResult.AUTHENTICATION_SUCCEEDED ? (this.o.lifetime ?? 3600) : 0,
      epoch: this.epoch(),
      clientIp: Buffer.alloc(16),
      sessionId,
      sequence: seq,
      options,
    });
    if (tagKey) msg = appendPaAuthTag(msg, tagKey);
    if (s) s.lastReply = msg;
    void client;
    return msg;
  }

  async onAuthentication(client: PcpAddress, raw: Buffer): Promise<Buffer[]> {
    this.sweep();
    const m = decodePaMessage(raw);
    // RFC 6887 §8.3: a request the server cannot parse gets MALFORMED_REQUEST; responses are dropped.
    if (!m) return [this.reply(null, client, PcpResult.MALFORMED_REQUEST, 0, [])];
    if (m.response) return [];
    switch (m.resultCode) {
      case PcpAuthResult.INITIATION:
        return this.initiate(client);
      case PcpAuthResult.AUTHENTICATION_REPLY:
        return this.continue(client, m);
      case PcpAuthResult.AUTHENTICATION_SUCCEEDED:
        return this.acknowledged(client, m);
      case PcpAuthResult.SESSION_TERMINATED:
        return this.terminate(client, m);
      default:
        this.stats.discarded++;
        return [];
    }
  }

  private newSessionId(): number {
    for (;;) {
      const id = randomInt(1, 0xffffffff);
      if (!this.sessions.has(id) && !this.sas.has(id)) return id;
    }
  }

  private initiate(client: PcpAddress): Buffer[] {
    this.stats.initiations++;
    // A client restarting PA abandons its session in progress (one per client address|port).
    for (const [id, s] of this.sessions) {
      if (key(s.client) === key(client)) {
        s.eap.close();
        this.sessions.delete(id);
      }
    }
    if (this.sessions.size >= (this.o.maxSessions ?? 256)) {
      this.stats.refused++;
      return [this.reply(null, client, PcpResult.NO_RESOURCES, 0, [])];
    }
    const s: PaSession = {
      sessionId: this.newSessionId(),
      client: { ...client },
      nonce: randomBytes(4),
      prf: 0,
      mac: 0,
      negotiated: false,
      serverSeq: 0,
      clientSeq: 0,
      lastReply: null,
      eap: this.o.backend.open(),
      busy: false,
      deadline: this.now() + (this.o.sessionTimeout ?? 60) * 1000,
    };
    this.sessions.set(s.sessionId, s);
    const options = [
      { code: PcpAuthOption.NONCE, data: s.nonce },
      ...this.prfs.map((p) => ({ code: PcpAuthOption.PSEUDO_RANDOM_FUNCTION, data: u32(p) })),
      ...this.macs.map((x) => ({ code: PcpAuthOption.MAC_ALGORITHM, data: u32(x) })),
      { code: PcpAuthOption.EAP_PAYLOAD, data: s.eap.firstRequest() },
    ];
    return [this.reply(s, client, PcpAuthResult.AUTHENTICATION_REQUEST, s.sessionId, options)];
  }

  private session(client: PcpAddress, m: PaMessage): PaSession | null | 'unknown' {
    const s = this.sessions.get(m.sessionId);
    if (!s) return 'unknown';
    if (key(s.client) !== key(client)) return null; // another client's session: discard
    return s;
  }

  private fail(s: PaSession, reason: string, eap?: Buffer | null): Buffer[] {
    this.stats.failed++;
    this.sessions.delete(s.sessionId);
    s.eap.close();
    this.o.onEvent?.({ kind: 'failed', client: s.client, sessionId: s.sessionId, reason });
    const opts = eap ? [{ code: PcpAuthOption.EAP_PAYLOAD, data: eap }] : [];
    return [this.reply(s, s.client, PcpAuthResult.AUTHENTICATION_FAILED, s.sessionId, opts)];
  }

  private async continue(client: PcpAddress, m: PaMessage): Promise<Buffer[]> {
    const s = this.session(client, m);
    if (s === 'unknown') {
      // A retransmission of the PA-Client that completed the session gets the same answer.
      const fin = this.finalReplies.get(m.sessionId);
      const sa = this.sas.get(m.sessionId);
      if (fin && fin.clientSeq === m.sequence && sa && key(sa.client) === key(client)) return [fin.reply];
      return [this.reply(null, client, PcpAuthResult.UNKNOWN_SESSION_ID, m.sessionId, [])];
    }
    if (!s) return this.discard();
    if (m.sequence === s.clientSeq && s.lastReply) return [s.lastReply]; // retransmission (same sequence number)
    if (m.sequence !== s.clientSeq + 1 || s.busy) return this.discard();
    // RECEIVED_PAK (§5.10) must acknowledge our last PA-Server message.
    if (optionU32(m.options, PcpAuthOption.RECEIVED_PAK) !== s.serverSeq) return this.discard();
    if (!s.negotiated) {
      const nonce = findOption(m.options, PcpAuthOption.NONCE);
      const prf = optionU32(m.options, PcpAuthOption.PSEUDO_RANDOM_FUNCTION);
      const mac = optionU32(m.options, PcpAuthOption.MAC_ALGORITHM);
      if (!nonce || !nonce.equals(s.nonce)) return this.discard();
      if (prf === undefined || mac === undefined || !this.prfs.includes(prf) || !this.macs.includes(mac)) {
        // RFC 7652 §5.7/§5.8: the client must choose among the algorithms offered.
        return this.fail(s, 'no acceptable PRF / MAC algorithm');
      }
      s.prf = prf;
      s.mac = mac;
      s.negotiated = true;
    }
    const eapIn = findOption(m.options, PcpAuthOption.EAP_PAYLOAD);
    if (!eapIn) return this.discard();
    s.clientSeq = m.sequence;
    s.busy = true;
    let step;
    try {
      step = await s.eap.step(eapIn);
    } catch {
      s.busy = false;
      return this.fail(s, 'EAP backend error');
    }
    s.busy = false;
    if (!this.sessions.has(s.sessionId)) return []; // timed out meanwhile
    if (!step.eap && !step.outcome) {
      s.clientSeq = m.sequence - 1; // not consumed: the client may retransmit
      return this.discard();
    }
    if (step.outcome && !step.outcome.ok) return this.fail(s, step.outcome.reason, step.eap);
    if (step.outcome && step.outcome.ok) {
      const keyId = this.nextKeyId;
      this.nextKeyId = (this.nextKeyId % 0x7ffffffe) + 1;
      const transportKey = deriveTransportKey(s.prf, step.outcome.msk, s.sessionId, s.nonce, keyId);
      step.outcome.msk.fill(0);
      this.installSa(s, transportKey, keyId, step.outcome.identity, step.outcome.groups);
      this.sessions.delete(s.sessionId);
      s.eap.close();
      this.stats.succeeded++;
      this.o.onEvent?.({ kind: 'succeeded', client: s.client, sessionId: s.sessionId, identity: step.outcome.identity });
      const opts = [
        { code: PcpAuthOption.EAP_PAYLOAD, data: step.eap! },
        { code: PcpAuthOption.SESSION_LIFETIME, data: u32(this.o.lifetime ?? 3600) },
        { code: PcpAuthOption.RECEIVED_PAK, data: u32(m.sequence) },
        // Downgrade protection: the algorithms offered in the first PA-Server message are
        // repeated under PA_AUTHENTICATION_TAG, so the client can compare them with what it
        // received unprotected (a mismatch is DOWNGRADE_ATTACK_DETECTED on the client).
        ...this.prfs.map((p) => ({ code: PcpAuthOption.PSEUDO_RANDOM_FUNCTION, data: u32(p) })),
        ...this.macs.map((x) => ({ code: PcpAuthOption.MAC_ALGORITHM, data: u32(x) })),
      ];
      const out = this.reply(s, client, PcpAuthResult.AUTHENTICATION_SUCCEEDED, s.sessionId, opts, {
        keyId,
        mac: s.mac,
        key: transportKey,
      });
      this.finalReplies.set(s.sessionId, { clientSeq: m.sequence, reply: out });
      return [out];
    }
    return [
      this.reply(s, client, PcpAuthResult.AUTHENTICATION_REQUEST, s.sessionId, [
        { code: PcpAuthOption.EAP_PAYLOAD, data: step.eap! },
        { code: PcpAuthOption.RECEIVED_PAK, data: u32(m.sequence) },
      ]),
    ];
  }

  /** The AUTHENTICATION_SUCCEEDED message of each new SA, answered again to a retransmitted last PA-Client. */
  private readonly finalReplies = new Map<number, { clientSeq: number; reply: Buffer }>();

  private installSa(s: PaSession, transportKey: Buffer, keyId: number, identity: string, groups: string[]): void {
    // Re-authentication replaces the client's previous SA.
    const old = this.byClient.get(key(s.client));
    if (old !== undefined) this.dropSa(old, 'replaced');
    while (this.sas.size >= (this.o.maxSas ?? 4096)) {
      let victim: Sa | null = null;
      for (const sa of this.sas.values()) if (!victim || sa.expiresAt < victim.expiresAt) victim = sa;
      this.dropSa(victim!.sessionId, 'evicted');
    }
    const sa: Sa = {
      sessionId: s.sessionId,
      identity,
      groups: [...groups],
      transportKey,
      expiresAt: this.now() + (this.o.lifetime ?? 3600) * 1000,
      client: { ...s.client },
      keyId,
      mac: s.mac,
      inSeq: 0,
      outSeq: 0,
    };
    this.sas.set(sa.sessionId, sa);
    this.byClient.set(key(s.client), sa.sessionId);
    if (this.finalReplies.size > (this.o.maxSas ?? 4096)) this.finalReplies.clear();
  }

  private discard(): Buffer[] {
    this.stats.discarded++;
    return [];
  }

  private acknowledged(client: PcpAddress, m: PaMessage): Buffer[] {
    const sa = this.sas.get(m.sessionId);
    if (!sa || key(sa.client) !== key(client)) return this.discard();
    // The client's acknowledgement must carry a valid PA_AUTHENTICATION_TAG (§5.5); nothing is answered.
    if (readPaAuthTagKeyId(m.raw!) !== sa.keyId || !verifyPaAuthTag(m.raw!, sa.mac, sa.transportKey)) return this.discard();
    this.finalReplies.delete(m.sessionId);
    return [];
  }

  private terminate(client: PcpAddress, m: PaMessage): Buffer[] {
    const sa = this.sas.get(m.sessionId);
    if (!sa || key(sa.client) !== key(client)) return this.discard();
    if (readPaAuthTagKeyId(m.raw!) !== sa.keyId || !verifyPaAuthTag(m.raw!, sa.mac, sa.transportKey)) return this.discard();
    const tagKey = { keyId: sa.keyId, mac: sa.mac, key: Buffer.from(sa.transportKey) };
    this.dropSa(sa.sessionId, 'terminated');
    const out = this.reply(null, client, PcpAuthResult.SESSION_TERMINATED, m.sessionId, [], tagKey);
    tagKey.key.fill(0);
    return [out];
  }

  /**
   * RFC 7652 §5.4 on a common request: no tag → AUTHENTICATION_REQUIRED when this client
   * must authenticate; a tag of an unknown or expired session → UNKNOWN_SESSION_ID; a tag
   * that does not verify, of another client or key, or with a sequence number not above the
   * last accepted → silently discarded.
   */
  verify(client: PcpAddress, raw: Buffer, options: readonly PcpOption[]): PcpAuthCheck {
    const tagOpt = options.find((o) => o.code === PcpAuthOption.AUTHENTICATION_TAG);
    if (!tagOpt) {
      if (this.required(client)) return { ok: false, result: PcpAuthResult.AUTHENTICATION_REQUIRED, silent: false };
      return { ok: true, sa: null };
    }
    const t = parseAuthTag(tagOpt.data);
    if (!t) return { ok: false, result: PcpResult.MALFORMED_OPTION, silent: true };
    const sa = this.sas.get(t.sessionId);
    if (sa && sa.expiresAt <= this.now()) {
      this.dropSa(sa.sessionId, 'expired');
      return { ok: false, result: PcpAuthResult.UNKNOWN_SESSION_ID, silent: false };
    }
    if (!sa) return { ok: false, result: PcpAuthResult.UNKNOWN_SESSION_ID, silent: false };
    if (sa.client.address !== client.address || t.keyId !== sa.keyId)
      return { ok: false, result: PcpAuthResult.AUTHENTICATION_FAILED, silent: true };
    if (!verifyAuthTag(raw, sa.mac, sa.transportKey)) {
      this.stats.discarded++;
      return { ok: false, result: PcpAuthResult.AUTHENTICATION_FAILED, silent: true };
    }
    if (t.sequence <= sa.inSeq) {
      this.stats.discarded++;
      return { ok: false, result: PcpAuthResult.AUTHENTICATION_FAILED, silent: true };
    }
    sa.inSeq = t.sequence;
    // Responses go to where the authenticated request came from.
    if (key(sa.client) !== key(client)) {
      this.byClient.delete(key(sa.client));
      sa.client = { ...client };
      this.byClient.set(key(client), sa.sessionId);
    }
    return { ok: true, sa };
  }

  sign(client: PcpAddress, response: Buffer): Buffer {
    const id = this.byClient.get(key(client));
    const sa = id === undefined ? undefined : this.sas.get(id);
    if (!sa || sa.expiresAt <= this.now()) return response;
    sa.outSeq = (sa.outSeq + 1) >>> 0;
    return appendAuthTag(response, { sessionId: sa.sessionId, sequence: sa.outSeq, keyId: sa.keyId, mac: sa.mac, key: sa.transportKey });
  }

  close(): void {
    for (const s of this.sessions.values()) s.eap.close();
    this.sessions.clear();
    for (const id of [...this.sas.keys()]) this.dropSa(id, 'evicted');
    this.o.backend.close?.();
  }
}
