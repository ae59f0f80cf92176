/**
 * Loading one of the project's native addons (native/, built by `npm run build:native`
 * into native/build/Release). This file sits at src/util/ when run from the sources (tsx)
 * and at dist/src/util/ in a tsc build, so the build directory is two or three levels up.
 * Every addon is optional: a missing or unloadable one is null with the reason, and its
 * caller takes the pure-JS path or fails closed.
 */
import { createRequire } from 'node:module';

const BUILD_DIRS = ['../../native/build/Release/', '../../../native/build/Release/'];

export interface LoadedAddon<T> {
  addon: T | null;
  /** Why it is null: not built, or the loader's error. Empty when loaded. */
  reason: string;
}

/**
 * Loads `native/build/Release/<file>` and keeps it when `accept` recognises its exports
 * (an addon built from older sources is refused as out of date).
 */
export function loadAddon<T>(file: string, accept: (m: Partial<T>) => boolean): LoadedAddon<T> {
  const req = createRequire(import.meta.url);
  let reason = `native/build/Release/${file} not built (npm run build:native)`;
  for (const dir of BUILD_DIRS) {
    try {
      const m = req(dir + file) as Partial<T>;
      if (m && accept(m)) return { addon: m as T, reason: '' };
      reason = `native/build/Release/${file} is out of date (npm run build:native)`;
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code !== 'MODULE_NOT_FOUND') reason = `${file} fails to load: ${(err as Error).message}`;
    }
  }
  return { addon: null, reason };
}
