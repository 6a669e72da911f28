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
import { decodeImage } from "../slide/decode.ts";
import { fitReinhard, MACENKO_DEFAULT_TARGET, type StainMethod } from "../slide/stain.ts";
import { openSlide, type Slide, type SlideMpp } from "../slide/wsi.ts";
import { visiumImage } from "../slide/datasets/visium.ts";
import { prepareOutputDir, writeFilesAtomic } from "../slide/npz.ts";
import {
  MAX_TILES,
  MIN_TILE_PX,
  predictSlide as predictSlidePatches,
  type RegionThumbnail,
  SLIDE_STAGES,
  type SlideCsvs,
  slideCsvs,
  slideGeoJson,
  slideH5ad as encodeSlideH5ad,
  slideNpz,
  type SlidePatch,
  type SlidePredictions,
  slideThumbnail,
  SPATIAL_IMAGE_PX,
  type SpatialImages,
  spatialImages,
  spotPatches,
  tilePatches,
} from "../pipeline/predict_slide.ts";
import { loadPredictor } from "./train_encoder.ts";
import { noResolution, parseSpots, readSpotFile, spotLayout } from "./extract_patches.ts";
import { geneNames, predictionUns, SOFTWARE } from "./predict_patches.ts";
import { checkInputs, interruptSignal, UsageError } from "./errors.ts";
import { Progress } from "./progress.ts";
import { parseTuneMode, prepareTuning, type TuneMode } from "./tune.ts";
import { PREDICT_OPTIONS, predictArgs, type StainTarget, type Tta } from "./views.ts";

export {
  MAX_TILES,
  MIN_TILE_PX,
  type RegionThumbnail,
  SLIDE_STAGES,
  type SlidePatch,
  type SlidePredictions,
  slideThumbnail,
  SPATIAL_IMAGE_PX,
  spatialImages,
  spotPatches,
  tilePatches,
};

