/**
 * A minimal, restricted unpickler: the opcodes of protocols 0–5 that `torch.save` and plain containers
 * use, and no global but those the caller allows (like `torch.load(weights_only=True)`). It never imports
 * or calls anything by name; an allowed global is a value the caller supplies.
 *
 * Spec: CPython `Lib/pickletools.py` (opcode table and argument formats) and PEP 3154 (protocol 4 framing),
 * https://github.com/python/cpython/blob/main/Lib/pickletools.py
 *
 * Values: None → null, bool → boolean, int → number (bigint beyond 2⁵³), float → number, str → string,
 * bytes → Uint8Array, tuple and list → array, dict → Map, set → Set.
 *
 * @module
 */
import { CheckpointError, RefusedGlobalError } from "./errors.ts";

/** A global the caller allows: a callable (for REDUCE / NEWOBJ) or a plain marker value. */
export class PyGlobal {
  constructor(
    readonly module: string,
    readonly name: string,
    readonly call?: (args: unknown[]) => unknown,
    readonly value?: unknown,
  ) {}
  get qualname(): string {
    return `${this.module}.${this.name}`;
  }
}

/** Options of {@linkcode unpickle}. */
export interface UnpickleOptions {
  /** Names the file in errors. */
  file: string;
  /** File offset of `bytes[0]`, for error messages; `undefined` when the bytes were inflated. */
  base?: number;
  /** Where in the file the pickle is, for error messages (e.g. "data.pkl"). */
  where?: string;
  /** The allowed globals by `module.name`; any other global is refused. */
  globals: ReadonlyMap<string, PyGlobal>;
  /** `persistent_load` of BINPERSID / PERSID. */
  persistentLoad?: (pid: unknown) => unknown;
}

/**
 * Unpickle the pickle starting at `bytes[start]`; returns the value and the offset just past STOP.
 *
 * @example
 * ```ts
 * import { unpickle } from "./pickle.ts";
 * // pickle.dumps({"a": 1}, protocol=2)
 * const p = new Uint8Array([0x80, 2, 0x7d, 0x71, 0, 0x58, 1, 0, 0, 0, 0x61, 0x71, 1, 0x4b, 1, 0x73, 0x2e]);
 * console.log(unpickle(p, 0, { file: "x.pkl", globals: new Map() }).value); // Map { "a" => 1 }
 * ```
 */
