/** Item 7: legacy RFC 5766 channel numbers (0x5000-0x7FFF). */
import t from 'tap';
import { pino } from 'pino';
import { Attr, Class, Method, getErrorCode, type StunWriter as W } from '../../../src/wire/stun.js';
import type { GatehouseConfig } from '../../../src/config/config.js';
import type { Logger } from '../../../src/util/log.js';
import { Client, errCode, startServer } from './helpers.js';

const udpTransport = (w: W): void => void w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0]));
const bindCh =
  (n: number) =>
  (w: W): void =>
    void w.attr(Attr.ChannelNumber, Buffer.from([n >> 8, n & 255, 0, 0])).xorAddress(Attr.XorPeerAddress, '127.0.0.1', 9);

function capture(): { logger: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const logger = pino({ level: 'warn' }, { write: (s: string) => void lines.push(JSON.parse(s)) }) as unknown as Logger;
  return { logger, lines };
}

t.test('default (rfc8656): 0x5000-0x7FFF get an explanatory 400 and one warning per client', async (t) => {
  const { logger, lines } = capture();
  const h = await startServer(undefined, { logger });
  t.teardown(h.close);
  const c = await Client.udp(h.udpPort);
  const d = await Client.udp(h.udpPort);
  t.teardown(() => (c.close(), d.close()));
  t.equal((await c.authed(Method.Allocate, udpTransport)).cls, Class.Success);
  t.equal((await d.authed(Method.Allocate, udpTransport)).cls, Class.Success);
  const r = await c.authed(Method.ChannelBind, bindCh(0x5123));
  t.equal(errCode(r), 400, 'RFC 8656 §12.2: 400');
  t.equal(
    getErrorCode(r)?.reason,
    'Bad Request: channel number 0x5123 is from the legacy RFC 5766 range; RFC 8656 §12 allows 0x4000-0x4FFF',
  );
  t.equal(errCode(await c.authed(Method.ChannelBind, bindCh(0x7fff))), 400);
  t.equal(errCode(await d.authed(Method.ChannelBind, bindCh(0x6000))), 400, 'another client (same source IP)');
  t.equal(h.server.stats.refused.legacy_channel, 3, 'every refusal counted');
  const warns = lines.filter((l) => String(l.msg).includes('legacy RFC 5766'));
  t.equal(warns.length, 1, 'logged once per client source address');
  t.match(String(warns[0]!.msg), /turn\.channel_numbers: rfc5766/, 'names the setting');
  t.equal(warns[0]!.client, '127.0.0.1');
  t.notMatch(JSON.stringify(lines), /secret/, 'no password in the log');
  const out = await c.authed(Method.ChannelBind, bindCh(0x8000));
  t.equal(errCode(out), 400, '0x8000 and above: out of range, not legacy');
  t.match(getErrorCode(out)?.reason ?? '', /out of range/);
  t.equal(h.server.stats.refused.legacy_channel, 3);
  t.equal((await c.authed(Method.ChannelBind, bindCh(0x4fff))).cls, Class.Success, 'RFC 8656 range works');
});

t.test('channel_numbers: rfc5766 accepts them, no warning', async (t) => {
  const { logger, lines } = capture();
  const h = await startServer((c: GatehouseConfig) => void (c.turn.channel_numbers = 'rfc5766'), { logger });
  t.teardown(h.close);
  const c = await Client.udp(h.udpPort);
  t.teardown(() => c.close());
  t.equal((await c.authed(Method.Allocate, udpTransport)).cls, Class.Success);
  t.equal((await c.authed(Method.ChannelBind, bindCh(0x5123))).cls, Class.Success);
  t.equal(h.server.stats.refused.legacy_channel, undefined);
  t.equal(lines.length, 0);
});
