/**
 * Signalling (core.md §8): `GET /v1/signal` upgrades to a WebSocket (RFC 6455) that
 * carries JSON text messages, each with a `type`.
 *
 *   client → hello {token}                      first message; else `error` + close 1008
 *   client → join {conference | room}           → join {peer, conference|room, peers, turn}
 *                                                 the others get peers {peers}
 *   client → offer|answer {to, sdp}             → to that peer only, with `from`
 *   client → candidate {to, candidate}          → to that peer only, with `from`
 *   client → chat {text}                        → everyone in the conference, with `from`
 *   client → leave                              → leave {peer}; the others get peers
 *   anything else, or naming a conference, room or peer outside the sender's own
 *                                               → error {error: {code, message}}
 *   server → turn {turn}                        fresh TURN credentials before the last expire
 *
 * `peers` (in `join` and `peers`) is everyone in the conference or room now, the
 * recipient included, each `{peer, user}` or, for a guest, `{peer, identity}`.
 *
 * Bounds (README "Limits"): a message is at most maxMessageBytes (larger: close 1009,
 * RFC 6455 §7.4.1); each connection has a token bucket of messages (over it: dropped,
 * with at most one `rate_limited` error a second); a connection whose unsent data
 * (bufferedAmount) exceeds maxBufferedBytes is terminated, so one slow reader never
 * holds memory for the others; a connection that does not answer a ping
 * (RFC 6455 §5.5.2/§5.5.3) within pingIntervalMs is terminated; a hello must come
 * within helloTimeoutMs; connections in all and per conference or room are capped. A
 * user holds at most core.max_connections_per_user connections from their hello
 * (core.md §4): the next hello closes the oldest with 4001 `replaced`.
 *
 * The token is checked at hello and its expiry on every message and by a timer; a
 * revoked token (TokenService.onRevoke) ends its connections (close 1008 `revoked`).
 * Nothing here logs a token, an SDP, a candidate or a chat text.
 *
 * The token travels in the first message, not a cookie: a cross-site page can open the
 * socket but has no token to say hello with (no cross-site WebSocket hijacking).
 */
import { randomBytes } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type RawData, type WebSocket } from 'ws';
import type { Clock, TimerHandle } from '../util/clock.js';
import type { Logger } from '../util/log.js';
import type { Supervisor } from '../util/supervise.js';
import { tokenId, type FailureCounter, type TokenClaims } from './tokens.js';
import { sourceOf } from './http.js';
import { claimsAllowConference, type CoreContext, type CoreModule } from './director.js';
import type { TurnCredentials, TurnSubject } from './turn-credentials.js';
import { conferencesOf } from './conferences.js';
import { CoreError } from './errors.js';
import { issueGroups } from './directory/groups.js';

/** What joining may answer (core.md §2 codes). */
export type JoinDecision = 'ok' | 'forbidden' | 'not_found';
export type JoinTarget = { conference: string } | { room: string };

/**
 * Who may join what. The default (defaultMembership) asks core.rooms for rooms and
 * claimsAllowConference for conferences (a guest only its own, a user any conference
 * that exists); `conferenceExists` is where the conferences module says which exist.
 */
export interface MembershipSource {
  canJoin(claims: TokenClaims, target: JoinTarget): JoinDecision | Promise<JoinDecision>;
}

export function defaultMembership(
  core: Pick<CoreContext, 'rooms'>,
  conferenceExists?: (id: string) => boolean | Promise<boolean>,
): MembershipSource {
  return {
    async canJoin(claims, target) {
      if ('room' in target) {
        if (!core.rooms.get(target.room)) return 'not_found';
        return core.rooms.mayJoin(claims, target.room) ? 'ok' : 'forbidden';
      }
      // core.md §2: a guest or invitee token outside its own conference is refused.
      if (!claimsAllowConference(claims, target.conference)) return 'forbidden';
      if (conferenceExists && !(await conferenceExists(target.conference))) return 'not_found';
      return 'ok';
    },
  };
}

