import { checkpoint, isRecomputing, requiresGrad, Tape } from "../../engine/autograd.ts";
import { DEFAULT_TRAIN, HE2Gene, type HostTensor, TINY, Trainer, type Variant } from "../../model/mod.ts";
import { uniform } from "../../model/resnet.ts";
import { mul, relu } from "../../ops/elementwise.ts";
import { assertEquals, gpuTest } from "../helpers.ts";

/** Two training steps from the same weights, with or without activation checkpointing. */
async function twoSteps(e: Parameters<Parameters<typeof gpuTest>[1]>[0], variant: Variant, ck: boolean) {
  const b = 3, nbrs = variant === "spat" ? 2 : 0, n = b * (1 + nbrs), s = 64, g = 5, a = 7;
  const model = HE2Gene.init(e, { backbone: TINY, variant, targetGenes: g, auxGenes: a }, 11);
  const trainer = new Trainer(e, model, {
    ...DEFAULT_TRAIN,
    lr: 1e-3,
    spatWeight: variant === "spat" ? 0.5 : 0,
  }, {
    checkpoint: ck,
  });
  const rng = uniform(5);
  const losses: number[][] = [];
  for (let step = 0; step < 2; step++) {
    const x = e.tensor(Float32Array.from({ length: n * 3 * s * s }, () => 2 * rng() - 1), [n, 3, s, s]);
    const target = e.tensor(Float32Array.from({ length: b * g }, () => rng()), [b, g]);
    const aux = e.tensor(Float32Array.from({ length: b * a }, () => rng()), [b, a]);
    const nbr = nbrs ? Array.from({ length: b }, (_, i) => [2 * i, 2 * i + 1]) : undefined;
    const l = await trainer.step({ x, b, target, aux, tumor: Int8Array.from([1, 0, -1]), nbr });
    losses.push([l.total, l.target, l.aux, l.tumor, l.spat]);
    for (const t of [x, target, aux]) t.dispose();
  }
  const sd: Map<string, HostTensor> = await model.stateDict();
  const bn = [...model.bnStates.values()].map((st) => st.numBatchesTracked);
  trainer.dispose();
  model.dispose();
  return { losses, sd, bn };
}

for (const variant of ["base", "spat"] as const) {
  gpuTest(
    `${variant}: checkpointed training steps give the same losses, weights and running statistics`,
    async (e) => {
      const plain = await twoSteps(e, variant, false);
      const ck = await twoSteps(e, variant, true);
      assertEquals(ck.losses, plain.losses, "losses");
      assertEquals([...ck.sd.keys()], [...plain.sd.keys()]);
      // Every parameter after two Adam steps, and the running statistics (updated once per forward, not again
      // when a block is recomputed), bit for bit: the recomputation runs the same kernels on the same data.
      for (const [k, t] of plain.sd) assertEquals(ck.sd.get(k)!.data, t.data, k);
      assertEquals(ck.bn, plain.bn, "num_batches_tracked");
      assertEquals(plain.bn.every((c) => c === 2), true, "two training forwards each");
    },
  );
}

gpuTest(
  "checkpoint: gradients of inputs and parameters equal the plain tape's; recomputation is flagged",
  async (e) => {
    const x = requiresGrad(e.tensor(Float32Array.from({ length: 12 }, (_, i) => i - 5.5), [12]));
    const w = requiresGrad(e.tensor(Float32Array.from({ length: 12 }, (_, i) => 0.1 * i - 0.3), [12]));
    let runs = 0, recomputed = 0;
    const f = ([xi]: readonly Parameters<typeof relu>[0][]) => {
      runs++;
      if (isRecomputing()) recomputed++;
      return mul(relu(mul(xi, w)), xi);
    };
    const grads = async (ck: boolean) => {
      const tape = new Tape();
      const y = tape.record(() => (ck ? checkpoint(f, [x], [w]) : f([x])));
      const g = tape.backward(y);
      const out = [await g.get(x)!.toArray(), await g.get(w)!.toArray()];
      for (const t of g.values()) t.dispose();
      tape.dispose();
      return out;
    };
    const plain = await grads(false);
    assertEquals([runs, recomputed], [1, 0]);
    const ck = await grads(true);
    assertEquals([runs, recomputed], [3, 1], "once forward, once in backward");
    assertEquals(ck, plain);
  },
);
