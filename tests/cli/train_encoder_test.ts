/**
 * `train --encoder … --freeze-encoder`: HE2Gene's heads on a frozen encoder's cached features (a tiny random
 * ResNet in torchvision's layout, the tiny her2st fixture), their checkpoint run by `predict-patches` with
 * the encoder found again and checked, and the heads' loop (mlp, resume) on its own.
 */
import { join } from "node:path";
import { runCli } from "../bad_inputs/harness.ts";
import { UsageError } from "../../cli/errors.ts";
import { runTrain } from "../../cli/train.ts";
import { readCheckpoint } from "../../cli/checkpoint.ts";
import { loadModel } from "../../cli/checkpoint.ts";
import { parameterShapes, TINY } from "../../model/mod.ts";
import { initResNet } from "../../model/resnet.ts";
import { vitShapes } from "../../model/vit.ts";
import { headsFromTensors } from "../../pipeline/checkpoint.ts";
import { memoryTrainStore } from "../../pipeline/train.ts";
import {
  DEFAULT_HEADS_TRAIN,
  type FeatureTable,
  fitRidgeHeads,
  trainHeads,
} from "../../pipeline/train_heads.ts";
import { readNpz } from "../../slide/npy.ts";
import { writeSafetensors } from "../../weights/safetensors.ts";
import { toFloat32 } from "../../weights/dtype.ts";
import { assertEquals, assertRejects, engine, rand } from "../helpers.ts";
import { tinyHer2st } from "./tiny_her2st.ts";

/** The tiny backbone in torchvision's layout (its keys, no `fc`), seeded. */
async function tinyTorchvision(file: string): Promise<string> {
  const shapes = parameterShapes(TINY);
  const f32 = (d: Float32Array) => new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
  const t = new Map();
  for (const [k, data] of initResNet(TINY, 7)) {
    t.set(k, { dtype: "F32", shape: shapes.get(k)!, bytes: f32(data) });
  }
  await writeSafetensors(file, t);
  return file;
}

const maxDiff = (a: Float32Array, b: Float32Array) =>
  a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);

