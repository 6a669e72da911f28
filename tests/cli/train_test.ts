import { join } from "node:path";
import { Interrupted, UsageError } from "../../cli/errors.ts";
import { runTrain } from "../../cli/train.ts";
import { readNpz } from "../../slide/npy.ts";
import { type SpotTable, trainModel } from "../../cli/train_loop.ts";
import { BACKBONES, parameterShapes, TINY } from "../../model/mod.ts";
import { initResNet } from "../../model/resnet.ts";
import { readSafetensors, writeSafetensors } from "../../weights/safetensors.ts";
import { toFloat32 } from "../../weights/dtype.ts";
import { cropPatch, log1pNormalize, syntheticSection } from "../../slide/mod.ts";
import { assertEquals, assertRejects, engine } from "../helpers.ts";
import { tinyHer2st } from "./tiny_her2st.ts";

function tables() {
  const sec = syntheticSection({ rows: 6, cols: 6, spacing: 24, genes: 6, seed: 5 });
  const G = sec.genes.length;
  const expr = new Float32Array(sec.counts.length);
  sec.spots.forEach((_, s) => expr.set(log1pNormalize(sec.counts.subarray(s * G, (s + 1) * G)), s * G));
  const make = (keep: (c: number) => boolean): SpotTable => {
    const idx = [...sec.spots.keys()].filter((i) => keep(sec.spots[i].array[0]));
    const cols = (g0: number, g1: number) => {
      const v = new Float32Array(idx.length * (g1 - g0));
      idx.forEach((s, r) => v.set(expr.subarray(s * G + g0, s * G + g1), r * (g1 - g0)));
      return v;
    };
    return {
      names: idx.map((i) => `S_${sec.spots[i].array.join("_")}`),
      sections: idx.map(() => "S"),
      grid: idx.map((i) => sec.spots[i].array),
      patches: idx.map((i) => cropPatch(sec.image, sec.spots[i].pixel[0], sec.spots[i].pixel[1], 24)),
      targetGenes: sec.genes.slice(0, 2),
      auxGenes: sec.genes.slice(2),
      target: cols(0, 2),
      aux: cols(2, G),
      tumor: Int8Array.from(idx, (i) => (sec.spots[i].tumor ? 1 : i % 7 === 0 ? -1 : 0)),
    };
  };
  return { train: make((c) => c < 4), val: make((c) => c >= 4) };
}

const options = (out: string, epochs: number, resume = false) => ({
  config: { backbone: TINY, variant: "spat" as const, targetGenes: 2, auxGenes: 4 },
  train: {
    lr: 1e-3,
    weightDecay: 1e-4,
    stepSize: 1,
    gamma: 0.5,
    clipNorm: 1,
    auxWeight: 20,
    tmrWeight: 1,
    spatWeight: 0.01,
  },
  batchSize: 8,
  epochs,
  patience: 10,
  imageSize: 32,
  seed: 3,
  out,
  resume,
  quiet: true,
});

