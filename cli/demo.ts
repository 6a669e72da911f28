/**
 * `deno task demo`: HE2Gene end to end on built-in data, on whatever adapter this machine has.
 *
 * 1. Generate a synthetic spatial section (slide/synthetic.ts): H&E-like tissue with a tumour region whose
 *    morphology differs, counts tied to the morphology, spots on a 16 × 16 grid.
 * 2. Normalise counts (log1p(1e4 · count / spot total)); target genes = the 10 highest by mean, aux = the rest.
 * 3. Train the `tiny` backbone with the spatial constraint (HE2Gene-Spat) on the left 10 columns for a fixed
 *    number of epochs ({@linkcode DEMO_EPOCHS}; no time budget, no early stopping, so the figures and the
 *    PNG do not depend on the machine's speed), keep the epoch with the best validation MSE on the next 2
 *    columns, predict the right 4 columns held out. After each epoch it prints the time left for the run.
 * 4. Print the Pearson r reached (and the tumour AUC) next to a mean-expression baseline, write
 *    `predictions.npz` and gene-map PNGs into `--out` (default `output/demo`; the training writes
 *    `best.safetensors`, `checkpoint.safetensors` and `log.jsonl` there too), and say how to run on real data.
 *
 * @module
 */
import { join } from "node:path";
import { parseArgs } from "node:util";
import { createEngine } from "../engine/engine.ts";
import { TINY } from "../model/resnet.ts";
import { pearsonPerGene, rocAuc } from "../model/metrics.ts";
import { cropPatch, syntheticSection } from "../slide/synthetic.ts";
import { encodeNpz, writeAtomic } from "../slide/npz.ts";
import { geneMapPng } from "../slide/png.ts";
import { type EpochLog, predictTable, type SpotTable, trainModel } from "./train_loop.ts";
import { fmtTime } from "./progress.ts";
import { UsageError } from "./errors.ts";

/** Epochs the demo trains: a fixed number, so that what it reports does not depend on the machine. */
export const DEMO_EPOCHS = 15;

/** Demo options (the CLI's defaults: `output/demo`, {@linkcode DEMO_EPOCHS}). */
export interface DemoOptions {
  out?: string;
  epochs?: number;
  quiet?: boolean;
}

/** The files the demo leaves in its folder (the gene maps are named by the first target gene). */
export function demoFiles(gene: string): string[] {
  return [
    "predictions.npz",
    `gene_map_${gene}.png`,
    `gene_map_${gene}_truth.png`,
    "best.safetensors",
    "checkpoint.safetensors",
    "log.jsonl",
  ];
}

/** Usage of `demo` (for cli/main.ts). */
export const DEMO_USAGE = `demo [--out output/demo] [--epochs ${DEMO_EPOCHS}]

  --out     folder of predictions.npz, gene_map_<gene>.png, gene_map_<gene>_truth.png, best.safetensors,
            checkpoint.safetensors, log.jsonl (default output/demo; \`deno task demo\` may write only under
            output/, \`deno task he2gene demo --out DIR\` anywhere)
  --epochs  training epochs (default ${DEMO_EPOCHS}: the README's figures; no time budget, no early stop)`;

/** CLI entry: parse arguments and run. */
export async function runDemoCli(args: string[]): Promise<void> {
  const { values: v } = parseArgs({
    args,
    options: { out: { type: "string", default: "output/demo" }, epochs: { type: "string" } },
    strict: true,
    allowPositionals: false,
  });
  const epochs = v.epochs === undefined ? DEMO_EPOCHS : Number(v.epochs);
  if (!Number.isInteger(epochs) || epochs < 1) {
    throw new UsageError(`--epochs must be a positive integer, current value is ${v.epochs}`);
  }
  if (!v.out.trim()) throw new UsageError("--out must name a folder, current value is empty");
  await runDemo({ out: v.out, epochs });
}

const log1p = (counts: Float32Array, spots: number, genes: number) => {
  const out = new Float32Array(counts.length);
  for (let s = 0; s < spots; s++) {
    let total = 0;
    for (let g = 0; g < genes; g++) total += counts[s * genes + g];
    for (let g = 0; g < genes; g++) {
      out[s * genes + g] = Math.log1p((1e4 * counts[s * genes + g]) / Math.max(total, 1));
    }
  }
  return out;
};

