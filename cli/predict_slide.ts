/**
 * `he2gene predict-slide SLIDE --weights CKPT`: predict gene expression and tumour status straight from a
 * whole-slide image, at given spots or over the whole tissue, without writing patches to disk.
 *
 * Where:
 * - `--spots FILE` (as `extract-patches`): a her2st `*_selection.tsv`, a Visium `tissue_positions(_list).csv`
 *   or a CSV `x,y,pixel_x,pixel_y`. Each spot's patch is `--crop-size` px (default 150, or `--crop-um`) of
 *   level 0 with top-left `⌊px⌋ − ⌊size/2⌋`, exactly the patch `extract-patches` writes, so the predictions
 *   equal `predict-patches` on that folder. Names: `{section}_{x}_{y}` (array coordinates). On Space Ranger's
 *   `tissue_hires_image.png` / `tissue_lowres_image.png`, Visium positions (full-resolution pixels) are scaled
 *   by `scalefactors_json.json` (beside the image, or `--scalefactors`) and `--crop-size` counts
 *   full-resolution pixels (see `spotLayout` in cli/extract_patches.ts).
 * - `--tile`: non-overlapping square tiles of `--tile-um` µm (default 100, needs the slide's resolution:
 *   `--mpp`, the file's, or a Visium image's scale factors) or `--tile-px` px (at least
 *   {@linkcode MIN_TILE_PX}; it wins over `--tile-um`) over the tissue found on a low-resolution thumbnail
 *   (saturation + Otsu, see slide/tissue.ts); the tile itself is the patch. Names: `{section}_{col}_{row}`
 *   (grid position). The grid starts at the slide's top-left corner and covers the whole level-0 image
 *   (⌈W / tile⌉ × ⌈H / tile⌉ tiles); where the size is not a multiple of the tile, the last column and row
 *   are partial edge tiles: full-size tiles whose part past the slide's edge is white background, kept when
 *   their tissue (that part counting as background) reaches `--min-tissue` like any other tile. More than
 *   `--max-tiles` tiles on tissue (default {@linkcode MAX_TILES}) are refused before anything is predicted.
 *
 * Patches are read from the slide in batches of `--batch-size` (the next batch is read while the GPU works
 * on the current one; never all at once), optionally stain-normalised on the GPU (`--stain`), resized to
 * 224 and normalised as the original, and predicted with `--tta` as `predict-patches`: `single`, `tta` (8
 * dihedral views, averaged; the default), `grid` (centred windows of 1, ½ and 1.5 × the patch size; the
 * 1.5× window reads context around the spot from the slide) or `grid_tta` (each window × 8 symmetries).
 *
 * Outputs in `--out` (written under temporary names, renamed together at the end): `target_count_pred.csv`,
 * `aux_count_pred.csv`, `tumor_pred.csv` and `predictions.npz` as `predict-patches`, the npz with
 * `pixel` `[P, 2]` (level-0 centre x, y; float64) and `grid` `[P, 2]` (array x, y or tile col, row; int32);
 * with `--h5ad`, `predictions.h5ad` (X = target genes) and `predictions_aux.h5ad` (X = aux genes; AnnData
 * layers must have X's shape, so the aux head gets its own file), both with `obs` = `tumor_prob`, `tumor`
 * (boolean), `obsm` = `spatial` (pixel), `grid`, and `uns` = what X is, the model, the TTA mode, the slide's
 * file name and scanpy's spatial layout (`uns['spatial'][section]`: hires / lowres thumbnails of the slide
 * and their scale factors, see {@linkcode spatialImages}), so `sc.pl.spatial` draws from the file. With
 * `--geojson FILE`, the squares and their predictions for QuPath (slide/geojson.ts), written with the rest.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { basename, dirname, resolve } from "node:path";
import { createEngine, type Engine } from "../engine/engine.ts";
import { decodeImage, type RgbImage } from "../slide/decode.ts";
import { centerBox, resizeCpu } from "../slide/resample.ts";
import { fitReinhard, MACENKO_DEFAULT_TARGET, type StainMethod } from "../slide/stain.ts";
import { type SlideThumbnail, tissueTiles } from "../slide/tissue.ts";
import { openSlide, type Slide, type SlideMpp } from "../slide/wsi.ts";
import { visiumImage } from "../slide/datasets/visium.ts";
import { CsvBuilder, csvTable, encodeNpz, prepareOutputDir, writeFilesAtomic } from "../slide/npz.ts";
import { encodeH5ad, type SpatialLibrary, spatialUns } from "../slide/h5ad.ts";
import { predictionsGeoJson } from "../slide/geojson.ts";
import { loadModel } from "./checkpoint.ts";
import { noResolution, parseSpots, readSpotFile, spotLayout, type SpotRow } from "./extract_patches.ts";
import { geneNames, type PatchPredictions, predictionUns, SOFTWARE } from "./predict_patches.ts";
import { checkInputs, checkInterrupt, interruptSignal, UsageError } from "./errors.ts";
import { Progress } from "./progress.ts";
import { parseTuneMode, prepareTuning, type TuneMode } from "./tune.ts";
import { PREDICT_OPTIONS, predictArgs, predictViews, type StainTarget, type Tta } from "./views.ts";

/** One spot or tile: its name, grid position, level-0 centre and the level-0 square it is predicted from. */
export interface SlidePatch {
  name: string;
  /** Array x, y (spots) or tile col, row. */
  gx: number;
  gy: number;
  /** Level-0 centre. */
  px: number;
  py: number;
  /** Level-0 top-left of the patch and its side. */
  left: number;
  top: number;
  size: number;
}

