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
 * format: index = patch name, `Annotation` = mean probability > 0.5) and `predictions.npz`. Files are
 * written under temporary names and renamed at the end, so a failure leaves none behind.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { basename, extname, join } from "node:path";
import { createEngine, type Engine } from "../engine/engine.ts";
import { decodeImage, type RgbImage } from "../slide/mod.ts";
import { csvTable, encodeNpz, prepareOutputDir, writeFilesAtomic } from "../slide/npz.ts";
import { readGeneList } from "../slide/genes.ts";
import { loadModel } from "./checkpoint.ts";
import { Progress } from "./progress.ts";
import { checkInputs, checkInterrupt, interruptSignal, UsageError } from "./errors.ts";
import { parseTuneMode, prepareTuning, type TuneMode } from "./tune.ts";
import { PREDICT_OPTIONS, predictArgs, predictViews, type Tta, viewBoxes } from "./views.ts";

export { type Tta, viewBoxes };
const EXTENSIONS = new Set([".tif", ".tiff", ".png", ".jpg", ".jpeg"]);

/** Options of {@linkcode predictPatches}. */
export interface PredictPatchesOptions {
  weights: string;
  out: string;
  batchSize: number;
  tta: Tta;
  targetGenes?: string;
  auxGenes?: string;
  quiet?: boolean;
  /** Deflate the members of `predictions.npz` (`np.savez_compressed`); default stored (`np.savez`). */
  compress?: boolean;
  /** Kernel variants (`--tune`; default cached). Ignored when `engine` is given (its table stays). */
  tune?: TuneMode;
  engine?: Engine;
}

/** Predictions for a set of patches, on the host. */
export interface PatchPredictions {
  names: string[];
  targetGenes: string[];
  auxGenes: string[];
  /** (P, targetGenes) */
  target: Float32Array;
  /** (P, auxGenes) */
  aux: Float32Array;
  /** (P,) mean tumour probability over the views */
  tumorProb: Float32Array;
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
  await prepareOutputDir(o.out);

  const engine = o.engine ?? await createEngine();
  if (!o.engine) {
    const said = await prepareTuning(engine, o.tune ?? "cached", (s) => !o.quiet && console.error(s));
    if (!o.quiet) console.error(said);
  }
  const { model, targetGenes: ckT, auxGenes: ckA } = await loadModel(engine, o.weights);
  try {
    const nT = model.config.targetGenes, nA = model.config.auxGenes;
    const targetGenes = await geneNames(o.targetGenes, ckT, nT, "target", o.quiet);
    const auxGenes = await geneNames(o.auxGenes, ckA, nA, "aux", o.quiet);
    const P = files.length;
    const out: PatchPredictions = {
      names: files.map(patchName),
      targetGenes,
      auxGenes,
      target: new Float32Array(P * nT),
      aux: new Float32Array(P * nA),
      tumorProb: new Float32Array(P),
    };
    const bar = new Progress("patches", P, o.quiet);
    for (let b0 = 0; b0 < P; b0 += o.batchSize) {
      const batch = files.slice(b0, b0 + o.batchSize);
      const images: RgbImage[] = [];
      for (const f of batch) {
        const path = join(dir, f);
        let img: RgbImage;
        try {
          img = decodeImage(await Deno.readFile(path), path);
        } catch (e) {
          // The decoder's message names the file too ("Cannot decode PATH[ as FORMAT]: …"): say it once.
          const m = (e as Error).message, head = `Cannot decode ${path}`;
          const why = m.startsWith(head) ? m.slice(head.length).replace(/^( as \w+)?:\s*/, "") : m;
          throw new Error(`Cannot read patch ${path}: ${why}`);
        }
        for (const w of img.warnings) if (!o.quiet) console.error(`warning: ${path}: ${w}`);
        if ((img.width !== 150 || img.height !== 150) && !o.quiet) {
          console.error(
            `warning: ${path} is ${img.width}×${img.height}, not 150×150; resized to 224 as the original`,
          );
        }
        images.push(img);
      }
      // Patches of one size go through the GPU together.
      const bySize = new Map<string, number[]>();
      images.forEach((img, i) => {
        const key = `${img.width}x${img.height}`;
        bySize.set(key, [...(bySize.get(key) ?? []), i]);
      });
      for (const idx of bySize.values()) {
        const res = await predictViews(engine, model, idx.map((i) => images[i]), {
          tta: o.tta,
          names: idx.map((i) => join(dir, batch[i])), // a NaN / Inf output is an error naming the patch
        });
        idx.forEach((i, j) => {
          const p = b0 + i;
          out.target.set(res.target.subarray(j * nT, (j + 1) * nT), p * nT);
          out.aux.set(res.aux.subarray(j * nA, (j + 1) * nA), p * nA);
          out.tumorProb[p] = res.tumor[j];
        });
      }
      bar.tick(batch.length);
      checkInterrupt();
    }
    bar.done();
    await writeOutputs(o.out, out, { compress: o.compress });
    return out;
  } finally {
    model.dispose();
    if (!o.engine) engine.destroy();
  }
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

/**
 * Write the three CSVs and `predictions.npz` (temporary names, then renamed together); `compress` deflates
 * the npz's members.
 */
export async function writeOutputs(
  dir: string,
  p: PatchPredictions,
  o: { compress?: boolean } = {},
): Promise<void> {
  const P = p.names.length;
  const files: [string, string | Uint8Array][] = [
    ["target_count_pred.csv", csvTable(p.names, p.targetGenes, p.target)],
    ["aux_count_pred.csv", csvTable(p.names, p.auxGenes, p.aux)],
    ["tumor_pred.csv", csvTable(p.names, ["Annotation"], Array.from(p.tumorProb, (v) => v > 0.5))],
    [
      "predictions.npz",
      encodeNpz({
        target: { dtype: "f4", shape: [P, p.targetGenes.length], data: p.target },
        aux: { dtype: "f4", shape: [P, p.auxGenes.length], data: p.aux },
        tumor_prob: { dtype: "f4", shape: [P], data: p.tumorProb },
        names: { dtype: "U", shape: [P], data: p.names },
        target_genes: { dtype: "U", shape: [p.targetGenes.length], data: p.targetGenes },
        aux_genes: { dtype: "U", shape: [p.auxGenes.length], data: p.auxGenes },
      }, { compress: o.compress }),
    ],
  ];
  await writeFilesAtomic(dir, files, { signal: interruptSignal() });
}

/** CLI entry: parse arguments and run. */
export async function runPredictPatches(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    options: PREDICT_OPTIONS,
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
    out: values.out!,
    batchSize,
    tta,
    targetGenes: values["target-genes"],
    auxGenes: values["aux-genes"],
    quiet: values.quiet,
    compress: values.compress,
    tune: parseTuneMode(values.tune),
  });
  console.log(
    `${p.names.length} patches (${tta}) in ${
      ((performance.now() - t0) / 1000).toFixed(1)
    } s → ${values.out}/` +
      `{target_count_pred.csv, aux_count_pred.csv, tumor_pred.csv, predictions.npz}`,
  );
}
