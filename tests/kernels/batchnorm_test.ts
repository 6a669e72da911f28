import type { Engine } from "../../engine/engine.ts";
import { batchNorm2d } from "../../ops/batchnorm.ts";
import {
  batchNorm2dBackward,
  batchNorm2dBackwardCpu,
  batchNorm2dCpu,
  batchNorm2dForward,
  batchNorm2dInference,
  batchNorm2dParamGrads,
  batchNorm2dStatistics,
  batchNormCandidates,
  batchNormShapeClass,
  type BatchNormState,
  batchNormVariantFor,
} from "../../kernels/batchnorm.ts";
import { tuningKey, useTuning, withVariant } from "../../kernels/tuning.ts";
import { hasSubgroups } from "../../kernels/_wgsl.ts";
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
  smallBindingEngine,
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

// ------------------------------------------------------------------ variants (kernels/tuning.ts)

/** Both partial-sum passes (statistics, Σdy and Σdy·x̂) forced to `variant` while `fn` runs. */
const withPartials = <T>(variant: string, fn: () => T): T =>
  withVariant("batchnorm.stats", variant, () => withVariant("batchnorm.sums", variant, fn));
/** Both elementwise passes (normalise, input gradient) forced to `variant` while `fn` runs. */
const withElementwise = <T>(variant: string, fn: () => T): T =>
  withVariant("batchnorm.apply", variant, () => withVariant("batchnorm.dx", variant, fn));

/**
 * Training forward (y, mean, rstd, running statistics) and backward (dx, dweight, dbias) on `shape` against
 * the float64 reference: x around 50 for the forward (Welford must keep the variance), around 0 for
 * backward (as above).
 */
async function checkTraining(e: Engine, shape: number[], what: string): Promise<void> {
  const c = shape[1], n = size(shape);
  const x = rand(n, n + 3, 49, 51), x0 = rand(n, n + 4, -2, 2), dy = rand(n, n + 5);
  const w = rand(c, 51, 0.5, 1.5), b = rand(c, 52), rm = rand(c, 53, -0.5, 0.5), rv = rand(c, 54, 0.5, 2);
  const wt = e.tensor(w, [c]), bt = e.tensor(b, [c]);
  const runningMean = e.tensor(rm, [c]), runningVar = e.tensor(rv, [c]);
  const got = batchNorm2dForward(e.tensor(x, shape), {
    weight: wt,
    bias: bt,
    runningMean,
    runningVar,
    training: true,
  });
  const want = batchNorm2dCpu(x, shape, {
    weight: w,
    bias: b,
    runningMean: rm,
    runningVar: rv,
    training: true,
  });
  assertClose(await got.y.toArray(), want.y, TOL.forward, `y ${what}`);
  assertClose(await got.mean.toArray(), want.mean, TOL.stats, `mean ${what}`);
  assertClose(await got.rstd.toArray(), want.rstd, TOL.rstd, `rstd ${what}`);
  assertClose(await runningMean.toArray(), want.runningMean!, TOL.stats, `running_mean ${what}`);
  assertClose(await runningVar.toArray(), want.runningVar!, TOL.stats, `running_var ${what}`);
  const x0t = e.tensor(x0, shape);
  const fwd = batchNorm2dForward(x0t, { weight: wt, bias: bt, training: true });
  const ref = batchNorm2dCpu(x0, shape, { weight: w, bias: b, training: true });
  const grads = batchNorm2dBackward(e.tensor(dy, shape), x0t, { weight: wt, ...fwd, training: true });
  const wantGrads = batchNorm2dBackwardCpu(dy, x0, shape, { weight: w, ...ref, training: true });
  assertClose(await grads.dx.toArray(), wantGrads.dx, TOL.grad, `dx ${what}`);
  assertClose(await grads.dweight.toArray(), wantGrads.dweight, TOL.grad, `dweight ${what}`);
  assertClose(await grads.dbias.toArray(), wantGrads.dbias, TOL.grad, `dbias ${what}`);
}