/** Options of {@linkcode predictSlide}. */
export interface PredictSlideOptions {
  weights: string;
  out: string;
  /** Spot file; without it the tissue is tiled. */
  spots?: string;
  /** Patch side in level-0 pixels at spots (default 150). */
  cropSize?: number;
  /** Patch side in µm at spots (needs the slide's resolution); overrides cropSize. */
  cropUm?: number;
  /** Tile side in level-0 pixels (tile mode); default: `tileUm` µm. */
  tilePx?: number;
  /** Tile side in µm (default 100). */
  tileUm?: number;
  /** Smallest tissue fraction of a kept tile (default 0.5). */
  minTissue?: number;
  /** Most tiles on tissue that tile mode predicts; more are refused (default {@linkcode MAX_TILES}). */
  maxTiles?: number;
  /** Name prefix (default: the spot file's or the slide's name up to the first `_` or `.`). */
  section?: string;
  batchSize?: number;
  tta?: Tta;
  stain?: StainMethod;
  /** Reference image of `reinhard`. */
  stainRef?: string;
  targetGenes?: string;
  auxGenes?: string;
  /** Also write predictions.h5ad and predictions_aux.h5ad. */
  h5ad?: boolean;
  /** Also write the squares and their predictions as GeoJSON for QuPath to this file. */
  geojson?: string;
  /** Skip `aux_count_pred.csv` (19 699 columns a row; the aux genes stay in the npz / h5ad). */
  noAuxCsv?: boolean;
  /** Deflate the members of `predictions.npz` (`np.savez_compressed`); default stored (`np.savez`). */
  compress?: boolean;
  /** Microns per pixel at level 0, overriding the file's. */
  mpp?: number;
  /**
   * Space Ranger's scalefactors_json.json for a hires / lowres image (default: the one beside the image):
   * scales Visium positions and gives the image's resolution.
   */
  scalefactors?: string;
  quiet?: boolean;
  /** Kernel variants (`--tune`; default cached). Ignored when `engine` is given (its table stays). */
  tune?: TuneMode;
  engine?: Engine;
  /**
   * When given, filled with wall-clock milliseconds per stage (added to what is there), see
   * {@linkcode SLIDE_STAGES}. Timing adds one GPU sync per batch between preprocessing and the model, so
   * that each stage's GPU work is charged to it; the outputs are the same.
   */
  timings?: Record<string, number>;
}

/**
 * The stages {@linkcode PredictSlideOptions.timings} reports, in milliseconds of wall clock on the main
 * loop (they do not overlap, so their sum is about `predictSlide`'s time):
 * - `open`: `openSlide` (for a JPEG or PNG, the decode of the whole image);
 * - `setup`: the spot file or the tissue tiling, the engine, the checkpoint read and upload, gene names;
 * - `read`: waiting for a batch's patches from the slide; the next batch is read while the GPU works on
 *   the current one, so only the part that is not hidden is counted (`readBusy`, outside the sum, is the
 *   reading's own time);
 * - `preprocess`: upload, stain normalisation, resize + normalise and the TTA views, GPU included;
 * - `model`: forward, mean over the views, readback, and copying into the output arrays;
 * - `write`: the last batch's CSV rows, joining the CSVs, the npz and the h5ad files.
 *
 * `formatBusy` (outside the sum) is the time formatting CSV rows: batch b's rows are formatted after batch
 * b + 1 went to the GPU, so on a GPU that is not the CPU it is hidden; with timings on it lands in
 * `preprocess` (the GPU sync there waits behind it).
 */
export const SLIDE_STAGES = ["open", "setup", "read", "preprocess", "model", "write"] as const;

function addTime(t: Record<string, number> | undefined, key: string, since: number): number {
  const now = performance.now();
  if (t) t[key] = (t[key] ?? 0) + (now - since);
  return now;
}

/** Predictions at the patches of a slide, on the host. */
export interface SlidePredictions extends PatchPredictions {
  /** (P, 2) level-0 centre x, y */
  pixel: Float64Array;
  /** (P, 2) array x, y or tile col, row */
  grid: Int32Array;
  /** (P, 2) level-0 top-left x, y of each patch square */
  topLeft: Float64Array;
  /** "spots" or "tiles" */
  mode: "spots" | "tiles";
  /** Patch side in level-0 pixels. */
  patchPx: number;
  slide: string;
  /** The name prefix of the spots or tiles. */
  section: string;
  /** The checkpoint's path. */
  weights: string;
  tta: Tta;
  mpp: number | null;
}

// ------------------------------------------------------------------------------------------- thumbnails

/** A thumbnail of a level-0 region: `downsample` level-0 pixels per thumbnail pixel, origin `x0, y0`. */
export interface RegionThumbnail extends SlideThumbnail {
  x0: number;
  y0: number;
}

/**
 * A low-resolution RGB image of a level-0 region (default the whole slide): the smallest pyramid level
 * that is at least as fine as `downsample`, box-averaged by the integer factor that brings it closest to
 * `downsample` from below; single-level images (JPEG, PNG, flat TIFF) are read from level 0 in strips and
 * box-averaged, so memory stays at one strip.
 *
 * @example
 * ```ts
 * const slide = await openSlide("CMU-1-Small-Region.svs");
 * const thumb = await slideThumbnail(slide, { downsample: 16 }); // ≈ 139 × 185, thumb.downsample = 16
 * ```
 */
