import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import type { QuotaStore, QuotaUsageRow } from '../policy/quota.js';

/**
 * The embedded store (contract.md: "an SQLite store in ./data"): SQLite in WAL mode,
 * synchronous=NORMAL: a committed transaction survives a kill -9 of the process (WAL
 * is written before commit returns; NORMAL only risks the last transactions on a
 * power loss, not on a process crash).
 */
export class SqliteStore implements QuotaStore {
  private readonly db: Database.Database;
  private readonly upsert: Database.Statement;
  private readonly select: Database.Statement;

  constructor(readonly path: string) {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    this.db = new Database(path);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = NORMAL');
    this.db.exec(`CREATE TABLE IF NOT EXISTS quota_usage (
      quota TEXT NOT NULL, subject TEXT NOT NULL, window TEXT NOT NULL,
      bytes INTEGER NOT NULL, crossed INTEGER NOT NULL DEFAULT 0,
      PRIMARY KEY (quota, subject, window))`);
    this.upsert = this.db.prepare(
      `INSERT INTO quota_usage (quota, subject, window, bytes, crossed) VALUES (@quota, @subject, @window, @bytes, @crossed)
       ON CONFLICT (quota, subject, window) DO UPDATE SET bytes = excluded.bytes, crossed = excluded.crossed`,
    );
    this.select = this.db.prepare(`SELECT quota, subject, window, bytes, crossed FROM quota_usage WHERE window = ?`);
  }

  load(windows: string[]): QuotaUsageRow[] {
    const out: QuotaUsageRow[] = [];
    for (const w of windows) {
      for (const r of this.select.all(w) as { quota: string; subject: string; window: string; bytes: number; crossed: number }[]) {
        out.push({ quota: r.quota, subject: r.subject, window: r.window, bytes: r.bytes, crossed: r.crossed === 1 });
      }
    }
    return out;
  }

  /** One transaction; throws SqliteError (code SQLITE_FULL, SQLITE_IOERR...) and then nothing was written. */
  save(rows: QuotaUsageRow[]): void {
    const tx = this.db.transaction((rs: QuotaUsageRow[]) => {
      for (const r of rs) this.upsert.run({ ...r, crossed: r.crossed ? 1 : 0 });
    });
    tx(rows);
  }

  /** Never throws (a checkpoint on a full disk may fail; the WAL keeps what was committed). */
  close(): void {
    try {
      this.db.close();
    } catch {
      /* committed transactions are in the WAL and are replayed at the next open */
    }
  }
}
