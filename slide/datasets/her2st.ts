/**
 * her2st (Andersson et al. 2021, HER2-positive breast tumours, Spatial Transcriptomics) in the layout of the
 * almaan/her2st repository:
 *
 * - `data/ST-imgs/{patient}/{S}/*.jpg` — the H&E image of section S (patient = first letter of S);
 * - `data/ST-cnts/{S}.tsv.gz` — counts, spots × genes; first column `"{x}x{y}"`, header row of gene symbols;
 * - `data/ST-spotfiles/{S}_selection.tsv` — `x y new_x new_y pixel_x pixel_y selected`: integer array
 *   position, adjusted position, pixel centre in the full-resolution image. Spots join the counts on
 *   `"{round(x)}x{round(y)}"`, as Hist2ST / HisToGene do (for C2–C5 the rounded `new_x new_y` give the same);
 * - `data/ST-pat/lbl/{S}_labeled_coordinates.tsv` — pathologist labels; float x/y round to the count ids;
 * - else `res/ST-cluster/lbl/{S}-cluster-annotation.tsv.gz` + `res/ST-cluster/motivation.csv` — expression
 *   clusters; tumour = a cluster name starting with "cancer".
 *
 * Pixel size: ST spots sit 200 µm apart, so `mpp = 200 / (pixels per array step)`, fitted to the section's
 * `new_x → pixel_x` and `new_y → pixel_y` (least squares).
 *
 * @module
 */
import { join } from "node:path";
import {
  DatasetError,
  type DatasetWarning,
  describeDuplicates,
  duplicates,
  exists,
  imageSize,
  readText,
  type Section,
  type SpatialDataset,
  splitRows,
  type Spot,
} from "./types.ts";

/** Options of {@linkcode readHer2st}. */
export interface Her2stOptions {
  /** Sections to read (default: every section with counts, a spot file and an image). */
  sections?: string[];
  /**
   * The dataset's genes: the `union` of the sections' genes (default; a gene absent from a section's file
   * has no reads there, so its counts are 0 and the section's `missingGenes` lists it), their
   * `intersection`, or an explicit list (genes absent from a section are listed likewise).
   */
  genes?: "union" | "intersection" | string[];
  /** NaN or negative counts: replace with 0 and warn (default), or throw. */
  invalid?: "zero" | "error";
}

/** One section's count file, parsed. */
interface CountTable {
  file: string;
  ids: string[];
  genes: string[];
  values: Float32Array; // (spots, genes)
}

/**
 * Read her2st sections from `root` (a folder laid out like the almaan/her2st repository).
 *
 * @example
 * ```ts ignore
 * const ds = await readHer2st("../shared/data/her2st", { sections: ["C2", "C3"] });
 * console.log(ds.sections[0].spots.length, ds.genes.length, ds.warnings);
 * ```
 */
export async function readHer2st(root: string, opts: Her2stOptions = {}): Promise<SpatialDataset> {
  const cntDir = join(root, "data", "ST-cnts");
  if (!(await exists(cntDir))) {
    throw new DatasetError(root, "expected a her2st folder with data/ST-cnts/, found none");
  }
  const ids = opts.sections ?? await discover(root);
  if (ids.length === 0) {
    throw new DatasetError(
      root,
      "expected at least one section with counts, a spot file and an image, found none",
    );
  }
  const warnings: DatasetWarning[] = [];
  const tables: CountTable[] = [];
  for (const s of ids) {
    tables.push(await readCounts(await countFile(root, s), opts.invalid ?? "zero", s, warnings));
  }

  const genes = pickGenes(tables.map((t) => t.genes), opts.genes ?? "union");
  const motivation = await readMotivation(root);
  const sections: Section[] = [];
  for (let k = 0; k < ids.length; k++) {
    sections.push(await readSection(root, ids[k], tables[k], genes, motivation, warnings));
  }
  return { name: "her2st", sections, genes, warnings };
}

async function discover(root: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(join(root, "data", "ST-cnts"))) {
    const m = /^([A-Z]\d+)\.tsv(\.gz)?$/.exec(e.name);
    if (!m) continue;
    const s = m[1];
    if (!(await exists(join(root, "data", "ST-spotfiles", `${s}_selection.tsv`)))) continue;
    if ((await findImage(root, s)) === null) continue;
    out.push(s);
  }
  return out.sort();
}

async function countFile(root: string, s: string): Promise<string> {
  for (const name of [`${s}.tsv.gz`, `${s}.tsv`]) {
    const p = join(root, "data", "ST-cnts", name);
    if (await exists(p)) return p;
  }
  throw new DatasetError(
    join(root, "data", "ST-cnts", `${s}.tsv.gz`),
    `expected the counts of section ${s}, found none`,
  );
}