export async function slideThumbnail(
  slide: Slide,
  o: { downsample: number; region?: [number, number, number, number] },
): Promise<RegionThumbnail> {
  const [W0, H0] = [slide.levels[0].width, slide.levels[0].height];
  const [rx, ry, rw, rh] = o.region ?? [0, 0, W0, H0];
  const want = Math.max(1, o.downsample);
  let k = 0;
  slide.levels.forEach((l, i) => {
    if (l.downsample <= want * (1 + 1e-6) && l.downsample > slide.levels[k].downsample) k = i;
  });
  const ds = slide.levels[k].downsample;
  const f = Math.max(1, Math.floor(want / ds + 1e-6));
  // The region in level-k pixels, and the thumbnail size (whole f × f boxes).
  const kx = Math.round(rx / ds), ky = Math.round(ry / ds);
  const kw = Math.max(1, Math.floor(rw / ds)), kh = Math.max(1, Math.floor(rh / ds));
  const width = Math.max(1, Math.floor(kw / f)), height = Math.max(1, Math.floor(kh / f));
  const data = new Uint8Array(width * height * 3);
  // Strips of whole box rows, ≤ ~16 MB of RGB each.
  const rowsPerStrip = Math.max(1, Math.floor((16 << 20) / (width * f * 3 * f)));
  const acc = new Uint32Array(width * 3);
  for (let r0 = 0; r0 < height; r0 += rowsPerStrip) {
    const nr = Math.min(rowsPerStrip, height - r0);
    const reg = await slide.readRegion(k, kx, ky + r0 * f, width * f, nr * f);
    for (let r = 0; r < nr; r++) {
      acc.fill(0);
      for (let dy = 0; dy < f; dy++) {
        const row = (r * f + dy) * reg.width * 3;
        for (let x = 0; x < width; x++) {
          for (let dx = 0; dx < f; dx++) {
            const s = row + (x * f + dx) * 3;
            acc[3 * x] += reg.data[s];
            acc[3 * x + 1] += reg.data[s + 1];
            acc[3 * x + 2] += reg.data[s + 2];
          }
        }
      }
      const n = f * f, o3 = (r0 + r) * width * 3;
      for (let i = 0; i < width * 3; i++) data[o3 + i] = Math.round(acc[i] / n);
    }
  }
  return { width, height, data, downsample: ds * f, x0: kx * ds, y0: ky * ds };
}

/** The long side of Space Ranger's `tissue_hires_image.png` and `tissue_lowres_image.png`, in pixels. */
export const SPATIAL_IMAGE_PX = { hires: 2000, lowres: 600 } as const;

/**
 * Scanpy's two images of a slide (see `spatialUns` in slide/h5ad.ts): the whole level-0 slide at `hires`
 * (default 2000) and `lowres` (600) pixels on its long side, as Space Ranger's images, never enlarged. A
 * pyramid level or box average at most that coarse ({@linkcode slideThumbnail}) is resized with PIL's
 * bilinear filter (antialiased), the lowres image from the hires one. The scale factors are image pixels
 * per level-0 pixel (the images' sizes are rounded: within half a pixel).
 *
 * @example
 * ```ts
 * const slide = await openSlide("CMU-1-Small-Region.svs"); // 2220 × 2967
 * const im = await spatialImages(slide); // im.hires 1496 × 2000, im.hiresScale = 2000 / 2967
 * ```
 */
export async function spatialImages(
  slide: Slide,
  o: { hires?: number; lowres?: number } = {},
): Promise<Pick<SpatialLibrary, "hires" | "lowres" | "hiresScale" | "lowresScale">> {
  const long = Math.max(slide.levels[0].width, slide.levels[0].height);
  const hiresScale = Math.min(1, (o.hires ?? SPATIAL_IMAGE_PX.hires) / long);
  const lowresScale = Math.min(1, (o.lowres ?? SPATIAL_IMAGE_PX.lowres) / long);
  const thumb = await slideThumbnail(slide, { downsample: 1 / hiresScale });
  // The thumbnail covers whole boxes of `downsample` level-0 pixels from the top-left corner.
  const size = (scale: number): [number, number] => [
    Math.max(1, Math.round(thumb.width * thumb.downsample * scale)),
    Math.max(1, Math.round(thumb.height * thumb.downsample * scale)),
  ];
  const hires = resizeCpu(thumb, size(hiresScale));
  const lowres = resizeCpu(hires, size(lowresScale));
  return { hires, lowres, hiresScale, lowresScale };
}

// ------------------------------------------------------------------------------------------ the patches

function sectionOf(path: string): string {
  return basename(path).split(/[_.]/)[0];
}

/**
 * The patches at spots (`px`, `py` in the slide's level-0 pixels) of a spot file (spots outside the slide
 * are dropped, with a count).
 */
export function spotPatches(
  spots: SpotRow[],
  file: string,
  o: { section: string; size: number; width: number; height: number },
): { patches: SlidePatch[]; outside: number } {
  const keep = spots.filter((s) => s.px >= 0 && s.py >= 0 && s.px < o.width && s.py < o.height);
  if (spots.length && keep.length === 0) {
    throw new Error(
      `Every spot of ${file} falls outside the slide (${o.width}×${o.height}): wrong slide or pixel scale?`,
    );
  }
  const half = Math.floor(o.size / 2);
  return {
    patches: keep.map((s) => ({
      name: `${o.section}_${s.x}_${s.y}`,
      gx: s.x,
      gy: s.y,
      px: s.px,
      py: s.py,
      left: Math.floor(s.px) - half,
      top: Math.floor(s.py) - half,
      size: o.size,
    })),
    outside: spots.length - keep.length,
  };
}

