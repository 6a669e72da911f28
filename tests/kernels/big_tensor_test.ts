/**
 * Tensors larger than one storage binding (issue 13, item 5): batch norm, pooling and reductions split
 * them into binding ranges (kernels/_ranges.ts).
 *
 * - On an engine whose binding limit is lowered to 4 MiB (offsets aligned to 256 B), ragged shapes (runs
 *   that start off the alignment, a last run shorter than the others) against the CPU references.
 * - On the real limit (128 MiB on llvmpipe): batch norm (training) and max pool 3×3/2, forward and
 *   backward, on a [44, 64, 112, 112] tensor (135 MiB) against PyTorch (float64), from
 *   tests/fixtures/big_tensors/make.py.
 */
import type { Engine } from "../../engine/engine.ts";
import {
  batchNorm2dBackward,
  batchNorm2dBackwardCpu,
  batchNorm2dCpu,
  batchNorm2dForward,
  batchNorm2dInference,
} from "../../kernels/batchnorm.ts";
import {
  globalAvgPool2dBackward,
  globalAvgPool2dBackwardCpu,
  globalAvgPool2dCpu,
  globalAvgPool2dForward,
  maxPool2dBackward,
  maxPool2dBackwardCpu,
  maxPool2dCpu,
  maxPool2dForward,
  type MaxPool2dOptions,
} from "../../kernels/pool.ts";
import { normAxes, reduce, reduceBackward, reduceCpu, type ReduceOp } from "../../kernels/reduce.ts";
import {
  assertClose,
  assertEquals,
  assertThrows,
  gpuTest,
  hashed,
  rand,
  smallBindingEngine,
  TOL,
  type Tolerance,
  valuesAt,
} from "../helpers.ts";

const size = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

// ------------------------------------------------------------------ a 4 MiB binding: ragged splits

let small: Promise<Engine> | null = null;

/** A test on the engine with a 4 MiB binding limit (made once per process). */
function smallTest(name: string, fn: (e: Engine) => Promise<void> | void): void {
  Deno.test({
    name,
    sanitizeOps: false,
    sanitizeResources: false,
    fn: async () => {
      const e = await (small ??= smallBindingEngine(4 << 20, 256));
      await e.scope(() => fn(e));
      e.checkError();
    },
  });
}

// 1 577 317 values (6.3 MiB): runs of 15 samples and 107 planes, none starting on a 256 B boundary.
const BIG = [23, 7, 97, 101];
// 1 134 567 values (4.3 MiB): runs of 21 samples (the second starts 5 values past a 256 B boundary), and
// 18 009 values per channel, as many as the tolerances of batch norm are stated for.
const BIG_BN = [23, 63, 27, 29];

