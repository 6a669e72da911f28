import { globalAvgPool2d, maxPool2d } from "../../ops/pool.ts";
import {
  globalAvgPool2dBackward,
  globalAvgPool2dBackwardCpu,
  globalAvgPool2dCpu,
  globalAvgPool2dForward,
  maxPool2dBackward,
  maxPool2dBackwardCpu,
  maxPool2dCpu,
  maxPool2dForward,
  maxPool2dGeometry,
  type MaxPool2dOptions,
} from "../../kernels/pool.ts";
import { mul } from "../../ops/elementwise.ts";
import { sum } from "../../ops/reduce.ts";
import { noGrad, requiresGrad, Tape } from "../../engine/autograd.ts";
import {
  assertClose,
  assertEquals,
  assertGradients,
  assertThrows,
  dispatched,
  gpuTest,
  rand,
  TOL as SHARED_TOL,
} from "../helpers.ts";

/**
 * Tolerances, stated once in kernels/tolerance.ts: max-pool forward must match exactly (indices too), its
 * backward and the global average within float32 rounding of small sums.
 */
const TOL = SHARED_TOL.pool;

const SHAPES: number[][] = [
  [1, 1, 1, 1],
  [2, 3, 2, 2],
  [3, 1, 7, 9],
  [1, 17, 9, 7],
  [2, 3, 13, 13],
  [3, 17, 13, 2],
  [2, 3, 112, 112],
];

const POOLS: MaxPool2dOptions[] = [
  { kernelSize: 3, stride: 2, padding: 1 }, // the ResNet stem
  { kernelSize: 2 },
  { kernelSize: 3, stride: 1, padding: 1 },
  { kernelSize: [3, 2], stride: [2, 1], padding: [1, 0] },
  { kernelSize: 5, stride: 3, padding: 2 },
  { kernelSize: 1 },
];

const size = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);
const fits = (shape: number[], o: MaxPool2dOptions) => {
  try {
    maxPool2dGeometry(shape[2], shape[3], o);
    return true;
  } catch {
    return false;
  }
};

gpuTest("maxPool2d forward and indices equal the reference, ties going to the first maximum", async (e) => {
  for (const shape of SHAPES) {
    for (const o of POOLS.filter((o) => fits(shape, o))) {
      // Continuous values, then small integers (many ties), then all-negative values (−∞ padding).
      for (
        const [seed, round, lo, hi] of [[1, false, -1, 1], [2, true, -3, 3], [3, false, -9, -1]] as const
      ) {
        const x = rand(size(shape), seed + size(shape), lo, hi).map((v) => (round ? Math.round(v) : v));
        const want = maxPool2dCpu(x, shape, o);
        const { y, indices } = maxPool2dForward(e.tensor(x, shape), o, true);
        const what = `[${shape}] ${JSON.stringify(o)} seed ${seed}`;
        assertEquals([...y.shape], want.shape, what);
        assertEquals(await y.toArray(), want.y, what);
        assertEquals(Int32Array.from(await indices!.toArray()), want.indices, `indices ${what}`);
        assertEquals(await maxPool2d(e.tensor(x, shape), o).toArray(), want.y, `no indices ${what}`);
      }
    }
  }
});

gpuTest("maxPool2d backward gathers dy to the argmax like the reference scatter", async (e) => {
  for (const shape of SHAPES) {
    for (const o of POOLS.filter((o) => fits(shape, o))) {
      const x = rand(size(shape), 7 + size(shape), -3, 3).map(Math.round); // ties share one argmax
      const fwd = maxPool2dForward(e.tensor(x, shape), o, true);
      const dy = rand(fwd.y.size, 8, -1, 1);
      const want = maxPool2dBackwardCpu(dy, maxPool2dCpu(x, shape, o).indices, shape);
      const dx = maxPool2dBackward(e.tensor(dy, fwd.y.shape), fwd.indices!, shape, o);
      assertEquals([...dx.shape], shape);
      assertClose(await dx.toArray(), want, TOL.maxBackward, `dx [${shape}] ${JSON.stringify(o)}`);
    }
  }
});

gpuTest("maxPool2d gradient matches finite differences with overlapping windows", async (e) => {
  for (
    const [shape, o] of [
      [[1, 2, 5, 5], { kernelSize: 3, stride: 2, padding: 1 }],
      [[2, 1, 4, 3], { kernelSize: 2, stride: 1 }],
    ] as const
  ) {
    const n = size(shape);
    // Distinct values 0.1 apart (≫ the step), shuffled: no ties, no argmax change under ±step.
    const order = Array.from(rand(n, 51), (v, i) => [v, i]).sort((a, b) => a[0] - b[0]);
    const x = new Float32Array(n);
    order.forEach(([, i], k) => (x[i] = 0.1 * k - 1));
    const geo = maxPool2dGeometry(shape[2], shape[3], o);
    const r = e.tensor(rand(shape[0] * shape[1] * geo.ho * geo.wo, 52), [shape[0], shape[1], geo.ho, geo.wo]);
    await assertGradients(e, ([t]) => mul(maxPool2d(t, o), r), [{ data: x, shape: [...shape] }], {
      ...TOL.fd,
      what: `maxPool2d [${shape}]`,
    });
  }
});

