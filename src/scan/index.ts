/** The scanners of the configuration's `scan:` block (README "Malware scanning"). */
import type { ScanConfig } from '../config/config.js';
import { ClamdScanner } from './clamd.js';
import { GuardedScanner } from './guard.js';
import { IcapScanner } from './icap.js';

export { ClamdScanner } from './clamd.js';
export { GuardedScanner, MAX_SCAN_QUEUE, type GuardedResult, type ScanStats } from './guard.js';
export { IcapScanner } from './icap.js';
export type { ScanInput, ScanMeta, ScanResult, Scanner } from './scanner.js';

/** One guarded scanner per configured engine (a rule's `scan: icap` / `scan: clamd` picks one). */
export function scannersFromConfig(cfg: ScanConfig): { icap: GuardedScanner | null; clamd: GuardedScanner | null } {
  const guard = { timeoutMs: cfg.timeout_ms, failOpen: cfg.fail_open, maxConcurrent: cfg.max_concurrent };
  return {
    icap: cfg.icap ? new GuardedScanner(new IcapScanner({ url: cfg.icap, timeoutMs: cfg.timeout_ms }), guard) : null,
    clamd: cfg.clamd ? new GuardedScanner(new ClamdScanner({ address: cfg.clamd, timeoutMs: cfg.timeout_ms }), guard) : null,
  };
}
