/** Shared helpers for the DTLS session unit tests (not a test file). */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import type { DtlsFixture } from '../../../scripts/fixtures/openssl-dtls.js';
import { DtlsSession, type DtlsSessionOptions } from '../../../src/inspect/dtls-session.js';
import type { InspectEvent, Direction } from '../../../src/inspect/events.js';

const here = dirname(fileURLToPath(import.meta.url));

export function loadFixture(name: string): DtlsFixture {
  return JSON.parse(readFileSync(join(here, '../../fixtures/openssl', name), 'utf8')) as DtlsFixture;
}

export interface Harness {
  session: DtlsSession;
  events: InspectEvent[];
  app: { dir: Direction; data: Buffer; association: string; time: number }[];
  text(dir: Direction): string;
}

export function harness(opts: Partial<DtlsSessionOptions> = {}): Harness {
  const events: InspectEvent[] = [];
  const app: Harness['app'] = [];
  const session = new DtlsSession({
    listener: (e) => events.push(e),
    onAppData: (data, dir, association, time) => app.push({ dir, data: Buffer.from(data), association, time }),
    ...opts,
  });
  return {
    session,
    events,
    app,
    text: (dir) => Buffer.concat(app.filter((a) => a.dir === dir).map((a) => a.data)).toString('latin1'),
  };
}

export function datagrams(fx: DtlsFixture): { dir: Direction; data: Buffer }[] {
  return fx.datagrams.map((d) => ({ dir: d.dir, data: Buffer.from(d.hex, 'hex') }));
}
