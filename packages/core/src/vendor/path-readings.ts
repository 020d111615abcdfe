/**
 * The readings of a request path an origin could act on, in canonical form: one view for
 * every vendor's rules (the `paths` of `RequestInfo`), so that a path rule written once
 * matches `/%61dmin`, `//admin` or `/x/../admin` as `/admin` in coproxy-http and inside a
 * bump alike.
 */

/**
 * How one origin could read a path. `decodeAll`: every `%XX` decoded before the path is
 * split (nginx's `$uri`, and applications that decode first, so `%2F` separates);
 * otherwise only unreserved characters are (RFC 3986 §6.2.2.2: WHATWG URL, Node apps,
 * most routers). `backslash`: `\` separates like `/` (WHATWG URL, Windows servers).
 * `params`: `;…` is cut from each segment before dot-segments go (Java servlet
 * containers: `/..;/admin`).
 */
interface Reading {
  readonly decodeAll: boolean;
  readonly backslash: boolean;
  readonly params: boolean;
}

const READINGS: readonly Reading[] = [
  { decodeAll: false, backslash: false, params: false },
  { decodeAll: false, backslash: true, params: false },
  { decodeAll: true, backslash: false, params: false },
  { decodeAll: true, backslash: true, params: false },
  { decodeAll: false, backslash: false, params: true },
  { decodeAll: false, backslash: true, params: true },
  { decodeAll: true, backslash: false, params: true },
  { decodeAll: true, backslash: true, params: true },
];

