/**
 * An AnnData (`.h5ad`) writer and a small reader, through `h5wasm` (HDF5 compiled to WebAssembly; the file
 * is built in h5wasm's in-memory file system, then written atomically).
 *
 * Spec: https://anndata.readthedocs.io/en/latest/fileformat-prose.html — every element carries the
 * attributes `encoding-type` / `encoding-version`:
 * - root `anndata` / `0.1.0`, with `X`, `obs`, `var`, `obsm`, `varm`, `obsp`, `varp`, `layers`, `uns`;
 * - `X`: a dense `array` / `0.2.0` dataset `(n_obs, n_vars)`;
 * - `obs` / `var`: `dataframe` / `0.2.0` groups with attributes `_index` (the name of the index dataset,
 *   here `_index`) and `column-order`; the index is a `string-array` / `0.2.0` of variable-length UTF-8;
 * - numeric columns are `array` / `0.2.0` datasets; categorical columns are `categorical` / `0.2.0` groups
 *   with `categories` (a string array), `codes` (int8, −1 = missing) and the attribute `ordered`;
 * - `obsm`, `layers`, `uns`, …: `dict` / `0.1.0` groups of arrays.
 *
 * Booleans are numpy `bool_` as h5py stores them: an HDF5 enum of int8 with members `FALSE` = 0 and
 * `TRUE` = 1 (anndata reads a boolean column, a categorical's `ordered` and a boolean scalar as `bool`).
 * h5wasm cannot create enum types, so they are written as a one-member compound of int8 whose encoded
 * datatype is exactly as long as the enum's, and that datatype is then rewritten in place in the finished
 * file, with the object header's checksum (see {@linkcode patchBooleans}).
 *
 * `uns` is a tree: nested `dict`s, `string` / `numeric-scalar` scalars, `string-array`s and numeric `array`s
 * of any shape, e.g. scanpy's spatial layout (`uns['spatial'][library_id]['images']['hires']`: an
 * H × W × 3 uint8 image; see {@linkcode spatialUns}); arrays of 64 KiB or more are stored in chunks of
 * 256 × 256 (first two axes) with the gzip filter, as h5py's `compression="gzip"` (level 4).
 *
 * @module
 */
import { writeAtomic } from "./npz.ts";

/** A column of `obs` or `var`. */
export type AnnColumn =
  | Float32Array
  | Float64Array
  | Int32Array
  | { categories: string[]; codes: Int8Array; ordered?: boolean }
  | boolean[]
  | string[];

/** A numeric array of any shape, row-major (an `obsm` matrix, an image in `uns`). */
export interface AnnArray {
  data: Float32Array | Float64Array | Int32Array | Uint8Array;
  shape: number[];
}

/** A numeric matrix `(rows, cols)` row-major, for `obsm`. */
export interface AnnMatrix extends AnnArray {
  data: Float32Array | Float64Array | Int32Array;
  shape: [number, number];
}

/** A value in `uns`: a scalar, a string list, a numeric array, or a nested dict. */
export type UnsValue = string | number | boolean | string[] | AnnArray | { [key: string]: UnsValue };

/** What {@linkcode encodeH5ad} writes. */
export interface AnnData {
  /** `(obsNames.length, varNames.length)`, row-major. */
  X: Float32Array;
  obsNames: string[];
  varNames: string[];
  /** Columns of `obs`, in order; each has one entry per observation. */
  obs?: Record<string, AnnColumn>;
  /** Columns of `var`. */
  var?: Record<string, AnnColumn>;
  /** `obsm` matrices `(n_obs, k)`, e.g. `spatial`. */
  obsm?: Record<string, AnnMatrix>;
  /** The `uns` tree. */
  uns?: Record<string, UnsValue>;
}

// deno-lint-ignore no-explicit-any
type H5 = any;

async function h5(): Promise<{ h5wasm: H5; FS: H5 }> {
  const h5wasm = (await import("h5wasm")).default;
  const { FS } = await h5wasm.ready;
  return { h5wasm, FS };
}

