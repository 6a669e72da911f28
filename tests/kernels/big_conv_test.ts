/**
 * conv2d on tensors larger than one storage binding (issue 13, item 5): kernels/conv2d/mod.ts runs a batch
 * whose tensors or intermediates exceed a binding in chunks of whole images that fit.
 *
 * - On an engine whose binding limit is lowered to 4 MiB: every strategy, forward (with bias, residual and
 *   ReLU), input, weight and bias gradients on shapes that split into ragged chunks, against the float64
 *   CPU references with the Σ|a||b| scale (as tests/kernels/conv2d_test.ts).
 * - On the real limit (128 MiB on llvmpipe): a 3×3 convolution, 64 → 64 channels, on x [44, 64, 112, 112]
 *   (135 MiB), forward and backward, against PyTorch (float64) at sampled indices, from
 *   tests/fixtures/big_tensors/conv.py.
 */
import type { Engine } from "../../engine/engine.ts";
import type { Tensor } from "../../engine/tensor.ts";
import {
  conv2dBackwardBias,
  conv2dBackwardCpu,
  conv2dBackwardInput,
  conv2dBackwardWeight,
  conv2dCpu,
  conv2dForward,
  withConv2dVariant,
} from "../../kernels/conv2d/mod.ts";
import { reduce } from "../../kernels/reduce.ts";
import {
  assertClose,
  assertEquals,
  assertThrows,
  gpuTest,
  hashed,
  rand,
  smallBindingEngine,
  TOL,
  valuesAt,
} from "../helpers.ts";

const size = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);
const abs = (a: Float32Array) => a.map(Math.abs);

// ------------------------------------------------------------------ a 4 MiB binding: ragged chunks

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

/**
 * Run `fn` and return its result with the chunks of images it copied out of `src` (`[first image, images]`,
 * from the launchers' `engine.copy` calls, recorded here).
 */
function chunksOf<T>(src: Tensor, fn: () => T): [T, [number, number][]] {
  const e = src.engine, perImage = src.size / src.shape[0];
  const chunks: [number, number][] = [];
  const copy = e.copy;
  e.copy = (from, to, o = {}) => {
    if (from === src) chunks.push([(o.srcOffset ?? 0) / perImage, (o.size ?? from.size) / perImage]);
    copy.call(e, from, to, o);
  };
  try {
    return [fn(), chunks];
  } finally {
    e.copy = copy;
  }
}

// [N, Cin, H, W, Cout, K, stride, padding, strategies]: x or y exceeds 4 MiB (1 048 576 values), so every
// pass of every strategy splits the batch; N is prime, so chunks of ≥ 2 images never divide it evenly.
const BIG_CASES: [number, number, number, number, number, number, number, number, string[]][] = [
  // y: 1 131 130 values; blocked's channels-last x (Cin 6 → 8): 1 340 480.
  [13, 6, 110, 113, 7, 3, 1, 1, ["blocked", "implicit_gemm", "direct", "winograd/f4", "winograd/f2"]],
  // x: 1 163 250 values; the input gradient runs four stride phases.
  [11, 5, 150, 141, 12, 3, 2, 1, ["blocked", "implicit_gemm", "direct"]],
  // 1×1: x 1 351 680 values; blocked runs it through matmulForward (no epilogue) and per-image GEMMs (dw).
  [11, 16, 96, 80, 12, 1, 1, 0, ["blocked", "implicit_gemm", "direct"]],
];

smallTest(
  "conv2d beyond one binding runs every strategy in ragged chunks of images and matches the reference",
  async (e) => {
    for (const [ci, [n, cin, h, w, cout, k, stride, padding, strategies]] of BIG_CASES.entries()) {
      const xShape = [n, cin, h, w], wShape = [cout, cin, k, k];
      const o = { stride, padding };
      const oh = Math.floor((h + 2 * padding - k) / stride) + 1,
        ow = Math.floor((w + 2 * padding - k) / stride) + 1;
      const yShape = [n, cout, oh, ow];
      const seed = 100 * ci;
      const x = rand(size(xShape), seed + 1), wv = rand(size(wShape), seed + 2), b = rand(cout, seed + 3);
      const r = rand(size(yShape), seed + 4), dy = rand(size(yShape), seed + 5);
      const epi = { ...o, bias: b, residual: r, relu: true };
      const want = conv2dCpu(x, xShape, wv, wShape, epi).data;
      const scale = conv2dCpu(abs(x), xShape, abs(wv), wShape, { ...o, bias: abs(b), residual: abs(r) }).data;
      const plain = conv2dCpu(x, xShape, wv, wShape, o).data;
      const plainScale = conv2dCpu(abs(x), xShape, abs(wv), wShape, o).data;
      const g = conv2dBackwardCpu(x, xShape, wv, wShape, dy, o);
      const gs = conv2dBackwardCpu(abs(x), xShape, abs(wv), wShape, abs(dy), o);
      const label = `x[${xShape}] w[${wShape}] s${stride} p${padding}`;
      for (const variant of strategies) {
        await e.scope(async () => {
          const xt = e.tensor(x, xShape), wt = e.tensor(wv, wShape), dyt = e.tensor(dy, yShape);
          const bt = e.tensor(b, [cout]), rt = e.tensor(r, yShape);
          const what = `${label} ${variant}`;
          const [[y, cy], [y0, cy0], [dx, cdx], [dw, cdw]] = withConv2dVariant(variant, () => [
            chunksOf(xt, () => conv2dForward(xt, wt, { ...o, bias: bt, residual: rt, relu: true })),
            chunksOf(xt, () => conv2dForward(xt, wt, o)),
            chunksOf(dyt, () => conv2dBackwardInput(dyt, wt, xShape, o)),
            chunksOf(xt, () => conv2dBackwardWeight(xt, dyt, wShape, o)),
          ]);
          // Every pass ran in chunks that cover the batch in order, the last one smaller than the others.
          for (
            const [pass, chunks] of [["forward", cy], ["plain forward", cy0], ["dx", cdx], [
              "dw",
              cdw,
            ]] as const
          ) {
            const c = `${what} ${pass}: chunks ${JSON.stringify(chunks)}`;
            assertEquals(chunks.length > 1, true, c);
            assertEquals(chunks.reduce((s, [n0, nc]) => (s === n0 ? s + nc : -1), 0), n, c);
            assertEquals(chunks[chunks.length - 1][1] < chunks[0][1], true, c);
          }
          assertEquals([...y.shape], yShape, `${what} y shape`);
          assertClose(await y.toArray(), want, TOL.conv2d, `forward (bias, residual, ReLU) ${what}`, scale);
          assertClose(await y0.toArray(), plain, TOL.conv2d, `forward ${what}`, plainScale);
          assertClose(await dx.toArray(), g.dx, TOL.conv2d, `dx ${what}`, gs.dx);
          assertClose(await dw.toArray(), g.dw, TOL.conv2d, `dw ${what}`, gs.dw);
        });
      }
      // The bias gradient (a reduction, which splits on its own).
      const db = await e.scope(() => conv2dBackwardBias(e.tensor(dy, yShape)).toArray());
      assertClose(db, g.db, TOL.conv2d, `db ${label}`, gs.db);
    }
  },
);

