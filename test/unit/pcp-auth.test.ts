// RFC 7652 on the wire (src/wire/pcp-auth.ts) and the PA server (src/pcp/auth) driven
// in process by the endpoint's PA client with real TLS (node:tls both sides, openssl PKI).
import t from 'tap';
import { createHmac, randomBytes } from 'node:crypto';
import { Opcode, Result, decodePcpRequest, decodePcpResponse, encodePcpRequest, encodePcpResponse } from '../../src/wire/pcp.js';
import {
  MacAlg,
  PcpAuthOption,
  PcpAuthResult,
  Prf,
  appendAuthTag,
  decodePaMessage,
  deriveTransportKey,
  encodePaMessage,
  encodePcpAddress,
  messageOptions,
  readAuthTag,
  verifyAuthTag,
} from '../../src/wire/pcp-auth.js';
import { EapTlsServer } from '../../src/pcp/auth/eap-tls-server.js';
import { PcpAuthServer } from '../../src/pcp/auth/pa-server.js';
import { authenticate, PcpAuthError, type PcpAuthSession } from '../../src/endpoint/pcp-auth-client.js';
import type { PcpAddress } from '../../src/pcp/hooks.js';
import { makePki } from '../e2e/helpers/pcp-auth-pki.js';

const pki = makePki();
t.teardown(() => pki.cleanup());

t.test('numbers agree with the PCP codec (src/wire/pcp.ts) and IANA', async (t) => {
  t.equal(PcpAuthResult.INITIATION, Result.INITIATION);
  t.equal(PcpAuthResult.AUTHENTICATION_REQUIRED, Result.AUTHENTICATION_REQUIRED);
  t.equal(PcpAuthResult.UNKNOWN_SESSION_ID, Result.UNKNOWN_SESSION_ID);
  t.equal(PcpAuthResult.AUTHENTICATION_REPLY, Result.AUTHENTICATION_REPLY);
  t.same(
    [
      PcpAuthOption.NONCE,
      PcpAuthOption.AUTHENTICATION_TAG,
      PcpAuthOption.PA_AUTHENTICATION_TAG,
      PcpAuthOption.EAP_PAYLOAD,
      PcpAuthOption.ID_INDICATOR,
    ],
    [4, 5, 6, 7, 12],
    'IANA PCP Options: NONCE 4 ... ID_INDICATOR 12',
  );
});

t.test('PA messages decode with the PCP codec too', async (t) => {
  const req = encodePaMessage({
    response: false,
    resultCode: PcpAuthResult.AUTHENTICATION_REPLY,
    lifetime: 0,
    epoch: 0,
    clientIp: encodePcpAddress('192.0.2.1'),
    sessionId: 0x01020304,
    sequence: 7,
    options: [{ code: PcpAuthOption.EAP_PAYLOAD, data: Buffer.from([2, 1, 0, 6, 1, 0x61]) }],
  });
  t.equal(req.length % 4, 0, 'padded to 4 octets');
  const d = decodePcpRequest(req, { knownOptions: Object.values(PcpAuthOption) });
  t.ok(d.ok, 'RFC 6887 request decoder accepts it');
  if (d.ok) {
    t.equal(d.value.opcode, Opcode.AUTHENTICATION);
    t.equal(d.value.clientAddress, '192.0.2.1');
    t.same([...d.value.opcodeData], [1, 2, 3, 4, 0, 0, 0, 7], 'Session ID, Sequence Number');
    t.same(d.value.options[0]!.data, Buffer.from([2, 1, 0, 6, 1, 0x61]));
  }
  const m = decodePaMessage(req)!;
  t.equal(m.resultCode, PcpAuthResult.AUTHENTICATION_REPLY);
  t.equal(m.sessionId, 0x01020304);
  t.equal(m.sequence, 7);
  const resp = encodePaMessage({
    response: true,
    resultCode: 22,
    lifetime: 0,
    epoch: 99,
    clientIp: Buffer.alloc(16),
    sessionId: 5,
    sequence: 1,
    options: [],
  });
  const r = decodePcpResponse(resp);
  t.ok(r.ok && r.value.result === 22 && r.value.epoch === 99, 'RFC 6887 response decoder: result and epoch');
  t.equal(decodePaMessage(Buffer.alloc(31)), null);
});

