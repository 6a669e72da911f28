/**
 * `he2gene predict-patches DIR --weights CKPT`: HE2Gene's `patch_pred.py` on any WebGPU adapter.
 *
 * Every patch `{section}_{x}_{y}.{tif,png,jpg}` in DIR (its name: the file name up to the first `.`; two
 * files of one name, such as `X.tif` and `X.png`, are refused) is decoded, resized to 224 × 224 with PIL's
 * bilinear arithmetic and normalised on the GPU, and predicted in batches; with test-time augmentation
 * the predictions (and the tumour probability) are averaged over the views:
 * - `single`: the patch;
 * - `tta` (default, as the original): the 8 dihedral symmetries of the resized patch;
 * - `grid`: centred crops of 150, 75 and 225 px, where the patch is large enough;
 * - `grid_tta`: each crop × 8 symmetries.
 *
 * Outputs in `--out`: `target_count_pred.csv`, `aux_count_pred.csv`, `tumor_pred.csv` (the original's
 * format: index = patch name, `Annotation` = mean probability > 0.5) and `predictions.npz`; with `--h5ad`,
 * `predictions.h5ad` (X = target genes) and `predictions_aux.h5ad` (X = aux genes), `obs` = `tumor_prob`
 * and `tumor` (boolean), `uns` = {@linkcode predictionUns}'s and `patches` (the folder's name); no spatial
 * layout, as patches have no slide. Files are written under temporary names and renamed at the end, so a
 * failure leaves none behind.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { basename, extname, join, resolve } from "node:path";
import { createEngine, type Engine } from "../engine/engine.ts";
import { prepareOutputDir, writeFilesAtomic } from "../slide/npz.ts";
import { readGeneList } from "../slide/genes.ts";
import type { UnsValue } from "../slide/h5ad.ts";
import {
  patchCsvs,
  patchesH5ad as encodePatchesH5ad,
  patchNpz,
  type PatchPredictions,
  predictPatches as predictPatchImages,
} from "../pipeline/predict_patches.ts";
import { loadPredictor } from "./train_encoder.ts";
import { Progress } from "./progress.ts";
import { checkInputs, interruptSignal, UsageError } from "./errors.ts";
import { HE2GENE_VERSION, parseTuneMode, prepareTuning, type TuneMode } from "./tune.ts";
import { PREDICT_OPTIONS, predictArgs, type Tta, viewBoxes } from "./views.ts";

export { type PatchPredictions, type Tta, viewBoxes };
const EXTENSIONS = new Set([".tif", ".tiff", ".png", ".jpg", ".jpeg"]);

/** Options of {@linkcode predictPatches}. */
export interface PredictPatchesOptions {
  weights: string;
  /** Heads trained on a frozen encoder: its weights (default: the path their checkpoint records). */
  encoderWeights?: string;
  out: string;
  batchSize: number;
  tta: Tta;
  targetGenes?: string;
  auxGenes?: string;
  /** Also write predictions.h5ad and predictions_aux.h5ad. */
  h5ad?: boolean;
  quiet?: boolean;
  /** Deflate the members of `predictions.npz` (`np.savez_compressed`); default stored (`np.savez`). */
  compress?: boolean;
  /** Kernel variants (`--tune`; default cached). Ignored when `engine` is given (its table stays). */
  tune?: TuneMode;
  engine?: Engine;
}

/**
 * Predict every patch of `dir` (see the module doc), write the outputs, and return them.
 *
 * @example
 * ```ts
 * await predictPatches("patches/", { weights: "model_base.pt", out: "output", batchSize: 4, tta: "tta" });
 * ```
 */
