/**
 * 10x Visium (Space Ranger output): spot positions, scale factors, the hires / lowres image, and counts from
 * `filtered_feature_bc_matrix.h5` (HDF5 via `h5wasm`) or the `filtered_feature_bc_matrix/` Matrix Market
 * folder.
 *
 * Spec: https://www.10xgenomics.com/support/software/space-ranger/latest/analysis/outputs/spatial-outputs
 * (tissue_positions: barcode, in_tissue, array_row, array_col, pxl_row_in_fullres, pxl_col_in_fullres;
 * scalefactors_json.json) and .../outputs/feature-barcode-matrices (HDF5: `matrix/{data, indices, indptr,
 * shape, barcodes, features/{id, name}}`, CSC with one column per barcode; MEX: matrix.mtx.gz,
 * barcodes.tsv.gz, features.tsv.gz). Files are looked up in `dir/spatial/` and in `dir/` itself.
 *
 * Coordinates: `pixel = [pxl_col, pxl_row]` in full-resolution pixels, `array = [array_col, array_row]`
 * (a hexagonal grid: array_col steps by 2 along a row). The full-resolution image is usually absent, so the
 * section's slide is the hires (or lowres) image and `imageScale` is its scale factor: image pixel =
 * `pixel × imageScale`. Spots are 55 µm across, so full-resolution `mpp = 55 / spot_diameter_fullres`.
 * {@linkcode visiumImage} gives the same scale for a hires / lowres image on its own (`predict-slide`,
 * `extract-patches` on `tissue_lowres_image.png` with `tissue_positions.csv`).
 *
 * @module
 */
import { basename, dirname, join } from "node:path";
import type { SlideMpp } from "../wsi.ts";
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

/** Visium spot diameter in micrometres. */
export const VISIUM_SPOT_UM = 55;

/** Options of {@linkcode readVisium}. */
export interface VisiumOptions {
  /** Section id (default: the folder's name). */
  id?: string;
  /** Which image is the slide: `hires` (default when present), `lowres`, or a path to a full-resolution image. */
  image?: "hires" | "lowres" | { fullres: string };
  /** Keep spots with `in_tissue = 0` that have counts (default false). */
  includeOutsideTissue?: boolean;
}

/** A count matrix as read from Space Ranger output. */
export interface VisiumCounts {
  file: string;
  barcodes: string[];
  genes: string[];
  geneIds: string[];
  /** (barcodes, genes) row-major. */
  values: Float32Array;
  /**
   * Gene symbols that occur more than once get `-1`, `-2`, … appended to their second, third, …
   * occurrence (scanpy's `var_names_make_unique`); `[original, new]` for each renamed one.
   */
  renamed?: [string, string][];
}

/**
 * Read one Visium section from a Space Ranger output folder (or a folder holding its files directly).
 *
 * @example
 * ```ts ignore
 * const ds = await readVisium("../shared/data/visium", { image: "lowres" });
 * const s = ds.sections[0];
 * const [x, y] = s.spots[0].pixel.map((v) => v * s.imageScale!); // pixel in tissue_lowres_image.png
 * ```
 */