Deno.test({
  name: "train --encoder --freeze-encoder: features computed once and reused (equal to embed's), the loss " +
    "decreases, predict-patches runs the checkpoint with its encoder, a changed encoder file is refused",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "he2gene-train-encoder-" });
    try {
      const { root } = await tinyHer2st(join(dir, "her2st"));
      const weights = await tinyTorchvision(join(dir, "tiny_tv.safetensors"));
      const out = join(dir, "run");
      const args = [
        "train",
        "--dataset",
        "her2st",
        "--root",
        root,
        "--encoder",
        "resnet50",
        "--weights",
        weights,
        "--freeze-encoder",
        "--crop-size",
        "24",
        "--n-target",
        "2",
        "--val-sections",
        "X2",
        "--batch-size",
        "18", // all training spots: one step an epoch, so the epochs' losses are comparable
        "--lr",
        "1e-2",
        "--epochs",
        "6",
        "--patience",
        "6",
        "--out",
        out,
      ];
      const r1 = await runCli(args);
      assertEquals(r1.code, 0, r1.stderr);
      assertEquals(r1.stderr.includes("computing the features of 27 spots"), true, r1.stderr);
      const log = (await Deno.readTextFile(join(out, "log.jsonl"))).trim().split("\n").map((l) =>
        JSON.parse(l)
      );
      assertEquals(log.length, 6);
      if (!(log[5].trainLoss < log[0].trainLoss)) {
        throw new Error(`the training loss did not decrease: ${log.map((l) => l.trainLoss)}`);
      }
      const cached = [...Deno.readDirSync(join(out, "features"))].map((e) => join(out, "features", e.name));
      assertEquals(cached.length, 1);
      const mtime = (await Deno.stat(cached[0])).mtime?.getTime();
      // A second run finds them by their key.
      const r2 = await runCli([...args, "--epochs", "1", "--force"]);
      assertEquals(r2.code, 0, r2.stderr);
      assertEquals(r2.stderr.includes(`reusing the cached features ${cached[0]}`), true, r2.stderr);
      assertEquals((await Deno.stat(cached[0])).mtime?.getTime(), mtime);
      for (const f of ["best.safetensors", "val_predictions.npz", "val_truth.npz"]) {
        assertEquals((await Deno.stat(join(out, f))).isFile, true, f);
      }

      // The cached features equal `embed`'s on the same spots' patches (cut by extract-patches).
      const slide = join(root, "data/ST-imgs/X/X1/X1.jpg"),
        spots = join(root, "data/ST-spotfiles/X1_selection.tsv");
      const patches = join(dir, "patches");
      const r3 = await runCli([
        "extract-patches",
        slide,
        "--spots",
        spots,
        "--section",
        "X1",
        "--crop-size",
        "24",
        "--out",
        patches,
        "--quiet",
      ]);
      assertEquals(r3.code, 0, r3.stderr);
      const r4 = await runCli([
        "embed",
        patches,
        "--encoder",
        "resnet50",
        "--weights",
        weights,
        "--out",
        join(dir, "emb"),
        "--quiet",
      ]);
      assertEquals(r4.code, 0, r4.stderr);
      const cache = await readNpz(cached[0]), emb = await readNpz(join(dir, "emb", "features.npz"));
      const D = emb.features.shape[1],
        cNames = cache.names.data as string[],
        eNames = emb.names.data as string[];
      const rowsOf = (names: string[]) => {
        const f = new Float32Array(names.length * D), all = cache.features.data as Float32Array;
        names.forEach((n, i) =>
          f.set(all.subarray(cNames.indexOf(n) * D, (cNames.indexOf(n) + 1) * D), i * D)
        );
        return f;
      };
      assertEquals(eNames.every((n) => cNames.includes(n)), true);
      assertEquals(maxDiff(rowsOf(eNames), emb.features.data as Float32Array), 0);
      // The heads checkpoint given to embed as an encoder: the error names the encoder's own weights.
      const rHeads = await runCli([
        "embed",
        patches,
        "--encoder",
        "he2gene",
        "--weights",
        join(out, "best.safetensors"),
        "--out",
        join(dir, "emb2"),
        "--quiet",
      ]);
      assertEquals(rHeads.code, 1, rHeads.stderr);
      assertEquals(rHeads.stderr.includes("it holds heads trained on a "), true, rHeads.stderr);
      assertEquals(rHeads.stderr.includes(`(--encoder resnet50 --weights ${weights})`), true, rHeads.stderr);
      assertEquals(await Deno.stat(join(dir, "emb2")).then(() => true, () => false), false, "no emb2 folder");

      // predict-patches on the checkpoint (encoder found at its recorded path) = the heads on the features.
      const best = join(out, "best.safetensors");
      const r5 = await runCli([
        "predict-patches",
        patches,
        "--weights",
        best,
        "--tta",
        "single",
        "--out",
        join(dir, "pred"),
        "--quiet",
      ]);
      assertEquals(r5.code, 0, r5.stderr);
      const pred = await readNpz(join(dir, "pred", "predictions.npz"));
      const e = await engine();
      const { model } = headsFromTensors(e, await readCheckpoint(best), null, best);
      const x = e.tensor(rowsOf(pred.names.data as string[]), [eNames.length, D]);
      const p = model.predictFeatures(x);
      const diffs = [
        maxDiff(await p.target.toArray(), pred.target.data as Float32Array),
        maxDiff(await p.aux.toArray(), pred.aux.data as Float32Array),
        maxDiff(await p.tumorProb.toArray(), pred.tumor_prob.data as Float32Array),
      ];
      for (const t of [x, ...Object.values(p)]) t.dispose();
      model.dispose();
      if (!diffs.every((d) => d <= 1e-5)) {
        throw new Error(`predict-patches differs from the heads by ${diffs}`);
      }

      // The encoder's file must be the one trained on: a changed byte, or a missing file, is named.
      const changed = join(dir, "changed.safetensors");
      const bytes = await Deno.readFile(weights);
      bytes[bytes.length - 100] ^= 1;
      await Deno.writeFile(changed, bytes);
      const r6 = await runCli([
        "predict-patches",
        patches,
        "--weights",
        best,
        "--encoder-weights",
        changed,
        "--out",
        join(dir, "pred2"),
        "--quiet",
      ]);
      assertEquals(r6.code, 1);
      assertEquals(
        r6.stderr.includes(`${changed} is not the file its heads were trained on`),
        true,
        r6.stderr,
      );
      const gone = join(dir, "gone.safetensors");
      const r7 = await runCli([
        "predict-patches",
        patches,
        "--weights",
        best,
        "--encoder-weights",
        gone,
        "--out",
        join(dir, "pred3"),
        "--quiet",
      ]);
      assertEquals(r7.code, 1);
      assertEquals(
        r7.stderr.includes(`its weights ${gone} (--encoder-weights) are missing`),
        true,
        r7.stderr,
      );
      // Loaded as a whole HE2Gene model, the heads checkpoint says what it is.
      await assertRejects(() => loadModel(e, best), Error, "heads trained on a frozen resnet50 encoder");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/** A learnable feature table: targets linear in the features, tumour from the first feature's sign. */
function featureTable(n: number, d: number, seed: number): FeatureTable {
  const features = rand(n * d, seed);
  const w = rand(3 * d, 99);
  const target = new Float32Array(n), aux = new Float32Array(n * 2);
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < d; k++) {
      const x = features[i * d + k];
      target[i] += w[k] * x;
      aux[2 * i] += w[d + k] * x;
      aux[2 * i + 1] += w[2 * d + k] * x;
    }
  }
  return {
    names: [...Array(n).keys()].map((i) => `S_${i}`),
    sections: Array(n).fill("S"),
    grid: [...Array(n).keys()].map((i) => [i, 0] as [number, number]),
    patches: [],
    targetGenes: ["T"],
    auxGenes: ["A0", "A1"],
    target,
    aux,
    tumor: Int8Array.from({ length: n }, (_, i) => (i % 5 === 0 ? -1 : features[i * d] > 0 ? 1 : 0)),
    features,
    dim: d,
  };
}