async function findImage(root: string, s: string): Promise<string | null> {
  const dir = join(root, "data", "ST-imgs", s[0], s);
  if (!(await exists(dir))) return null;
  const jpgs: string[] = [];
  for await (const e of Deno.readDir(dir)) if (/\.jpe?g$/i.test(e.name)) jpgs.push(e.name);
  return jpgs.length ? join(dir, jpgs.sort()[0]) : null;
}

async function readCounts(
  file: string,
  invalid: "zero" | "error",
  section: string,
  warnings: DatasetWarning[],
): Promise<CountTable> {
  const rows = splitRows(await readText(file), "\t");
  if (rows.length < 2) throw new DatasetError(file, "expected a header row and at least one spot row", 1);
  const genes = rows[0].slice(1).map(unquote);
  const dupGenes = duplicates(genes);
  if (dupGenes.length > 0) {
    throw new DatasetError(
      file,
      `expected one column per gene, found ${dupGenes.length} gene name(s) in more than one column: ${
        describeDuplicates(dupGenes, (p) => `columns ${p.map((j) => j + 2).join(", ")}`)
      }`,
      1,
    );
  }
  const ids: string[] = [];
  const values = new Float32Array((rows.length - 1) * genes.length);
  let bad = 0, firstBad = "";
  for (let r = 1; r < rows.length; r++) {
    const row = rows[r];
    if (row.length !== genes.length + 1) {
      throw new DatasetError(
        file,
        `expected ${genes.length + 1} tab-separated cells, found ${row.length}`,
        r + 1,
      );
    }
    const id = unquote(row[0]);
    if (!/^\d+x\d+$/.test(id)) {
      throw new DatasetError(file, `expected a spot id "{x}x{y}", found "${id}"`, r + 1);
    }
    ids.push(id);
    const o = (r - 1) * genes.length;
    for (let j = 0; j < genes.length; j++) {
      const v = Number(row[j + 1]);
      if (!(v >= 0)) {
        if (invalid === "error") {
          throw new DatasetError(
            file,
            `expected a count ≥ 0 for spot ${id}, gene ${genes[j]}, found "${row[j + 1]}"`,
            r + 1,
          );
        }
        if (bad++ === 0) firstBad = `spot ${id}, gene ${genes[j]}: "${row[j + 1]}" (line ${r + 1})`;
        continue; // stays 0
      }
      values[o + j] = v;
    }
  }
  const dupIds = duplicates(ids);
  if (dupIds.length > 0) {
    throw new DatasetError(
      file,
      `expected one row per spot, found ${dupIds.length} spot(s) on more than one row: ${
        describeDuplicates(dupIds, (p) => `lines ${p.map((r) => r + 2).join(", ")}`)
      }`,
    );
  }
  if (bad > 0) {
    warnings.push({
      code: "invalid-counts",
      section,
      count: bad,
      message: `${file}: ${bad} NaN or negative counts replaced with 0, first at ${firstBad}`,
    });
  }
  return { file, ids, genes, values };
}

function unquote(s: string): string {
  return s.length >= 2 && s[0] === '"' && s[s.length - 1] === '"' ? s.slice(1, -1) : s;
}

function pickGenes(lists: string[][], how: "union" | "intersection" | string[]): string[] {
  if (Array.isArray(how)) {
    const dups = duplicates(how);
    if (dups.length > 0) {
      throw new RangeError(
        `Cannot read her2st: the gene list (genes option) names ${dups.length} gene(s) more than once: ${
          describeDuplicates(dups)
        }`,
      );
    }
    return how;
  }
  if (how === "union") {
    const seen = new Set<string>();
    for (const l of lists) for (const g of l) seen.add(g);
    return [...seen];
  }
  const sets = lists.slice(1).map((l) => new Set(l));
  return lists[0].filter((g) => sets.every((s) => s.has(g)));
}

/** Columns of a header row by name (a leading empty cell, as R writes row names, counts as a column). */
function columns(file: string, header: string[], names: string[]): number[] {
  const h = header.map(unquote);
  return names.map((n) => {
    const i = h.indexOf(n);
    if (i < 0) throw new DatasetError(file, `expected a column "${n}" in the header [${h.join(", ")}]`, 1);
    return i;
  });
}