gpuTest("globalAvgPool2d forward and backward match the float64 reference", async (e) => {
  for (const shape of SHAPES) {
    const x = rand(size(shape), 61 + size(shape), -2, 2);
    const want = globalAvgPool2dCpu(x, shape);
    const y = globalAvgPool2d(e.tensor(x, shape));
    assertEquals([...y.shape], shape.slice(0, 2));
    assertClose(await y.toArray(), want, TOL.avg, `avg [${shape}]`);
    const kept = globalAvgPool2d(e.tensor(x, shape), { keepDims: true });
    assertEquals([...kept.shape], [shape[0], shape[1], 1, 1]);
    const dy = rand(shape[0] * shape[1], 62, -1, 1);
    const dx = globalAvgPool2dBackward(e.tensor(dy, [shape[0], shape[1]]), shape);
    assertClose(await dx.toArray(), globalAvgPool2dBackwardCpu(dy, shape), TOL.avg, `avg dx [${shape}]`);
  }
});

gpuTest("on software adapters large pooling inputs are read through flat textures", async (e) => {
  if (!e.adapterInfo.software) return;
  // ResNet-50's stem pool (from 2¹⁶ values) and its global pool over 7 × 7 planes (rows ≤ 256: one
  // invocation per row, a compensated sum in order).
  const o: MaxPool2dOptions = { kernelSize: 3, stride: 2, padding: 1 };
  for (const shape of [[2, 16, 56, 57], [1, 3, 150, 148]]) {
    const x = rand(size(shape), 71 + size(shape), -3, 3).map(Math.round);
    const X = e.tensor(x, shape);
    const names = dispatched(e, () => void maxPool2dForward(X, o, true));
    assertEquals(names, ["maxpool2d_indices_tex"], `[${shape}]`);
    const want = maxPool2dCpu(x, shape, o);
    const { y, indices } = maxPool2dForward(X, o, true);
    assertEquals(await y.toArray(), want.y, `[${shape}]`);
    assertEquals(Int32Array.from(await indices!.toArray()), want.indices, `indices [${shape}]`);
  }
  for (const shape of [[2, 2048, 7, 7], [3, 100, 16, 16], [1, 20, 7, 7], [1, 64, 17, 17]]) {
    const x = rand(size(shape), 81 + size(shape), -2, 2).map((v, i) => v + (i % 7) * 1e3);
    const X = e.tensor(x, shape);
    const len = shape[2] * shape[3], tex = size(shape) >= 1 << 16;
    const kernel = len > 256
      ? "global_avgpool2d"
      : tex
      ? "global_avgpool2d_serial_tex"
      : "global_avgpool2d_serial";
    const names = dispatched(e, () => void globalAvgPool2dForward(X));
    assertEquals(names, [kernel], `[${shape}]`);
    const y = await globalAvgPool2dForward(X).toArray();
    assertClose(y, globalAvgPool2dCpu(x, shape), TOL.avg, `[${shape}]`);
    // The same bits for one image alone (below 2¹⁶ values: from storage), as embed and train's feature
    // cache rely on.
    if (shape[0] > 1) {
      const one = await globalAvgPool2dForward(
        e.tensor(x.subarray(0, size(shape) / shape[0]), [1, ...shape.slice(1)]),
      )
        .toArray();
      const at = one.findIndex((v, i) => !Object.is(v, y[i]));
      assertEquals(at, -1, `[${shape}] image 0 alone: element ${at}`);
    }
  }
});

gpuTest("globalAvgPool2d gradient matches finite differences", async (e) => {
  const shape = [2, 3, 3, 2];
  const r = e.tensor(rand(6, 71), [2, 3]);
  await assertGradients(e, ([t]) => mul(globalAvgPool2d(t), r), [{ data: rand(36, 72), shape }], {
    ...TOL.fd,
    what: "globalAvgPool2d",
  });
});

gpuTest("maxPool2d rejects bad geometry with a RangeError naming the values", (e) => {
  const x = e.tensor(new Float32Array(16), [1, 1, 4, 4]);
  assertThrows(
    () => maxPool2d(x, { kernelSize: 2, padding: 2 }),
    RangeError,
    "padding must be at most half the kernel size, current value is [2,2]",
  );
  assertThrows(() => maxPool2d(x, { kernelSize: 5 }), RangeError, "output size 0×0 is too small");
  assertThrows(() => maxPool2d(x, { kernelSize: 2, stride: 0 }), RangeError, "stride must be integers ≥ 1");
  assertThrows(
    () => maxPool2d(e.tensor(new Float32Array(4), [4]), { kernelSize: 2 }),
    RangeError,
    "expected input of shape [N, C, H, W], current value is [4]",
  );
});

gpuTest("a recorded maxPool2d releases its indices once the tape and scope are done", async (e) => {
  const x = requiresGrad(e.tensor(rand(2 * 3 * 9 * 9, 81), [2, 3, 9, 9]));
  const o = { kernelSize: 3, stride: 2, padding: 1 };
  const before = e.stats().inUse;
  const tape = new Tape();
  const loss = e.scope(() => tape.record(() => sum(globalAvgPool2d(maxPool2d(x, o)))));
  const grads = tape.backward(loss);
  const g = await grads.get(x)!.toArray();
  assertEquals(g.length, x.size);
  for (const t of grads.values()) t.dispose();
  tape.dispose();
  loss.dispose();
  assertEquals(e.stats().inUse, before);
  noGrad(() => maxPool2d(x, o)).dispose(); // not recorded: no indices
  assertEquals(e.stats().inUse, before);
});
