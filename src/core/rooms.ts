/**
 * Rooms with personal single-use URLs (core.md §7), kept in SQLite (DATA_DIR/core.db,
 * better-sqlite3; `:memory:` for an in-memory core):
 *
 *   POST   /v1/rooms                          (user) {title} → 201 {id}
 *   GET    /v1/rooms                          (user) → {rooms: [{id, title}]} (the caller's)
 *   POST   /v1/rooms/{id}/invites             (owner) {invitee, expires_in} → 201 {url, invitee, expires}
 *   GET    /v1/rooms/{id}/invites             (owner) → {invites: [{invitee, expires, state}]}
 *   DELETE /v1/rooms/{id}/invites/{invitee}   (owner) → 204: the URL is dead, the invitee's room tokens are revoked
 *   DELETE /v1/rooms/{id}/participants/{user} (owner) → 204: the user's room tokens are revoked (signalling ends)
 *   GET    /i/{secret}                        the web client; spends nothing (link previews)
 *   POST   /i/{secret}                        (the invitee's user token) → 200 {token, room, turn}; spends it
 *
 * The secret is 256 random bits (base64url); only its SHA-256 is stored. A new invite for
 * the same invitee replaces the old one (which then answers 410). Another user's token
 * gets 403 and the URL stays valid; a spent, expired, replaced or revoked URL: 410 gone;
 * an unknown one: 404, counted as a failed authentication (guessing).
 */
import Database from 'better-sqlite3';
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import type { CoreContext, CoreModule } from './director.js';
import { badRequest, forbidden, gone, notFound } from './errors.js';
import type { RequestContext } from './http.js';
import { requireToken, requireUser, type TokenClaims } from './tokens.js';
import { serveIndex } from './web.js';
import { issueGroups } from './directory/groups.js';

export interface RoomService {
  /** Whether these claims may join this room: its owner with a user token, or a token stamped with it. */
  mayJoin(claims: TokenClaims, room: string): boolean;
  /** The room's owner and title, or null. */
  get(room: string): { id: string; owner: string; title: string } | null;
}

/** Bounds (README "Limits"). */
export const MAX_ROOMS_PER_OWNER = 100;
export const MAX_INVITES_PER_ROOM = 1000;
export const MAX_TITLE_CHARS = 200;
export const MAX_INVITE_SECONDS = 30 * 86400;
export const DEFAULT_INVITE_SECONDS = 86400;
/** Dead invites (spent, expired, replaced, revoked) are kept this long to answer 410, then deleted. */
export const DEAD_INVITE_KEEP_S = 7 * 86400;

export const INVITE_PATH = '/i/';

type InviteState = 'live' | 'spent' | 'replaced' | 'revoked';

interface InviteRow {
  hash: string;
  room: string;
  invitee: string;
  expires: number;
  state: InviteState;
  created: number;
}

const hashOf = (secret: string) => createHash('sha256').update(secret, 'utf8').digest('hex');

export class RoomStore implements RoomService {
  private readonly db: Database.Database;

  constructor(
    path: string,
    private readonly nowS: () => number,
  ) {
    this.db = new Database(path);
    if (path !== ':memory:') {
      this.db.pragma('journal_mode = WAL');
      this.db.pragma('synchronous = NORMAL');
    }
    this.db.exec(`CREATE TABLE IF NOT EXISTS core_rooms (
        id TEXT PRIMARY KEY, owner TEXT NOT NULL, title TEXT NOT NULL, created INTEGER NOT NULL);
      CREATE INDEX IF NOT EXISTS core_rooms_owner ON core_rooms (owner);
      CREATE TABLE IF NOT EXISTS core_invites (
        hash TEXT PRIMARY KEY, room TEXT NOT NULL, invitee TEXT NOT NULL, expires INTEGER NOT NULL,
        state TEXT NOT NULL, created INTEGER NOT NULL, changed INTEGER NOT NULL);
      CREATE INDEX IF NOT EXISTS core_invites_room ON core_invites (room, invitee);`);
  }

