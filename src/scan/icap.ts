/**
 * An ICAP client (RFC 3507) for one service: OPTIONS (§4.10) to learn Methods, Preview,
 * ISTag and Allow: 204; then each file as an encapsulated HTTP message (§4.4) to RESPMOD
 * (§4.9.2: a response carrying the file, the way a proxy scans a download) or REQMOD
 * (§4.8: a request carrying it, the way a proxy scans an upload).
 *
 * The body is sent in chunked transfer encoding with Encapsulated offsets (§4.4.1). With
 * a Preview (§4.5) the first bytes go first; a file that fits in the preview ends with
 * `0; ieof` and the server answers at once, otherwise the rest follows its 100 Continue.
 *
 * The answer: 204 No Content (§4.6, allowed with `Allow: 204`) is clean; 200 with
 * X-Infection-Found (draft-stecher-icap-subid §3.4, what c-icap sends), X-Virus-ID or
 * X-Violations-Found is infected with that name; a 200 whose encapsulated message differs
 * from what was sent (another HTTP status, a response to a REQMOD request, another body)
 * is infected ("modified"); a 200 that gives the same message back is clean; any other
 * status (§4.3.3: 4xx, 5xx) is an error.
 */
import { createHash } from 'node:crypto';
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

/** RFC 3507 §4.2: the default ICAP port. */
export const ICAP_DEFAULT_PORT = 1344;
/** Longest ICAP or encapsulated HTTP head accepted from a server. */
const MAX_HEAD = 64 * 1024;
/** Bytes per chunk of the encapsulated body. */
export const ICAP_CHUNK_BYTES = 64 * 1024;
/** OPTIONS answers are reused this long when the server sends no Options-TTL (§4.10.2). */
export const DEFAULT_OPTIONS_TTL_S = 300;

export interface IcapUrl {
  host: string;
  port: number;
  /** The service path, e.g. /srv_clamav (query kept: c-icap takes service arguments there). */
  service: string;
  /** The request-URI sent on the request line (§4.2). */
  uri: string;
}

export function parseIcapUrl(s: string): IcapUrl {
  const u = new URL(s);
  if (u.protocol !== 'icap:') throw new Error(`not an icap:// URL: ${s}`);
  const host = u.hostname.replace(/^\[|\]$/g, '');
  const port = u.port ? Number(u.port) : ICAP_DEFAULT_PORT;
  const service = `${u.pathname}${u.search}`;
  const hostPart = host.includes(':') ? `[${host}]` : host;
  return { host, port, service, uri: `icap://${hostPart}:${port}${service}` };
}

export interface Head {
  /** ICAP/1.0 200 OK → version, code, text. */
  version: string;
  code: number;
  text: string;
  /** Lower-cased names; folded continuation lines joined with "\n". */
  headers: Map<string, string>;
}

/** A head (status line and header fields, without the blank line) as text. */
export function parseHead(raw: string, expect: RegExp = /^(ICAP\/\d\.\d)$/): Head {
  const lines = raw.split('\r\n');
  const status = lines.shift() ?? '';
  const m = /^(\S+) (\d{3})(?: (.*))?$/.exec(status);
  if (!m || !expect.test(m[1]!)) throw new ConnError('protocol', `bad status line ${JSON.stringify(cleanText(status, 80))}`);
  const headers = new Map<string, string>();
  let last: string | null = null;
  for (const line of lines) {
    if (/^[ \t]/.test(line) && last) {
      // Header folding (RFC 3507 §4.3 follows RFC 2616 §4.2): c-icap folds X-Violations-Found.
      headers.set(last, `${headers.get(last)}\n${line.trim()}`);
      continue;
    }
    const i = line.indexOf(':');
    if (i <= 0) throw new ConnError('protocol', `bad header line ${JSON.stringify(cleanText(line, 80))}`);
    last = line.slice(0, i).trim().toLowerCase();
    const v = line.slice(i + 1).trim();
    headers.set(last, headers.has(last) ? `${headers.get(last)}, ${v}` : v);
  }
  return { version: m[1]!, code: Number(m[2]), text: m[3] ?? '', headers };
}