smallTest(
  "batch norm beyond one binding runs in ragged runs of samples and matches the reference",
  async (e) => {
    const shape = BIG_BN, c = shape[1];
    // Forward: an offset of 50 (Welford must keep the variance); backward: values around 0, as in
    // batchnorm_test.ts (the saved float32 mean of values around 50 would shift Σ dy·x̂).
    const x = rand(size(shape), 5, 49, 51), x0 = rand(size(shape), 4, -2, 2), dy = rand(size(shape), 6);
    const w = rand(c, 7, 0.5, 1.5), b = rand(c, 8), rm = rand(c, 9, -0.5, 0.5), rv = rand(c, 10, 0.5, 2);
    const xt = e.tensor(x, shape), x0t = e.tensor(x0, shape), wt = e.tensor(w, [c]), bt = e.tensor(b, [c]);
    assertEquals(xt.bytes > e.maxBinding, true);
    for (const training of [true, false]) {
      const mode = training ? "training" : "eval";
      const runningMean = e.tensor(rm, [c]), runningVar = e.tensor(rv, [c]);
      const got = batchNorm2dForward(xt, { weight: wt, bias: bt, runningMean, runningVar, training });
      const want = batchNorm2dCpu(x, shape, {
        weight: w,
        bias: b,
        runningMean: rm,
        runningVar: rv,
        training,
      });
      assertClose(await got.y.toArray(), want.y, TOL.batchNorm.forward, `y ${mode}`);
      assertClose(await got.mean.toArray(), want.mean, TOL.batchNorm.stats, `mean ${mode}`);
      assertClose(await got.rstd.toArray(), want.rstd, TOL.batchNorm.rstd, `rstd ${mode}`);
      const [wantRm, wantRv] = training ? [want.runningMean!, want.runningVar!] : [rm, rv];
      assertClose(await runningMean.toArray(), wantRm, TOL.batchNorm.stats, `running_mean ${mode}`);
      assertClose(await runningVar.toArray(), wantRv, TOL.batchNorm.stats, `running_var ${mode}`);

      const fwd0 = batchNorm2dForward(x0t, { weight: wt, bias: bt, runningMean, runningVar, training });
      const ref0 = batchNorm2dCpu(x0, shape, {
        weight: w,
        bias: b,
        runningMean: rm,
        runningVar: rv,
        training,
      });
      const grads = batchNorm2dBackward(e.tensor(dy, shape), x0t, {
        weight: wt,
        mean: fwd0.mean,
        rstd: fwd0.rstd,
        training,
      });
      const wantGrads = batchNorm2dBackwardCpu(dy, x0, shape, {
        weight: w,
        mean: ref0.mean,
        rstd: ref0.rstd,
        training,
      });
      assertClose(await grads.dx.toArray(), wantGrads.dx, TOL.batchNorm.grad, `dx ${mode}`);
      assertClose(await grads.dweight.toArray(), wantGrads.dweight, TOL.batchNorm.grad, `dweight ${mode}`);
      assertClose(await grads.dbias.toArray(), wantGrads.dbias, TOL.batchNorm.grad, `dbias ${mode}`);
    }
    const fused = batchNorm2dInference(xt, {
      weight: wt,
      bias: bt,
      runningMean: e.tensor(rm, [c]),
      runningVar: e.tensor(rv, [c]),
      relu: true,
    });
    const want = batchNorm2dCpu(x, shape, { weight: w, bias: b, runningMean: rm, runningVar: rv }).y;
    assertClose(await fused.toArray(), want.map((v) => Math.max(v, 0)), TOL.batchNorm.forward, "fused relu");
  },
);

smallTest("a sample larger than one binding throws a RangeError naming the op", (e) => {
  const shape = [2, 2, 800, 700]; // one sample: 4.3 MiB
  const x = e.tensor(new Float32Array(size(shape)), shape);
  const p = { weight: e.tensor(new Float32Array(2), [2]), bias: e.tensor(new Float32Array(2), [2]) };
  assertThrows(
    () => batchNorm2dForward(x, { ...p, training: true }),
    RangeError,
    "Cannot batchNorm2d: one sample of 1120000 values exceeds one storage binding",
  );
});

smallTest("max and average pooling beyond one binding run in ragged runs of planes", async (e) => {
  const shape = BIG;
  const pools: MaxPool2dOptions[] = [{ kernelSize: 3, stride: 2, padding: 1 }, { kernelSize: 2 }];
  // Small integers: many ties, where the first maximum must win in every run.
  const x = rand(size(shape), 11, -3, 3).map(Math.round);
  const xt = e.tensor(x, shape);
  for (const o of pools) {
    const what = JSON.stringify(o);
    const want = maxPool2dCpu(x, shape, o);
    const { y, indices } = maxPool2dForward(xt, o, true);
    assertClose(await y.toArray(), want.y, TOL.pool.maxForward, `maxpool y ${what}`);
    assertClose(
      await indices!.toArray(),
      Float32Array.from(want.indices),
      TOL.exact,
      `maxpool indices ${what}`,
    );
    const dy = rand(y.size, 12);
    const dx = maxPool2dBackward(e.tensor(dy, y.shape), indices!, shape, o);
    const wantDx = maxPool2dBackwardCpu(dy, want.indices, shape);
    assertClose(await dx.toArray(), wantDx, TOL.pool.maxBackward, `maxpool dx ${what}`);
  }
  const xs = rand(size(shape), 13, -2, 2);
  const avg = globalAvgPool2dForward(e.tensor(xs, shape));
  assertClose(await avg.toArray(), globalAvgPool2dCpu(xs, shape), TOL.pool.avg, "avgpool y");
  const dy = rand(shape[0] * shape[1], 14);
  const dx = globalAvgPool2dBackward(e.tensor(dy, [shape[0], shape[1]]), shape);
  assertClose(await dx.toArray(), globalAvgPool2dBackwardCpu(dy, shape), TOL.pool.avg, "avgpool dx");
});