export async function readVisium(dir: string, opts: VisiumOptions = {}): Promise<SpatialDataset> {
  if (!(await exists(dir))) throw new DatasetError(dir, "expected a Visium folder, found none");
  const id = opts.id ?? basename(dir.replace(/\/+$/, ""));
  const warnings: DatasetWarning[] = [];
  const find = async (...names: string[]) => {
    for (const n of names) {
      for (const p of [join(dir, "spatial", n), join(dir, n)]) if (await exists(p)) return p;
    }
    return null;
  };

  // Positions.
  const posFile = await find("tissue_positions.csv", "tissue_positions_list.csv");
  if (!posFile) {
    throw new DatasetError(
      dir,
      "expected spatial/tissue_positions.csv or tissue_positions_list.csv (in spatial/ or the folder), found none",
    );
  }
  const rows = splitRows(await readText(posFile), ",");
  const start = rows[0]?.[0] === "barcode" ? 1 : 0; // tissue_positions.csv has a header row
  const pos = new Map<string, { inTissue: boolean; array: [number, number]; pixel: [number, number] }>();
  const posIds: string[] = [];
  for (let r = start; r < rows.length; r++) {
    const c = rows[r];
    const v = c.slice(1, 6).map(Number);
    if (c.length < 6 || v.some((x) => !Number.isFinite(x))) {
      throw new DatasetError(
        posFile,
        "expected barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,pxl_col_in_fullres",
        r + 1,
      );
    }
    pos.set(c[0], { inTissue: v[0] === 1, array: [v[2], v[1]], pixel: [v[4], v[3]] });
    posIds.push(c[0]);
  }
  const dupPos = duplicates(posIds);
  if (dupPos.length > 0) {
    throw new DatasetError(
      posFile,
      `expected one row per barcode, found ${dupPos.length} barcode(s) on more than one row: ${
        describeDuplicates(dupPos, (p) => `lines ${p.map((i) => i + start + 1).join(", ")}`)
      }`,
    );
  }

  // Scale factors.
  const sfFile = await find("scalefactors_json.json");
  if (!sfFile) {
    throw new DatasetError(dir, "expected scalefactors_json.json (in spatial/ or the folder), found none");
  }
  const sf = await readScalefactors(sfFile);
  const diameter = sf.spot_diameter_fullres ?? 0;
  const mpp = diameter > 0 ? VISIUM_SPOT_UM / diameter : undefined;

  // Image.
  let slidePath: string | null, imageScale: number;
  const image = opts.image ?? ((await find("tissue_hires_image.png")) ? "hires" : "lowres");
  if (typeof image === "object") {
    slidePath = image.fullres;
    imageScale = 1;
  } else {
    slidePath = await find(`tissue_${image}_image.png`);
    imageScale = sf[`tissue_${image}_scalef`] ?? NaN;
    if (!(imageScale > 0)) {
      throw new DatasetError(sfFile, `expected tissue_${image}_scalef > 0, found ${imageScale}`);
    }
  }
  if (!slidePath || !(await exists(slidePath))) {
    throw new DatasetError(
      dir,
      `expected the ${typeof image === "object" ? "full-resolution" : image} image, found none`,
    );
  }

  // Counts.
  const counts = await readCounts(dir);
  if (counts.renamed?.length) {
    warnings.push({
      code: "duplicate-genes",
      section: id,
      count: counts.renamed.length,
      message:
        `${counts.file}: ${counts.renamed.length} features share a gene symbol with an earlier one and ` +
        `were renamed as scanpy's var_names_make_unique does: ${
          counts.renamed.slice(0, 5).map(([a, b]) => `${a} → ${b}`).join(", ")
        }${counts.renamed.length > 5 ? ", …" : ""}`,
    });
  }
  const spots: Spot[] = [];
  const unjoined: string[] = [];
  let outside = 0;
  const g = counts.genes.length;
  counts.barcodes.forEach((bc, i) => {
    const p = pos.get(bc);
    if (!p) return void unjoined.push(bc);
    if (!p.inTissue && !opts.includeOutsideTissue) return void outside++;
    spots.push({
      id: bc,
      section: id,
      pixel: p.pixel,
      array: p.array,
      counts: counts.values.slice(i * g, (i + 1) * g),
    });
  });
  if (unjoined.length > 0) {
    warnings.push({
      code: "unjoined-spots",
      section: id,
      count: unjoined.length,
      message: `${counts.file}: ${unjoined.length} barcodes have no row in ${posFile} and are left out: ` +
        unjoined.slice(0, 5).join(", "),
    });
  }
  if (outside > 0) {
    warnings.push({
      code: "outside-tissue",
      section: id,
      count: outside,
      message: `${outside} barcodes with counts are marked in_tissue = 0 in ${posFile} and are left out`,
    });
  }
  const counted = new Set(counts.barcodes);
  const noCounts = [...pos].filter(([bc, p]) => p.inTissue && !counted.has(bc)).length;
  if (noCounts > 0) {
    warnings.push({
      code: "spots-without-counts",
      section: id,
      count: noCounts,
      message: `${posFile}: ${noCounts} in-tissue spots have no counts in ${counts.file}`,
    });
  }
  let invalid = 0;
  for (const s of spots) for (const v of s.counts!) if (!(v >= 0)) invalid++;
  if (invalid > 0) {
    warnings.push({
      code: "invalid-counts",
      section: id,
      count: invalid,
      message: `${counts.file}: ${invalid} NaN or negative counts (kept as read)`,
    });
  }

  const size = await imageSize(slidePath);
  if (size) {
    const [W, H] = size;
    const out = spots.filter((p) => {
      const x = p.pixel[0] * imageScale, y = p.pixel[1] * imageScale;
      return !(x >= 0 && x < W && y >= 0 && y < H);
    });
    if (out.length > 0) {
      warnings.push({
        code: "outside-image",
        section: id,
        count: out.length,
        message: `${out.length} spots lie outside ${slidePath} (${W} × ${H} at scale ${imageScale})`,
      });
    }
  }
  const section: Section = {
    id,
    slidePath,
    spots,
    mpp,
    imageScale,
    grid: "hex",
    imageSize: size ?? undefined,
    labelSource: "none",
  };
  return { name: "visium", sections: [section], genes: counts.genes, geneIds: counts.geneIds, warnings };
}

