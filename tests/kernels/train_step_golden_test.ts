/**
 * Whole-model golden test: one HE2Gene-Base training step of a tiny ResNet, checked against a PyTorch dump
 * (llm.c's `test_gpt2` idea). Forward with training-mode batch norm, the weighted loss, backward through
 * every op, global gradient-norm clipping, one Adam step, and the BatchNorm running statistics.
 *
 * The fixture (`tests/fixtures/train_step/`: `train_step.bin` + `manifest.json`) is written by
 * `make_fixture.py` beside it, which documents the network and the array names. Parameter names are the
 * PyTorch `state_dict` keys.
 */
import { AssertionError } from "node:assert";
import {
  Adam,
  add,
  backward,
  batchNorm2d,
  type BatchNormState,
  bceLoss,
  conv2d,
  type Engine,
  globalAvgPool,
  linear,
  maxPool2d,
  mseLoss,
  mul,
  relu,
  sigmoid,
  type Tensor,
} from "../../mod.ts";
import { assertClose, assertEquals, gpuTest } from "../helpers.ts";

/**
 * Tolerances, stated once: `|got − want| ≤ atol + rtol·|want|`. Both sides are float32 with different
 * summation orders (implicit-GEMM convolutions, Welford batch statistics, tree reductions), through a few
 * dozen ops; the fixture's margins (ReLU inputs ≥ 5e-4 from 0, max-pool winners ≥ 1e-3 ahead) keep such
 * differences from flipping a mask or an argmax, so every quantity is smooth and float32-close. The one
 * gradient that passes on atol alone is `conv1.bias`: it feeds a training-mode BN, so it is exactly 0 and
 * both sides hold float32 noise (~1e-6).
 */
const VALUES = { rtol: 1e-4, atol: 1e-5 };
/**
 * Adam's moments are checked as the gradient they imply, g′ = c·g + wd·θ, where clipping scales g by
 * c = max_norm / ‖g‖ (1/120 here): the error of g shrinks with it, so the absolute part scales by c too.
 * (The parameters after step 1 barely see c — Adam's first update is ≈ lr·sign(g′) — so the moments are
 * what tests the clipping.)
 */
const clipped = (c: number) => ({ rtol: VALUES.rtol, atol: c * VALUES.atol });

// ---------------------------------------------------------------- fixture

interface Manifest {
  torch: string;
  hyper: {
    lr: number;
    weightDecay: number;
    betas: [number, number];
    eps: number;
    clipNorm: number;
    auxWeight: number;
    tumourWeight: number;
    bnMomentum: number;
    bnEps: number;
  };
  scalars: Record<"loss" | "loss_target" | "loss_aux" | "loss_tumour" | "grad_norm", number>;
  num_batches_tracked: Record<string, number>;
  parameters: string[];
  arrays: Record<string, { shape: number[]; offset: number }>;
}

const DIR = new URL("../fixtures/train_step/", import.meta.url);
const manifest: Manifest = JSON.parse(await Deno.readTextFile(new URL("manifest.json", DIR)));
const blob = await Deno.readFile(new URL("train_step.bin", DIR));
// Raw little-endian float32; copy only if the file's bytes are not 4-aligned.
const floats = blob.byteOffset % 4 === 0
  ? new Float32Array(blob.buffer, blob.byteOffset, blob.byteLength >> 2)
  : new Float32Array(blob.slice().buffer);

/** A fixture array (a view into the .bin) with its shape; the error names a missing key. */
function fixture(name: string): { data: Float32Array; shape: number[] } {
  const a = manifest.arrays[name];
  if (!a) throw new RangeError(`train_step fixture: no array "${name}" in manifest.json`);
  const n = a.shape.reduce((x, y) => x * y, 1);
  if (a.offset + n > floats.length) {
    throw new RangeError(
      `train_step fixture: "${name}" [${a.shape}] ends at float ${
        a.offset + n
      }, the .bin has ${floats.length}`,
    );
  }
  return { data: floats.subarray(a.offset, a.offset + n), shape: a.shape };
}

const BN = ["bn1", "layer1.0.bn1", "layer1.0.bn2"];
const BUFFERS = BN.flatMap((m) => [`${m}.running_mean`, `${m}.running_var`]);

// ---------------------------------------------------------------- the step

