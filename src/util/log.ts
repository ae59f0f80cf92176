import { pino, type Logger, type DestinationStream } from 'pino';

export type { Logger };

/**
 * Structured JSON logs (pino). Secrets never reach a log line: the redaction list
 * below is a safety net; code must not pass key material or passwords in the first place.
 */
export const REDACTED_PATHS = [
  'password',
  '*.password',
  'key',
  '*.key',
  'keys',
  '*.keys',
  'secret',
  '*.secret',
  'rest_secret',
  '*.rest_secret',
  'token',
  '*.token',
];

export function createLogger(opts: { level?: string; name?: string } = {}, dest?: DestinationStream): Logger {
  return pino(
    {
      name: opts.name ?? 'gatehouse',
      level: opts.level ?? 'info',
      redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
      base: { pid: process.pid },
    },
    dest ?? pino.destination({ dest: 2, sync: false }),
  );
}

/** A logger that discards everything, for tests and library use. */
export const silentLogger: Logger = pino({ level: 'silent' });
