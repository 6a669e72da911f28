import { bceLossCpu, maskedMseLossCpu, mseLossCpu } from "../../kernels/loss.ts";
import { bceLoss, maskedMseLoss, mseLoss } from "../../ops/loss.ts";
import { sigmoid } from "../../ops/elementwise.ts";
import { requiresGrad, Tape, type Tensor } from "../../mod.ts";
import type { Engine } from "../../engine/engine.ts";
import {
  assertClose,
  assertEquals,
  assertGradients,
  assertThrows,
  gpuTest,
  lossGradTolerance,
  rand,
  TOL,
} from "../helpers.ts";

/** Tolerances, stated once in kernels/tolerance.ts: the loss value, and the gradients of N elements. */
const LOSS = TOL.loss;
const grad = lossGradTolerance;

/** Loss value and both gradients on the GPU (the target needs a gradient too). */
async function run(
  e: Engine,
  f: (p: Tensor, t: Tensor) => Tensor,
  p: Float32Array,
  t: Float32Array,
  shape: number[],
): Promise<{ loss: number; grad: Float32Array; gradTarget: Float32Array; lossShape: readonly number[] }> {
  return await e.scope(async () => {
    const pt = requiresGrad(e.tensor(p, shape));
    const tt = requiresGrad(e.tensor(t, shape));
    const tape = new Tape();
    const loss = tape.record(() => f(pt, tt));
    const grads = tape.backward(loss);
    const out = {
      loss: (await loss.toArray())[0],
      grad: await grads.get(pt)!.toArray(),
      gradTarget: await grads.get(tt)!.toArray(),
      lossShape: loss.shape,
    };
    for (const g of grads.values()) g.dispose();
    tape.dispose();
    return out;
  });
}

const SHAPES = [[1], [7], [33], [1000], [7, 33]];

gpuTest("mseLoss and its gradients match the float64 reference on awkward shapes", async (e) => {
  for (const shape of SHAPES) {
    const n = shape.reduce((a, b) => a * b, 1);
    const p = rand(n, n, -2, 2), t = rand(n, n + 1, -2, 2);
    const got = await run(e, mseLoss, p, t, shape);
    const want = mseLossCpu(p, t);
    assertEquals(got.lossShape, []);
    assertClose([got.loss], [want.loss], LOSS, `mse [${shape}]`);
    assertClose(got.grad, want.grad, grad(n), `mse grad [${shape}]`);
    assertClose(got.gradTarget, want.gradTarget, grad(n), `mse target grad [${shape}]`);
  }
});

gpuTest("bceLoss and its gradients match the float64 reference on awkward shapes", async (e) => {
  for (const shape of SHAPES) {
    const n = shape.reduce((a, b) => a * b, 1);
    const p = rand(n, n, 0.001, 0.999), t = rand(n, n + 1, 0, 1);
    const got = await run(e, bceLoss, p, t, shape);
    const want = bceLossCpu(p, t);
    assertClose([got.loss], [want.loss], LOSS, `bce [${shape}]`);
    assertClose(got.grad, want.grad, grad(n), `bce grad [${shape}]`);
    assertClose(got.gradTarget, want.gradTarget, grad(n), `bce target grad [${shape}]`);
  }
});

gpuTest("bceLoss clamps the logs at −100 when p is exactly 0 or 1", async (e) => {
  const p = new Float32Array([0, 0, 1, 1, 0, 1, 0.5, 1e-30]);
  const t = new Float32Array([0, 1, 0, 1, 0.3, 0.6, 1, 1]);
  const got = await run(e, bceLoss, p, t, [8]);
  const want = bceLossCpu(p, t);
  // 0 + 100 + 100 + 0 + 30 + 40 + ln 2 + 69.08 …, all finite
  assertClose([got.loss], [want.loss], LOSS, "bce at 0 and 1");
  assertEquals(got.grad.every(Number.isFinite), true);
  assertClose(got.grad, want.grad, grad(8), "bce grad at 0 and 1 (±1e12 / N where p(1−p) = 0)");
  assertClose(got.gradTarget, want.gradTarget, grad(8), "bce target grad at 0 and 1");
});

gpuTest("losses of 256 × 19699 elements keep float32 accuracy", async (e) => {
  const shape = [256, 19699];
  const n = shape[0] * shape[1];
  const p = rand(n, 11, 0.001, 0.999), t = rand(n, 12, 0, 1);
  for (const [name, f, ref] of [["mse", mseLoss, mseLossCpu], ["bce", bceLoss, bceLossCpu]] as const) {
    const got = await run(e, f, p, t, shape);
    const want = ref(p, t);
    assertClose([got.loss], [want.loss], { rtol: 2e-6, atol: 0 }, `${name} of 256×19699`);
    assertClose(got.grad, want.grad, grad(n), `${name} grad of 256×19699`);
  }
});