// Variants of the partial-sum passes: `serial/8` splits even the small shapes into many parts per channel,
// with chunks that straddle samples; 256 leaves a remainder on [3,5,12,12] (432 values) and [2,17,13,13].
const PARTIALS = ["tree", "serial/8", "serial/256", "serial/1024", "serial/2048", "serial/256/tex"];
// H·W % 4 = 0 (vec4 loads in the serial passes) besides the ragged SHAPES (scalar loads).
const VEC_SHAPES = [[2, 3, 2, 2], [3, 5, 12, 12], [1, 2, 4, 9]];

gpuTest("every partial-sum variant (tree, serial/<chunk>) matches the float64 reference", async (e) => {
  for (const variant of PARTIALS) {
    for (const shape of [...SHAPES, ...VEC_SHAPES]) {
      await withPartials(variant, () => checkTraining(e, shape, `[${shape}] ${variant}`));
    }
  }
});

gpuTest("the serial partial sums read from textures give the storage kernels' bits", async (e) => {
  // x and dy as flat textures (4 096 values a row): [3,17,12,20] is two rows and a partial one.
  for (const shape of [...VEC_SHAPES, [3, 17, 12, 20], [2, 65, 96, 96]]) {
    const c = shape[1], n = size(shape);
    const x = e.tensor(rand(n, 81, -3, 3), shape), dy = e.tensor(rand(n, 82), shape);
    const results: Float32Array[][] = [];
    for (const variant of ["serial/256", "serial/256/tex"]) {
      results.push(
        await withPartials(variant, async () => {
          const s = batchNorm2dStatistics(x);
          const g = batchNorm2dParamGrads(dy, x, s);
          return await Promise.all([s.mean, s.rstd, g.dweight, g.dbias].map((t) => t.toArray()));
        }),
      );
    }
    ["mean", "rstd", "dweight", "dbias"].forEach((what, k) => {
      const at = firstBitDifference(results[1][k], results[0][k]);
      assertEquals(at, -1, `${what} [${shape}] (C ${c}): tex differs at ${at}`);
    });
  }
});

/** The first index where `a` and `b` differ in their bits, or -1. */
function firstBitDifference(a: Float32Array, b: Float32Array): number {
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length),
    ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  if (ua.length !== ub.length) return 0;
  return ua.findIndex((v, i) => v !== ub[i]);
}