export function unpickle(
  bytes: Uint8Array,
  start: number,
  opts: UnpickleOptions,
): { value: unknown; end: number } {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const { file } = opts;
  const where = opts.where ? ` in ${opts.where}` : "";
  const at = (pos: number) => (opts.base === undefined ? -1 : opts.base + pos);
  const fail = (pos: number, msg: string): never => {
    const rel = opts.base === undefined ? ` (byte ${pos} of the inflated ${opts.where ?? "pickle"})` : "";
    throw new CheckpointError(file, at(pos), `${msg}${where}${rel}`);
  };
  const decoder = new TextDecoder("utf-8", { fatal: true });

  const stack: unknown[] = [];
  const marks: number[] = [];
  const memo = new Map<number, unknown>();
  let pos = start;
  let op = 0, opPos = start;

  const need = (n: number) => {
    if (pos + n > bytes.length) {
      fail(
        opPos,
        `truncated pickle: opcode 0x${
          op.toString(16)
        } needs ${n} more bytes, the data ends at ${bytes.length}`,
      );
    }
  };
  const take = (n: number) => {
    need(n);
    const v = bytes.subarray(pos, pos + n);
    pos += n;
    return v;
  };
  const u8 = () => (need(1), bytes[pos++]);
  const u16 = () => (need(2), pos += 2, dv.getUint16(pos - 2, true));
  const u32 = () => (need(4), pos += 4, dv.getUint32(pos - 4, true));
  const i32 = () => (need(4), pos += 4, dv.getInt32(pos - 4, true));
  const u64 = () => {
    need(8);
    const v = dv.getBigUint64(pos, true);
    pos += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) fail(opPos, `length ${v} is too large`);
    return Number(v);
  };
  const latin1 = (b: Uint8Array) => {
    let s = "";
    for (let i = 0; i < b.length; i++) s += String.fromCharCode(b[i]);
    return s;
  };
  const line = (asLatin1 = false) => {
    const end = bytes.indexOf(0x0a, pos);
    if (end < 0) fail(opPos, "truncated pickle: expected a newline-terminated argument");
    const b = bytes.subarray(pos, end);
    const s = asLatin1 ? latin1(b) : new TextDecoder().decode(b);
    pos = end + 1;
    return s;
  };
  const str = (n: number) => {
    const b = take(n);
    try {
      return decoder.decode(b);
    } catch {
      return fail(opPos, "expected UTF-8 text");
    }
  };
  const pop = () => {
    if (stack.length === 0 || (marks.length && stack.length <= marks[marks.length - 1])) {
      fail(opPos, `stack underflow at opcode 0x${op.toString(16)}`);
    }
    return stack.pop();
  };
  const top = () => {
    if (stack.length === 0) fail(opPos, `empty stack at opcode 0x${op.toString(16)}`);
    return stack[stack.length - 1];
  };
  const popMark = () => {
    const m = marks.pop();
    if (m === undefined) fail(opPos, `opcode 0x${op.toString(16)} without a MARK`);
    return stack.splice(m!);
  };
  const long = (b: Uint8Array) => {
    // Two's-complement little-endian integer of any length.
    if (b.length === 0) return 0;
    let v = 0n;
    for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]);
    if (b[b.length - 1] & 0x80) v -= 1n << BigInt(8 * b.length);
    return toNumber(v);
  };
  const textInt = (t: string) => {
    if (!/^[-+]?\d+$/.test(t)) {
      fail(opPos, `expected a decimal integer, found ${JSON.stringify(t.slice(0, 40))}`);
    }
    return toNumber(BigInt(t));
  };
  const global = (module: string, name: string) => {
    const g = opts.globals.get(`${module}.${name}`);
    if (!g) throw new RefusedGlobalError(file, at(opPos), `${module}.${name}`);
    return g;
  };
  const call = (fn: unknown, args: unknown) => {
    if (!(fn instanceof PyGlobal) || !fn.call) {
      return fail(opPos, `expected a callable allowed global, found ${describe(fn)}`);
    }
    if (!Array.isArray(args)) return fail(opPos, `expected an argument tuple for ${fn.qualname}`);
    try {
      return fn.call(args);
    } catch (e) {
      if (e instanceof CheckpointError) throw e;
      return fail(opPos, `cannot call ${fn.qualname}: ${(e as Error).message}`);
    }
  };
  const setItems = (d: unknown, kv: unknown[]) => {
    if (!(d instanceof Map)) return fail(opPos, `expected a dict to set items on, found ${describe(d)}`);
    for (let i = 0; i + 1 < kv.length; i += 2) d.set(kv[i], kv[i + 1]);
  };
  const append = (l: unknown, vs: unknown[]) => {
    if (Array.isArray(l)) l.push(...vs);
    else if (l instanceof Set) { for (const v of vs) l.add(v); }
    else fail(opPos, `expected a list to append to, found ${describe(l)}`);
  };
  const persistent = (pid: unknown) => {
    if (!opts.persistentLoad) return fail(opPos, "unexpected persistent id (no persistent_load)");
    try {
      return opts.persistentLoad(pid);
    } catch (e) {
      if (e instanceof CheckpointError) throw e;
      return fail(opPos, `bad persistent id: ${(e as Error).message}`);
    }
  };

  for (;;) {
    opPos = pos;
    if (pos >= bytes.length) fail(pos, "truncated pickle: expected an opcode or STOP, the data ends here");
    op = bytes[pos++];
    switch (op) {
      case 0x80: // PROTO
        if (u8() > 5) fail(opPos, `unsupported pickle protocol ${bytes[pos - 1]}`);
        break;
      case 0x95: // FRAME: an 8-byte length; frames are only a hint to buffered readers
        u64();
        break;
      case 0x2e: // STOP
        return { value: pop(), end: pos };
      case 0x28: // MARK
        marks.push(stack.length);
        break;
      case 0x30: // POP
        if (marks.length && marks[marks.length - 1] === stack.length) marks.pop();
        else pop();
        break;
      case 0x31: // POP_MARK
        popMark();
        break;
      case 0x32: // DUP
        stack.push(top());
        break;
      case 0x4e: // NONE
        stack.push(null);
        break;
      case 0x88: // NEWTRUE
        stack.push(true);
        break;
      case 0x89: // NEWFALSE
        stack.push(false);
        break;
      case 0x4a: // BININT
        stack.push(i32());
        break;
      case 0x4b: // BININT1
        stack.push(u8());
        break;
      case 0x4d: // BININT2
        stack.push(u16());
        break;
      case 0x8a: // LONG1
        stack.push(long(take(u8())));
        break;
      case 0x8b: { // LONG4
        const n = i32();
        if (n < 0) fail(opPos, `negative LONG4 length ${n}`);
        stack.push(long(take(n)));
        break;
      }
      case 0x49: { // INT (text; "00" / "01" are False / True)
        const s = line();
        stack.push(s === "00" ? false : s === "01" ? true : textInt(s));
        break;
      }
      case 0x4c: // LONG (text, trailing L)
        stack.push(textInt(line().replace(/L$/, "")));
        break;
      case 0x47: // BINFLOAT (big-endian float64)
        need(8);
        stack.push(dv.getFloat64(pos, false));
        pos += 8;
        break;
      case 0x46: // FLOAT (text)
        stack.push(parseFloat(line()));
        break;
      case 0x58: // BINUNICODE
        stack.push(str(u32()));
        break;
      case 0x8c: // SHORT_BINUNICODE
        stack.push(str(u8()));
        break;
      case 0x8d: // BINUNICODE8
        stack.push(str(u64()));
        break;
      case 0x56: // UNICODE (protocol 0: raw-unicode-escape, one line)
        stack.push(
          line(true).replace(
            /\\u([0-9a-fA-F]{4})|\\U([0-9a-fA-F]{8})/g,
            (_, u, w) => String.fromCodePoint(parseInt(u ?? w, 16)),
          ),
        );
        break;
      case 0x54: { // BINSTRING (Python 2 str, read as latin-1)
        const n = i32();
        if (n < 0) fail(opPos, `negative BINSTRING length ${n}`);
        stack.push(latin1(take(n)));
        break;
      }
      case 0x55: // SHORT_BINSTRING
        stack.push(latin1(take(u8())));
        break;
      case 0x42: // BINBYTES
        stack.push(take(u32()).slice());
        break;
      case 0x43: // SHORT_BINBYTES
        stack.push(take(u8()).slice());
        break;
      case 0x8e: // BINBYTES8
      case 0x96: // BYTEARRAY8
        stack.push(take(u64()).slice());
        break;
      case 0x7d: // EMPTY_DICT
        stack.push(new Map());
        break;
      case 0x5d: // EMPTY_LIST
        stack.push([]);
        break;
      case 0x29: // EMPTY_TUPLE
        stack.push([]);
        break;
      case 0x8f: // EMPTY_SET
        stack.push(new Set());
        break;
      case 0x85: // TUPLE1
        stack.push([pop()]);
        break;
      case 0x86: { // TUPLE2
        const b = pop(), a = pop();
        stack.push([a, b]);
        break;
      }
      case 0x87: { // TUPLE3
        const c = pop(), b = pop(), a = pop();
        stack.push([a, b, c]);
        break;
      }
      case 0x74: // TUPLE
      case 0x6c: // LIST
        stack.push(popMark());
        break;
      case 0x91: // FROZENSET
        stack.push(new Set(popMark()));
        break;
      case 0x64: { // DICT
        const d = new Map();
        setItems(d, popMark());
        stack.push(d);
        break;
      }
      case 0x73: { // SETITEM
        const v = pop(), k = pop();
        setItems(top(), [k, v]);
        break;
      }
      case 0x75: { // SETITEMS
        const kv = popMark();
        setItems(top(), kv);
        break;
      }
      case 0x61: { // APPEND
        const v = pop();
        append(top(), [v]);
        break;
      }
      case 0x65: // APPENDS
      case 0x90: { // ADDITEMS
        const vs = popMark();
        append(top(), vs);
        break;
      }
      case 0x71: // BINPUT
        memo.set(u8(), top());
        break;
      case 0x72: // LONG_BINPUT
        memo.set(u32(), top());
        break;
      case 0x70: // PUT
        memo.set(Number(line()), top());
        break;
      case 0x94: // MEMOIZE
        memo.set(memo.size, top());
        break;
      case 0x68: // BINGET
      case 0x6a: // LONG_BINGET
      case 0x67: { // GET
        const k = op === 0x68 ? u8() : op === 0x6a ? u32() : Number(line());
        if (!memo.has(k)) fail(opPos, `memo key ${k} was never stored`);
        stack.push(memo.get(k));
        break;
      }
      case 0x63: { // GLOBAL "module\nname\n"
        const module = line(), name = line();
        stack.push(global(module, name));
        break;
      }
      case 0x93: { // STACK_GLOBAL
        const name = pop(), module = pop();
        if (typeof module !== "string" || typeof name !== "string") {
          fail(opPos, "expected two strings for STACK_GLOBAL");
        }
        stack.push(global(module as string, name as string));
        break;
      }
      case 0x52: { // REDUCE
        const args = pop(), fn = pop();
        stack.push(call(fn, args));
        break;
      }
      case 0x81: { // NEWOBJ
        const args = pop(), cls = pop();
        stack.push(call(cls, args));
        break;
      }
      case 0x92: { // NEWOBJ_EX
        const kwargs = pop(), args = pop(), cls = pop();
        if (kwargs instanceof Map && kwargs.size) {
          fail(opPos, "NEWOBJ_EX with keyword arguments is not supported");
        }
        stack.push(call(cls, args));
        break;
      }
      case 0x62: { // BUILD: state is set on objects we created; plain dicts keep it aside
        const state = pop(), obj = top();
        if (obj && typeof obj === "object" && "setState" in obj && typeof obj.setState === "function") {
          obj.setState(state);
        } else if (obj instanceof Map) {
          pyState.set(obj, state);
        } else {
          fail(opPos, `cannot BUILD ${describe(obj)}`);
        }
        break;
      }
      case 0x51: // BINPERSID
        stack.push(persistent(pop()));
        break;
      case 0x50: // PERSID
        stack.push(persistent(line()));
        break;
      default:
        fail(opPos, `unsupported pickle opcode 0x${op.toString(16).padStart(2, "0")}`);
    }
  }
}

/** State set by BUILD on a dict (e.g. the `_metadata` of a `state_dict()` OrderedDict). */
export const pyState: WeakMap<object, unknown> = new WeakMap();

function toNumber(v: bigint): number | bigint {
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

/** A short description of a pickle value for error messages. */
export function describe(v: unknown): string {
  if (v === null) return "None";
  if (v instanceof PyGlobal) return v.qualname;
  if (v instanceof Map) return `a dict of ${v.size}`;
  if (Array.isArray(v)) return `a tuple/list of ${v.length}`;
  if (v instanceof Uint8Array) return `bytes of ${v.length}`;
  if (typeof v === "object") return v.constructor?.name ?? "an object";
  if (typeof v === "string") return `string ${JSON.stringify(v.length > 40 ? v.slice(0, 40) + "…" : v)}`;
  return `${typeof v} ${String(v).slice(0, 40)}`;
}
