/**
 * Tensor entries (`{ dtype, shape, bytes }`) as every reader in `weights/` returns them, the dtype table
 * (names as in safetensors: https://huggingface.co/docs/safetensors), and conversion to float32.
 *
 * Bytes are little-endian and C-contiguous (row-major). They may be a view into the file's buffer.
 *
 * @module
 */

/** Element types, named as in the safetensors header. */
export type DType = "F64" | "F32" | "F16" | "BF16" | "I64" | "I32" | "I16" | "I8" | "U8" | "BOOL";

/** One tensor: dtype, shape (`[]` for a 0-d tensor) and its C-contiguous little-endian bytes. */
export interface TensorEntry {
  dtype: DType;
  shape: number[];
  bytes: Uint8Array;
}

/** Bytes per element of each dtype. */
export const DTYPE_SIZE: Readonly<Record<DType, number>> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};

/** Whether `s` names a dtype of {@linkcode DTYPE_SIZE}. */
export function isDType(s: unknown): s is DType {
  return typeof s === "string" && Object.hasOwn(DTYPE_SIZE, s);
}

/** Number of elements of `shape` (1 for `[]`). */
export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Whether the dtype is a floating-point type. */
export function isFloat(dtype: DType): boolean {
  return dtype === "F64" || dtype === "F32" || dtype === "F16" || dtype === "BF16";
}

/** A typed-array view of `bytes` when aligned, else of an aligned copy. */
function aligned<T>(
  bytes: Uint8Array,
  size: number,
  make: (b: ArrayBufferLike, off: number, n: number) => T,
): T {
  const src = bytes.byteOffset % size === 0 ? bytes : bytes.slice();
  return make(src.buffer, src.byteOffset, src.byteLength / size);
}

/** IEEE 754 binary16 bits → number. */
export function halfToNumber(h: number): number {
  const e = (h >>> 10) & 0x1f, m = h & 0x3ff, s = h & 0x8000 ? -1 : 1;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1024 + m) * 2 ** (e - 25);
}

/**
 * The entry's values as float32 (F16 and BF16 exactly, F64 and the integers rounded). An aligned F32 entry
 * is returned as a view of its bytes (no copy); everything else is a new array.
 *
 * @example
 * ```ts
 * import { toFloat32 } from "./dtype.ts";
 * const bf16 = new Uint8Array([0x80, 0x3f]); // 1.0 in bfloat16
 * console.log(toFloat32({ dtype: "BF16", shape: [1], bytes: bf16 })); // Float32Array [1]
 * ```
 */
export function toFloat32(entry: TensorEntry): Float32Array {
  const { dtype, bytes } = entry;
  const n = bytes.byteLength / DTYPE_SIZE[dtype];
  switch (dtype) {
    case "F32":
      return aligned(bytes, 4, (b, o, k) => new Float32Array(b, o, k));
    case "F64":
      return Float32Array.from(aligned(bytes, 8, (b, o, k) => new Float64Array(b, o, k)));
    case "F16": {
      const h = aligned(bytes, 2, (b, o, k) => new Uint16Array(b, o, k));
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = halfToNumber(h[i]);
      return out;
    }
    case "BF16": {
      // bfloat16 is the high half of a float32: shift the bits up.
      const h = aligned(bytes, 2, (b, o, k) => new Uint16Array(b, o, k));
      const bits = new Uint32Array(n);
      for (let i = 0; i < n; i++) bits[i] = h[i] << 16;
      return new Float32Array(bits.buffer);
    }
    case "I64": {
      const v = aligned(bytes, 8, (b, o, k) => new BigInt64Array(b, o, k));
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = Number(v[i]);
      return out;
    }
    case "I32":
      return Float32Array.from(aligned(bytes, 4, (b, o, k) => new Int32Array(b, o, k)));
    case "I16":
      return Float32Array.from(aligned(bytes, 2, (b, o, k) => new Int16Array(b, o, k)));
    case "I8":
      return Float32Array.from(new Int8Array(bytes.buffer, bytes.byteOffset, n));
    case "U8":
    case "BOOL":
      return Float32Array.from(bytes);
  }
}

