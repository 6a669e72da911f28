import {
  addDiagonal,
  cholesky,
  choleskyCpu,
  choleskyInPlace,
  choleskySolveInPlace,
  crossprod,
  crossprodCpu,
  MAX_ROWS,
  solveLowerInPlace,
  solveUpperInPlace,
  squaredErrorSums,
  triangularSolveCpu,
} from "../../kernels/linalg.ts";
import {
  assertClose,
  assertEquals,
  assertRejects,
  assertThrows,
  gpuTest,
  rand,
  smallBindingEngine,
  TOL,
} from "../helpers.ts";
import type { Engine, Tensor } from "../../mod.ts";

/** A seeded SPD matrix A = XᵀX/r + 0.05·I (float32 values, as uploaded) from X (r, n) = (2n + 3, n). */
function spd(n: number, seed: number): Float32Array {
  const r = 2 * n + 3;
  const x = rand(r * n, seed);
  const a = new Float32Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= i; j++) {
      let s = 0;
      for (let k = 0; k < r; k++) s += x[k * n + i] * x[k * n + j];
      a[i * n + j] = a[j * n + i] = s / r + (i === j ? 0.05 : 0);
    }
  }
  return a;
}

/** The factor as the kernels store it: L below and on the diagonal, Lᵀ above, rounded to float32. */
function factorStorage(l: Float64Array, n: number): Float32Array {
  const s = new Float32Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j <= i; j++) s[i * n + j] = s[j * n + i] = l[i * n + j];
  return s;
}

/** Per value, the largest |value| of its row: the scale of a row-wise (norm-wise) tolerance. */
function rowScale(v: ArrayLike<number>, rows: number, n: number): Float64Array {
  const s = new Float64Array(rows * n);
  for (let r = 0; r < rows; r++) {
    let m = 0;
    for (let j = 0; j < n; j++) m = Math.max(m, Math.abs(v[r * n + j]));
    s.fill(m, r * n, (r + 1) * n);
  }
  return s;
}

const SIZES = [1, 7, 65, 300];

// The adapter's choice and the diagonal blocks kept in storage (OpenGL's variant, kernels/_wgsl.ts stagesTiles).
const BLOCKS = [{ staged: undefined, what: "" }, { staged: false, what: ", blocks in place" }];

for (const { staged, what } of BLOCKS) {
  gpuTest(`cholesky matches a float64 factorisation at D = 1, 7, 65, 300${what}`, async (e) => {
    for (const n of SIZES) {
      const a = spd(n, 11 + n);
      const want = choleskyCpu(a, n);
      const t = e.tensor(a, [n, n]);
      const status = e.zeros([2]);
      choleskyInPlace(t, { status, statusIndex: 1, staged });
      const got = await t.toArray();
      assertEquals([...await status.toArray()], [0, 0], `status D = ${n}`);
      // |L_ij| ≤ √A_ii (Σ_k L_ik² = A_ii): the error of row i is held against √A_ii.
      const lower = new Float64Array(n * n),
        gotLower = new Float64Array(n * n),
        scale = new Float64Array(n * n);
      for (let i = 0; i < n; i++) {
        for (let j = 0; j <= i; j++) {
          lower[i * n + j] = want[i * n + j];
          gotLower[i * n + j] = got[i * n + j];
          scale[i * n + j] = Math.sqrt(a[i * n + i]);
          // The upper triangle is Lᵀ, copied bit for bit.
          if (got[j * n + i] !== got[i * n + j]) {
            throw new Error(`D = ${n}: upper (${j}, ${i}) = ${got[j * n + i]} ≠ lower ${got[i * n + j]}`);
          }
        }
      }
      assertClose(gotLower, lower, TOL.linalg.cholesky, `cholesky D = ${n}`, scale);
      t.dispose();
      status.dispose();
    }
  });

  gpuTest(`cholesky records the column of the first pivot that is not positive${what}`, async (e) => {
    // A later panel (D = 100, column 70) and the first one (D = 9, column 3, a zero column).
    const m = 100, n = 9;
    const b = spd(m, 4);
    b[70 * m + 70] = -1;
    const a = spd(n, 3);
    for (let i = 0; i < n; i++) a[3 * n + i] = a[i * n + 3] = 0;
    // Column + 1 at the entry given; the others untouched.
    const status = e.zeros([3]);
    choleskyInPlace(e.tensor(a, [n, n]), { status, statusIndex: 0, staged });
    choleskyInPlace(e.tensor(b, [m, m]), { status, statusIndex: 2, staged });
    assertEquals([...await status.toArray()], [4, 0, 71], "status");
  });

  gpuTest(`triangular solves match float64 forward and back substitution${what}`, async (e) => {
    for (const n of SIZES) {
      const l = choleskyCpu(spd(n, 21 + n), n);
      const storage = factorStorage(l, n);
      const l32 = Float64Array.from(storage, (v, i) => (i % n <= Math.floor(i / n) ? v : 0));
      const f = e.tensor(storage, [n, n]);
      for (const rows of [1, 3, 70]) {
        const b = rand(rows * n, 31 + rows + n);
        const where = `D = ${n}, ${rows} right-hand sides`;
        const fwd = triangularSolveCpu(l32, n, b, rows, false);
        const back = triangularSolveCpu(l32, n, b, rows, true);
        const both = triangularSolveCpu(l32, n, fwd, rows, true);
        for (
          const [name, solve, want] of [
            ["L·z = b", (f: Tensor, z: Tensor) => solveLowerInPlace(f, z, { staged }), fwd],
            ["Lᵀ·x = b", (f: Tensor, z: Tensor) => solveUpperInPlace(f, z, { staged }), back],
            ["L·Lᵀ·x = b", (f: Tensor, z: Tensor) => {
              solveLowerInPlace(f, z, { staged });
              solveUpperInPlace(f, z, { staged });
            }, both],
          ] as const
        ) {
          const z = e.tensor(b, [rows, n]);
          solve(f, z);
          assertClose(await z.toArray(), want, TOL.linalg.solve, `${name} ${where}`, rowScale(want, rows, n));
          z.dispose();
        }
      }
      f.dispose();
    }
  });
}

