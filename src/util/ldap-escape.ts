/**
 * LDAP string forms the directory builds from untrusted input (a login's user name, a
 * user's DN read back from the server):
 *
 * - filter assertion values, RFC 4515 §3 (`valueencoding`): the octets NUL, `(`, `)`, `*`
 *   and `\` are not in UTF1SUBSET and MUST be written as `\` and two hex digits; we also
 *   escape the other C0 controls and DEL (§3 allows escaping any octet), so a value can
 *   never end, extend or wildcard a filter;
 * - DN attribute values, RFC 4514 §2.4 (escaping) and §3 (parsing back), used to read a
 *   group's name from its DN (`memberOf: cn=trading,ou=groups,...` → `trading`) and to
 *   check that configured DNs are well formed.
 */

/** RFC 4515 §3: an assertion value with every octet outside `normal` hex-escaped. */
export function escapeFilterValue(value: string): string {
  let out = '';
  for (const ch of value) {
    const c = ch.codePointAt(0)!;
    // NUL ( ) * \ are excluded from UTF1SUBSET (§3); controls and DEL are escaped as well.
    if (c === 0x28 || c === 0x29 || c === 0x2a || c === 0x5c || c < 0x20 || c === 0x7f) {
      out += '\\' + c.toString(16).padStart(2, '0');
    } else out += ch;
  }
  return out;
}

/** RFC 4514 §2.4: an AttributeValue escaped for a DN string. */
export function escapeDnValue(value: string): string {
  let out = '';
  const chars = [...value];
  chars.forEach((ch, i) => {
    const c = ch.codePointAt(0)!;
    if (c === 0)
      out += '\\00'; // §2.4: NUL as a hex pair
    else if ('"+,;<>\\'.includes(ch)) out += '\\' + ch;
    else if (i === 0 && (ch === ' ' || ch === '#'))
      out += '\\' + ch; // leading space or '#'
    else if (i === chars.length - 1 && ch === ' ')
      out += '\\ '; // trailing space
    else if (c < 0x20 || c === 0x7f)
      out += '\\' + c.toString(16).padStart(2, '0'); // §2.4: "may" escape others
    else out += ch;
  });
  return out;
}

export interface Ava {
  /** The attribute type as written (descr or numericoid). */
  type: string;
  /** The value, unescaped; null for a `#hexstring` (BER) value, which this parser does not decode. */
  value: string | null;
}

const DESCR_RE = /^[A-Za-z][A-Za-z0-9-]*$/;
const OID_RE = /^[0-9]+(\.[0-9]+)+$/;

/** RFC 4512 §1.4 `oid` (descr / numericoid): the attribute type grammar of RFC 4514 §3. */
export function isAttributeType(s: string): boolean {
  return DESCR_RE.test(s) || OID_RE.test(s);
}

/**
 * Parses a DN string (RFC 4514 §3) into its RDNs, each a list of attributeTypeAndValue
 * (multi-valued RDNs are joined by `+`). Returns null when the string is not a DN. The
 * empty string is the empty DN (no RDNs).
 */
export function parseDn(dn: string): Ava[][] | null {
  const rdns: Ava[][] = [];
  if (dn === '') return rdns;
  const bytes = Buffer.from(dn, 'utf8');
  let i = 0;
  let rdn: Ava[] = [];
  for (;;) {
    // attributeType "="
    const eq = bytes.indexOf(0x3d, i);
    if (eq < 0) return null;
    const type = bytes.subarray(i, eq).toString('utf8').trim();
    if (!isAttributeType(type)) return null;
    i = eq + 1;
    let value: string | null;
    if (bytes[i] === 0x23) {
      // §3: '#' hexstring (a BER encoding): accepted as well-formed, not decoded.
      let j = i + 1;
      while (j < bytes.length && /[0-9A-Fa-f]/.test(String.fromCharCode(bytes[j]!))) j++;
      if ((j - i - 1) % 2 !== 0 || j === i + 1) return null;
      i = j;
      value = null;
    } else {
      const out: number[] = [];
      while (i < bytes.length) {
        const b = bytes[i]!;
        if (b === 0x2c || b === 0x2b) break; // ',' '+' end the value
        if (b === 0x5c) {
          // §3: escaped special, or a hex pair.
          const n = bytes[i + 1];
          if (n === undefined) return null;
          if (' "#+,;<=>\\'.includes(String.fromCharCode(n))) {
            out.push(n);
            i += 2;
            continue;
          }
          const hex = bytes.subarray(i + 1, i + 3).toString('latin1');
          if (!/^[0-9A-Fa-f]{2}$/.test(hex)) return null;
          out.push(parseInt(hex, 16));
          i += 3;
          continue;
        }
        // §3: '"', ';', '<', '>' and NUL are not allowed unescaped in a string value.
        if (b === 0x22 || b === 0x3b || b === 0x3c || b === 0x3e || b === 0) return null;
        out.push(b);
        i++;
      }
      const decoded = Buffer.from(out);
      const text = new TextDecoder('utf-8', { fatal: false }).decode(decoded);
      if (Buffer.from(text, 'utf8').compare(decoded) !== 0) return null; // not UTF-8
      value = text;
    }
    rdn.push({ type, value });
    if (i >= bytes.length) {
      rdns.push(rdn);
      return rdns;
    }
    if (bytes[i] === 0x2c) {
      rdns.push(rdn);
      rdn = [];
    }
    i++;
  }
}

/** The value of attribute `type` (case-insensitive) in the DN's first RDN, or null. */
export function firstRdnValue(dn: string, type: string): string | null {
  const rdns = parseDn(dn);
  const first = rdns?.[0];
  if (!first) return null;
  const t = type.toLowerCase();
  return first.find((a) => a.type.toLowerCase() === t)?.value ?? null;
}

/** A config check: null when `dn` is a non-empty DN, else the problem. */
export function checkDn(dn: string): string | null {
  const p = parseDn(dn);
  if (!p) return `${JSON.stringify(dn)} is not a DN (RFC 4514), e.g. dc=example,dc=org`;
  if (!p.length) return 'the DN is empty';
  return null;
}

/**
 * Whether `dn` names an entry at or below `base` (RFC 4514 DNs, compared RDN by RDN from
 * the right: attribute types and values case-insensitively, as the usual matching rules
 * of naming attributes (caseIgnoreMatch, RFC 4517 §4.2.11) do). A DN either cannot parse,
 * or a `#hex` value on either side: false (the safe answer for a group filter).
 */
export function isDnUnder(dn: string, base: string): boolean {
  const d = parseDn(dn);
  const b = parseDn(base);
  if (!d || !b || b.length > d.length) return false;
  const key = (rdn: Ava[]) =>
    rdn.some((a) => a.value === null)
      ? null
      : rdn
          .map((a) => `${a.type.toLowerCase()}=${a.value!.normalize('NFKC').toLowerCase()}`)
          .sort()
          .join('+');
  for (let i = 1; i <= b.length; i++) {
    const x = key(d[d.length - i]!);
    const y = key(b[b.length - i]!);
    if (x === null || y === null || x !== y) return false;
  }
  return true;
}
