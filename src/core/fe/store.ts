import Database from 'better-sqlite3';
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync } from 'node:fs';
import { dirname } from 'node:path';

export interface ConferenceRow {
  id: string;
  title: string | null;
  owner: string;
  /** Unix seconds, or null: no expiry. */
  expires: number | null;
  created: number;
}

/** At most this many conferences per FE, and identities per conference (bounded store). */
export const MAX_CONFERENCES = 100_000;
export const MAX_IDENTITIES_PER_CONFERENCE = 1000;

/**
 * The FE's store (SQLite, WAL like src/store/sqlite.ts). Conference keys are kept only
 * encrypted: AES-256-GCM (NIST SP 800-38D) under the FE's key-encryption key, a fresh
 * 96-bit IV each, the conference id as additional authenticated data so that a row's
 * ciphertext cannot be moved to another conference.
 *
 * Guest identities (core.md §4.3: unique per conference) are rows keyed by
 * (conference, identity): a claim is one INSERT ... ON CONFLICT in one transaction, so
 * of two racing claims exactly one wins. A claim carries the expiry of the token it was
 * issued with; an expired claim is free.
 */
export class FeStore {
  private readonly db: Database.Database;
  private readonly insertConf: Database.Statement;
  private readonly selectConf: Database.Statement;
  private readonly selectKey: Database.Statement;
  private readonly countConf: Database.Statement;
  private readonly claimStmt: Database.Statement;
  private readonly countIds: Database.Statement;
  private readonly releaseStmt: Database.Statement;
  private readonly purgeStmt: Database.Statement;
  private readonly purgeConfStmt: Database.Statement;
  private readonly claimTx: (conference: string, identity: string, holder: string, until: number, now: number) => boolean | 'full';

  constructor(
    readonly path: string,
    private readonly kek: Buffer,
  ) {
    if (kek.length !== 32) throw new Error('FeStore: the key-encryption key must be 32 bytes');
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    const fresh = path !== ':memory:' && !existsSync(path);
    this.db = new Database(path);
    if (fresh) chmodSync(path, 0o600);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = NORMAL');
    this.db.exec(`CREATE TABLE IF NOT EXISTS conferences (
        id TEXT PRIMARY KEY, title TEXT, owner TEXT NOT NULL, expires INTEGER, created INTEGER NOT NULL,
        key_iv BLOB NOT NULL, key_ct BLOB NOT NULL, key_tag BLOB NOT NULL);
      CREATE TABLE IF NOT EXISTS identities (
        conference TEXT NOT NULL, identity TEXT NOT NULL, holder TEXT NOT NULL, until INTEGER NOT NULL,
        PRIMARY KEY (conference, identity));`);
    this.insertConf = this.db.prepare(
      `INSERT INTO conferences (id, title, owner, expires, created, key_iv, key_ct, key_tag) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
    );
    this.selectConf = this.db.prepare(`SELECT id, title, owner, expires, created FROM conferences WHERE id = ?`);
    this.selectKey = this.db.prepare(`SELECT key_iv, key_ct, key_tag FROM conferences WHERE id = ?`);
    this.countConf = this.db.prepare(`SELECT count(*) AS n FROM conferences`);
    this.countIds = this.db.prepare(`SELECT count(*) AS n FROM identities WHERE conference = ? AND until > ?`);
    this.claimStmt = this.db.prepare(
      `INSERT INTO identities (conference, identity, holder, until) VALUES (?, ?, ?, ?)
       ON CONFLICT (conference, identity) DO UPDATE SET holder = excluded.holder, until = excluded.until
       WHERE identities.until <= ?`,
    );
    this.releaseStmt = this.db.prepare(`DELETE FROM identities WHERE conference = ? AND identity = ? AND (? IS NULL OR holder = ?)`);
    this.purgeStmt = this.db.prepare(`DELETE FROM identities WHERE until <= ?`);
    this.purgeConfStmt = this.db.prepare(`DELETE FROM conferences WHERE expires IS NOT NULL AND expires <= ?`);
    this.claimTx = this.db.transaction((conference: string, identity: string, holder: string, until: number, now: number) => {
      if ((this.countIds.get(conference, now) as { n: number }).n >= MAX_IDENTITIES_PER_CONFERENCE) return 'full';
      return this.claimStmt.run(conference, identity, holder, until, now).changes === 1;
    });
  }

  conferenceCount(): number {
    return (this.countConf.get() as { n: number }).n;
  }

  addConference(row: ConferenceRow, k: string): void {
    if (this.conferenceCount() >= MAX_CONFERENCES) throw new Error('FeStore: conference limit reached');
    const iv = randomBytes(12);
    const c = createCipheriv('aes-256-gcm', this.kek, iv);
    c.setAAD(Buffer.from(row.id, 'utf8'));
    const ct = Buffer.concat([c.update(k, 'utf8'), c.final()]);
    this.insertConf.run(row.id, row.title, row.owner, row.expires, row.created, iv, ct, c.getAuthTag());
  }

  conference(id: string): ConferenceRow | null {
    const r = this.selectConf.get(id) as ConferenceRow | undefined;
    return r ?? null;
  }

  /** K in the clear, for computing HA1 inside the FE only; null when there is no such conference. */
  conferenceKey(id: string): string | null {
    const r = this.selectKey.get(id) as { key_iv: Buffer; key_ct: Buffer; key_tag: Buffer } | undefined;
    if (!r) return null;
    const d = createDecipheriv('aes-256-gcm', this.kek, r.key_iv);
    d.setAAD(Buffer.from(id, 'utf8'));
    d.setAuthTag(r.key_tag);
    return Buffer.concat([d.update(r.key_ct), d.final()]).toString('utf8');
  }

  /** Atomic: true when this holder now holds the identity until `until` (Unix seconds). */
  /** true: claimed; false: the identity is held; 'full': the conference holds MAX_IDENTITIES_PER_CONFERENCE. */
  claim(conference: string, identity: string, holder: string, until: number, now: number): boolean | 'full' {
    return this.claimTx(conference, identity, holder, until, now);
  }

  /** Frees an identity (its holder left or was removed); holder null: whoever holds it. */
  release(conference: string, identity: string, holder: string | null = null): boolean {
    return this.releaseStmt.run(conference, identity, holder, holder).changes > 0;
  }

  /**
   * Frees every claim whose holder does not start with `keep` + "." (the claims of a
   * director's previous run: its tokens died with it). Returns how many.
   */
  releaseOthers(keep: string): number {
    return this.db.prepare(`DELETE FROM identities WHERE substr(holder, 1, ?) != ?`).run(keep.length + 1, `${keep}.`).changes;
  }

  /** Drops expired identity claims and expired conferences (with their keys). */
  purgeExpired(now: number): number {
    const n = this.purgeStmt.run(now).changes;
    return n + this.purgeConfStmt.run(now).changes;
  }

  /** For tests of encryption at rest: the raw stored row. */
  rawKeyRow(id: string): { key_iv: Buffer; key_ct: Buffer; key_tag: Buffer } | null {
    return (this.selectKey.get(id) as { key_iv: Buffer; key_ct: Buffer; key_tag: Buffer } | undefined) ?? null;
  }

  close(): void {
    try {
      this.db.close();
    } catch {
      /* committed transactions are in the WAL */
    }
  }
}