t.test('transport key derivation (vector from an independent HMAC computation)', async (t) => {
  const msk = Buffer.from(Array.from({ length: 64 }, (_, i) => i));
  const nonce = Buffer.from([9, 8, 7, 6]);
  t.equal(deriveTransportKey(Prf.HMAC_SHA1, msk, 0x01020304, nonce, 5).toString('hex'), 'c6cfa5803012d08dc24771ab70c8d5a29de5a7a6');
  t.equal(
    deriveTransportKey(Prf.HMAC_SHA2_256, msk, 0x01020304, nonce, 5).toString('hex'),
    'e12b8312f25d5e9cf675668d500657d4671bf8d3d79efbc86ba5c60ae3ae5b47',
  );
});

t.test('AUTHENTICATION_TAG: MAC over the message with the Authentication Data zeroed', async (t) => {
  const key = randomBytes(32);
  const map = encodePcpRequest({
    opcode: Opcode.MAP,
    lifetime: 120,
    clientAddress: '192.0.2.1',
    map: { nonce: randomBytes(12), protocol: 17, internalPort: 5000, externalPort: 0, externalAddress: '0.0.0.0' },
  });
  for (const mac of [MacAlg.HMAC_SHA1_96, MacAlg.HMAC_SHA2_256_128]) {
    const tagged = appendAuthTag(map, { sessionId: 42, sequence: 3, keyId: 9, mac, key });
    const n = mac === MacAlg.HMAC_SHA1_96 ? 12 : 16;
    t.equal(tagged.length, map.length + 4 + 12 + n);
    const zeroed = Buffer.from(tagged);
    zeroed.fill(0, tagged.length - n);
    const expect = createHmac(mac === MacAlg.HMAC_SHA1_96 ? 'sha1' : 'sha256', key)
      .update(zeroed)
      .digest()
      .subarray(0, n);
    t.same(tagged.subarray(tagged.length - n), expect, `MAC ${mac} in place`);
    t.ok(verifyAuthTag(tagged, mac, key));
    t.same(readAuthTag(tagged), { sessionId: 42, sequence: 3, keyId: 9, authData: expect });
    const d = decodePcpRequest(tagged, { knownOptions: [PcpAuthOption.AUTHENTICATION_TAG] });
    t.ok(d.ok, 'the tagged request still decodes with the PCP codec');
    for (const at of [0, 30, tagged.length - n - 5, tagged.length - 1]) {
      const bad = Buffer.from(tagged);
      bad[at]! ^= 0x01;
      t.notOk(verifyAuthTag(bad, mac, key), `flipped byte at ${at} fails`);
    }
    t.notOk(verifyAuthTag(tagged, mac, randomBytes(32)), 'another key fails');
  }
  t.equal(messageOptions(map)!.length, 0);
});

// --- the PA server driven by the endpoint client -------------------------------------

function server(opts: Partial<ConstructorParameters<typeof PcpAuthServer>[0]> = {}, tls?: 'TLSv1.2' | 'TLSv1.3') {
  return new PcpAuthServer({
    backend: new EapTlsServer({ ca: pki.ca, cert: pki.serverCert, key: pki.serverKey, minVersion: tls, maxVersion: tls }),
    required: true,
    ...opts,
  });
}

function run(srv: PcpAuthServer, client: PcpAddress, o: Partial<Parameters<typeof authenticate>[1]> = {}, log?: Buffer[][]) {
  return authenticate(
    async (buf, expect) => {
      const out = await srv.onAuthentication(client, buf);
      log?.push([buf, ...out]);
      return expect ? (out[0] ?? null) : null;
    },
    {
      clientAddress: client.address,
      cert: pki.clientCert,
      key: pki.clientKey,
      ca: pki.ca,
      servername: 'gw.test',
      identity: 'alice@example.com',
      ...o,
    },
  );
}

