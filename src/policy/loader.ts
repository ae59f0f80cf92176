import { existsSync, watch, type FSWatcher } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { Logger } from '../util/log.js';
import { ConfigError } from '../util/errors.js';
import { PolicyEngine } from './engine.js';
import { loadRuleFile, ruleFilesAt, type RuleCapabilities } from './rules-schema.js';

/**
 * Loads the rule set from a file or folder and keeps the live engine. A reload that
 * fails (a broken file) keeps the rules in force and says why; live flows read
 * `current` on every decision, so a new rule set applies without dropping them.
 */
export async function loadPolicy(path: string, caps: RuleCapabilities = {}): Promise<{ engine: PolicyEngine; files: string[] }> {
  if (!existsSync(path)) return { engine: new PolicyEngine([]), files: [] };
  const files = ruleFilesAt(path);
  const parsed = files.map((f) => loadRuleFile(f, caps));
  const engine = new PolicyEngine(parsed);
  // Hash-list paths are relative to the rule file that names them; resolve against the folder.
  const base = files.length === 1 && files[0] === path ? dirname(path) : path;
  await engine.loadHashLists((p) => resolve(base, p));
  return { engine, files };
}

export class PolicyHolder {
  private watcher: FSWatcher | undefined;
  private timer: NodeJS.Timeout | undefined;
  private listeners: ((e: PolicyEngine) => void)[] = [];
  private reloadedListeners: ((e: PolicyEngine, files: string[]) => void)[] = [];

  private constructor(
    readonly path: string,
    public current: PolicyEngine,
    public files: string[],
    private readonly log: Logger,
    private readonly caps: RuleCapabilities = {},
  ) {}

  /**
   * Loads at start: a broken rule file stops the start (the caller reports it), and so does
   * a `scan:` rule whose scanner is not configured (caps.scanners).
   */
  static async open(path: string, log: Logger, caps: RuleCapabilities = {}): Promise<PolicyHolder> {
    const { engine, files } = await loadPolicy(path, caps);
    if (!files.length) log.warn({ path }, 'no rule files: every flow is relayed without policy');
    return new PolicyHolder(path, engine, files, log, caps);
  }

  onChange(fn: (e: PolicyEngine) => void): void {
    this.listeners.push(fn);
  }

  /**
   * Called after a successful reload of this node's own rule files (not after adopt()):
   * the cluster publishes them (src/cluster/policy-sync.ts).
   */
  onReloaded(fn: (e: PolicyEngine, files: string[]) => void): void {
    this.reloadedListeners.push(fn);
  }

  /** The capabilities rule files are validated against (the same for rules from the cluster). */
  get capabilities(): RuleCapabilities {
    return this.caps;
  }

  /**
   * Puts in force a rule set validated elsewhere with loadPolicy (the cluster's, issue 14);
   * `files` names where it came from. The change listeners run as for a reload.
   */
  adopt(engine: PolicyEngine, files: string[], from: string): void {
    this.current = engine;
    this.files = files;
    for (const l of this.listeners) l(engine);
    this.log.info({ rules: engine.rules.length, files: files.length, from }, 'policy applied from the cluster');
  }

  async reload(): Promise<{ ok: boolean; message: string; rules?: number; files?: string[] }> {
    try {
      const { engine, files } = await loadPolicy(this.path, this.caps);
      this.current = engine;
      this.files = files;
      for (const l of this.listeners) l(engine);
      for (const l of this.reloadedListeners) l(engine, files);
      this.log.info({ rules: engine.rules.length, files: files.length }, 'policy reloaded');
      return { ok: true, message: `loaded ${engine.rules.length} rules from ${files.length} files`, rules: engine.rules.length, files };
    } catch (err) {
      const message = err instanceof ConfigError ? err.message : (err as Error).message;
      this.log.error({ problem: message }, 'policy reload failed; the previous rules stay in force');
      return { ok: false, message: `${message} (previous rules kept)` };
    }
  }

  /** Reloads when a rule file changes (debounced: editors write in several steps). */
  watch(): void {
    if (!existsSync(this.path)) return;
    this.watcher = watch(this.path, { persistent: false }, () => {
      clearTimeout(this.timer);
      this.timer = setTimeout(() => void this.reload(), 200);
      this.timer.unref();
    });
    this.watcher.on('error', (err) => this.log.warn({ err: err.message }, 'rule watch failed'));
  }

  close(): void {
    clearTimeout(this.timer);
    this.watcher?.close();
  }
}