gpuTest("maskedMseLoss averages over held rows: none, one, all, and B = 1", async (e) => {
  const G = 33;
  const cases: [string, number[]][] = [
    ["no row", [0, 0, 0, 0, 0]],
    ["one row", [0, 0, 1, 0, 0]],
    ["three rows", [1, 0, 1, 0, 1]],
    ["all rows", [1, 1, 1, 1, 1]],
    ["B = 1 held", [1]],
    ["B = 1 not held", [0]],
  ];
  for (const [what, m] of cases) {
    const B = m.length;
    const p = rand(B * G, B, -1, 1), t = rand(B * G, B + 7, -1, 1);
    const mask = e.tensor(m, [B]);
    const got = await run(e, (a, b) => maskedMseLoss(a, b, mask), p, t, [B, G]);
    const want = maskedMseLossCpu(p, t, m);
    assertClose([got.loss], [want.loss], LOSS, `masked mse, ${what}`);
    assertClose(got.grad, want.grad, grad(B * G), `masked mse grad, ${what}`);
    assertClose(got.gradTarget, want.gradTarget, grad(B * G), `masked mse target grad, ${what}`);
    if (m.every((v) => v === 1)) {
      const plain = await run(e, mseLoss, p, t, [B, G]);
      assertClose([got.loss], [plain.loss], LOSS, `masked mse with all rows = mse, ${what}`);
    }
    if (m.every((v) => v === 0)) {
      assertEquals(got.loss, 0);
      assertEquals(got.grad.every((v) => v === 0), true);
    }
    mask.dispose();
  }
});

gpuTest("maskedMseLoss of 256 × 19699 with every third row masked out keeps float32 accuracy", async (e) => {
  const [B, G] = [256, 19699];
  const p = rand(B * G, 5), t = rand(B * G, 6);
  const m = new Float32Array(B).fill(1);
  for (let r = 0; r < B; r += 3) m[r] = 0;
  const mask = e.tensor(m, [B]);
  const got = await run(e, (a, b) => maskedMseLoss(a, b, mask), p, t, [B, G]);
  const want = maskedMseLossCpu(p, t, m);
  assertClose([got.loss], [want.loss], { rtol: 2e-6, atol: 0 }, "masked mse of 256×19699");
  assertClose(got.grad, want.grad, grad(B * G), "masked mse grad of 256×19699");
  mask.dispose();
});

gpuTest("loss gradients match finite differences", async (e) => {
  const p = { data: rand(21, 1, -1, 1), shape: [3, 7] };
  const t = { data: rand(21, 2, -1, 1), shape: [3, 7] };
  await assertGradients(e, ([a, b]) => mseLoss(a, b), [p, t], { what: "mse" });
  const prob = { data: rand(21, 3, 0.1, 0.9), shape: [3, 7] };
  const lab = { data: rand(21, 4, 0, 1), shape: [3, 7] };
  await assertGradients(e, ([a, b]) => bceLoss(a, b), [prob, lab], { what: "bce" });
  await assertGradients(e, ([x, b]) => bceLoss(sigmoid(x), b), [p, lab], { what: "bce ∘ sigmoid" });
  const mask = e.tensor([1, 0, 1], [3]);
  await assertGradients(e, ([a, b]) => maskedMseLoss(a, b, mask), [p, t], { what: "masked mse" });
  mask.dispose();
});

gpuTest("losses reject mismatched shapes with a RangeError naming both", (e) => {
  const a = e.tensor(new Float32Array(6), [2, 3]);
  const b = e.tensor(new Float32Array(6), [3, 2]);
  assertThrows(() => mseLoss(a, b), RangeError, "input has shape [2,3], target has shape [3,2]");
  assertThrows(() => bceLoss(a, b), RangeError, "bceLoss");
  const m = e.tensor(new Float32Array(3), [3]);
  assertThrows(() => maskedMseLoss(a, a, m), RangeError, "mask [3]");
  for (const t of [a, b, m]) t.dispose();
});

gpuTest("losses release their temporaries", async (e) => {
  const p = e.tensor(rand(100, 1), [10, 10]), t = e.tensor(rand(100, 2), [10, 10]);
  const m = e.tensor(new Float32Array(10).fill(1), [10]);
  await e.sync();
  const before = e.stats().inUse;
  const l = [mseLoss(p, t), bceLoss(sigmoid(p), sigmoid(t)), maskedMseLoss(p, t, m)];
  await e.sync();
  assertEquals(e.stats().inUse, before + 3 + 2); // three losses, two sigmoids
  for (const x of l) x.dispose();
  for (const x of [p, t, m]) x.dispose();
});
