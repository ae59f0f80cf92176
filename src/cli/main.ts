import type { Writable } from 'node:stream';

export const MAIN_HELP = `Usage: gatehouse <command> [options]

Commands:
  serve [--config FILE]                 run the gateway (TURN, inspection, admin API)
  inspect CAPTURE.pcap --keys KEYS      inspect a capture offline; events as JSON lines
  rules check PATH...                   validate rule files
  verify [--cert FILE] DIR              check recordings: hashes, hash chain, signatures
  endpoint --role offer|answer ...      a compliant endpoint (werift): place/answer a test
                                        call through the gateway, escrowing its keys
  help                                  this text

Run "gatehouse <command> --help" for a command's options.
`;

type Runner = (argv: string[], io: { stdout: Writable; stderr: Writable }) => Promise<number>;

const commands: Record<string, () => Promise<Runner>> = {
  serve: async () => (await import('./serve.js')).runServe,
  inspect: async () => (await import('./inspect.js')).runInspect,
  rules: async () => (await import('./rules.js')).runRules,
  verify: async () => (await import('./verify.js')).runVerify,
  endpoint: async () => (await import('./endpoint.js')).runEndpoint,
};

export async function main(
  argv: string[],
  io = { stdout: process.stdout as Writable, stderr: process.stderr as Writable },
): Promise<number> {
  const [cmd, ...rest] = argv;
  if (!cmd || cmd === 'help' || cmd === '--help' || cmd === '-h') {
    io.stdout.write(MAIN_HELP);
    return cmd ? 0 : 2;
  }
  const load = commands[cmd];
  if (!load) {
    io.stderr.write(`gatehouse: unknown command "${cmd}"\n\n${MAIN_HELP}`);
    return 2;
  }
  return (await load())(rest, io);
}

const isEntry = process.argv[1] && /(?:cli[\\/]main\.[tj]s|bin[\\/]gatehouse(?:\.js)?)$/.test(process.argv[1]);
if (isEntry) {
  // GATEHOUSE_NATIVE=0: run the pure-JS crypto paths even when the addon is built.
  if (/^(0|false|off)$/i.test(process.env.GATEHOUSE_NATIVE ?? '')) (await import('../wire/native.js')).disableNative();
  // A reader that goes away (`gatehouse ... | head`) ends the output quietly.
  for (const s of [process.stdout, process.stderr]) {
    s.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
      throw err;
    });
  }
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(`gatehouse: ${(err as Error).stack ?? String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
