/**
 * Negotiate login (RFC 4559, Kerberos through SPNEGO; core.md §3; seed 002): when
 * core.kerberos.keytab is set, POST /v1/login's 401 offers a bare `Negotiate` (RFC 4559
 * §4.1), the retry's `Authorization: Negotiate <token>` (§4.2) is accepted by the GSSAPI
 * library (MIT krb5 through the `kerberos` package, an optional dependency) with the
 * service's key from the keytab, and the 200 carries the mutual-authentication token
 * `WWW-Authenticate: Negotiate <token>` (§4.2). The client principal `name@REALM` of a
 * configured realm is the user `name`, whose groups (and organisation) come from
 * core.directory, or from the gateway's own users when there is none.
 *
 * Fail closed: with the keytab set, the core does not start when the package is missing,
 * the keytab cannot be read or holds no key for the service, or the key cannot be used.
 * Each request gets its own acceptor context (Kerberos is one leg: an exchange that
 * would need another is refused, 401) which is never kept; at most
 * core.kerberos.max_concurrent are in progress (beyond: 429). login.ts emits the `auth`
 * event of every outcome; neither the token nor the ticket is ever logged.
 */
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { resolve } from 'node:path';
import { GatehouseError } from '../util/errors.js';
import type { CoreContext, CoreModule } from './director.js';
import { CoreError } from './errors.js';
import { addLoginMechanism, type LoginMechanism, type LoginSuccess } from './login.js';
import { keytabPrincipals, serviceRealms } from './negotiate-keytab.js';
import { principalUser } from './negotiate-principal.js';
import { classifyGssError, negotiateResponseHeader, parseNegotiate, spnegoNegState } from './negotiate-wire.js';

/** The acceptor side of the `kerberos` package (index.d.ts KerberosServer). */
export interface GssAcceptor {
  step(tokenB64: string): Promise<string>;
  readonly username: string;
  readonly response: string;
  readonly contextComplete: boolean;
}
export interface GssBinding {
  initializeServer(service: string): Promise<GssAcceptor>;
}
export type LoadedBinding = { binding: GssBinding } | { binding: null; problem: string };

/** A variable, so that tsc does not need the optional package's types. */
const KERBEROS_PACKAGE = 'kerberos';

/** The `kerberos` package, or why it cannot be used (not installed: it is optional; not built). */
export async function loadGssBinding(): Promise<LoadedBinding> {
  try {
    const m = (await import(KERBEROS_PACKAGE)) as { default?: GssBinding } & Partial<GssBinding>;
    const b = (m.default ?? m) as Partial<GssBinding>;
    if (typeof b.initializeServer !== 'function') return { binding: null, problem: 'the kerberos package has no initializeServer' };
    return { binding: b as GssBinding };
  } catch (err) {
    return { binding: null, problem: String((err as Error).message ?? err).split('\n')[0]! };
  }
}

export interface NegotiateOptions {
  binding: GssBinding;
  /** GSS_C_NT_HOSTBASED_SERVICE name, e.g. HTTP@gateway.example.com (RFC 2743 §4.1). */
  service: string;
  /** Realms whose users are accepted. */
  realms: string[];
  maxConcurrent: number;
}

/** The user (groups, organisation) behind a principal's name: core.directory, else the gateway's users. */
async function userOf(core: CoreContext, name: string): Promise<LoginSuccess | null> {
  if (core.directory) {
    // A directory outage throws CoreError('unavailable'): 503, never an admit.
    const u = await core.directory.user(name);
    return u ? { user: u.name, groups: [...u.groups], ...(u.org ? { org: u.org } : {}) } : null;
  }
  const u = core.users.lookup(name);
  return u ? { user: u.name, groups: [...u.groups] } : null;
}

/** A refusal that names the principal in the auth event (login.ts reads `user`). */
function refuse(message: string, user?: string): CoreError {
  const e = new CoreError('unauthenticated', message);
  return user === undefined ? e : Object.assign(e, { user });
}

