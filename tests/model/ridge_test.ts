import { fitRidge, type RidgeFit } from "../../model/ridge.ts";
import {
  assertClose,
  assertEquals,
  assertRejects,
  gpuTest,
  rand,
  smallBindingEngine,
  TOL,
} from "../helpers.ts";
import type { Engine } from "../../mod.ts";

/**
 * Float64 closed-form ridge with an intercept (scikit-learn's `Ridge(alpha=λ, fit_intercept=True)`):
 * centre X and Y, W = (XcᵀXc + λI)⁻¹ XcᵀYc by Gauss-Jordan elimination with partial pivoting, b = μy − W·μx.
 * Returns W (K, D) row-major and b (K).
 */
function ridgeCpu(x: Float32Array, y: Float32Array, n: number, d: number, k: number, lam: number) {
  const mx = new Float64Array(d), my = new Float64Array(k);
  for (let r = 0; r < n; r++) {
    for (let i = 0; i < d; i++) mx[i] += x[r * d + i] / n;
    for (let j = 0; j < k; j++) my[j] += y[r * k + j] / n;
  }
  // Augmented system [G + λI | XcᵀYc], (d, d + k).
  const w = d + k;
  const m = new Float64Array(d * w);
  for (let r = 0; r < n; r++) {
    for (let i = 0; i < d; i++) {
      const xi = x[r * d + i] - mx[i];
      for (let j = 0; j < d; j++) m[i * w + j] += xi * (x[r * d + j] - mx[j]);
      for (let j = 0; j < k; j++) m[i * w + d + j] += xi * (y[r * k + j] - my[j]);
    }
  }
  for (let i = 0; i < d; i++) m[i * w + i] += lam;
  for (let c = 0; c < d; c++) {
    let p = c;
    for (let r = c + 1; r < d; r++) if (Math.abs(m[r * w + c]) > Math.abs(m[p * w + c])) p = r;
    for (let j = 0; j < w; j++) [m[c * w + j], m[p * w + j]] = [m[p * w + j], m[c * w + j]];
    const piv = m[c * w + c];
    for (let j = 0; j < w; j++) m[c * w + j] /= piv;
    for (let r = 0; r < d; r++) {
      if (r === c || m[r * w + c] === 0) continue;
      const f = m[r * w + c];
      for (let j = 0; j < w; j++) m[r * w + j] -= f * m[c * w + j];
    }
  }
  const weight = new Float64Array(k * d), bias = new Float64Array(k);
  for (let j = 0; j < k; j++) {
    let b = my[j];
    for (let i = 0; i < d; i++) {
      weight[j * d + i] = m[i * w + d + j];
      b -= weight[j * d + i] * mx[i];
    }
    bias[j] = b;
  }
  return { weight, bias };
}

/** Validation MSE over the first `sel` targets of the float64 fit. */
function mseCpu(
  fit: { weight: Float64Array; bias: Float64Array },
  xv: Float32Array,
  yv: Float32Array,
  nv: number,
  d: number,
  k: number,
  sel: number,
): number {
  let s = 0;
  for (let r = 0; r < nv; r++) {
    for (let j = 0; j < sel; j++) {
      let p = fit.bias[j];
      for (let i = 0; i < d; i++) p += fit.weight[j * d + i] * xv[r * d + i];
      s += (yv[r * k + j] - p) ** 2;
    }
  }
  return s / (nv * sel);
}

/** A seeded regression problem: X uniform (with per-feature offsets), Y = X·Wtᵀ + offset + noise. */
function problem(n: number, d: number, k: number, noise: number, seed: number) {
  const wt = rand(k * d, seed, -1, 1);
  const off = rand(d, seed + 1, 0, 3);
  const make = (rows: number, s: number) => {
    const x = rand(rows * d, s, -1, 1).map((v, i) => v + off[i % d]);
    const e = rand(rows * k, s + 1, -1, 1);
    const y = new Float32Array(rows * k);
    for (let r = 0; r < rows; r++) {
      for (let j = 0; j < k; j++) {
        let v = 2 + j * 0.1 + noise * e[r * k + j];
        for (let i = 0; i < d; i++) v += wt[j * d + i] * x[r * d + i];
        y[r * k + j] = v;
      }
    }
    return { x, y };
  };
  return { train: make(n, seed + 2), val: make(Math.ceil(n / 2), seed + 5) };
}

