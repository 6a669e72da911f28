/**
 * The library's training loop (`pipeline/`) with its checkpoint, best model and log kept in memory gives
 * what `train`'s loop writes to files for the same spots: the same epochs, the same best weights, the same
 * checkpoint; an interrupt stops it with its checkpoint kept, and a resume from that checkpoint ends where
 * an uninterrupted run does.
 */
import { join } from "node:path";
import { trainModel } from "../../cli/train_loop.ts";
import {
  type EpochLog,
  memoryTrainStore,
  type SpotTable,
  TrainingInterrupted,
  trainSpots,
} from "../../pipeline/mod.ts";
import { TINY } from "../../model/mod.ts";
import { cropPatch, log1pNormalize, syntheticSection } from "../../slide/mod.ts";
import { readSafetensors } from "../../weights/mod.ts";
import { assertEquals, assertRejects, engine } from "../helpers.ts";

/** Training and validation spots of a small synthetic section (2 target genes, 4 aux). */
function tables(): { train: SpotTable; val: SpotTable } {
  const sec = syntheticSection({ rows: 5, cols: 6, spacing: 24, genes: 6, seed: 9 });
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
      tumor: Int8Array.from(idx, (i) => (sec.spots[i].tumor ? 1 : 0)),
    };
  };
  return { train: make((c) => c < 4), val: make((c) => c >= 4) };
}

const options = {
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
  epochs: 2,
  patience: 10,
  imageSize: 32,
  seed: 4,
};

/** A log without its wall-clock seconds. */
const timeless = (h: EpochLog[]) => h.map(({ seconds: _, ...rest }) => rest);

Deno.test({
  name:
    "pipeline trainSpots with a memory store equals train's loop with files, and resumes after an interrupt",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const e = await engine();
    const { train, val } = tables();
    const dir = await Deno.makeTempDir({ prefix: "he2gene-pipeline-train-" });
    try {
      const out = join(dir, "run");
      const cli = await trainModel(e, train, val, { ...options, out, quiet: true });

      const store = memoryTrainStore();
      const epochs: number[] = [], steps: number[] = [];
      const lib = await trainSpots(e, train, val, {
        ...options,
        store,
        onEpoch: (log) => epochs.push(log.epoch),
        onStep: (p) => steps.push(p.step),
      });
      assertEquals(epochs, [1, 2]);
      assertEquals(steps, [1, 2, 3, 1, 2, 3]); // 3 batches of up to 8 training spots an epoch
      assertEquals(timeless(lib.history), timeless(cli.history));
      assertEquals(lib.best, cli.best);
      assertEquals(timeless(store.log), timeless(cli.history));
      const logLines = (await Deno.readTextFile(join(out, "log.jsonl"))).trim().split("\n").map((l) =>
        JSON.parse(l)
      );
      // (JSON keeps NaN, e.g. an AUC without both classes, as null.)
      assertEquals(timeless(JSON.parse(JSON.stringify(store.log))), timeless(logLines));
      // The best model: the same tensors and metadata as best.safetensors.
      const best = await readSafetensors(join(out, "best.safetensors"));
      assertEquals(store.best!.metadata, best.metadata);
      for (const [k, t] of best.tensors) assertEquals(store.best!.tensors.get(k)!.bytes, t.bytes, k);
      const [sa, sb] = [await lib.model.stateDict(), await cli.model.stateDict()];
      for (const [k, v] of sa) assertEquals(sb.get(k)!.data, v.data, k);
      // The checkpoint: the same weights, optimiser state and progress.
      const ck = await readSafetensors(join(out, "checkpoint.safetensors"));
      assertEquals(store.checkpoint!.metadata.progress, ck.metadata.progress);
      assertEquals(store.checkpoint!.metadata.run, ck.metadata.run);
      for (const [k, t] of ck.tensors) assertEquals(store.checkpoint!.tensors.get(k)!.bytes, t.bytes, k);
      cli.model.dispose();

      // Polled after each step and after epoch 1: the 5th poll is at epoch 2, step 1. The checkpoint is
      // kept; resuming from it ends where the run above did.
      const stopped = memoryTrainStore();
      let n = 0;
      await assertRejects(
        () => trainSpots(e, train, val, { ...options, store: stopped, interrupt: () => ++n === 5 }),
        TrainingInterrupted,
        "training stopped at epoch 2, step 1 of 3",
      );
      assertEquals(stopped.log.length, 1);
      const resumed = await trainSpots(e, train, val, {
        ...options,
        store: stopped,
        resume: { ...stopped.checkpoint!, from: "memory", file: "checkpoint" },
      });
      assertEquals(timeless(resumed.history), timeless(lib.history));
      const sr = await resumed.model.stateDict();
      for (const [k, v] of sa) assertEquals(sr.get(k)!.data, v.data, k);
      lib.model.dispose();
      resumed.model.dispose();
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