function enc(node: H5, type: string, version: string): void {
  node.create_attribute("encoding-type", type);
  node.create_attribute("encoding-version", version);
}

function strings(group: H5, name: string, values: string[]): void {
  // h5wasm writes string arrays as variable-length UTF-8, as h5py does for anndata.
  const ds = group.create_dataset({ name, data: values, shape: [values.length] });
  enc(ds, "string-array", "0.2.0");
}

function array(group: H5, name: string, data: AnnArray["data"], shape: number[]) {
  const ds = group.create_dataset({ name, data, shape });
  enc(ds, "array", "0.2.0");
}

// ---------------------------------------------------------------------------------------------- booleans

// numpy's bool_ in HDF5 (h5py): an enum of int8 {FALSE: 0, TRUE: 1}. h5wasm cannot create enums, but it
// writes compounds: one int8 member named BOOL_MEMBER (11 characters) makes a datatype message of exactly
// the enum's 33 bytes (datatype version 3, names unpadded), with the same 1-byte elements.
const BOOL_MEMBER = "he2geneBool";
const ascii = (s: string) => Array.from(s, (c) => c.charCodeAt(0));
// Integer, version 1, signed (bit 3), 1 byte, bit offset 0, precision 8.
const INT8_TYPE = [0x10, 0x08, 0, 0, 1, 0, 0, 0, 0, 0, 8, 0];
// Compound, version 3, 1 member, size 1; member: name, NUL, byte offset (1 byte), type.
const BOOL_COMPOUND = Uint8Array.from([0x36, 1, 0, 0, 1, 0, 0, 0, ...ascii(BOOL_MEMBER), 0, 0, ...INT8_TYPE]);
// Enum, version 3, 2 members, size 1; base type, names "FALSE", "TRUE" (NUL-terminated), values 0, 1.
const BOOL_ENUM = Uint8Array.from([0x38, 2, 0, 0, 1, 0, 0, 0, ...INT8_TYPE, ...ascii("FALSE\0TRUE\0"), 0, 1]);

/** Counts the booleans written, to check that {@linkcode patchBooleans} found each of them. */
interface Writer {
  bools: number;
}

function boolData(values: boolean[]): { data: Map<string, number[]>; dtype: [string, string][] } {
  return { data: new Map([[BOOL_MEMBER, values.map((v) => (v ? 1 : 0))]]), dtype: [[BOOL_MEMBER, "<b"]] };
}

function boolArray(w: Writer, group: H5, name: string, values: boolean[], shape: number[]): H5 {
  w.bools++;
  return group.create_dataset({ name, shape, ...boolData(values) });
}

// Bob Jenkins' lookup3 `hashlittle` (initval 0), HDF5's metadata checksum (H5_checksum_lookup3).
function lookup3(k: Uint8Array): number {
  const rot = (x: number, n: number) => ((x << n) | (x >>> (32 - n))) >>> 0;
  const u32 = (i: number) => (k[i] | (k[i + 1] << 8) | (k[i + 2] << 16) | (k[i + 3] << 24)) >>> 0;
  let len = k.length, o = 0;
  let a = (0xdeadbeef + len) >>> 0, b = a, c = a;
  while (len > 12) {
    a = (a + u32(o)) >>> 0, b = (b + u32(o + 4)) >>> 0, c = (c + u32(o + 8)) >>> 0;
    a = ((a - c) ^ rot(c, 4)) >>> 0, c = (c + b) >>> 0;
    b = ((b - a) ^ rot(a, 6)) >>> 0, a = (a + c) >>> 0;
    c = ((c - b) ^ rot(b, 8)) >>> 0, b = (b + a) >>> 0;
    a = ((a - c) ^ rot(c, 16)) >>> 0, c = (c + b) >>> 0;
    b = ((b - a) ^ rot(a, 19)) >>> 0, a = (a + c) >>> 0;
    c = ((c - b) ^ rot(b, 4)) >>> 0, b = (b + a) >>> 0;
    len -= 12, o += 12;
  }
  if (len === 0) return c;
  const t = new Uint8Array(12); // the tail, zero-padded: the same sums as lookup3's fall-through switch
  t.set(k.subarray(o, o + len));
  const w = new DataView(t.buffer);
  a = (a + w.getUint32(0, true)) >>> 0, b = (b + w.getUint32(4, true)) >>> 0;
  c = (c + w.getUint32(8, true)) >>> 0;
  c = ((c ^ b) - rot(b, 14)) >>> 0;
  a = ((a ^ c) - rot(c, 11)) >>> 0;
  b = ((b ^ a) - rot(a, 25)) >>> 0;
  c = ((c ^ b) - rot(b, 16)) >>> 0;
  a = ((a ^ c) - rot(c, 4)) >>> 0;
  b = ((b ^ a) - rot(a, 14)) >>> 0;
  c = ((c ^ b) - rot(b, 24)) >>> 0;
  return c;
}