gpuTest(
  "the vec4 and texture normalise and input-gradient kernels equal the scalar ones bit for bit",
  async (e) => {
    // Scalar where H·W % 4 ≠ 0, and there `tex` one value per invocation where the size is a multiple of 4
    // ([2,64,7,7]: ResNet-50's layer4, 1.5 texture rows; [2,4,7,7]; not [3,17,9,7]). Flat textures hold rows
    // of 4 096 values: [3,17,12,20] is two rows and a partial one of 4 048 values, [2,65,96,96] 292 rows and
    // 512 values, [2,3,112,112] 18 rows and 1 536; the smaller shapes are partial rows only (the dispatch's
    // last row of invocations is partly idle).
    const shapes = [[2, 3, 112, 112], [3, 17, 9, 7], [2, 2, 1, 2], [3, 17, 12, 20], [2, 65, 96, 96]];
    for (const shape of [...VEC_SHAPES, ...shapes, [2, 64, 7, 7], [2, 4, 7, 7]]) {
      const c = shape[1], n = size(shape);
      const x = rand(n, 61, -3, 3), dy = rand(n, 62);
      const w = rand(c, 63, 0.5, 1.5), b = rand(c, 64), rm = rand(c, 65, -0.5, 0.5), rv = rand(c, 66, 0.5, 2);
      const p = { weight: e.tensor(w, [c]), bias: e.tensor(b, [c]) };
      const running = { runningMean: e.tensor(rm, [c]), runningVar: e.tensor(rv, [c]) };
      const xt = e.tensor(x, shape), dyt = e.tensor(dy, shape);
      const outputs: Record<string, Float32Array>[] = [];
      for (const variant of ["scalar", "vec4", "tex"]) {
        const out: Record<string, Float32Array> = {};
        await withElementwise(variant, async () => {
          for (const training of [true, false]) {
            const f = batchNorm2dForward(xt, { ...p, ...running, training, momentum: 0 });
            const g = batchNorm2dBackward(dyt, xt, {
              weight: p.weight,
              mean: f.mean,
              rstd: f.rstd,
              training,
            });
            out[`y ${training}`] = await f.y.toArray();
            out[`dx ${training}`] = await g.dx.toArray();
          }
          out["fused relu"] = await batchNorm2dInference(xt, { ...p, ...running, relu: true }).toArray();
        });
        outputs.push(out);
      }
      const [scalar, vec4, tex] = outputs;
      for (const k of Object.keys(scalar)) {
        for (const [name, got] of [["vec4", vec4], ["tex", tex]] as const) {
          const at = firstBitDifference(got[k], scalar[k]);
          assertEquals(at, -1, `${k} [${shape}]: ${name} ${got[k][at]} ≠ scalar ${scalar[k][at]} at ${at}`);
        }
      }
      const want = batchNorm2dCpu(x, shape, { weight: w, bias: b, training: true });
      assertClose(tex["y true"], want.y, TOL.forward, `y [${shape}]`);
      const wantDx = batchNorm2dBackwardCpu(dy, x, shape, { weight: w, ...want, training: true }).dx;
      assertClose(tex["dx true"], wantDx, TOL.grad, `dx [${shape}]`);
    }
  },
);

let small: Promise<Engine> | null = null;

Deno.test({
  name: "every variant beyond one storage binding (ragged runs of samples, vec4 runs off the alignment)",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    // A 2 MiB binding: [14, 31, 36, 36] runs as 13 + 1 samples, the second run 48 values past a 256 B
    // boundary (vec4 loads from a range); [8, 29, 49, 57] (H·W odd: scalar loads) as 6 + 2 samples, 30
    // values past one.
    const e = await (small ??= smallBindingEngine(2 << 20, 256));
    await e.scope(async () => {
      for (const shape of [[14, 31, 36, 36], [8, 29, 49, 57]]) {
        assertEquals(size(shape) * 4 > e.maxBinding, true);
        for (
          const [partials, elementwise] of [["tree", "scalar"], ["serial/256", "vec4"], [
            "serial/2048",
            "scalar",
          ], ["serial/1024", "tex"]]
        ) {
          await withPartials(
            partials,
            () =>
              withElementwise(
                elementwise,
                () => checkTraining(e, shape, `[${shape}] ${partials} ${elementwise}`),
              ),
          );
        }
      }
    });
    e.checkError();
  },
});

