import { BlockList, isIP } from 'node:net';
import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';
import { MultiMatcher } from './matcher.js';
import { globRegExp, type Rule, type RuleFile, type ScannerKind } from './rules-schema.js';

/**
 * Policy evaluation (contract.md "Rules"): inspection emits what it saw, this module
 * decides. It parses no packets: it judges subjects (a data-channel message, a file,
 * DTLS application data, a media stream) in the context of their flow.
 *
 * Semantics (all-match): every rule whose selectors and conditions all hold matches,
 * and each match is reported. The verdict for the subject is the strongest matched
 * action: block > drop > record > alert > forward. Within one rule, the selectors
 * (user, group, guest, conference, peer, channel, direction, label, protocol, media,
 * codec) must all hold,
 * and each listed condition must hold (a list inside one condition is "any of").
 */
export type Action = 'block' | 'drop' | 'record' | 'alert';
export type VerdictAction = Action | 'forward';
export const ACTION_RANK: Record<VerdictAction, number> = { forward: 0, alert: 1, record: 2, drop: 3, block: 4 };

export interface FlowContext {
  user?: string;
  groups: readonly string[];
  /** The peer's IP address (the remote side of the relayed flow). */
  peerIp?: string;
  /** A conference guest (core.md §8: TURN REST `EXPIRY:guest/CONFERENCE/IDENTITY`). */
  guest?: boolean;
  /** The core conference of the flow's credential. */
  conference?: string;
  /** The core room of the flow's credential (core.md §7). */
  room?: string;
  /** The organisation of a user admitted by authentication transfer (core.md §6). */
  org?: string;
}

export interface Subject {
  kind: 'message' | 'file' | 'appdata' | 'media';
  /** to_peer: from the gateway's client toward the peer; from_peer: the reverse. */
  direction: 'to_peer' | 'from_peer';
  label?: string;
  protocol?: string;
  data?: Uint8Array;
  size: number;
  sha256?: string;
  fileType?: string;
  mediaKind?: 'audio' | 'video';
  codec?: string;
  /** A file reassembled from a data-channel transfer (issue 9): what `scan` rules look at. */
  transfer?: boolean;
  /** A message of a transfer under way or announced: scanned as part of the whole, not on its own. */
  inTransfer?: boolean;
}

export interface Match {
  rule: Rule;
  action: Action;
}
/**
 * A rule whose selectors and other conditions hold for a file, and whose remaining
 * condition is `scan`: the engine is synchronous and knows no sockets, so it only marks
 * the file as "needs scan"; the gateway runs the scan and applies `action` when the
 * scanner says infected (or unscanned, fail_open false).
 */
export interface ScanMatch {
  rule: Rule;
  action: Action;
  scanner: ScannerKind;
}
export interface Verdict {
  action: VerdictAction;
  matches: Match[];
  /** Files only: rules that match once a scanner finds the file infected. */
  scans?: ScanMatch[];
}
/** How much of a message `regex` conditions look at (contains/contains_text see all of it). */
export const REGEX_SCAN_BYTES = 64 * 1024;

export const FORWARD: Verdict = Object.freeze({ action: 'forward', matches: [] }) as Verdict;

/** What PolicyEngine.evaluate gathers while it visits the rules. */
interface Evaluation {
  best: VerdictAction;
  matches: Match[] | undefined;
  scans: ScanMatch[] | undefined;
}

interface Compiled {
  rule: Rule;
  index: number;
  needsContent: boolean; // has contains/contains_text
  users: Set<string> | null;
  groups: Set<string> | null;
  peers: BlockList | null;
  labels: Set<string> | null;
  protocols: Set<string> | null;
  fileTypes: Set<string> | null;
  sha256: Set<string> | null;
  sha256List: string | null;
  regexes: RegExp[];
  media: Set<string> | null;
  codecs: Set<string> | null;
  scan: ScannerKind | null;
  guest: boolean | null;
  conferences: RegExp[] | null;
  orgs: RegExp[] | null;
}

const setOrNull = (xs: readonly string[], lower = false) => (xs.length ? new Set(lower ? xs.map((x) => x.toLowerCase()) : xs) : null);

function blockListOf(cidrs: readonly string[]): BlockList | null {
  if (!cidrs.length) return null;
  const bl = new BlockList();
  for (const c of cidrs) {
    const [addr, bits] = c.split('/');
    const fam = isIP(addr!) === 6 ? 'ipv6' : 'ipv4';
    if (bits === undefined) bl.addAddress(addr!, fam);
    else bl.addSubnet(addr!, Number(bits), fam);
  }
  return bl;
}

