/**
 * RFC 7652 authentication for the PCP server: one constructor from settings (what the
 * config's pcp.auth section would hold), returning the PcpAuthHook for PcpServer's `auth`.
 *
 *   const auth = createPcpAuth({
 *     required: true, lifetime: 3600, maxSessions: 256, maxSas: 4096,
 *     backend: { kind: 'eap-tls', ca, cert, key }            // built-in EAP-TLS server
 *           // { kind: 'radius', address, port, secret, timeout } // RFC 3579 pass-through
 *   });
 *   const server = new PcpServer({ ..., auth });  // and epoch: () => server.epoch.seconds()
 */
import { EapTlsServer, type EapTlsServerOptions } from './eap-tls-server.js';
import { PcpAuthServer, type PaServerOptions } from './pa-server.js';
import { RadiusBackend, type RadiusBackendOptions } from './radius-backend.js';

export { EapTlsServer } from './eap-tls-server.js';
export { PcpAuthServer } from './pa-server.js';
export { RadiusBackend } from './radius-backend.js';
export type { EapBackend, EapSession, EapStep, EapOutcome } from './backend.js';

export type PcpAuthBackendSettings = ({ kind: 'eap-tls' } & EapTlsServerOptions) | ({ kind: 'radius' } & RadiusBackendOptions);

export function createPcpAuth(o: Omit<PaServerOptions, 'backend'> & { backend: PcpAuthBackendSettings }): PcpAuthServer {
  const b = o.backend;
  const backend = b.kind === 'radius' ? new RadiusBackend(b) : new EapTlsServer(b);
  return new PcpAuthServer({ ...o, backend });
}
