/**
 * Request bodies of the director (core.md §2): at most `max` bytes, one strict JSON object
 * (src/util/strict-json.ts: UTF-8, an object, no duplicate member names); anything else is
 * 400 `bad_request`. A body over the bound is refused as soon as it is declared
 * (Content-Length, RFC 9110 §8.6) or read, with `Connection: close` (the rest is not read).
 */
import type { IncomingMessage } from 'node:http';
import { parseStrictObject } from '../util/strict-json.js';
import { CoreError } from './errors.js';

export interface JsonBodyOptions {
  /** An empty (or all-whitespace) body is `{}` (the router's ctx.body()); else it is refused. */
  emptyIsObject: boolean;
}

/** Reads at most `max` bytes and parses one strict JSON object; 400 bad_request otherwise. */
export function readJsonBody(req: IncomingMessage, max: number, opts: JsonBodyOptions): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const tooBig = () => new CoreError('bad_request', `the body exceeds ${max} bytes`, { connection: 'close' });
    if (Number(req.headers['content-length'] ?? 0) > max) {
      req.resume();
      return reject(tooBig());
    }
    const chunks: Buffer[] = [];
    let n = 0;
    let done = false;
    req.on('data', (c: Buffer) => {
      if (done) return;
      n += c.length;
      if (n > max) {
        done = true;
        req.resume();
        return reject(tooBig());
      }
      chunks.push(c);
    });
    req.on('error', (err) => {
      if (!done) {
        done = true;
        reject(err);
      }
    });
    req.on('end', () => {
      if (done) return;
      done = true;
      const bytes = Buffer.concat(chunks);
      if (opts.emptyIsObject && !bytes.toString('utf8').trim()) return resolve({});
      const v = parseStrictObject(bytes);
      if (!v) return reject(new CoreError('bad_request', 'the body is not one JSON object (UTF-8, no duplicate members)'));
      resolve(v);
    });
  });
}