/** The GPU fit against the float64 reference at the chosen λ (W against the largest |W| of its row). */
function checkFit(
  fit: RidgeFit,
  x: Float32Array,
  y: Float32Array,
  n: number,
  d: number,
  k: number,
  what: string,
) {
  const want = ridgeCpu(x, y, n, d, k, fit.lambda);
  const wScale = new Float64Array(k * d), bScale = new Float64Array(k);
  for (let j = 0; j < k; j++) {
    let m = 0;
    for (let i = 0; i < d; i++) m = Math.max(m, Math.abs(want.weight[j * d + i]));
    wScale.fill(m, j * d, (j + 1) * d);
    // b = μy − W·μx: its error is that of W times |μx|, on top of μy's own.
    let s = Math.abs(want.bias[j]);
    for (let i = 0; i < d; i++) {
      let mu = 0;
      for (let r = 0; r < n; r++) mu += x[r * d + i] / n;
      s += m * Math.abs(mu);
    }
    bScale[j] = s;
  }
  assertEquals([fit.weight.length, fit.bias.length], [k * d, k], `${what}: sizes`);
  assertClose(fit.weight, want.weight, TOL.linalg.ridge, `${what}: weight`, wScale);
  assertClose(fit.bias, want.bias, TOL.linalg.ridge, `${what}: bias`, bScale);
}

gpuTest("fitRidge matches a float64 closed-form ridge with intercept for several lambdas", async (e) => {
  const n = 60, d = 13, k = 9;
  const { train } = problem(n, d, k, 0.5, 1);
  const x = e.tensor(train.x, [n, d]), y = e.tensor(train.y, [n, k]);
  for (const lam of [0.01, 1, 30]) {
    const fit = await fitRidge(e, x, y, { lambdas: [lam] });
    assertEquals([fit.lambda, fit.lambdas, fit.valMse], [lam, [lam], []], "one lambda, no validation");
    checkFit(fit, train.x, train.y, n, d, k, `λ = ${lam}`);
  }
});

gpuTest("fitRidge chooses the lambda the float64 reference chooses on the validation set", async (e) => {
  // Few rows for many features and noisy targets: the fit needs regularisation, and one λ is clearly best.
  const n = 40, d = 64, k = 12, sel = 5;
  const { train, val } = problem(n, d, k, 4, 7);
  const nv = Math.ceil(n / 2);
  const lambdas = [0.1, 1, 30, 300, 3000, 1e5];
  const want = lambdas.map((l) =>
    mseCpu(ridgeCpu(train.x, train.y, n, d, k, l), val.x, val.y, nv, d, k, sel)
  );
  const best = want.indexOf(Math.min(...want));
  // The problem is as intended: an inner λ wins, by at least 5 % over every other λ.
  assertEquals(
    best > 0 && best < lambdas.length - 1,
    true,
    `reference best λ ${lambdas[best]} is inside the grid`,
  );
  want.forEach((v, i) =>
    i === best || assertEquals(v > 1.05 * want[best], true, `margin at λ = ${lambdas[i]}`)
  );
  const progress: [number, number][] = [];
  const fit = await fitRidge(e, e.tensor(train.x, [n, d]), e.tensor(train.y, [n, k]), {
    lambdas,
    xVal: e.tensor(val.x, [nv, d]),
    yVal: e.tensor(val.y, [nv, k]),
    selectColumns: sel,
    onProgress: (done, total) => progress.push([done, total]),
  });
  assertEquals(fit.lambda, lambdas[best], "chosen lambda");
  assertEquals(fit.lambdas, lambdas, "grid");
  assertClose(fit.valMse, want, TOL.linalg.ridgeMse, "validation MSE per lambda");
  assertEquals(progress, lambdas.map((_, i) => [i + 1, lambdas.length + 1]).concat([[7, 7]]), "progress");
  checkFit(fit, train.x, train.y, n, d, k, "chosen λ");
});

gpuTest(
  "fitRidge without lambdas tries a grid relative to trace(XcᵀXc)/D and takes its middle without validation",
  async (e) => {
    const n = 50, d = 20, k = 3;
    const { train } = problem(n, d, k, 0.5, 3);
    const fit = await fitRidge(e, e.tensor(train.x, [n, d]), e.tensor(train.y, [n, k]));
    let tr = 0;
    for (let i = 0; i < d; i++) {
      let m = 0, s = 0;
      for (let r = 0; r < n; r++) m += train.x[r * d + i] / n;
      for (let r = 0; r < n; r++) s += (train.x[r * d + i] - m) ** 2;
      tr += s;
    }
    const want = [-3, -2, -1, 0, 1, 2, 3, 4].map((p) => (tr / d) * 10 ** p);
    assertClose(fit.lambdas, want, TOL.reduce, "default grid");
    assertEquals([fit.lambda, fit.valMse], [fit.lambdas[3], []], "middle of the grid");
    checkFit(fit, train.x, train.y, n, d, k, "default λ");
  },
);

