/** turn.workers (issue 13): auto | 1..64, default 1; more than one needs store.redis. */
import t from 'tap';
import { availableParallelism } from 'node:os';
import { defaultConfig, parseConfig, MAX_TURN_WORKERS } from '../../../src/config/config.js';
import { ConfigError } from '../../../src/util/errors.js';

const redis = 'store:\n  redis: redis://127.0.0.1:6379/0\n';

t.test('default 1: one process, nothing changes', async (t) => {
  t.equal(defaultConfig().turn.workers, 1);
  t.equal(parseConfig('turn:\n  workers: 1\n', 'f.yaml').turn.workers, 1, '1 needs no store.redis');
});

t.test('worker_user: null by default; a local account with 2+ workers', async (t) => {
  t.equal(defaultConfig().turn.worker_user, null);
  t.equal(parseConfig(`turn:\n  workers: 2\n  worker_user: nobody\n${redis}`, 'f.yaml').turn.worker_user, 'nobody');
  t.equal(parseConfig(`turn:\n  workers: 2\n  worker_user: "65534:65534"\n${redis}`, 'f.yaml').turn.worker_user, '65534:65534');
});

t.test('a number and auto', async (t) => {
  t.equal(parseConfig(`turn:\n  workers: 2\n${redis}`, 'f.yaml').turn.workers, 2);
  t.equal(parseConfig(`turn:\n  workers: 64\n${redis}`, 'f.yaml').turn.workers, 64);
  t.equal(
    parseConfig(`turn:\n  workers: auto\n${redis}`, 'f.yaml').turn.workers,
    Math.min(MAX_TURN_WORKERS, availableParallelism()),
    'auto is os.availableParallelism()',
  );
});

const bad: [string, string, RegExp][] = [
  ['zero', 'turn:\n  workers: 0\n', /^f\.yaml:2:12: turn\.workers: expected auto or a whole number from 1 to 64, got number 0/],
  ['65', 'turn:\n  workers: 65\n', /^f\.yaml:2:12: turn\.workers: expected auto or a whole number from 1 to 64/],
  ['a fraction', 'turn:\n  workers: 1.5\n', /^f\.yaml:2:12: turn\.workers: expected auto/],
  ['another word', 'turn:\n  workers: all\n', /^f\.yaml:2:12: turn\.workers: expected auto or a whole number.*"all"/],
  ['a list', 'turn:\n  workers: [2]\n', /^f\.yaml:2:12: turn\.workers: expected auto/],
  [
    '2 without store.redis',
    'turn:\n  workers: 2\n',
    /^f\.yaml:2:12: turn\.workers: 2 workers share quotas, blocks and users through store\.redis/,
  ],
  ['auto without store.redis on a machine of more than one core', 'turn:\n  workers: 3\n', /turn\.workers: .*store\.redis/],
  [
    'fewer relay ports than workers',
    `turn:\n  workers: 4\n  relay_ports: [50000, 50002]\n${redis}`,
    /^f\.yaml:2:12: turn\.workers: 4 workers need at least as many relay ports; turn\.relay_ports has 3/,
  ],
  [
    'no udp listener',
    `turn:\n  workers: 2\n  listen: [tcp://0.0.0.0:3478]\n${redis}`,
    /^f\.yaml:2:12: turn\.workers: relay workers share the udp:\/\/ listeners/,
  ],
  ['worker_user with one worker', 'turn:\n  worker_user: nobody\n', /^f\.yaml:2:16: turn\.worker_user: applies to relay workers only/],
  [
    'worker_user: an account that does not exist',
    `turn:\n  workers: 2\n  worker_user: no-such-account-gh\n${redis}`,
    /^f\.yaml:3:16: turn\.worker_user: no local user "no-such-account-gh"/,
  ],
  [
    'worker_user: root',
    `turn:\n  workers: 2\n  worker_user: root\n${redis}`,
    /turn\.worker_user: "root" is root: workers would drop nothing/,
  ],
  ['worker_user: uid 0', `turn:\n  workers: 2\n  worker_user: "0"\n${redis}`, /turn\.worker_user: "0" is root/],
  [
    'worker_user with a privileged admin port',
    `turn:\n  workers: 2\n  worker_user: nobody\nadmin:\n  listen: http://127.0.0.1:443\n${redis}`,
    /admin\.listen: port 443 needs root, which workers drop \(turn\.worker_user\)/,
  ],
  [
    'worker_user with the PCP firewall backend',
    `turn:\n  workers: 2\n  worker_user: nobody\npcp:\n  listen: [udp://127.0.0.1:5351]\n  firewall: nftables\n${redis}`,
    /pcp\.firewall: the firewall backend needs root/,
  ],
];
for (const [name, text, re] of bad) {
  t.test(`refused: ${name}`, async (t) => {
    t.throws(() => parseConfig(text, 'f.yaml'), re);
    try {
      parseConfig(text, 'f.yaml');
    } catch (e) {
      t.ok(e instanceof ConfigError, 'a ConfigError (file, line, key)');
    }
  });
}