  close(): void {
    try {
      this.db.close();
    } catch {
      /* committed rows are in the WAL */
    }
  }

  get(room: string): { id: string; owner: string; title: string } | null {
    return (
      (this.db.prepare('SELECT id, owner, title FROM core_rooms WHERE id = ?').get(room) as { id: string; owner: string; title: string }) ??
      null
    );
  }

  mayJoin(claims: TokenClaims, room: string): boolean {
    if (claims.room !== undefined) return claims.room === room;
    if (claims.kind !== 'user' || claims.conference !== undefined) return false;
    return this.get(room)?.owner === claims.sub;
  }

  create(owner: string, title: string): string {
    const n = (this.db.prepare('SELECT COUNT(*) AS n FROM core_rooms WHERE owner = ?').get(owner) as { n: number }).n;
    if (n >= MAX_ROOMS_PER_OWNER) throw badRequest(`a user owns at most ${MAX_ROOMS_PER_OWNER} rooms`);
    const id = 'r' + randomBytes(12).toString('base64url');
    this.db.prepare('INSERT INTO core_rooms (id, owner, title, created) VALUES (?, ?, ?, ?)').run(id, owner, title, this.nowS());
    return id;
  }

  listOwned(owner: string): { id: string; title: string }[] {
    return this.db.prepare('SELECT id, title FROM core_rooms WHERE owner = ? ORDER BY created, id').all(owner) as {
      id: string;
      title: string;
    }[];
  }

  /** A new invite (the secret is returned once, only its hash is kept); the invitee's previous one is replaced. */
  invite(room: string, invitee: string, expiresIn: number): { secret: string; expires: number } {
    const now = this.nowS();
    const secret = randomBytes(32).toString('base64url');
    const expires = now + expiresIn;
    this.db.transaction(() => {
      this.db.prepare("DELETE FROM core_invites WHERE state != 'live' AND changed < ?").run(now - DEAD_INVITE_KEEP_S);
      this.db.prepare("DELETE FROM core_invites WHERE state = 'live' AND expires < ?").run(now - DEAD_INVITE_KEEP_S);
      this.db
        .prepare("UPDATE core_invites SET state = 'replaced', changed = ? WHERE room = ? AND invitee = ? AND state = 'live'")
        .run(now, room, invitee);
      const n = (this.db.prepare("SELECT COUNT(*) AS n FROM core_invites WHERE room = ? AND state = 'live'").get(room) as { n: number }).n;
      if (n >= MAX_INVITES_PER_ROOM) throw badRequest(`a room has at most ${MAX_INVITES_PER_ROOM} open invitations`);
      this.db
        .prepare("INSERT INTO core_invites (hash, room, invitee, expires, state, created, changed) VALUES (?, ?, ?, ?, 'live', ?, ?)")
        .run(hashOf(secret), room, invitee, expires, now, now);
    })();
    return { secret, expires };
  }

  /** The room's invites, newest per invitee (no secrets: they are not kept). */
  listInvites(room: string): { invitee: string; expires: number; state: InviteState | 'expired' }[] {
    const now = this.nowS();
    const rows = this.db
      .prepare('SELECT invitee, expires, state, created FROM core_invites WHERE room = ? ORDER BY invitee, created DESC')
      .all(room) as InviteRow[];
    const seen = new Set<string>();
    const out: { invitee: string; expires: number; state: InviteState | 'expired' }[] = [];
    for (const r of rows) {
      if (seen.has(r.invitee)) continue;
      seen.add(r.invitee);
      out.push({ invitee: r.invitee, expires: r.expires, state: r.state === 'live' && r.expires <= now ? 'expired' : r.state });
    }
    return out;
  }