/**
 * The tissue tiles of a slide: a thumbnail with ≥ 8 thumbnail pixels per tile side (at most 8192 px on its
 * long side), its tissue mask, and the `tilePx` tiles whose tissue fraction reaches `minTissue`, on a grid
 * covering the whole level-0 slide (partial edge tiles as slide/tissue.ts's tiling rule says).
 *
 * @example
 * ```ts
 * const { patches } = await tilePatches(slide, { tilePx: 200, section: "CMU-1" });
 * ```
 */
export async function tilePatches(
  slide: Slide,
  o: { tilePx: number; section: string; minTissue?: number },
): Promise<{ patches: SlidePatch[]; thumbnail: RegionThumbnail; cols: number; rows: number }> {
  const [W0, H0] = [slide.levels[0].width, slide.levels[0].height];
  const thumbnail = await slideThumbnail(slide, {
    downsample: Math.max(1, o.tilePx / 8, Math.max(W0, H0) / 8192),
  });
  // Level-0 geometry: the thumbnail (whole boxes) can stop up to one box short of the right and bottom.
  const { tiles, cols, rows } = tissueTiles(thumbnail, {
    tilePx: o.tilePx,
    minTissueFraction: o.minTissue ?? 0.5,
    slideWidth: W0,
    slideHeight: H0,
  });
  const half = o.tilePx / 2;
  const patches = tiles
    .map((t) => ({
      name: `${o.section}_${t.col}_${t.row}`,
      gx: t.col,
      gy: t.row,
      px: t.x + half,
      py: t.y + half,
      left: t.x,
      top: t.y,
      size: o.tilePx,
    }));
  return { patches, thumbnail, cols, rows };
}

/**
 * Read the patches' squares from level 0. With `context` > 0 (grid modes) each square grows to
 * `size + context`, placed so that the grid's centred `size` window is the patch itself.
 */
async function readPatches(
  slide: Slide,
  patches: SlidePatch[],
  timings?: Record<string, number>,
  context = 0,
): Promise<RgbImage[]> {
  const out: RgbImage[] = [];
  for (const p of patches) {
    const t0 = performance.now();
    const side = p.size + context;
    const shift = context ? centerBox(side, side, p.size)[0] : 0;
    const r = await slide.readRegion(0, p.left - shift, p.top - shift, side, side);
    addTime(timings, "readBusy", t0);
    out.push({ width: r.width, height: r.height, channels: 3, data: r.data, warnings: [] });
  }
  return out;
}

// ---------------------------------------------------------------------------------------- prediction

/**
 * Predict at the spots or tiles of a slide (see the module doc), write the outputs, and return them.
 *
 * @example
 * ```ts
 * await predictSlide("C2.jpg", { weights: "model_base.pt", out: "out", spots: "C2_selection.tsv" });
 * await predictSlide("CMU-1.svs", { weights: "model_base.pt", out: "out-tiles", h5ad: true });
 * ```
 */