export interface SignalLimits {
  /** Largest message accepted (ws maxPayload; larger closes 1009). */
  maxMessageBytes: number;
  /** Token bucket: messages per second, and the burst. */
  messagesPerSecond: number;
  burst: number;
  /** Unsent bytes a connection may hold before it is terminated (slow reader). */
  maxBufferedBytes: number;
  pingIntervalMs: number;
  helloTimeoutMs: number;
  maxConnections: number;
  maxPeersPerGroup: number;
  maxConnectionsPerUser: number;
}

export const DEFAULT_SIGNAL_LIMITS: SignalLimits = {
  maxMessageBytes: 64 * 1024,
  messagesPerSecond: 50,
  burst: 200,
  maxBufferedBytes: 1024 * 1024,
  pingIntervalMs: 30_000,
  helloTimeoutMs: 10_000,
  maxConnections: 10_000,
  maxPeersPerGroup: 500,
  maxConnectionsPerUser: 3,
};

/** RFC 6455 §7.4.1 close codes, and the application's own (§7.4.2: 4000-4999 are private use). */
export const CLOSE_POLICY = 1008;
export const CLOSE_GOING_AWAY = 1001;
export const CLOSE_REPLACED = 4001; // core.md §4
/** 1011 Internal Error: not in §7.4.1, registered in the Close Code registry of RFC 6455 §11.7. */
export const CLOSE_INTERNAL = 1011;

export type SignalErrorCode = 'bad_request' | 'unauthenticated' | 'forbidden' | 'not_found' | 'rate_limited' | 'unavailable';

export interface SignalDeps {
  tokens: { verify(token: string): TokenClaims | null; onRevoke(l: (claims: TokenClaims, id: string) => void): () => void };
  turn: { issue(subject: TurnSubject): TurnCredentials };
  membership: MembershipSource;
  clock: Clock;
  log: Logger;
  supervisor: Supervisor;
  limits?: Partial<SignalLimits>;
  /** Failed authentications per source (core.md §2 "on any mechanism"): a bad hello token counts. */
  limiter?: FailureCounter | null;
  /**
   * With core.directory: a user's groups as the directory says now (through its cache,
   * src/core/directory/groups.ts), awaited before every issue of their TURN credentials
   * (the join answer and each re-issue), so the issue record is never older than
   * core.ldap.cache_ttl. Absent: credentials are issued at once, without groups.
   */
  groupsOf?: ((claims: TokenClaims) => Promise<readonly string[] | undefined>) | null;
}

interface Group {
  key: string;
  target: JoinTarget;
  members: Map<string, Conn>;
}

interface Conn {
  ws: WebSocket;
  /** The peer's address (the failed-authentication limit's key). */
  source: string;
  /** Peer id: opaque, 96 random bits. */
  peer: string;
  claims: TokenClaims | null;
  tokenId: string | null;
  group: Group | null;
  joining: boolean;
  alive: boolean;
  closed: boolean;
  tokens: number;
  lastRefill: number;
  lastRateError: number;
  timers: TimerHandle[];
  turnTimer: TimerHandle | null;
}

const TYPE_RE = /^[a-z_]{1,32}$/;

/**
 * The TURN subject of a participant in `target`: a guest by its conference and identity; a
 * user with the issue record that tells the gateway which conference or room the
 * credential is for (src/core/turn-credentials.ts), the organisation of its token, and the
 * directory's groups at issue time (SignalDeps.groupsOf) where there is a directory.
 */
function subjectOf(c: TokenClaims, target: JoinTarget, groups?: readonly string[]): TurnSubject {
  if (c.kind === 'guest') return { kind: 'guest', conference: c.conference!, identity: c.identity! };
  return {
    kind: 'user',
    user: c.sub,
    context: {
      ...('conference' in target ? { conference: target.conference } : { room: target.room }),
      ...(c.org !== undefined ? { org: c.org } : {}),
      ...(groups !== undefined ? { groups } : {}),
    },
  };
}

