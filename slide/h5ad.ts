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
 * Booleans: h5py stores numpy bools as an HDF5 enum, which h5wasm cannot write, so a boolean column is a
 * `string-array` of `True` / `False` (scanpy's `strings_to_categoricals` turns it into a categorical). A
 * categorical column's `ordered` attribute is int8 for the same reason; anndata ≥ 0.9 reads it with
 * `bool(…)`, anndata 0.8 refuses it, so prefer string columns where 0.8 must read the file.
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

/** A numeric matrix `(rows, cols)` row-major, for `obsm`. */
export interface AnnMatrix {
  data: Float32Array | Float64Array | Int32Array;
  shape: [number, number];
}

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
  /** Scalar strings or numbers in `uns`. */
  uns?: Record<string, string | number>;
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

function array(group: H5, name: string, data: Float32Array | Float64Array | Int32Array, shape: number[]) {
  const ds = group.create_dataset({ name, data, shape });
  enc(ds, "array", "0.2.0");
}

function column(group: H5, name: string, col: AnnColumn, n: number, what: string): void {
  const len = "codes" in col ? col.codes.length : col.length;
  if (len !== n) {
    throw new RangeError(`Cannot write AnnData: ${what} column "${name}" has ${len} values, expected ${n}`);
  }
  if (Array.isArray(col)) {
    return strings(group, name, col.map((v) => (typeof v === "boolean" ? (v ? "True" : "False") : v)));
  }
  if (ArrayBuffer.isView(col)) return array(group, name, col, [n]);
  const c = col as { categories: string[]; codes: Int8Array; ordered?: boolean };
  const g = group.create_group(name);
  enc(g, "categorical", "0.2.0");
  g.create_attribute("ordered", c.ordered ? 1 : 0, null, "<b"); // numpy bool_ as int8; read as bool()
  strings(g, "categories", c.categories);
  g.create_dataset({ name: "codes", data: c.codes, shape: [n] });
  enc(g.get("codes"), "array", "0.2.0");
}

function dataframe(parent: H5, name: string, index: string[], cols: Record<string, AnnColumn>, what: string) {
  const g = parent.create_group(name);
  enc(g, "dataframe", "0.2.0");
  g.create_attribute("_index", "_index");
  const order = Object.keys(cols);
  if (order.includes("_index")) throw new RangeError(`Cannot write AnnData: ${what} has a column "_index"`);
  // An empty column-order is an empty float64 array, as h5py writes `[]`.
  if (order.length) g.create_attribute("column-order", order, [order.length]);
  else g.create_attribute("column-order", new Float64Array(0), [0]);
  strings(g, "_index", index);
  for (const k of order) column(g, k, cols[k], index.length, what);
}

function dict(parent: H5, name: string): H5 {
  const g = parent.create_group(name);
  enc(g, "dict", "0.1.0");
  return g;
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
  try {
    enc(f, "anndata", "0.1.0");
    array(f, "X", a.X, [nObs, nVar]);
    dataframe(f, "obs", a.obsNames, a.obs ?? {}, "obs");
    dataframe(f, "var", a.varNames, a.var ?? {}, "var");
    const obsm = dict(f, "obsm");
    for (const [k, m] of Object.entries(a.obsm ?? {})) array(obsm, k, m.data, m.shape);
    for (const k of ["varm", "obsp", "varp", "layers"]) dict(f, k);
    const uns = dict(f, "uns");
    for (const [k, v] of Object.entries(a.uns ?? {})) {
      // Scalars: `numeric-scalar` / `string` 0.2.0.
      if (typeof v === "number") {
        const ds = uns.create_dataset({ name: k, data: new Float64Array([v]), shape: [] });
        enc(ds, "numeric-scalar", "0.2.0");
      } else {
        const ds = uns.create_dataset({ name: k, data: v, shape: [] });
        enc(ds, "string", "0.2.0");
      }
    }
    f.flush();
    f.close();
    return FS.readFile(tmp) as Uint8Array;
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

/** What {@linkcode readH5ad} returns: X, the two indices, numeric / string / categorical `obs` columns, `obsm`. */
export interface AnnDataRead {
  X: Float32Array;
  shape: [number, number];
  obsNames: string[];
  varNames: string[];
  obs: Record<string, Float64Array | string[]>;
  obsm: Record<string, AnnMatrix>;
  /** Root attributes `encoding-type`, `encoding-version`. */
  encoding: [string, string];
}

/**
 * Read the dense parts of an AnnData file written by {@linkcode writeH5ad} (or anndata with a dense X):
 * string and categorical `obs` columns come back as strings (a missing category as "").
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
    const obs: Record<string, Float64Array | string[]> = {};
    const og = get("obs");
    const order = og.attrs["column-order"]?.value;
    for (const k of order && typeof order !== "number" ? [...order].map(String) : []) {
      const c = get(`obs/${k}`);
      if (attr(c, "encoding-type") === "categorical") {
        const cats = [...get(`obs/${k}/categories`).value].map(String);
        const codes = get(`obs/${k}/codes`).value as ArrayLike<number>;
        obs[k] = Array.from(codes, (i) => (i < 0 ? "" : cats[i]));
      } else if (attr(c, "encoding-type") === "string-array") obs[k] = [...c.value].map(String);
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
      encoding: [attr(f, "encoding-type"), attr(f, "encoding-version")],
    };
  } finally {
    f.close();
    FS.unlink(tmp);
  }
}
