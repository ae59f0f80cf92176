// core.trust (certificate login, core.md §5): roots and crls are lists of file paths;
// a wrong shape is a configuration error naming the key; crls without roots stops the start.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { parseConfig } from '../../../src/config/config.js';
import { startCore } from '../../../src/core/index.js';
import { StaticUserDirectory } from '../../../src/store/users.js';
import { createLogger } from '../../../src/util/log.js';
import { Supervisor } from '../../../src/util/supervise.js';
import { ManualClock } from '../../../src/util/clock.js';

t.test('core.trust.roots and core.trust.crls', async (t) => {
  const d = parseConfig('', 'a.yaml');
  t.same(d.core.trust, { roots: [], crls: [] }, 'defaults: off');
  const c = parseConfig('core:\n  trust:\n    roots: [/pki/root.pem]\n    crls: [/pki/a.crl, /pki/b.crl]\n', 'b.yaml');
  t.same(c.core.trust, { roots: ['/pki/root.pem'], crls: ['/pki/a.crl', '/pki/b.crl'] });
  t.throws(() => parseConfig('core:\n  trust:\n    crls: /pki/a.crl\n', 'c.yaml'), /core\.trust\.crls/, 'not a list: the key is named');
  t.throws(() => parseConfig('core:\n  trust:\n    crlz: []\n', 'd.yaml'), /core\.trust\.crlz|crlz/, 'an unknown key is named');
});

t.test('crls without roots: the start stops naming core.trust.crls', async (t) => {
  const log = createLogger({ level: 'error' }, { write: () => {} });
  const cfg = parseConfig('core:\n  listen: http://127.0.0.1:0\n  trust:\n    crls: [/nonexistent.crl]\n', 'e.yaml');
  await t.rejects(
    startCore(cfg, {
      users: new StaticUserDirectory([]),
      logger: log,
      clock: new ManualClock(),
      supervisor: new Supervisor(log),
      restSecret: randomBytes(24).toString('base64url'),
      dataDir: null,
    }),
    /core\.trust\.crls: CRLs are set but core\.trust\.roots is empty/,
  );
});
