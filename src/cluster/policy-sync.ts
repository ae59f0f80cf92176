/**
 * Policy distribution (issue 14, README "Cluster"): a successful reload on one gateway
 * applies on all, with the same validation.
 *
 * - A node whose own rule files reload successfully (POST /v1/policy/reload or the file
 *   watcher) publishes them: the rule files' text and the `sha256_list` files they name by
 *   a relative path, as one bundle with its SHA-256. A broken file is refused there by the
 *   loader and nothing is published.
 * - Redis keys (prefix `store.key_prefix`): `policy` (a hash: version, hash, origin, at,
 *   bundle) and `policy:version` (INCR), written together by one Lua script that also
 *   PUBLISHes `version hash` on the channel `policy`: the last reload wins.
 * - Every other node (on the message, every POLL_MS, and when Redis comes back) reads a
 *   newer version, writes the bundle under DATA_DIR/cluster-policy/ and loads that folder
 *   with the same loader (src/policy/loader.ts loadPolicy, the same scanner capabilities);
 *   valid: applied in place of its rules (live flows judged by them from the next
 *   decision); invalid: its rules stay, the problem is logged and counted.
 * - The newest policy wins. Each node knows the time of the rules in force: a reload's
 *   time, the cluster time of an applied policy, or at start 0 (its own files are older
 *   than any cluster policy). A node joining (or seeing Redis come back, or finding the cluster's
 *   key gone) publishes its rules only when the cluster has none or older ones (one Lua
 *   compare-and-set on the time), and otherwise takes the cluster's. So a reload made
 *   while Redis was away is published when it is back, unless a newer one was made.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, isAbsolute, join, normalize, relative, sep } from 'node:path';
import type { ClusterLink } from './link.js';
import type { Logger } from '../util/log.js';
import { loadPolicy, type PolicyHolder } from '../policy/loader.js';
import type { PolicyEngine } from '../policy/engine.js';
import { ConfigError } from '../util/errors.js';

/** How often a node looks for a newer cluster policy besides the pub/sub message. */
export const POLL_MS = 5000;
/** A bundle (rule files and hash lists) is at most this big; a larger one is not distributed. */
export const MAX_BUNDLE_BYTES = 8 * 1024 * 1024;
/** Rule files in a bundle at most. */
export const MAX_BUNDLE_FILES = 256;

export interface PolicyBundle {
  files: { name: string; text: string }[];
  lists: { path: string; text: string }[];
}

export interface ClusterPolicy {
  version: number;
  hash: string;
  origin: string;
  at: string;
}

export interface PolicySyncStats {
  /** Version of the cluster policy in force here (0: this node's own files, never published). */
  version: number;
  published: number;
  applied: number;
  rejected: number;
  /** The last rejection's problem (no secret is in a rule file), or null. */
  lastProblem: string | null;
}

/** SHA-256 of the bundle's canonical JSON (files and lists in their order). */
export function bundleHash(b: PolicyBundle): string {
  return createHash('sha256')
    .update(JSON.stringify({ files: b.files, lists: b.lists }))
    .digest('hex');
}

const FILE_NAME_RE = /^[A-Za-z0-9._-]{1,128}\.ya?ml$/;

/** A list path kept inside the bundle's folder: relative, normalised, no `..`. */
function safeListPath(p: string): string | null {
  if (isAbsolute(p) || p.includes('\0')) return null;
  const n = normalize(p);
  if (n === '.' || n.startsWith('..') || n.split(sep).includes('..')) return null;
  return n;
}

/**
 * The bundle of the rule files in force here: their text, and the relative `sha256_list`
 * files they name (absolute ones are read by each node from its own disk). Throws when a
 * list leaves the rules folder or the bundle is too big: it cannot be distributed.
 */
