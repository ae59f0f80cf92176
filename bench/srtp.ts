/**
 * SRTP unprotect cost per packet: ours (src/wire/srtp.ts) against libsrtp2, measured on the
 * same machine in the same run. libsrtp2 is timed by test/tools/srtp_tool.c ("bench" mode),
 * compiled here with gcc -O2 -lsrtp2 (Debian libsrtp2-dev). Figures are reported, never
 * asserted. Run standalone: npx tsx bench/srtp.ts
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { SrtpContext, SRTP_AES128_CM_HMAC_SHA1_80, SRTP_AEAD_AES_128_GCM, srtpProfileParams } from '../src/wire/srtp.js';
import { serializeRtp } from '../src/wire/rtp.js';

export interface SrtpBenchRow {
  profile: string;
  payload: number;
  oursNs: number;
  /** NaN when libsrtp2 could not be built or run. */
  libsrtpNs: number;
  /** ours / libsrtp2 (lower is better). */
  ratio: number;
}

const here = dirname(fileURLToPath(import.meta.url));
const toolSrc = join(here, '..', 'test', 'tools', 'srtp_tool.c');

function measureOurs(profile: number, payload: number, count: number, rounds: number): number {
  const p = srtpProfileParams(profile)!;
  const key = randomBytes(p.keyLength);
  const salt = randomBytes(p.saltLength);
  const tx = new SrtpContext(profile, key, salt);
  const pkts: Buffer[] = [];
  for (let i = 0; i < count; i++) {
    const body = Buffer.alloc(payload, i & 0xff);
    pkts.push(
      tx.protectRtp(serializeRtp({ payloadType: 111, sequenceNumber: i & 0xffff, timestamp: i * 960, ssrc: 0xcafebabe, payload: body })),
    );
  }
  let best = Infinity;
  for (let r = 0; r < rounds; r++) {
    const rx = new SrtpContext(profile, key, salt);
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < count; i++) if (!rx.unprotectRtp(pkts[i])) throw new Error('bench packet failed to unprotect');
    const ns = Number(process.hrtime.bigint() - t0) / count;
    if (ns < best) best = ns;
  }
  return best;
}

function measureLibsrtp(tool: string | null, profile: number, payload: number, count: number, rounds: number): number {
  if (!tool) return NaN;
  const p = srtpProfileParams(profile)!;
  const keyArg = randomBytes(p.keyLength + p.saltLength).toString('hex');
  try {
    const out = execFileSync(tool, ['bench', String(profile), keyArg, String(payload), String(count), String(rounds)], {
      encoding: 'utf8',
      timeout: 120_000,
    });
    const m = /unprotect_ns=([\d.]+)/.exec(out);
    return m ? Number(m[1]) : NaN;
  } catch {
    return NaN;
  }
}

export async function runSrtpBench(opts: { count?: number; rounds?: number } = {}): Promise<SrtpBenchRow[]> {
  const count = opts.count ?? 20000;
  const rounds = opts.rounds ?? 5;
  const dir = mkdtempSync(join(tmpdir(), 'gatehouse-srtp-bench-'));
  try {
    let tool: string | null = join(dir, 'srtp_tool');
    try {
      execFileSync('gcc', ['-O2', toolSrc, '-o', tool, '-lsrtp2'], { stdio: 'pipe', timeout: 120_000 });
    } catch {
      tool = null;
    }
    const rows: SrtpBenchRow[] = [];
    for (const profile of [SRTP_AES128_CM_HMAC_SHA1_80, SRTP_AEAD_AES_128_GCM]) {
      for (const payload of [160, 1200]) {
        const oursNs = measureOurs(profile, payload, count, rounds);
        const libsrtpNs = measureLibsrtp(tool, profile, payload, count, rounds);
        rows.push({ profile: srtpProfileParams(profile)!.name, payload, oursNs, libsrtpNs, ratio: oursNs / libsrtpNs });
      }
    }
    return rows;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export function formatSrtpBench(rows: SrtpBenchRow[]): string {
  const lines = ['profile                        payload  ours ns/pkt  libsrtp2 ns/pkt  ratio'];
  for (const r of rows) {
    lines.push(
      `${r.profile.padEnd(30)} ${String(r.payload).padStart(7)}  ${r.oursNs.toFixed(0).padStart(11)}  ${(Number.isNaN(r.libsrtpNs) ? 'n/a' : r.libsrtpNs.toFixed(0)).padStart(15)}  ${Number.isNaN(r.ratio) ? 'n/a' : r.ratio.toFixed(2)}`,
    );
  }
  return lines.join('\n');
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const rows = await runSrtpBench();
  process.stdout.write(formatSrtpBench(rows) + '\n');
}