/** Options of {@linkcode predictSlide}. */
export interface PredictSlideOptions {
  weights: string;
  /** Heads trained on a frozen encoder: its weights (default: the path their checkpoint records). */
  encoderWeights?: string;
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

function addTime(t: Record<string, number> | undefined, key: string, since: number): number {
  const now = performance.now();
  if (t) t[key] = (t[key] ?? 0) + (now - since);
  return now;
}

function sectionOf(path: string): string {
  return basename(path).split(/[_.]/)[0];
}

// ---------------------------------------------------------------------------------------- prediction

/** Where to read patches on a slide: at spots, or as tiles over the tissue (see the module doc). */
export interface SlideLayoutOptions {
  spots?: string;
  cropSize?: number;
  cropUm?: number;
  tilePx?: number;
  tileUm?: number;
  minTissue?: number;
  maxTiles?: number;
  section?: string;
  scalefactors?: string;
  quiet?: boolean;
}

/**
 * The patches of `slide` (opened from `path`) at `o.spots` or as tiles over the tissue, their side in
 * level-0 pixels and the resolution that sized them; notes and warnings go to stderr unless `quiet`. Shared
 * by `predict-slide` and `embed`. An empty layout (no spots, no tissue) is an error naming the file.
 */
export async function slideLayout(
  slide: Slide,
  path: string,
  o: SlideLayoutOptions,
): Promise<{ patches: SlidePatch[]; patchPx: number; mpp: SlideMpp | null }> {
  const warn = (m: string) => !o.quiet && console.error(`warning: ${m}`);
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
    if (res.outside) warn(`${res.outside} spots fall outside the image (${W0}×${H0}) and are skipped`);
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
    if (o.tilePx === undefined && Math.abs(mpp!.y / mpp!.x - 1) > 0.01) {
      warn(
        `${path} has pixels of ${mpp!.x} × ${mpp!.y} µm (from ${mpp!.detail}): tiles of ` +
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
  return { patches, patchPx, mpp };
}

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
  const tta = o.tta ?? "tta";
  const stain = o.stain ?? "none";
  const timings = o.timings;
  const warn = (m: string) => !o.quiet && console.error(`warning: ${m}`);
  let t = performance.now();
  const slide = await openSlide(
    path,
    o.mpp ? { mpp: { x: o.mpp, y: o.mpp, source: "option", detail: `--mpp ${o.mpp}` } } : {},
  );
  t = addTime(timings, "open", t);
  try {
    const { patches, patchPx, mpp } = await slideLayout(slide, path, o);
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
    const { model, targetGenes: ckT, auxGenes: ckA } = await loadPredictor(engine, o.weights, {
      encoderWeights: o.encoderWeights,
      warn: (s) => !o.quiet && console.error(s),
    });
    try {
      const nT = model.config.targetGenes, nA = model.config.auxGenes;
      const targetGenes = await geneNames(o.targetGenes, ckT, nT, "target", o.quiet);
      const auxGenes = await geneNames(o.auxGenes, ckA, nA, "aux", o.quiet);
      const mode = o.spots ? "spots" : "tiles";
      const bar = new Progress(mode, patches.length, o.quiet);
      let shown = 0;
      t = addTime(timings, "setup", t);
      const { csv, ...out } = await predictSlidePatches(engine, model, slide, {
        patches,
        mode,
        patchPx,
        section: o.section ?? sectionOf(o.spots ?? path),
        batchSize: o.batchSize ?? 4,
        tta,
        stain,
        stainTarget,
        targetGenes,
        auxGenes,
        weights: o.weights,
        slideName: path,
        mpp: mpp?.x ?? null,
        csv: { aux: !o.noAuxCsv },
        signal: interruptSignal(),
        onProgress: (done) => {
          bar.tick(done - shown);
          shown = done;
        },
        onWarning: warn,
        timings,
      });
      bar.done();
      t = performance.now();
      await writeSlideOutputs(o.out, out, {
        h5ad: o.h5ad,
        compress: o.compress,
        csv,
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
export function slideH5ad(
  p: SlidePredictions,
  images?: SpatialImages,
): Promise<{ target: Uint8Array; aux: Uint8Array }> {
  return encodeSlideH5ad(p, {
    uns: { target: predictionUns("target", p), aux: predictionUns("aux", p) },
    images,
    software: SOFTWARE,
  });
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
    /** The three CSV texts when already formatted (as `slideCsvs` would write them); aux null: none. */
    csv?: SlideCsvs;
    /** Scanpy's slide images for the h5ad files (see {@linkcode spatialImages}). */
    images?: SpatialImages;
    /** A GeoJSON file for QuPath (anywhere; written and renamed with the rest). */
    geojson?: string;
  } = {},
): Promise<void> {
  const csv = o.csv ?? slideCsvs(p);
  const files: [string, string | Uint8Array][] = [
    ["target_count_pred.csv", csv.target],
    ...(csv.aux === null ? [] : [["aux_count_pred.csv", csv.aux] as [string, string]]),
    ["tumor_pred.csv", csv.tumor],
    ["predictions.npz", slideNpz(p, { compress: o.compress })],
  ];
  if (o.h5ad) {
    const h = await slideH5ad(p, o.images);
    files.push(["predictions.h5ad", h.target], ["predictions_aux.h5ad", h.aux]);
  }
  if (o.geojson) {
    // an absolute path: written where it says, not in `dir`
    files.push([resolve(o.geojson), slideGeoJson(p)]);
  }
  await writeFilesAtomic(dir, files, { signal: interruptSignal() });
}

/** Usage of `predict-slide` (for cli/main.ts). */
export const PREDICT_SLIDE_USAGE =
  "predict-slide SLIDE --weights CKPT (--spots FILE | --tile) [--out ./output] [--batch-size 4]\n" +
  "       [--tta single|tta|grid|grid_tta] [--crop-size 150 | --crop-um UM] [--tile-um 100 | --tile-px PX]\n" +
  "       [--min-tissue 0.5] [--max-tiles 100000] [--geojson FILE]\n" +
  "       [--stain none|macenko|reinhard] [--stain-ref IMAGE] [--section NAME] [--mpp MPP]\n" +
  "       [--scalefactors FILE] [--h5ad] [--encoder-weights FILE]\n" +
  "       [--target-genes FILE] [--aux-genes FILE] [--no-aux-csv] [--compress] [--tune cached|auto|off]\n" +
  "       [--quiet]\n\n" +
  "  SLIDE         SVS / TIFF / BigTIFF / JPEG / PNG\n" +
  "  --weights     model_base.pt / model_spat.pt or our .safetensors (also heads trained by train --encoder)\n" +
  "  --encoder-weights FILE  with heads trained on a frozen encoder: the encoder's weights (default: the\n" +
  "                path the checkpoint records; their size and fingerprint must match)\n" +
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

export function positiveNumber(v: string | undefined, flag: string, integer = false): number | undefined {
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
    encoderWeights: v["encoder-weights"],
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