/**
 * The entry with F16 / BF16 / F64 converted to F32 (other dtypes unchanged).
 *
 * @example
 * ```ts
 * import { asFloat32Entry } from "./dtype.ts";
 * const e = asFloat32Entry({ dtype: "F16", shape: [1], bytes: new Uint8Array([0x00, 0x3c]) });
 * console.log(e.dtype); // "F32"
 * ```
 */
export function asFloat32Entry(entry: TensorEntry): TensorEntry {
  if (entry.dtype !== "F16" && entry.dtype !== "BF16" && entry.dtype !== "F64") return entry;
  const f = toFloat32(entry);
  return { dtype: "F32", shape: entry.shape, bytes: new Uint8Array(f.buffer, f.byteOffset, f.byteLength) };
}

/** How many NaN and ±Inf values a tensor holds. */
export interface NonFinite {
  nan: number;
  inf: number;
}

/** Exponent mask of each float dtype's bit pattern (all ones = NaN or Inf), read as unsigned ints. */
const EXP_MASK = { F32: 0x7f800000, F16: 0x7c00, BF16: 0x7f80, F64: 0x7ff00000 } as const;
/** Mantissa mask of the same words (F64: the high word's part; the low word is all mantissa). */
const MANT_MASK = { F32: 0x7fffff, F16: 0x3ff, BF16: 0x7f, F64: 0xfffff } as const;

/**
 * The NaN and ±Inf values of a floating-point entry, counted from the bit patterns (no conversion; about
 * half a second per billion values); integer dtypes have none.
 *
 * @example
 * ```ts
 * import { countNonFinite } from "./dtype.ts";
 * const w = new Float32Array([1, NaN, Infinity, -Infinity]);
 * console.log(countNonFinite({ dtype: "F32", shape: [4], bytes: new Uint8Array(w.buffer) })); // { nan: 1, inf: 2 }
 * ```
 */
export function countNonFinite(entry: TensorEntry): NonFinite {
  const { dtype, bytes } = entry;
  if (!isFloat(dtype) || bytes.byteLength === 0) return { nan: 0, inf: 0 };
  const d = dtype as keyof typeof EXP_MASK;
  // One function per word type keeps each scan loop monomorphic (several times faster).
  if (d === "F16" || d === "BF16") {
    return scan16(aligned(bytes, 2, (b, o, k) => new Uint16Array(b, o, k)), EXP_MASK[d], MANT_MASK[d]);
  }
  // F64: the exponent is in the high word of each little-endian pair.
  const words = aligned(bytes, 4, (b, o, k) => new Uint32Array(b, o, k));
  return d === "F64"
    ? scan32(words, 1, 2, EXP_MASK.F64, MANT_MASK.F64)
    : scan32(words, 0, 1, EXP_MASK.F32, MANT_MASK.F32);
}

function scan16(words: Uint16Array, mask: number, mant: number): NonFinite {
  const out = { nan: 0, inf: 0 };
  let bad = 0;
  for (let i = 0; i < words.length; i++) if ((words[i] & mask) === mask) bad++;
  if (bad === 0) return out;
  for (let i = 0; i < words.length; i++) {
    if ((words[i] & mask) === mask) (words[i] & mant) !== 0 ? out.nan++ : out.inf++;
  }
  return out;
}

/** Words `first`, `first + step`, … hold the exponent; with `step` 2 (F64) the word before is mantissa. */
function scan32(words: Uint32Array, first: number, step: number, mask: number, mant: number): NonFinite {
  const out = { nan: 0, inf: 0 };
  let bad = 0;
  for (let i = first; i < words.length; i += step) if ((words[i] & mask) === mask) bad++;
  if (bad === 0) return out;
  for (let i = first; i < words.length; i += step) {
    if ((words[i] & mask) !== mask) continue;
    if ((words[i] & mant) !== 0 || (step === 2 && words[i - 1] !== 0)) out.nan++;
    else out.inf++;
  }
  return out;
}