/** §4.4.1: "req-hdr=0, res-hdr=45, res-body=100" → [[name, offset], ...] in order. */
export function parseEncapsulated(v: string): [string, number][] {
  const out: [string, number][] = [];
  for (const part of v.split(',')) {
    const m = /^\s*(req-hdr|res-hdr|req-body|res-body|null-body|opt-body)=(\d+)\s*$/.exec(part);
    if (!m) throw new ConnError('protocol', `bad Encapsulated header ${JSON.stringify(cleanText(v, 80))}`);
    const off = Number(m[2]);
    if (out.length && off < out[out.length - 1]![1]) throw new ConnError('protocol', 'Encapsulated offsets out of order');
    out.push([m[1]!, off]);
  }
  const bodies = out.filter(([n]) => n.endsWith('-body'));
  if (bodies.length !== 1 || out[out.length - 1]![0] !== bodies[0]![0])
    throw new ConnError('protocol', 'Encapsulated must end with exactly one body entity (§4.4.1)');
  return out;
}

/** The virus name from the ICAP answer's headers, or null when none says infected. */
export function infectionName(h: Map<string, string>): string | null {
  const xif = h.get('x-infection-found');
  if (xif) {
    // draft-stecher-icap-subid §3.4: Type=0; Resolution=2; Threat=Name;
    const m = /(?:^|;)\s*Threat=([^;]*)/i.exec(xif);
    return cleanText(m?.[1]?.trim() || xif);
  }
  const vid = h.get('x-virus-id');
  if (vid) return cleanText(vid.split('\n')[0]!);
  const xvf = h.get('x-violations-found');
  if (xvf) {
    // §3.5: count, then per violation: filename, threat, problem id, resolution (folded lines).
    const lines = xvf.split('\n');
    if (Number(lines[0]) > 0) return cleanText(lines[2] ?? 'violation');
  }
  return null;
}

export interface IcapServerOptions {
  methods: string[];
  /** Bytes of preview the service wants (§4.5), or null: no preview. */
  preview: number | null;
  istag: string | null;
  allow204: boolean;
  ttlS: number;
}

export interface IcapClientOptions {
  url: string;
  timeoutMs: number;
  /** RESPMOD (default) or REQMOD. */
  method?: 'RESPMOD' | 'REQMOD';
  /** Largest preview used even if the service asks for more. */
  maxPreview?: number;
  now?: () => number;
}

const enc = (s: string) => Buffer.from(s, 'latin1');
const CRLF = '\r\n';

/** One chunk of the HTTP/1.1 chunked encoding (§4.4.1 uses it for every body). */
function chunk(data: Buffer): Buffer {
  return Buffer.concat([enc(`${data.length.toString(16)}${CRLF}`), data, enc(CRLF)]);
}

/** The path of the encapsulated URL: the file's name, encoded, at most 200 characters. */
function filePath(name: string | undefined): string {
  const base = (name ?? 'file').split(/[\\/]/).pop() || 'file';
  return `/${encodeURIComponent(base.slice(0, 200))}`;
}

export class IcapScanner implements Scanner {
  readonly kind = 'icap';
  readonly url: IcapUrl;
  private readonly method: 'RESPMOD' | 'REQMOD';
  private cached: { at: number; opts: IcapServerOptions } | null = null;
  private readonly now: () => number;

  constructor(private readonly o: IcapClientOptions) {
    this.url = parseIcapUrl(o.url);
    this.method = o.method ?? 'RESPMOD';
    this.now = o.now ?? Date.now;
  }

  private get ep(): Endpoint {
    return { host: this.url.host, port: this.url.port };
  }

  private hostHeader(): string {
    const h = this.url.host.includes(':') ? `[${this.url.host}]` : this.url.host;
    return `${h}:${this.url.port}`;
  }

  private signal(o: ScanOptions): AbortSignal {
    const t = AbortSignal.timeout(this.o.timeoutMs);
    return o.signal ? AbortSignal.any([o.signal, t]) : t;
  }