/** Run the demonstration; returns the held-out mean Pearson r. */
export async function runDemo(o: DemoOptions = {}): Promise<{ pearson: number; auc: number }> {
  const t0 = performance.now();
  const out = o.out ?? "output/demo";
  const epochs = o.epochs ?? DEMO_EPOCHS;
  const engine = await createEngine();
  const a = engine.adapterInfo;
  const say = (s: string) => o.quiet || console.log(s);
  say(`he2gene demo — HE2Gene on WebGPU (Chen et al., Bioinformatics 2024)`);
  say(`adapter: ${a.name}${a.software ? " (software adapter: CPU speed)" : ""}; backend: ${a.backend}`);

  const sec = syntheticSection({ rows: 16, cols: 16, spacing: 40, genes: 40, seed: 3 });
  const S = sec.spots.length, G = sec.genes.length;
  const expr = log1p(sec.counts, S, G);
  const means = sec.genes.map((_, g) => {
    let m = 0;
    for (let s = 0; s < S; s++) m += expr[s * G + g];
    return m / S;
  });
  const order = [...sec.genes.keys()].sort((x, y) => means[y] - means[x]);
  const tIdx = order.slice(0, 10), aIdx = order.slice(10);
  say(
    `synthetic section: ${sec.image.width}×${sec.image.height} px, ${S} spots on a 16×16 grid, ${G} genes ` +
      `(10 target, ${aIdx.length} auxiliary), tumour in ${sec.spots.filter((s) => s.tumor).length} spots`,
  );
  const table = (keep: (c: number) => boolean): SpotTable => {
    const idx = [...sec.spots.keys()].filter((i) => keep(sec.spots[i].array[0]));
    const pick = (genes: number[]) => {
      const v = new Float32Array(idx.length * genes.length);
      idx.forEach((s, r) => genes.forEach((g, j) => (v[r * genes.length + j] = expr[s * G + g])));
      return v;
    };
    return {
      names: idx.map((i) => `SYN_${sec.spots[i].array[0]}_${sec.spots[i].array[1]}`),
      sections: idx.map(() => "SYN"),
      grid: idx.map((i) => sec.spots[i].array),
      patches: idx.map((i) =>
        cropPatch(sec.image, sec.spots[i].pixel[0], sec.spots[i].pixel[1], sec.spacing)
      ),
      targetGenes: tIdx.map((g) => sec.genes[g]),
      auxGenes: aIdx.map((g) => sec.genes[g]),
      target: pick(tIdx),
      aux: pick(aIdx),
      tumor: Int8Array.from(idx, (i) => (sec.spots[i].tumor ? 1 : 0)),
    };
  };
  const train = table((c) => c < 10), val = table((c) => c === 10 || c === 11), test = table((c) => c >= 12);
  say(
    `training tiny HE2Gene-Spat on ${train.names.length} spots, validating on ${val.names.length}, ` +
      `holding out ${test.names.length}, for ${epochs} epochs …`,
  );
  // The time left for the whole run after each epoch: the epochs left at the mean time of those done (the
  // first one apart once there are others: it compiles the kernels); predicting the held-out spots after
  // them takes about one validation pass, a small part of an epoch.
  const tTrain = performance.now(), took: number[] = [];
  const onEpoch = (log: EpochLog) => {
    took.push((performance.now() - tTrain) / 1000 - took.reduce((a, b) => a + b, 0));
    const recent = took.length > 1 ? took.slice(1) : took;
    const per = recent.reduce((a, b) => a + b, 0) / recent.length;
    const so = fmtTime((performance.now() - t0) / 1000);
    say(
      log.epoch < epochs
        ? `demo: epoch ${log.epoch}/${epochs} done, ${so} so far; ETA ${fmtTime((epochs - log.epoch) * per)}`
        : `demo: epoch ${log.epoch}/${epochs} done, ${so} so far; predicting the held-out spots …`,
    );
  };

  const { model, history, best } = await trainModel(engine, train, val, {
    config: { backbone: TINY, variant: "spat", targetGenes: 10, auxGenes: aIdx.length },
    // A demo must learn in a minute: lr 1e-3 instead of the original's 1e-5.
    train: {
      lr: 1e-3,
      weightDecay: 1e-4,
      stepSize: 10,
      gamma: 0.5,
      clipNorm: 1,
      auxWeight: 1,
      tmrWeight: 1,
      spatWeight: 0.01,
    },
    batchSize: 16,
    epochs,
    patience: epochs, // no early stop: every run trains all its epochs
    imageSize: 64,
    seed: 1,
    out,
    biasFromMeans: true,
    quiet: o.quiet,
    onEpoch,
  });
  const p = await predictTable(model, test, { batchSize: 32, imageSize: 64 });
  const r = pearsonPerGene(p.target, test.target, test.names.length, 10);
  const finite = [...r].filter(Number.isFinite);
  const pearson = finite.reduce((x, y) => x + y, 0) / Math.max(finite.length, 1);
  const auc = rocAuc(Float64Array.from(p.tumorProb), Array.from(test.tumor, (v) => v === 1));
  // Baseline: every held-out spot predicted as the training mean (MSE; its Pearson r is undefined).
  let mse = 0, mseBase = 0;
  for (let g = 0; g < 10; g++) {
    let m = 0;
    for (let s = 0; s < train.names.length; s++) m += train.target[s * 10 + g] / train.names.length;
    for (let s = 0; s < test.names.length; s++) {
      mse += (p.target[s * 10 + g] - test.target[s * 10 + g]) ** 2;
      mseBase += (m - test.target[s * 10 + g]) ** 2;
    }
  }
  const n = test.names.length * 10;
  await writeAtomic(
    join(out, "predictions.npz"),
    encodeNpz({
      target: { dtype: "f4", shape: [test.names.length, 10], data: p.target },
      truth: { dtype: "f4", shape: [test.names.length, 10], data: test.target },
      tumor_prob: { dtype: "f4", shape: [test.names.length], data: p.tumorProb },
      names: { dtype: "U", shape: [test.names.length], data: test.names },
      target_genes: { dtype: "U", shape: [10], data: test.targetGenes },
    }),
  );
  const gene = 0;
  const col = (v: Float32Array) =>
    Float32Array.from({ length: test.names.length }, (_, s) => v[s * 10 + gene]);
  const png = geneMapPng({
    spots: test.grid.map(([x, y]) => ({ x, y })),
    values: col(p.target),
    title: `${test.targetGenes[gene]} predicted`,
    tumor: Array.from(p.tumorProb, (v) => v > 0.5),
    tumorLegend: "tumour predicted (p > 0.5)",
    barLabel: "z-score of log1p expression",
  });
  const pngTruth = geneMapPng({
    spots: test.grid.map(([x, y]) => ({ x, y })),
    values: col(test.target),
    title: `${test.targetGenes[gene]} measured`,
    tumor: Array.from(test.tumor, (v) => v === 1),
    tumorLegend: "tumour (measured)",
    barLabel: "z-score of log1p expression",
  });
  await writeAtomic(join(out, `gene_map_${test.targetGenes[gene]}.png`), png);
  await writeAtomic(join(out, `gene_map_${test.targetGenes[gene]}_truth.png`), pngTruth);
  model.dispose();
  engine.destroy();

  say("");
  say(
    `trained ${history.length} epochs, best at epoch ${best.epoch} (validation MSE ${
      best.valMse.toFixed(4)
    })`,
  );
  say(
    `held-out spots (${test.names.length}): mean Pearson r over the 10 target genes = ${
      pearson.toFixed(3)
    }; ` +
      `tumour AUC = ${auc.toFixed(3)}`,
  );
  say(
    `  MSE ${(mse / n).toFixed(4)} vs ${(mseBase / n).toFixed(4)} for the mean-expression baseline ` +
      `(each gene's training mean; its Pearson r is undefined: it predicts a constant)`,
  );
  say(`files in ${out}/: ${demoFiles(test.targetGenes[gene]).join(", ")}`);
  say(`done in ${((performance.now() - t0) / 1000).toFixed(0)} s.`);
  say(`
Real data:
  HE2Gene's checkpoints on patches:  deno task he2gene predict-patches ../shared/data/he2gene/exps --weights model_base.pt
  the benchmark:                     deno task bench
  the tests:                         deno task test`);
  return { pearson, auc };
}