gpuTest("choleskySolveInPlace is the forward then the back substitution", async (e) => {
  const n = 70, rows = 5;
  const l = choleskyCpu(spd(n, 91), n);
  const f = e.tensor(factorStorage(l, n), [n, n]);
  const b = rand(rows * n, 92);
  const z1 = e.tensor(b, [rows, n]), z2 = e.tensor(b, [rows, n]);
  choleskySolveInPlace(f, z1);
  solveLowerInPlace(f, z2);
  solveUpperInPlace(f, z2);
  assertEquals([...await z1.toArray()], [...await z2.toArray()]);
});

gpuTest("cholesky of a shifted matrix equals the factor of A + λI", async (e) => {
  const n = 70, lam = 0.75;
  const a = spd(n, 5);
  const shifted = Float64Array.from(a, (v, i) => v + (Math.floor(i / n) === i % n ? lam : 0));
  const want = choleskyCpu(shifted, n);
  const f = await cholesky(e.tensor(a, [n, n]), { shift: lam });
  const got = await f.toArray();
  const scale = Float64Array.from(want, (_, i) => Math.sqrt(shifted[Math.floor(i / n) * (n + 1)]));
  const lower = (v: ArrayLike<number>) =>
    Float64Array.from(v, (x, i) => (i % n <= Math.floor(i / n) ? x : 0));
  assertClose(lower(got), want, TOL.linalg.cholesky, "cholesky A + λI", scale);
  // addDiagonal alone: G + λI exactly (one float32 addition per diagonal value).
  const s = await addDiagonal(e.tensor(a, [n, n]), lam).toArray();
  assertClose(s, Float32Array.from(shifted), TOL.exact, "addDiagonal");
});

gpuTest("cholesky names the column of the first pivot that is not positive", async (e) => {
  // Column 3 is 0 on and off the diagonal (a constant feature after centring): its pivot is exactly 0.
  const n = 9;
  const a = spd(n, 3);
  for (let i = 0; i < n; i++) a[3 * n + i] = a[i * n + 3] = 0;
  await assertRejects(() => cholesky(e.tensor(a, [n, n])), RangeError, "pivot of column 3 is not positive");
  // Through a status tensor (each variant): "cholesky records the column of the first pivot …" above.
  const status = e.zeros([3]);
  assertThrows(
    () => choleskyInPlace(e.tensor(a, [n, n]), { status, statusIndex: 3 }),
    RangeError,
    "statusIndex",
  );
  assertThrows(() => choleskyInPlace(e.tensor(new Float32Array(6), [2, 3])), RangeError, "square");
});

