/**
 * One HE2Gene-Spat training step of ResNet-50 + heads (250 target, 19 699 aux genes) at 224 px on a
 * synthetic batch: `--batch` centre spots, each with `--neighbours` neighbour patches that go through the
 * backbone too (the original's default: 32 spots, 8 neighbours, 288 images), with or without activation
 * checkpointing (`Trainer`'s `checkpoint`, `he2gene train --checkpoint`). Prints the step time and the
 * buffer pool's peak (model, gradients and Adam state included), so the memory a batch needs can be read
 * off before a long run. No peer: nothing else trains this step on the same adapter.
 *
 * `deno run -A bench/spat.ts [--batch 32] [--neighbours 8] [--no-checkpoint] [--steps 1]`
 *
 * @module
 */
import { parseArgs } from "node:util";
import { createEngine } from "../engine/engine.ts";
import { DEFAULT_TRAIN, HE2Gene, RESNET50, Trainer } from "../model/mod.ts";
import { uniform } from "../model/resnet.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    batch: { type: "string", default: "32" },
    neighbours: { type: "string", default: "8" },
    "no-checkpoint": { type: "boolean", default: false },
    steps: { type: "string", default: "1" },
  },
  strict: true,
});
const b = Number(values.batch), k = Number(values.neighbours), steps = Number(values.steps);
for (const [name, v] of [["--batch", b], ["--neighbours", k], ["--steps", steps]] as const) {
  if (!Number.isInteger(v) || v < (name === "--neighbours" ? 0 : 1)) {
    throw new Error(`${name}: not a count: ${v}`);
  }
}
const checkpoint = !values["no-checkpoint"];
const n = b * (1 + k), size = 224, genes = 250, aux = 19699;
const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(0);

const e = await createEngine();
console.log(
  `HE2Gene-Spat step, ResNet-50 at ${size} px: ${b} spots + ${b * k} neighbour patches = ${n} images; ` +
    `activation checkpointing ${
      checkpoint ? "on" : "off"
    }; adapter ${e.adapterInfo.name} (${e.adapterInfo.backend})`,
);
const model = HE2Gene.init(e, { backbone: RESNET50, variant: "spat", targetGenes: genes, auxGenes: aux }, 3);
const trainer = new Trainer(e, model, { ...DEFAULT_TRAIN, spatWeight: 0.01 }, { checkpoint });
const rng = uniform(2);
const nbr = Array.from({ length: b }, (_, i) => Array.from({ length: k }, (_, j) => i * k + j));
const tumor = Int8Array.from({ length: b }, (_, i) => i % 2);
for (let s = 0; s < steps; s++) {
  // Normalised inputs (uniform on ±√3: zero mean, unit variance), log1p-like targets.
  const x = e.tensor(Float32Array.from({ length: n * 3 * size * size }, () => (2 * rng() - 1) * 1.7320508), [
    n,
    3,
    size,
    size,
  ]);
  const target = e.tensor(Float32Array.from({ length: b * genes }, () => 3 * rng() * rng()), [b, genes]);
  const auxT = e.tensor(Float32Array.from({ length: b * aux }, () => 3 * rng() * rng()), [b, aux]);
  e.pool.resetPeak();
  const t0 = performance.now();
  const l = await trainer.step({ x, b, target, aux: auxT, tumor, nbr });
  const sec = (performance.now() - t0) / 1000;
  const st = e.pool.stats();
  const losses = `loss ${l.total.toFixed(4)} (target ${l.target.toFixed(4)}, aux ${l.aux.toFixed(4)}, ` +
    `tumour ${l.tumor.toFixed(4)}, spatial ${l.spat.toFixed(4)})`;
  const held = mib(st.totalBytes), rss = mib(Deno.memoryUsage().rss);
  console.log(
    `step ${s + 1}: ${sec.toFixed(1)} s (${(sec / n).toFixed(2)} s per image); GPU memory: peak ` +
      `${mib(st.peakInUseBytes)} MiB in use, the pool now holds ${held} MiB; process resident ${rss} MiB; ` +
      losses,
  );
  for (const t of [x, target, auxT]) t.dispose();
}
trainer.dispose();
model.dispose();
