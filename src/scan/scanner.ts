/**
 * The common shape of the malware scanners (README "Malware scanning"): an ICAP service
 * (RFC 3507, icap.ts) or clamd's INSTREAM (clamd.ts). A scanner never throws: every
 * failure is a verdict 'error' with the kind and a reason (never the file's content).
 */

export type ScanInput = Buffer | AsyncIterable<Buffer>;

export interface ScanMeta {
  /** The file's name as seen on the data channel (sanitised before it goes on the wire). */
  name?: string;
  /** Bytes of the whole file. */
  size: number;
}

/** Why a scan did not give an answer. */
export type ScanErrorKind = 'timeout' | 'unreachable' | 'protocol' | 'refused';

export interface ScanResult {
  verdict: 'clean' | 'infected' | 'error';
  /** The engine's name of what it found (infected only; may be absent for a modified ICAP answer). */
  virus?: string;
  /** Human-readable detail; never the file's content. */
  reason?: string;
  /** For 'error': what went wrong. */
  error?: ScanErrorKind;
}

export interface ScanOptions {
  /** Aborts the scan (the result is then an error of kind 'timeout'). */
  signal?: AbortSignal;
}

export interface Scanner {
  /** 'icap' or 'clamd'. */
  readonly kind: string;
  scan(file: ScanInput, meta: ScanMeta, opts?: ScanOptions): Promise<ScanResult>;
}

/** The file in pieces of at most `max` bytes (a Buffer is sliced, an iterable re-chunked). */
export async function* chunks(file: ScanInput, max: number): AsyncGenerator<Buffer> {
  if (Buffer.isBuffer(file)) {
    for (let o = 0; o < file.length; o += max) yield file.subarray(o, Math.min(file.length, o + max));
    return;
  }
  for await (const b of file) {
    for (let o = 0; o < b.length; o += max) yield b.subarray(o, Math.min(b.length, o + max));
  }
}

/** A server's text made safe for a reason: printable ASCII, at most 200 characters. */
export function cleanText(s: string, max = 200): string {
  const t = s.replace(/[^\x20-\x7e]+/g, ' ').trim();
  return t.length > max ? `${t.slice(0, max)}…` : t;
}

const UNREACHABLE = new Set(['ECONNREFUSED', 'ENOENT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'EACCES']);

/** The error kind of a socket error: refused/absent/unreachable peers versus the rest. */
export function socketErrorKind(e: unknown): ScanErrorKind {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  if (code && UNREACHABLE.has(code)) return 'unreachable';
  return 'protocol';
}

export function errorResult(error: ScanErrorKind, reason: string): ScanResult {
  return { verdict: 'error', error, reason: cleanText(reason) };
}