export async function predictSlide(path: string, o: PredictSlideOptions): Promise<SlidePredictions> {
  const batchSize = o.batchSize ?? 4;
  const tta = o.tta ?? "tta";
  const stain = o.stain ?? "none";
  const timings = o.timings;
  let t = performance.now();
  const slide = await openSlide(
    path,
    o.mpp ? { mpp: { x: o.mpp, y: o.mpp, source: "option", detail: `--mpp ${o.mpp}` } } : {},
  );
  t = addTime(timings, "open", t);
  try {
    const [W0, H0] = [slide.levels[0].width, slide.levels[0].height];
    let patches: SlidePatch[];
    let patchPx: number;
    let mpp: SlideMpp | null;
    if (o.spots) {
      const text = await readSpotFile(o.spots);
      const layout = await spotLayout(slide, { path: o.spots, text, spots: parseSpots(text, o.spots) }, {
        cropSize: o.cropSize,
        cropUm: o.cropUm,
        scalefactors: o.scalefactors,
      });
      if (layout.note && !o.quiet) console.error(layout.note);
      patchPx = layout.size;
      mpp = layout.mpp;
      const res = spotPatches(layout.spots, o.spots, {
        section: o.section ?? sectionOf(o.spots),
        size: patchPx,
        width: W0,
        height: H0,
      });
      patches = res.patches;
      if (res.outside && !o.quiet) {
        console.error(`warning: ${res.outside} spots fall outside the image (${W0}×${H0}) and are skipped`);
      }
    } else {
      mpp = slide.resolution ?? (await visiumImage(path, { scalefactors: o.scalefactors }))?.mpp ?? null;
      if (o.tilePx !== undefined) patchPx = o.tilePx;
      else if (mpp) patchPx = Math.round((o.tileUm ?? 100) / mpp.x);
      else throw noResolution(path, `${o.tileUm ?? 100} µm tiles`, "--tile-px");
      if (!Number.isInteger(patchPx) || patchPx < MIN_TILE_PX) {
        throw new RangeError(
          o.tilePx !== undefined
            ? `--tile-px must be an integer ≥ ${MIN_TILE_PX}, current value is ${patchPx}`
            : `--tile-um ${o.tileUm ?? 100} is ${patchPx} px at ${mpp!.x} µm/px (from ${mpp!.detail}); ` +
              `tiles must be at least ${MIN_TILE_PX} px (the model's input is 224 px): use larger --tile-um`,
        );
      }
      if (o.tilePx === undefined && Math.abs(mpp!.y / mpp!.x - 1) > 0.01 && !o.quiet) {
        console.error(
          `warning: ${path} has pixels of ${mpp!.x} × ${mpp!.y} µm (from ${mpp!.detail}): tiles of ` +
            `${patchPx} px are ${o.tileUm ?? 100} µm wide and ${(patchPx * mpp!.y).toFixed(1)} µm tall`,
        );
      }
      const res = await tilePatches(slide, {
        tilePx: patchPx,
        section: o.section ?? sectionOf(path),
        minTissue: o.minTissue,
      });
      patches = res.patches;
      const maxTiles = o.maxTiles ?? MAX_TILES;
      if (patches.length > maxTiles) {
        const limit = `--max-tiles ${maxTiles}${o.maxTiles === undefined ? " (the default)" : ""}`;
        throw new Error(
          `Cannot tile ${path}: ${patches.length} tiles of ${patchPx} px are on tissue ` +
            `(of ${res.cols}×${res.rows}), more than ${limit}; pass --max-tiles ${patches.length} to predict ` +
            `them all, or use larger tiles`,
        );
      }
      if (!o.quiet) {
        console.error(
          `${patches.length} of ${res.cols * res.rows} tiles of ${patchPx} px` +
            `${mpp ? ` (${(patchPx * mpp.x).toFixed(0)} µm)` : ""} are on tissue`,
        );
      }
    }
    if (patches.length === 0) {
      throw new Error(
        o.spots ? `No spots in ${o.spots}` : `No tissue found in ${path} (tiles of ${patchPx} px)`,
      );
    }
    await prepareOutputDir(o.out);
    if (o.geojson) {
      await prepareOutputDir(dirname(o.geojson));
      const st = await Deno.stat(o.geojson).catch(() => null);
      if (st?.isDirectory) throw new Error(`Cannot write --geojson ${o.geojson}: it is a folder`);
    }

    const engine = o.engine ?? await createEngine();
    if (!o.engine) {
      const said = await prepareTuning(engine, o.tune ?? "cached", (s) => !o.quiet && console.error(s));
      if (!o.quiet) console.error(said);
    }
    let stainTarget: StainTarget | undefined;
    if (stain === "reinhard") {
      if (!o.stainRef) throw new UsageError("--stain reinhard needs --stain-ref IMAGE");
      stainTarget = fitReinhard(decodeImage(await Deno.readFile(o.stainRef), o.stainRef));
    } else if (stain === "macenko") stainTarget = MACENKO_DEFAULT_TARGET;
    const { model, targetGenes: ckT, auxGenes: ckA } = await loadModel(engine, o.weights);
    try {
      const nT = model.config.targetGenes, nA = model.config.auxGenes;
      const P = patches.length;
      const out: SlidePredictions = {
        names: patches.map((p) => p.name),
        targetGenes: await geneNames(o.targetGenes, ckT, nT, "target", o.quiet),
        auxGenes: await geneNames(o.auxGenes, ckA, nA, "aux", o.quiet),
        target: new Float32Array(P * nT),
        aux: new Float32Array(P * nA),
        tumorProb: new Float32Array(P),
        pixel: new Float64Array(P * 2),
        grid: new Int32Array(P * 2),
        topLeft: new Float64Array(P * 2),
        section: o.section ?? sectionOf(o.spots ?? path),
        weights: o.weights,
        tta,
        mode: o.spots ? "spots" : "tiles",
        patchPx,
        slide: path,
        mpp: mpp?.x ?? null,
      };
      patches.forEach((p, i) => {
        out.pixel.set([p.px, p.py], 2 * i);
        out.grid.set([p.gx, p.gy], 2 * i);
        out.topLeft.set([p.left, p.top], 2 * i);
      });
      const auxCsvBytes = P * nA * 10.5; // ~10 characters a value
      if (!o.noAuxCsv && !o.quiet && auxCsvBytes > 2 ** 30) {
        console.error(
          `warning: aux_count_pred.csv will take about ${(auxCsvBytes / 2 ** 30).toFixed(1)} GiB ` +
            `(${P} × ${nA} values); --no-aux-csv skips it (the npz keeps the aux genes)`,
        );
      }
      const bar = new Progress(out.mode, P, o.quiet);
      t = addTime(timings, "setup", t);
      // Read batch b + 1 while the GPU predicts batch b.
      // Grid modes see up to 1.5× the patch (the original's 225 px window around a 150 px spot).
      const context = tta === "grid" || tta === "grid_tta" ? Math.round(patchPx * 1.5) - patchPx : 0;
      const read = (b0: number) => readPatches(slide, patches.slice(b0, b0 + batchSize), timings, context);
      let next: Promise<RgbImage[]> | null = read(0);
      // The CSV rows of batch b are formatted while the GPU runs batch b + 1 (19 699 aux values a spot).
      const csv = {
        target: new CsvBuilder(out.targetGenes),
        aux: new CsvBuilder(out.auxGenes),
        tumor: new CsvBuilder(["Annotation"]),
      };
      const format = (b0: number, n: number) => {
        const t0 = performance.now();
        const names = out.names.slice(b0, b0 + n);
        csv.target.add(names, out.target.subarray(b0 * nT, (b0 + n) * nT));
        if (!o.noAuxCsv) csv.aux.add(names, out.aux.subarray(b0 * nA, (b0 + n) * nA));
        csv.tumor.add(names, Array.from(out.tumorProb.subarray(b0, b0 + n), (v) => v > 0.5));
        addTime(timings, "formatBusy", t0);
      };
      let unformatted: [number, number] | null = null;
      try {
        for (let b0 = 0; b0 < P; b0 += batchSize) {
          t = performance.now();
          const images = await next!;
          next = b0 + batchSize < P ? read(b0 + batchSize) : null;
          t = addTime(timings, "read", t);
          const job = predictViews(engine, model, images, {
            tta,
            base: patchPx,
            stain,
            stainTarget,
            timings,
            names: out.names.slice(b0, b0 + images.length), // a NaN / Inf output is an error naming it
            what: o.spots ? "spot" : "tile",
          });
          if (unformatted) format(...unformatted);
          const res = await job;
          t = performance.now();
          out.target.set(res.target, b0 * nT);
          out.aux.set(res.aux, b0 * nA);
          out.tumorProb.set(res.tumor, b0);
          unformatted = [b0, images.length];
          bar.tick(images.length);
          checkInterrupt();
          addTime(timings, "model", t);
        }
      } finally {
        next?.catch(() => {}); // a read still in flight when prediction failed
      }
      bar.done();
      t = performance.now();
      if (unformatted) format(...unformatted);
      await writeSlideOutputs(o.out, out, {
        h5ad: o.h5ad,
        compress: o.compress,
        csv: { target: csv.target.text(), aux: o.noAuxCsv ? null : csv.aux.text(), tumor: csv.tumor.text() },
        images: o.h5ad ? await spatialImages(slide) : undefined,
        geojson: o.geojson,
      });
      addTime(timings, "write", t);
      return out;
    } finally {
      model.dispose();
      if (!o.engine) engine.destroy();
    }
  } finally {
    slide.close();
  }
}