// -------------------------------------------------------------------------- a hires / lowres image alone

/** Space Ranger's `scalefactors_json.json`: the keys he2gene uses (each absent when the file lacks it). */
export interface VisiumScalefactors {
  /** The file read. */
  file: string;
  /** hires image pixels per full-resolution pixel. */
  tissue_hires_scalef?: number;
  /** lowres image pixels per full-resolution pixel. */
  tissue_lowres_scalef?: number;
  /** A spot's diameter (55 µm) in full-resolution pixels. */
  spot_diameter_fullres?: number;
  /** A fiducial's diameter in full-resolution pixels. */
  fiducial_diameter_fullres?: number;
}

const SCALEFACTOR_KEYS = [
  "tissue_hires_scalef",
  "tissue_lowres_scalef",
  "spot_diameter_fullres",
  "fiducial_diameter_fullres",
] as const;

/**
 * Read `scalefactors_json.json`. A file that is not a JSON object, or one of the four keys that is not a
 * finite number, is a {@linkcode DatasetError} naming the file and key; whether a value is usable (> 0) is
 * for the caller to check.
 *
 * @example
 * ```ts ignore
 * const sf = await readScalefactors("spatial/scalefactors_json.json");
 * sf.tissue_lowres_scalef; // 0.045004502
 * ```
 */
export async function readScalefactors(file: string): Promise<VisiumScalefactors> {
  let json: unknown;
  try {
    json = JSON.parse(await readText(file));
  } catch (e) {
    if (e instanceof DatasetError) throw e;
    throw new DatasetError(file, `expected JSON: ${(e as Error).message}`);
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new DatasetError(file, "expected a JSON object of scale factors");
  }
  const out: VisiumScalefactors = { file };
  for (const key of SCALEFACTOR_KEYS) {
    const v = (json as Record<string, unknown>)[key];
    if (v === undefined) continue;
    if (typeof v !== "number" || !Number.isFinite(v)) {
      throw new DatasetError(file, `expected ${key} to be a number, found ${JSON.stringify(v)}`);
    }
    out[key] = v;
  }
  return out;
}

/**
 * Which of Space Ranger's downscaled images a file is, by its name: `tissue_hires_image.png` (any name with
 * `hires` as a word, e.g. `S1_tissue_hires_image.png`) → `hires`, likewise `lowres`; else null.
 */
export function visiumImageKind(path: string): "hires" | "lowres" | null {
  const m = /(?:^|[^a-z0-9])(hires|lowres)(?:[^a-z0-9]|$)/i.exec(basename(path));
  return m ? m[1].toLowerCase() as "hires" | "lowres" : null;
}

/** A hires / lowres image's place in full-resolution coordinates (see {@linkcode visiumImage}). */
export interface VisiumImage {
  kind: "hires" | "lowres";
  /** Image pixels per full-resolution pixel: `tissue_{kind}_scalef`. */
  scale: number;
  scalefactors: VisiumScalefactors;
  /** The spot diameter in this image's pixels (`spot_diameter_fullres × scale`), when the file gives it. */
  spotDiameter: number | null;
  /** µm per image pixel: 55 µm / spot_diameter_fullres / scale (square), when the file gives the diameter. */
  mpp: SlideMpp | null;
}

/**
 * How a Space Ranger hires / lowres image maps to the full-resolution pixels of `tissue_positions.csv`:
 * image pixel = full-resolution pixel × `tissue_{hires,lowres}_scalef`. The image is recognised by its name
 * ({@linkcode visiumImageKind}); the scale factors come from `opts.scalefactors` or, when that is not given,
 * from `scalefactors_json.json` in the image's folder (Space Ranger's `spatial/`). Null for another image
 * name without `opts.scalefactors` (a full-resolution image: no scaling), or when no scale-factor file is
 * found. `opts.scalefactors` with an image name that says neither hires nor lowres is an error: which
 * factor applies cannot be told.
 *
 * @example
 * ```ts ignore
 * const v = await visiumImage("spatial/tissue_lowres_image.png");
 * // { kind: "lowres", scale: 0.045004502, spotDiameter: 4.02, mpp: { x: 13.67, … }, … }
 * ```
 */