Deno.test({
  name: "heads on features: an mlp's shared hidden layer learns, and a resumed run reaches exactly the " +
    "uninterrupted one's state",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const e = await engine();
    const train = featureTable(40, 8, 1), val = featureTable(12, 8, 2);
    const encoder = {
      kind: "resnet50" as const,
      name: "test",
      dim: 8,
      weights: { name: "w", path: "/w", size: 1, sha256: "0", hashed: "whole file" },
      preprocess: { inputSize: 224, mean: [0, 0, 0], std: [1, 1, 1] },
    };
    const opts = (epochs: number) => ({
      heads: { dim: 8, targetGenes: 1, auxGenes: 2, head: "mlp" as const, hidden: 6 },
      train: {
        lr: 1e-2,
        weightDecay: 0,
        stepSize: 4,
        gamma: 0.5,
        clipNorm: 1,
        auxWeight: 1,
        tmrWeight: 1,
        spatWeight: 0,
      },
      batchSize: 16,
      epochs,
      patience: 100,
      seed: 4,
      encoder,
      featureKey: "k",
    });
    const storeA = memoryTrainStore();
    const a = await trainHeads(e, train, val, { ...opts(6), store: storeA });
    assertEquals(a.history.length, 6);
    if (!(a.history[5].trainLoss < a.history[0].trainLoss && a.history[5].valMse < a.history[0].valMse)) {
      throw new Error(`the mlp did not learn: ${a.history.map((h) => [h.trainLoss, h.valMse])}`);
    }
    assertEquals(a.model.params.get("hidden.weight")!.shape, [6, 8]);
    assertEquals(a.model.params.get("fc1.weight")!.shape, [1, 6]);
    const storeB = memoryTrainStore();
    const b1 = await trainHeads(e, train, val, { ...opts(2), store: storeB });
    b1.model.dispose();
    const ck = storeB.checkpoint!;
    const b = await trainHeads(e, train, val, {
      ...opts(6),
      store: storeB,
      resume: { ...ck, from: "b", file: "b" },
    });
    assertEquals(b.history.map((h) => h.valMse), a.history.map((h) => h.valMse));
    const [sa, sb] = [await a.model.stateDict(), await b.model.stateDict()];
    for (const [k, v] of sa) assertEquals(sb.get(k)!.data, v.data, k);
    // The checkpoint is the heads' with the encoder's record.
    assertEquals(JSON.parse(storeA.best!.metadata["he2gene.encoder"]).weights.sha256, "0");
    assertEquals(toFloat32(storeA.best!.tensors.get("hidden.bias")!).length, 6);
    a.model.dispose();
    b.model.dispose();
  },
});

