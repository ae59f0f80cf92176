/**
 * Policy evaluation cost per data-channel message (issue 5 speed goal): 10 and 1000
 * keyword rules through the multi-pattern matcher, and a 100 000-entry hash list
 * (Set lookup: flat in the number of hashes). Prints ns/message; never asserts.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PolicyEngine, type Subject } from '../src/policy/engine.js';
import { parseRuleFile } from '../src/policy/rules-schema.js';

export interface PolicyBenchRow {
  case: string;
  rules: number;
  nsPerMessage: number;
}

function time(fn: () => void, iters: number): number {
  for (let i = 0; i < Math.min(iters, 2000); i++) fn(); // warm-up
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < iters; i++) fn();
  return Number(process.hrtime.bigint() - t0) / iters;
}

function keywordRules(n: number): string {
  const lines = ['rules:'];
  for (let i = 0; i < n; i++) lines.push(`  - { id: kw${i}, when: { contains_text: ["codeword-${i.toString(36)}-x"] }, action: alert }`);
  return lines.join('\n') + '\n';
}

export async function runPolicyBench(opts: { quick?: boolean } = {}): Promise<PolicyBenchRow[]> {
  const iters = opts.quick ? 20_000 : 200_000;
  const flow = { user: 'alice', groups: ['trading'], peerIp: '198.51.100.7' };
  const text = Buffer.from('Quarterly numbers attached; nothing sensitive in this message, just an ordinary chat line of about 140 bytes.');
  const message: Subject = { kind: 'message', direction: 'to_peer', data: text, size: text.length, label: 'chat' };
  const rows: PolicyBenchRow[] = [];
  for (const n of [10, 1000]) {
    const e = new PolicyEngine([parseRuleFile(keywordRules(n), 'bench.yaml')]);
    rows.push({ case: `keywords, 140-byte message`, rules: n, nsPerMessage: time(() => e.evaluate(flow, message), iters) });
  }
  const dir = mkdtempSync(join(tmpdir(), 'gh-bench-'));
  const list: string[] = [];
  for (let i = 0; i < 100_000; i++) list.push(createHash('sha256').update(String(i)).digest('hex'));
  writeFileSync(join(dir, 'hashes.txt'), list.join('\n') + '\n');
  for (const size of [10, 100_000]) {
    writeFileSync(join(dir, 'small.txt'), list.slice(0, size).join('\n') + '\n');
    const e = new PolicyEngine([
      parseRuleFile(
        `rules:\n  - { id: bad-hash, when: { sha256_list: ${join(dir, size === 10 ? 'small.txt' : 'hashes.txt')} }, action: block }\n`,
        'bench.yaml',
      ),
    ]);
    await e.loadHashLists();
    const file: Subject = {
      kind: 'file',
      direction: 'to_peer',
      size: 1,
      sha256: createHash('sha256').update(randomBytes(8)).digest('hex'),
      fileType: 'pdf',
    };
    rows.push({
      case: `hash list of ${size.toLocaleString('en')} entries`,
      rules: 1,
      nsPerMessage: time(() => e.evaluate(flow, file), iters),
    });
  }
  return rows;
}

export function formatPolicyBench(rows: PolicyBenchRow[]): string {
  const out = ['| policy case | rules | ns/message |', '|---|---:|---:|'];
  for (const r of rows) out.push(`| ${r.case} | ${r.rules} | ${r.nsPerMessage.toFixed(0)} |`);
  return out.join('\n');
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  runPolicyBench({ quick: process.argv.includes('--quick') }).then((r) => process.stdout.write(formatPolicyBench(r) + '\n'));
}
