/**
 * clamd's INSTREAM (clamd(8), "INSTREAM"): the command `zINSTREAM\0` (z: NUL-terminated
 * commands and answers), then the file as chunks, each a 4-byte big-endian length and
 * that many bytes, and a zero-length chunk to end. The answer is one NUL-terminated line:
 * `stream: OK`, `stream: <NAME> FOUND` or `<detail> ERROR` (e.g. "INSTREAM size limit
 * exceeded. ERROR" beyond clamd's StreamMaxLength, after which clamd closes the socket).
 */
import { Conn, ConnError, type Endpoint } from './conn.js';
import {
  chunks,
  cleanText,
  errorResult,
  type ScanInput,
  type ScanMeta,
  type ScanOptions,
  type ScanResult,
  type Scanner,
} from './scanner.js';

/** Bytes per INSTREAM chunk (clamd reads chunks of any size up to StreamMaxLength). */
export const CLAMD_CHUNK_BYTES = 64 * 1024;
/** Longest answer line accepted from clamd. */
const MAX_ANSWER = 4096;

/** tcp://host:port or unix:/path (config `scan.clamd`). */
export function parseClamdAddress(s: string): Endpoint {
  if (s.startsWith('unix:')) return { path: s.slice(5) };
  const m = /^tcp:\/\/(\[[0-9a-fA-F:.]+\]|[^:/\s]+):(\d{1,5})$/.exec(s);
  if (!m) throw new Error(`not a clamd address: ${s}`);
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port: Number(m[2]) };
}

/** The 4-byte big-endian length prefix of one INSTREAM chunk. */
export function chunkHeader(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n, 0);
  return b;
}

/** clamd's answer line (without the NUL) as a verdict. */
export function parseClamdAnswer(line: string): ScanResult {
  const s = line.replace(/\0+$/, '').trim();
  // A session id may precede the answer ("1: stream: OK") with IDSESSION; strip it.
  const body = s.replace(/^\d+:\s*/, '');
  if (/^stream: OK$/.test(body)) return { verdict: 'clean' };
  const found = /^stream: (.+) FOUND$/.exec(body);
  if (found) return { verdict: 'infected', virus: cleanText(found[1]!), reason: 'clamd: FOUND' };
  if (/ERROR$/.test(body)) return errorResult('refused', `clamd: ${body}`);
  return errorResult('protocol', `clamd: unexpected answer ${JSON.stringify(cleanText(body, 80))}`);
}

export interface ClamdOptions {
  /** tcp://host:port or unix:/path. */
  address: string;
  /** Per-scan deadline, ms (the Guard's deadline also applies). */
  timeoutMs: number;
}

export class ClamdScanner implements Scanner {
  readonly kind = 'clamd';
  private readonly ep: Endpoint;

  constructor(private readonly opts: ClamdOptions) {
    this.ep = parseClamdAddress(opts.address);
  }

  async scan(file: ScanInput, _meta: ScanMeta, o: ScanOptions = {}): Promise<ScanResult> {
    const signal = o.signal
      ? AbortSignal.any([o.signal, AbortSignal.timeout(this.opts.timeoutMs)])
      : AbortSignal.timeout(this.opts.timeoutMs);
    let conn: Conn | null = null;
    try {
      conn = await Conn.open(this.ep, signal, MAX_ANSWER * 2);
      await conn.write('zINSTREAM\0');
      try {
        for await (const c of chunks(file, CLAMD_CHUNK_BYTES)) {
          if (!c.length) continue; // a zero-length chunk would end the stream early
          // clamd answers (and closes) early on a size limit: stop sending and read it.
          if (conn.answered) break;
          // An answer ends a wait for the drain too (clamd stops reading when it answers).
          await conn.write(Buffer.concat([chunkHeader(c.length), c]), true);
        }
        if (!conn.answered) await conn.write(chunkHeader(0), true);
      } catch (e) {
        // A write failing after clamd answered (EPIPE on its size limit): the answer counts.
        if (!conn.pending) throw e;
      }
      const line = await conn.readUntil('\0', MAX_ANSWER, "clamd's answer");
      return parseClamdAnswer(line.toString('latin1'));
    } catch (e) {
      if (e instanceof ConnError) return errorResult(signal.aborted ? 'timeout' : e.kind, `clamd: ${e.message}`);
      return errorResult('protocol', `clamd: ${(e as Error).message}`);
    } finally {
      conn?.close();
    }
  }
}