Deno.test({
  name: "train's encoder options are checked before anything is read",
  fn: async () => {
    const base = ["--dataset", "her2st", "--root", "/nonexistent"];
    const cases: [string[], string][] = [
      [["--head", "mlp"], "--head applies to training on an encoder"],
      [["--encoder", "resnet50", "--weights", "w.pth"], "needs one of --freeze-encoder"],
      [
        ["--encoder", "resnet50", "--weights", "w", "--freeze-encoder", "--unfreeze-last", "1"],
        "needs one of --freeze-encoder",
      ],
      [
        ["--encoder", "resnet50", "--weights", "w", "--unfreeze-last", "0"],
        "--unfreeze-last must be an integer ≥ 1",
      ],
      [
        ["--encoder", "resnet50", "--weights", "w", "--unfreeze-last", "2", "--head", "mlp"],
        "--head linear only",
      ],
      [["--unfreeze-last", "1"], "--unfreeze-last applies to training on an encoder"],
      [
        ["--encoder", "vgg", "--weights", "w.pth", "--freeze-encoder"],
        "--encoder must be resnet50, he2gene, timm",
      ],
      [["--encoder", "resnet50", "--freeze-encoder"], "--encoder needs --weights FILE"],
      [
        ["--encoder", "resnet50", "--weights", "w", "--freeze-encoder", "--backbone", "tiny"],
        "--backbone does not apply",
      ],
      [
        ["--encoder", "resnet50", "--weights", "w", "--freeze-encoder", "--hidden", "8"],
        "--hidden is the width of --head mlp",
      ],
      [
        ["--encoder", "resnet50", "--weights", "w", "--freeze-encoder", "--head", "svm"],
        "--head must be linear, mlp, ridge",
      ],
      [
        ["--encoder", "resnet50", "--weights", "w", "--freeze-encoder", "--head", "mlp", "--hidden", "0"],
        "--hidden must be a positive integer",
      ],
    ];
    for (const [extra, msg] of cases) {
      await assertRejects(() => runTrain([...base, ...extra]), UsageError, msg);
    }
  },
});

/** A fine-tuning run of the tiny encoder's last block on the tiny her2st set (epochs not given). */
const r1Args = (root: string, weights: string, out: string) => [
  "train",
  "--dataset",
  "her2st",
  "--root",
  root,
  "--encoder",
  "resnet50",
  "--weights",
  weights,
  "--unfreeze-last",
  "1",
  "--crop-size",
  "24",
  "--n-target",
  "2",
  "--val-sections",
  "X2",
  "--batch-size",
  "9",
  "--out",
  out,
];

