/**
 * `predict-slide` end to end: spots per second on her2st section C2 (the 9274 × 9911 H&E JPEG and the 187
 * spots of `C2_selection.tsv`) with a ResNet-50 HE2Gene-Base model (250 target genes, 19 699 aux genes,
 * random weights saved to a temp `.safetensors`), `--tta single`, batch 4 (the CLI default), no stain
 * normalisation, no h5ad — run through `pipeline/` as `predict-slide` runs it and broken into the stages
 * of `SLIDE_STAGES` (pipeline/predict_slide.ts), each with its share of the total so that the slowest
 * stage shows:
 * - `open`: `openSlide`, i.e. the libjpeg-turbo (WebAssembly) decode of the whole 92-megapixel JPEG;
 * - `setup`: spot file, checkpoint read + upload (≈ 260 MB), gene names;
 * - `read`: waiting for patches (the next batch is read while the GPU works; `readBusy` is reading's own
 *   time, hidden or not);
 * - `preprocess`: upload, resize to 224 + normalise (and the TTA views: one with `single`), GPU included;
 * - `model`: forward + mean over views + readback;
 * - `write`: three CSVs (the aux one: 19 699 columns; rows are formatted batch by batch while the GPU
 *   runs the next batch, `formatBusy`) and the npz.
 *
 * Two runs on the same engine: `cold`, the first batch (4 spots) alone, which also compiles the shaders,
 * then `warm`, all 187 spots (`quick`: the first 32), the measured one. Each run decodes the JPEG
 * again (as each `predict-slide` does).
 *
 * `--tta tta` (8 dihedral views, the CLI default) is not run: preprocess and model grow about 8×, 10 to
 * 20 minutes for C2 on llvmpipe (the table prints an estimate from the warm run). On llvmpipe (the GPU
 * emulated on a few CPU cores) the model dominates; on a real GPU the model stage is far smaller, and the
 * stages that are not the model (the JPEG decode, patch reads, output writing, all on the CPU) must not
 * become the bottleneck there — read their absolute times, not only their shares. Without
 * `../shared/data` the suite is skipped with a note.
 *
 * Run alone: `deno run -A bench/predict_slide.ts [--quick] [--json]`.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { createEngine, type Engine } from "../mod.ts";
import { HE2Gene, RESNET50 } from "../model/mod.ts";
import { writeSafetensors } from "../weights/mod.ts";
import { parseSpots, type SpotRow } from "../slide/spots.ts";
import { openSlide } from "../slide/wsi.ts";
import { prepareOutputDir, writeFilesAtomic } from "../slide/npz.ts";
import {
  loadCheckpoint,
  modelCheckpoint,
  predictSlide,
  SLIDE_STAGES,
  slideNpz,
  spotPatches,
} from "../pipeline/mod.ts";
import { exists } from "../slide/datasets/types.ts";
import { defaultDataDir } from "./slide.ts";

/** One run of predict-slide. */
export interface PredictSlideRow {
  /** `cold` (first batch, compiles the shaders) or `warm` (the measured run); `skipped` without data. */
  run: "cold" | "warm" | "skipped";
  spots: number;
  tta: "single";
  batchSize: number;
  /** Wall time of `predictSlide`, ms. */
  totalMs: number;
  spotsPerSecond: number;
  /** Milliseconds per stage (`SLIDE_STAGES`), plus `other` (total − their sum). */
  stages: Record<string, number>;
  /** Time spent reading patches, hidden behind the GPU or not (not part of the sum). */
  readBusyMs: number;
  /** Time spent formatting CSV rows while the GPU runs the next batch (not part of the sum). */
  formatBusyMs: number;
  note?: string;
}

/** Options of {@linkcode benchPredictSlide}. */
export interface PredictSlideBenchOptions {
  quick: boolean;
  log: (s: string) => void;
  /** The shared data folder (default `../shared/data` beside the project root). */
  dataDir?: string;
}

const C2_DIR = "her2st/data/ST-imgs/C/C2";
const C2_SPOTS = "her2st/data/ST-spotfiles/C2_selection.tsv";
const BATCH = 4;
const QUICK_SPOTS = 32;
const C2_SPOT_COUNT = 187;

/**
 * What `predict-slide C2.jpg --spots C2_selection.tsv --section C2 --tta single --batch-size 4` does, over
 * the first `count` spots, through `pipeline/`, each stage timed as {@linkcode SLIDE_STAGES} says: open the
 * JPEG, place the spots and load the checkpoint (setup), predict (read, preprocess, model; CSV rows
 * formatted during prediction), write the CSVs and the npz.
 */
