/**
 * NPY / NPZ reader and writer: little-endian `f4 f8 i4 i8 u1 b1` and fixed-width unicode `<U{n}`, C order,
 * header versions 1.0, 2.0 and 3.0. NPZ is a zip of `.npy` members, stored (`np.savez`) or deflated
 * (`np.savez_compressed`).
 *
 * NPY: https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html — magic `\x93NUMPY`, major and
 * minor version bytes, the header length (u16 for 1.0, u32 for 2.0 / 3.0), a Python dict literal
 * `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }` (latin-1; UTF-8 in 3.0) padded with spaces
 * and a newline so that the data start on a 64-byte boundary, then the data.
 * Zip: https://pkware.cachefly.net/webdocs/casestudies/APPNOTE.TXT (read with `weights/zip.ts`, written
 * with fflate's `zipSync`).
 *
 * Numeric arrays read from a file are views of its bytes when aligned (copies otherwise, e.g. a stored NPZ
 * member at an odd offset).
 *
 * @module
 */
import { type Zippable, zipSync } from "fflate";
import { openZip, readWholeFile } from "../weights/zip.ts";
import { CheckpointError } from "../weights/errors.ts";

/** An NPY array: a dtype, a C-order shape and the flat data. `b1` is stored as 0 / 1 bytes. */
export type NpyArray =
  | { dtype: "f4"; shape: number[]; data: Float32Array }
  | { dtype: "f8"; shape: number[]; data: Float64Array }
  | { dtype: "i4"; shape: number[]; data: Int32Array }
  | { dtype: "i8"; shape: number[]; data: BigInt64Array }
  | { dtype: "u1"; shape: number[]; data: Uint8Array }
  | { dtype: "b1"; shape: number[]; data: Uint8Array }
  | { dtype: "U"; shape: number[]; data: string[] };

/** The dtype tags of {@linkcode NpyArray}. */
export type NpyDtype = NpyArray["dtype"];

/** Bad NPY / NPZ input: names the file, what was expected, and the byte offset (-1: the file as a whole). */
export class NpyError extends Error {
  constructor(readonly file: string, readonly offset: number, message: string) {
    super(`${file}: ${message}${offset >= 0 ? ` (at byte ${offset})` : ""}`);
    this.name = "NpyError";
  }
}

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY
const enc = new TextEncoder();

// descr → [dtype, item size]; `|` marks byte-order-free types.
const DESCR: Record<string, [Exclude<NpyDtype, "U">, number]> = {
  "<f4": ["f4", 4],
  "<f8": ["f8", 8],
  "<i4": ["i4", 4],
  "<i8": ["i8", 8],
  "|u1": ["u1", 1],
  "<u1": ["u1", 1],
  "|b1": ["b1", 1],
};
const ITEM: Record<Exclude<NpyDtype, "U">, number> = { f4: 4, f8: 8, i4: 4, i8: 8, u1: 1, b1: 1 };

// ---------------------------------------------------------------------------------------------------------
// Reading

/**
 * Decode one NPY file. `file` names it in errors.
 *
 * @example
 * ```ts ignore
 * const genes = decodeNpy(await Deno.readFile("her_hvg_cut_1000.npy"), "her_hvg_cut_1000.npy");
 * if (genes.dtype === "U") console.log(genes.shape, genes.data[0]); // [785] "HPS6"
 * ```
 */
