import type { Writable } from 'node:stream';
import { ConfigError } from '../util/errors.js';
import { loadRuleFile, ruleFilesAt } from '../policy/rules-schema.js';

export const RULES_HELP = `Usage: gatehouse rules check PATH...

Validates rule files (a file, or a folder of *.yaml). Every error names the file, line,
column and key; the exit status is 1 when any file has an error, 2 on usage errors.
`;

export async function runRules(argv: string[], io: { stdout: Writable; stderr: Writable }): Promise<number> {
  const [sub, ...paths] = argv;
  if (sub === '--help' || sub === 'help' || (sub === 'check' && paths.includes('--help'))) {
    io.stdout.write(RULES_HELP);
    return 0;
  }
  if (sub !== 'check' || paths.length === 0) {
    io.stderr.write(RULES_HELP);
    return 2;
  }
  let errors = 0;
  let files = 0;
  for (const p of paths) {
    let list: string[];
    try {
      list = ruleFilesAt(p);
    } catch (err) {
      io.stderr.write(`${p}: cannot read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}\n`);
      errors++;
      continue;
    }
    for (const f of list) {
      files++;
      try {
        const rf = loadRuleFile(f);
        io.stdout.write(`${f}: ok (${rf.rules.length} rules, ${rf.quotas.length} quotas${rf.keys ? ', keys policy' : ''})\n`);
      } catch (err) {
        errors++;
        io.stderr.write(err instanceof ConfigError ? `${err.message}\n` : `${f}: ${(err as Error).message}\n`);
      }
    }
  }
  if (files === 0 && errors === 0) {
    io.stderr.write('no rule files found\n');
    return 1;
  }
  return errors ? 1 : 0;
}