Deno.test({
  name:
    "a resumed run reaches exactly the state of an uninterrupted one (HE2Gene-Spat, StepLR, BN statistics, Adam)",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const e = await engine();
    const { train, val } = tables();
    const dir = await Deno.makeTempDir({ prefix: "he2gene-train-" });
    try {
      const a = await trainModel(e, train, val, options(join(dir, "a"), 3));
      const b1 = await trainModel(e, train, val, options(join(dir, "b"), 1));
      b1.model.dispose();
      const b = await trainModel(e, train, val, options(join(dir, "b"), 3, true));
      assertEquals(a.history.length, 3);
      assertEquals(b.history.map((h) => h.valMse), a.history.map((h) => h.valMse));
      const [sa, sb] = [await a.model.stateDict(), await b.model.stateDict()];
      for (const [k, v] of sa) assertEquals(sb.get(k)!.data, v.data, k);
      assertEquals(a.history.every((h) => Number.isFinite(h.trainLoss) && h.lr > 0), true);
      assertEquals(a.history.map((h) => h.lr), [1e-3, 5e-4, 2.5e-4]);
      a.model.dispose();
      b.model.dispose();
      // --resume with another configuration is refused.
      let msg = "";
      await trainModel(e, train, val, { ...options(join(dir, "b"), 3, true), imageSize: 48 }).catch((
        err,
      ) => (msg = err.message));
      assertEquals(msg.includes("written by another configuration"), true);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/** log.jsonl as objects without the timing field. */
async function readLog(dir: string): Promise<Record<string, unknown>[]> {
  const text = await Deno.readTextFile(join(dir, "log.jsonl"));
  return text.trim().split("\n").map((l) => {
    const { seconds: _, ...rest } = JSON.parse(l);
    return rest;
  });
}

Deno.test({
  name:
    "log.jsonl after an interruption mid-epoch and a failed checkpoint write equals an uninterrupted run's",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const e = await engine();
    const { train, val } = tables();
    const dir = await Deno.makeTempDir({ prefix: "he2gene-train-log-" });
    try {
      const a = await trainModel(e, train, val, options(join(dir, "a"), 3));
      a.model.dispose();
      // 24 training spots in batches of 8: 3 steps an epoch; `interrupt` is polled after every step and after
      // every epoch but the last. Stop after step 2 of epoch 2 (the 6th poll).
      const b = join(dir, "b");
      let polls = 0;
      await assertRejects(
        () => trainModel(e, train, val, { ...options(b, 3), interrupt: () => ++polls === 6 }),
        Interrupted,
        "epoch 2, step 2 of 3",
      );
      // Resume; the checkpoint write at the end of epoch 3 fails (a folder is in the way: moved there after
      // the epoch's last step, the 5th poll: step 3 of epoch 2, the end of epoch 2, epoch 3's three steps).
      const ck = join(b, "checkpoint.safetensors"), aside = join(dir, "epoch2.safetensors");
      polls = 0;
      const failed = await assertRejects(
        () =>
          trainModel(e, train, val, {
            ...options(b, 3, true),
            interrupt: () => {
              if (++polls === 5) {
                Deno.renameSync(ck, aside);
                Deno.mkdirSync(join(ck, "in-the-way"), { recursive: true });
              }
              return false;
            },
          }),
        Error,
      );
      assertEquals(failed instanceof Interrupted, false);
      assertEquals(
        (await readLog(b)).map((l) => l.epoch),
        [1, 2],
        "no line for the epoch whose checkpoint failed",
      );
      await Deno.remove(ck, { recursive: true });
      await Deno.rename(aside, ck);
      const c = await trainModel(e, train, val, options(b, 3, true));
      // The whole log (resumed epoch 2's mean loss over all its steps, epoch 3 once) is the uninterrupted one.
      assertEquals(await readLog(b), await readLog(join(dir, "a")));
      const strip = (h: { seconds: number }[]) => h.map(({ seconds: _, ...rest }) => rest);
      assertEquals(strip(c.history), strip(a.history));
      c.model.dispose();
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "a last batch of a single spot is folded into the batch before it (batch norm needs two values)",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const e = await engine();
    const { train, val } = tables();
    const dir = await Deno.makeTempDir({ prefix: "he2gene-train-last-" });
    try {
      // 24 training spots in batches of 23: 23 + 1 would give a one-spot batch; HE2Gene-Base has no
      // neighbour patches to fill it.
      const o = options(join(dir, "a"), 1);
      const r = await trainModel(e, train, val, {
        ...o,
        config: { ...o.config, variant: "base" },
        train: { ...o.train, spatWeight: 0 },
        batchSize: 23,
      });
      assertEquals(r.history.length === 1 && Number.isFinite(r.history[0].trainLoss), true);
      r.model.dispose();
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "train --test-sections holds a section out and writes its predictions, truth and training-mean baseline",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "he2gene-train-test-" });
    try {
      const { root, counts, tumor } = await tinyHer2st(join(dir, "her2st"));
      const out = join(dir, "run");
      const args = ["--dataset", "her2st", "--root", root, "--backbone", "tiny", "--epochs", "1"];
      const small = ["--crop-size", "24", "--image-size", "32", "--batch-size", "4", "--n-target", "2"];
      // A held-out section may be neither trained nor validated on (exit 2, before anything is read).
      await assertRejects(
        () => runTrain([...args, "--train-sections", "X1,X3", "--test-sections", "X3", "--out", out]),
        UsageError,
        "X3 is also in --train-sections",
      );
      await assertRejects(
        () => runTrain([...args, "--val-sections", "X3", "--test-sections", "X3", "--out", out]),
        UsageError,
        "X3 is also in --val-sections",
      );
      await runTrain([
        ...args,
        ...small,
        "--val-sections",
        "X2",
        "--test-sections",
        "X3",
        "--out",
        out,
        "--quiet",
      ]);
      const pred = await readNpz(join(out, "test_predictions.npz"));
      const truth = await readNpz(join(out, "test_truth.npz"));
      const base = await readNpz(join(out, "test_baseline.npz"));
      const names = pred.names.data as string[];
      assertEquals(names, [...counts.keys()].filter((n) => n.startsWith("X3_")));
      assertEquals(truth.names.data, names);
      assertEquals(base.names.data, names);
      assertEquals(pred.target.shape, [9, 2]);
      assertEquals(pred.aux.shape, [9, 3]);
      assertEquals(Array.from(pred.target.data as Float32Array).every(Number.isFinite), true);
      assertEquals(pred.tumor_prob.shape, [9]);
      assertEquals(base.tumor_prob, undefined);
      // The truth: log1p-normalised counts of the held-out spots, target then aux genes; tumour from clusters.
      const order = [...(pred.target_genes.data as string[]), ...(pred.aux_genes.data as string[])];
      const at = order.map((g) => Number(g.slice(1)));
      const norm = (row: number[]) => log1pNormalize(Float32Array.from(row));
      assertEquals(truth.genes.data, order);
      assertEquals(
        Array.from(truth.target.data as Float32Array),
        names.flatMap((n) => at.map((g) => norm(counts.get(n)!)[g])),
      );
      assertEquals(Array.from(truth.tumor.data as Float32Array), names.map((n) => tumor.get(n)));
      // The baseline: every held-out spot gets each gene's mean over the training section X1 (not X2, not X3).
      const train = [...counts.keys()].filter((n) => n.startsWith("X1_"));
      const mean = at.map((g) =>
        Math.fround(train.reduce((s, n) => s + norm(counts.get(n)!)[g], 0) / train.length)
      );
      const nT = pred.target_genes.shape[0];
      // (float64 sums over the spots in order, as the baseline's, so float32 results agree exactly)
      assertEquals(Array.from(base.target.data as Float32Array), names.flatMap(() => mean.slice(0, nT)));
      assertEquals(Array.from(base.aux.data as Float32Array), names.flatMap(() => mean.slice(nT)));
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "train --init-backbone starts from a torchvision state dict's backbone, with the file's architecture",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "he2gene-train-pretrained-" });
    try {
      const { root } = await tinyHer2st(join(dir, "her2st"));
      // ResNet-18 in torchvision's layout (its keys, fc included), from our init with seed 7.
      const c = BACKBONES.resnet18, shapes = parameterShapes(c);
      const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
      for (const [k, data] of initResNet(c, 7)) tensors.set(k, { shape: shapes.get(k)!, data });
      tensors.set("fc.weight", { shape: [1000, 512], data: new Float32Array(512000) });
      tensors.set("fc.bias", { shape: [1000], data: new Float32Array(1000) });
      const file = join(dir, "resnet18.safetensors");
      const f32 = (d: Float32Array) => new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
      await writeSafetensors(
        file,
        new Map(
          [...tensors].map(([k, t]) => [k, { dtype: "F32" as const, shape: t.shape, bytes: f32(t.data) }]),
        ),
      );
      const out = join(dir, "run");
      const args = [
        "--dataset",
        "her2st",
        "--root",
        root,
        "--epochs",
        "1",
        "--crop-size",
        "24",
        "--image-size",
        "32",
      ];
      const small = ["--batch-size", "4", "--n-target", "2", "--val-sections", "X2", "--quiet"];
      await assertRejects(
        () => runTrain([...args, "--init-backbone", file, "--backbone", "tiny", ...small, "--out", out]),
        UsageError,
        `--init-backbone ${file} holds a resnet18, but --backbone is tiny`,
      );
      await assertRejects(
        () => runTrain([...args, "--init-backbone", file, "--init", file, ...small, "--out", out]),
        UsageError,
        "--init (a whole HE2Gene model) and --init-backbone (backbone weights only) exclude each other",
      );
      // A learning rate so small that one epoch leaves the convolutions as they were (Adam's step ≈ lr).
      await runTrain([
        ...args,
        ...small,
        "--init-backbone",
        file,
        "--lr",
        "1e-12",
        "--weight-decay",
        "0",
        "--out",
        out,
      ]);
      const best = (await readSafetensors(join(out, "best.safetensors"))).tensors;
      for (const k of ["conv1.weight", "layer2.0.downsample.0.weight", "layer4.1.conv2.weight"]) {
        const got = toFloat32(best.get(`base_model.${k}`)!), want = tensors.get(k)!.data;
        let worst = 0;
        for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]));
        if (!(worst <= 1e-9)) throw new Error(`${k} moved by ${worst} from the file's weights`);
      }
      assertEquals(best.get("base_model.layer4.1.conv2.weight")!.shape, [512, 512, 3, 3]);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