export async function visiumImage(
  image: string,
  opts: { scalefactors?: string } = {},
): Promise<VisiumImage | null> {
  const kind = visiumImageKind(image);
  if (!kind) {
    if (opts.scalefactors === undefined) return null;
    throw new DatasetError(
      image,
      `expected a name that says hires or lowres (Space Ranger's tissue_hires_image.png, ` +
        `tissue_lowres_image.png) to tell which scale factor of ${opts.scalefactors} applies; a ` +
        `full-resolution image needs no scale factors`,
    );
  }
  let file = opts.scalefactors ?? null;
  if (file === null) {
    const beside = join(dirname(image), "scalefactors_json.json");
    if (await exists(beside)) file = beside;
  }
  if (file === null) return null;
  const sf = await readScalefactors(file);
  const key = `tissue_${kind}_scalef` as const;
  const scale = sf[key];
  if (scale === undefined || !(scale > 0)) {
    throw new DatasetError(file, `expected ${key} > 0 for ${basename(image)}, found ${scale ?? "none"}`);
  }
  const d = sf.spot_diameter_fullres;
  const um = d !== undefined && d > 0 ? VISIUM_SPOT_UM / d / scale : null;
  return {
    kind,
    scale,
    scalefactors: sf,
    spotDiameter: d !== undefined && d > 0 ? d * scale : null,
    mpp: um === null ? null : {
      x: um,
      y: um,
      source: "scalefactors",
      detail:
        `${file} (spot_diameter_fullres ${Number(d!.toPrecision(6))} px = ${VISIUM_SPOT_UM} µm, ${key} ` +
        `${scale})`,
    },
  };
}

async function readCounts(dir: string): Promise<VisiumCounts> {
  for (
    const p of [
      join(dir, "filtered_feature_bc_matrix.h5"),
      join(dir, "outs", "filtered_feature_bc_matrix.h5"),
    ]
  ) {
    if (await exists(p)) return readH5(p);
  }
  const mex = join(dir, "filtered_feature_bc_matrix");
  if (await exists(mex)) return readMex(mex);
  throw new DatasetError(
    dir,
    "expected filtered_feature_bc_matrix.h5 or filtered_feature_bc_matrix/, found neither",
  );
}

/** Counts from a Space Ranger HDF5 matrix (`matrix/`: CSC, shape = [genes, barcodes]). */
export async function readH5(file: string): Promise<VisiumCounts> {
  const bytes = await Deno.readFile(file);
  checkHdf5(file, bytes);
  const h5wasm = (await import("h5wasm")).default;
  const { FS } = await h5wasm.ready;
  const tmp = `/he2gene-${crypto.randomUUID()}.h5`;
  FS!.writeFile(tmp, bytes);
  let f: InstanceType<typeof h5wasm.File>;
  try {
    f = new h5wasm.File(tmp, "r");
    if (!(f.file_id > 0n)) throw new Error("the HDF5 library could not open it");
  } catch (e) {
    FS!.unlink(tmp);
    throw new DatasetError(file, `expected an HDF5 file the HDF5 library can open: ${(e as Error).message}`);
  }
  try {
    // deno-lint-ignore no-explicit-any
    const get = (path: string): any => {
      const d = f.get(path);
      if (!d) throw new DatasetError(file, `expected the HDF5 dataset /${path}, found none`);
      return (d as unknown as { value: unknown }).value;
    };
    const shape = [...get("matrix/shape")].map(Number);
    const [nGenes, nBarcodes] = shape;
    const data = get("matrix/data"), indices = get("matrix/indices"), indptr = get("matrix/indptr");
    const barcodes: string[] = [...get("matrix/barcodes")].map(String);
    const hasFeatures = f.get("matrix/features") !== null;
    const geneIds: string[] = [...get(hasFeatures ? "matrix/features/id" : "matrix/genes")].map(String);
    const genes: string[] = [...get(hasFeatures ? "matrix/features/name" : "matrix/gene_names")].map(String);
    if (barcodes.length !== nBarcodes || genes.length !== nGenes || indptr.length !== nBarcodes + 1) {
      throw new DatasetError(
        file,
        `expected ${nBarcodes} barcodes, ${nGenes} features and ${
          nBarcodes + 1
        } indptr entries (matrix/shape), ` +
          `found ${barcodes.length}, ${genes.length}, ${indptr.length}`,
      );
    }
    const values = new Float32Array(nBarcodes * nGenes);
    for (let b = 0; b < nBarcodes; b++) {
      for (let k = Number(indptr[b]); k < Number(indptr[b + 1]); k++) {
        const gi = Number(indices[k]);
        if (!(gi >= 0 && gi < nGenes)) {
          throw new DatasetError(file, `expected matrix/indices[${k}] in [0, ${nGenes}), found ${gi}`);
        }
        values[b * nGenes + gi] = Number(data[k]);
      }
    }
    return finishCounts({ file, barcodes, genes, geneIds, values });
  } finally {
    f.close();
    FS!.unlink(tmp);
  }
}