export function snapshotBundle(path: string, files: readonly string[], engine: PolicyEngine): PolicyBundle {
  const dirMode = files.length !== 1 || files[0] !== path || statSync(path).isDirectory();
  const base = dirMode ? path : dirname(path);
  let bytes = 0;
  const count = (s: string) => {
    bytes += Buffer.byteLength(s);
    if (bytes > MAX_BUNDLE_BYTES) throw new Error(`the rules are larger than ${MAX_BUNDLE_BYTES} bytes`);
    return s;
  };
  if (files.length > MAX_BUNDLE_FILES) throw new Error(`more than ${MAX_BUNDLE_FILES} rule files`);
  const out: PolicyBundle = {
    files: files.map((f) => ({ name: dirMode ? relative(path, f) : basename(f), text: count(readFileSync(f, 'utf8')) })),
    lists: [],
  };
  const seen = new Set<string>();
  for (const r of engine.rules) {
    const l = r.when.sha256_list;
    if (!l || isAbsolute(l) || seen.has(l)) continue;
    seen.add(l);
    if (!safeListPath(l))
      throw new Error(`sha256_list ${JSON.stringify(l)} leaves the rules folder: use an absolute path present on every node`);
    out.lists.push({ path: l, text: count(readFileSync(join(base, l), 'utf8')) });
  }
  return out;
}

/**
 * Writes a bundle into a fresh folder under root and loads it with the loader every node
 * uses; returns the engine, the folder and the files, or throws the loader's problem
 * (file:line:column: key: problem, with the file named as in the bundle).
 */
export async function validateBundle(
  b: PolicyBundle,
  root: string,
  caps: PolicyHolder['capabilities'],
): Promise<{ engine: PolicyEngine; dir: string; files: string[] }> {
  if (!Array.isArray(b.files) || !Array.isArray(b.lists) || b.files.length > MAX_BUNDLE_FILES) throw new Error('not a policy bundle');
  mkdirSync(root, { recursive: true, mode: 0o700 });
  const dir = join(root, `.incoming-${randomBytes(6).toString('hex')}`);
  mkdirSync(dir, { mode: 0o700 });
  try {
    let bytes = 0;
    for (const f of b.files) {
      if (typeof f?.name !== 'string' || typeof f.text !== 'string' || !FILE_NAME_RE.test(f.name))
        throw new Error(`bad rule file name ${JSON.stringify(String(f?.name)).slice(0, 140)}`);
      bytes += Buffer.byteLength(f.text);
      writeFileSync(join(dir, f.name), f.text, { mode: 0o600, flag: 'wx' });
    }
    for (const l of b.lists) {
      const p = typeof l?.path === 'string' ? safeListPath(l.path) : null;
      if (!p || typeof l.text !== 'string') throw new Error(`bad sha256_list path ${JSON.stringify(String(l?.path)).slice(0, 140)}`);
      bytes += Buffer.byteLength(l.text);
      mkdirSync(dirname(join(dir, p)), { recursive: true, mode: 0o700 });
      writeFileSync(join(dir, p), l.text, { mode: 0o600 });
    }
    if (bytes > MAX_BUNDLE_BYTES) throw new Error(`the bundle is larger than ${MAX_BUNDLE_BYTES} bytes`);
    const { engine, files } = await loadPolicy(dir, caps);
    return { engine, dir, files };
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    const msg = err instanceof ConfigError || err instanceof Error ? err.message : String(err);
    throw new Error(
      msg
        .split(dir + sep)
        .join('')
        .split(dir)
        .join('.'),
    );
  }
}

/**
 * Lua: a publication with its version (INCR), hash, origin, time and bundle, and the
 * notice on the channel, atomically. With ARGV[5] = '1' only when the policy in Redis is
 * older than ARGV[3] (ISO 8601 times of one format compare as strings); 0: not written.
 */
const PUBLISH_LUA = `
if ARGV[5] == '1' then
  local cur = redis.call('HGET', KEYS[2], 'at')
  if cur and cur >= ARGV[3] then return 0 end
end
local v = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], 'version', v, 'hash', ARGV[1], 'origin', ARGV[2], 'at', ARGV[3], 'bundle', ARGV[4])
redis.call('PUBLISH', KEYS[3], v .. ' ' .. ARGV[1])
return v`;

export interface PolicySyncOptions {
  link: ClusterLink;
  holder: PolicyHolder;
  /** DATA_DIR: validated cluster policies are kept in DATA_DIR/cluster-policy/<hash>. */
  dataDir: string;
  log?: Logger;
  pollMs?: number;
  now?: () => number;
}

export type PublishResult = { published: true; version: number } | { published: false; reason: string; version?: undefined };

