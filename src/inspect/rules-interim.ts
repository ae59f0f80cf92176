/**
 * INTERIM rule loader for `gatehouse inspect --rules FILE`, until src/policy exists.
 *
 * Reads the rule format of contract.md ("Rules") and evaluates exactly two conditions
 * on inspection events: `contains` (decrypted data-channel messages and non-SCTP DTLS
 * application data) and `file_type` (the magic-bytes type of a transferred file), with
 * the optional `channel` (data | media | any) narrowing. Rules with other conditions
 * (e.g. `group`, which needs a TURN user) cannot be judged from a capture: they are
 * listed as skipped. `keys` and `quotas` sections are accepted and ignored.
 *
 * Replace with src/policy's loader and evaluator when it lands.
 */
import { LineCounter, parseDocument, isMap, isSeq, type Node } from 'yaml';
import { ConfigError } from '../util/errors.js';
import type { InspectEvent } from './events.js';

export type RuleAction = 'block' | 'alert' | 'record' | 'drop';

export interface InterimRule {
  id: string;
  channel: 'data' | 'media' | 'any';
  contains?: Buffer[];
  fileType?: string[];
  action: RuleAction;
}

export interface InterimRuleSet {
  rules: InterimRule[];
  /** Rules that use conditions this interim evaluator does not support. */
  skipped: { id: string; reason: string }[];
}

const ACTIONS = new Set(['block', 'alert', 'record', 'drop']);
const CHANNELS = new Set(['data', 'media', 'any']);
const KNOWN_WHEN = new Set(['channel', 'contains', 'file_type']);
/** Conditions of contract.md that an offline capture cannot evaluate. */
const OFFLINE_UNSUPPORTED = new Set(['group', 'user', 'peer', 'src', 'dest']);

export function parseInterimRules(text: string, file: string): InterimRuleSet {
  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc, prettyErrors: false });
  const at = (node: Node | null | undefined, key: string, problem: string): ConfigError => {
    const pos = node?.range ? lc.linePos(node.range[0]) : { line: 1, col: 1 };
    return new ConfigError(file, pos.line, pos.col, key, problem);
  };
  if (doc.errors.length > 0) {
    const e = doc.errors[0]!;
    const pos = lc.linePos(e.pos[0]);
    throw new ConfigError(file, pos.line, pos.col, '', `YAML: ${e.message.split('\n')[0]}`);
  }
  const root = doc.contents;
  const out: InterimRuleSet = { rules: [], skipped: [] };
  if (root === null || root === undefined) return out;
  if (!isMap(root)) throw at(root, '', 'expected a mapping with a `rules` list');
  for (const pair of root.items) {
    const k = String((pair.key as { value?: unknown })?.value ?? pair.key);
    if (k !== 'rules' && k !== 'keys' && k !== 'quotas') throw at(pair.key as Node, k, 'unknown key');
  }
  const rulesNode = root.get('rules', true) as Node | undefined;
  if (rulesNode === undefined) return out;
  if (!isSeq(rulesNode)) throw at(rulesNode, 'rules', 'expected a list');
  const ids = new Set<string>();
  rulesNode.items.forEach((item, i) => {
    const path = `rules[${i}]`;
    if (!isMap(item)) throw at(item as Node, path, 'expected a mapping');
    const r = item.toJSON() as Record<string, unknown>;
    for (const k of Object.keys(r)) if (k !== 'id' && k !== 'when' && k !== 'action') throw at(item.get(k, true) as Node, `${path}.${k}`, 'unknown key');
    if (typeof r.id !== 'string' || !r.id) throw at(item, `${path}.id`, 'required, a non-empty string');
    if (ids.has(r.id)) throw at(item.get('id', true) as Node, `${path}.id`, `duplicate rule id "${r.id}"`);
    ids.add(r.id);
    if (typeof r.action !== 'string' || !ACTIONS.has(r.action)) throw at((item.get('action', true) as Node) ?? item, `${path}.action`, 'one of block, alert, record, drop');
    const when = (r.when ?? {}) as Record<string, unknown>;
    if (typeof when !== 'object' || Array.isArray(when)) throw at(item.get('when', true) as Node, `${path}.when`, 'expected a mapping');
    const whenNode = item.get('when', true) as Node | undefined;
    const rule: InterimRule = { id: r.id, action: r.action as RuleAction, channel: 'any' };
    const unsupported: string[] = [];
    for (const [k, v] of Object.entries(when)) {
      const kp = `${path}.when.${k}`;
      const node = isMap(whenNode) ? (whenNode.get(k, true) as Node) : whenNode;
      if (!KNOWN_WHEN.has(k)) {
        if (OFFLINE_UNSUPPORTED.has(k)) {
          unsupported.push(k);
          continue;
        }
        throw at(node, kp, 'unknown condition');
      }
      if (k === 'channel') {
        if (typeof v !== 'string' || !CHANNELS.has(v)) throw at(node, kp, 'one of data, media, any');
        rule.channel = v as InterimRule['channel'];
      } else {
        const list = typeof v === 'string' ? [v] : v;
        if (!Array.isArray(list) || list.length === 0 || list.some((x) => typeof x !== 'string' || x === '')) {
          throw at(node, kp, 'expected a non-empty list of non-empty strings');
        }
        if (k === 'contains') rule.contains = (list as string[]).map((s) => Buffer.from(s, 'utf8'));
        else rule.fileType = (list as string[]).map((s) => s.toLowerCase());
      }
    }
    if (unsupported.length > 0) {
      out.skipped.push({ id: rule.id, reason: `condition ${unsupported.join(', ')} cannot be evaluated offline` });
      return;
    }
    if (!rule.contains && !rule.fileType) {
      out.skipped.push({ id: rule.id, reason: 'no contains/file_type condition (interim evaluator)' });
      return;
    }
    out.rules.push(rule);
  });
  return out;
}

/** The rules an event matches. Every condition of a rule must hold (AND). */
export function matchInterimRules(rules: readonly InterimRule[], e: InspectEvent): InterimRule[] {
  let content: Buffer | undefined;
  let fileType: string | undefined;
  if (e.type === 'datachannel.message' || e.type === 'appdata') content = e.data;
  else if (e.type === 'file') {
    fileType = e.fileType;
    content = e.data;
  } else return [];
  const out: InterimRule[] = [];
  for (const r of rules) {
    if (r.channel === 'media') continue; // contains / file_type are data-side conditions
    // A file is also a data-channel message: contains-only rules judge the message, so
    // they do not fire a second time on the file event.
    if (e.type === 'file' && !r.fileType) continue;
    if (r.contains) {
      if (!content) continue;
      let hit = false;
      for (const needle of r.contains) if (content.indexOf(needle) >= 0) hit = true;
      if (!hit) continue;
    }
    if (r.fileType) {
      if (fileType === undefined || !r.fileType.includes(fileType)) continue;
    }
    out.push(r);
  }
  return out;
}

/** Suricata-style alert.action for a rule action. */
export function eveAction(a: RuleAction): string {
  return a === 'block' || a === 'drop' ? 'blocked' : 'allowed';
}
