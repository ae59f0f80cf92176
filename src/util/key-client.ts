/**
 * A worker's side of the key broker (key-broker.ts): ask for one key by name over the
 * broker's Unix socket. The broker decides from SO_PEERCRED who is asking, so this sends
 * nothing about itself; it must run after dropPrivileges() (the broker serves a worker
 * only under the uid it recorded for it).
 *
 * One JSON object per line: {"key":"<name>"} out, {"ok":true,"key":"<base64>"} or
 * {"ok":false,"error":"refused"|"malformed"} back. The answer is bounded (`maxBytes`).
 */
import { connect } from 'node:net';
import { GatehouseError } from './errors.js';
import { parseStrictObject } from './strict-json.js';

export interface KeyRequestOptions {
  /** Give up after this long. Default 5000 ms. */
  timeoutMs?: number;
  /** Longest answer line accepted. Default 1 MiB (a PEM private key is a few KiB). */
  maxBytes?: number;
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** The key's bytes; throws E_KEY_REFUSED when the broker refused, E_KEY_BROKER on anything else. */
export function requestKey(socketPath: string, name: string, opts: KeyRequestOptions = {}): Promise<Buffer> {
  const maxBytes = opts.maxBytes ?? 1 << 20;
  return new Promise<Buffer>((resolve, reject) => {
    const s = connect(socketPath);
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    const finish = (err: Error | null, key?: Buffer): void => {
      if (done) return;
      done = true;
      s.destroy();
      if (err) reject(err);
      else resolve(key!);
    };
    s.setTimeout(opts.timeoutMs ?? 5000, () => finish(new GatehouseError('E_KEY_BROKER', 'the key broker did not answer in time')));
    s.on('error', (err) => finish(new GatehouseError('E_KEY_BROKER', `key broker: ${(err as NodeJS.ErrnoException).code ?? err.message}`)));
    s.on('close', () => finish(new GatehouseError('E_KEY_BROKER', 'the key broker closed the connection without an answer')));
    s.on('connect', () => s.write(JSON.stringify({ key: name }) + '\n'));
    s.on('data', (chunk: Buffer) => {
      const nl = chunk.indexOf(0x0a);
      const take = nl >= 0 ? chunk.subarray(0, nl) : chunk;
      size += take.length;
      if (size > maxBytes) return finish(new GatehouseError('E_KEY_BROKER', 'the key broker answer is too long'));
      chunks.push(take);
      if (nl < 0) return;
      const answer = parseStrictObject(Buffer.concat(chunks));
      if (answer?.ok === true && typeof answer.key === 'string' && BASE64.test(answer.key))
        return finish(null, Buffer.from(answer.key, 'base64'));
      if (answer?.ok === false)
        return finish(
          new GatehouseError(
            answer.error === 'refused' ? 'E_KEY_REFUSED' : 'E_KEY_BROKER',
            `the key broker ${answer.error === 'refused' ? 'refused' : 'did not accept'} the request for key "${name}"`,
          ),
        );
      finish(new GatehouseError('E_KEY_BROKER', 'the key broker answer is malformed'));
    });
  });
}