/** The checksummed chunks `[start, checksumAt)` of the version-2 object header at `s`, or [] if none is. */
function headerChunks(bytes: Uint8Array, s: number, offSize: number, lenSize: number): [number, number][] {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const uint = (p: number, n: number) => {
    let v = 0;
    for (let i = n - 1; i >= 0; i--) v = v * 256 + bytes[p + i];
    return v;
  };
  const ok = (start: number, end: number) =>
    end + 4 <= bytes.length && lookup3(bytes.subarray(start, end)) === dv.getUint32(end, true);
  if (bytes[s + 4] !== 2) return [];
  const flags = bytes[s + 5];
  let p = s + 6 + (flags & 0x20 ? 16 : 0) + (flags & 0x10 ? 4 : 0);
  const sizeBytes = 1 << (flags & 3);
  if (p + sizeBytes > bytes.length) return [];
  const size = uint(p, sizeBytes);
  p += sizeBytes;
  if (!ok(s, p + size)) return [];
  const chunks: [number, number][] = [[s, p + size]];
  // Messages: type (1), size (2), flags (1), creation order (2, when tracked); continuation = type 0x10.
  const head = 4 + (flags & 0x04 ? 2 : 0);
  const walk = (from: number, to: number) => {
    for (let m = from; m + head <= to;) {
      const type = bytes[m], msize = bytes[m + 1] | (bytes[m + 2] << 8);
      if (type === 0x10) {
        const at = uint(m + head, offSize), len = uint(m + head + offSize, lenSize);
        const sig = String.fromCharCode(...bytes.subarray(at, at + 4));
        if (sig === "OCHK" && ok(at, at + len - 4)) {
          chunks.push([at, at + len - 4]);
          walk(at + 4, at + len - 4);
        }
      }
      m += head + msize;
    }
  };
  walk(p, p + size);
  return chunks;
}

/**
 * Rewrite, in an HDF5 file as h5wasm writes it (superblock version 2 or 3, version-2 object headers with
 * checksums), every one-member int8 compound datatype {@linkcode encodeH5ad} used for a boolean as the
 * enum h5py writes for numpy's `bool_`, in place, and update the checksum of each object-header chunk
 * that held one. Returns how many it rewrote. A match that lies in no chunk whose checksum verifies is an
 * error, never a guess.
 *
 * Spec: https://docs.hdfgroup.org/hdf5/develop/_f_m_t3.html (superblock; version 2 object header;
 * datatype message, classes 6 compound and 8 enumeration).
 *
 * @example
 * ```ts
 * const n = patchBooleans(bytes); // bytes: a file whose boolean datasets were written as compounds
 * ```
 */