Deno.test({
  name: "train --encoder --unfreeze-last: the last block fine-tunes with the heads; the checkpoint holds " +
    "them over the original weights, predict-patches and predict-slide give the run's validation predictions, and a resumed run equals it",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "he2gene-finetune-" });
    try {
      const { root } = await tinyHer2st(join(dir, "her2st"));
      const weights = await tinyTorchvision(join(dir, "tiny_tv.safetensors"));
      const out = join(dir, "run");
      const r1 = await runCli([...r1Args(root, weights, out), "--epochs", "2"]);
      assertEquals(r1.code, 0, r1.stderr);
      assertEquals(r1.stderr.includes("fine-tuning the last 1 block(s) of"), true, r1.stderr);
      const log = (await Deno.readTextFile(join(out, "log.jsonl"))).trim().split("\n").map((l) =>
        JSON.parse(l)
      );
      assertEquals([log.length, log.every((l) => Number.isFinite(l.trainLoss) && l.lr === 1e-4)], [2, true]);
      const best = await readCheckpoint(join(out, "best.safetensors"));
      assertEquals(best.metadata["he2gene.unfreeze_last"], "1");
      const original = (await readCheckpoint(weights)).tensors;
      const trained = [...best.tensors.keys()].filter((k) => k.startsWith("encoder."));
      // Only the last block, every one of its tensors, and at least its convolutions changed.
      const last = trained[0].replace(/^encoder\.(layer\d+\.\d+)\..*$/, "$1");
      assertEquals(
        trained.map((k) => k.slice(8)),
        [...original.keys()].filter((k) => k.startsWith(`${last}.`)),
      );
      const moved = trained.filter((k) =>
        k.endsWith("conv1.weight") && maxDiff(best.tensors.get(k)!.data, original.get(k.slice(8))!.data) > 0
      );
      assertEquals(moved.length, 1, `${last}.conv1.weight did not change`);
      const e = await engine();
      await assertRejects(
        () => loadModel(e, join(out, "best.safetensors")),
        Error,
        "it holds heads trained on the last 1 fine-tuned block(s) of a resnet50 encoder",
      );

      // predict-patches on the validation section's patches gives the run's val_predictions.npz.
      const patches = join(dir, "patches");
      const r2 = await runCli([
        "extract-patches",
        join(root, "data/ST-imgs/X/X2/X2.jpg"),
        "--spots",
        join(root, "data/ST-spotfiles/X2_selection.tsv"),
        "--section",
        "X2",
        "--crop-size",
        "24",
        "--out",
        patches,
        "--quiet",
      ]);
      assertEquals(r2.code, 0, r2.stderr);
      const r3 = await runCli([
        "predict-patches",
        patches,
        "--weights",
        join(out, "best.safetensors"),
        "--tta",
        "single",
        "--out",
        join(dir, "pred"),
        "--quiet",
      ]);
      assertEquals(r3.code, 0, r3.stderr);
      const pred = await readNpz(join(dir, "pred", "predictions.npz"));
      const val = await readNpz(join(out, "val_predictions.npz"));
      const vNames = val.names.data as string[], names = pred.names.data as string[];
      assertEquals([...names].sort(), [...vNames].sort());
      const G = 2, want = val.target.data as Float32Array, got = pred.target.data as Float32Array;
      let d = 0;
      names.forEach((n, i) => {
        const j = vNames.indexOf(n);
        for (let g = 0; g < G; g++) d = Math.max(d, Math.abs(got[i * G + g] - want[j * G + g]));
      });
      if (!(d <= 1e-5)) throw new Error(`predict-patches differs from val_predictions.npz by ${d}`);
      // predict-slide at the section's spots: the same numbers as predict-patches on its patches.
      const r6 = await runCli([
        "predict-slide",
        join(root, "data/ST-imgs/X/X2/X2.jpg"),
        "--spots",
        join(root, "data/ST-spotfiles/X2_selection.tsv"),
        "--section",
        "X2",
        "--crop-size",
        "24",
        "--weights",
        join(out, "best.safetensors"),
        "--tta",
        "single",
        "--out",
        join(dir, "slide"),
        "--quiet",
      ]);
      assertEquals(r6.code, 0, r6.stderr);
      const slide = await readNpz(join(dir, "slide", "predictions.npz"));
      const sNames = slide.names.data as string[], sT = slide.target.data as Float32Array;
      assertEquals([...sNames].sort(), [...names].sort());
      sNames.forEach((n, i) => {
        const j = names.indexOf(n);
        assertEquals(
          Array.from(sT.subarray(i * G, i * G + G)),
          Array.from(got.subarray(j * G, j * G + G)),
          n,
        );
      });

      // One epoch, then --resume to two: the same log and the same best model as the run in one go.
      const args = r1Args(root, weights, join(dir, "run2"));
      const r4 = await runCli([...args, "--epochs", "1"]);
      assertEquals(r4.code, 0, r4.stderr);
      const r5 = await runCli([...args, "--epochs", "2", "--resume"]);
      assertEquals(r5.code, 0, r5.stderr);
      const log2 = (await Deno.readTextFile(join(dir, "run2", "log.jsonl"))).trim().split("\n").map((l) =>
        JSON.parse(l)
      );
      assertEquals(log2.map((l) => [l.trainLoss, l.valMse]), log.map((l) => [l.trainLoss, l.valMse]));
      const best2 = await readCheckpoint(join(dir, "run2", "best.safetensors"));
      for (const [k, t] of best.tensors) assertEquals(best2.tensors.get(k)?.data, t.data, k);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/** Ridge in float64 on the host: min ‖Y − X Wᵀ − b‖² + λ‖W‖², the bias unpenalised (features centred). */
function ridgeCpu(x: Float32Array, y: Float32Array, n: number, d: number, k: number, lambda: number) {
  const mx = new Float64Array(d), my = new Float64Array(k);
  for (let i = 0; i < n; i++) {
    for (let a = 0; a < d; a++) mx[a] += x[i * d + a] / n;
    for (let c = 0; c < k; c++) my[c] += y[i * k + c] / n;
  }
  // A = XcᵀXc + λI (d × d), B = XcᵀYc (d × k); solved by Gauss-Jordan elimination.
  const A = new Float64Array(d * d), B = new Float64Array(d * k);
  for (let i = 0; i < n; i++) {
    for (let a = 0; a < d; a++) {
      const xa = x[i * d + a] - mx[a];
      for (let b = 0; b < d; b++) A[a * d + b] += xa * (x[i * d + b] - mx[b]);
      for (let c = 0; c < k; c++) B[a * k + c] += xa * (y[i * k + c] - my[c]);
    }
  }
  for (let a = 0; a < d; a++) A[a * d + a] += lambda;
  for (let c = 0; c < d; c++) {
    const p = A[c * d + c];
    for (let j = 0; j < d; j++) A[c * d + j] /= p;
    for (let j = 0; j < k; j++) B[c * k + j] /= p;
    for (let r = 0; r < d; r++) {
      if (r === c) continue;
      const f = A[r * d + c];
      for (let j = 0; j < d; j++) A[r * d + j] -= f * A[c * d + j];
      for (let j = 0; j < k; j++) B[r * k + j] -= f * B[c * k + j];
    }
  }
  const weight = new Float64Array(k * d), bias = Float64Array.from(my);
  for (let c = 0; c < k; c++) {
    for (let a = 0; a < d; a++) {
      weight[c * d + a] = B[a * k + c];
      bias[c] -= B[a * k + c] * mx[a];
    }
  }
  return { weight, bias };
}

Deno.test({
  name: "--head ridge: the gene heads are the closed-form ridge solution at the chosen lambda, fixed while " +
    "the tumour head (a logistic regression) trains",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const e = await engine();
    const train = featureTable(40, 8, 1), val = featureTable(12, 8, 2);
    const fit = await fitRidgeHeads(e, train, val);
    const y = new Float32Array(40 * 3);
    for (let i = 0; i < 40; i++) y.set([train.target[i], train.aux[2 * i], train.aux[2 * i + 1]], 3 * i);
    const want = ridgeCpu(train.features, y, 40, 8, 3, fit.lambda);
    const got = {
      weight: [...fit.target.weight, ...fit.aux.weight],
      bias: [...fit.target.bias, ...fit.aux.bias],
    };
    const scale = Math.max(...want.weight.map(Math.abs), ...want.bias.map(Math.abs));
    const err = Math.max(
      ...want.weight.map((w, i) => Math.abs(w - got.weight[i])),
      ...want.bias.map((b, i) => Math.abs(b - got.bias[i])),
    );
    if (!(err <= 1e-4 * scale)) throw new Error(`ridge differs from float64 by ${err} (scale ${scale})`);
    const r = await trainHeads(e, train, val, {
      heads: { dim: 8, targetGenes: 1, auxGenes: 2, head: "ridge" },
      train: { ...DEFAULT_HEADS_TRAIN, lr: 1e-2 },
      batchSize: 16,
      epochs: 3,
      patience: 3,
      seed: 4,
      encoder: {
        kind: "resnet50",
        name: "test",
        dim: 8,
        weights: { name: "w", path: "/w", size: 1, sha256: "0", hashed: "whole file" },
        preprocess: { inputSize: 224, mean: [0, 0, 0], std: [1, 1, 1] },
      },
      featureKey: "k",
      store: memoryTrainStore(),
      ridge: fit,
    });
    const sd = await r.model.stateDict();
    assertEquals(sd.get("fc1.weight")!.data, fit.target.weight);
    assertEquals(sd.get("fc2.bias")!.data, fit.aux.bias);
    assertEquals(r.history.length, 3);
    if (!(r.history[2].trainTumor < r.history[0].trainTumor)) {
      throw new Error(`the tumour head did not learn: ${r.history.map((h) => h.trainTumor)}`);
    }
    r.model.dispose();
  },
});

