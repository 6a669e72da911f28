/**
 * HBCIS (human breast cancer in situ capturing, He et al. 2020) as prepared by ST-Net: one NPZ per spot at
 * `{subtype}/{patient}/{section}_{x}_{y}.npz` holding `count` (all genes), `tumor`, `pixel` ([x, y] in the
 * slide), `index` ([x, y] on the array), `patient` and `section`; the slide of a section is
 * `{subtype}/{patient}/{patient}_{section}_wsi.tif` (or `{patient}_{section}.tif`). Gene names come from
 * the `genes` option (a list, or a text file with one gene a line, or an `.npy` of strings), else from
 * `all_genes.txt` / `genes.txt` in the root.
 *
 * @module
 */
import { join } from "node:path";
import { decodeNpz, NpyError, toNumbers } from "../npy.ts";
import {
  DatasetError,
  type DatasetWarning,
  describeDuplicates,
  duplicates,
  exists,
  readText,
  type Section,
  type SpatialDataset,
  type Spot,
} from "./types.ts";
import { readNpy } from "../npy.ts";

/** Options of {@linkcode readHbcis}. */
export interface HbcisOptions {
  /** Gene names: a list, or a path to a text file (one a line) or an `.npy` of strings. */
  genes?: string[] | string;
  /** Only these patients (folder names). */
  patients?: string[];
}

/**
 * Read an ST-Net-prepared HBCIS folder. Sections are keyed `{patient}_{section}`.
 *
 * @example
 * ```ts ignore
 * const ds = await readHbcis("data/hist2tscript", { genes: "data/all_genes.txt" });
 * console.log(ds.sections.map((s) => [s.id, s.spots.length]));
 * ```
 */
