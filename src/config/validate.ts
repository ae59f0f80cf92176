import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Node } from 'yaml';
import { ConfigError } from '../util/errors.js';

/**
 * A small schema language over YAML nodes, so every error names the file, line,
 * column and key path (contract.md: "Unknown keys and wrong types are errors that name
 * the key"). Used for the server configuration and for rule files.
 */
export interface Ctx {
  file: string;
  lc: LineCounter;
}

export interface Schema<T> {
  /** Human description used in error messages ("a string", "a list of CIDRs"). */
  readonly what: string;
  parse(node: Node | null | undefined, path: string, ctx: Ctx): T;
}

export function fail(ctx: Ctx, node: Node | null | undefined, path: string, problem: string): never {
  const off = node?.range?.[0] ?? 0;
  const pos = ctx.lc.linePos(off);
  throw new ConfigError(ctx.file, pos.line, pos.col, path, problem);
}

function scalarValue(node: Node | null | undefined): unknown {
  if (node == null) return null;
  return isScalar(node) ? node.value : node;
}

function describe(v: unknown): string {
  if (v === null) return 'nothing';
  if (isMap(v)) return 'a mapping';
  if (isSeq(v)) return 'a list';
  if (typeof v === 'string') return `the string ${JSON.stringify(v.length > 40 ? v.slice(0, 40) + '…' : v)}`;
  return `${typeof v} ${String(v)}`;
}

export const str = (what = 'a string'): Schema<string> => ({
  what,
  parse(node, path, ctx) {
    const v = scalarValue(node);
    if (typeof v === 'string') return v;
    if (typeof v === 'number' || typeof v === 'boolean') return String(v);
    return fail(ctx, node, path, `expected ${what}, got ${describe(v)}`);
  },
});

export const int = (min: number, max: number, what = `a whole number from ${min} to ${max}`): Schema<number> => ({
  what,
  parse(node, path, ctx) {
    const v = scalarValue(node);
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
      return fail(ctx, node, path, `expected ${what}, got ${describe(v)}`);
    }
    return v;
  },
});

export const bool = (): Schema<boolean> => ({
  what: 'true or false',
  parse(node, path, ctx) {
    const v = scalarValue(node);
    if (typeof v !== 'boolean') return fail(ctx, node, path, `expected true or false, got ${describe(v)}`);
    return v;
  },
});

export const oneOf = <T extends string>(...values: T[]): Schema<T> => ({
  what: `one of ${values.join(', ')}`,
  parse(node, path, ctx) {
    const v = scalarValue(node);
    if (typeof v === 'string' && (values as string[]).includes(v)) return v as T;
    return fail(ctx, node, path, `expected one of ${values.join(' | ')}, got ${describe(v)}`);
  },
});

export const nullable = <T>(inner: Schema<T>): Schema<T | null> => ({
  what: `${inner.what} or null`,
  parse(node, path, ctx) {
    if (node == null || (isScalar(node) && node.value === null)) return null;
    return inner.parse(node, path, ctx);
  },
});

/** Accepts either one item or a list of items (handy for `listen`). */
export const list = <T>(item: Schema<T>, opts: { single?: boolean; minItems?: number } = {}): Schema<T[]> => ({
  what: `a list of ${item.what}`,
  parse(node, path, ctx) {
    if (isSeq(node)) {
      const out = node.items.map((n, i) => item.parse(n as Node, `${path}[${i}]`, ctx));
      if (opts.minItems !== undefined && out.length < opts.minItems) {
        fail(ctx, node, path, `expected at least ${opts.minItems} item(s)`);
      }
      return out;
    }
    if (opts.single && node && !isMap(node)) return [item.parse(node, path, ctx)];
    return fail(ctx, node, path, `expected a list of ${item.what}, got ${describe(scalarValue(node))}`);
  },
});

/** A string that must pass check(); check returns a problem text or null. */
export const checked = (what: string, check: (s: string) => string | null): Schema<string> => ({
  what,
  parse(node, path, ctx) {
    const s = str(what).parse(node, path, ctx);
    const problem = check(s);
    if (problem) fail(ctx, node, path, problem);
    return s;
  },
});