  /** Revokes the invitee's live invite; true when there was one. */
  revokeInvite(room: string, invitee: string): boolean {
    return (
      this.db
        .prepare("UPDATE core_invites SET state = 'revoked', changed = ? WHERE room = ? AND invitee = ? AND state IN ('live', 'spent')")
        .run(this.nowS(), room, invitee).changes > 0
    );
  }

  lookup(secret: string): InviteRow | null {
    return (this.db.prepare('SELECT * FROM core_invites WHERE hash = ?').get(hashOf(secret)) as InviteRow) ?? null;
  }

  /** Spends a live, unexpired invite atomically: true for exactly one caller. */
  spend(secret: string): boolean {
    const now = this.nowS();
    return (
      this.db
        .prepare("UPDATE core_invites SET state = 'spent', changed = ? WHERE hash = ? AND state = 'live' AND expires > ?")
        .run(now, hashOf(secret), now).changes === 1
    );
  }

  deleteRoom(room: string): void {
    this.db.transaction(() => {
      this.db.prepare('DELETE FROM core_invites WHERE room = ?').run(room);
      this.db.prepare('DELETE FROM core_rooms WHERE id = ?').run(room);
    })();
  }
}

/** The director's base URL as this client reached it (Host, RFC 9110 §7.2), else the listener's. */
function baseOf(core: CoreContext, ctx: RequestContext): string {
  const own = core.baseUrl();
  const host = ctx.req.headers.host;
  if (host && /^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$/.test(host)) return `${own.split(':')[0]}://${host}`;
  return own;
}

function ownedRoom(store: RoomStore, ctx: RequestContext, claims: TokenClaims) {
  const room = store.get(ctx.params.id!);
  if (!room) throw notFound('no such room');
  if (room.owner !== claims.sub) throw forbidden('only the room owner may do this');
  return room;
}