async function readSection(
  root: string,
  s: string,
  table: CountTable,
  genes: string[],
  motivation: Map<string, string>,
  warnings: DatasetWarning[],
): Promise<Section> {
  const slidePath = await findImage(root, s);
  if (slidePath === null) {
    throw new DatasetError(
      join(root, "data", "ST-imgs", s[0], s),
      `expected a .jpg image of section ${s}, found none`,
    );
  }

  // Spot file: array position → pixel centre.
  const selFile = join(root, "data", "ST-spotfiles", `${s}_selection.tsv`);
  const sel = splitRows(await readText(selFile), /\t| +/);
  const [cx, cy, cnx, cny, cpx, cpy] = columns(selFile, sel[0], [
    "x",
    "y",
    "new_x",
    "new_y",
    "pixel_x",
    "pixel_y",
  ]);
  const pos = new Map<string, { array: [number, number]; adj: [number, number]; pixel: [number, number] }>();
  const selIds: string[] = [];
  for (let r = 1; r < sel.length; r++) {
    const c = sel[r].map(Number);
    if ([cx, cy, cnx, cny, cpx, cpy].some((i) => !Number.isFinite(c[i]))) {
      throw new DatasetError(selFile, `expected numbers in x y new_x new_y pixel_x pixel_y`, r + 1);
    }
    const x = Math.round(c[cx]), y = Math.round(c[cy]);
    selIds.push(`${x}x${y}`);
    pos.set(`${x}x${y}`, { array: [x, y], adj: [c[cnx], c[cny]], pixel: [c[cpx], c[cpy]] });
  }
  const dupSel = duplicates(selIds);
  if (dupSel.length > 0) {
    throw new DatasetError(
      selFile,
      `expected one row per spot (x y rounded), found ${dupSel.length} spot(s) on more than one row: ${
        describeDuplicates(dupSel, (p) => `lines ${p.map((r) => r + 2).join(", ")}`)
      }`,
    );
  }

  // Counts in dataset gene order.
  const col = new Map(table.genes.map((g, j) => [g, j]));
  const map = genes.map((g) => col.get(g) ?? -1);
  const missingGenes = genes.filter((_, i) => map[i] < 0);
  if (missingGenes.length > 0) {
    warnings.push({
      code: "missing-genes",
      section: s,
      count: missingGenes.length,
      message:
        `${table.file}: ${missingGenes.length} of ${genes.length} dataset genes are absent (counts 0), ` +
        `e.g. ${missingGenes.slice(0, 5).join(", ")}`,
    });
  }
  const spots: Spot[] = [];
  const unjoined: string[] = [];
  const w = table.genes.length;
  for (let i = 0; i < table.ids.length; i++) {
    const id = table.ids[i];
    const p = pos.get(id);
    if (!p) {
      unjoined.push(id);
      continue;
    }
    const counts = new Float32Array(genes.length);
    const row = table.values.subarray(i * w, (i + 1) * w);
    for (let j = 0; j < genes.length; j++) if (map[j] >= 0) counts[j] = row[map[j]];
    spots.push({ id, section: s, pixel: p.pixel, array: p.array, counts });
  }
  if (unjoined.length > 0) {
    warnings.push({
      code: "unjoined-spots",
      section: s,
      count: unjoined.length,
      message:
        `${table.file}: ${unjoined.length} spots have counts but no row in ${selFile} and are left out: ` +
        unjoined.slice(0, 5).join(", "),
    });
  }
  const counted = new Set(table.ids);
  const noCounts = [...pos.keys()].filter((k) => !counted.has(k));
  if (noCounts.length > 0) {
    warnings.push({
      code: "spots-without-counts",
      section: s,
      count: noCounts.length,
      message: `${selFile}: ${noCounts.length} spots have no counts in ${table.file}: ${
        noCounts.slice(0, 5).join(", ")
      }`,
    });
  }

  const labelSource = await attachLabels(root, s, spots, motivation, warnings);

  const imageSizeWH = await imageSize(slidePath);
  if (imageSizeWH) {
    const [W, H] = imageSizeWH;
    const out = spots.filter((p) =>
      !(p.pixel[0] >= 0 && p.pixel[0] < W && p.pixel[1] >= 0 && p.pixel[1] < H)
    );
    if (out.length > 0) {
      warnings.push({
        code: "outside-image",
        section: s,
        count: out.length,
        message: `${out.length} spots of ${s} lie outside ${slidePath} (${W} × ${H}): ${
          out.slice(0, 5).map((p) => p.id).join(", ")
        }`,
      });
    }
  }
  const ps = [...pos.values()];
  const step = (slope(ps.map((p) => p.adj[0]), ps.map((p) => p.pixel[0])) +
    slope(ps.map((p) => p.adj[1]), ps.map((p) => p.pixel[1]))) / 2;
  return {
    id: s,
    slidePath,
    spots,
    mpp: Number.isFinite(step) && step > 0 ? 200 / step : undefined,
    imageScale: 1,
    grid: "square",
    imageSize: imageSizeWH ?? undefined,
    labelSource,
    missingGenes,
  };
}