export function patchBooleans(bytes: Uint8Array): number {
  const matches: number[] = [];
  for (let i = bytes.indexOf(BOOL_COMPOUND[0]); i >= 0; i = bytes.indexOf(BOOL_COMPOUND[0], i + 1)) {
    let j = 1;
    while (j < BOOL_COMPOUND.length && bytes[i + j] === BOOL_COMPOUND[j]) j++;
    if (j === BOOL_COMPOUND.length) matches.push(i);
  }
  if (matches.length === 0) return 0;
  const sig = [0x89, 0x48, 0x44, 0x46, 0x0d, 0x0a, 0x1a, 0x0a];
  if (!sig.every((v, i) => bytes[i] === v) || !(bytes[8] === 2 || bytes[8] === 3)) {
    throw new Error(
      `Cannot write AnnData booleans: expected an HDF5 superblock of version 2 or 3 at byte 0, ` +
        `found version ${bytes[8]}`,
    );
  }
  const [offSize, lenSize] = [bytes[9], bytes[10]];
  const chunks: [number, number][] = [];
  const O = 0x4f; // "OHDR"
  for (let s = bytes.indexOf(O); s >= 0; s = bytes.indexOf(O, s + 1)) {
    if (bytes[s + 1] === 0x48 && bytes[s + 2] === 0x44 && bytes[s + 3] === 0x52) {
      chunks.push(...headerChunks(bytes, s, offSize, lenSize));
    }
  }
  const dirty = new Set<[number, number]>();
  for (const i of matches) {
    const c = chunks.find(([s, e]) => i >= s + 4 && i + BOOL_ENUM.length <= e);
    if (!c) {
      throw new Error(
        `Cannot write AnnData booleans: the datatype at byte ${i} lies in no object header whose checksum ` +
          `verifies`,
      );
    }
    bytes.set(BOOL_ENUM, i);
    dirty.add(c);
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (const [s, e] of dirty) dv.setUint32(e, lookup3(bytes.subarray(s, e)), true);
  return matches.length;
}

// ------------------------------------------------------------------------------------------ the elements

function column(w: Writer, group: H5, name: string, col: AnnColumn, n: number, what: string): void {
  const len = "codes" in col ? col.codes.length : col.length;
  if (len !== n) {
    throw new RangeError(`Cannot write AnnData: ${what} column "${name}" has ${len} values, expected ${n}`);
  }
  if (Array.isArray(col)) {
    if (col.every((v) => typeof v === "boolean")) {
      return enc(boolArray(w, group, name, col as boolean[], [n]), "array", "0.2.0");
    }
    return strings(group, name, col.map(String));
  }
  if (ArrayBuffer.isView(col)) return array(group, name, col, [n]);
  const c = col as { categories: string[]; codes: Int8Array; ordered?: boolean };
  const g = group.create_group(name);
  enc(g, "categorical", "0.2.0");
  w.bools++;
  const b = boolData([c.ordered ?? false]);
  g.create_attribute("ordered", b.data, [], b.dtype); // a numpy bool_ once patched
  strings(g, "categories", c.categories);
  g.create_dataset({ name: "codes", data: c.codes, shape: [n] });
  enc(g.get("codes"), "array", "0.2.0");
}

function dataframe(
  w: Writer,
  parent: H5,
  name: string,
  index: string[],
  cols: Record<string, AnnColumn>,
  what: string,
) {
  const g = parent.create_group(name);
  enc(g, "dataframe", "0.2.0");
  g.create_attribute("_index", "_index");
  const order = Object.keys(cols);
  if (order.includes("_index")) throw new RangeError(`Cannot write AnnData: ${what} has a column "_index"`);
  // An empty column-order is an empty float64 array, as h5py writes `[]`.
  if (order.length) g.create_attribute("column-order", order, [order.length]);
  else g.create_attribute("column-order", new Float64Array(0), [0]);
  strings(g, "_index", index);
  for (const k of order) column(w, g, k, cols[k], index.length, what);
}

function dict(parent: H5, name: string): H5 {
  const g = parent.create_group(name);
  enc(g, "dict", "0.1.0");
  return g;
}

function isArray(v: UnsValue): v is AnnArray {
  return typeof v === "object" && !Array.isArray(v) && ArrayBuffer.isView((v as AnnArray).data) &&
    Array.isArray((v as AnnArray).shape);
}

function unsValue(w: Writer, parent: H5, k: string, v: UnsValue, path: string): void {
  if (typeof v === "number") {
    enc(
      parent.create_dataset({ name: k, data: new Float64Array([v]), shape: [] }),
      "numeric-scalar",
      "0.2.0",
    );
  } else if (typeof v === "boolean") {
    enc(boolArray(w, parent, k, [v], []), "numeric-scalar", "0.2.0");
  } else if (typeof v === "string") {
    enc(parent.create_dataset({ name: k, data: v, shape: [] }), "string", "0.2.0");
  } else if (Array.isArray(v)) strings(parent, k, v);
  else if (isArray(v)) {
    const n = v.shape.reduce((a, b) => a * b, 1);
    if (v.data.length !== n) {
      throw new RangeError(
        `Cannot write AnnData: uns ${path} has shape [${v.shape}] (${n} values) but ${v.data.length} values`,
      );
    }
    // Images are most of a spatial file: deflated in 256 × 256 chunks (h5py's gzip filter, level 4).
    const big = v.data.byteLength >= 1 << 16 && v.shape.length >= 2;
    const ds = parent.create_dataset({
      name: k,
      data: v.data,
      shape: v.shape,
      ...(big ? { chunks: v.shape.map((d, i) => (i < 2 ? Math.min(d, 256) : d)), compression: "gzip" } : {}),
    });
    enc(ds, "array", "0.2.0");
  } else {
    const g = dict(parent, k);
    for (const [kk, vv] of Object.entries(v)) unsValue(w, g, kk, vv, `${path}/${kk}`);
  }
}

/**
 * Encode an AnnData file in memory (see the module doc for the layout).
 *
 * @example
 * ```ts
 * const bytes = await encodeH5ad({
 *   X: new Float32Array([1, 2, 3, 4]), obsNames: ["s_1_1", "s_1_2"], varNames: ["FASN", "ERBB2"],
 *   obs: { tumor_prob: new Float32Array([0.2, 0.9]), tumor: [false, true] },
 *   obsm: { spatial: { data: new Float64Array([10, 20, 10, 120]), shape: [2, 2] } },
 *   uns: { model: "model_base.pt", spatial: { C2: { scalefactors: { tissue_hires_scalef: 0.2 } } } },
 * });
 * ```
 */
export async function encodeH5ad(a: AnnData): Promise<Uint8Array> {
  const nObs = a.obsNames.length, nVar = a.varNames.length;
  if (a.X.length !== nObs * nVar) {
    throw new RangeError(
      `Cannot write AnnData: X has ${a.X.length} values, expected ${nObs} × ${nVar} = ${nObs * nVar}`,
    );
  }
  for (const [k, m] of Object.entries(a.obsm ?? {})) {
    if (m.shape[0] !== nObs || m.data.length !== m.shape[0] * m.shape[1]) {
      throw new RangeError(
        `Cannot write AnnData: obsm "${k}" has shape [${m.shape}] and ${m.data.length} values, ` +
          `expected [${nObs}, k]`,
      );
    }
  }
  const { h5wasm, FS } = await h5();
  const tmp = `/he2gene-${crypto.randomUUID()}.h5ad`;
  const f = new h5wasm.File(tmp, "w");
  const w: Writer = { bools: 0 };
  try {
    enc(f, "anndata", "0.1.0");
    array(f, "X", a.X, [nObs, nVar]);
    dataframe(w, f, "obs", a.obsNames, a.obs ?? {}, "obs");
    dataframe(w, f, "var", a.varNames, a.var ?? {}, "var");
    const obsm = dict(f, "obsm");
    for (const [k, m] of Object.entries(a.obsm ?? {})) array(obsm, k, m.data, m.shape);
    for (const k of ["varm", "obsp", "varp", "layers"]) dict(f, k);
    const uns = dict(f, "uns");
    for (const [k, v] of Object.entries(a.uns ?? {})) unsValue(w, uns, k, v, k);
    f.flush();
    f.close();
    const bytes = FS.readFile(tmp) as Uint8Array;
    const n = patchBooleans(bytes);
    if (n !== w.bools) {
      throw new Error(`Cannot write AnnData: ${w.bools} booleans were written but ${n} found to patch`);
    }
    return bytes;
  } catch (e) {
    try {
      f.close();
    } catch { /* already closed */ }
    throw e;
  } finally {
    try {
      FS.unlink(tmp);
    } catch { /* never created */ }
  }
}

/**
 * Write an AnnData file atomically (temporary name, then rename).
 *
 * @example
 * ```ts
 * await writeH5ad("out/predictions.h5ad", { X, obsNames, varNames });
 * ```
 */
export async function writeH5ad(path: string, a: AnnData): Promise<void> {
  const bytes = await encodeH5ad(a);
  try {
    await writeAtomic(path, bytes);
  } catch (e) {
    throw new Error(`Cannot write ${path}: ${(e as Error).message}`);
  }
}

/** An RGB image, row-major H × W × 3. */
export interface SpatialImage {
  width: number;
  height: number;
  data: Uint8Array;
}

/** One library of scanpy's spatial layout, see {@linkcode spatialUns}. */
export interface SpatialLibrary {
  /** The slide at about 2000 px on its long side (Space Ranger's `tissue_hires_image.png`). */
  hires: SpatialImage;
  /** The slide at about 600 px (`tissue_lowres_image.png`). */
  lowres: SpatialImage;
  /** Image pixels per level-0 pixel of each. */
  hiresScale: number;
  lowresScale: number;
  /** The spot's (patch's or tile's) diameter in level-0 pixels. */
  spotDiameter: number;
  /** Strings for `metadata` (scanpy's read_visium keeps `software_version`, `chemistry_description`). */
  metadata?: Record<string, string>;
}

/**
 * `uns['spatial']` as `scanpy.read_visium` writes it, so that `sc.pl.spatial(adata, color="ERBB2")` and
 * squidpy's `spatial_scatter` draw `obsm['spatial']` (level-0 pixels) on the slide: `{library_id: {images:
 * {hires, lowres} (uint8 H × W × 3), scalefactors: {tissue_hires_scalef, tissue_lowres_scalef,
 * spot_diameter_fullres, fiducial_diameter_fullres}, metadata}}`. A slide has no fiducial frame: its
 * diameter is the spot's.
 *
 * @example
 * ```ts
 * const white = (width: number, height: number) =>
 *   ({ width, height, data: new Uint8Array(width * height * 3).fill(255) });
 * const uns = {
 *   spatial: spatialUns("C2", {
 *     hires: white(200, 100), lowres: white(60, 30), hiresScale: 0.1, lowresScale: 0.03, spotDiameter: 150,
 *   }),
 * };
 * ```
 */
export function spatialUns(libraryId: string, lib: SpatialLibrary): Record<string, UnsValue> {
  const image = (im: SpatialImage): AnnArray => {
    if (im.data.length !== im.width * im.height * 3) {
      throw new RangeError(
        `Cannot write AnnData: a ${im.width} × ${im.height} RGB image has ${im.data.length} values`,
      );
    }
    return { data: im.data, shape: [im.height, im.width, 3] };
  };
  return {
    [libraryId]: {
      images: { hires: image(lib.hires), lowres: image(lib.lowres) },
      scalefactors: {
        tissue_hires_scalef: lib.hiresScale,
        tissue_lowres_scalef: lib.lowresScale,
        spot_diameter_fullres: lib.spotDiameter,
        fiducial_diameter_fullres: lib.spotDiameter,
      },
      metadata: lib.metadata ?? {},
    },
  };
}

/**
 * What {@linkcode readH5ad} returns: X, the two indices, numeric / boolean / string / categorical `obs`
 * columns, `obsm`, and the `uns` tree.
 */
export interface AnnDataRead {
  X: Float32Array;
  shape: [number, number];
  obsNames: string[];
  varNames: string[];
  obs: Record<string, Float64Array | boolean[] | string[]>;
  obsm: Record<string, AnnMatrix>;
  /** Numeric scalars as numbers, numpy booleans as booleans, arrays as {@linkcode AnnArray}. */
  uns: Record<string, UnsValue>;
  /** Root attributes `encoding-type`, `encoding-version`. */
  encoding: [string, string];
}

/**
 * Read the dense parts of an AnnData file written by {@linkcode writeH5ad} (or anndata with a dense X):
 * string and categorical `obs` columns come back as strings (a missing category as ""), boolean ones
 * (numpy `bool_`, an HDF5 enum FALSE / TRUE) as booleans.
 *
 * @example
 * ```ts
 * const { X, shape, obsNames } = await readH5ad("out/predictions.h5ad");
 * ```
 */
export async function readH5ad(path: string): Promise<AnnDataRead> {
  const { h5wasm, FS } = await h5();
  const tmp = `/he2gene-${crypto.randomUUID()}.h5ad`;
  FS.writeFile(tmp, await Deno.readFile(path));
  const f = new h5wasm.File(tmp, "r");
  const fail = (what: string) => new Error(`Cannot read AnnData ${path}: ${what}`);
  try {
    const get = (p: string): H5 => {
      const n = f.get(p);
      if (!n) throw fail(`expected /${p}, found none`);
      return n;
    };
    const attr = (n: H5, k: string): string => String(n.attrs[k]?.value ?? "");
    const xs = get("X");
    if (attr(xs, "encoding-type") !== "array") {
      throw fail(`X is ${attr(xs, "encoding-type") || "untyped"}; only dense arrays are read`);
    }
    const shape = xs.shape.map(Number) as [number, number];
    const X = Float32Array.from(xs.value as ArrayLike<number>);
    const index = (df: string): string[] => {
      const g = get(df);
      const k = attr(g, "_index") || "_index";
      return [...get(`${df}/${k}`).value].map(String);
    };
    const isBool = (d: H5) => {
      const m = d.metadata?.enum_type?.members;
      return m && Object.keys(m).length === 2 && m.FALSE === 0 && m.TRUE === 1;
    };
    const unsTree = (g: H5): Record<string, UnsValue> => {
      const out: Record<string, UnsValue> = {};
      for (const k of g.keys()) {
        const d = g.get(k);
        const type = attr(d, "encoding-type");
        if (d.type === "Group") out[k] = unsTree(d);
        else if (type === "string") out[k] = String(d.value);
        else if (type === "string-array") out[k] = [...d.value].map(String);
        else if (type === "numeric-scalar") out[k] = isBool(d) ? Boolean(d.value) : Number(d.value);
        else out[k] = { data: d.value, shape: d.shape.map(Number) };
      }
      return out;
    };
    const obs: AnnDataRead["obs"] = {};
    const og = get("obs");
    const order = og.attrs["column-order"]?.value;
    for (const k of order && typeof order !== "number" ? [...order].map(String) : []) {
      const c = get(`obs/${k}`);
      if (attr(c, "encoding-type") === "categorical") {
        const cats = [...get(`obs/${k}/categories`).value].map(String);
        const codes = get(`obs/${k}/codes`).value as ArrayLike<number>;
        obs[k] = Array.from(codes, (i) => (i < 0 ? "" : cats[i]));
      } else if (attr(c, "encoding-type") === "string-array") obs[k] = [...c.value].map(String);
      else if (isBool(c)) obs[k] = Array.from(c.value as ArrayLike<number>, Boolean);
      else obs[k] = Float64Array.from(c.value as ArrayLike<number>, Number);
    }
    const obsm: Record<string, AnnMatrix> = {};
    const mg = f.get("obsm");
    for (const k of mg ? mg.keys() : []) {
      const d = get(`obsm/${k}`);
      obsm[k] = { data: Float64Array.from(d.value as ArrayLike<number>, Number), shape: d.shape.map(Number) };
    }
    return {
      X,
      shape,
      obsNames: index("obs"),
      varNames: index("var"),
      obs,
      obsm,
      uns: f.get("uns") ? unsTree(get("uns")) : {},
      encoding: [attr(f, "encoding-type"), attr(f, "encoding-version")],
    };
  } finally {
    f.close();
    FS.unlink(tmp);
  }
}