  /** §4.10: OPTIONS, cached for Options-TTL. Throws ConnError. */
  async options(o: ScanOptions = {}): Promise<IcapServerOptions> {
    if (this.cached && this.now() - this.cached.at < this.cached.opts.ttlS * 1000) return this.cached.opts;
    const signal = this.signal(o);
    const conn = await Conn.open(this.ep, signal, MAX_HEAD * 2);
    try {
      await conn.write(
        `OPTIONS ${this.url.uri} ICAP/1.0${CRLF}Host: ${this.hostHeader()}${CRLF}User-Agent: Gatehouse${CRLF}Encapsulated: null-body=0${CRLF}${CRLF}`,
      );
      const head = parseHead((await conn.readUntil('\r\n\r\n', MAX_HEAD, 'the OPTIONS answer')).toString('latin1'));
      if (head.code !== 200) throw new ConnError('protocol', `OPTIONS answered ${head.code} ${cleanText(head.text, 60)}`);
      const h = head.headers;
      const methods = (h.get('methods') ?? '')
        .split(',')
        .map((s) => s.trim().toUpperCase())
        .filter(Boolean);
      if (!methods.includes(this.method))
        throw new ConnError('protocol', `the service offers ${methods.join(', ') || 'no methods'}, not ${this.method}`);
      const pv = h.get('preview');
      const preview = pv !== undefined && /^\d+$/.test(pv) ? Math.min(Number(pv), this.o.maxPreview ?? 1 << 20) : null;
      const ttl = h.get('options-ttl');
      const opts: IcapServerOptions = {
        methods,
        preview,
        istag: h.get('istag') ?? null,
        allow204: /(^|,)\s*204\s*(,|$)/.test(h.get('allow') ?? ''),
        ttlS: ttl && /^\d+$/.test(ttl) ? Number(ttl) : DEFAULT_OPTIONS_TTL_S,
      };
      this.cached = { at: this.now(), opts };
      return opts;
    } finally {
      conn.close();
    }
  }

  async scan(file: ScanInput, meta: ScanMeta, o: ScanOptions = {}): Promise<ScanResult> {
    const signal = this.signal(o);
    let conn: Conn | null = null;
    try {
      const opts = await this.options({ signal });
      conn = await Conn.open(this.ep, signal, MAX_HEAD * 2 + ICAP_CHUNK_BYTES * 4);
      return await this.exchange(conn, opts, file, meta);
    } catch (e) {
      if (e instanceof ConnError) return errorResult(signal.aborted ? 'timeout' : e.kind, `icap: ${e.message}`);
      return errorResult('protocol', `icap: ${(e as Error).message}`);
    } finally {
      conn?.close();
    }
  }