async function predictC2(
  engine: Engine,
  o: {
    slide: string;
    spotFile: string;
    count: number;
    weights: string;
    timings: Record<string, number>;
    out: string;
  },
): Promise<{ names: string[] }> {
  const timings = o.timings;
  const stage = (key: string, since: number) => {
    const now = performance.now();
    timings[key] = (timings[key] ?? 0) + now - since;
    return now;
  };
  let t = performance.now();
  const slide = await openSlide(o.slide);
  t = stage("open", t);
  try {
    const spots: SpotRow[] = parseSpots(await Deno.readTextFile(o.spotFile), o.spotFile).slice(0, o.count);
    const [W, H] = [slide.levels[0].width, slide.levels[0].height];
    const { patches } = spotPatches(spots, o.spotFile, { section: "C2", size: 150, width: W, height: H });
    await prepareOutputDir(o.out);
    const { model, targetGenes, auxGenes } = loadCheckpoint(
      engine,
      await Deno.readFile(o.weights),
      o.weights,
    );
    try {
      t = stage("setup", t);
      const { csv, ...p } = await predictSlide(engine, model, slide, {
        patches,
        mode: "spots",
        patchPx: 150,
        section: "C2",
        batchSize: BATCH,
        tta: "single",
        targetGenes,
        auxGenes,
        weights: o.weights,
        csv: { aux: true },
        timings,
      });
      t = performance.now();
      await writeFilesAtomic(o.out, [
        ["target_count_pred.csv", csv!.target],
        ["aux_count_pred.csv", csv!.aux!],
        ["tumor_pred.csv", csv!.tumor],
        ["predictions.npz", slideNpz(p)],
      ]);
      stage("write", t);
      return p;
    } finally {
      model.dispose();
    }
  } finally {
    slide.close();
  }
}