function mapRequest(client: PcpAddress): Buffer {
  return encodePcpRequest({
    opcode: Opcode.MAP,
    lifetime: 120,
    clientAddress: client.address,
    map: { nonce: randomBytes(12), protocol: 17, internalPort: 5000, externalPort: 0, externalAddress: '0.0.0.0' },
  });
}

const opts = (raw: Buffer) => messageOptions(raw)!.map((o) => ({ code: o.code, data: o.data }));

for (const v of ['TLSv1.2', 'TLSv1.3'] as const) {
  t.test(`PA with EAP-TLS ${v}: SA on both sides, tags both ways`, async (t) => {
    const srv = server({}, v);
    const client = { address: '127.0.0.1', port: 40001 };
    const auth = await run(srv, client, { minVersion: v, maxVersion: v });
    t.equal(auth.sa.tlsVersion, v);
    const sa = srv.saFor(client)!;
    t.ok(sa, 'server holds an SA');
    t.equal(sa.identity, 'alice@example.com', 'identity from the client certificate');
    t.same(sa.groups, ['staff']);
    t.ok(sa.transportKey.equals(auth.sa.transportKey), 'transport keys equal');
    t.equal(auth.sa.transportKey.length, 32, 'HMAC-SHA-256 PRF preferred');
    const req = auth.tag(mapRequest(client));
    const ok = srv.verify(client, req, opts(req));
    t.ok(ok.ok && ok.sa?.sessionId === auth.sa.sessionId, 'a tagged MAP verifies');
    const resp = srv.sign(client, encodePcpResponse({ opcode: Opcode.ANNOUNCE, result: 0, lifetime: 0, epoch: 1 }));
    t.ok(auth.verify(resp), 'the client verifies the signed response');
    t.notOk(auth.verify(resp), 'the same response again is a replay for the client');
    srv.close();
  });
}

t.test('rejections (RFC 7652)', async (t) => {
  let now = 1_000_000;
  const srv = server({ lifetime: 60, now: () => now });
  const client = { address: '127.0.0.1', port: 40002 };
  const auth: PcpAuthSession = await run(srv, client, { now: () => now });

  const good = auth.tag(mapRequest(client));
  const flipped = Buffer.from(good);
  flipped[flipped.length - 3]! ^= 0x80;
  t.same(
    srv.verify(client, flipped, opts(flipped)),
    { ok: false, result: PcpAuthResult.AUTHENTICATION_FAILED, silent: true },
    'flipped AUTHENTICATION_TAG byte: silently discarded',
  );
  const body = Buffer.from(good);
  body[30]! ^= 0x01; // inside the MAP data
  t.equal(
    (srv.verify(client, body, opts(body)) as { silent: boolean }).silent,
    true,
    'a flipped byte of the message body: silently discarded',
  );

  t.ok(srv.verify(client, good, opts(good)).ok, 'the original verifies');
  t.same(
    srv.verify(client, good, opts(good)),
    { ok: false, result: PcpAuthResult.AUTHENTICATION_FAILED, silent: true },
    'replayed sequence number: silently discarded',
  );
  const older = auth.tag(mapRequest(client));
  const newer = auth.tag(mapRequest(client));
  t.ok(srv.verify(client, newer, opts(newer)).ok);
  t.equal(srv.verify(client, older, opts(older)).ok, false, 'an older sequence number after a newer one: discarded');

  const plain = mapRequest(client);
  t.same(
    srv.verify(client, plain, []),
    { ok: false, result: PcpAuthResult.AUTHENTICATION_REQUIRED, silent: false },
    'no tag, auth required: AUTHENTICATION_REQUIRED',
  );
  const lax = server({ required: false });
  t.same(lax.verify(client, plain, []), { ok: true, sa: null }, 'no tag, auth not required: unauthenticated');
  lax.close();

  const other = { address: '127.0.0.9', port: 40002 };
  const stolen = auth.tag(mapRequest(client));
  t.equal((srv.verify(other, stolen, opts(stolen)) as { silent: boolean }).silent, true, 'a tag from another address: discarded');

  t.equal(srv.sign(other, Buffer.alloc(24)).length, 24, 'no SA for that client: response left unsigned');

  now += 61_000;
  t.ok(auth.expired(), 'the client knows its SA expired');
  const late = auth.tag(mapRequest(client));
  t.same(
    srv.verify(client, late, opts(late)),
    { ok: false, result: PcpAuthResult.UNKNOWN_SESSION_ID, silent: false },
    'expired SA: UNKNOWN_SESSION_ID',
  );
  t.equal(srv.counts.sas, 0, 'expired SA dropped');
  srv.close();
});

