import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { systemClock, type Clock } from '../../util/clock.js';
import { decryptConferenceKey, guestHa1, loadOrCreateFeKeys, validIdentity, RSA_BITS, type FeKeys } from './keys.js';
import { FeStore, MAX_IDENTITIES_PER_CONFERENCE, type ConferenceRow } from './store.js';

/** What the director asks of a front end, the same whether it runs in-process or over HTTP. */
export interface FeApi {
  info(): Promise<{ public_key: string; fingerprint: string }>;
  /** Decrypts `key` (RSA-OAEP) and stores the conference; K never leaves the FE. */
  createConference(req: { key: unknown; owner: string; title?: unknown; expires?: unknown }): Promise<{ id: string }>;
  conference(id: string): Promise<ConferenceRow | null>;
  /** HA1 (RFC 7616 §3.4.2) of identity for the conference, or null when there is no such conference. */
  ha1(id: string, identity: string): Promise<string | null>;
  /** Atomic claim of identity in the conference until `until` (Unix seconds). */
  claim(id: string, identity: string, holder: string, until: number): Promise<boolean>;
  release(id: string, identity: string, holder?: string | null): Promise<boolean>;
  /** Frees the claims of a director's earlier run (holders not prefixed `run.`). */
  releaseOthers(run: string): Promise<number>;
}

/** An FE refusal the director maps onto core.md §2 error codes. */
export class FeError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

const MAX_TITLE = 200;

/** One front end: its key pair, its store; used in-process (embedded default) and by `gatehouse core-fe`. */
export class FrontEnd implements FeApi {
  readonly keys: FeKeys;
  readonly store: FeStore;
  private claims = 0;

  constructor(
    dataDir: string,
    private readonly clock: Clock = systemClock,
    opts: { rsaBits?: number } = {},
  ) {
    this.keys = loadOrCreateFeKeys(dataDir, opts.rsaBits ?? RSA_BITS);
    this.store = new FeStore(join(dataDir, 'fe.sqlite'), this.keys.kek);
  }

  private nowS(): number {
    return Math.floor(this.clock.now() / 1000);
  }

  async info() {
    return { public_key: this.keys.publicPem, fingerprint: this.keys.fingerprint };
  }

  async createConference(req: { key: unknown; owner: string; title?: unknown; expires?: unknown }) {
    const { title, expires } = req;
    if (title !== undefined && title !== null && (typeof title !== 'string' || title.length > MAX_TITLE)) {
      throw new FeError(400, 'bad_request', `title: a string of at most ${MAX_TITLE} characters`);
    }
    // core.md §2: times are integer Unix seconds.
    if (expires !== undefined && expires !== null && (!Number.isSafeInteger(expires) || (expires as number) <= this.nowS())) {
      throw new FeError(400, 'bad_request', 'expires: integer Unix seconds in the future');
    }
    if (typeof req.owner !== 'string' || req.owner.length === 0) throw new FeError(400, 'bad_request', 'owner missing');
    const k = decryptConferenceKey(this.keys.privateKey, req.key);
    if (k === null) {
      throw new FeError(
        400,
        'bad_request',
        'key: base64 RSA-OAEP (SHA-256) of a conference key of 22 or more base64url characters, for this front end',
      );
    }
    const id = randomBytes(12).toString('base64url');
    try {
      this.store.addConference(
        {
          id,
          title: (title as string | undefined) ?? null,
          owner: req.owner,
          expires: (expires as number | undefined) ?? null,
          created: this.nowS(),
        },
        k,
      );
    } catch {
      throw new FeError(503, 'unavailable', 'the front end cannot store more conferences');
    }
    return { id };
  }

  private live(id: string): ConferenceRow | null {
    const c = this.store.conference(id);
    if (!c) return null;
    if (c.expires !== null && c.expires <= this.nowS()) return null;
    return c;
  }

  async conference(id: string) {
    return this.live(id);
  }

  async ha1(id: string, identity: string) {
    if (!validIdentity(identity)) throw new FeError(400, 'bad_request', 'identity: 1 to 64 characters, no "/", ":" or control characters');
    if (!this.live(id)) return null;
    const k = this.store.conferenceKey(id);
    return k === null ? null : guestHa1(identity, id, k);
  }

  async claim(id: string, identity: string, holder: string, until: number) {
    if (!validIdentity(identity)) throw new FeError(400, 'bad_request', 'identity: 1 to 64 characters, no "/", ":" or control characters');
    if (!this.live(id)) throw new FeError(404, 'not_found', 'no such conference');
    // Expired claims and conferences go now and then (the store stays bounded by what is live).
    if (++this.claims % 256 === 0) this.store.purgeExpired(this.nowS());
    const r = this.store.claim(id, identity, holder, until, this.nowS());
    if (r === 'full')
      throw new FeError(409, 'conference_full', `the conference holds its most identities (${MAX_IDENTITIES_PER_CONFERENCE})`);
    return r;
  }

  async release(id: string, identity: string, holder: string | null = null) {
    return this.store.release(id, identity, holder);
  }

  async releaseOthers(run: string) {
    if (!/^[A-Za-z0-9_-]{8,64}$/.test(run)) throw new FeError(400, 'bad_request', 'run: 8 to 64 base64url characters');
    return this.store.releaseOthers(run);
  }

  close(): void {
    this.store.close();
  }
}