export async function predictPatches(dir: string, o: PredictPatchesOptions): Promise<PatchPredictions> {
  const files = (await listPatches(dir)).map((p) => p.file);
  await prepareOutputDir(o.out);

  const engine = o.engine ?? await createEngine();
  if (!o.engine) {
    const said = await prepareTuning(engine, o.tune ?? "cached", (s) => !o.quiet && console.error(s));
    if (!o.quiet) console.error(said);
  }
  const { model, targetGenes: ckT, auxGenes: ckA } = await loadPredictor(engine, o.weights, {
    encoderWeights: o.encoderWeights,
    warn: (s) => !o.quiet && console.error(s),
  });
  try {
    const nT = model.config.targetGenes, nA = model.config.auxGenes;
    const targetGenes = await geneNames(o.targetGenes, ckT, nT, "target", o.quiet);
    const auxGenes = await geneNames(o.auxGenes, ckA, nA, "aux", o.quiet);
    // Each patch is read when its batch comes; a read error names the file.
    const images = files.map((f) => {
      const path = join(dir, f);
      return {
        name: patchName(f),
        bytes: async () => {
          try {
            return await Deno.readFile(path);
          } catch (e) {
            throw new Error(`Cannot read patch ${path}: ${(e as Error).message}`);
          }
        },
      };
    });
    const pathOf = new Map(files.map((f) => [patchName(f), join(dir, f)]));
    const bar = new Progress("patches", files.length, o.quiet);
    let shown = 0;
    const out = await predictPatchImages(engine, model, images, {
      tta: o.tta,
      batchSize: o.batchSize,
      targetGenes,
      auxGenes,
      signal: interruptSignal(),
      onProgress: (done) => {
        bar.tick(done - shown);
        shown = done;
      },
      onWarning: (_, m) => !o.quiet && console.error(`warning: ${m}`),
      label: (name) => pathOf.get(name)!,
    });
    bar.done();
    await writeOutputs(o.out, out, {
      compress: o.compress,
      ...(o.h5ad ? { h5ad: { weights: o.weights, tta: o.tta, patches: dir } } : {}),
    });
    return out;
  } finally {
    model.dispose();
    if (!o.engine) engine.destroy();
  }
}

/**
 * The patches of `dir` (.tif, .tiff, .png, .jpg, .jpeg), sorted by file name, with their names in the
 * outputs; an unreadable or empty folder, or two files of one name, is an error naming it.
 */
export async function listPatches(dir: string): Promise<{ name: string; file: string }[]> {
  const files: string[] = [];
  try {
    for await (const ent of Deno.readDir(dir)) {
      if (ent.isFile && EXTENSIONS.has(extname(ent.name).toLowerCase())) files.push(ent.name);
    }
  } catch (e) {
    throw new Error(`Cannot read the patch folder ${dir}: ${(e as Error).message}`);
  }
  files.sort();
  if (files.length === 0) throw new Error(`No patches (.tif, .png, .jpg) in ${dir}`);
  checkPatchNames(dir, files);
  return files.map((file) => ({ name: patchName(file), file }));
}

/** A patch's name in the outputs: its file name up to the first `.` (`C2_25_13.tif` → `C2_25_13`). */
function patchName(file: string): string {
  return basename(file).split(".")[0];
}

/**
 * Refuse a folder where two patch files get the same name in the outputs (`X.tif` and `X.png`, or
 * `X.tif` and `X.old.tif`): their rows would be indistinguishable. The message names the files.
 */
function checkPatchNames(dir: string, files: string[]): void {
  const byName = new Map<string, string[]>();
  for (const f of files) byName.set(patchName(f), [...(byName.get(patchName(f)) ?? []), f]);
  const clashes = [...byName].filter(([, fs]) => fs.length > 1);
  if (clashes.length === 0) return;
  const shown = clashes.slice(0, 5).map(([n, fs]) =>
    `${fs.map((f) => join(dir, f)).join(" and ")} (both "${n}")`
  );
  throw new Error(
    `Cannot predict the patches in ${dir}: ${clashes.length} patch name${
      clashes.length > 1 ? "s are" : " is"
    } ` +
      `shared by several files, so their rows could not be told apart: ${shown.join("; ")}` +
      `${clashes.length > 5 ? "; …" : ""}. Keep one file per patch name (the name is the file name up to ` +
      `the first ".")`,
  );
}

/** Gene names for a head: from FILE, else the checkpoint's metadata, else `what_0…` (with a warning). */
export async function geneNames(
  file: string | undefined,
  fromCheckpoint: string[] | undefined,
  n: number,
  what: string,
  quiet?: boolean,
): Promise<string[]> {
  const names = (file ? await readGeneList(file, `--${what}-genes`) : undefined) ?? fromCheckpoint;
  if (names) {
    if (names.length !== n) {
      throw new RangeError(
        `The ${what} gene list ${file ?? "(checkpoint metadata)"} has ${names.length} names, ` +
          `but the checkpoint's ${what} head predicts ${n} genes`,
      );
    }
    return names;
  }
  if (!quiet) {
    console.error(
      `warning: no ${what} gene names (--${what}-genes FILE); columns are ${what}_0 … ${what}_${n - 1}`,
    );
  }
  return Array.from({ length: n }, (_, i) => `${what}_${i}`);
}