t.test('re-authentication replaces the SA; termination ends it', async (t) => {
  const srv = server();
  const client = { address: '127.0.0.1', port: 40003 };
  const a1 = await run(srv, client);
  const a2 = await run(srv, client);
  t.not(a1.sa.sessionId, a2.sa.sessionId);
  t.equal(srv.counts.sas, 1, 'one SA per client');
  const old = a1.tag(mapRequest(client));
  t.same(
    srv.verify(client, old, opts(old)),
    { ok: false, result: PcpAuthResult.UNKNOWN_SESSION_ID, silent: false },
    'the replaced SA is gone',
  );
  const cur = a2.tag(mapRequest(client));
  t.ok(srv.verify(client, cur, opts(cur)).ok);
  const answers: (Buffer | null)[] = [];
  await a2.terminate(async (buf) => {
    answers.push(...(await srv.onAuthentication(client, buf)));
    return null;
  });
  t.equal(decodePaMessage(answers[0]!)!.resultCode, PcpAuthResult.SESSION_TERMINATED, 'SESSION_TERMINATED answered');
  t.equal(srv.counts.sas, 0);
  srv.close();
});

t.test('a client certificate from another CA is refused with AUTHENTICATION_FAILED', async (t) => {
  const events: string[] = [];
  const srv = server({ onEvent: (e) => events.push(e.kind) });
  const client = { address: '127.0.0.1', port: 40004 };
  const err = await run(srv, client, { cert: pki.rogueCert, key: pki.rogueKey }).catch((e) => e);
  t.ok(err instanceof PcpAuthError);
  t.equal((err as PcpAuthError).result, PcpAuthResult.AUTHENTICATION_FAILED);
  t.same(events, ['failed']);
  t.equal(srv.counts.sas, 0);
  t.notMatch(String((err as Error).message), /[0-9a-f]{32}/, 'no key material in the error');
  srv.close();
});

t.test('the endpoint refuses a server certificate it does not trust', async (t) => {
  const srv = server();
  const err = await run(srv, { address: '127.0.0.1', port: 40005 }, { ca: pki.rogueCert }).catch((e) => e);
  t.ok(err instanceof PcpAuthError, String(err));
  srv.close();
});