Deno.test({
  name:
    "train --encoder timm --head mlp: predict-patches runs the checkpoint through the ViT in its config's " +
    "preprocessing and gives the heads' numbers on the cached features",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "he2gene-train-vit-" });
    try {
      const { root } = await tinyHer2st(join(dir, "her2st"));
      // A small random ViT in timm's layout (D 32, depth 1, 64 px, patch 16), with its config.json.
      const vit = join(dir, "vit");
      await Deno.mkdir(vit);
      const config = {
        architecture: "vit_small_patch16_224",
        model_args: { img_size: 64, num_heads: 2 },
        pretrained_cfg: {
          input_size: [3, 64, 64],
          // timm's eval transform: Resize(floor(64 / 0.875) = 73, BICUBIC) + CenterCrop(64) — in training's
          // features and in predict-patches alike.
          interpolation: "bicubic",
          crop_pct: 0.875,
          mean: [0.5, 0.5, 0.5],
          std: [0.25, 0.25, 0.25],
        },
      };
      await Deno.writeTextFile(join(vit, "config.json"), JSON.stringify(config));
      const shapes = vitShapes({
        name: "vit_small_patch16_224",
        patchSize: 16,
        imgSize: 64,
        embedDim: 32,
        depth: 1,
        numHeads: 2,
        mlp: "gelu",
        mlpHidden: 64,
        classToken: true,
        regTokens: 0,
        noEmbedClass: false,
        globalPool: "token",
        fcNorm: false,
        layerScale: false,
        qkvBias: true,
        eps: 1e-6,
        preprocess: {
          inputSize: 64,
          interpolation: "bilinear",
          cropPct: 1,
          mean: [0.5, 0.5, 0.5],
          std: [0.25, 0.25, 0.25],
        },
      });
      let seed = 30;
      const entries = new Map([...shapes].map(([k, shape]) => {
        const n = shape.reduce((a, b) => a * b, 1);
        const data = k.includes("norm") && k.endsWith(".weight")
          ? new Float32Array(n).fill(1)
          : rand(n, seed++, -0.2, 0.2);
        return [k, { dtype: "F32" as const, shape, bytes: new Uint8Array(data.buffer) }];
      }));
      await writeSafetensors(join(vit, "model.safetensors"), entries);
      const out = join(dir, "run");
      const r1 = await runCli([
        "train",
        "--dataset",
        "her2st",
        "--root",
        root,
        "--encoder",
        "timm",
        "--weights",
        vit,
        "--freeze-encoder",
        "--head",
        "mlp",
        "--hidden",
        "16",
        "--crop-size",
        "24",
        "--n-target",
        "2",
        "--val-sections",
        "X2",
        "--epochs",
        "2",
        "--out",
        out,
        "--quiet",
      ]);
      assertEquals(r1.code, 0, r1.stderr);
      const best = join(out, "best.safetensors");
      const ck = await readCheckpoint(best);
      const rec = JSON.parse(ck.metadata["he2gene.encoder"]);
      assertEquals([rec.kind, rec.dim, rec.weights.name, rec.config.model_args.img_size], [
        "timm",
        32,
        "model.safetensors",
        64,
      ]);
      assertEquals(rec.preprocess, { inputSize: 64, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25] });
      assertEquals(ck.tensors.get("hidden.weight")!.shape, [16, 32]);
      const slide = join(root, "data/ST-imgs/X/X1/X1.jpg"),
        spots = join(root, "data/ST-spotfiles/X1_selection.tsv");
      const patches = join(dir, "patches");
      const r2 = await runCli([
        "extract-patches",
        slide,
        "--spots",
        spots,
        "--section",
        "X1",
        "--crop-size",
        "24",
        "--out",
        patches,
        "--quiet",
      ]);
      assertEquals(r2.code, 0, r2.stderr);
      const r3 = await runCli([
        "predict-patches",
        patches,
        "--weights",
        best,
        "--tta",
        "single",
        "--out",
        join(dir, "pred"),
        "--quiet",
      ]);
      assertEquals(r3.code, 0, r3.stderr);
      const pred = await readNpz(join(dir, "pred", "predictions.npz"));
      const cached = [...Deno.readDirSync(join(out, "features"))].map((e) => join(out, "features", e.name));
      const cache = await readNpz(cached[0]);
      const cNames = cache.names.data as string[],
        names = pred.names.data as string[],
        all = cache.features.data as Float32Array;
      const f = new Float32Array(names.length * 32);
      names.forEach((n, i) =>
        f.set(all.subarray(cNames.indexOf(n) * 32, (cNames.indexOf(n) + 1) * 32), i * 32)
      );
      const e = await engine();
      const { model } = headsFromTensors(e, ck, null, best);
      const x = e.tensor(f, [names.length, 32]);
      const p = model.predictFeatures(x);
      const d = maxDiff(await p.target.toArray(), pred.target.data as Float32Array);
      for (const t of [x, ...Object.values(p)]) t.dispose();
      model.dispose();
      if (!(d <= 1e-5)) {
        throw new Error(`predict-patches differs from the heads on the cached features by ${d}`);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