/** Bytes that stand for themselves in a canonical path (unreserved, sub-delims, ':', '@'); every other byte is `%XX`. */
const LITERAL = new Uint8Array(256);
for (const c of "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@") LITERAL[c.charCodeAt(0)] = 1;
const UNRESERVED = new Uint8Array(256);
for (const c of 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~') UNRESERVED[c.charCodeAt(0)] = 1;
const HEX = '0123456789ABCDEF';
const SLASH = 0x2f;
const DOT = 0x2e;
const BACKSLASH = 0x5c;
const SEMICOLON = 0x3b;
const PERCENT = 0x25;

/**
 * Every reading of `path` (origin-form, starting with `/`, no query) an origin could act
 * on, each in canonical form: unreserved escapes decoded, other bytes escaped as `%XX`
 * (upper case), dot-segments removed (RFC 3986 §5.2.4), repeated slashes collapsed. The
 * first is the standard reading (RFC 3986 normalisation); the others differ where the path
 * holds an encoded `/`, a backslash or a `;`. Undefined for a path origins disagree on
 * outright: a `%` that starts no escape, or an encoded NUL.
 *
 * A plain path (no `%`, `\`, `;`, no `/.` or `//`, only characters that need no escape)
 * is its own only reading, returned without copying.
 */
export function pathReadings(path: string): readonly string[] | undefined {
  return isPlain(path) ? [path] : slowPathReadings(path);
}

function isPlain(path: string): boolean {
  let previous = 0;
  for (let i = 0; i < path.length; i++) {
    const c = path.charCodeAt(i);
    if (c > 0x7e || LITERAL[c] !== 1) {
      if (c !== SLASH || previous === SLASH) return false;
    } else if (c === SEMICOLON || (c === DOT && previous === SLASH)) {
      return false;
    }
    previous = c;
  }
  return path.length > 0;
}

/** One byte of a path and whether the client sent it as an escape. */
interface Unit {
  readonly byte: number;
  readonly escaped: boolean;
}

/** `pathReadings` without its fast path: exported for the tests that prove the two agree. */
export function slowPathReadings(path: string): readonly string[] | undefined {
  const units = tokenise(path);
  if (units === undefined) return undefined;
  let anyEscaped = false;
  let anyBackslash = false;
  let anySemicolon = false;
  for (const unit of units) {
    if (unit.escaped) anyEscaped = true;
    if (unit.byte === BACKSLASH) anyBackslash = true;
    if (unit.byte === SEMICOLON) anySemicolon = true;
  }
  const out = new Set<string>();
  for (const reading of READINGS) {
    // Readings that cannot differ from one already taken are skipped.
    if ((reading.decodeAll && !anyEscaped) || (reading.backslash && !anyBackslash) || (reading.params && !anySemicolon)) continue;
    out.add(read(units, reading, false));
    // nginx merges slashes before it resolves dot-segments: `/a//..` is `/` to it, `/a/` to RFC 3986 and WHATWG.
    out.add(read(units, reading, true));
  }
  // `new URL(req.url, base)`, common in Node applications, takes a target that starts with
  // two slashes (or backslashes) for a scheme-relative reference: the first segment becomes
  // the host, the rest the path. `//evil/admin/x` is `/admin/x` to such an application.
  const rest = schemeRelativeRest(units);
  if (rest !== undefined) {
    out.add(read(rest, READINGS[0]!, false));
    if (anyBackslash) out.add(read(rest, READINGS[1]!, false));
  }
  return [...out];
}

const isSeparator = (unit: Unit): boolean => !unit.escaped && (unit.byte === SLASH || unit.byte === BACKSLASH);

/** After `//host`, what WHATWG's URL parser keeps as the path (`/` when nothing), or undefined when the path does not start so. */
function schemeRelativeRest(units: readonly Unit[]): Unit[] | undefined {
  if (units.length < 2 || !isSeparator(units[0]!) || !isSeparator(units[1]!)) return undefined;
  let i = 2;
  while (i < units.length && isSeparator(units[i]!)) i++; // special schemes skip any further slashes
  while (i < units.length && !isSeparator(units[i]!)) i++; // the authority
  return i < units.length ? units.slice(i) : [{ byte: SLASH, escaped: false }];
}

function tokenise(path: string): Unit[] | undefined {
  const bytes = Buffer.from(path, 'latin1');
  const units: Unit[] = [];
  for (let i = 0; i < bytes.length; i++) {
    const byte = bytes[i]!;
    if (byte !== PERCENT) {
      units.push({ byte, escaped: false });
      continue;
    }
    const high = hexValue(bytes[i + 1]);
    const low = hexValue(bytes[i + 2]);
    if (high < 0 || low < 0) return undefined;
    const decoded = high * 16 + low;
    if (decoded === 0) return undefined;
    // RFC 3986 §6.2.2.2: an escaped unreserved character is that character.
    units.push({ byte: decoded, escaped: UNRESERVED[decoded] !== 1 });
    i += 2;
  }
  return units;
}

function hexValue(byte: number | undefined): number {
  if (byte === undefined) return -1;
  if (byte >= 0x30 && byte <= 0x39) return byte - 0x30;
  if (byte >= 0x41 && byte <= 0x46) return byte - 0x37;
  if (byte >= 0x61 && byte <= 0x66) return byte - 0x57;
  return -1;
}

/**
 * One reading, in canonical form. `mergeFirst`: empty segments go before dot-segments are
 * resolved (nginx's merge_slashes), rather than after (RFC 3986 §5.2.4, WHATWG), so a
 * `..` after `//` removes a named segment rather than the empty one.
 */
function read(units: readonly Unit[], reading: Reading, mergeFirst: boolean): string {
  // Split into segments; in each, a unit is kept with whether it is still escaped in this reading.
  const segments: Unit[][] = [];
  let segment: Unit[] | undefined;
  for (const unit of units) {
    const literal = !unit.escaped || reading.decodeAll;
    const separator = literal && (unit.byte === SLASH || (reading.backslash && unit.byte === BACKSLASH));
    if (separator) {
      if (segment !== undefined) segments.push(segment);
      segment = [];
    } else {
      (segment ??= []).push(literal ? { byte: unit.byte, escaped: false } : unit);
    }
  }
  if (segment !== undefined) segments.push(segment);
  // RFC 3986 §5.2.4; then empty segments (repeated slashes) are dropped, except a trailing one.
  const out: Unit[][] = [];
  for (let i = 0; i < segments.length; i++) {
    let current = segments[i]!;
    const last = i === segments.length - 1;
    if (reading.params) {
      const cut = current.findIndex((u) => u.byte === SEMICOLON && !u.escaped);
      if (cut >= 0) current = current.slice(0, cut);
    }
    if (current.length === 0 && mergeFirst && !last) continue;
    const dots = current.length <= 2 && current.length > 0 && current.every((u) => u.byte === DOT) ? current.length : 0;
    if (dots === 2) out.pop();
    if (dots > 0) {
      if (last) out.push([]);
      continue;
    }
    out.push(current);
  }
  let text = '';
  for (let i = 0; i < out.length; i++) {
    if (out[i]!.length === 0 && i < out.length - 1) continue;
    text += `/${encode(out[i]!)}`;
  }
  return text === '' ? '/' : text;
}

/** `keepSlash`: an unescaped '/' stays one (a pattern's separators; a path's segments hold none). */
function encode(units: readonly Unit[], keepSlash = false): string {
  let text = '';
  for (const { byte, escaped } of units) {
    const literal = !escaped && (LITERAL[byte] === 1 || (keepSlash && byte === SLASH));
    text += literal ? String.fromCharCode(byte) : `%${HEX[byte >> 4]}${HEX[byte & 15]}`;
  }
  return text;
}

/**
 * A rule's path pattern in the canonical encoding paths are matched in: unreserved escapes
 * decoded, other escapes in upper case, characters that need one escaped (UTF-8 for
 * non-ASCII). `*` stays a wildcard; dot-segments are left alone. Undefined when a `%`
 * starts no escape.
 */
export function canonicalPathPattern(pattern: string): string | undefined {
  const pieces = pattern.split('*').map((piece) => {
    const units = tokenise(Buffer.from(piece, 'utf8').toString('latin1'));
    return units === undefined ? undefined : encode(units, true);
  });
  return pieces.includes(undefined) ? undefined : pieces.join('*');
}