t.test('bounded: PA sessions in progress, retransmissions, unknown sessions', async (t) => {
  const srv = server({ maxSessions: 2 });
  const ini = (port: number) =>
    srv.onAuthentication(
      { address: '127.0.0.1', port },
      encodePaMessage({
        response: false,
        resultCode: PcpAuthResult.INITIATION,
        lifetime: 0,
        epoch: 0,
        clientIp: encodePcpAddress('127.0.0.1'),
        sessionId: 0,
        sequence: 0,
        options: [],
      }),
    );
  const r1 = decodePaMessage((await ini(1))[0]!)!;
  t.equal(r1.resultCode, PcpAuthResult.AUTHENTICATION_REQUEST);
  t.ok(
    r1.options.some((o) => o.code === PcpAuthOption.NONCE && o.data.length === 4),
    'NONCE offered',
  );
  t.ok(r1.options.filter((o) => o.code === PcpAuthOption.MAC_ALGORITHM).length >= 2, 'MAC algorithms offered');
  await ini(2);
  const r3 = decodePaMessage((await ini(3))[0]!)!;
  t.equal(r3.resultCode, Result.NO_RESOURCES, 'third concurrent PA session: NO_RESOURCES');
  t.equal(srv.counts.sessions, 2);

  const unknown = await srv.onAuthentication(
    { address: '127.0.0.1', port: 9 },
    encodePaMessage({
      response: false,
      resultCode: PcpAuthResult.AUTHENTICATION_REPLY,
      lifetime: 0,
      epoch: 0,
      clientIp: Buffer.alloc(16),
      sessionId: 12345,
      sequence: 1,
      options: [],
    }),
  );
  t.equal(decodePaMessage(unknown[0]!)!.resultCode, PcpAuthResult.UNKNOWN_SESSION_ID, 'PA-Client of an unknown session');
  srv.close();

  // A retransmitted PA-Client gets the same PA-Server again (not a second EAP step), in
  // the middle of the exchange and for the one that completed it.
  const srv2 = server();
  const client = { address: '127.0.0.1', port: 40006 };
  let calls = 0;
  const same: boolean[] = [];
  let last: { req: Buffer; answer: Buffer } | null = null;
  await authenticate(
    async (buf, expect) => {
      const out = await srv2.onAuthentication(client, buf);
      if (++calls === 3) {
        const again = await srv2.onAuthentication(client, buf);
        same.push(again.length === 1 && again[0]!.equals(out[0]!));
      }
      if (out[0] && decodePaMessage(out[0])!.resultCode === PcpAuthResult.AUTHENTICATION_SUCCEEDED) {
        const again = await srv2.onAuthentication(client, buf);
        last = { req: buf, answer: out[0] };
        same.push(again.length === 1 && again[0]!.equals(out[0]));
      }
      return expect ? (out[0] ?? null) : null;
    },
    { clientAddress: client.address, cert: pki.clientCert, key: pki.clientKey, ca: pki.ca, identity: 'alice@example.com' },
  );
  t.same(same, [true, true], 'retransmissions (mid-exchange, and of the PA-Client that completed it) get the same answer');
  t.ok(last, 'completed');
  t.equal(srv2.counts.sas, 1, 'one SA, not two');
  srv2.close();
});

t.test('a throwing EAP backend ends the PA session, not the process', async (t) => {
  const srv = new PcpAuthServer({
    backend: {
      name: 'broken',
      open: () => ({
        firstRequest: () => Buffer.from([1, 1, 0, 5, 1]),
        step: async () => {
          throw new Error('boom');
        },
        close: () => {},
      }),
    },
  });
  const err = await run(srv, { address: '127.0.0.1', port: 40007 }).catch((e) => e);
  t.equal((err as PcpAuthError).result, PcpAuthResult.AUTHENTICATION_FAILED);
  t.equal(srv.counts.sessions, 0);
});

t.test('downgrade: an algorithm offer stripped on the way is detected at completion', async (t) => {
  const srv = server();
  const client = { address: '127.0.0.1', port: 40008 };
  // A man in the middle removes HMAC-SHA-256 from the (unprotected) first PA-Server message.
  const strip = (buf: Buffer): Buffer => {
    const m = decodePaMessage(buf)!;
    if (m.sequence !== 1) return buf;
    return encodePaMessage({
      ...m,
      options: m.options.filter((o) => !(o.code === PcpAuthOption.PSEUDO_RANDOM_FUNCTION && o.data.readUInt32BE(0) === Prf.HMAC_SHA2_256)),
    });
  };
  const err = await authenticate(
    async (buf, expect) => {
      const out = await srv.onAuthentication(client, buf);
      return expect && out[0] ? strip(out[0]) : null;
    },
    { clientAddress: client.address, cert: pki.clientCert, key: pki.clientKey, ca: pki.ca },
  ).catch((e) => e);
  t.equal((err as PcpAuthError).result, PcpAuthResult.DOWNGRADE_ATTACK_DETECTED);
  srv.close();
});

t.test('createPcpAuth builds the hook from settings', async (t) => {
  const { createPcpAuth } = await import('../../src/pcp/auth/index.js');
  const a = createPcpAuth({ required: true, backend: { kind: 'eap-tls', ca: pki.ca, cert: pki.serverCert, key: pki.serverKey } });
  t.equal(a.required({ address: '127.0.0.1', port: 1 }), true);
  const auth = await run(a, { address: '127.0.0.1', port: 40009 });
  t.ok(a.saFor({ address: '127.0.0.1', port: 40009 })!.transportKey.equals(auth.sa.transportKey));
  a.close();
});
