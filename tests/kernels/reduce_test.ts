import {
  reduce,
  REDUCE_ROWS,
  reduceCpu,
  type ReduceOp,
  reduceRowsCandidates,
  reduceRowsShapeClass,
  rowVariant,
} from "../../kernels/reduce.ts";
import { tuningKey, useTuning, withVariant } from "../../kernels/tuning.ts";
import { hasSubgroups } from "../../kernels/_wgsl.ts";
import { max, mean, sum } from "../../ops/reduce.ts";
import { assertClose, assertEquals, assertThrows, dispatched, gpuTest, rand, TOL } from "../helpers.ts";

const CASES: [number[], number | number[] | undefined][] = [
  [[1], undefined],
  [[7], 0],
  [[33, 129], 1],
  [[33, 129], 0],
  [[7, 33, 5], [0, 2]],
  [[7, 33, 5], [1]],
  [[4, 3, 9, 11], [1, 2]],
  [[4, 3, 9, 11], [-1]],
  [[2, 10000], 1],
  [[20001, 3], 0],
  [[1000], undefined],
  // From 2¹⁶ elements the column passes read a flat texture on software adapters.
  [[2, 3, 12000], 1],
  [[20001, 4], 0],
  [[3, 7, 4000], [0, 1]],
];

for (const op of ["sum", "mean", "max"] as ReduceOp[]) {
  gpuTest(`${op} over chosen axes matches the float64 reference`, async (e) => {
    for (const [shape, axes] of CASES) {
      const n = shape.reduce((p, d) => p * d, 1);
      const x = rand(n, n, -2, 2);
      for (const keepDims of [false, true]) {
        const y = reduce(op, e.tensor(x, shape), { axes, keepDims });
        const want = reduceCpu(op, x, shape, { axes, keepDims });
        assertEquals([...y.shape], want.shape, `${op} [${shape}] axes ${axes} shape`);
        assertClose(await y.toArray(), want.data, TOL.reduce, `${op} [${shape}] axes ${axes}`);
      }
    }
  });
}

gpuTest("sum and mean of 10⁷ elements keep float32 accuracy", async (e) => {
  const n = 10_000_000;
  const x = rand(n, 99, 0, 1);
  let exact = 0;
  for (let i = 0; i < n; i++) exact += x[i];
  const t = e.tensor(x, [n]);
  const [s] = await sum(t).toArray();
  const [m] = await mean(t).toArray();
  // A naive sequential float32 sum is off by ~1e-3 relative here; we require ~float32 rounding.
  assertClose([s], [exact], { rtol: 1e-6, atol: 0 }, "sum of 1e7");
  assertClose([m], [exact / n], { rtol: 1e-6, atol: 0 }, "mean of 1e7");
  const [mx] = await max(t).toArray();
  assertEquals(mx, x.reduce((a, b) => Math.max(a, b), -Infinity));
});

gpuTest("reductions over empty axes give 0, NaN and -Infinity", async (e) => {
  const t = e.tensor(new Float32Array(0), [3, 0]);
  assertEquals([...await sum(t, { axes: 1 }).toArray()], [0, 0, 0]);
  assertEquals([...await max(t, { axes: 1 }).toArray()], [-Infinity, -Infinity, -Infinity]);
  assertEquals(Number.isNaN((await mean(t, { axes: 1 }).toArray())[0]), true);
});

gpuTest("a bad axis throws a RangeError naming the op", (e) => {
  const t = e.tensor(new Float32Array(6), [2, 3]);
  assertThrows(() => sum(t, { axes: 2 }), RangeError, "Cannot sum over axis 2: tensor has rank 2");
});

gpuTest("column reductions from 2¹⁶ elements read a flat texture on software adapters", (e) => {
  const big = e.tensor(rand(72000, 3), [2, 3, 12000]), small = e.tensor(rand(720, 3), [2, 3, 120]);
  const tex = (t: typeof big) =>
    dispatched(e, () => void sum(t, { axes: 1 })).some((k) => /^reduce_cols.*_tex$/.test(k));
  assertEquals(tex(big), e.adapterInfo.software);
  assertEquals(tex(small), false);
});

gpuTest("the row pass's variants: tree, and subgroup only where the device has subgroups", async (e) => {
  assertEquals(reduceRowsShapeClass(2 * 250), "r512");
  assertEquals(reduceRowsShapeClass(2 * 19699), "r8192");
  assertEquals(reduceRowsShapeClass(1), "r1");
  const sg = hasSubgroups(e);
  assertEquals(reduceRowsCandidates(e), sg ? ["tree", "subgroup"] : ["tree"]);
  assertEquals(rowVariant(e, 500), "tree");
  // A table's `subgroup` runs where the device has subgroups and gives way to the tree elsewhere (Deno's
  // WebGPU offers none; the browser self-test checks the subgroup kernels on SwiftShader).
  useTuning(e, { entries: { [tuningKey(REDUCE_ROWS, "r512")]: "subgroup" } });
  try {
    assertEquals(rowVariant(e, 500), sg ? "subgroup" : "tree");
    const x = rand(500, 91);
    assertClose(
      await reduce("sum", e.tensor(x, [500])).toArray(),
      reduceCpu("sum", x, [500]).data,
      TOL.reduce,
    );
  } finally {
    useTuning(e, null);
  }
  if (!sg) {
    assertThrows(
      () => withVariant(REDUCE_ROWS, "subgroup", () => reduce("sum", e.tensor(rand(8, 92), [8]))),
      RangeError,
      'Cannot reduce rows of 8 values with variant "subgroup": it needs the device feature subgroups',
    );
  }
  assertThrows(
    () => withVariant(REDUCE_ROWS, "shuffle", () => rowVariant(e, 8)),
    RangeError,
    'variant "shuffle": the variants are tree and subgroup',
  );
});