export async function readHbcis(root: string, opts: HbcisOptions = {}): Promise<SpatialDataset> {
  if (!(await exists(root))) throw new DatasetError(root, "expected an HBCIS folder, found none");
  const genes = await readGenes(root, opts.genes);
  const warnings: DatasetWarning[] = [];
  const sections = new Map<string, Section>();
  /** `section/x/y` → the file that gave the spot (two files for one spot are refused). */
  const spotFile = new Map<string, string>();
  let invalid = 0, firstInvalid = "";
  const files: [string, string, string][] = []; // subtype, patient, file
  for (const subtype of await dirs(root)) {
    for (const patient of await dirs(join(root, subtype))) {
      if (opts.patients && !opts.patients.includes(patient)) continue;
      for await (const e of Deno.readDir(join(root, subtype, patient))) {
        if (e.isFile && e.name.endsWith(".npz")) files.push([subtype, patient, e.name]);
      }
    }
  }
  if (files.length === 0) {
    throw new DatasetError(root, "expected spot files {subtype}/{patient}/{section}_{x}_{y}.npz, found none");
  }
  files.sort((a, b) => a.join("/").localeCompare(b.join("/")));
  for (const [subtype, patient, name] of files) {
    const file = join(root, subtype, patient, name);
    const m = /^(.+)_(-?\d+)_(-?\d+)\.npz$/.exec(name);
    if (!m) throw new DatasetError(file, "expected a file name {section}_{x}_{y}.npz");
    const section = m[1];
    const z = decodeNpz(await Deno.readFile(file), file);
    for (const k of ["count", "pixel", "index"]) {
      if (!z[k]) {
        throw new DatasetError(file, `expected an array "${k}" in the npz, found [${Object.keys(z)}]`);
      }
    }
    const count = toNumbers(z.count, `${file}/count`);
    if (count.length !== genes.length) {
      throw new NpyError(
        `${file}/count.npy`,
        -1,
        `expected ${genes.length} counts (one per gene), found ${count.length}`,
      );
    }
    const counts = new Float32Array(count.length);
    for (let i = 0; i < count.length; i++) {
      if (count[i] >= 0) counts[i] = count[i];
      else if (invalid++ === 0) firstInvalid = `${file}, gene ${genes[i]}: ${count[i]}`;
    }
    const pixel = toNumbers(z.pixel, `${file}/pixel`), index = toNumbers(z.index, `${file}/index`);
    if (pixel.length !== 2 || index.length !== 2) {
      throw new DatasetError(
        file,
        `expected pixel and index of 2 values, found ${pixel.length} and ${index.length}`,
      );
    }
    if (index[0] !== Number(m[2]) || index[1] !== Number(m[3])) {
      warnings.push({
        code: "index-mismatch",
        section: `${patient}_${section}`,
        count: 1,
        message: `${file}: index [${index}] differs from the name's ${m[2]}_${m[3]}; the index is used`,
      });
    }
    for (const [k, want] of [["patient", patient], ["section", section]]) {
      const a = z[k];
      if (a?.dtype === "U" && a.data[0] !== want) {
        throw new DatasetError(file, `expected ${k} "${want}" (from the path), found "${a.data[0]}"`);
      }
    }
    const id = `${patient}_${section}`;
    let s = sections.get(id);
    if (!s) {
      const dir = join(root, subtype, patient);
      const candidates = [join(dir, `${patient}_${section}_wsi.tif`), join(dir, `${patient}_${section}.tif`)];
      let slidePath = "";
      for (const c of candidates) if (!slidePath && await exists(c)) slidePath = c;
      if (!slidePath) throw new DatasetError(candidates[0], `expected the slide of ${id}, found none`);
      s = { id, slidePath, spots: [], grid: "square", labelSource: z.tumor ? "npz" : "none", imageScale: 1 };
      sections.set(id, s);
    }
    const key = `${id}/${index[0]}x${index[1]}`;
    const first = spotFile.get(key);
    if (first !== undefined) {
      throw new DatasetError(
        file,
        `expected one file per spot, found spot ${index[0]}x${index[1]} of section ${id} also in ${first}`,
      );
    }
    spotFile.set(key, file);
    const spot: Spot = {
      id: `${index[0]}x${index[1]}`,
      section: id,
      pixel: [pixel[0], pixel[1]],
      array: [index[0], index[1]],
      counts,
    };
    if (z.tumor) spot.tumor = toNumbers(z.tumor)[0] !== 0;
    s.spots.push(spot);
  }
  if (invalid > 0) {
    warnings.push({
      code: "invalid-counts",
      count: invalid,
      message: `${invalid} NaN or negative counts replaced with 0, first at ${firstInvalid}`,
    });
  }
  return { name: "hbcis", sections: [...sections.values()], genes, warnings };
}

async function dirs(path: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(path)) if (e.isDirectory) out.push(e.name);
  return out.sort();
}

/** Gene names from a list, a text file (one a line) or an `.npy` of strings. */
export async function readGenes(root: string, genes?: string[] | string): Promise<string[]> {
  // `where[i]`: how to point at name i (a line number, an index).
  const unique = (names: string[], source: string, where: (i: number) => string) => {
    const dups = duplicates(names);
    if (dups.length > 0) {
      throw new DatasetError(
        source,
        `expected each gene once (one count column each), found ${dups.length} gene name(s) more than once: ${
          describeDuplicates(dups, (p) => p.map(where).join(", "))
        }`,
      );
    }
    return names;
  };
  if (Array.isArray(genes)) return unique(genes, "the genes option", (i) => `index ${i}`);
  let file = genes;
  if (file === undefined) {
    for (const n of ["all_genes.txt", "genes.txt"]) {
      if (!file && await exists(join(root, n))) file = join(root, n);
    }
  }
  if (!file) {
    throw new DatasetError(root, "expected gene names: pass { genes } or put all_genes.txt in the folder");
  }
  if (file.endsWith(".npy")) {
    const a = await readNpy(file);
    if (a.dtype !== "U") throw new NpyError(file, -1, `expected an array of strings (<U), found ${a.dtype}`);
    return unique(a.data, file, (i) => `index ${i}`);
  }
  const lines = (await readText(file)).split(/\r?\n/).map((l, i) => [l.trim(), i + 1] as const)
    .filter(([l]) => l !== "");
  return unique(lines.map(([l]) => l), file, (i) => `line ${lines[i][1]}`);
}
