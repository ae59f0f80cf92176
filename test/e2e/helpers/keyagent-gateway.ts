/**
 * The "TURN server" the Firefox harness (scripts/browser/harness.ts, turn.argv) starts
 * inside its network namespace for test/e2e/keyagent-firefox.test.ts: `gatehouse serve`
 * on the harness's address and ports, and, once the gateway's certificate exists, one
 * `gatehouse keyagent` per configured agent on the harness's NSS key log
 * ({outDir}/keylog.txt), pinned to that certificate. Everything lands in {outDir}/gh:
 * data/events.jsonl (the gateway's events), keyagent-N.jsonl / keyagent-N.log.
 *
 *   tsx keyagent-gateway.ts SPEC.json {ip} {port} {minPort} {maxPort} {user} {pass} {realm} {outDir}
 *   SPEC.json: { rules: string, users: [{name, password}], agents: [{user, password}] }
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const [specPath, ip, port, minPort, maxPort, user, pass, realm, outDir] = process.argv.slice(2) as string[];
const spec = JSON.parse(readFileSync(specPath!, 'utf8')) as {
  rules: string;
  users?: { name: string; password: string }[];
  agents: { user: string; password: string }[];
};
const dir = join(outDir!, 'gh');
const dataDir = join(dir, 'data');
const rulesDir = join(dir, 'rules');
mkdirSync(dataDir, { recursive: true });
mkdirSync(rulesDir, { recursive: true });
writeFileSync(join(rulesDir, 'e2e.yaml'), spec.rules);
const p = Number(port);
const config = {
  realm,
  data_dir: dataDir,
  log_level: 'info',
  turn: {
    listen: [`udp://${ip}:${p}`],
    relay_address: ip,
    relay_ports: [Number(minPort), Number(maxPort)],
    peers: { allow: ['127.0.0.0/8'] },
  },
  pcp: { listen: [`udp://${ip}:${p + 2}`] },
  admin: { listen: `http://${ip}:${p + 1}`, token: 'e2e-admin-token-0123456789abcdef' },
  users: [{ name: user, password: pass, groups: [] }, ...(spec.users ?? []).map((u) => ({ ...u, groups: [] }))],
  policy: { rules: rulesDir },
};
const configFile = join(dir, 'gatehouse.yaml');
writeFileSync(configFile, JSON.stringify(config, null, 1)); // JSON is YAML
const children: ChildProcess[] = [];
const gh = spawn(process.execPath, [join(ROOT, 'bin', 'gatehouse.js'), 'serve', '--config', configFile], { stdio: 'inherit', cwd: ROOT });
children.push(gh);

const stop = (): void => {
  for (const c of children) if (c.exitCode === null && c.pid) process.kill(c.pid, 'SIGTERM');
  setTimeout(() => process.exit(0), 1500).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
gh.on('exit', (code) => {
  process.stderr.write(`keyagent-gateway: gatehouse serve exited ${code}\n`);
  stop();
});

const cert = join(dataDir, 'gateway.crt');
const t0 = Date.now();
while (!existsSync(cert) && Date.now() - t0 < 30_000) await new Promise((r) => setTimeout(r, 50));
spec.agents.forEach((a, i) => {
  const out = createWriteStream(join(dir, `keyagent-${i}.jsonl`));
  const err = createWriteStream(join(dir, `keyagent-${i}.log`));
  const args = [
    join(ROOT, 'bin', 'gatehouse.js'),
    'keyagent',
    '--keylog',
    join(outDir!, 'keylog.txt'),
    '--turn',
    `turn:${ip}:${p}`,
    '--user',
    a.user,
    '--password',
    a.password,
    '--gateway-cert',
    cert,
    '--from-start',
    '--json',
  ];
  const c = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], cwd: ROOT });
  c.stdout!.pipe(out);
  c.stderr!.pipe(err);
  children.push(c);
});