export const roomsModule: CoreModule = (core) => {
  const path = core.dataDir ? join(core.dataDir, 'core.db') : ':memory:';
  const store = new RoomStore(path, () => Math.floor(core.clock.now() / 1000));
  core.rooms = store;
  core.onStop(() => store.close());
  const userToken = (ctx: RequestContext) => requireUser(ctx.req, core.tokens);

  core.http.addRoutes([
    {
      method: 'POST',
      path: '/v1/rooms',
      handler: async (ctx) => {
        const c = userToken(ctx);
        const body = await ctx.body();
        const title = body.title ?? '';
        if (typeof title !== 'string' || [...title].length > MAX_TITLE_CHARS)
          throw badRequest(`title is a string of at most ${MAX_TITLE_CHARS} characters`);
        const id = store.create(c.sub, title);
        core.log.info({ room: id, owner: c.sub }, 'room created');
        ctx.send(201, { id });
      },
    },
    {
      method: 'GET',
      path: '/v1/rooms',
      handler: (ctx) => ctx.send(200, { rooms: store.listOwned(userToken(ctx).sub) }),
    },
    {
      method: 'POST',
      path: '/v1/rooms/:id/invites',
      handler: async (ctx) => {
        const c = userToken(ctx);
        const room = ownedRoom(store, ctx, c);
        const body = await ctx.body();
        const invitee = body.invitee;
        if (typeof invitee !== 'string' || !invitee) throw badRequest('invitee is a user name');
        if (!core.users.lookup(invitee)) throw badRequest('the invitee must be a user of this core');
        const expiresIn = body.expires_in ?? DEFAULT_INVITE_SECONDS;
        if (typeof expiresIn !== 'number' || !Number.isInteger(expiresIn) || expiresIn < 1 || expiresIn > MAX_INVITE_SECONDS)
          throw badRequest(`expires_in is a whole number of seconds from 1 to ${MAX_INVITE_SECONDS}`);
        const { secret, expires } = store.invite(room.id, invitee, expiresIn);
        core.log.info({ room: room.id, invitee, expires }, 'invitation made'); // never the URL
        ctx.send(201, { url: `${baseOf(core, ctx)}${INVITE_PATH}${secret}`, invitee, expires });
      },
    },
    {
      method: 'GET',
      path: '/v1/rooms/:id/invites',
      handler: (ctx) => {
        const room = ownedRoom(store, ctx, userToken(ctx));
        ctx.send(200, { invites: store.listInvites(room.id) });
      },
    },
    {
      method: 'DELETE',
      path: '/v1/rooms/:id/invites/:invitee',
      handler: (ctx) => {
        const room = ownedRoom(store, ctx, userToken(ctx));
        const invitee = ctx.params.invitee!;
        const had = store.revokeInvite(room.id, invitee);
        // Revoking an invitation also removes what it admitted: tokens stamped with the
        // room end (signalling hears it through onRevoke), TURN credentials are not renewed.
        const n = core.tokens.revokeWhere((t) => t.room === room.id && t.sub === invitee);
        if (!had && n === 0) throw notFound('no invitation for this user');
        core.log.info({ room: room.id, invitee, tokens: n }, 'invitation revoked');
        ctx.res.writeHead(204, { 'cache-control': 'no-store' }).end();
      },
    },
    {
      method: 'DELETE',
      path: '/v1/rooms/:id/participants/:user',
      handler: (ctx) => {
        const room = ownedRoom(store, ctx, userToken(ctx));
        const user = ctx.params.user!;
        if (user === room.owner) throw badRequest('the owner cannot be removed from their room');
        store.revokeInvite(room.id, user);
        const n = core.tokens.revokeWhere((t) => t.room === room.id && t.sub === user);
        core.log.info({ room: room.id, user, tokens: n }, 'participant removed');
        ctx.res.writeHead(204, { 'cache-control': 'no-store' }).end();
      },
    },
    {
      // core.md §7: GET serves the web client and spends nothing (link previews).
      method: 'GET',
      path: `${INVITE_PATH}:secret`,
      handler: (ctx) => serveIndex(ctx.res, ctx.req.method),
    },
    {
      method: 'POST',
      path: `${INVITE_PATH}:secret`,
      handler: async (ctx) => {
        core.limiter.check(ctx.source);
        ctx.req.resume();
        // A bad token counts as a failed authentication (requireToken tells the limiter).
        const c = requireToken(ctx.req, core.tokens);
        // The invitee logs in first: their own user token (core.md §7).
        if (c.kind !== 'user' || c.conference !== undefined || c.room !== undefined) throw forbidden('log in as the invitee first');
        const secret = ctx.params.secret!;
        const inv = secret.length <= 100 ? store.lookup(secret) : null;
        if (!inv) {
          core.limiter.fail(ctx.source);
          throw notFound('no such invitation');
        }
        const now = Math.floor(core.clock.now() / 1000);
        if (inv.state !== 'live' || inv.expires <= now)
          throw gone(inv.state === 'live' ? 'this invitation has expired' : `this invitation was ${inv.state}`);
        // Anyone else: 403, and the URL stays valid for its invitee.
        if (c.sub !== inv.invitee) throw forbidden('this invitation is for someone else');
        // The directory's groups now, for the issue record (src/core/directory/groups.ts);
        // asked before the URL is spent, so a directory outage (503) leaves it valid.
        const groups = await issueGroups(core, c);
        if (!store.spend(secret)) throw gone('this invitation was spent');
        const { token } = core.tokens.issue({ kind: 'user', sub: c.sub, groups: c.groups, room: inv.room });
        core.log.info({ room: inv.room, user: c.sub }, 'invitation spent: admitted');
        ctx.send(200, {
          token,
          room: inv.room,
          turn: core.turn.issue({
            kind: 'user',
            user: c.sub,
            context: { room: inv.room, ...(c.org !== undefined ? { org: c.org } : {}), ...(groups !== undefined ? { groups } : {}) },
          }),
        });
      },
    },
  ]);
};