/** Least-squares slope of y on x. */
function slope(x: number[], y: number[]): number {
  const n = x.length, mx = x.reduce((a, b) => a + b, 0) / n, my = y.reduce((a, b) => a + b, 0) / n;
  let sxy = 0, sxx = 0;
  for (let i = 0; i < n; i++) {
    sxy += (x[i] - mx) * (y[i] - my);
    sxx += (x[i] - mx) ** 2;
  }
  return sxy / sxx;
}

/** `patient:cluster` → cluster name, from res/ST-cluster/motivation.csv (its free text is not quoted). */
async function readMotivation(root: string): Promise<Map<string, string>> {
  const file = join(root, "res", "ST-cluster", "motivation.csv");
  const out = new Map<string, string>();
  if (!(await exists(file))) return out;
  const rows = splitRows(await readText(file), ",");
  for (let r = 1; r < rows.length; r++) {
    const f = rows[r];
    // `annotated as` may itself hold commas ("immune : APC, B-cell, T-cell"); it ends where `based on`
    // ("Marker genes …") or an empty field begins.
    let end = 3;
    while (end < f.length && f[end].trim() !== "" && !/^\s*Marker genes/i.test(f[end])) end++;
    out.set(`${f[0]}:${f[1]}`, f.slice(2, end).join(",").trim());
  }
  return out;
}

/** Label the spots of section `s` in place; returns the source used. */
async function attachLabels(
  root: string,
  s: string,
  spots: Spot[],
  motivation: Map<string, string>,
  warnings: DatasetWarning[],
): Promise<Section["labelSource"]> {
  const byId = new Map(spots.map((p) => [p.id, p]));
  let labelled = 0;
  let source: Section["labelSource"] = "none";
  let file = join(root, "data", "ST-pat", "lbl", `${s}_labeled_coordinates.tsv`);
  if (await exists(file)) {
    source = "pathologist";
    const rows = splitRows(await readText(file), "\t");
    // The header has no cell for R's row names: columns are found by name among the trailing cells.
    const shift = rows.length > 1 ? rows[1].length - rows[0].length : 0;
    const [cx, cy, cl] = columns(file, rows[0], ["x", "y", "label"]).map((i) => i + shift);
    for (let r = 1; r < rows.length; r++) {
      const id = `${Math.round(Number(rows[r][cx]))}x${Math.round(Number(rows[r][cy]))}`;
      const spot = byId.get(id);
      const label = unquote(rows[r][cl] ?? "");
      if (!spot || label === "" || label === "NA") continue;
      spot.label = label;
      spot.tumor = /cancer/i.test(label);
      labelled++;
    }
  } else {
    file = "";
    for (const name of [`${s}-cluster-annotation.tsv.gz`, `${s}-cluster-annotation.tsv`]) {
      const p = join(root, "res", "ST-cluster", "lbl", name);
      if (await exists(p)) file = p;
    }
    if (file === "") {
      warnings.push({
        code: "no-labels",
        section: s,
        count: spots.length,
        message: `section ${s} has neither pathologist labels nor expression clusters: spots are unlabelled`,
      });
      return "none";
    }
    source = "cluster";
    const rows = splitRows(await readText(file), "\t");
    const shift = rows.length > 1 ? rows[1].length - rows[0].length : 0;
    const [cp, cl, cx, cy] = columns(file, rows[0], ["patient_id", "label", "x", "y"]).map((i) => i + shift);
    for (let r = 1; r < rows.length; r++) {
      const row = rows[r];
      const spot = byId.get(`${Math.round(Number(row[cx]))}x${Math.round(Number(row[cy]))}`);
      if (!spot) continue;
      const key = `${unquote(row[cp])}:${unquote(row[cl])}`;
      const name = motivation.get(key);
      if (name === undefined) {
        throw new DatasetError(
          file,
          `expected cluster ${key} in res/ST-cluster/motivation.csv, found none`,
          r + 1,
        );
      }
      spot.label = name;
      spot.tumor = name.startsWith("cancer");
      labelled++;
    }
  }
  if (labelled < spots.length) {
    warnings.push({
      code: "unlabelled-spots",
      section: s,
      count: spots.length - labelled,
      message: `${file}: ${spots.length - labelled} of ${spots.length} spots of ${s} have no label`,
    });
  }
  return source;
}
