// The malware-scanning chain of the e2e tests (clamd, c-icap): readiness polls and process exits.
import type { ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { connect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

/** Polls `probe` every 100 ms until it holds (resolves with the ms it took), the process exits, or `ms` pass. */
export async function waitReady(what: string, ms: number, probe: () => Promise<boolean>, proc?: ChildProcess): Promise<number> {
  const t0 = Date.now();
  while (Date.now() - t0 < ms) {
    if (proc && proc.exitCode !== null) throw new Error(`${what}: the process exited with ${proc.exitCode}`);
    if (await probe()) return Date.now() - t0;
    await sleep(100);
  }
  throw new Error(`${what}: not ready within ${ms} ms`);
}

/** clamd's zPING on its unix socket: true on PONG. */
export function clamdPing(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    if (!existsSync(path)) return resolve(false);
    const s = connect({ path });
    let got = '';
    const done = (v: boolean) => {
      s.destroy();
      resolve(v);
    };
    s.setTimeout(1000, () => done(false));
    s.on('error', () => done(false));
    s.on('connect', () => s.write('zPING\0'));
    s.on('data', (d) => {
      got += d.toString('latin1');
      if (got.includes('\0')) done(got.startsWith('PONG'));
    });
  });
}

/** Resolves when the process has exited (at once if it already has). */
export function exited(p: ChildProcess): Promise<void> {
  return p.exitCode !== null || p.signalCode !== null ? Promise.resolve() : new Promise((r) => p.once('exit', () => r()));
}

/**
 * c-icap's virus_scan scans only the file types listed here, classified by c-icap.magic
 * from the first bytes. A list without some groups lets a random test file through
 * unscanned when its first bytes happen to look like one of them ("BM" is a BMP,
 * "\xff\xfb" an MP3, "%!" PostScript): every group c-icap 0.5 knows, as a gateway wants.
 */
export const SCAN_EVERY_FILE_TYPE = 'virus_scan.ScanFileTypes TEXT DATA EXECUTABLE ARCHIVE GRAPHICS STREAM DOCUMENT';
