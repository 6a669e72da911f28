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
 *
 * @module
 */
import { basename, join } from "node:path";
import {
  DatasetError,
  type DatasetWarning,
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
  }

  // Scale factors.
  const sfFile = await find("scalefactors_json.json");
  if (!sfFile) {
    throw new DatasetError(dir, "expected scalefactors_json.json (in spatial/ or the folder), found none");
  }
  let sf: Record<string, number>;
  try {
    sf = JSON.parse(await readText(sfFile));
  } catch (e) {
    throw new DatasetError(sfFile, `expected JSON: ${(e as Error).message}`);
  }
  const diameter = sf.spot_diameter_fullres;
  const mpp = diameter > 0 ? VISIUM_SPOT_UM / diameter : undefined;

  // Image.
  let slidePath: string | null, imageScale: number;
  const image = opts.image ?? ((await find("tissue_hires_image.png")) ? "hires" : "lowres");
  if (typeof image === "object") {
    slidePath = image.fullres;
    imageScale = 1;
  } else {
    slidePath = await find(`tissue_${image}_image.png`);
    imageScale = sf[`tissue_${image}_scalef`];
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
  const h5wasm = (await import("h5wasm")).default;
  const { FS } = await h5wasm.ready;
  const tmp = `/he2gene-${crypto.randomUUID()}.h5`;
  FS!.writeFile(tmp, await Deno.readFile(file));
  const f = new h5wasm.File(tmp, "r");
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
    return { file, barcodes, genes, geneIds, values };
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
  return { file: mtx, barcodes, genes, geneIds, values };
}