export class SignalServer {
  private readonly wss: WebSocketServer;
  private readonly limits: SignalLimits;
  private readonly conns = new Set<Conn>();
  private readonly byUser = new Map<string, Conn[]>();
  private readonly byToken = new Map<string, Set<Conn>>();
  private readonly groups = new Map<string, Group>();
  private readonly unsubscribe: () => void;
  private readonly pinger: TimerHandle;
  private stopped = false;

  constructor(private readonly d: SignalDeps) {
    this.limits = { ...DEFAULT_SIGNAL_LIMITS, ...(d.limits ?? {}) };
    // RFC 6455 §10.4: a limit on frame and message size; permessage-deflate stays off
    // (compression bombs, CPU per message).
    this.wss = new WebSocketServer({
      noServer: true,
      maxPayload: this.limits.maxMessageBytes,
      perMessageDeflate: false,
      clientTracking: false,
    });
    this.unsubscribe = d.tokens.onRevoke((_claims, id) => {
      const set = this.byToken.get(id);
      if (!set) return;
      for (const c of [...set]) this.close(c, CLOSE_POLICY, 'revoked');
    });
    this.pinger = d.clock.setInterval(
      d.supervisor.guard('core.signal.ping', () => this.pingAll()),
      this.limits.pingIntervalMs,
    );
  }

  /** Connections open now (tests, metrics). */
  get size(): number {
    return this.conns.size;
  }