/**
 * The AnnData files of predictions: X = target genes, and X = aux genes in the second; `obs` = `tumor_prob`
 * and `tumor` (boolean, `tumor_prob` > 0.5 as tumor_pred.csv), `obsm` = `spatial` (level-0 x, y) and `grid`,
 * `uns` = {@linkcode predictionUns}'s (what X holds, the model, the TTA mode), `slide` (its file name),
 * `mode`, `patch_px`, `mpp`, and with `images` scanpy's `spatial` layout under the section's name.
 */
export async function slideH5ad(
  p: SlidePredictions,
  images?: Pick<SpatialLibrary, "hires" | "lowres" | "hiresScale" | "lowresScale">,
): Promise<{ target: Uint8Array; aux: Uint8Array }> {
  const P = p.names.length;
  const common = {
    obsNames: p.names,
    obs: {
      tumor_prob: p.tumorProb,
      tumor: Array.from(p.tumorProb, (v) => v > 0.5),
    },
    obsm: {
      spatial: { data: p.pixel, shape: [P, 2] as [number, number] },
      grid: { data: p.grid, shape: [P, 2] as [number, number] },
    },
  };
  const uns = (head: "target" | "aux") => ({
    ...predictionUns(head, p),
    slide: basename(p.slide),
    mode: p.mode,
    patch_px: p.patchPx,
    ...(p.mpp ? { mpp: p.mpp } : {}),
    ...(images
      ? {
        spatial: spatialUns(p.section, {
          ...images,
          spotDiameter: p.patchPx,
          metadata: { software_version: SOFTWARE, source_image_path: basename(p.slide) },
        }),
      }
      : {}),
  });
  return {
    target: await encodeH5ad({ ...common, X: p.target, varNames: p.targetGenes, uns: uns("target") }),
    aux: await encodeH5ad({ ...common, X: p.aux, varNames: p.auxGenes, uns: uns("aux") }),
  };
}

/**
 * Write the three CSVs and `predictions.npz` (with `pixel` and `grid`), with `h5ad` the two AnnData files,
 * with `geojson` that file; staged under temporary names and renamed only when all were written.
 */
