import type { Writable } from 'node:stream';
import { X509Certificate } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { verifyRecordings } from '../record/manifest.js';

export const VERIFY_HELP = `Usage: gatehouse verify [--cert FILE] DIR

Checks recordings for tampering. DIR is the recordings directory (every recording, the
manifest hash chain, its head and retention anchor are checked) or one recording
(its files and manifest signature). Every file changed, removed or added is named.
--cert pins the gateway certificate (PEM) the manifests must be signed with; without
it the certificates kept in DIR/certs/ are used.

Exit status: 0 intact, 1 tampered (or unsealed), 2 usage error.
`;

export async function runVerify(argv: string[], io: { stdout: Writable; stderr: Writable }): Promise<number> {
  let cert: string | undefined;
  const dirs: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--help' || a === '-h') {
      io.stdout.write(VERIFY_HELP);
      return 0;
    }
    if (a === '--cert') {
      cert = argv[++i];
      if (!cert) {
        io.stderr.write(`gatehouse verify: --cert needs a file\n\n${VERIFY_HELP}`);
        return 2;
      }
    } else if (a.startsWith('--cert=')) cert = a.slice(7);
    else if (a.startsWith('-')) {
      io.stderr.write(`gatehouse verify: unknown option ${a}\n\n${VERIFY_HELP}`);
      return 2;
    } else dirs.push(a);
  }
  if (dirs.length !== 1) {
    io.stderr.write(VERIFY_HELP);
    return 2;
  }
  const dir = dirs[0]!;
  if (!existsSync(dir) || !statSync(dir).isDirectory()) {
    io.stderr.write(`gatehouse verify: ${dir}: not a directory\n`);
    return 2;
  }
  let certPem: string | undefined;
  if (cert) {
    try {
      certPem = readFileSync(cert, 'utf8');
      new X509Certificate(certPem);
    } catch (err) {
      io.stderr.write(
        `gatehouse verify: ${cert}: not a readable PEM certificate (${(err as NodeJS.ErrnoException).code ?? 'parse error'})\n`,
      );
      return 2;
    }
  }
  const r = verifyRecordings(dir, { certPem });
  for (const p of r.problems) io.stdout.write(`TAMPERED ${p}\n`);
  io.stdout.write(
    `${r.ok ? 'OK' : 'FAILED'}: ${r.recordings} recording(s), ${r.files} file(s) checked${certPem ? ' against the pinned certificate' : ''}${r.problems.length ? `, ${r.problems.length} problem(s)` : ''}\n`,
  );
  return r.ok ? 0 : 1;
}