/** Counts from a Matrix Market folder (matrix.mtx[.gz]: genes × barcodes, 1-based; barcodes; features). */
export async function readMex(dir: string): Promise<VisiumCounts> {
  const pick = async (...names: string[]) => {
    for (const n of names) if (await exists(join(dir, n))) return join(dir, n);
    throw new DatasetError(join(dir, names[0]), "expected a file, found none");
  };
  const mtx = await pick("matrix.mtx.gz", "matrix.mtx");
  const bcFile = await pick("barcodes.tsv.gz", "barcodes.tsv");
  const ftFile = await pick("features.tsv.gz", "features.tsv", "genes.tsv.gz", "genes.tsv");
  const barcodes = splitRows(await readText(bcFile), "\t").map((r) => r[0]);
  const feats = splitRows(await readText(ftFile), "\t");
  const geneIds = feats.map((r) => r[0]), genes = feats.map((r) => r[1] ?? r[0]);
  const lines = (await readText(mtx)).split(/\r?\n/);
  if (!/^%%MatrixMarket matrix coordinate (integer|real) general/.test(lines[0])) {
    throw new DatasetError(
      mtx,
      `expected "%%MatrixMarket matrix coordinate integer general", found "${lines[0]}"`,
      1,
    );
  }
  let l = 1;
  while (lines[l]?.startsWith("%")) l++;
  const [nG, nB, nnz] = lines[l].trim().split(/\s+/).map(Number);
  if (nG !== genes.length || nB !== barcodes.length) {
    throw new DatasetError(
      mtx,
      `expected ${genes.length} × ${barcodes.length} (features × barcodes), found ${nG} × ${nB}`,
      l + 1,
    );
  }
  const values = new Float32Array(nB * nG);
  let seen = 0;
  for (let i = l + 1; i < lines.length; i++) {
    if (lines[i].trim() === "") continue;
    const [g, b, v] = lines[i].trim().split(/\s+/).map(Number);
    if (!(g >= 1 && g <= nG && b >= 1 && b <= nB) || Number.isNaN(v)) {
      throw new DatasetError(
        mtx,
        `expected "gene barcode value" within ${nG} × ${nB}, found "${lines[i]}"`,
        i + 1,
      );
    }
    values[(b - 1) * nG + (g - 1)] = v;
    seen++;
  }
  if (seen !== nnz) throw new DatasetError(mtx, `expected ${nnz} entries (header), found ${seen}`);
  return finishCounts({ file: mtx, barcodes, genes, geneIds, values }, {
    barcodes: bcFile,
    features: ftFile,
  });
}

/**
 * Refuse a barcode or a feature id listed twice (two rows / columns for one spot or feature), and make
 * gene symbols unique as scanpy's `var_names_make_unique` does: a symbol's second, third, … occurrence gets
 * `-1`, `-2`, … (skipping names already taken). Space Ranger references do hold duplicate symbols (one
 * symbol, two Ensembl ids), so these are renamed, not refused.
 */
function finishCounts(c: VisiumCounts, files: { barcodes?: string; features?: string } = {}): VisiumCounts {
  const dupBc = duplicates(c.barcodes);
  if (dupBc.length > 0) {
    throw new DatasetError(
      files.barcodes ?? c.file,
      `expected each barcode once (one count row per spot), found ${dupBc.length} barcode(s) more than once: ${
        describeDuplicates(dupBc, (p) => `entries ${p.map((i) => i + 1).join(", ")}`)
      }`,
    );
  }
  const dupIds = duplicates(c.geneIds);
  if (dupIds.length > 0) {
    throw new DatasetError(
      files.features ?? c.file,
      `expected each feature id once (one count column per feature), found ${dupIds.length} id(s) more than once: ${
        describeDuplicates(dupIds, (p) => `entries ${p.map((i) => i + 1).join(", ")}`)
      }`,
    );
  }
  const { names, renamed } = makeUnique(c.genes);
  return renamed.length ? { ...c, genes: names, renamed } : c;
}

