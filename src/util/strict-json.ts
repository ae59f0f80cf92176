/**
 * Strict JSON objects (RFC 8259): the parse behind request bodies (src/core/json-body.ts)
 * and JWS headers and payloads (src/core/jws.ts). Stricter than JSON.parse:
 *
 * - the bytes must be valid UTF-8 (RFC 8259 §8.1), refused otherwise (no U+FFFD);
 * - the top level must be an object;
 * - a duplicate top-level member name refuses the text (RFC 8259 §4: names SHOULD be
 *   unique, and with duplicates "the behavior of software ... is unpredictable"; RFC 7515
 *   §4 and RFC 7519 §4 allow refusing, which this does rather than taking the last).
 */

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** The top-level member names of a JSON object text, in order (JSON.parse has already accepted the text). */
function topLevelKeys(text: string): string[] {
  const keys: string[] = [];
  let depth = 0;
  let expectKey = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === '"') {
      // A JSON string (RFC 8259 §7): up to the next unescaped quote.
      let j = i + 1;
      while (text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      if (depth === 1 && expectKey) {
        keys.push(JSON.parse(text.slice(i, j + 1)) as string);
        expectKey = false;
      }
      i = j;
    } else if (c === '{' || c === '[') {
      depth++;
      if (depth === 1 && c === '{') expectKey = true;
    } else if (c === '}' || c === ']') depth--;
    else if (c === ',' && depth === 1) expectKey = true;
  }
  return keys;
}

/**
 * A JSON object (RFC 8259) from UTF-8 bytes, refusing invalid UTF-8, anything but an
 * object at the top, and duplicate top-level member names. Null when refused.
 */
export function parseStrictObject(bytes: Buffer): Record<string, unknown> | null {
  let text: string;
  try {
    text = utf8.decode(bytes);
  } catch {
    return null;
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return null;
  }
  if (!v || typeof v !== 'object' || Array.isArray(v)) return null;
  const keys = topLevelKeys(text.trim());
  if (new Set(keys).size !== keys.length) return null;
  return v as Record<string, unknown>;
}