  /** The Router's upgrade handler for `GET /v1/signal`. */
  readonly handleUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
    if (this.stopped || this.conns.size >= this.limits.maxConnections) {
      // RFC 9110 §15.6.4: the service is at its bound.
      socket.end('HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\nRetry-After: 5\r\n\r\n');
      return;
    }
    if ((req.method ?? 'GET').toUpperCase() !== 'GET') {
      socket.end('HTTP/1.1 405 Method Not Allowed\r\nAllow: GET\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    const source = sourceOf(req);
    this.wss.handleUpgrade(req, socket, head, (ws) =>
      this.d.supervisor.run(
        'core.signal.open',
        () => this.open(ws, source),
        () => ws.terminate(),
      ),
    );
  };

  private open(ws: WebSocket, source: string): void {
    const now = this.d.clock.now();
    const c: Conn = {
      ws,
      source,
      peer: randomBytes(12).toString('base64url'),
      claims: null,
      tokenId: null,
      group: null,
      joining: false,
      alive: true,
      closed: false,
      tokens: this.limits.burst,
      lastRefill: now,
      lastRateError: 0,
      timers: [],
      turnTimer: null,
    };
    this.conns.add(c);
    ws.on('pong', () => void (c.alive = true));
    ws.on(
      'message',
      this.d.supervisor.guard(
        'core.signal.message',
        (data: RawData, isBinary: boolean) => this.onMessage(c, data, isBinary),
        () => this.close(c, CLOSE_INTERNAL, 'internal error'),
      ),
    );
    ws.on('close', () => this.d.supervisor.run('core.signal.close', () => this.cleanup(c)));
    ws.on('error', () => this.d.supervisor.run('core.signal.error', () => this.cleanup(c)));
    // core.md §8: the hello comes first, and soon.
    c.timers.push(
      this.d.clock.setTimeout(
        this.d.supervisor.guard('core.signal.hello_timeout', () => {
          if (!c.claims) this.refuse(c, 'unauthenticated', 'no hello in time');
        }),
        this.limits.helloTimeoutMs,
      ),
    );
  }

  /** Sends a message (or one already serialised, for broadcasts: one JSON.stringify for all). */
  private send(c: Conn, m: unknown): void {
    if (c.closed || c.ws.readyState !== c.ws.OPEN) return;
    c.ws.send(typeof m === 'string' ? m : JSON.stringify(m));
    // A reader that does not keep up is dropped; the others are not held back by it.
    if (c.ws.bufferedAmount > this.limits.maxBufferedBytes) {
      this.d.log.debug({ peer: c.peer }, 'signal: slow client dropped');
      this.terminate(c);
    }
  }

  private error(c: Conn, code: SignalErrorCode, message: string): void {
    this.send(c, { type: 'error', error: { code, message } });
  }

  /** A bad or missing hello: `error`, then close 1008 (core.md §8; RFC 6455 §7.4.1). */
  private refuse(c: Conn, code: SignalErrorCode, message: string): void {
    this.error(c, code, message);
    this.close(c, CLOSE_POLICY, code);
  }

  private close(c: Conn, code: number, reason: string): void {
    if (c.closed) return;
    this.cleanup(c);
    try {
      c.ws.close(code, reason);
    } catch {
      c.ws.terminate();
    }
    // A peer that never answers the close handshake is cut after a while.
    const t = this.d.clock.setTimeout(() => c.ws.terminate(), 5_000);
    c.ws.once('close', () => t.cancel());
  }

  private terminate(c: Conn): void {
    if (c.closed) return;
    this.cleanup(c);
    c.ws.terminate();
  }

  /** Takes a connection out of every table (idempotent). */
  private cleanup(c: Conn): void {
    if (c.closed) return;
    c.closed = true;
    this.conns.delete(c);
    for (const t of c.timers) t.cancel();
    c.timers = [];
    c.turnTimer?.cancel();
    c.turnTimer = null;
    this.leaveGroup(c);
    if (c.claims) {
      const list = this.byUser.get(c.claims.sub);
      if (list) {
        const i = list.indexOf(c);
        if (i >= 0) list.splice(i, 1);
        if (!list.length) this.byUser.delete(c.claims.sub);
      }
    }
    if (c.tokenId) {
      const set = this.byToken.get(c.tokenId);
      set?.delete(c);
      if (set && !set.size) this.byToken.delete(c.tokenId);
    }
  }

  private pingAll(): void {
    for (const c of [...this.conns]) {
      // RFC 6455 §5.5.2: a ping; no pong since the last one: the peer is gone.
      if (!c.alive) {
        this.terminate(c);
        continue;
      }
      c.alive = false;
      try {
        c.ws.ping();
      } catch {
        this.terminate(c);
      }
    }
  }

  /** Token bucket per connection. */
  private allow(c: Conn): boolean {
    const now = this.d.clock.now();
    const el = Math.max(0, now - c.lastRefill);
    c.lastRefill = now;
    c.tokens = Math.min(this.limits.burst, c.tokens + (el * this.limits.messagesPerSecond) / 1000);
    if (c.tokens >= 1) {
      c.tokens -= 1;
      return true;
    }
    if (now - c.lastRateError >= 1000) {
      c.lastRateError = now;
      this.error(c, 'rate_limited', 'too many messages: slow down');
    }
    return false;
  }

  private onMessage(c: Conn, data: RawData, isBinary: boolean): void {
    if (c.closed) return;
    if (!this.allow(c)) return;
    let m: Record<string, unknown> | null = null;
    if (!isBinary) {
      try {
        const v: unknown = JSON.parse(Buffer.isBuffer(data) ? data.toString('utf8') : Buffer.concat(data as Buffer[]).toString('utf8'));
        if (v && typeof v === 'object' && !Array.isArray(v)) m = v as Record<string, unknown>;
      } catch {
        m = null;
      }
    }
    if (!c.claims) return this.hello(c, m);
    if (!m || typeof m.type !== 'string' || !TYPE_RE.test(m.type))
      return this.error(c, 'bad_request', 'messages are JSON objects with a type');
    // The token's life is re-checked on every message (revocation is pushed by onRevoke).
    if (c.claims.exp * 1000 <= this.d.clock.now()) return this.expired(c);
    switch (m.type) {
      case 'hello':
        return this.error(c, 'bad_request', 'already said hello');
      case 'join':
        return this.join(c, m);
      case 'offer':
      case 'answer':
      case 'candidate':
        return this.relay(c, m.type, m);
      case 'chat':
        return this.chat(c, m);
      case 'leave':
        return this.leave(c, m);
      default:
        return this.error(c, 'bad_request', `unknown message type ${JSON.stringify(m.type)}`);
    }
  }

  private expired(c: Conn): void {
    this.error(c, 'unauthenticated', 'the token expired');
    this.close(c, CLOSE_POLICY, 'expired');
  }

  private hello(c: Conn, m: Record<string, unknown> | null): void {
    if (!m || m.type !== 'hello') return this.refuse(c, 'unauthenticated', 'the first message must be a hello with a token');
    // core.md §2: at most 10 failed authentications per source a minute, on any mechanism.
    const limiter = this.d.limiter ?? null;
    if (limiter) {
      try {
        limiter.check(c.source);
      } catch (err) {
        // The limiter's message says when (`retry in N s`); it names no secret.
        return this.refuse(c, 'rate_limited', (err as Error).message || 'too many failed authentications from this address');
      }
    }
    const token = typeof m.token === 'string' ? m.token : '';
    const claims = token ? this.d.tokens.verify(token) : null;
    if (!claims) {
      limiter?.fail(c.source);
      return this.refuse(c, 'unauthenticated', 'the token is unknown, revoked or expired');
    }
    c.claims = claims;
    c.tokenId = tokenId(token);
    for (const t of c.timers) t.cancel();
    c.timers = [];
    let set = this.byToken.get(c.tokenId);
    if (!set) this.byToken.set(c.tokenId, (set = new Set()));
    set.add(c);
    // core.md §4: at most max_connections_per_user from the hello; the oldest goes.
    const list = this.byUser.get(claims.sub) ?? [];
    this.byUser.set(claims.sub, list);
    list.push(c);
    while (list.length > this.limits.maxConnectionsPerUser) {
      const oldest = list[0]!;
      this.close(oldest, CLOSE_REPLACED, 'replaced');
      if (list[0] === oldest) list.shift();
    }
    // Expiry ends the connection even when it is silent.
    const left = claims.exp * 1000 - this.d.clock.now();
    c.timers.push(
      this.d.clock.setTimeout(
        this.d.supervisor.guard('core.signal.expiry', () => this.expired(c)),
        Math.max(0, left),
      ),
    );
    this.send(c, {
      type: 'hello',
      peer: c.peer,
      ...(claims.kind === 'guest' ? { identity: claims.identity, conference: claims.conference } : { user: claims.sub }),
    });
  }

  private join(c: Conn, m: Record<string, unknown>): void {
    const conf = m.conference;
    const room = m.room;
    if ((conf === undefined) === (room === undefined)) return this.error(c, 'bad_request', 'join names one conference or one room');
    const id = conf ?? room;
    if (typeof id !== 'string' || id.length < 1 || id.length > 128)
      return this.error(c, 'bad_request', 'a conference or room id is a string');
    if (c.group || c.joining) return this.error(c, 'bad_request', 'already in a conference or room: leave first');
    const target: JoinTarget = conf !== undefined ? { conference: id } : { room: id };
    const claims = c.claims!;
    c.joining = true;
    Promise.resolve()
      .then(() => Promise.all([this.d.membership.canJoin(claims, target), this.groupsFor(claims)]))
      .then(
        ([decision, groups]) =>
          this.d.supervisor.run(
            'core.signal.join',
            () => this.admitted(c, target, decision, groups),
            () => this.close(c, CLOSE_INTERNAL, 'internal error'),
          ),
        (err: unknown) => {
          c.joining = false;
          // The directory cannot say the user's groups (503) or no longer has the user (403).
          if (err instanceof CoreError && (err.code === 'unavailable' || err.code === 'forbidden'))
            return this.error(c, err.code, err.message);
          this.d.supervisor.caught('core.signal.membership', err);
          this.error(c, 'not_found', 'that conference or room cannot be joined now');
        },
      );
  }

  /** The directory's groups of a user (a promise), or undefined: no directory, or a guest. */
  private groupsFor(claims: TokenClaims): Promise<readonly string[] | undefined> | undefined {
    return claims.kind === 'user' && this.d.groupsOf ? this.d.groupsOf(claims) : undefined;
  }

  private admitted(c: Conn, target: JoinTarget, decision: JoinDecision, groups?: readonly string[]): void {
    c.joining = false;
    if (c.closed) return;
    if (decision === 'forbidden') return this.error(c, 'forbidden', 'this token may not join that conference or room');
    if (decision !== 'ok') return this.error(c, 'not_found', 'no such conference or room');
    const key = 'conference' in target ? `c:${target.conference}` : `r:${target.room}`;
    let g = this.groups.get(key);
    if (!g) this.groups.set(key, (g = { key, target, members: new Map() }));
    if (g.members.size >= this.limits.maxPeersPerGroup) return this.error(c, 'forbidden', 'the conference or room is full');
    g.members.set(c.peer, c);
    c.group = g;
    const peers = this.roster(g);
    this.send(c, { type: 'join', peer: c.peer, ...target, peers, turn: this.d.turn.issue(subjectOf(c.claims!, target, groups)) });
    this.scheduleTurn(c, groups);
    const update = JSON.stringify({ type: 'peers', peers });
    for (const o of [...g.members.values()]) if (o !== c) this.send(o, update);
  }

  /** Fresh TURN credentials before the last ones expire (their ttl is short: core.turn_ttl). */
  private scheduleTurn(c: Conn, groups?: readonly string[]): void {
    c.turnTimer?.cancel();
    const probe = this.d.turn.issue(subjectOf(c.claims!, c.group!.target, groups));
    const every = Math.max(1_000, Math.floor(probe.ttl * 800));
    const reissue = (g?: readonly string[]) => {
      if (c.group && !c.closed) this.send(c, { type: 'turn', turn: this.d.turn.issue(subjectOf(c.claims!, c.group.target, g)) });
    };
    c.turnTimer = this.d.clock.setInterval(
      this.d.supervisor.guard('core.signal.turn', () => {
        if (!c.group || c.closed) return;
        const pending = this.groupsFor(c.claims!);
        if (!pending) return reissue();
        // The directory's groups now; when it cannot say, no new credentials (the last
        // ones expire: fail closed) and the client is told.
        pending.then(
          (g) =>
            this.d.supervisor.run(
              'core.signal.turn',
              () => reissue(g),
              () => {},
            ),
          (err: unknown) => {
            if (c.closed) return;
            if (err instanceof CoreError && (err.code === 'unavailable' || err.code === 'forbidden')) this.error(c, err.code, err.message);
            else this.d.supervisor.caught('core.signal.groups', err);
          },
        );
      }),
      every,
    );
  }

  private roster(g: Group): { peer: string; user?: string; identity?: string }[] {
    return [...g.members.values()].map((o) =>
      o.claims!.kind === 'guest' ? { peer: o.peer, identity: o.claims!.identity! } : { peer: o.peer, user: o.claims!.sub },
    );
  }

  /** A message naming a conference or room other than the sender's own is refused (core.md §8). */
  private outside(c: Conn, m: Record<string, unknown>): boolean {
    const g = c.group!;
    const t = g.target;
    if (m.conference !== undefined && !('conference' in t && t.conference === m.conference)) return true;
    if (m.room !== undefined && !('room' in t && t.room === m.room)) return true;
    return false;
  }

  private relay(c: Conn, type: 'offer' | 'answer' | 'candidate', m: Record<string, unknown>): void {
    if (!c.group) return this.error(c, 'bad_request', 'join a conference or room first');
    if (this.outside(c, m)) return this.error(c, 'forbidden', 'that conference or room is not yours');
    if (typeof m.to !== 'string') return this.error(c, 'bad_request', `${type} needs "to": a peer id`);
    const to = c.group.members.get(m.to);
    if (!to || to === c) return this.error(c, 'not_found', 'no such peer in your conference or room');
    if (type === 'candidate') {
      const cand = m.candidate;
      if (cand === undefined || (typeof cand !== 'string' && (typeof cand !== 'object' || Array.isArray(cand))))
        return this.error(c, 'bad_request', 'candidate needs a "candidate"');
      return this.send(to, { type, from: c.peer, candidate: cand });
    }
    if (typeof m.sdp !== 'string') return this.error(c, 'bad_request', `${type} needs an "sdp" string`);
    this.send(to, { type, from: c.peer, sdp: m.sdp });
  }

  private chat(c: Conn, m: Record<string, unknown>): void {
    if (!c.group) return this.error(c, 'bad_request', 'join a conference or room first');
    if (this.outside(c, m)) return this.error(c, 'forbidden', 'that conference or room is not yours');
    if (m.to !== undefined) return this.error(c, 'bad_request', 'chat goes to everyone: no "to"');
    if (typeof m.text !== 'string' || !m.text.length) return this.error(c, 'bad_request', 'chat needs a "text"');
    const msg = JSON.stringify({ type: 'chat', from: c.peer, text: m.text });
    for (const o of [...c.group.members.values()]) this.send(o, msg);
  }

  private leave(c: Conn, m: Record<string, unknown>): void {
    if (!c.group) return this.error(c, 'bad_request', 'not in a conference or room');
    if (this.outside(c, m)) return this.error(c, 'forbidden', 'that conference or room is not yours');
    this.leaveGroup(c);
    this.send(c, { type: 'leave', peer: c.peer });
  }

  private leaveGroup(c: Conn): void {
    const g = c.group;
    if (!g) return;
    c.group = null;
    c.turnTimer?.cancel();
    c.turnTimer = null;
    g.members.delete(c.peer);
    if (!g.members.size) {
      this.groups.delete(g.key);
      return;
    }
    const update = JSON.stringify({ type: 'peers', peers: this.roster(g) });
    for (const o of [...g.members.values()]) this.send(o, update);
  }

  /** Closes every connection (1001 going away) and stops the timers. */
  stop(): void {
    this.stopped = true;
    this.unsubscribe();
    this.pinger.cancel();
    for (const c of [...this.conns]) this.close(c, CLOSE_GOING_AWAY, 'shutting down');
    this.wss.close();
  }
}

/**
 * The signalling module of startCore (src/core/index.ts MODULES). Who may join: rooms by
 * core.rooms; conferences by claimsAllowConference (a guest only its own, a user any) and,
 * unless `conferenceExists` or `membership` say otherwise, the conferences module's
 * exists() (a conference no FE holds now: not_found).
 */
export function signalModule(
  opts: {
    membership?: MembershipSource;
    conferenceExists?: (id: string) => boolean | Promise<boolean>;
    limits?: Partial<SignalLimits>;
  } = {},
): CoreModule {
  return (core) => {
    const server = new SignalServer({
      tokens: core.tokens,
      turn: core.turn,
      // The conferences module says which conferences exist (src/core/conferences.ts); a core
      // without it has none.
      membership:
        opts.membership ??
        defaultMembership(core, opts.conferenceExists ?? (async (id) => (await conferencesOf(core)?.exists(id)) ?? false)),
      clock: core.clock,
      log: core.log,
      supervisor: core.supervisor,
      limiter: core.tokens.limiter ?? core.limiter,
      // Also without a directory: a transferred user's groups never come from the gateway's store.
      groupsOf: (claims) => issueGroups(core, claims),
      limits: { maxConnectionsPerUser: core.cfg.core.max_connections_per_user, ...(opts.limits ?? {}) },
    });
    core.http.onUpgrade('/v1/signal', server.handleUpgrade);
    core.onStop(() => server.stop());
  };
}