/** Everything the step produces, read back to the host and keyed by state_dict names. */
interface StepResult {
  scalars: Manifest["scalars"];
  grads: Map<string, Float32Array>;
  params: Map<string, Float32Array>;
  /** Adam's state after the step: `<name>.exp_avg`, `<name>.exp_avg_sq` (and `<name>.step`). */
  adam: Map<string, Float32Array>;
  buffers: Map<string, Float32Array>;
  numBatchesTracked: Map<string, number>;
}

async function trainStep(e: Engine): Promise<StepResult> {
  const { hyper } = manifest;
  const upload = (name: string, requiresGrad = false) => {
    const { data, shape } = fixture(name);
    return e.tensor(data, shape, { requiresGrad });
  };
  const params = new Map(manifest.parameters.map((k) => [k, upload(`init.${k}`, true)]));
  const buffers = new Map(BUFFERS.map((k) => [k, upload(`init.${k}`)]));
  const states = new Map<string, BatchNormState>(BN.map((m) => [m, { numBatchesTracked: 0 }]));
  const p = (k: string) => params.get(k)!;
  const bn = (m: string, x: Tensor) =>
    batchNorm2d(x, {
      weight: p(`${m}.weight`),
      bias: p(`${m}.bias`),
      runningMean: buffers.get(`${m}.running_mean`),
      runningVar: buffers.get(`${m}.running_var`),
      training: true,
      momentum: hyper.bnMomentum,
      eps: hyper.bnEps,
      state: states.get(m),
    });
  const head = (fc: string, f: Tensor) => linear(f, p(`${fc}.weight`), p(`${fc}.bias`));

  const opt = new Adam(params, {
    lr: hyper.lr,
    betas: hyper.betas,
    eps: hyper.eps,
    weightDecay: hyper.weightDecay,
  });
  try {
    return await e.scope(async () => {
      const x = upload("input.x"); // [2, 3, 12, 12]
      let h = conv2d(x, p("conv1.weight"), { bias: p("conv1.bias"), stride: 2, padding: 1 }); // [2, 8, 6, 6]
      h = relu(bn("bn1", h));
      h = maxPool2d(h, { kernelSize: 3, stride: 2, padding: 1 }); // [2, 8, 3, 3]
      const identity = h;
      h = relu(bn("layer1.0.bn1", conv2d(h, p("layer1.0.conv1.weight"), { padding: 1 })));
      h = bn("layer1.0.bn2", conv2d(h, p("layer1.0.conv2.weight"), { padding: 1 }));
      h = relu(add(h, identity));
      const f = globalAvgPool(h); // [2, 8]

      // HE2Gene-Base: MSE(target genes) + λ_aux·MSE(auxiliary genes) + λ_tumour·BCE(tumour probability).
      const lossTarget = mseLoss(head("fc1", f), upload("input.target")); // [2, 5]
      const lossAux = mseLoss(head("fc2", f), upload("input.aux")); // [2, 7]
      const lossTumour = bceLoss(sigmoid(head("fc3", f)), upload("input.tumour")); // [2, 1]
      const loss = add(add(lossTarget, mul(lossAux, hyper.auxWeight)), mul(lossTumour, hyper.tumourWeight));
      const scalar = async (t: Tensor) => (await t.toArray())[0];
      const scalars = {
        loss: await scalar(loss),
        loss_target: await scalar(lossTarget),
        loss_aux: await scalar(lossAux),
        loss_tumour: await scalar(lossTumour),
        grad_norm: NaN,
      };

      await backward(loss);
      const grads = new Map<string, Float32Array>();
      for (const [k, t] of params) {
        if (!t.grad) throw new AssertionError({ message: `${k} has no gradient after backward(loss)` });
        grads.set(k, await t.grad.toArray());
      }
      const norm = opt.step({ clipNorm: hyper.clipNorm });
      if (!norm) throw new AssertionError({ message: "Adam.step({ clipNorm }) returned no gradient norm" });
      scalars.grad_norm = await scalar(norm);

      const read = async (m: Map<string, Tensor>) =>
        new Map(await Promise.all([...m].map(async ([k, t]) => [k, await t.toArray()] as const)));
      return {
        scalars,
        grads,
        params: await read(params),
        adam: new Map([...await opt.stateDict()].map(([k, v]) => [k, v.data])),
        buffers: await read(buffers),
        numBatchesTracked: new Map(
          BN.map((m) => [`${m}.num_batches_tracked`, states.get(m)!.numBatchesTracked]),
        ),
      };
    });
  } finally {
    opt.zeroGrad();
    opt.dispose();
    for (const t of [...params.values(), ...buffers.values()]) if (!t.disposed) t.dispose();
  }
}