export class PolicySync {
  readonly stats: PolicySyncStats = { version: 0, published: 0, applied: 0, rejected: 0, lastProblem: null };
  private readonly link: ClusterLink;
  private readonly holder: PolicyHolder;
  private readonly root: string;
  private readonly log: Logger | undefined;
  private readonly now: () => number;
  /** Hash and time (ms) of the rules in force here; hash null: they cannot be distributed. */
  private hash: string | null = null;
  private at = 0;
  /** The bundle of the rules in force (this node's files or the cluster's), published on demand. */
  private own: PolicyBundle | null = null;
  /** A cluster policy that did not validate here (not retried until it changes). */
  private rejectedHash: string | null = null;
  private chain: Promise<unknown> = Promise.resolve();
  private lastPublish: Promise<PublishResult> | null = null;
  private timer: NodeJS.Timeout | null = null;
  private unsubscribe: (() => void) | null = null;
  private closed = false;
  /** Where the rules in force came from in the cluster (for /v1/cluster). */
  private current: ClusterPolicy | null = null;

  constructor(private readonly opts: PolicySyncOptions) {
    this.link = opts.link;
    this.holder = opts.holder;
    this.root = join(opts.dataDir, 'cluster-policy');
    this.log = opts.log;
    this.now = opts.now ?? Date.now;
  }

  start(): void {
    // At start this node's own files count as older than any cluster policy: a node that
    // joins takes the cluster's; only a reload puts a node's files in force everywhere.
    this.takeOwn(0);
    this.holder.onReloaded(() => {
      this.takeOwn(this.now());
      this.lastPublish = this.serial(() => this.publish(false)).catch((err: unknown): PublishResult => ({
        published: false,
        reason: (err as Error).message,
      }));
    });
    this.unsubscribe = this.link.subscribe('policy', () => this.kick());
    this.link.on('up', this.onUp);
    if (this.link.up) this.kick();
    this.timer = setInterval(() => this.kick(), this.opts.pollMs ?? POLL_MS);
    this.timer.unref();
  }

  private readonly onUp = (): void => this.kick();

  /** One sync, queued; a failure is logged, never an unhandled rejection. */
  private kick(): void {
    this.serial(() => this.sync()).catch((err: unknown) => this.log?.warn({ err: (err as Error).message }, 'cluster policy sync failed'));
  }

  /** The rules in force are this node's own files (at start, after a reload). */
  private takeOwn(at: number): void {
    this.at = at;
    this.current = null;
    try {
      this.own = snapshotBundle(this.holder.path, this.holder.files, this.holder.current);
      this.hash = bundleHash(this.own);
      this.ownProblem = null;
    } catch (err) {
      this.own = null;
      this.hash = null;
      this.ownProblem = (err as Error).message;
    }
  }

  private ownProblem: string | null = null;

