/**
 * DtlsSession's steady-state shortcut (issue 13: one application_data record of the epoch
 * whose verified keys decrypted the last record, handled without the general record
 * loop) has exactly the loop's effects: the same events, the same plaintexts to
 * onAppData, the same counters. Real OpenSSL sessions (AES-GCM with a renegotiation, so
 * the epoch changes under the shortcut; CBC; ChaCha20), fed as captured and with what a
 * hostile or lossy path adds: tampered, truncated and replayed records, two records in
 * one datagram, a record of an old epoch, a content type that is not application data.
 */
import t from 'tap';
import { KeyLog } from '../../../src/inspect/keylog.js';
import { MAX_FRAGMENT_LEN } from '../../../src/wire/dtls.js';
import type { Direction } from '../../../src/inspect/events.js';
import { datagrams, harness, loadFixture } from './dtls-session-helpers.js';

const FIXTURES = ['gcm128-srtp-reneg.json', 'cbc-sha-etm.json', 'psk-cbc-sha256-mte.json', 'chacha20.json'];

/** The fixture's datagrams, each application-data one followed by its troubled variants. */
function withTrouble(dg: { dir: Direction; data: Buffer }[]): { dir: Direction; data: Buffer }[] {
  const out: { dir: Direction; data: Buffer }[] = [];
  let prev: { dir: Direction; data: Buffer } | null = null;
  for (const d of dg) {
    out.push(d);
    if (d.data[0] !== 23 || d.data.length < 40) continue;
    const bad = Buffer.from(d.data);
    bad[bad.length - 3]! ^= 0x40; // tag or MAC no longer verifies
    const alert = Buffer.from(d.data);
    alert[0] = 21; // an alert record under the same keys: not the shortcut's
    const old = Buffer.from(d.data);
    old[4] = old[4]! === 0 ? 1 : old[4]! - 1; // another epoch
    out.push(
      { dir: d.dir, data: bad },
      { dir: d.dir, data: d.data.subarray(0, d.data.length - 5) }, // length past the end
      d, // replayed as is
      { dir: d.dir, data: alert },
      { dir: d.dir, data: old },
    );
    if (prev && prev.dir === d.dir) out.push({ dir: d.dir, data: Buffer.concat([prev.data, d.data]) }); // two records
    out.push(d); // and the shortcut again
    prev = d;
  }
  return out;
}

for (const name of FIXTURES) {
  t.test(`${name}: the shortcut has the general loop's effects`, async (t) => {
    const fx = loadFixture(name);
    const input = withTrouble(datagrams(fx));
    const run = (steady: boolean, borrowedPlaintext: boolean) => {
      const h = harness({
        keyLog: KeyLog.parse(fx.keylog),
        steady,
        ...(borrowedPlaintext ? { plaintextInto: Buffer.alloc(MAX_FRAGMENT_LEN) } : {}),
      });
      input.forEach((d, i) => h.session.feed(d.data, d.dir, 1000 + i));
      h.session.flush(1000 + input.length);
      return {
        steadyDatagrams: h.session.steadyDatagrams,
        events: h.events.map((e) => JSON.stringify(e, (_k, v: unknown) => (Buffer.isBuffer(v) ? v.toString('hex') : v))),
        app: h.app.map((a) => `${a.dir} ${a.association} ${a.time} ${a.data.toString('hex')}`),
        stats: { ...h.session.stats },
      };
    };
    const general = run(false, false);
    t.ok(general.app.length >= 9, `${general.app.length} application-data records decrypted`);
    t.equal(general.steadyDatagrams, 0, 'steady: false takes the general loop only');
    for (const borrowed of [false, true]) {
      const steady = run(true, borrowed);
      const how = borrowed ? 'borrowed plaintexts' : 'own plaintexts';
      t.same(steady.app, general.app, `${how}: the same plaintexts, in order`);
      t.same(steady.events, general.events, `${how}: the same events`);
      t.same(steady.stats, general.stats, `${how}: the same counters`);
      t.ok(steady.steadyDatagrams > 0, `${how}: ${steady.steadyDatagrams} datagrams took the shortcut`);
    }
  });
}