  private async exchange(conn: Conn, opts: IcapServerOptions, file: ScanInput, meta: ScanMeta): Promise<ScanResult> {
    const path = filePath(meta.name);
    const body = `Content-Type: application/octet-stream${CRLF}Content-Length: ${meta.size}${CRLF}${CRLF}`;
    let encapsulated: string;
    let httpHeads: string;
    if (this.method === 'RESPMOD') {
      const req = `GET ${path} HTTP/1.1${CRLF}Host: gatehouse.invalid${CRLF}${CRLF}`;
      const res = `HTTP/1.1 200 OK${CRLF}${body}`;
      encapsulated = `req-hdr=0, res-hdr=${req.length}, res-body=${req.length + res.length}`;
      httpHeads = req + res;
    } else {
      const req = `PUT ${path} HTTP/1.1${CRLF}Host: gatehouse.invalid${CRLF}${body}`;
      encapsulated = `req-hdr=0, req-body=${req.length}`;
      httpHeads = req;
    }
    const previewLen = opts.preview === null ? null : Math.min(opts.preview, meta.size);
    const lines = [
      `${this.method} ${this.url.uri} ICAP/1.0`,
      `Host: ${this.hostHeader()}`,
      'User-Agent: Gatehouse',
      // §4.6: 204 may be sent in answer to the preview anyway; outside it only with Allow: 204.
      ...(opts.allow204 ? ['Allow: 204'] : []),
      ...(previewLen !== null ? [`Preview: ${previewLen}`] : []),
      `Encapsulated: ${encapsulated}`,
    ];
    await conn.write(lines.join(CRLF) + CRLF + CRLF + httpHeads);

    const sent = createHash('sha256');
    let sentBytes = 0;
    const it = chunks(file, ICAP_CHUNK_BYTES)[Symbol.asyncIterator]();
    let carry: Buffer | null = null;
    /**
     * Writes; with `untilAnswer` a write stops waiting for the socket to drain once the
     * answer begins, and a write that fails after it began (EPIPE/ECONNRESET: the server
     * stopped reading and closed) is not an error: the answer is read. false: answered.
     */
    const put = async (data: Buffer | string, untilAnswer: boolean): Promise<boolean> => {
      if (untilAnswer && conn.answered) return false;
      try {
        await conn.write(data, untilAnswer);
      } catch (e) {
        if (untilAnswer && conn.pending > 0) return false;
        throw e;
      }
      return !(untilAnswer && conn.answered);
    };
    const sendChunk = async (c: Buffer, untilAnswer: boolean): Promise<boolean> => {
      if (untilAnswer && conn.answered) return false;
      sent.update(c);
      sentBytes += c.length;
      return put(chunk(c), untilAnswer);
    };

    if (previewLen !== null) {
      // §4.5: the first previewLen bytes, then `0; ieof` when that is the whole file.
      let need = previewLen;
      let answered = false;
      while (need > 0 && !answered) {
        const n = await it.next();
        if (n.done) break;
        const c = n.value.length > need ? n.value.subarray(0, need) : n.value;
        if (n.value.length > need) carry = n.value.subarray(need);
        need -= c.length;
        answered = !(await sendChunk(c, true));
      }
      const whole = previewLen >= meta.size;
      if (!answered) await put(whole ? `0; ieof${CRLF}${CRLF}` : `0${CRLF}${CRLF}`, true);
      const first = await this.readHead(conn);
      if (first.code !== 100) return this.verdict(conn, first, sent, sentBytes);
      if (whole) throw new ConnError('protocol', '100 Continue after ieof (§4.5)');
    }
    /** The rest of the body (all of it without a preview), then its last chunk; false: an answer came first. */
    const sendRest = async (untilAnswer: boolean): Promise<boolean> => {
      if (carry?.length) {
        const c = carry;
        carry = null;
        if (!(await sendChunk(c, untilAnswer))) return false;
      }
      for (;;) {
        const n = await it.next();
        if (n.done) break;
        if (!(await sendChunk(n.value, untilAnswer))) return false;
      }
      if (sentBytes !== meta.size) throw new ConnError('protocol', `the file gave ${sentBytes} bytes, meta.size says ${meta.size}`);
      return put(`0${CRLF}${CRLF}`, untilAnswer);
    };
    if (await sendRest(true)) {
      const head = await this.readHead(conn);
      if (head.code === 100) throw new ConnError('protocol', 'unexpected 100 Continue');
      return this.verdict(conn, head, sent, sentBytes);
    }
    // An answer while the body is still being written. RFC 3507 §4.5 lets the server give a
    // final answer (204, a modified message) after the preview instead of 100 Continue, i.e.
    // before the rest of the body; for an answer that comes later we do what RFC 2616
    // §8.2.2 asks of an HTTP client that sees a status while sending a body (ICAP's status
    // codes are HTTP's, RFC 3507 §4.3.3): stop sending it. A final answer that needs no more
    // of the body — 204 (§4.6), an infection named, an error status (§4.3.3) — is used now.
    // A 200 that names nothing may be the server streaming the message back as it reads it
    // (§4.9.2): it gets the rest of the body, then is compared with what was sent.
    const head = await this.readHead(conn);
    if (head.code === 100) throw new ConnError('protocol', 'unexpected 100 Continue');
    if (head.code === 200 && !infectionName(head.headers)) await sendRest(false);
    return this.verdict(conn, head, sent, sentBytes);
  }