/** Run the predict-slide benchmark (see the module doc). */
export async function benchPredictSlide(
  engine: Engine,
  opts: PredictSlideBenchOptions,
): Promise<PredictSlideRow[]> {
  const data = opts.dataDir ?? defaultDataDir();
  const imgDir = join(data, C2_DIR), spotFile = join(data, C2_SPOTS);
  const skip = (note: string): PredictSlideRow[] => {
    opts.log(`predict-slide: skipped — ${note}`);
    return [{
      run: "skipped",
      spots: 0,
      tta: "single",
      batchSize: BATCH,
      totalMs: NaN,
      spotsPerSecond: NaN,
      stages: {},
      readBusyMs: NaN,
      formatBusyMs: NaN,
      note,
    }];
  };
  if (!(await exists(imgDir)) || !(await exists(spotFile))) {
    return skip(`needs ${imgDir} and ${spotFile} (no shared data there: --data DIR)`);
  }
  const jpg = [...Deno.readDirSync(imgDir)].find((f) => f.name.endsWith(".jpg"));
  if (!jpg) return skip(`no .jpg in ${imgDir}`);
  const slide = join(imgDir, jpg.name);
  const dir = await Deno.makeTempDir({ prefix: "he2gene-bench-pslide-" });
  try {
    let t0 = performance.now();
    const model = HE2Gene.init(
      engine,
      { backbone: RESNET50, variant: "base", targetGenes: 250, auxGenes: 19699 },
      7,
    );
    const weights = join(dir, "resnet50_base.safetensors");
    const { tensors, metadata } = await modelCheckpoint(model);
    await writeSafetensors(weights, tensors, { metadata });
    model.dispose();
    opts.log(
      `… ResNet-50 HE2Gene-Base, random weights → ${weights} ` +
        `(${((await Deno.stat(weights)).size / 2 ** 20).toFixed(0)} MiB, ${
          ((performance.now() - t0) / 1000).toFixed(1)
        } s)`,
    );
    const rows: PredictSlideRow[] = [];
    for (const [run, count] of [["cold", BATCH], ["warm", opts.quick ? QUICK_SPOTS : Infinity]] as const) {
      const timings: Record<string, number> = {};
      opts.log(`… predict-slide C2, ${run} run (${count === Infinity ? "all spots" : `${count} spots`})`);
      t0 = performance.now();
      const p = await predictC2(engine, {
        slide,
        spotFile,
        count,
        weights,
        timings,
        out: join(dir, `out-${run}`),
      });
      const totalMs = performance.now() - t0;
      const stages: Record<string, number> = {};
      let sum = 0;
      for (const s of SLIDE_STAGES) {
        stages[s] = timings[s] ?? 0;
        sum += stages[s];
      }
      stages.other = Math.max(0, totalMs - sum);
      const n = p.names.length;
      rows.push({
        run,
        spots: n,
        tta: "single",
        batchSize: BATCH,
        totalMs,
        spotsPerSecond: n / (totalMs / 1000),
        stages,
        readBusyMs: timings.readBusy ?? 0,
        formatBusyMs: timings.formatBusy ?? 0,
        note: run === "cold" ? "first batch alone; includes shader compilation" : undefined,
      });
    }
    return rows;
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

const f1 = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : "–");

/** ", about N min for all 187 spots of C2 here", from the warm run (linear in spots per stage). */
function ttaEstimate(rows: PredictSlideRow[]): string {
  const w = rows.find((r) => r.run === "warm");
  if (!w) return "";
  const perSpot = (8 * (w.stages.preprocess + w.stages.model) + w.stages.read + w.stages.write) / w.spots;
  const ms = w.stages.open + w.stages.setup + perSpot * C2_SPOT_COUNT;
  return `, about ${(ms / 60000).toFixed(0)} min for all ${C2_SPOT_COUNT} spots of C2 on this adapter`;
}

/** Print the stage table of each run, the slowest stage marked, and what to read from it. */
export function printPredictSlideTable(rows: PredictSlideRow[], log: (s: string) => void): void {
  for (const r of rows) {
    if (r.run === "skipped") {
      log(`skipped: ${r.note}`);
      continue;
    }
    log(
      `\n${r.run}: ${r.spots} spots, --tta ${r.tta}, batch ${r.batchSize}: ${f1(r.totalMs / 1000)} s, ` +
        `${r.spotsPerSecond.toFixed(2)} spots/s${r.note ? ` (${r.note})` : ""}`,
    );
    const names = Object.keys(r.stages);
    const slowest = names.reduce((a, b) => (r.stages[b] > r.stages[a] ? b : a));
    const head = ["stage", "ms", "ms/spot", "share", ""];
    const lines = names.map((s) => {
      const ms = r.stages[s], share = ms / r.totalMs;
      return [
        s,
        ms.toFixed(0),
        (ms / r.spots).toFixed(1),
        `${(100 * share).toFixed(1)}%`,
        "█".repeat(Math.round(share * 40)) + (s === slowest ? " ◀ slowest" : ""),
      ];
    });
    lines.push(["total", r.totalMs.toFixed(0), (r.totalMs / r.spots).toFixed(1), "100.0%", ""]);
    const widths = head.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
    const fmt = (l: string[]) =>
      l.map((c, i) => (i === 0 || i === 4 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ")
        .trimEnd();
    log(fmt(head));
    log(widths.slice(0, 4).map((w) => "-".repeat(w)).join("  "));
    for (const l of lines) log(fmt(l));
    log(
      `(formatting CSV rows took ${r.formatBusyMs.toFixed(0)} ms, done while the GPU runs the next batch: ` +
        `it shows in \`preprocess\` when timed, the last batch's in \`write\`; reads span ` +
        `${r.readBusyMs.toFixed(0)} ms of wall time, other work included, and \`read\` counts what the GPU ` +
        `work did not hide)`,
    );
  }
  if (rows.some((r) => r.run !== "skipped")) {
    log(
      "\nopen = libjpeg-turbo decode of the whole C2 JPEG; setup = checkpoint read + upload; preprocess = " +
        "upload + resize + views (GPU synced before the model, only when timing); model = forward + " +
        "readback; write = CSVs + npz.\n" +
        `--tta tta (8 views, the CLI default) is not run: preprocess + model grow ~8×${
          ttaEstimate(rows)
        }.\n` +
        "On llvmpipe (a CPU-emulated GPU) the model dominates. On a real GPU it shrinks by orders of " +
        "magnitude, so the other stages (CPU work: decode, reads, CSV writing) must not dominate there: " +
        "judge them by their absolute ms, not their share here.",
    );
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      quick: { type: "boolean", default: false },
      json: { type: "boolean", default: false },
    },
    strict: true,
  });
  const log = (s: string) => (values.json ? console.error(s) : console.log(s));
  const e = await createEngine();
  log(`adapter: ${e.adapterInfo.name}${e.adapterInfo.software ? " (software)" : ""}`);
  const rows = await benchPredictSlide(e, { quick: values.quick, log });
  if (values.json) console.log(JSON.stringify({ adapter: e.adapterInfo, predictSlide: rows }, null, 2));
  else printPredictSlideTable(rows, console.log);
  e.destroy();
}