export function decodeNpy(bytes: Uint8Array, file = "<npy>"): NpyArray {
  if (bytes.length < 10 || MAGIC.some((m, i) => bytes[i] !== m)) {
    throw new NpyError(file, 0, "expected the NPY magic \\x93NUMPY, found something else");
  }
  const major = bytes[6], minor = bytes[7];
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let headerLen: number, start: number;
  if (major === 1) {
    headerLen = dv.getUint16(8, true);
    start = 10;
  } else if (major === 2 || major === 3) {
    if (bytes.length < 12) throw new NpyError(file, 8, "expected a 4-byte header length, the file ends");
    headerLen = dv.getUint32(8, true);
    start = 12;
  } else {
    throw new NpyError(file, 6, `expected NPY version 1.0, 2.0 or 3.0, found ${major}.${minor}`);
  }
  if (start + headerLen > bytes.length) {
    throw new NpyError(
      file,
      start,
      `expected a ${headerLen}-byte header, but the file ends at ${bytes.length}`,
    );
  }
  const raw = bytes.subarray(start, start + headerLen);
  const header = major === 3 ? new TextDecoder().decode(raw) : String.fromCharCode(...raw);
  const descr = /['"]descr['"]\s*:\s*['"]([^'"]*)['"]/.exec(header)?.[1];
  const fortran = /['"]fortran_order['"]\s*:\s*(True|False)/.exec(header)?.[1];
  const shapeText = /['"]shape['"]\s*:\s*\(([^)]*)\)/.exec(header)?.[1];
  if (descr === undefined || fortran === undefined || shapeText === undefined) {
    throw new NpyError(
      file,
      start,
      `expected a header dict with 'descr' (a simple dtype string), 'fortran_order' and 'shape', ` +
        `found ${JSON.stringify(header.trim().slice(0, 200))}`,
    );
  }
  if (fortran === "True") {
    throw new NpyError(
      file,
      start,
      "expected C order, found fortran_order: True (save with np.ascontiguousarray first)",
    );
  }
  const shape = shapeText.split(",").map((s) => s.trim()).filter((s) => s !== "").map(Number);
  if (shape.some((d) => !Number.isSafeInteger(d) || d < 0)) {
    throw new NpyError(file, start, `expected a shape of non-negative integers, found (${shapeText})`);
  }
  const n = shape.reduce((p, d) => p * d, 1);
  const off = start + headerLen;

  const u = /^([<|=])U(\d+)$/.exec(descr);
  if (u) {
    const width = Number(u[2]);
    need(file, bytes, off, n * width * 4, `${n} strings of ${width} UTF-32 code units`);
    const data: string[] = new Array(n);
    for (let i = 0; i < n; i++) {
      let s = "";
      for (let j = 0; j < width; j++) {
        const c = dv.getUint32(off + (i * width + j) * 4, true);
        if (c === 0) break; // numpy strips trailing NULs
        s += String.fromCodePoint(c);
      }
      data[i] = s;
    }
    return { dtype: "U", shape, data };
  }
  const known = DESCR[descr];
  if (!known) {
    throw new NpyError(
      file,
      start,
      `expected a dtype among ${Object.keys(DESCR).join(" ")} <U{n}, found '${descr}'` +
        (descr.startsWith(">") ? " (big-endian: convert with a.astype(a.dtype.newbyteorder('<')))" : ""),
    );
  }
  const [dtype, size] = known;
  need(file, bytes, off, n * size, `${n} values of ${descr}`);
  // A view when the data start is aligned in memory, else a copy.
  const aligned = (bytes.byteOffset + off) % size === 0;
  const buf = aligned ? bytes.buffer : bytes.slice(off, off + n * size).buffer;
  const base = aligned ? bytes.byteOffset + off : 0;
  switch (dtype) {
    case "f4":
      return { dtype, shape, data: new Float32Array(buf, base, n) };
    case "f8":
      return { dtype, shape, data: new Float64Array(buf, base, n) };
    case "i4":
      return { dtype, shape, data: new Int32Array(buf, base, n) };
    case "i8":
      return { dtype, shape, data: new BigInt64Array(buf, base, n) };
    case "u1":
    case "b1":
      return { dtype, shape, data: new Uint8Array(buf, base, n) };
  }
}

function need(file: string, bytes: Uint8Array, off: number, len: number, what: string): void {
  if (off + len > bytes.length) {
    throw new NpyError(
      file,
      off,
      `expected ${what} (${len} bytes), but the file ends at byte ${bytes.length}`,
    );
  }
}

/**
 * Decode an NPZ file (`np.savez` / `np.savez_compressed`) into arrays keyed by name (without `.npy`).
 * Errors inside a member name the member (`file.npz/count.npy`) and the offset inside it.
 *
 * @example
 * ```ts ignore
 * const spot = decodeNpz(await Deno.readFile("C1_10_12.npz"), "C1_10_12.npz");
 * console.log(spot.count.shape, toNumbers(spot.count));
 * ```
 */
export function decodeNpz(bytes: Uint8Array, file = "<npz>"): Record<string, NpyArray> {
  const out: Record<string, NpyArray> = {};
  try {
    const zip = openZip(bytes, file);
    for (const name of zip.entries.keys()) {
      if (!name.endsWith(".npy")) continue;
      const { bytes: member } = zip.read(name);
      out[name.slice(0, -4)] = decodeNpy(member, `${file}/${name}`);
    }
  } catch (e) {
    if (e instanceof CheckpointError) throw new NpyError(file, e.offset, e.message.replace(`${file}: `, ""));
    throw e;
  }
  return out;
}

/** Read an NPY file from disk. */
export async function readNpy(path: string): Promise<NpyArray> {
  return decodeNpy(await Deno.readFile(path), path);
}

/** Read an NPZ file from disk. */
export async function readNpz(path: string): Promise<Record<string, NpyArray>> {
  return decodeNpz(await readWholeFile(path), path);
}

/**
 * The values of a numeric array as a Float64Array (int64 beyond 2⁵³ lose precision); strings throw.
 *
 * @example
 * ```ts ignore
 * const mean = toNumbers(await readNpy("mean_expression.npy")); // Float64Array(19949)
 * ```
 */
export function toNumbers(a: NpyArray, what = "array"): Float64Array {
  if (a.dtype === "U") throw new TypeError(`Cannot read ${what} as numbers: current dtype is <U (strings)`);
  if (a.dtype === "f8") return a.data;
  const out = new Float64Array(a.data.length);
  for (let i = 0; i < out.length; i++) out[i] = Number(a.data[i]);
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Writing

/**
 * Encode one array in NPY format, version 1.0 (2.0 when the header needs more than 65535 bytes, or when
 * asked), data 64-byte aligned.
 *
 * @example
 * ```ts
 * const bytes = encodeNpy({ dtype: "f4", shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) });
 * ```
 */
export function encodeNpy(a: NpyArray, opts: { version?: 1 | 2 | 3 } = {}): Uint8Array {
  const n = a.shape.reduce((p, d) => p * d, 1);
  if (a.data.length !== n) {
    throw new RangeError(
      `Cannot write npy: shape [${a.shape}] needs ${n} values, current value has ${a.data.length}`,
    );
  }
  let descr: string, body: Uint8Array;
  if (a.dtype === "U") {
    // UTF-32 little-endian code points, each string padded with NULs to the longest.
    const cps = a.data.map((s) => [...s].map((c) => c.codePointAt(0)!));
    const width = Math.max(1, ...cps.map((c) => c.length));
    descr = `<U${width}`;
    const u32 = new Uint32Array(n * width);
    cps.forEach((c, i) => u32.set(c, i * width));
    body = new Uint8Array(u32.buffer);
  } else {
    descr = a.dtype === "u1" || a.dtype === "b1" ? `|${a.dtype}` : `<${a.dtype}`;
    body = new Uint8Array(a.data.buffer, a.data.byteOffset, a.data.length * ITEM[a.dtype]);
  }
  const shape = a.shape.length === 1 ? `(${a.shape[0]},)` : `(${a.shape.join(", ")})`;
  const dict = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shape}, }`;
  let version = opts.version ?? 1;
  const pre = (v: number) => (v === 1 ? 10 : 12);
  const dictBytes = enc.encode(dict);
  if (version === 1 && pre(1) + dictBytes.length + 1 > 0xffff) version = 2;
  const pad = (64 - ((pre(version) + dictBytes.length + 1) % 64)) % 64;
  const h = enc.encode(dict + " ".repeat(pad) + "\n");
  const p = pre(version);
  const out = new Uint8Array(p + h.length + body.length);
  out.set([...MAGIC, version, 0], 0);
  const dv = new DataView(out.buffer);
  if (version === 1) dv.setUint16(8, h.length, true);
  else dv.setUint32(8, h.length, true);
  out.set(h, p);
  out.set(body, p + h.length);
  return out;
}

/**
 * A zip of named members, in the given order, stored (no compression, as `np.savez`) or deflated at level 6
 * (`compress: true`, as `np.savez_compressed` with zlib's default), by fflate's `zipSync`. Every header's DOS
 * date and time is 0, as in PyTorch's zips and in he2gene's before fflate, so a stored zip of the same
 * ASCII-named members is the same bytes; a non-ASCII name gets the UTF-8 flag (bit 11), which the old
 * writer left out (Python's `zipfile`, hence numpy, then read the name as cp437). No ZIP64: the zip must
 * stay below 4 GiB and 65535 members.
 *
 * @example
 * ```ts
 * const zip = encodeZip([["a.npy", encodeNpy({ dtype: "u1", shape: [2], data: new Uint8Array([1, 2]) })]]);
 * ```
 */
export function encodeZip(members: [string, Uint8Array][], opts: { compress?: boolean } = {}): Uint8Array {
  // fflate takes the members as an object's keys, which keep their order unless they are array indices.
  const files: Zippable = {};
  for (const [name, data] of members) {
    if (/^(0|[1-9]\d*)$/.test(name) || name === "__proto__") {
      throw new RangeError(
        `Cannot write zip member ${JSON.stringify(name)}: an array index or __proto__ cannot name a member`,
      );
    }
    if (Object.hasOwn(files, name)) {
      throw new RangeError(`Cannot write zip member ${JSON.stringify(name)}: current name is given twice`);
    }
    files[name] = data;
  }
  if (members.length > 0xffff) {
    throw new RangeError(`Cannot write zip: current count is ${members.length} members, more than 65535`);
  }
  // NOTE: fflate writes an invalid Date as DOS date and time 0 (a valid one is at least 1980-01-01, 0x0021).
  const zip = zipSync(files, { level: opts.compress ? 6 : 0, mtime: new Date(NaN) });
  if (zip.length > 0xffffffff) {
    throw new RangeError(`Cannot write zip: current size is ${zip.length} bytes, more than 4 GiB (no ZIP64)`);
  }
  return zip;
}

/**
 * Encode arrays as an NPZ file (`np.load(path)[name]`): stored like `np.savez`, or deflated like
 * `np.savez_compressed` with `compress: true`.
 *
 * @example
 * ```ts
 * const npz = encodeNpz({ tumor: { dtype: "b1", shape: [], data: new Uint8Array([1]) } }, { compress: true });
 * ```
 */
export function encodeNpz(arrays: Record<string, NpyArray>, opts: { compress?: boolean } = {}): Uint8Array {
  return encodeZip(Object.entries(arrays).map(([k, a]) => [`${k}.npy`, encodeNpy(a)]), opts);
}