  private async readHead(conn: Conn): Promise<Head> {
    return parseHead((await conn.readUntil('\r\n\r\n', MAX_HEAD, 'the ICAP answer')).toString('latin1'));
  }

  /** The final answer (§4.3.3, §4.6, §4.9.3) as a verdict. */
  private async verdict(conn: Conn, head: Head, sent: ReturnType<typeof createHash>, sentBytes: number): Promise<ScanResult> {
    if (head.code === 204) return { verdict: 'clean', reason: 'icap: 204 No Content' };
    if (head.code !== 200) return errorResult('refused', `icap: ${head.code} ${head.text}`);
    const virus = infectionName(head.headers);
    if (virus) return { verdict: 'infected', virus, reason: 'icap: infection reported' };
    // No infection header: compare the encapsulated message with what was sent (§4.9.3).
    const encv = head.headers.get('encapsulated');
    if (!encv) throw new ConnError('protocol', '200 without Encapsulated (§4.4.1)');
    const parts = parseEncapsulated(encv);
    let at = 0;
    let httpStatus: number | null = null;
    let gotResponse = false;
    for (let i = 0; i < parts.length - 1; i++) {
      const [name, off] = parts[i]!;
      const len = parts[i + 1]![1] - off;
      if (off !== at || len <= 0 || len > MAX_HEAD) throw new ConnError('protocol', 'Encapsulated offsets do not match the heads');
      const raw = (await conn.readBytes(len, `the encapsulated ${name}`)).toString('latin1');
      at += len;
      if (!raw.endsWith('\r\n\r\n')) throw new ConnError('protocol', `encapsulated ${name} does not end with a blank line`);
      if (name === 'res-hdr') {
        gotResponse = true;
        httpStatus = parseHead(raw.slice(0, -4), /^HTTP\/\d\.\d$/).code;
      }
    }
    const [bodyName] = parts[parts.length - 1]!;
    let got: { hash: string; bytes: number } | null = null;
    if (bodyName !== 'null-body') got = await readChunked(conn);
    if (this.method === 'REQMOD' && gotResponse)
      return { verdict: 'infected', reason: `icap: the request was answered with HTTP ${httpStatus ?? '?'} (modified)` };
    if (this.method === 'RESPMOD' && httpStatus !== null && httpStatus !== 200)
      return { verdict: 'infected', reason: `icap: modified response, HTTP ${httpStatus}` };
    const mine = sent.digest('hex');
    if (!got || got.bytes !== sentBytes || got.hash !== mine)
      return { verdict: 'infected', reason: `icap: modified ${this.method === 'RESPMOD' ? 'response' : 'request'} body` };
    return { verdict: 'clean', reason: 'icap: 200, message unmodified' };
  }
}

/** A chunked body (§4.4.1), hashed as it comes; trailers skipped. */
async function readChunked(conn: Conn): Promise<{ hash: string; bytes: number }> {
  const h = createHash('sha256');
  let bytes = 0;
  for (;;) {
    const line = (await conn.readUntil('\r\n', 1024, 'a chunk size')).toString('latin1');
    const m = /^([0-9a-fA-F]+)\s*(?:;.*)?$/.exec(line);
    if (!m) throw new ConnError('protocol', `bad chunk size line (${line.length} bytes)`); // never echo what may be file content
    let n = parseInt(m[1]!, 16);
    if (!Number.isSafeInteger(n)) throw new ConnError('protocol', 'chunk size out of range');
    if (n === 0) {
      // Trailer fields, then the blank line.
      while ((await conn.readUntil('\r\n', MAX_HEAD, 'a trailer')).length) {
        /* skip */
      }
      return { hash: h.digest('hex'), bytes };
    }
    while (n > 0) {
      const part = await conn.readUpTo(Math.min(n, ICAP_CHUNK_BYTES), 'a chunk');
      h.update(part);
      bytes += part.length;
      n -= part.length;
    }
    if ((await conn.readBytes(2, 'a chunk end')).toString('latin1') !== '\r\n')
      throw new ConnError('protocol', 'chunk not followed by CRLF');
  }
}