/** he2gene and its version, as the h5ad files record it. */
export const SOFTWARE = `he2gene ${HE2GENE_VERSION}`;

/**
 * The `uns` entries of every h5ad file of predictions: `X_description` (X holds predicted log1p(1e4 · count
 * / total), HE2Gene's normalisation, as scanpy's `normalize_total` + `log1p`), `log1p` (as `sc.pp.log1p`
 * leaves it, so scanpy knows X is log-transformed: natural log), `head` (`target` / `aux`), `model` (the
 * checkpoint's file name), `tta` and `software`.
 *
 * @example
 * ```ts
 * const uns = predictionUns("target", { weights: "weights/model_base.pt", tta: "tta" });
 * console.log(uns.model); // "model_base.pt"
 * ```
 */
export function predictionUns(
  head: "target" | "aux",
  o: { weights: string; tta: Tta },
): Record<string, UnsValue> {
  return {
    X_description: `predicted log1p(1e4 * count / total) expression of HE2Gene's ${head} genes ` +
      `(scanpy's normalize_total(target_sum=1e4) + log1p)`,
    log1p: { base: Math.E }, // sc.pp.log1p's default base None is e
    head,
    model: basename(o.weights),
    tta: o.tta,
    software: SOFTWARE,
  };
}

/** The AnnData files of patch predictions: X = target genes, and X = aux genes in the second. */
export function patchesH5ad(
  p: PatchPredictions,
  o: { weights: string; tta: Tta; patches: string },
): Promise<{ target: Uint8Array; aux: Uint8Array }> {
  const uns = (head: "target" | "aux"): Record<string, UnsValue> => ({
    ...predictionUns(head, o),
    patches: basename(resolve(o.patches)),
  });
  return encodePatchesH5ad(p, { target: uns("target"), aux: uns("aux") });
}

/**
 * Write the three CSVs and `predictions.npz`, and with `h5ad` the two AnnData files (temporary names, then
 * renamed together); `compress` deflates the npz's members.
 */
export async function writeOutputs(
  dir: string,
  p: PatchPredictions,
  o: { compress?: boolean; h5ad?: { weights: string; tta: Tta; patches: string } } = {},
): Promise<void> {
  const files: [string, string | Uint8Array][] = [
    ...Object.entries(patchCsvs(p)),
    ["predictions.npz", patchNpz(p, { compress: o.compress })],
  ];
  if (o.h5ad) {
    const h = await patchesH5ad(p, o.h5ad);
    files.push(["predictions.h5ad", h.target], ["predictions_aux.h5ad", h.aux]);
  }
  await writeFilesAtomic(dir, files, { signal: interruptSignal() });
}

/** CLI entry: parse arguments and run. */
export async function runPredictPatches(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    options: { ...PREDICT_OPTIONS, h5ad: { type: "boolean", default: false } },
    allowPositionals: true,
    strict: true,
  });
  if (positionals.length !== 1) throw new UsageError("expected one patch folder (DIR)");
  const { weights, tta, batchSize } = predictArgs(values);
  await checkInputs([
    ["the patch folder", positionals[0], "folder"],
    ["--weights", weights, "file"],
    ["--target-genes", values["target-genes"], "file"],
    ["--aux-genes", values["aux-genes"], "file"],
  ]);
  const t0 = performance.now();
  const p = await predictPatches(positionals[0], {
    weights,
    encoderWeights: values["encoder-weights"],
    out: values.out!,
    batchSize,
    tta,
    targetGenes: values["target-genes"],
    auxGenes: values["aux-genes"],
    h5ad: values.h5ad,
    quiet: values.quiet,
    compress: values.compress,
    tune: parseTuneMode(values.tune),
  });
  console.log(
    `${p.names.length} patches (${tta}) in ${
      ((performance.now() - t0) / 1000).toFixed(1)
    } s → ${values.out}/` +
      `{target_count_pred.csv, aux_count_pred.csv, tumor_pred.csv, predictions.npz` +
      `${values.h5ad ? ", predictions.h5ad, predictions_aux.h5ad" : ""}}`,
  );
}