  /** Runs one step at a time (messages, polls and reloads never interleave). */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.chain.then(fn, fn);
    this.chain = p.catch(() => {});
    return p;
  }

  /** The cluster policy in force here: version (0: none), hash, origin, time. */
  info(): { version: number; hash: string | null; origin: string | null; at: string | null } {
    return {
      version: this.stats.version,
      hash: this.hash,
      origin: this.current?.origin ?? (this.hash ? this.link.nodeId : null),
      at: this.at ? new Date(this.at).toISOString() : null,
    };
  }

  /**
   * POST /v1/policy/reload with the cluster: the local reload, then whether it was
   * published (a broken file: refused here, nothing published).
   */
  async reload(): Promise<{ ok: boolean; message: string; rules?: number; files?: string[]; cluster?: PublishResult }> {
    this.lastPublish = null;
    const r = await this.holder.reload();
    const published = this.lastPublish as Promise<PublishResult> | null; // set by the onReloaded hook
    if (!r.ok || !published) return r;
    const cluster = await published;
    const message = cluster.published
      ? `${r.message}; published to the cluster as version ${cluster.version}`
      : `${r.message}; applied here, not distributed: ${cluster.reason}`;
    return { ...r, message, cluster };
  }

  private async read(): Promise<(ClusterPolicy & { bundle: string }) | null> {
    const h = await this.link.redis.hgetall(this.link.key('policy'));
    const version = Number(h.version);
    if (!h.hash || !Number.isSafeInteger(version) || typeof h.bundle !== 'string') return null;
    return { version, hash: h.hash, origin: h.origin ?? '?', at: h.at ?? '', bundle: h.bundle };
  }

  /**
   * Brings this node and the cluster together: the cluster's policy when it is newer
   * than the rules in force here (validated first), ours when the cluster has none or
   * an older one.
   */
  async sync(): Promise<void> {
    if (!this.link.up || this.closed) return;
    let cur: Awaited<ReturnType<PolicySync['read']>>;
    try {
      cur = await this.read();
    } catch {
      return;
    }
    if (cur && cur.hash === this.hash) {
      this.stats.version = cur.version;
      if (cur.origin !== this.link.nodeId) this.current = cur;
      return;
    }
    const curAt = cur ? Date.parse(cur.at) || 0 : -1;
    if (curAt < this.at && this.hash) {
      const r = await this.publish(true);
      if (r.published) return;
      try {
        cur = await this.read(); // a newer one came first
      } catch {
        return;
      }
      if (!cur || cur.hash === this.hash) return;
    }
    if (cur && cur.hash !== this.rejectedHash) await this.apply(cur);
  }

  private async apply(cur: ClusterPolicy & { bundle: string }): Promise<void> {
    let problem: string;
    try {
      // JSON escaping can double the text; anything larger is not ours to parse.
      if (cur.bundle.length > 2 * MAX_BUNDLE_BYTES + 65536) throw new Error('the bundle is too large');
      const bundle = JSON.parse(cur.bundle) as PolicyBundle;
      if (bundleHash(bundle) !== cur.hash) throw new Error('the bundle does not match its hash');
      const { engine, dir, files } = await validateBundle(bundle, this.root, this.holder.capabilities);
      const keep = join(this.root, cur.hash.slice(0, 16));
      rmSync(keep, { recursive: true, force: true });
      renameSync(dir, keep);
      this.prune(keep);
      this.holder.adopt(
        engine,
        files.map((f) => join(keep, relative(dir, f))),
        `${cur.origin} v${cur.version}`,
      );
      this.hash = cur.hash;
      this.at = Date.parse(cur.at) || this.now();
      this.own = bundle;
      this.current = cur;
      this.stats.version = cur.version;
      this.stats.applied++;
      return;
    } catch (err) {
      problem = (err as Error).message;
    }
    this.rejectedHash = cur.hash;
    this.stats.rejected++;
    this.stats.lastProblem = problem;
    this.log?.error(
      { version: cur.version, origin: cur.origin, problem },
      'cluster policy refused: it does not validate here; the rules in force stay',
    );
  }

  /** Only the policy in force is kept on disk. */
  private prune(keep: string): void {
    try {
      for (const e of readdirSync(this.root)) {
        const p = join(this.root, e);
        if (p !== keep && !e.startsWith('.incoming-')) rmSync(p, { recursive: true, force: true });
      }
    } catch {
      /* best effort */
    }
  }

  /**
   * Publishes the rules in force here. `ifNewer`: only over an older cluster policy (a
   * join); else unconditionally (a reload here is the newest decision).
   */
  private async publish(ifNewer: boolean): Promise<PublishResult> {
    const bundle = this.own;
    if (!bundle || !this.hash) {
      const reason = this.ownProblem ?? 'nothing to publish';
      this.log?.warn({ problem: reason }, 'policy in force here is not distributed');
      return { published: false, reason };
    }
    try {
      // The same validation the receivers run, on the very text published.
      const v = await validateBundle(bundle, this.root, this.holder.capabilities);
      rmSync(v.dir, { recursive: true, force: true });
    } catch (err) {
      const reason = (err as Error).message;
      this.log?.warn({ problem: reason }, 'policy reloaded here but not distributed');
      return { published: false, reason };
    }
    if (!this.link.up) {
      this.log?.warn({}, 'policy reloaded here; redis unavailable: published when it is back');
      return { published: false, reason: 'redis unavailable (published when it is back)' };
    }
    try {
      const at = new Date(this.at).toISOString();
      const version = Number(
        await this.link.redis.eval(
          PUBLISH_LUA,
          3,
          this.link.key('policy:version'),
          this.link.key('policy'),
          this.link.key('policy'),
          this.hash,
          this.current?.origin ?? this.link.nodeId,
          at,
          JSON.stringify(bundle),
          ifNewer ? '1' : '0',
        ),
      );
      if (version === 0) return { published: false, reason: 'the cluster has a newer policy' };
      this.stats.version = version;
      this.stats.published++;
      this.log?.info({ version, hash: this.hash.slice(0, 16) }, 'policy published to the cluster');
      return { published: true, version };
    } catch (err) {
      return { published: false, reason: `redis: ${(err as Error).message}` };
    }
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    this.unsubscribe?.();
    this.link.off('up', this.onUp);
  }
}
