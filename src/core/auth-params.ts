/**
 * The auth-params of an HTTP credential or challenge (RFC 9110 §11.2), after the
 * auth-scheme: one parser for Gatehouse-Cert credentials (src/core/cert-header.ts) and
 * Digest (src/core/digest.ts).
 *
 *   auth-param = token BWS "=" BWS ( token / quoted-string )      §11.2
 *
 * in a list (§5.6.1: elements separated by OWS "," OWS; a recipient ignores empty
 * elements, §5.6.1.2). Parameter names are case-insensitive (§11.2), lowercased here; each
 * occurs once (§11.2: "each parameter name MUST only occur once per challenge", applied
 * to credentials too): a parameter given twice refuses the list. Null on any syntax error.
 *
 * What a quoted-string (§5.6.4) may hold and what an unquoted value may be is the
 * caller's AuthParamSyntax: RFC9110_SYNTAX is the grammar as written; Digest passes its own.
 */

/** RFC 9110 §5.6.2 tchar. */
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+/;

export interface AuthParamSyntax {
  /**
   * Inside a quoted-string: `rfc9110`, qdtext and quoted-pair of §5.6.4 only (no control
   * character but HTAB); `any`, every character, `\` taking the next one as it is.
   */
  quoted: 'rfc9110' | 'any';
  /** An unquoted value, anchored at its start (§11.2: a token). */
  unquoted: RegExp;
}

/** RFC 9110 §11.2 and §5.6.4 as written. */
export const RFC9110_SYNTAX: AuthParamSyntax = { quoted: 'rfc9110', unquoted: TOKEN };

/** §5.6.4: HTAB / SP / VCHAR / obs-text, what both qdtext (less `"` and `\`) and quoted-pair allow. */
const quotable = (c: number) => c === 0x09 || (c >= 0x20 && c !== 0x7f && c <= 0xff);

/** RFC 9110 §11.2 auth-params (the text after the auth-scheme), or null when they do not follow `syntax`. */
export function parseAuthParams(s: string, syntax: AuthParamSyntax = RFC9110_SYNTAX): Map<string, string> | null {
  const strict = syntax.quoted === 'rfc9110';
  const params = new Map<string, string>();
  let i = 0;
  const ows = () => {
    while (s[i] === ' ' || s[i] === '\t') i++;
  };
  let first = true;
  for (;;) {
    ows();
    // §5.6.1.2: empty list elements are ignored.
    let sawComma = false;
    while (s[i] === ',') {
      i++;
      sawComma = true;
      ows();
    }
    if (i >= s.length) break;
    if (!first && !sawComma) return null;
    first = false;
    const nm = TOKEN.exec(s.slice(i));
    if (!nm) return null;
    const name = nm[0].toLowerCase();
    i += nm[0].length;
    ows(); // BWS
    if (s[i] !== '=') return null;
    i++;
    ows(); // BWS
    let value = '';
    if (s[i] === '"') {
      // §5.6.4 quoted-string.
      i++;
      let closed = false;
      while (i < s.length) {
        const c = s.charCodeAt(i);
        if (c === 0x22) {
          closed = true;
          i++;
          break;
        }
        if (c === 0x5c) {
          // quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text ); NaN past the end.
          const n = s.charCodeAt(i + 1);
          if (Number.isNaN(n) || (strict && !quotable(n))) return null;
          value += s[i + 1];
          i += 2;
          continue;
        }
        // qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
        if (strict && !quotable(c)) return null;
        value += s[i];
        i++;
      }
      if (!closed) return null;
    } else {
      const tm = syntax.unquoted.exec(s.slice(i));
      if (!tm) return null;
      value = tm[0];
      i += tm[0].length;
    }
    if (params.has(name)) return null;
    params.set(name, value);
    ows();
    if (i < s.length && s[i] !== ',') return null;
  }
  return params;
}
