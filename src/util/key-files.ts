/**
 * Private key files, read in one place (issue 13, "the supervisor alone reads the
 * gateway's private keys"). A single gateway reads its PEM key files from disk here; a
 * relay worker cannot (it dropped privileges, and the files are the supervisor's, mode
 * 0600), so before it starts serving it asks the supervisor's key broker for each one and
 * gives the bytes to provideKeyFiles(), under the path the configuration names. The
 * process then holds them in memory only; nothing is written back to disk.
 *
 * One process serves one configuration, so the provided set is process-wide and given
 * once, at start, before any listener or the identity is loaded.
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';

let provided: ReadonlyMap<string, Buffer> | null = null;

/** A worker's keys from the broker, by the configured path of each file. Once per process. */
export function provideKeyFiles(keys: ReadonlyMap<string, Buffer>): void {
  if (provided) throw new Error('provideKeyFiles: the key files were provided already');
  provided = new Map([...keys].map(([path, bytes]) => [resolve(path), bytes]));
}

/**
 * The bytes of a private key file: what the broker provided for that path, else the file
 * itself. A worker that was provided keys never falls back to the disk for another key
 * path (it could not read it, and should not try): that is an error naming the path.
 */
export function readKeyFile(path: string): Buffer {
  if (!provided) return readFileSync(path);
  const bytes = provided.get(resolve(path));
  if (!bytes) throw new Error(`${path}: not one of the keys this worker got from the supervisor's key broker`);
  return bytes;
}