// Every way reduce.ts splits: pieces of a kept axis (copied into the output), of a reduced axis (stacked
// and reduced again), and single slices too large for a binding (gathered with buffer copies).
const REDUCE_CASES: [number[], number[] | undefined][] = [
  [BIG, undefined],
  [BIG, [0, 2, 3]],
  [BIG, [1]],
  [BIG, [0]],
  [BIG, [3]],
  [[2, 1_500_001], [0]],
  [[2, 1_500_001], [1]],
  [[3, 700_001], undefined],
];

smallTest("sum, mean and max beyond one binding match the float64 reference", async (e) => {
  for (const [shape, axes] of REDUCE_CASES) {
    const x = rand(size(shape), size(shape), -2, 2);
    const xt = e.tensor(x, shape);
    for (const op of ["sum", "mean", "max"] as ReduceOp[]) {
      const keepDims = op === "mean";
      const y = reduce(op, xt, { axes, keepDims });
      const want = reduceCpu(op, x, shape, { axes, keepDims });
      const what = `${op} [${shape}] axes ${axes}`;
      assertEquals([...y.shape], want.shape, `${what} shape`);
      assertClose(await y.toArray(), want.data, TOL.reduce, what);
      y.dispose();
    }
    xt.dispose();
  }
});

smallTest("the backward of sum and mean beyond one binding broadcasts dy back", async (e) => {
  for (const [shape, axes] of REDUCE_CASES) {
    const ax = normAxes("sum", shape.length, axes);
    const kept = shape.map((d, i) => (ax.includes(i) ? 1 : d));
    const dy = rand(size(kept), 21);
    const r = ax.reduce((p, a) => p * shape[a], 1);
    // dx[i] = dy[the index of i with the reduced axes at 0] (÷ R for the mean).
    const strides = kept.map((_, i) => (ax.includes(i) ? 0 : size(kept.slice(i + 1))));
    const src = new Int32Array(size(shape));
    for (let i = 0; i < src.length; i++) {
      let rem = i, o = 0;
      for (let d = shape.length - 1; d >= 0; d--) {
        o += (rem % shape[d]) * strides[d];
        rem = Math.floor(rem / shape[d]);
      }
      src[i] = o;
    }
    for (const op of ["sum", "mean"] as const) {
      const dx = reduceBackward(op, e.tensor(dy, kept), shape, { axes });
      const want = Float32Array.from(src, (o) => (op === "mean" ? dy[o] * Math.fround(1 / r) : dy[o]));
      assertClose(await dx.toArray(), want, TOL.elementwise, `d${op} [${shape}] axes ${axes}`);
      dx.dispose();
    }
  }
});

// ------------------------------------------------------------------ 135 MiB against PyTorch

interface Fixture {
  shape: number[];
  pool_shape: number[];
  momentum: number;
  eps: number;
  in_indices: number[];
  out_indices: number[];
  batchnorm: {
    mean: number[];
    rstd: number[];
    running_mean: number[];
    running_var: number[];
    dweight: number[];
    dbias: number[];
    dweight_scale: number[];
    dbias_scale: number[];
    sum_y: number;
    y: number[];
    dx: number[];
  };
  maxpool: { channel_sum_y: number[]; y: number[]; indices: number[]; dx: number[] };
}

function close(
  got: ArrayLike<number>,
  want: readonly number[],
  tol: Tolerance,
  what: string,
  scale?: readonly number[],
): void {
  assertClose(got, want, tol, what, scale);
}

