import { createHash } from 'node:crypto';
import { readdirSync, realpathSync, statSync } from 'node:fs';
import { extname, join, sep } from 'node:path';
import { listFiles, readRecordings, verifyRecordings } from '../record/manifest.js';

/**
 * The dashboard's view of the recordings directory: each recording with its playable
 * media files and its `gatehouse verify` status (verifyRecordings, the same check as the
 * CLI; never reimplemented here), and the safe path of one media file.
 */

/** Media types the dashboard serves (only these: pcaps, transcripts and files stay on disk). */
export const MEDIA_TYPES: Readonly<Record<string, string>> = {
  '.opus': 'audio/ogg', // RFC 7845 §9: Ogg Opus is audio/ogg
  '.ogg': 'audio/ogg',
  '.oga': 'audio/ogg',
  '.webm': 'video/webm',
};

const ID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const FILE_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export interface RecordingView {
  id: string;
  user: string | null;
  flow: string | number | null;
  started: string;
  ended: string;
  incomplete: string | null;
  recovered: boolean;
  bytes: number;
  media: { file: string; type: string; size: number }[];
  verify: { ok: boolean; problems: string[] };
}

export interface RecordingsList {
  recordings: RecordingView[];
  unsealed: string[];
  /** Problems of the directory as a whole (chain head, anchor, stray files). */
  problems: string[];
  ok: boolean;
}

/**
 * Newest `max` recordings first. verify hashes every file, so it runs again only when the
 * directory changed (names, sizes, modification times of every file: a stat walk, no
 * reading), at most every `cacheMs`, and in any case every `maxAgeMs` (a change that
 * keeps size and mtime is caught then).
 */
export class RecordingsView {
  private cache: { at: number; verified: number; fp: string; value: RecordingsList } | null = null;
  constructor(
    readonly dir: string,
    private readonly cacheMs = 3000,
    private readonly max = 200,
    private readonly now: () => number = Date.now,
    private readonly maxAgeMs = 300_000,
  ) {}

  /** What the directory holds, cheaply: every file's name, size and mtime. */
  private fingerprint(): string {
    const h = createHash('sha256');
    try {
      for (const ent of readdirSync(this.dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
        const base = join(this.dir, ent.name);
        const files = ent.isDirectory() ? ['manifest.json', ...listFiles(base)].map((f) => join(ent.name, f)) : [ent.name];
        for (const f of files) {
          try {
            const st = statSync(join(this.dir, f));
            h.update(`${f}\0${st.size}\0${st.mtimeMs}\n`);
          } catch {
            h.update(`${f}\0-\n`);
          }
        }
      }
    } catch {
      h.update('unreadable');
    }
    return h.digest('hex');
  }

  list(): RecordingsList {
    const now = this.now();
    if (this.cache && now - this.cache.at < this.cacheMs) return this.cache.value;
    const fp = this.fingerprint();
    if (this.cache && this.cache.fp === fp && now - this.cache.verified < this.maxAgeMs) {
      this.cache.at = now;
      return this.cache.value;
    }
    const { sealed, unsealed } = readRecordings(this.dir);
    const v = verifyRecordings(this.dir);
    const mine = (id: string, p: string) => p.startsWith(`${id}/`) || p.startsWith(`${id}:`);
    const ids = sealed.map((r) => r.id);
    const recordings = sealed
      .slice(-this.max)
      .reverse()
      .map((r): RecordingView => {
        const m = r.manifest;
        const media = Object.entries(m.files)
          .filter(([f]) => MEDIA_TYPES[extname(f).toLowerCase()] && FILE_RE.test(f))
          .map(([f, e]) => ({ file: f, type: MEDIA_TYPES[extname(f).toLowerCase()]!, size: e.size }));
        const problems = v.problems.filter((p) => mine(r.id, p));
        const flow = m.flow ?? {};
        let bytes = 0;
        for (const e of Object.values(m.files)) bytes += e.size;
        return {
          id: r.id,
          user: typeof flow.user === 'string' ? flow.user : null,
          flow: typeof flow.flowId === 'string' || typeof flow.flowId === 'number' ? flow.flowId : null,
          started: m.startedAt,
          ended: m.endedAt,
          incomplete: m.incomplete?.reason ?? null,
          recovered: !!m.recovered,
          bytes,
          media,
          verify: { ok: problems.length === 0, problems },
        };
      });
    // A recording still being written has no manifest yet: that is not a failed seal.
    const problems = v.problems.filter((p) => !ids.some((id) => mine(id, p)) && !unsealed.some((u) => mine(u, p)));
    const value = { recordings, unsealed, problems, ok: problems.length === 0 && recordings.every((r) => r.verify.ok) };
    this.cache = { at: now, verified: now, fp, value };
    return value;
  }

  /**
   * The path of a media file of a recording, or null. The id and name are checked against
   * strict patterns (no separators, no leading dot), the extension must be a served media
   * type, and the resolved real path (symlinks followed) must stay inside the directory.
   */
  mediaPath(id: string, file: string): { path: string; type: string; size: number } | null {
    if (!ID_RE.test(id) || !FILE_RE.test(file) || id.includes('..') || file.includes('..')) return null;
    const type = MEDIA_TYPES[extname(file).toLowerCase()];
    if (!type) return null;
    let root: string;
    let real: string;
    try {
      root = realpathSync(this.dir);
      real = realpathSync(join(this.dir, id, file));
    } catch {
      return null;
    }
    if (!real.startsWith(root + sep)) return null;
    try {
      const st = statSync(real);
      if (!st.isFile()) return null;
      return { path: real, type, size: st.size };
    } catch {
      return null;
    }
  }
}

/**
 * The recordings of several directories as one list (issue 13: with relay workers each
 * worker records into its own DATA_DIR/workers/<i>/recordings, each its own
 * tamper-evident chain, and worker 0's dashboard shows them all). With one directory it is
 * that directory's view unchanged; with more, each recording names its `worker` and each
 * problem starts with `worker <i>: `.
 */
export class RecordingsViews {
  private readonly views: { worker: number; view: RecordingsView }[];
  constructor(
    dirs: readonly string[],
    private readonly max = 200,
  ) {
    this.views = dirs.map((dir, worker) => ({ worker, view: new RecordingsView(dir, 3000, max) }));
  }

  list(): RecordingsList & { recordings: (RecordingView & { worker?: number })[] } {
    if (this.views.length === 1) return this.views[0]!.view.list();
    const lists = this.views.map(({ worker, view }) => ({ worker, l: view.list() }));
    const recordings = lists
      .flatMap(({ worker, l }) => l.recordings.map((r) => ({ ...r, worker })))
      .sort((a, b) => (a.started < b.started ? 1 : a.started > b.started ? -1 : 0))
      .slice(0, this.max);
    return {
      recordings,
      unsealed: lists.flatMap(({ l }) => l.unsealed),
      problems: lists.flatMap(({ worker, l }) => l.problems.map((p) => `worker ${worker}: ${p}`)),
      ok: lists.every(({ l }) => l.ok),
    };
  }

  /** The media file of a recording in whichever directory holds it (ids are unique: time, flow, random). */
  mediaPath(id: string, file: string): { path: string; type: string; size: number } | null {
    for (const { view } of this.views) {
      const f = view.mediaPath(id, file);
      if (f) return f;
    }
    return null;
  }
}