export class PolicyEngine {
  private readonly compiled: Compiled[];
  private readonly matcher: MultiMatcher<number>;
  private readonly hashLists = new Map<string, Set<string>>();
  /** Rules without contains/contains_text: visited for every subject. */
  private readonly plainRules: Compiled[];
  private readonly hasContentRules: boolean;
  private readonly scratch = new Set<number>();
  private readonly ev: Evaluation = { best: 'forward', matches: undefined, scans: undefined };
  readonly rules: readonly Rule[];
  readonly keys: RuleFile['keys'];
  readonly quotas: RuleFile['quotas'];

  /** Rule files apply in order; the last `keys` section that is present holds. */
  constructor(files: readonly RuleFile[]) {
    this.rules = files.flatMap((f) => f.rules);
    this.keys = files.reduce<RuleFile['keys']>((k, f) => f.keys ?? k, null);
    this.quotas = files.flatMap((f) => f.quotas);
    const patterns: { bytes: Buffer; caseInsensitive: boolean; tag: number }[] = [];
    this.compiled = this.rules.map((rule, index) => {
      const w = rule.when;
      for (const c of w.contains) patterns.push({ bytes: Buffer.from(c, 'utf8'), caseInsensitive: false, tag: index });
      for (const c of w.contains_text) patterns.push({ bytes: Buffer.from(c, 'utf8'), caseInsensitive: true, tag: index });
      return {
        rule,
        index,
        needsContent: w.contains.length + w.contains_text.length > 0,
        users: setOrNull(w.user),
        groups: setOrNull(w.group),
        peers: blockListOf(w.peer),
        labels: setOrNull(w.label),
        protocols: setOrNull(w.protocol),
        fileTypes: setOrNull(w.file_type),
        sha256: setOrNull(w.sha256, true),
        sha256List: w.sha256_list,
        regexes: w.regex.map((r) => new RegExp(r, 'u')),
        media: setOrNull(w.media),
        codecs: setOrNull(w.codec, true),
        scan: w.scan ?? null,
        guest: w.guest ?? null,
        conferences: w.conference?.length ? w.conference.map(globRegExp) : null,
        orgs: w.org?.length ? w.org.map(globRegExp) : null,
      };
    });
    this.matcher = new MultiMatcher(patterns);
    this.plainRules = this.compiled.filter((c) => !c.needsContent);
    this.hasContentRules = this.plainRules.length < this.compiled.length;
  }

  /** Loads every `sha256_list` file: one hex SHA-256 per line, `#` comments. Set lookup keeps cost flat in list size. */
  async loadHashLists(resolve: (p: string) => string = (p) => p): Promise<void> {
    for (const c of this.compiled) {
      if (!c.sha256List || this.hashLists.has(c.sha256List)) continue;
      const set = new Set<string>();
      const rl = createInterface({ input: createReadStream(resolve(c.sha256List)), crlfDelay: Infinity });
      for await (const line of rl) {
        const h = line.trim().split(/\s+/)[0]?.toLowerCase();
        if (h && /^[0-9a-f]{64}$/.test(h)) set.add(h);
      }
      this.hashLists.set(c.sha256List, set);
    }
  }

  /** Does the rule apply to this flow at all (user, group, peer)? Used to pick `record` flows. */
  private flowSelected(c: Compiled, flow: FlowContext): boolean {
    if (c.users && !(flow.user && c.users.has(flow.user))) return false;
    if (c.groups && !flow.groups.some((g) => c.groups!.has(g))) return false;
    // contract.md `guest: true|false` and `conference: [glob...]` (core.md §8 credentials).
    if (c.guest !== null && c.guest !== (flow.guest === true)) return false;
    if (c.conferences && !(flow.conference !== undefined && c.conferences.some((r) => r.test(flow.conference!)))) return false;
    // `org: [glob...]`: the organisation of a transferred user (core.md §6).
    if (c.orgs && !(flow.org !== undefined && c.orgs.some((r) => r.test(flow.org!)))) return false;
    if (c.peers) {
      if (!flow.peerIp) return false;
      if (!c.peers.check(flow.peerIp, isIP(flow.peerIp) === 6 ? 'ipv6' : 'ipv4')) return false;
    }
    return true;
  }

  private subjectSelected(c: Compiled, s: Subject): boolean {
    const w = c.rule.when;
    const channel = s.kind === 'media' ? 'media' : 'data';
    if (w.channel !== 'any' && w.channel !== channel) return false;
    if (w.direction !== 'any' && w.direction !== s.direction) return false;
    if (c.labels && !(s.label !== undefined && c.labels.has(s.label))) return false;
    if (c.protocols && !(s.protocol !== undefined && c.protocols.has(s.protocol))) return false;
    if (c.media && !(s.mediaKind && c.media.has(s.mediaKind))) return false;
    if (c.codecs && !(s.codec && c.codecs.has(s.codec.toLowerCase()))) return false;
    if (w.size.min !== null && s.size < w.size.min) return false;
    if (w.size.max !== null && s.size > w.size.max) return false;
    return true;
  }