smallTest("conv2d with one image larger than one binding throws a RangeError naming the pass", (e) => {
  const x = e.tensor(new Float32Array(2 * 2 * 800 * 700), [2, 2, 800, 700]); // one image: 4.3 MiB
  const w = e.tensor(new Float32Array(2 * 2 * 9), [2, 2, 3, 3]);
  assertThrows(
    () => withConv2dVariant("direct", () => conv2dForward(x, w, { padding: 1 })),
    RangeError,
    'Cannot conv2d x[2,2,800,700] w[2,2,3,3] s1 p1 with variant "direct": one image needs a binding of ' +
      "4.3 MiB, more than maxStorageBufferBindingSize (4.0 MiB)",
  );
  assertThrows(
    () => withConv2dVariant("blocked", () => conv2dBackwardWeight(x, x, [2, 2, 3, 3], { padding: 1 })),
    RangeError,
    "Cannot conv2d backward (weight) x[2,2,800,700] w[2,2,3,3] s1 p1",
  );
});

// ------------------------------------------------------------------ 135 MiB against PyTorch

interface Fixture {
  x_shape: number[];
  w_shape: number[];
  padding: number;
  y_indices: number[];
  w_indices: number[];
  y: number[];
  y_scale: number[];
  sum_y: number[];
  sum_y_scale: number[];
  dx: number[];
  dx_scale: number[];
  sum_dx: number[];
  sum_dx_scale: number[];
  dw: number[];
  dw_scale: number[];
  db: number[];
  db_scale: number[];
}

gpuTest(
  "a 3×3 conv2d on a [44, 64, 112, 112] tensor (135 MiB) matches PyTorch, forward and backward",
  async (e) => {
    const f: Fixture = JSON.parse(
      await Deno.readTextFile(new URL("../fixtures/big_tensors/conv.json", import.meta.url)),
    );
    const o = { stride: 1, padding: f.padding };
    const tol = TOL.conv2dTorch;
    const seconds: string[] = [];
    let t0 = performance.now();
    const lap = (what: string) => {
      const t = performance.now();
      seconds.push(`${what} ${((t - t0) / 1000).toFixed(1)} s`);
      t0 = t;
    };
    await e.scope(async () => {
      const x = e.tensor(hashed(size(f.x_shape), 2654435761, 0), f.x_shape);
      const w = e.tensor(hashed(size(f.w_shape), 2246822519, 374761393), f.w_shape);
      if (x.bytes <= e.maxBinding) {
        console.warn(`note: ${x.bytes} B fit one binding here (${e.maxBinding} B)`);
      }
      const y = conv2dForward(x, w, o);
      assertEquals([...y.shape], f.x_shape);
      assertClose(await valuesAt(y, f.y_indices), f.y, tol, "y", f.y_scale);
      lap("forward");
      // Per-channel sums: a sum of outputs is the same bilinear form with the summed scale.
      assertClose(await reduce("sum", y, { axes: [0, 2, 3] }).toArray(), f.sum_y, tol, "Σ y", f.sum_y_scale);
      y.dispose();

      const dy = e.tensor(hashed(size(f.x_shape), 3266489917, 2654435769), f.x_shape);
      t0 = performance.now();
      const dx = conv2dBackwardInput(dy, w, f.x_shape, o);
      assertClose(await valuesAt(dx, f.y_indices), f.dx, tol, "dx", f.dx_scale);
      lap("dx");
      assertClose(
        await reduce("sum", dx, { axes: [0, 2, 3] }).toArray(),
        f.sum_dx,
        tol,
        "Σ dx",
        f.sum_dx_scale,
      );
      dx.dispose();

      t0 = performance.now();
      const dw = await conv2dBackwardWeight(x, dy, f.w_shape, o).toArray();
      lap("dw");
      assertClose(f.w_indices.map((i) => dw[i]), f.dw, tol, "dw", f.dw_scale);
      assertClose(await conv2dBackwardBias(dy).toArray(), f.db, tol, "db", f.db_scale);
    });
    console.log(`[44, 64, 112, 112] 3×3 conv2d: ${seconds.join(", ")}`);
  },
);
