import { batchNorm2d } from "../../ops/batchnorm.ts";
import {
  batchNorm2dBackward,
  batchNorm2dBackwardCpu,
  batchNorm2dCpu,
  batchNorm2dForward,
  batchNorm2dInference,
  type BatchNormState,
} from "../../kernels/batchnorm.ts";
import { mul } from "../../ops/elementwise.ts";
import { noGrad, requiresGrad, Tape } from "../../engine/autograd.ts";
import { sum } from "../../ops/reduce.ts";
import {
  assertClose,
  assertEquals,
  assertGradients,
  assertThrows,
  gpuTest,
  rand,
  TOL as SHARED_TOL,
} from "../helpers.ts";

/** Tolerances, stated once in kernels/tolerance.ts (forward, stats, rstd, grad, finite differences). */
const TOL = SHARED_TOL.batchNorm;

// [N, C, H, W] with awkward sizes; the last one splits each channel into 7 workgroups of the stats pass.
const SHAPES: number[][] = [
  [1, 1, 1, 2],
  [2, 3, 1, 1],
  [3, 1, 2, 2],
  [1, 3, 7, 9],
  [2, 17, 13, 13],
  [3, 17, 9, 7],
  [2, 3, 112, 112],
];

const size = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

gpuTest("batchNorm2d training forward matches the float64 reference on awkward shapes", async (e) => {
  for (const shape of SHAPES) {
    const c = shape[1];
    // An offset of 50 makes a naive Σx² variance lose all precision; Welford must not.
    const x = rand(size(shape), size(shape), 49, 51);
    const w = rand(c, 2, 0.5, 1.5), b = rand(c, 3, -1, 1);
    const rm = rand(c, 4, -0.5, 0.5), rv = rand(c, 5, 0.5, 2);
    const want = batchNorm2dCpu(x, shape, {
      weight: w,
      bias: b,
      runningMean: rm,
      runningVar: rv,
      training: true,
    });
    const runningMean = e.tensor(rm, [c]), runningVar = e.tensor(rv, [c]);
    const got = batchNorm2dForward(e.tensor(x, shape), {
      weight: e.tensor(w, [c]),
      bias: e.tensor(b, [c]),
      runningMean,
      runningVar,
      training: true,
    });
    assertEquals([...got.y.shape], shape);
    assertClose(await got.y.toArray(), want.y, TOL.forward, `y [${shape}]`);
    assertClose(await got.mean.toArray(), want.mean, TOL.stats, `mean [${shape}]`);
    assertClose(await got.rstd.toArray(), want.rstd, TOL.rstd, `rstd [${shape}]`);
    assertClose(await runningMean.toArray(), want.runningMean!, TOL.stats, `running_mean [${shape}]`);
    assertClose(await runningVar.toArray(), want.runningVar!, TOL.stats, `running_var [${shape}]`);
  }
});

gpuTest("batchNorm2d backward matches the float64 reference in training and eval mode", async (e) => {
  for (const shape of SHAPES) {
    const c = shape[1];
    const x = rand(size(shape), size(shape) + 1, -2, 2);
    const dy = rand(size(shape), size(shape) + 2, -1, 1);
    const w = rand(c, 6, 0.5, 1.5), b = rand(c, 7, -1, 1);
    const rm = rand(c, 8, -0.5, 0.5), rv = rand(c, 9, 0.5, 2);
    for (const training of [true, false]) {
      const xt = e.tensor(x, shape), wt = e.tensor(w, [c]);
      const fwd = batchNorm2dForward(xt, {
        weight: wt,
        bias: e.tensor(b, [c]),
        runningMean: e.tensor(rm, [c]),
        runningVar: e.tensor(rv, [c]),
        training,
      });
      const ref = batchNorm2dCpu(x, shape, { weight: w, bias: b, runningMean: rm, runningVar: rv, training });
      const want = batchNorm2dBackwardCpu(dy, x, shape, {
        weight: w,
        mean: ref.mean,
        rstd: ref.rstd,
        training,
      });
      const got = batchNorm2dBackward(e.tensor(dy, shape), xt, {
        weight: wt,
        mean: fwd.mean,
        rstd: fwd.rstd,
        training,
      });
      const what = `[${shape}] ${training ? "training" : "eval"}`;
      assertClose(await got.dx.toArray(), want.dx, TOL.grad, `dx ${what}`);
      assertClose(await got.dweight.toArray(), want.dweight, TOL.grad, `dweight ${what}`);
      assertClose(await got.dbias.toArray(), want.dbias, TOL.grad, `dbias ${what}`);
    }
  }
});

gpuTest("batchNorm2d gradients of x, weight and bias match finite differences", async (e) => {
  for (
    const [shape, training] of [[[2, 2, 2, 3], true], [[3, 3, 1, 2], true], [[2, 2, 2, 2], false]] as const
  ) {
    const c = shape[1];
    const n = size(shape);
    const r = e.tensor(rand(n, 11, -1, 1), [...shape]); // a fixed projection: Σ y alone is flat in x
    const rm = e.tensor(rand(c, 12, -0.5, 0.5), [c]), rv = e.tensor(rand(c, 13, 0.5, 2), [c]);
    await assertGradients(
      e,
      ([x, w, b]) =>
        mul(batchNorm2d(x, { weight: w, bias: b, runningMean: rm, runningVar: rv, training }), r),
      [
        { data: rand(n, 14, -2, 2), shape: [...shape] },
        { data: rand(c, 15, 0.5, 1.5), shape: [c] },
        { data: rand(c, 16, -1, 1), shape: [c] },
      ],
      { ...TOL.fd, what: `batchNorm2d [${shape}] ${training ? "training" : "eval"}` },
    );
  }
});