  private conditionsHold(c: Compiled, s: Subject, contentHits: Set<number>): boolean {
    // contains matches message and DTLS application-data bytes (contract.md).
    if (c.needsContent && !(s.kind !== 'media' && contentHits.has(c.index))) return false;
    if (c.fileTypes && !(s.fileType && c.fileTypes.has(s.fileType))) return false;
    if (c.sha256 || c.sha256List) {
      const h = s.sha256;
      const inline = !!(h && c.sha256?.has(h));
      const listed = !!(h && c.sha256List && this.hashLists.get(c.sha256List)?.has(h));
      if (!inline && !listed) return false;
    }
    if (c.regexes.length) {
      if (!s.data || s.kind === 'media') return false;
      // Regexes run on at most the first REGEX_SCAN_BYTES of a message: patterns that could
      // backtrack without bound are refused when loading, and this bounds the rest.
      const text = Buffer.from(s.data.buffer, s.data.byteOffset, Math.min(s.data.byteLength, REGEX_SCAN_BYTES)).toString('utf8');
      if (!c.regexes.some((r) => r.test(text))) return false;
    }
    return true;
  }

  evaluate(flow: FlowContext, s: Subject): Verdict {
    // Content rules are visited only when the automaton found one of their patterns, so
    // the cost of keyword rules is one pass over the message whatever their number.
    let hits: Set<number> | null = null;
    if (this.hasContentRules && s.data && s.kind !== 'media') {
      this.scratch.clear();
      this.matcher.match(s.data, this.scratch);
      if (this.scratch.size) hits = this.scratch;
    }
    // One evaluation's matches, kept in a reused record rather than a closure made per call
    // (evaluate runs once per message; the engine is synchronous, so it is never re-entered).
    const ev = this.ev;
    ev.best = 'forward';
    ev.matches = undefined;
    ev.scans = undefined;
    const content = hits ?? EMPTY;
    if (!hits) {
      for (const c of this.plainRules) this.consider(c, flow, s, content, ev);
    } else {
      // Merge in rule order: plain rules and the content rules that were hit.
      const idx = [...hits].sort((a, b) => a - b);
      let i = 0;
      for (const c of this.plainRules) {
        while (i < idx.length && idx[i]! < c.index) this.consider(this.compiled[idx[i++]!]!, flow, s, content, ev);
        this.consider(c, flow, s, content, ev);
      }
      while (i < idx.length) this.consider(this.compiled[idx[i++]!]!, flow, s, content, ev);
    }
    const { best, matches, scans } = ev;
    ev.matches = ev.scans = undefined; // the verdict owns them now
    if (scans) return { action: best, matches: matches ?? [], scans };
    return matches ? { action: best, matches } : FORWARD;
  }

  /** One rule against one subject: a match (or, for `scan` rules, a file to scan) into ev. */
  private consider(c: Compiled, flow: FlowContext, s: Subject, contentHits: Set<number>, ev: Evaluation): void {
    if (!this.flowSelected(c, flow) || !this.subjectSelected(c, s) || !this.conditionsHold(c, s, contentHits)) return;
    if (c.scan) {
      // Reassembled files, and files sent as one message, are scanned (not each message of
      // a transfer on its own); the verdict is the gateway's (async).
      if (s.kind === 'file' && (s.transfer || !s.inTransfer))
        (ev.scans ??= []).push({ rule: c.rule, action: c.rule.action, scanner: c.scan });
      return;
    }
    (ev.matches ??= []).push({ rule: c.rule, action: c.rule.action });
    if (ACTION_RANK[c.rule.action] > ACTION_RANK[ev.best]) ev.best = c.rule.action;
  }

  /**
   * Whether a rule looks at a file's bytes beyond size, hash and type (contains,
   * contains_text, regex on data channels, scan): then data-channel transfers are spooled so
   * their `file` subject carries the whole content (issue 9), else only the first bytes.
   */
  get needsFileContent(): boolean {
    return this.compiled.some((c) => c.rule.when.channel !== 'media' && (c.needsContent || c.regexes.length > 0 || c.scan !== null));
  }

  /** The scanners the rules name (`scan: icap | clamd`): each must be configured (`scan:` block). */
  get scanners(): Set<ScannerKind> {
    return new Set(this.compiled.flatMap((c) => (c.scan ? [c.scan] : [])));
  }

  /** Rules with action `record` and no content conditions that select this flow: record it from the start. */
  recordsFlow(flow: FlowContext): Rule[] {
    return this.compiled
      .filter(
        (c) =>
          c.rule.action === 'record' &&
          this.flowSelected(c, flow) &&
          !c.needsContent &&
          !c.regexes.length &&
          !c.fileTypes &&
          !c.sha256 &&
          !c.sha256List &&
          !c.scan,
      )
      .map((c) => c.rule);
  }
}

const EMPTY = new Set<number>();