export async function writeSlideOutputs(
  dir: string,
  p: SlidePredictions,
  o: {
    h5ad?: boolean;
    /** Deflate the npz's members. */
    compress?: boolean;
    /** The three CSV texts when already formatted (as {@linkcode csvTable} would write them); aux null: none. */
    csv?: { target: string; aux: string | null; tumor: string };
    /** Scanpy's slide images for the h5ad files (see {@linkcode spatialImages}). */
    images?: Pick<SpatialLibrary, "hires" | "lowres" | "hiresScale" | "lowresScale">;
    /** A GeoJSON file for QuPath (anywhere; written and renamed with the rest). */
    geojson?: string;
  } = {},
): Promise<void> {
  const P = p.names.length;
  const aux = o.csv ? o.csv.aux : csvTable(p.names, p.auxGenes, p.aux);
  const files: [string, string | Uint8Array][] = [
    ["target_count_pred.csv", o.csv?.target ?? csvTable(p.names, p.targetGenes, p.target)],
    ...(aux === null ? [] : [["aux_count_pred.csv", aux] as [string, string]]),
    [
      "tumor_pred.csv",
      o.csv?.tumor ?? csvTable(p.names, ["Annotation"], Array.from(p.tumorProb, (v) => v > 0.5)),
    ],
    [
      "predictions.npz",
      encodeNpz({
        target: { dtype: "f4", shape: [P, p.targetGenes.length], data: p.target },
        aux: { dtype: "f4", shape: [P, p.auxGenes.length], data: p.aux },
        tumor_prob: { dtype: "f4", shape: [P], data: p.tumorProb },
        names: { dtype: "U", shape: [P], data: p.names },
        target_genes: { dtype: "U", shape: [p.targetGenes.length], data: p.targetGenes },
        aux_genes: { dtype: "U", shape: [p.auxGenes.length], data: p.auxGenes },
        pixel: { dtype: "f8", shape: [P, 2], data: p.pixel },
        grid: { dtype: "i4", shape: [P, 2], data: p.grid },
      }, { compress: o.compress }),
    ],
  ];
  if (o.h5ad) {
    const h = await slideH5ad(p, o.images);
    files.push(["predictions.h5ad", h.target], ["predictions_aux.h5ad", h.aux]);
  }
  if (o.geojson) {
    const geojson = predictionsGeoJson({
      names: p.names,
      topLeft: p.topLeft,
      size: p.patchPx,
      genes: p.targetGenes,
      values: p.target,
      tumorProb: p.tumorProb,
      objectType: p.mode === "tiles" ? "tile" : "detection",
    });
    files.push([resolve(o.geojson), geojson]); // an absolute path: written where it says, not in `dir`
  }
  await writeFilesAtomic(dir, files, { signal: interruptSignal() });
}

/** The smallest `--tile-px`: the model sees 224 px, and ResNet's features are 32 px apart. */
export const MIN_TILE_PX = 32;

/** The default `--max-tiles`: tile mode refuses more tiles on tissue unless raised. */
export const MAX_TILES = 100_000;

/** Usage of `predict-slide` (for cli/main.ts). */
export const PREDICT_SLIDE_USAGE =
  "predict-slide SLIDE --weights CKPT (--spots FILE | --tile) [--out ./output] [--batch-size 4]\n" +
  "       [--tta single|tta|grid|grid_tta] [--crop-size 150 | --crop-um UM] [--tile-um 100 | --tile-px PX]\n" +
  "       [--min-tissue 0.5] [--max-tiles 100000] [--geojson FILE]\n" +
  "       [--stain none|macenko|reinhard] [--stain-ref IMAGE] [--section NAME] [--mpp MPP]\n" +
  "       [--scalefactors FILE] [--h5ad]\n" +
  "       [--target-genes FILE] [--aux-genes FILE] [--no-aux-csv] [--compress] [--tune cached|auto|off]\n" +
  "       [--quiet]\n\n" +
  "  SLIDE         SVS / TIFF / BigTIFF / JPEG / PNG\n" +
  "  --weights     model_base.pt / model_spat.pt or our .safetensors\n" +
  "  --spots       her2st *_selection.tsv, Visium tissue_positions(_list).csv, or CSV x,y,pixel_x,pixel_y;\n" +
  "                patches as extract-patches (--crop-size px, default 150, or --crop-um). On Space Ranger's\n" +
  "                tissue_hires/lowres_image.png, Visium positions × its scale factor, --crop-size in\n" +
  "                full-resolution px\n" +
  "  --tile        tile the tissue (mask from a thumbnail) with --tile-um (default 100) or --tile-px squares\n" +
  "                (--tile-px ≥ 32; it wins over --tile-um). The grid starts at the slide's top-left corner and\n" +
  "                covers all of it; when the slide is not a whole number of tiles, the last column / row are\n" +
  "                full-size tiles reaching past the edge: that part is white background and counts as no\n" +
  "                tissue for --min-tissue\n" +
  "  --min-tissue  smallest tissue fraction of a tile (default 0.5)\n" +
  "  --max-tiles   refuse more tiles on tissue than this (default 100000)\n" +
  "  --geojson     also write the spots' / tiles' squares with their target genes and tumour call as GeoJSON\n" +
  "                for QuPath (level-0 px; File > Import objects from file, or drag it onto the viewer)\n" +
  "  --batch-size  patches read and predicted at a time (default 4; × 8 views with tta)\n" +
  "  --tta         single | tta (8 symmetries, averaged; default) | grid (windows of 1, 0.5, 1.5 × the\n" +
  "                patch, centred; context read from the slide) | grid_tta (each window × 8 symmetries)\n" +
  "  --stain       stain normalisation on the GPU (default none); reinhard needs --stain-ref\n" +
  "  --section     name prefix (default: the spot file's or slide's name up to the first _ or .)\n" +
  "  --mpp         microns per pixel at level 0 (overrides the file's; `info SLIDE` shows what it says)\n" +
  "  --scalefactors  Space Ranger's scalefactors_json.json for tissue_hires/lowres_image.png (default: the\n" +
  "                one beside the image): scales Visium positions, and gives the image's µm per pixel\n" +
  "  --tune        kernel variants: cached (this adapter's table from `he2gene tune` if there is one, else\n" +
  "                built-in defaults; default) | auto (tune first when there is none) | off (built-in defaults)\n" +
  "  --out         target_count_pred.csv, aux_count_pred.csv, tumor_pred.csv, predictions.npz (with\n" +
  "                pixel [P,2] and grid [P,2]); --h5ad adds predictions.h5ad (target genes) and\n" +
  "                predictions_aux.h5ad (aux genes) in scanpy's spatial layout, with thumbnails of the\n" +
  '                slide: sc.pl.spatial(adata, color="ERBB2") draws from the file\n' +
  "  --no-aux-csv  skip aux_count_pred.csv (19 699 columns a row: about 10 MB per 50 spots, so gigabytes\n" +
  "                for a whole slide's tiles); the aux genes stay in predictions.npz and the h5ad\n" +
  "  --compress    deflate predictions.npz's arrays (as np.savez_compressed; default stored, as np.savez)";