gpuTest(
  "running statistics after three training steps follow PyTorch's update (unbiased variance)",
  async (e) => {
    const shape = [3, 17, 9, 7], c = 17;
    const w = rand(c, 21, 0.5, 1.5), b = rand(c, 22, -1, 1);
    for (const momentum of [0.1, 0.3, null]) {
      let rm: ArrayLike<number> = new Float32Array(c), rv: ArrayLike<number> = new Float32Array(c).fill(1);
      const runningMean = e.tensor(new Float32Array(rm), [c]);
      const runningVar = e.tensor(new Float32Array(rv), [c]);
      const state: BatchNormState = { numBatchesTracked: 0 };
      for (let step = 1; step <= 3; step++) {
        const x = rand(size(shape), 100 + step, -step, 2 * step);
        batchNorm2d(e.tensor(x, shape), {
          weight: e.tensor(w, [c]),
          bias: e.tensor(b, [c]),
          runningMean,
          runningVar,
          training: true,
          momentum,
          state,
        }).dispose();
        const ref = batchNorm2dCpu(x, shape, {
          weight: w,
          bias: b,
          runningMean: rm,
          runningVar: rv,
          training: true,
          momentum: momentum ?? 1 / step,
        });
        rm = ref.runningMean!;
        rv = ref.runningVar!;
      }
      assertEquals(state.numBatchesTracked, 3);
      assertClose(await runningMean.toArray(), rm, TOL.stats, `running_mean, momentum ${momentum}`);
      assertClose(await runningVar.toArray(), rv, TOL.stats, `running_var, momentum ${momentum}`);
    }
  },
);

gpuTest(
  "eval mode uses the running statistics and leaves them unchanged; the fused variant agrees",
  async (e) => {
    for (const shape of [[1, 1, 1, 1], [2, 3, 7, 9], [3, 17, 13, 13]]) {
      const c = shape[1];
      const x = rand(size(shape), 31, -3, 3);
      const w = rand(c, 32, 0.5, 1.5), b = rand(c, 33, -1, 1);
      const rm = rand(c, 34, -0.5, 0.5), rv = rand(c, 35, 0.5, 2);
      const want = batchNorm2dCpu(x, shape, { weight: w, bias: b, runningMean: rm, runningVar: rv }).y;
      const opts = {
        weight: e.tensor(w, [c]),
        bias: e.tensor(b, [c]),
        runningMean: e.tensor(rm, [c]),
        runningVar: e.tensor(rv, [c]),
      };
      const state = { numBatchesTracked: 5 };
      const y = batchNorm2d(e.tensor(x, shape), { ...opts, state });
      assertClose(await y.toArray(), want, TOL.forward, `eval y [${shape}]`);
      assertClose(await batchNorm2dInference(e.tensor(x, shape), opts).toArray(), want, TOL.forward, "fused");
      const relu = await batchNorm2dInference(e.tensor(x, shape), { ...opts, relu: true }).toArray();
      assertClose(relu, want.map((v) => Math.max(v, 0)), TOL.forward, `fused relu [${shape}]`);
      assertEquals(await opts.runningMean.toArray(), rm);
      assertEquals(await opts.runningVar.toArray(), rv);
      assertEquals(state.numBatchesTracked, 5);
    }
  },
);

gpuTest("training with one value per channel throws a RangeError, as PyTorch does", (e) => {
  const one = e.tensor(new Float32Array(3), [1, 3, 1, 1]);
  const p = { weight: e.tensor(new Float32Array(3).fill(1), [3]), bias: e.tensor(new Float32Array(3), [3]) };
  const state = { numBatchesTracked: 0 };
  assertThrows(
    () => batchNorm2d(one, { ...p, training: true, state }),
    RangeError,
    "expected more than 1 value per channel, current value is input shape [1,3,1,1]",
  );
  assertEquals(state.numBatchesTracked, 0);
  assertThrows(
    () => batchNorm2d(e.tensor(new Float32Array(6), [2, 3]), { ...p, training: true }),
    RangeError,
    "expected input of shape [N, C, H, W], current value is [2,3]",
  );
  assertThrows(
    () => batchNorm2d(e.tensor(new Float32Array(8), [2, 4, 1, 1]), { ...p, training: true }),
    RangeError,
    "weight must have shape [4], current value is [3]",
  );
  assertThrows(() => batchNorm2d(one, p), TypeError, "runningMean must be a Tensor");
});

gpuTest("a recorded batchNorm2d releases every buffer once the tape and scope are done", async (e) => {
  const shape = [2, 3, 5, 5];
  const x = requiresGrad(e.tensor(rand(150, 41), shape));
  const w = requiresGrad(e.tensor(rand(3, 42), [3]));
  const b = requiresGrad(e.tensor(rand(3, 43), [3]));
  const rm = e.tensor(new Float32Array(3), [3]), rv = e.tensor(new Float32Array(3).fill(1), [3]);
  const before = e.stats().inUse;
  const tape = new Tape();
  const loss = e.scope(() =>
    tape.record(() =>
      sum(mul(batchNorm2d(x, { weight: w, bias: b, runningMean: rm, runningVar: rv, training: true }), x))
    )
  );
  const grads = tape.backward(loss);
  assertEquals([grads.has(x), grads.has(w), grads.has(b)], [true, true, true]);
  await grads.get(x)!.toArray();
  for (const g of grads.values()) g.dispose();
  tape.dispose();
  loss.dispose();
  assertEquals(e.stats().inUse, before);
  // Not recorded: the saved statistics are released at once.
  noGrad(() => batchNorm2d(x, { weight: w, bias: b, runningMean: rm, runningVar: rv })).dispose();
  assertEquals(e.stats().inUse, before);
});