/**
 * scanpy / anndata's `make_index_unique` (join "-"): the first occurrence of a name is kept; each later one
 * becomes `name-k` with the smallest k (counted per name) that is not already a name.
 *
 * @example
 * ```ts ignore
 * makeUnique(["A", "A", "B", "A-1"]).names; // ["A", "A-2", "B", "A-1"]
 * ```
 */
export function makeUnique(names: readonly string[]): { names: string[]; renamed: [string, string][] } {
  const out = [...names];
  const renamed: [string, string][] = [];
  const taken = new Set(names);
  const first = new Set<string>();
  const counter = new Map<string, number>();
  for (let i = 0; i < out.length; i++) {
    const v = names[i];
    if (!first.has(v)) {
      first.add(v);
      continue;
    }
    for (;;) {
      const k = (counter.get(v) ?? 0) + 1;
      counter.set(v, k);
      const name = `${v}-${k}`;
      if (!taken.has(name)) {
        taken.add(name);
        out[i] = name;
        renamed.push([v, name]);
        break;
      }
    }
  }
  return { names: out, renamed };
}

/** HDF5 format signature (the superblock's first 8 bytes). */
const HDF5_SIGNATURE = [0x89, 0x48, 0x44, 0x46, 0x0d, 0x0a, 0x1a, 0x0a];

/**
 * Check that `bytes` hold a whole HDF5 file before the HDF5 library sees them (it reports an empty or cut
 * file only as missing objects): not empty, an HDF5 signature at 0, 512, 1024, …, and at least the
 * superblock's end-of-file address (base address + EOF address: HDF5 File Format Specification, Version
 * 0/1 and 2/3 superblocks, https://docs.hdfgroup.org/hdf5/latest/_f_m_t3.html#Superblock).
 */
export function checkHdf5(file: string, bytes: Uint8Array): void {
  if (bytes.length === 0) {
    throw new DatasetError(file, "expected an HDF5 file, found an empty file (0 bytes)");
  }
  let at = -1;
  for (let off = 0; off + 8 <= bytes.length; off = off === 0 ? 512 : off * 2) {
    if (HDF5_SIGNATURE.every((b, i) => bytes[off + i] === b)) {
      at = off;
      break;
    }
  }
  if (at < 0) {
    throw new DatasetError(
      file,
      `expected an HDF5 file, found no HDF5 signature (${bytes.length} bytes; not an HDF5 file)`,
    );
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = bytes[at + 8];
  // Where the size of offsets and the base / end-of-file addresses are, per superblock version.
  const layout = version === 0
    ? { sizeAt: 13, baseAt: 24 }
    : version === 1
    ? { sizeAt: 13, baseAt: 28 }
    : version === 2 || version === 3
    ? { sizeAt: 9, baseAt: 12 }
    : null;
  if (!layout) return; // a newer superblock: let the library judge
  const truncated = (need?: number) =>
    new DatasetError(
      file,
      need === undefined
        ? `expected a whole HDF5 superblock, found ${bytes.length} bytes: the file is truncated`
        : `expected ${need} bytes (the HDF5 superblock's end-of-file address), found ${bytes.length}: ` +
          `the file is truncated`,
    );
  if (at + layout.sizeAt >= bytes.length) throw truncated();
  const o = bytes[at + layout.sizeAt];
  if (o !== 2 && o !== 4 && o !== 8) return;
  const read = (p: number): number => {
    if (p + o > bytes.length) throw truncated();
    return o === 8
      ? Number(dv.getBigUint64(p, true))
      : o === 4
      ? dv.getUint32(p, true)
      : dv.getUint16(p, true);
  };
  const base = read(at + layout.baseAt);
  // v0/1: base, free-space info, end of file; v2/3: base, superblock extension, end of file.
  const eof = read(at + layout.baseAt + 2 * o);
  const need = base + eof;
  if (Number.isFinite(need) && need > bytes.length) throw truncated(need);
}