async function chunked(e: Engine) {
  // 16 KiB bindings: R's rows of D = 32 go 128 to a chunk (K = 300: 128 + 128 + 44), X (200 × 32), Y and
  // the validation tensors are read in runs of rows, and the selected 150 columns span two chunks.
  const n = 200, d = 32, k = 300, sel = 150, nv = 100;
  const { train, val } = problem(n, d, k, 1, 9);
  const lambdas = [0.1, 10, 1000];
  const fit = await fitRidge(e, e.tensor(train.x, [n, d]), e.tensor(train.y, [n, k]), {
    lambdas,
    xVal: e.tensor(val.x, [nv, d]),
    yVal: e.tensor(val.y, [nv, k]),
    selectColumns: sel,
  });
  const want = lambdas.map((l) =>
    mseCpu(ridgeCpu(train.x, train.y, n, d, k, l), val.x, val.y, nv, d, k, sel)
  );
  assertClose(fit.valMse, want, TOL.linalg.ridgeMse, "validation MSE per lambda");
  assertEquals(fit.lambda, lambdas[want.indexOf(Math.min(...want))], "chosen lambda");
  checkFit(fit, train.x, train.y, n, d, k, "chunked");
}

gpuTest("fitRidge solves the targets in chunks when X·Yᵀ exceeds one storage binding", async () => {
  const e = await smallBindingEngine(16 << 10);
  try {
    await chunked(e);
    e.checkError();
  } finally {
    e.destroy();
  }
});

gpuTest("fitRidge throws a RangeError naming lambda when a Cholesky pivot is not positive", async (e) => {
  // Feature 3 is constant: its centred column is 0, so XcᵀXc + 0·I has a zero pivot there.
  const n = 30, d = 8, k = 2;
  const { train, val } = problem(n, d, k, 0.5, 5);
  for (let r = 0; r < n; r++) train.x[r * d + 3] = 1;
  const x = e.tensor(train.x, [n, d]), y = e.tensor(train.y, [n, k]);
  await assertRejects(() => fitRidge(e, x, y, { lambdas: [0] }), RangeError, "lambda = 0");
  await assertRejects(
    () =>
      fitRidge(e, x, y, { lambdas: [1, 0], xVal: e.tensor(val.x, [15, d]), yVal: e.tensor(val.y, [15, k]) }),
    RangeError,
    "non-positive pivot (column 3) for lambda = 0",
  );
  // A positive λ makes it definite again.
  checkFit(await fitRidge(e, x, y, { lambdas: [1] }), train.x, train.y, n, d, k, "λ = 1");
});

gpuTest("fitRidge releases every GPU buffer it allocates", async (e) => {
  const n = 40, d = 24, k = 7;
  const { train, val } = problem(n, d, k, 0.5, 13);
  const ts = [
    e.tensor(train.x, [n, d]),
    e.tensor(train.y, [n, k]),
    e.tensor(val.x, [20, d]),
    e.tensor(val.y, [20, k]),
  ];
  const fit = () =>
    fitRidge(e, ts[0], ts[1], { lambdas: [0.1, 10], xVal: ts[2], yVal: ts[3], selectColumns: 3 });
  await fit(); // the solves' argument tables are cached per engine on first use
  const before = e.stats().inUse;
  await fit();
  assertEquals(e.stats().inUse, before, "buffers in use after a fit");
  await assertRejects(
    () => fitRidge(e, ts[0], ts[1], { lambdas: [10], xVal: ts[2], yVal: ts[3], selectColumns: 99 }),
    RangeError,
    "selectColumns",
  );
  assertEquals(e.stats().inUse, before, "buffers in use after a refused fit");
});

gpuTest("fitRidge refuses inputs that do not match", async (e) => {
  const x = e.tensor(rand(20), [5, 4]), y = e.tensor(rand(10), [5, 2]);
  await assertRejects(() => fitRidge(e, x, e.tensor(rand(12), [6, 2])), RangeError, "different rows");
  await assertRejects(() => fitRidge(e, x, y, { selectColumns: 3 }), RangeError, "selectColumns");
  await assertRejects(() => fitRidge(e, x, y, { lambdas: [-1] }), RangeError, "lambdas");
  await assertRejects(() => fitRidge(e, x, y, { xVal: x }), TypeError, "both xVal and yVal");
  await assertRejects(
    () => fitRidge(e, x, y, { xVal: e.tensor(rand(6), [2, 3]), yVal: e.tensor(rand(4), [2, 2]) }),
    RangeError,
    "do not match",
  );
});
