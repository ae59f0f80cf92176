import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { checkCidr } from '../config/config.js';
import { bool, checked, fail, failAtPath, int, list, nullable, obj, oneOf, parseYaml, str, type Schema } from '../config/validate.js';

/**
 * The rule file format of contract.md ("Rules"), validated with located errors
 * (file:line:column, key path). Evaluation lives in the policy engine; this module
 * only reads and checks.
 */
const DURATION_RE = /^(\d+)(ms|s|m|h|d)$/;
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
export function parseDuration(s: string): number | null {
  const m = DURATION_RE.exec(s.trim());
  return m ? Number(m[1]) * UNIT_MS[m[2]!]! : null;
}

const SIZE_RE = /^(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?$/;
const SIZE_UNITS: Record<string, number> = {
  B: 1,
  KB: 1e3,
  MB: 1e6,
  GB: 1e9,
  TB: 1e12,
  KiB: 1024,
  MiB: 1024 ** 2,
  GiB: 1024 ** 3,
  TiB: 1024 ** 4,
};
export function parseSize(s: string): number | null {
  const m = SIZE_RE.exec(s.trim());
  return m ? Math.round(Number(m[1]) * SIZE_UNITS[m[2] ?? 'B']!) : null;
}

const duration: Schema<number> = {
  what: 'a duration like 10s, 5m, 1h',
  parse(node, path, ctx) {
    const s = str('a duration').parse(node, path, ctx);
    const ms = parseDuration(s);
    if (ms === null) fail(ctx, node, path, `expected a duration like 10s, 5m or 1h, got ${JSON.stringify(s)}`);
    return ms;
  },
};

const size: Schema<number> = {
  what: 'a size like 500MiB',
  parse(node, path, ctx) {
    const s = str('a size').parse(node, path, ctx);
    const n = parseSize(s);
    if (n === null) fail(ctx, node, path, `expected a size like 500MiB or 2GB, got ${JSON.stringify(s)}`);
    return n;
  },
};

export const FILE_TYPES = [
  'exe',
  'dll',
  'elf',
  'macho',
  'msi',
  'ole',
  'zip',
  'docx',
  'xlsx',
  'pptx',
  'jar',
  'apk',
  'pdf',
  'png',
  'jpeg',
  'gif',
  'webp',
  'bmp',
  'tiff',
  'mp4',
  'webm',
  'ogg',
  'mp3',
  'wav',
  'gzip',
  '7z',
  'rar',
  'tar',
  'script',
  'unknown',
] as const;

const cidr = checked('a CIDR', checkCidr);
const oneOrMany = <T>(s: Schema<T>) => list(s, { single: true });
const regex = checked('a regular expression', (s) => {
  try {
    new RegExp(s, 'u');
  } catch (e) {
    return `not a valid regular expression: ${(e as Error).message}`;
  }
  // Refuse patterns that can backtrack catastrophically: a quantified group that
  // itself contains a quantifier, e.g. (a+)+ or (x*y?)*.
  if (/\((?:[^()\\]|\\.)*[+*}](?:[^()\\]|\\.)*\)[+*{]/.test(s))
    return 'nested quantifiers can backtrack without bound; rewrite the pattern';
  return null;
});
/**
 * A conference glob (contract.md `conference: [board-*]`): `*` any run of characters, `?`
 * one, everything else literal; 1 to 128 characters, no control characters.
 */
const conferenceGlob = checked('a conference glob', (s) =>
  // eslint-disable-next-line no-control-regex
  s.length >= 1 && s.length <= 128 && !/[\u0000-\u001f\u007f]/.test(s)
    ? null
    : 'a conference glob is 1 to 128 characters without control characters (* and ? are wildcards)',
);

/** An organisation glob (`org: [partner-*]`), same syntax as conferenceGlob. */
const orgGlob = checked('an organisation glob', (s) =>
  // eslint-disable-next-line no-control-regex
  s.length >= 1 && s.length <= 128 && !/[\u0000-\u001f\u007f]/.test(s)
    ? null
    : 'an organisation glob is 1 to 128 characters without control characters (* and ? are wildcards)',
);

/** A glob of conferenceGlob as an anchored regular expression (linear: no nested quantifiers). */
export function globRegExp(glob: string): RegExp {
  let re = '';
  for (const ch of glob) {
    if (ch === '*') re += '.*';
    else if (ch === '?') re += '.';
    else re += ch.replace(/[\\^$.|+()[\]{}]/g, '\\$&');
  }
  return new RegExp(`^${re}$`, 'su');
}

const sha256 = checked('a SHA-256 in hex', (s) => (/^[0-9a-fA-F]{64}$/.test(s) ? null : 'expected 64 hex digits'));

export interface RuleWhen {
  channel: 'data' | 'media' | 'any';
  direction: 'any' | 'to_peer' | 'from_peer';
  user: string[];
  group: string[];
  peer: string[];
  label: string[];
  protocol: string[];
  contains: string[];
  contains_text: string[];
  regex: string[];
  file_type: string[];
  sha256: string[];
  sha256_list: string | null;
  size: { min: number | null; max: number | null };
  media: ('audio' | 'video')[];
  codec: string[];
  /**
   * Malware scanning (issue 9): each reassembled file the rule selects is sent to the
   * configured scanner (`scan.icap`, RFC 3507, or `scan.clamd` INSTREAM); an infected
   * answer is a match. Evaluated by the gateway (async), never by the policy engine.
   */
  scan: ScannerKind | null;
  /** core.md: true selects conference guests only, false everyone else; null: either. */
  guest: boolean | null;
  /** Globs (`*`, `?`) over the flow's core conference id; a flow without one never matches. */
  conference: string[];
  /**
   * Globs (`*`, `?`) over the organisation of a user admitted by authentication transfer
   * (core.md §6); a flow without one (the core's own users, guests) never matches.
   */
  org: string[];
}
export type ScannerKind = 'icap' | 'clamd';
export const SCANNER_KINDS: readonly ScannerKind[] = ['icap', 'clamd'];
export interface Rule {
  id: string;
  description: string | null;
  when: RuleWhen;
  action: 'block' | 'alert' | 'record' | 'drop';
  severity: number;
}
export interface Quota {
  id: string;
  /** user: every selected user has the whole limit; group: the selected users share it. */
  scope: 'user' | 'group';
  users: string[];
  groups: string[];
  limit: number;
  period: 'day' | 'week' | 'month';
  vital: string[];
}
export interface RuleFile {
  keys: {
    required: boolean;
    deadline: number;
    unverified: 'hold' | 'pass' | 'drop';
    block_for: number;
    media: boolean;
    data: boolean;
  } | null;
  rules: Rule[];
  quotas: Quota[];
}

const whenSchema = obj<RuleWhen>({
  channel: { schema: oneOf('data', 'media', 'any'), default: () => 'any' },
  direction: { schema: oneOf('any', 'to_peer', 'from_peer'), default: () => 'any' },
  user: { schema: oneOrMany(str('a user name')), default: () => [] },
  group: { schema: oneOrMany(str('a group name')), default: () => [] },
  peer: { schema: oneOrMany(cidr), default: () => [] },
  label: { schema: oneOrMany(str('a data channel label')), default: () => [] },
  protocol: { schema: oneOrMany(str('a data channel protocol')), default: () => [] },
  contains: { schema: oneOrMany(str('a byte string')), default: () => [] },
  contains_text: { schema: oneOrMany(str('a text (case-insensitive)')), default: () => [] },
  regex: { schema: oneOrMany(regex), default: () => [] },
  file_type: { schema: oneOrMany(oneOf(...FILE_TYPES)), default: () => [] },
  sha256: { schema: oneOrMany(sha256), default: () => [] },
  sha256_list: { schema: nullable(str('a hash-list file path')), default: () => null },
  size: {
    schema: obj({
      min: { schema: nullable(size), default: () => null },
      max: { schema: nullable(size), default: () => null },
    }),
  },
  media: { schema: oneOrMany(oneOf('audio', 'video')), default: () => [] },
  codec: { schema: oneOrMany(str('a codec name')), default: () => [] },
  scan: { schema: nullable(oneOf(...SCANNER_KINDS)), default: () => null },
  guest: { schema: nullable(bool()), default: () => null },
  conference: { schema: oneOrMany(conferenceGlob), default: () => [] },
  org: { schema: oneOrMany(orgGlob), default: () => [] },
});

const ruleId = checked('a rule id', (s) => (/^[A-Za-z0-9_.:-]{1,64}$/.test(s) ? null : 'ids are 1-64 letters, digits, _ . : -'));

const ruleSchema = obj<Rule>({
  id: { schema: ruleId, default: () => '' },
  description: { schema: nullable(str()), default: () => null },
  when: { schema: whenSchema },
  action: { schema: oneOf('block', 'alert', 'record', 'drop'), default: () => 'alert' },
  severity: { schema: int(1, 4, 'a severity 1 (high) to 4'), default: () => 2 },
});

const quotaSchema = obj<Quota>({
  id: { schema: ruleId, default: () => '' },
  scope: { schema: oneOf('user', 'group'), default: () => 'user' },
  users: { schema: oneOrMany(str('a user name')), default: () => [] },
  groups: { schema: oneOrMany(str('a group name')), default: () => [] },
  limit: { schema: size, default: () => 0 },
  period: { schema: oneOf('day', 'week', 'month'), default: () => 'day' },
  vital: { schema: oneOrMany(cidr), default: () => [] },
});

const fileSchema = obj<RuleFile>({
  keys: {
    schema: nullable(
      obj({
        required: { schema: bool(), default: () => false },
        deadline: { schema: duration, default: () => 10_000 },
        unverified: { schema: oneOf('hold', 'pass', 'drop'), default: () => 'hold' },
        block_for: { schema: duration, default: () => 300_000 },
        media: { schema: bool(), default: () => true },
        data: { schema: bool(), default: () => true },
      }),
    ),
    default: () => null,
  },
  rules: { schema: list(ruleSchema), default: () => [] },
  quotas: { schema: list(quotaSchema), default: () => [] },
});

/** What the gateway can do that a rule may ask for. */
export interface RuleCapabilities {
  /** The scanners configured (`scan.icap`, `scan.clamd`); absent: not checked (`gatehouse rules check`). */
  scanners?: ReadonlySet<ScannerKind>;
}

/** Parses one rule file; throws ConfigError with file:line:column and key path. */
export function parseRuleFile(text: string, file: string, caps: RuleCapabilities = {}): RuleFile {
  const { root, ctx } = parseYaml(text, file);
  const rf = fileSchema.parse(root, '', ctx);
  // Ids are required and unique within a file: find the offending node for the message.
  const seq = root && 'get' in root ? (root as unknown as { get(k: string, keep: boolean): unknown }).get('rules', true) : null;
  const items = (seq as { items?: unknown[] } | null)?.items ?? [];
  const seen = new Set<string>();
  rf.rules.forEach((r, i) => {
    const node = items[i] as Parameters<typeof fail>[1];
    if (!r.id) fail(ctx, node, `rules[${i}].id`, 'every rule needs an id');
    if (seen.has(r.id)) fail(ctx, node, `rules[${i}].id`, `duplicate rule id ${JSON.stringify(r.id)}`);
    seen.add(r.id);
    // `scan` judges files (data channels); a media rule would never match.
    if (r.when.scan && r.when.channel === 'media')
      failAtPath(
        ctx,
        root,
        [`rules[${i}].when.scan`, `rules[${i}].when.channel`],
        'scan looks at files on data channels; it cannot be used with channel: media',
      );
    // A scan rule without its scanner would never judge anything: refused at load (and reload).
    if (r.when.scan && caps.scanners && !caps.scanners.has(r.when.scan))
      failAtPath(
        ctx,
        root,
        `rules[${i}].when.scan`,
        `scan: ${r.when.scan} needs a scanner: set scan.${r.when.scan} in the gatehouse configuration`,
      );
  });
  const qitems =
    (
      (root && 'get' in root ? (root as unknown as { get(k: string, keep: boolean): unknown }).get('quotas', true) : null) as {
        items?: unknown[];
      } | null
    )?.items ?? [];
  rf.quotas.forEach((q, i) => {
    const node = qitems[i] as Parameters<typeof fail>[1];
    if (!q.id) fail(ctx, node, `quotas[${i}].id`, 'every quota needs an id');
    if (q.limit <= 0) fail(ctx, node, `quotas[${i}].limit`, 'a quota needs a limit greater than 0');
  });
  return rf;
}

/** The rule files under a path: the file itself, or every *.yaml / *.yml in a folder. */
export function ruleFilesAt(path: string): string[] {
  if (statSync(path).isDirectory()) {
    return readdirSync(path)
      .filter((f) => /\.ya?ml$/.test(f))
      .sort()
      .map((f) => join(path, f));
  }
  return [path];
}

export function loadRuleFile(file: string, caps: RuleCapabilities = {}): RuleFile {
  return parseRuleFile(readFileSync(file, 'utf8'), file, caps);
}