gpuTest("batch norm and max pool on a [44, 64, 112, 112] tensor (135 MiB) match PyTorch", async (e) => {
  const started = performance.now();
  const f: Fixture = JSON.parse(
    await Deno.readTextFile(new URL("../fixtures/big_tensors/fixture.json", import.meta.url)),
  );
  const shape = f.shape, c = shape[1], n = size(shape);
  const bn = f.batchnorm, mp = f.maxpool;
  await e.scope(async () => {
    const x = e.tensor(hashed(n, 2654435761, 0), shape);
    if (x.bytes <= e.maxBinding) console.warn(`note: ${x.bytes} B fit one binding here (${e.maxBinding} B)`);

    // Batch norm, training mode, running statistics from PyTorch's defaults.
    const ch = Float32Array.from({ length: c }, (_, i) => i);
    const weight = e.tensor(ch.map((i) => 0.5 + i / 64), [c]);
    const bias = e.tensor(ch.map((i) => (i % 8) / 8 - 0.25), [c]);
    const runningMean = e.tensor(new Float32Array(c), [c]);
    const runningVar = e.tensor(new Float32Array(c).fill(1), [c]);
    const fwd = batchNorm2dForward(x, {
      weight,
      bias,
      runningMean,
      runningVar,
      training: true,
      momentum: f.momentum,
      eps: f.eps,
    });
    close(await fwd.mean.toArray(), bn.mean, TOL.batchNorm.stats, "batchnorm mean");
    close(await fwd.rstd.toArray(), bn.rstd, TOL.batchNorm.rstd, "batchnorm rstd");
    close(await runningMean.toArray(), bn.running_mean, TOL.batchNorm.stats, "running_mean");
    close(await runningVar.toArray(), bn.running_var, TOL.batchNorm.stats, "running_var");
    close(await valuesAt(fwd.y, f.in_indices), bn.y, TOL.batchNorm.forward, "batchnorm y");
    // Reductions of the same tensors: over everything, and per channel.
    close(await reduce("sum", fwd.y).toArray(), [bn.sum_y], TOL.reduce, "Σ batchnorm y");
    close(
      await reduce("mean", x, { axes: [0, 2, 3] }).toArray(),
      bn.mean,
      TOL.reduce,
      "mean of x per channel",
    );

    const grads = batchNorm2dBackward(e.tensor(hashed(n, 2246822519, 3266489917), shape), x, {
      weight,
      mean: fwd.mean,
      rstd: fwd.rstd,
      training: true,
    });
    fwd.y.dispose();
    // Σ dy·x̂ and Σ dy over 551 936 values per channel (20× what TOL.batchNorm is stated for) are float32
    // dot products of length N·H·W: judged as matmul's, against Σ|dy·x̂| and Σ|dy|.
    close(await grads.dweight.toArray(), bn.dweight, TOL.matmul, "batchnorm dweight", bn.dweight_scale);
    close(await grads.dbias.toArray(), bn.dbias, TOL.matmul, "batchnorm dbias", bn.dbias_scale);
    close(await valuesAt(grads.dx, f.in_indices), bn.dx, TOL.batchNorm.grad, "batchnorm dx");
    grads.dx.dispose();

    // Max pool 3×3, stride 2, padding 1.
    const o = { kernelSize: 3, stride: 2, padding: 1 };
    const { y, indices } = maxPool2dForward(x, o, true);
    assertEquals([...y.shape], f.pool_shape);
    close(await valuesAt(y, f.out_indices), mp.y, TOL.pool.maxForward, "maxpool y");
    close(await valuesAt(indices!, f.out_indices), mp.indices, TOL.exact, "maxpool indices");
    close(await reduce("sum", y, { axes: [0, 2, 3] }).toArray(), mp.channel_sum_y, TOL.reduce, "Σ maxpool y");
    const dy = e.tensor(hashed(y.size, 3266489917, 668265263), y.shape);
    const dx = maxPool2dBackward(dy, indices!, shape, o);
    close(await valuesAt(dx, f.in_indices), mp.dx, TOL.pool.maxBackward, "maxpool dx");
  });
  console.log(
    `[44, 64, 112, 112] batch norm + max pool: ${((performance.now() - started) / 1000).toFixed(1)} s`,
  );
});
