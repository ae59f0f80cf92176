/**
 * The principals in a keytab file (MIT krb5 "Keytab file format", version 0x0502, which
 * MIT ktutil/kadmin, Heimdal, Windows ktpass and msktutil all write): the core reads
 * only the names, never the keys, to check at start that the keytab holds the service's
 * key and to default core.kerberos.realm to the realm(s) of that key.
 *
 *   keytab  = 0x05 0x02, entry*
 *   entry   = int32 size (negative: a hole of -size bytes), then size bytes:
 *             uint16 num_components, data realm, data component[num_components],
 *             uint32 name_type, uint32 timestamp, uint8 vno8, keyblock, [uint32 vno]
 *   data    = uint16 length, bytes
 * All integers big-endian (version 0x0502; 0x0501 used host order and is refused).
 */

export interface KeytabPrincipal {
  components: string[];
  realm: string;
}

/** The most entries read (a keytab of one service holds a few per key version and enctype). */
const MAX_ENTRIES = 10_000;

export function keytabPrincipals(buf: Buffer): KeytabPrincipal[] {
  if (buf.length < 2 || buf[0] !== 0x05) throw new Error('not a keytab file (no 0x05 version byte)');
  if (buf[1] !== 0x02) throw new Error(`keytab version 0x05${buf[1]!.toString(16).padStart(2, '0')} is not supported (only 0x0502)`);
  const out: KeytabPrincipal[] = [];
  let off = 2;
  while (off + 4 <= buf.length && out.length < MAX_ENTRIES) {
    const size = buf.readInt32BE(off);
    off += 4;
    if (size === 0) break;
    if (size < 0) {
      off += -size; // a deleted entry
      continue;
    }
    const end = off + size;
    if (end > buf.length) throw new Error('truncated keytab entry');
    let p = off;
    const u16 = () => {
      if (p + 2 > end) throw new Error('truncated keytab entry');
      const v = buf.readUInt16BE(p);
      p += 2;
      return v;
    };
    const data = () => {
      const n = u16();
      if (p + n > end) throw new Error('truncated keytab entry');
      const s = buf.toString('utf8', p, p + n);
      p += n;
      return s;
    };
    const n = u16();
    const realm = data();
    const components: string[] = [];
    for (let i = 0; i < n; i++) components.push(data());
    out.push({ components, realm });
    off = end;
  }
  return out;
}

/**
 * The realms of the keys for `service@host` (RFC 2743 §4.1 host-based name → principal
 * service/host@REALM, RFC 4120 §6.2.1); host compared case-insensitively (DNS names).
 */
export function serviceRealms(principals: KeytabPrincipal[], service: string): string[] {
  const at = service.indexOf('@');
  const svc = service.slice(0, at);
  const host = service.slice(at + 1).toLowerCase();
  const realms = new Set<string>();
  for (const p of principals) {
    if (p.components.length === 2 && p.components[0] === svc && p.components[1]!.toLowerCase() === host) realms.add(p.realm);
  }
  return [...realms];
}