async function checkCrossprod(
  e: Engine,
  rows: number,
  ca: number,
  cb: number,
  aCols: [number, number],
  bCols: [number, number],
) {
  const a = rand(rows * ca, rows + ca, -1, 3), b = rand(rows * cb, rows + cb + 1, 0, 2);
  const ma = rand(ca, 5, 0, 1), mb = rand(cb, 6, 0.5, 1.5);
  // The reference on the column ranges only.
  const sub = (x: Float32Array, c: number, [s, m]: [number, number]) =>
    Float32Array.from({ length: rows * m }, (_, i) => x[Math.floor(i / m) * c + s + (i % m)]);
  const want = crossprodCpu(
    sub(a, ca, aCols),
    sub(b, cb, bCols),
    rows,
    aCols[1],
    bCols[1],
    ma.subarray(aCols[0], aCols[0] + aCols[1]),
    mb.subarray(bCols[0], bCols[0] + bCols[1]),
  );
  const got = crossprod(e.tensor(a, [rows, ca]), e.tensor(b, [rows, cb]), {
    aColumns: aCols,
    bColumns: bCols,
    aMean: e.tensor(ma, [ca]),
    bMean: e.tensor(mb, [cb]),
  });
  assertEquals([...got.shape], [aCols[1], bCols[1]], "shape");
  const what = `crossprod rows ${rows}, A[:, ${aCols}] of ${ca}, B[:, ${bCols}] of ${cb}`;
  assertClose(await got.toArray(), want.data, TOL.matmul, what, want.scale);
}

gpuTest("crossprod matches a float64 centred cross product on column ranges", async (e) => {
  await checkCrossprod(e, 1, 1, 1, [0, 1], [0, 1]);
  await checkCrossprod(e, 37, 13, 70, [2, 9], [0, 70]); // scalar reads
  await checkCrossprod(e, 50, 300, 64, [4, 200], [8, 33]); // vec4 reads, ragged tiles
  await checkCrossprod(e, 20, 7, 7, [0, 7], [0, 7]);
  // More rows than one invocation may loop over (llvmpipe's loop limit): split into runs.
  await checkCrossprod(e, MAX_ROWS + 1234, 5, 4, [0, 5], [1, 3]);
});

async function checkGram(e: Engine, rows: number, d: number) {
  const x = rand(rows * d, rows + d, -1, 3), mu = rand(d, 7, 0, 1.5);
  const want = crossprodCpu(x, x, rows, d, d, mu, mu);
  const tx = e.tensor(x, [rows, d]), tm = e.tensor(mu, [d]);
  const got = crossprod(tx, tx, { aMean: tm, bMean: tm, symmetric: true });
  assertClose(
    await got.toArray(),
    want.data,
    TOL.matmul,
    `symmetric crossprod rows ${rows}, D = ${d}`,
    want.scale,
  );
}

gpuTest("a symmetric crossprod computes the lower triangle and mirrors it", async (e) => {
  for (const d of [1, 7, 65, 300]) await checkGram(e, 41, d);
  await checkGram(e, MAX_ROWS + 77, 6);
  const x = e.tensor(rand(12), [4, 3]);
  assertThrows(() => crossprod(x, x, { aColumns: [1, 2], symmetric: true }), RangeError, "symmetric");
});

gpuTest("crossprod and squared errors read operands larger than one binding in runs of rows", async () => {
  const e = await smallBindingEngine(16 << 10);
  try {
    // A: 300 × 40 floats = 47 KiB over 16 KiB bindings.
    await checkCrossprod(e, 300, 40, 24, [4, 32], [0, 24]);
    await checkCrossprod(e, 301, 33, 9, [1, 30], [2, 7]);
    await checkGram(e, 150, 40);
    const rows = 257, m = 10, k = 37;
    const p = rand(rows * m, 1), y = rand(rows * k, 2), mu = rand(k, 3);
    const want = new Float64Array(m);
    for (let r = 0; r < rows; r++) {
      for (let j = 0; j < m; j++) want[j] += (y[r * k + 5 + j] - mu[5 + j] - p[r * m + j]) ** 2;
    }
    const out = e.zeros([m + 3]);
    squaredErrorSums(e.tensor(p, [rows, m]), e.tensor(y, [rows, k]), {
      yColumn: 5,
      yMean: e.tensor(mu, [k]),
      out,
      outOffset: 2,
    });
    const got = await out.toArray();
    assertClose(got.subarray(2, 2 + m), want, TOL.reduce, "squared error sums");
    assertEquals([got[0], got[1], got[m + 2]], [0, 0, 0], "outside the offset");
    e.checkError();
  } finally {
    e.destroy();
  }
});
