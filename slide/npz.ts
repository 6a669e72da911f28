/**
 * The CSV tables of HE2Gene's outputs and atomic writes (temporary name, then rename), so a failure never
 * leaves a partial file. The NPY / NPZ writers live in `npy.ts` (re-exported here).
 *
 * @module
 */
import { basename, dirname, isAbsolute, resolve } from "node:path";

export { encodeNpy, encodeNpz, encodeZip, type NpyArray } from "./npy.ts";

/**
 * Write `data` to `path` atomically: a temporary file in the same folder, then a rename.
 *
 * @example
 * ```ts
 * await writeAtomic("out/predictions.npz", encodeNpz({ target: { dtype: "f4", shape: [1, 2], data } }));
 * ```
 */
export async function writeAtomic(path: string, data: Uint8Array | string): Promise<void> {
  const tmp = `${path}.tmp-${Deno.pid}-${Math.random().toString(36).slice(2, 8)}`;
  try {
    if (typeof data === "string") await Deno.writeTextFile(tmp, data);
    else await Deno.writeFile(tmp, data);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

/**
 * Make `dir` and any missing parents; returns the folders this call created, outermost first (empty when
 * `dir` existed), so that a failed run can remove them again with {@linkcode removeCreatedDirs}.
 */
export async function makeDirs(dir: string): Promise<string[]> {
  const missing: string[] = [];
  for (let d = resolve(dir);; d = dirname(d)) {
    try {
      await Deno.lstat(d);
      break;
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) break;
      missing.unshift(d);
      if (dirname(d) === d) break;
    }
  }
  await Deno.mkdir(dir, { recursive: true });
  return missing;
}

/** Remove the folders {@linkcode makeDirs} created, innermost first, each only if it is empty. */
export async function removeCreatedDirs(created: string[]): Promise<void> {
  for (const d of [...created].reverse()) {
    try {
      await Deno.remove(d);
    } catch {
      return; // not empty (or gone): keep it and its parents
    }
  }
}

/**
 * Rename each `[from, to]` pair, replacing files of the same name, all or nothing: a `to` that is a folder
 * is an error; on a failure every rename done is undone (the replaced files are restored). Replaced files
 * are parked at `park(to)` (same file system) meanwhile, and deleted once every rename succeeded.
 */
export async function renameAll(moves: [string, string][], park: (to: string) => string): Promise<void> {
  const done: { from: string; to: string; parked: string | null; moved: boolean }[] = [];
  try {
    for (const [from, to] of moves) {
      let parked: string | null = null;
      try {
        const st = await Deno.lstat(to);
        if (st.isDirectory) throw new Error(`${to} is a folder`);
        parked = park(to);
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
      }
      const step = { from, to, parked, moved: false };
      if (parked) await Deno.rename(to, parked);
      done.push(step);
      await Deno.rename(from, to);
      step.moved = true;
    }
  } catch (e) {
    for (const step of done.reverse()) {
      if (step.moved) await Deno.rename(step.to, step.from).catch(() => {});
      if (step.parked) await Deno.rename(step.parked, step.to).catch(() => {});
    }
    throw e;
  }
  for (const { parked } of done) if (parked) await Deno.remove(parked).catch(() => {});
}

/**
 * Write several files into `dir` as one output: each under a temporary name, then all renamed once every
 * one was written (all or nothing, see {@linkcode renameAll}). On a failure (a full disk, say) the
 * temporary files, partial ones included, are removed, and so are the folders this call created; the error
 * names the folder; files of an earlier run are left as they were. `signal` (e.g. Ctrl-C) is checked
 * between files and before the renames: once it is aborted, nothing is renamed and its reason is thrown.
 * A name that is an absolute path is written there instead (its folder made if missing), staged and
 * renamed with the others.
 */
export async function writeFilesAtomic(
  dir: string,
  files: [string, string | Uint8Array][],
  o: { signal?: AbortSignal } = {},
): Promise<void> {
  const staged: [string, string][] = [];
  let created: string[] = [];
  try {
    created = await makeDirs(dir);
    for (const [name, data] of files) {
      o.signal?.throwIfAborted();
      const elsewhere = isAbsolute(name);
      if (elsewhere) created.push(...await makeDirs(dirname(name)));
      const tmp = elsewhere
        ? `${dirname(name)}/.${basename(name)}.tmp-${Deno.pid}`
        : `${dir}/.${name}.tmp-${Deno.pid}`;
      staged.push([tmp, elsewhere ? name : `${dir}/${name}`]);
      if (typeof data === "string") await Deno.writeTextFile(tmp, data);
      else await Deno.writeFile(tmp, data);
    }
    o.signal?.throwIfAborted();
    await renameAll(staged, (to) => `${dirname(to)}/.${basename(to)}.old-${Deno.pid}`);
  } catch (e) {
    for (const [tmp] of staged) await Deno.remove(tmp).catch(() => {});
    await removeCreatedDirs(created);
    if (o.signal?.aborted && e === o.signal.reason) throw e;
    throw new Error(`Cannot write the outputs in ${dir}: ${(e as Error).message}`);
  }
}

/**
 * Check, before any long work, that `dir` can be made (if missing) and written: an error names the folder.
 * It leaves the file system as it was — the folders it made for the check are removed again (the writer,
 * {@linkcode writeFilesAtomic}, makes them when it writes), so a run that fails later leaves no empty
 * output folder behind.
 */
export async function prepareOutputDir(dir: string): Promise<void> {
  let created: string[] = [];
  try {
    created = await makeDirs(dir);
    if (!(await Deno.stat(dir)).isDirectory) throw new Error("it is not a folder");
    const probe = `${dir}/.he2gene-write-test-${Deno.pid}`;
    await Deno.writeTextFile(probe, "");
    await Deno.remove(probe);
  } catch (e) {
    throw new Error(`Cannot write to the output folder ${dir}: ${(e as Error).message}`);
  } finally {
    await removeCreatedDirs(created);
  }
}

/**
 * A float32 as numpy's `str()` (and so pandas' `to_csv`) writes it: the shortest decimal that reads back
 * as the same float32; positional for 1e-4 ≤ |v| < 1e16 with at least one fractional digit (`2.0`), else
 * scientific with a two-digit exponent (`1e-05`, `-3.2e-06`); NaN as the empty cell pandas writes.
 */
export function fmtFloat32(v: number): string {
  if (Number.isNaN(v)) return "";
  if (!Number.isFinite(v)) return v > 0 ? "inf" : "-inf";
  if (v === 0) return Object.is(v, -0) ? "-0.0" : "0.0";
  // Fewest significant digits that round-trip (monotone in the count). Most float32 values need 7 or 8:
  // try 7, then 6 or 8; 9 always suffices.
  const a = Math.abs(v);
  const at = (p: number) => {
    const s = a.toExponential(p - 1);
    return Math.fround(Number(s)) === a ? s : "";
  };
  let lo: number, best: string;
  const s7 = at(7);
  if (s7) {
    [lo, best] = [7, s7];
    for (let p = 6; p >= 1; p--) {
      const s = at(p);
      if (!s) break;
      [lo, best] = [p, s];
    }
  } else {
    const s8 = at(8);
    [lo, best] = s8 ? [8, s8] : [9, a.toExponential(8)];
  }
  const ep = best.indexOf("e");
  let digits = ep > 1 ? best[0] + best.slice(2, ep) : best[0];
  const e = Number(best.slice(ep + 1));
  // toExponential rounds a tie away from zero, numpy's Dragon4 to even. A tie (an exact value of lo + 1
  // digits ending in 5) rounded up from an even digit ends odd: only then look at the exact expansion.
  if (digits.charCodeAt(lo - 1) & 1 && a.toExponential(lo).charCodeAt(lo + 1) === 53 /* "5" */) {
    const full = a.toExponential(100);
    const d = full[0] + full.slice(2, full.indexOf("e"));
    if (d[lo] === "5" && /^0*$/.test(d.slice(lo + 1)) && Number(d[lo - 1]) % 2 === 0) {
      digits = d.slice(0, lo); // the even digit, truncated (the exponent is unchanged)
    }
  }
  const sign = v < 0 ? "-" : "";
  if (a >= 1e-4 && a < 1e16) {
    if (e < 0) return `${sign}0.${"0".repeat(-e - 1)}${digits}`;
    if (digits.length <= e + 1) return `${sign}${digits.padEnd(e + 1, "0")}.0`;
    return `${sign}${digits.slice(0, e + 1)}.${digits.slice(e + 1)}`;
  }
  const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
  return `${sign}${m}e${e < 0 ? "-" : "+"}${String(Math.abs(e)).padStart(2, "0")}`;
}

function csvField(s: string): string {
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

/**
 * A CSV table as pandas' `DataFrame.to_csv` writes it, built a batch of rows at a time (so formatting can
 * run while the GPU works on the next batch): an empty first header cell, the index in the first column,
 * float32 values as numpy's `str()`, booleans as `True` / `False`.
 */
export class CsvBuilder {
  readonly #parts: string[];
  readonly #width: number;

  constructor(columns: string[]) {
    this.#parts = ["," + columns.map(csvField).join(",") + "\n"];
    this.#width = columns.length;
  }

  /** Append one row per `index` entry; `values` holds `index.length × columns` values, row-major. */
  add(index: string[], values: ArrayLike<number> | boolean[]): this {
    const w = this.#width;
    if (values.length !== index.length * w) {
      throw new RangeError(`CSV rows: ${values.length} values for ${index.length} rows of ${w} columns`);
    }
    const row: string[] = new Array(w + 1);
    index.forEach((name, i) => {
      row[0] = csvField(name);
      for (let j = 0; j < w; j++) {
        const v = values[i * w + j];
        row[j + 1] = typeof v === "boolean" ? (v ? "True" : "False") : fmtFloat32(v);
      }
      this.#parts.push(row.join(",") + "\n");
    });
    return this;
  }

  /** The whole table. */
  text(): string {
    return this.#parts.join("");
  }
}

/** A whole CSV table at once (see {@linkcode CsvBuilder}). */
export function csvTable(index: string[], columns: string[], values: Float32Array | boolean[]): string {
  return new CsvBuilder(columns).add(index, values).text();
}