gpuTest("batch norm's variants: a default per adapter kind, the tuning table's choice, checked ids", (e) => {
  const shape = [2, 64, 56, 56], cls = batchNormShapeClass(64, 2 * 56 * 56);
  assertEquals(cls, "c64 m8192");
  assertEquals(batchNormShapeClass(2048, 2 * 7 * 7), "c2048 m128");
  const sw = e.adapterInfo.software;
  assertEquals(batchNormVariantFor(e, "batchnorm.stats", shape), sw ? "serial/2048/tex" : "tree");
  assertEquals(batchNormVariantFor(e, "batchnorm.sums", shape), sw ? "serial/2048/tex" : "tree");
  assertEquals(batchNormVariantFor(e, "batchnorm.apply", shape), sw ? "tex" : "scalar");
  assertEquals(batchNormVariantFor(e, "batchnorm.dx", shape), sw ? "tex" : "scalar");
  assertEquals(batchNormCandidates("batchnorm.stats", shape), [
    "tree",
    "serial/256",
    "serial/512",
    "serial/1024",
    "serial/2048",
    "serial/256/tex",
    "serial/512/tex",
    "serial/1024/tex",
    "serial/2048/tex",
  ]);
  // H·W = 49: no texture reads (their vec4s would straddle channels).
  assertEquals(batchNormCandidates("batchnorm.sums", [2, 2048, 7, 7]), ["tree", "serial/256"]);
  assertEquals(batchNormCandidates("batchnorm.sums", [2, 1024, 14, 14]), [
    "tree",
    "serial/256",
    "serial/512",
    "serial/256/tex",
    "serial/512/tex",
  ]);
  assertEquals(batchNormCandidates("batchnorm.apply", shape), ["scalar", "vec4", "tex"]);
  assertEquals(batchNormCandidates("batchnorm.dx", [2, 2048, 7, 7]), ["scalar"]);
  // `subgroup` only where the device has subgroups (Chrome; the browser self-test checks its numbers).
  assertEquals(batchNormCandidates("batchnorm.sums", [2, 2048, 7, 7], true), [
    "tree",
    "subgroup",
    "serial/256",
  ]);
  assertEquals(batchNormCandidates("batchnorm.apply", shape, true), ["scalar", "vec4", "tex"]);
  const sg = hasSubgroups(e);
  useTuning(e, {
    entries: {
      [tuningKey("batchnorm.stats", cls)]: "serial/512",
      [tuningKey("batchnorm.sums", cls)]: "no such variant",
      [tuningKey("batchnorm.stats", batchNormShapeClass(64, 2 * 28 * 28))]: "subgroup",
    },
  });
  try {
    assertEquals(batchNormVariantFor(e, "batchnorm.stats", shape), "serial/512");
    assertEquals(batchNormVariantFor(e, "batchnorm.stats", [2, 64, 7, 7]), sw ? "serial/2048/tex" : "tree");
    // A table entry that is not a variant gives way to the default; a forced variant wins over the table.
    assertEquals(batchNormVariantFor(e, "batchnorm.sums", shape), sw ? "serial/2048/tex" : "tree");
    // So does `subgroup` on a device without subgroups (Deno's, llvmpipe's).
    assertEquals(
      batchNormVariantFor(e, "batchnorm.stats", [2, 64, 28, 28]),
      sg ? "subgroup" : sw ? "serial/2048/tex" : "tree",
    );
    withVariant(
      "batchnorm.stats",
      "tree",
      () => assertEquals(batchNormVariantFor(e, "batchnorm.stats", shape), "tree"),
    );
  } finally {
    useTuning(e, null);
  }
  const x = e.tensor(rand(24, 71), [2, 3, 2, 2]), g = e.tensor(rand(3, 72), [3]);
  assertThrows(
    () => withVariant("batchnorm.stats", "serial/6", () => batchNorm2dStatistics(x)),
    RangeError,
    'Cannot batchNorm2d (statistics) of shape [2,3,2,2] with variant "serial/6": the chunk of serial must be a multiple of 4',
  );
  if (!sg) {
    assertThrows(
      () => withVariant("batchnorm.sums", "subgroup", () => batchNormVariantFor(e, "batchnorm.sums", shape)),
      RangeError,
      'Cannot batchNorm2d backward (Σdy, Σdy·x̂) of shape [2,64,56,56] with variant "subgroup": it needs the ' +
        "device feature subgroups, which this adapter does not offer",
    );
  }
  assertThrows(
    () =>
      withVariant(
        "batchnorm.apply",
        "vec8",
        () => batchNorm2dForward(x, { weight: g, bias: g, training: true }),
      ),
    RangeError,
    "the variants are scalar, vec4 and tex",
  );
  assertThrows(
    () => batchNormCandidates("batchnorm.mean" as "batchnorm.stats", shape),
    RangeError,
    "the ops are",
  );
});