/** A mapping schema with the given fields; defaults fill what is missing. */
/** A field without `default` is parsed from nothing: nested mappings fill their own defaults. */
export type Fields<T> = { [K in keyof T]: { schema: Schema<T[K]>; default?: () => T[K] } };

export const obj = <T>(fields: Fields<T>, what = 'a mapping'): Schema<T> => ({
  what,
  parse(node, path, ctx) {
    const out: Partial<T> = {};
    const seen = new Set<string>();
    if (node != null && !(isScalar(node) && node.value === null)) {
      if (!isMap(node)) return fail(ctx, node, path, `expected ${what}, got ${describe(scalarValue(node))}`);
      for (const pair of node.items) {
        const keyNode = pair.key as Node;
        const k = String(scalarValue(keyNode));
        const keyPath = path ? `${path}.${k}` : k;
        if (!Object.prototype.hasOwnProperty.call(fields, k)) {
          const known = Object.keys(fields).join(', ');
          fail(ctx, keyNode, keyPath, `unknown key (known keys here: ${known})`);
        }
        if (seen.has(k)) fail(ctx, keyNode, keyPath, 'key appears twice');
        seen.add(k);
        const f = fields[k as keyof T];
        out[k as keyof T] = f.schema.parse(pair.value as Node, keyPath, ctx);
      }
    }
    for (const k of Object.keys(fields) as (keyof T)[]) {
      if (seen.has(k as string)) continue;
      const f = fields[k];
      out[k] = f.default ? f.default() : f.schema.parse(null, path ? `${path}.${String(k)}` : String(k), ctx);
    }
    return out as T;
  },
});

/** Parses YAML text, turning syntax errors into located ConfigErrors. */
export function parseYaml(text: string, file: string): { root: Node | null; ctx: Ctx } {
  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc, prettyErrors: false, uniqueKeys: false });
  const ctx: Ctx = { file, lc };
  if (doc.errors.length) {
    const e = doc.errors[0]!;
    const pos = lc.linePos(e.pos[0]);
    throw new ConfigError(file, pos.line, pos.col, '', `YAML syntax: ${e.message.split('\n')[0]}`);
  }
  return { root: (doc.contents as Node | null) ?? null, ctx };
}

/** Splits `turn.tls.cert` / `users[1].name` into segments: strings are keys, numbers list indexes. */
function pathSegments(path: string): Array<string | number> {
  const out: Array<string | number> = [];
  for (const part of path.split('.')) {
    const m = /^([^[\]]*)((?:\[\d+\])*)$/.exec(part);
    if (!m) {
      out.push(part);
      continue;
    }
    if (m[1]) out.push(m[1]);
    for (const idx of m[2]!.matchAll(/\[(\d+)\]/g)) out.push(Number(idx[1]));
  }
  return out;
}

/**
 * The YAML node a key path names, for errors found after parsing (cross-key checks):
 * the value node when the key is written in the file (like the schema's own errors),
 * its key node when the value is empty, else the deepest written ancestor. `exact`
 * tells whether the whole path was found.
 */
export function nodeAt(root: Node | null | undefined, path: string): { node: Node | null; exact: boolean } {
  let node: Node | null = root ?? null;
  if (!path) return { node, exact: true };
  for (const seg of pathSegments(path)) {
    if (typeof seg === 'number') {
      if (!isSeq(node) || seg >= node.items.length) return { node, exact: false };
      node = node.items[seg] as Node;
      continue;
    }
    if (!isMap(node)) return { node, exact: false };
    const pair = node.items.find((p) => String(scalarValue(p.key as Node)) === seg);
    if (!pair) return { node, exact: false };
    const value = pair.value as Node | null;
    node = value && value.range ? value : (pair.key as Node);
  }
  return { node, exact: true };
}

/**
 * A located ConfigError for a problem found after the schema ran: the first of `paths`
 * written in the file names the position (file:line:column) and the key; when none is
 * written (a default is at fault), the first path's deepest written ancestor.
 */
export function failAtPath(ctx: Ctx, root: Node | null | undefined, paths: string | string[], problem: string): never {
  const list = Array.isArray(paths) ? paths : [paths];
  for (const p of list) {
    const { node, exact } = nodeAt(root, p);
    if (exact) return fail(ctx, node, p, problem);
  }
  return fail(ctx, nodeAt(root, list[0]!).node, list[0]!, problem);
}