function positiveNumber(v: string | undefined, flag: string, integer = false): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0 || (integer && !Number.isInteger(n))) {
    throw new UsageError(
      `${flag} must be a positive ${integer ? "integer" : "number"}, current value is ${v}`,
    );
  }
  return n;
}

/** CLI entry: parse arguments and run. */
export async function runPredictSlide(args: string[]): Promise<void> {
  const { values: v, positionals } = parseArgs({
    args,
    options: {
      ...PREDICT_OPTIONS,
      spots: { type: "string" },
      tile: { type: "boolean", default: false },
      "crop-size": { type: "string" },
      "crop-um": { type: "string" },
      "tile-px": { type: "string" },
      "tile-um": { type: "string" },
      "min-tissue": { type: "string" },
      "max-tiles": { type: "string" },
      geojson: { type: "string" },
      stain: { type: "string", default: "none" },
      "stain-ref": { type: "string" },
      section: { type: "string" },
      mpp: { type: "string" },
      scalefactors: { type: "string" },
      h5ad: { type: "boolean", default: false },
      "no-aux-csv": { type: "boolean", default: false },
    },
    allowPositionals: true,
    strict: true,
  });
  if (positionals.length !== 1) throw new UsageError("expected one SLIDE");
  const { weights, tta, batchSize } = predictArgs(v);
  if (!v.spots === !v.tile) throw new UsageError("give either --spots FILE or --tile");
  if (v.tile && (v["crop-size"] || v["crop-um"])) {
    throw new UsageError("--crop-size / --crop-um apply to --spots; tiles are --tile-px / --tile-um squares");
  }
  if (v.spots && (v["tile-px"] || v["tile-um"] || v["min-tissue"] || v["max-tiles"])) {
    throw new UsageError("--tile-px / --tile-um / --min-tissue / --max-tiles apply to --tile");
  }
  const tilePx = positiveNumber(v["tile-px"], "--tile-px", true);
  if (tilePx !== undefined && tilePx < MIN_TILE_PX) {
    throw new UsageError(
      `--tile-px must be at least ${MIN_TILE_PX} (pixels of the slide's level 0), current value is ${tilePx}`,
    );
  }
  const stain = v.stain as StainMethod;
  if (!["none", "macenko", "reinhard"].includes(stain)) {
    throw new UsageError(`--stain must be none, macenko or reinhard, current value is ${v.stain}`);
  }
  if (stain === "reinhard" && !v["stain-ref"]) {
    throw new UsageError("--stain reinhard needs --stain-ref IMAGE");
  }
  const minTissue = v["min-tissue"] === undefined ? undefined : Number(v["min-tissue"]);
  if (minTissue !== undefined && !(minTissue >= 0 && minTissue <= 1)) {
    throw new UsageError(`--min-tissue must be in [0, 1], current value is ${v["min-tissue"]}`);
  }
  await checkInputs([
    ["the slide", positionals[0], "file"],
    ["--weights", weights, "file"],
    ["--spots", v.spots, "file"],
    ["--stain-ref", v["stain-ref"], "file"],
    ["--target-genes", v["target-genes"], "file"],
    ["--aux-genes", v["aux-genes"], "file"],
  ]);
  const t0 = performance.now();
  const p = await predictSlide(positionals[0], {
    weights,
    out: v.out!,
    spots: v.spots,
    cropSize: positiveNumber(v["crop-size"], "--crop-size", true),
    cropUm: positiveNumber(v["crop-um"], "--crop-um"),
    tilePx,
    tileUm: positiveNumber(v["tile-um"], "--tile-um"),
    minTissue,
    maxTiles: positiveNumber(v["max-tiles"], "--max-tiles", true),
    geojson: v.geojson,
    section: v.section,
    batchSize,
    tta,
    stain,
    stainRef: v["stain-ref"],
    targetGenes: v["target-genes"],
    auxGenes: v["aux-genes"],
    h5ad: v.h5ad,
    noAuxCsv: v["no-aux-csv"],
    compress: v.compress,
    mpp: positiveNumber(v.mpp, "--mpp"),
    scalefactors: v.scalefactors,
    quiet: v.quiet,
    tune: parseTuneMode(v.tune),
  });
  console.log(
    `${p.names.length} ${p.mode} (${tta}, ${p.patchPx} px) in ${
      ((performance.now() - t0) / 1000).toFixed(1)
    } s → ` +
      `${v.out}/{target_count_pred.csv, ${v["no-aux-csv"] ? "" : "aux_count_pred.csv, "}tumor_pred.csv, ` +
      `predictions.npz` +
      `${v.h5ad ? ", predictions.h5ad, predictions_aux.h5ad" : ""}}` +
      `${v.geojson ? ` and ${v.geojson}` : ""}`,
  );
}
