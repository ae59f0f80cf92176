// A relay worker's part in the key broker tests (key-broker.test.ts), spawned by the
// broker: it binds a TCP listener as root, drops to the account it was given (unless told
// not to), reports its ids on stdout, then asks the broker for each key name it reads on
// stdin and reports each answer as one JSON line. It exits when stdin ends.
import { createServer } from 'node:net';
import { createInterface } from 'node:readline';
import { dropPrivileges, type Account } from '../../../src/util/drop-privileges.js';
import { requestKey } from '../../../src/util/key-client.js';
import { GatehouseError } from '../../../src/util/errors.js';

const args = JSON.parse(process.argv[2]!) as { socket: string; account: Account; drop: boolean };
const say = (o: unknown): void => void process.stdout.write(JSON.stringify(o) + '\n');

const server = createServer((c) => c.end('bound-before-drop\n'));
server.listen(0, '127.0.0.1', () => {
  const port = (server.address() as { port: number }).port;
  let regain = 'not tried';
  if (args.drop) {
    dropPrivileges(args.account);
    try {
      process.setuid!(0);
      regain = 'succeeded';
    } catch (err) {
      regain = (err as NodeJS.ErrnoException).code ?? 'refused';
    }
  }
  say({ ready: true, port, uid: process.getuid!(), euid: process.geteuid!(), gid: process.getgid!(), regain });
  const rl = createInterface({ input: process.stdin });
  rl.on('line', (name) => {
    requestKey(args.socket, name).then(
      (key) => say({ name, ok: true, key: key.toString('base64') }),
      (err: unknown) => say({ name, ok: false, code: err instanceof GatehouseError ? err.code : String(err) }),
    );
  });
  rl.on('close', () => {
    server.close();
    process.exit(0);
  });
});