export function negotiateMechanism(core: CoreContext, o: NegotiateOptions): LoginMechanism {
  let inProgress = 0;
  return {
    scheme: 'Negotiate',
    // RFC 4559 §4.1: the first challenge carries no gssapi-data.
    challenge: () => 'Negotiate',
    // The principal is only known once the ticket is verified: failures count per source.
    claimedUser: () => null,
    async verify(ctx) {
      const t = parseNegotiate(ctx.req.headers.authorization);
      if (!t.ok) throw refuse(t.problem);
      if (inProgress >= o.maxConcurrent)
        throw new CoreError('rate_limited', 'too many Kerberos logins are in progress; retry in a moment', { 'retry-after': '1' });
      inProgress++;
      let principal: string;
      let mutual: string | null;
      try {
        // One acceptor context for this request only (RFC 2743 §2.2.2); nothing refers to
        // it afterwards, and the binding deletes it (gss_delete_sec_context) when collected.
        let acceptor: GssAcceptor;
        try {
          acceptor = await o.binding.initializeServer(o.service);
        } catch (err) {
          core.log.error(
            { err: String((err as Error).message ?? err), service: o.service },
            'Negotiate: the service credential cannot be acquired',
          );
          throw new CoreError('unavailable', 'Kerberos login is not available right now');
        }
        try {
          await acceptor.step(t.token);
        } catch (err) {
          const text = String((err as Error).message ?? err);
          const c = classifyGssError(text);
          // The library's text names principals and key versions, never a key or the ticket.
          core.log.info({ gss: text.slice(0, 300), source: ctx.source }, 'Negotiate: token refused');
          throw c.code === 'replayed' ? new CoreError('replayed', c.reason) : refuse(c.reason);
        }
        // Kerberos completes in one leg (RFC 4121 §4.1: AP-REQ, then AP-REP); SPNEGO
        // asking for another (RFC 4178 §4.2.2 negState accept-incomplete, request-mic)
        // is not carried across requests here.
        const state = acceptor.response ? spnegoNegState(acceptor.response) : null;
        if (!acceptor.contextComplete || !acceptor.username || (state !== null && state !== 0))
          throw refuse('the Negotiate exchange did not complete in one leg (only Kerberos is accepted)');
        principal = acceptor.username;
        mutual = acceptor.response || null;
      } finally {
        inProgress--;
      }
      const p = principalUser(principal, o.realms);
      if (!p.ok) throw refuse(p.problem, principal);
      const who = await userOf(core, p.user);
      if (!who) throw refuse(`${p.user} is not a user here`, p.user);
      return { ...who, headers: { 'www-authenticate': negotiateResponseHeader(mutual) } };
    },
  };
}

/** The principal a host-based service name stands for, for messages (RFC 4120 §6.2.1). */
const principalOf = (service: string) => service.replace('@', '/');

export interface NegotiateModuleDeps {
  /** The GSSAPI binding (tests); default: the `kerberos` package. */
  load?: () => Promise<LoadedBinding>;
}

/** Registers Negotiate when core.kerberos.keytab is set; refuses to start when it cannot work. */
export function negotiateModule(deps: NegotiateModuleDeps = {}): CoreModule {
  return async (core) => {
    const k = core.cfg.core.kerberos;
    if (!k.keytab) return;
    const fail = (msg: string): never => {
      core.log.error({ setting: 'core.kerberos.keytab' }, msg);
      throw new GatehouseError('E_KERBEROS', msg, { key: 'core.kerberos.keytab' });
    };
    const loaded = await (deps.load ?? loadGssBinding)();
    if (!loaded.binding)
      fail(
        `core.kerberos.keytab is set, but Negotiate is unavailable: the kerberos package cannot be loaded (${loaded.problem}); ` +
          'install libkrb5-dev and run `npm ci` again (it builds the package), or remove core.kerberos.keytab',
      );
    const binding = (loaded as { binding: GssBinding }).binding;
    const keytab = resolve(k.keytab);
    let principals: ReturnType<typeof keytabPrincipals> = [];
    try {
      principals = keytabPrincipals(readFileSync(keytab));
    } catch (err) {
      fail(`core.kerberos.keytab: ${keytab} cannot be read as a keytab: ${(err as Error).message}`);
    }
    const service = k.service ?? `HTTP@${hostname()}`;
    const keyRealms = serviceRealms(principals, service);
    if (keyRealms.length === 0)
      fail(
        `core.kerberos.keytab: ${keytab} holds no key for ${principalOf(service)}@REALM (core.kerberos.service ${service}); ` +
          `it holds ${[...new Set(principals.map((p) => `${p.components.join('/')}@${p.realm}`))].slice(0, 10).join(', ') || 'nothing'}`,
      );
    const realms = k.realm.length ? [...k.realm] : keyRealms;
    // MIT krb5 and Heimdal read the acceptor's keytab from KRB5_KTNAME (krb5_kt_default).
    process.env.KRB5_KTNAME = `FILE:${keytab}`;
    try {
      await binding.initializeServer(service); // gss_acquire_cred(GSS_C_ACCEPT): the key is usable
    } catch (err) {
      fail(`core.kerberos.keytab: the GSSAPI library cannot accept for ${service} with ${keytab}: ${(err as Error).message}`);
    }
    addLoginMechanism(core, negotiateMechanism(core, { binding, service, realms, maxConcurrent: k.max_concurrent }));
    core.log.info({ service, realms, keytab }, 'Negotiate (Kerberos) login enabled');
  };
}