// One step, shared by the tests below (each checks one quantity).
let result: Promise<StepResult> | null = null;
const step = (e: Engine) => result ??= trainStep(e);

/** Compare `[name, got, want]` triples; one AssertionError lists every name that differs, not just the first. */
function assertAllClose(
  what: string,
  cases: [string, ArrayLike<number>, ArrayLike<number>][],
  tol: { rtol: number; atol: number },
): void {
  const failures: string[] = [];
  for (const [k, got, want] of cases) {
    try {
      assertClose(got, want, tol, `${what} ${k}`);
    } catch (err) {
      failures.push((err as Error).message);
    }
  }
  if (failures.length > 0) throw new AssertionError({ message: failures.join("\n") });
}

/** Pair each computed array with the fixture's `<prefix>.<name>`, transformed by `f`. */
const against = (
  got: Map<string, Float32Array>,
  prefix: string,
  f = (a: Float32Array) => a,
  suffix = "",
): [string, Float32Array, Float32Array][] =>
  [...got].map(([k, g]) => [k + suffix, f(g), f(fixture(`${prefix}.${k}${suffix}`).data)]);

// ---------------------------------------------------------------- tests

gpuTest("one training step: the HE2Gene-Base loss and its terms match PyTorch", async (e) => {
  const { scalars } = await step(e);
  for (const k of ["loss_target", "loss_aux", "loss_tumour", "loss"] as const) {
    assertClose([scalars[k]], [manifest.scalars[k]], VALUES, k);
  }
});

gpuTest("one training step: every parameter's gradient matches PyTorch (before clipping)", async (e) => {
  const { grads } = await step(e);
  assertEquals([...grads.keys()], manifest.parameters);
  assertAllClose("gradient of", against(grads, "grad"), VALUES);
});

gpuTest("one training step: Adam.step returns the gradient norm of clip_grad_norm_", async (e) => {
  const { scalars } = await step(e);
  assertClose([scalars.grad_norm], [manifest.scalars.grad_norm], VALUES, "grad norm");
});

gpuTest("one training step: every parameter after clipping and one Adam step matches PyTorch", async (e) => {
  const { params } = await step(e);
  assertAllClose("after Adam:", against(params, "step"), VALUES);
});

gpuTest("one training step: Adam's moments hold the clipped, weight-decayed gradient", async (e) => {
  const { adam } = await step(e);
  const [b1, b2] = manifest.hyper.betas;
  const tol = clipped(manifest.hyper.clipNorm / manifest.scalars.grad_norm);
  const moment = (suffix: string) =>
    new Map(manifest.parameters.map((k) => [k, adam.get(`${k}.${suffix}`) ?? new Float32Array(0)]));
  // Compared as the gradient g′ = clip·g + wd·θ they imply: exp_avg = (1 − β1)·g′, exp_avg_sq = (1 − β2)·g′².
  const g1 = (m: Float32Array) => m.map((v) => v / (1 - b1));
  const g2 = (v: Float32Array) => v.map((x) => Math.sqrt(x / (1 - b2)));
  assertAllClose("g′ = exp_avg / (1 − β1) of", against(moment("exp_avg"), "adam", g1, ".exp_avg"), tol);
  assertAllClose(
    "|g′| = √(exp_avg_sq / (1 − β2)) of",
    against(moment("exp_avg_sq"), "adam", g2, ".exp_avg_sq"),
    tol,
  );
  for (const k of manifest.parameters) assertEquals(adam.get(`${k}.step`)?.[0], 1, `${k}.step`);
});

gpuTest(
  "one training step: BatchNorm running statistics and num_batches_tracked match PyTorch",
  async (e) => {
    const { buffers, numBatchesTracked } = await step(e);
    assertAllClose("BatchNorm", against(buffers, "stats"), VALUES);
    assertEquals(Object.fromEntries(numBatchesTracked), manifest.num_batches_tracked);
  },
);
