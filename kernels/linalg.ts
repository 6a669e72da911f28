/**
 * Dense linear algebra for closed-form fits (ridge regression, `model/ridge.ts`): centred cross products
 * `(A − 1μₐᵀ)ᵀ(B − 1μ_bᵀ)`, a blocked Cholesky factorisation `A = L·Lᵀ` of a symmetric positive-definite
 * matrix, the triangular solves against its factor, and the squared-error sums of validation predictions;
 * their launchers and float64 CPU references. Inference-only math: no gradients.
 *
 *   crossprod:  A (R, ·), B (R, ·) → C (M, N) = Σ_r (A[r, a0+i] − μa[a0+i]) (B[r, b0+j] − μb[b0+j])
 *   cholesky:   A (D, D) in place → L in the lower triangle, Lᵀ mirrored into the upper one
 *   solves:     Z (R, D) in place, one right-hand side per row: Z ← Z·L⁻ᵀ (L z = b), Z ← Z·L⁻¹ (Lᵀ x = z)
 *
 * The Cholesky is right-looking and blocked by {@linkcode NB} columns (Golub & Van Loan, _Matrix
 * Computations_, 4th ed., alg. 4.2.2): per panel, one workgroup factors the NB × NB diagonal block in
 * workgroup memory, the rows below solve against it (one invocation per row), and the trailing lower
 * triangle takes the rank-NB update −L₂₁L₂₁ᵀ, a register-blocked product like the `reg` matmul (each
 * invocation a T × T tile; FMAs per storage load is what counts on llvmpipe). The solves are blocked
 * the same way: a small triangular solve per diagonal block (one invocation per right-hand side) and a
 * rank-NB update of the remaining columns. Pivots that are not positive (or NaN) are recorded in a status tensor as `column + 1`
 * (the first one only), so a caller learns about them at its next readback instead of after each panel.
 *
 * Every loop of one invocation stays below llvmpipe's 65 535 iterations (row runs of at most
 * {@linkcode MAX_ROWS}); tensors larger than one storage binding are read in runs of whole rows
 * (`kernels/_ranges.ts`).
 *
 * @module
 */
import { type Engine, grid } from "../engine/engine.ts";
import { single, variants } from "../engine/kernel.ts";
import { Tensor } from "../engine/tensor.ts";
import { bindElements, type RowRun, rowRuns } from "./_ranges.ts";
import {
  kahanAdd,
  LINEAR_ID,
  linearEntry,
  stagesTiles,
  wgsl,
  WORKGROUP_ID,
  workgroupEntry,
} from "./_wgsl.ts";

/** Columns per panel of the blocked Cholesky and solves (NB² floats: 16 KiB of workgroup memory). */
export const NB = 64;
/**
 * Rows one invocation sums over in one dispatch: llvmpipe ends an invocation's loops after 65 535
 * iterations in all, silently (see `MAX_LOOP_STEPS` in kernels/conv2d/common.ts); longer sums are split.
 */
export const MAX_ROWS = 1 << 15;
/** Invocations per workgroup of the register-blocked kernels (lanes along the columns of C). */
const LANES = 8;

const seq = (n: number) => Array.from({ length: n }, (_, i) => i);

// Register tile of C per invocation: 16 × 16 for large products, smaller ones where C is small.
function tileFor(m: number, n: number): 4 | 8 | 16 {
  const s = Math.min(m, n);
  return s >= 64 ? 16 : s >= 16 ? 8 : 4;
}

// Row runs of `rows` rows that fit one binding for each row width and are at most MAX_ROWS long.
function runsOf(e: Engine, op: string, rows: number, rowElems: readonly number[]): RowRun[] {
  const out: RowRun[] = [];
  for (const run of rowRuns(e, op, rows, rowElems)) {
    for (let s = 0; s < run.count; s += MAX_ROWS) {
      out.push({ start: run.start + s, count: Math.min(MAX_ROWS, run.count - s) });
    }
  }
  return out;
}

/**
 * Per-dispatch arguments of the blocked kernels, 8 u32 per slot: r0, r1, j0, j1, aCol, bCol, kk, 0 (the
 * update's rows, columns and panel; potrf and trsm read k0 = aCol, nb = kk; trsv i0 = aCol, nb = kk,
 * rows = r1). They are read from a storage buffer, not uniforms: llvmpipe compiles a kernel anew for new
 * values of some uniforms that decide branches (measured: the 16 × 16 update, given its panel offsets as
 * uniforms, took ~2 s per panel on a first run with an empty shader cache, ~60 s for one D = 2048
 * factorisation); read from storage, one compiled kernel serves every panel.
 * Cached per engine and key (the order, the right-hand sides).
 */
const TABLES = new WeakMap<Engine, Map<string, Tensor>>();
type Slot = [number, number, number, number, number, number, number];

function slotTable(e: Engine, key: string, slots: () => Slot[]): Tensor {
  let m = TABLES.get(e);
  if (!m) TABLES.set(e, m = new Map());
  const hit = m.get(key);
  if (hit && !hit.disposed) return hit;
  if (m.size >= 64) {
    for (const t of m.values()) t.dispose(); // recorded work still reads them: the pool reuses them in order
    m.clear();
  }
  const rows = slots();
  const words = new Uint32Array(Math.max(rows.length, 1) * 8);
  rows.forEach((r, i) => words.set(r, i * 8));
  const t = e.scope(() => e.tensor(new Float32Array(words.buffer), [words.length]).keep());
  m.set(key, t);
  return t;
}

/** WGSL: the 8 arguments of slot `p.slot` as `let` bindings (see {@linkcode slotTable}). */
const SLOT_ARGS = `let sb = p.slot * 8u;
  let r0 = tab[sb]; let r1 = tab[sb + 1u]; let j0 = tab[sb + 2u]; let j1 = tab[sb + 3u];
  let aCol = tab[sb + 4u]; let bCol = tab[sb + 5u]; let kk = tab[sb + 6u];`;

function checkMatrix(op: string, t: Tensor, what: string): [number, number] {
  if (!(t instanceof Tensor)) throw new TypeError(`Cannot ${op}: ${what} must be a Tensor`);
  if (t.rank !== 2) throw new RangeError(`Cannot ${op}: ${what} must be 2-D, current shape is [${t.shape}]`);
  return [t.shape[0], t.shape[1]];
}

function checkColumns(op: string, what: string, cols: number, r: readonly [number, number]): void {
  const [s, c] = r;
  if (!Number.isInteger(s) || !Number.isInteger(c) || s < 0 || c < 0 || s + c > cols) {
    throw new RangeError(`Cannot ${op}: columns [${s}, ${s + c}) of ${what} are outside its ${cols} columns`);
  }
}

// ---------------------------------------------------------------- centred cross product

interface CrossParams extends Record<string, number | boolean> {
  t: number;
  /** A (B) read as vec4 along its columns: row stride, column offset and binding offset multiples of 4. */
  vecA: boolean;
  vecB: boolean;
  /** Only tiles that reach the lower triangle (a symmetric product, mirrored afterwards). */
  lower: boolean;
}

// C tile T × T per invocation: rows i of C are columns of A, columns j of C are columns of B; each row r of
// the run loads T values of A and T of B (vec4 where aligned), centres them and does T² FMAs.
function genCrossprod(c: CrossParams): string {
  const T = c.t;
  const L: string[] = [];
  L.push(`@compute @workgroup_size(${LANES}) fn main(@builtin(workgroup_id) wid: vec3u,`);
  L.push(`    @builtin(local_invocation_id) lid: vec3u) {`);
  L.push(`  let M = p.M; let N = p.N;`);
  L.push(`  let row0 = wid.y * ${T}u;`, `  let col0 = (wid.x * ${LANES}u + lid.x) * ${T}u;`);
  L.push(`  if (row0 >= M || col0 >= N) { return; }`);
  if (c.lower) L.push(`  if (col0 > row0 + ${T - 1}u) { return; }`);
  const side = (name: "A" | "B", m: "ma" | "mb", first: string, count: string, vec: boolean) => {
    const x = name.toLowerCase();
    if (vec) {
      for (let q = 0; q < T / 4; q++) {
        L.push(`  let ${x}i${q} = min(${first} / 4u + ${q}u, (${count} + 3u) / 4u - 1u);`);
        const comps = seq(4).map((s) => `${m}[p.${m}Off + min(${first} + ${4 * q + s}u, ${count} - 1u)]`);
        L.push(`  let ${x}m${q} = vec4f(${comps.join(", ")});`);
      }
    } else {
      for (let i = 0; i < T; i++) {
        L.push(`  let ${x}i${i} = min(${first} + ${i}u, ${count} - 1u);`);
        L.push(`  let ${x}m${i} = ${m}[p.${m}Off + ${x}i${i}];`);
      }
    }
  };
  side("A", "ma", "row0", "M", c.vecA);
  side("B", "mb", "col0", "N", c.vecB);
  for (let i = 0; i < T; i++) for (let j = 0; j < T; j++) L.push(`  var c${i}_${j} = 0.0;`);
  L.push(`  for (var r = 0u; r < p.rows; r++) {`);
  const load = (name: "A" | "B", vec: boolean) => {
    const x = name.toLowerCase();
    const ld = name === "A" ? "p.lda" : "p.ldb", off = name === "A" ? "p.aOff" : "p.bOff";
    if (vec) {
      L.push(`    let ${x}r = (r * ${ld} + ${off}) / 4u;`);
      for (let q = 0; q < T / 4; q++) L.push(`    let ${x}${q} = ${name}[${x}r + ${x}i${q}] - ${x}m${q};`);
    } else {
      L.push(`    let ${x}r = r * ${ld} + ${off};`);
      for (let i = 0; i < T; i++) L.push(`    let ${x}${i} = ${name}[${x}r + ${x}i${i}] - ${x}m${i};`);
    }
  };
  load("A", c.vecA);
  load("B", c.vecB);
  const av = (i: number) => (c.vecA ? `a${i >> 2}[${i & 3}]` : `a${i}`);
  const bv = (j: number) => (c.vecB ? `b${j >> 2}[${j & 3}]` : `b${j}`);
  for (let i = 0; i < T; i++) {
    for (let j = 0; j < T; j++) L.push(`    c${i}_${j} = fma(${av(i)}, ${bv(j)}, c${i}_${j});`);
  }
  L.push(`  }`);
  for (let i = 0; i < T; i++) {
    L.push(`  if (row0 + ${i}u < M) {`, `    let o = p.cOff + (row0 + ${i}u) * p.ldc + col0;`);
    for (let j = 0; j < T; j++) {
      const v = `c${i}_${j}`;
      L.push(`    if (col0 + ${j}u < N) { C[o + ${j}u] = select(${v}, C[o + ${j}u] + ${v}, p.acc == 1u); }`);
    }
    L.push(`  }`);
  }
  L.push(`}`);
  return L.join("\n");
}

// C (M, N) [+]= Σ_{r < rows} (A[aOff + r·lda + i] − ma[maOff + i]) · (B[bOff + r·ldb + j] − mb[mbOff + j])
const crossprodKernel = variants("linalg_crossprod", (c: CrossParams) => ({
  bindings: [
    { name: "A", access: "read", type: c.vecA ? "vec4<f32>" : "f32" },
    { name: "B", access: "read", type: c.vecB ? "vec4<f32>" : "f32" },
    { name: "ma", access: "read" },
    { name: "mb", access: "read" },
    { name: "C", access: "read_write" },
  ] as const,
  uniforms: {
    M: "u32",
    N: "u32",
    rows: "u32",
    lda: "u32",
    ldb: "u32",
    aOff: "u32", // element of A's binding where row 0, column 0 of the product starts
    bOff: "u32",
    maOff: "u32",
    mbOff: "u32",
    ldc: "u32",
    cOff: "u32",
    acc: "u32", // 1: C += the run's sum (later row runs)
  } as const,
  workgroupSize: [LANES],
  body: genCrossprod(c),
}));

/** Options of {@linkcode crossprod}. */
export interface CrossprodOptions {
  /** Columns `[start, count]` of A that enter the product (default: all). */
  aColumns?: readonly [number, number];
  /** Columns `[start, count]` of B (default: all). */
  bColumns?: readonly [number, number];
  /** Column means subtracted from A, one per column of A (all of them, not only `aColumns`); default 0. */
  aMean?: Tensor;
  /** Column means subtracted from B; default 0. */
  bMean?: Tensor;
  /**
   * The product is symmetric (B is A, with the same columns and means): only the tiles that reach the lower
   * triangle are computed, and the lower triangle is then copied onto the upper one (half the work).
   */
  symmetric?: boolean;
}

/**
 * The centred cross product `(A − 1μₐᵀ)ᵀ·(B − 1μ_bᵀ)` over the rows of A and B, restricted to column
 * ranges: C[i, j] = Σ_r (A[r, a₀+i] − μₐ[a₀+i])·(B[r, b₀+j] − μ_b[b₀+j]). A and B may exceed one storage
 * binding (they are read in runs of whole rows, each run's sum added to C); C must fit one.
 * `crossprod(x, x, { aMean: mu, bMean: mu })` is the Gram matrix of the centred rows.
 *
 * @example
 * ```ts
 * const gram = crossprod(x, x, { aMean: mx, bMean: mx });            // (D, D)
 * const xty = crossprod(y, x, { aColumns: [0, 250], aMean: my, bMean: mx }); // (250, D) = Ycᵀ Xc
 * ```
 */
export function crossprod(a: Tensor, b: Tensor, o: CrossprodOptions = {}): Tensor {
  const op = "compute a cross product";
  const [ra, ca] = checkMatrix(op, a, "A"), [rb, cb] = checkMatrix(op, b, "B");
  if (ra !== rb) throw new RangeError(`Cannot ${op} of [${a.shape}] and [${b.shape}]: row counts differ`);
  const [a0, m] = o.aColumns ?? [0, ca], [b0, n] = o.bColumns ?? [0, cb];
  checkColumns(op, "A", ca, [a0, m]);
  checkColumns(op, "B", cb, [b0, n]);
  for (const [mean, cols, what] of [[o.aMean, ca, "aMean"], [o.bMean, cb, "bMean"]] as const) {
    if (mean && (mean.rank !== 1 || mean.shape[0] !== cols)) {
      throw new RangeError(`Cannot ${op}: ${what} has shape [${mean.shape}], expected [${cols}]`);
    }
  }
  const sym = !!o.symmetric;
  if (sym && (b !== a || a0 !== b0 || m !== n || o.aMean !== o.bMean)) {
    throw new RangeError(`Cannot ${op}: symmetric needs B = A with the same columns and means`);
  }
  const e = a.engine;
  const out = e.zeros([m, n], "crossprod");
  if (m === 0 || n === 0 || ra === 0) return out;
  const t = tileFor(m, n);
  const ma = o.aMean ?? e.zeros([ca]), mb = o.bMean ?? e.zeros([cb]);
  try {
    const runs = runsOf(e, op, ra, [ca, cb]);
    runs.forEach((run, k) => {
      const A = bindElements(a, run.start * ca, run.count * ca);
      const B = bindElements(b, run.start * cb, run.count * cb);
      const vecA = ca % 4 === 0 && a0 % 4 === 0 && A.off % 4 === 0;
      const vecB = cb % 4 === 0 && b0 % 4 === 0 && B.off % 4 === 0;
      e.run(crossprodKernel({ t, vecA, vecB, lower: sym }), {
        bindings: [A.binding, B.binding, ma, mb, out],
        uniforms: {
          M: m,
          N: n,
          rows: run.count,
          lda: ca,
          ldb: cb,
          aOff: A.off + a0,
          bOff: B.off + b0,
          maOff: a0,
          mbOff: b0,
          ldc: n,
          cOff: 0,
          acc: k > 0 ? 1 : 0,
        },
        workgroups: [Math.ceil(n / (t * LANES)), Math.ceil(m / t), 1],
        info: `[${a.shape}][:,${a0}+${m}]ᵀ·[${b.shape}][:,${b0}+${n}] rows ${run.start}+${run.count}`,
      });
    });
    if (sym && m > 1) {
      e.run(mirrorKernel(), { bindings: [out], uniforms: { n: m }, workgroups: grid(m * m, 64) });
    }
  } finally {
    if (!o.aMean) ma.dispose();
    if (!o.bMean) mb.dispose();
  }
  return out;
}

// ---------------------------------------------------------------- small element kernels

// A (n, n) = G + λ·I
const shiftKernel = single("linalg_shift", () => ({
  bindings: [{ name: "G", access: "read" }, { name: "A", access: "read_write" }] as const,
  uniforms: { n: "u32", lam: "f32" } as const,
  workgroupSize: [64],
  body: `
${linearEntry(64)} {
  ${LINEAR_ID}
  if (i >= p.n * p.n) { return; }
  A[i] = G[i] + select(0.0, p.lam, i / p.n == i % p.n);
}`,
}));

/**
 * `G + λ·I` for a square G (into `out` when given, else a new tensor).
 *
 * @example
 * ```ts
 * const a = addDiagonal(gram, 0.5); // (D, D)
 * ```
 */
export function addDiagonal(g: Tensor, lambda: number, out?: Tensor): Tensor {
  const op = "add to the diagonal";
  const [n, n2] = checkMatrix(op, g, "G");
  if (n !== n2) throw new RangeError(`Cannot ${op}: G must be square, current shape is [${g.shape}]`);
  if (out && (out.rank !== 2 || out.shape[0] !== n || out.shape[1] !== n)) {
    throw new RangeError(`Cannot ${op}: out has shape [${out.shape}], expected [${n},${n}]`);
  }
  const e = g.engine;
  const a = out ?? e.empty([n, n], "shifted");
  if (n === 0) return a;
  e.run(shiftKernel(), {
    bindings: [g, a],
    uniforms: { n, lam: lambda },
    workgroups: grid(n * n, 64),
    info: `[${n},${n}] + ${lambda}·I`,
  });
  return a;
}

// d (n) = diag(G)
const diagKernel = single("linalg_diag", () => ({
  bindings: [{ name: "G", access: "read" }, { name: "d", access: "read_write" }] as const,
  uniforms: { n: "u32" } as const,
  workgroupSize: [64],
  body: `
${linearEntry(64)} {
  ${LINEAR_ID}
  if (i >= p.n) { return; }
  d[i] = G[i * p.n + i];
}`,
}));

/**
 * The diagonal of a square matrix, as a (n) tensor.
 *
 * @example
 * ```ts
 * const trace = (await diagonal(gram).toArray()).reduce((s, v) => s + v, 0);
 * ```
 */
export function diagonal(g: Tensor): Tensor {
  const [n, n2] = checkMatrix("take the diagonal", g, "G");
  if (n !== n2) {
    throw new RangeError(`Cannot take the diagonal: G must be square, current shape is [${g.shape}]`);
  }
  const d = g.engine.empty([n], "diagonal");
  if (n > 0) g.engine.run(diagKernel(), { bindings: [g, d], uniforms: { n }, workgroups: grid(n, 64) });
  return d;
}

// ---------------------------------------------------------------- Cholesky

/** A diagonal-block kernel's variant: the block staged in workgroup memory or used in place. */
export interface BlockVariant extends Record<string, boolean> {
  staged: boolean;
}

// The diagonal block's element (r, c): staged in workgroup array `w`, else in storage buffer `buf` at
// (o + r, o + c) of an n-column matrix.
const blockAt = (staged: boolean, w: string, buf: string, o: string) => (r: string, c: string) =>
  staged ? `${w}[${r}][${c}]` : `${buf}[(${o} + ${r}) * n + ${o} + ${c}]`;

// One workgroup factors the nb × nb diagonal block at (k0, k0) (right-looking, column by column;
// invocation t owns row t), in workgroup memory and then writing L₁₁ back into the lower triangle, or in
// place. A pivot that is not positive is recorded once as status[si] = its column + 1.
const potrfKernel = variants("linalg_potrf", (c: BlockVariant) => {
  const a = blockAt(c.staged, "a", "A", "k0");
  const barrier = c.staged ? "workgroupBarrier();" : "storageBarrier();";
  return {
    bindings: [
      { name: "A", access: "read_write" },
      { name: "status", access: "read_write" },
      { name: "tab", access: "read", type: "u32" },
    ] as const,
    uniforms: { n: "u32", slot: "u32", si: "u32" } as const,
    workgroupSize: [NB],
    body: wgsl`
#if ${c.staged}
var<workgroup> a: array<array<f32, ${NB}>, ${NB}>;
#endif
@compute @workgroup_size(${NB}) fn main(@builtin(local_invocation_index) t: u32) {
  ${SLOT_ARGS}
  let n = p.n; let k0 = aCol; let nb = kk;
#if ${c.staged}
  for (var e = t; e < nb * nb; e += ${NB}u) {
    let r = e / nb; let c = e % nb;
    a[r][c] = A[(k0 + r) * n + k0 + c];
  }
  workgroupBarrier();
#endif
  for (var j = 0u; j < nb; j++) {
    let d = ${a("j", "j")};
    let s = sqrt(d);
    if (t == 0u && !(d > 0.0) && status[p.si] == 0.0) { status[p.si] = f32(k0 + j + 1u); }
    ${barrier}
    if (t > j && t < nb) { ${a("t", "j")} = ${a("t", "j")} / s; }
    ${barrier}
    if (t > j && t < nb) {
      let lt = ${a("t", "j")};
      for (var k = j + 1u; k <= t; k++) { ${a("t", "k")} -= lt * ${a("k", "j")}; }
    }
    if (t == j) { ${a("j", "j")} = s; }
    ${barrier}
  }
#if ${c.staged}
  for (var e = t; e < nb * nb; e += ${NB}u) {
    let r = e / nb; let c = e % nb;
    if (c <= r) { A[(k0 + r) * n + k0 + c] = a[r][c]; }
  }
#endif
}`,
  };
});

// Rows i ≥ k0 + nb of the panel: L₂₁[i, :] = A₂₁[i, :]·L₁₁⁻ᵀ (forward substitution, one invocation per row,
// L₁₁ staged in workgroup memory or read in place).
const trsmKernel = variants("linalg_trsm", (c: BlockVariant) => {
  const l = blockAt(c.staged, "l", "A", "k0");
  return {
    bindings: [{ name: "A", access: "read_write" }, { name: "tab", access: "read", type: "u32" }] as const,
    uniforms: { n: "u32", slot: "u32" } as const,
    workgroupSize: [NB],
    body: wgsl`
#if ${c.staged}
var<workgroup> l: array<array<f32, ${NB}>, ${NB}>; // L11 [NB][NB], lower
#endif
${workgroupEntry(NB)} {
  ${WORKGROUP_ID}
  ${SLOT_ARGS}
  let n = p.n; let k0 = aCol; let nb = kk;
#if ${c.staged}
  for (var e = t; e < nb * nb; e += ${NB}u) {
    let r = e / nb; let c = e % nb;
    if (c <= r) { l[r][c] = A[(k0 + r) * n + k0 + c]; }
  }
  workgroupBarrier();
#endif
  let row = k0 + nb + w * ${NB}u + t;
  if (row >= n) { return; }
  let base = row * n + k0;
  var x: array<f32, ${NB}>;
  for (var q = 0u; q < nb; q++) { x[q] = A[base + q]; }
  for (var i = 0u; i < nb; i++) {
    var s = x[i];
    for (var q = 0u; q < i; q++) { s -= x[q] * ${l("i", "q")}; }
    x[i] = s / ${l("i", "i")};
  }
  for (var q = 0u; q < nb; q++) { A[base + q] = x[q]; }
}`,
  };
});

interface UpdateParams extends Record<string, number | boolean> {
  t: number;
  /** Row strides, column offsets and column bounds multiples of 4: operands read, C written as vec4. */
  vec: boolean;
  /** Only tiles that reach the lower triangle (the Cholesky's trailing update). */
  lower: boolean;
  /** B is C itself (the Cholesky: L₂₁ L₂₁ᵀ); else the `B` binding (the solves: the factor). */
  selfB: boolean;
}

// C[r, j] −= Σ_{q < kk} C[r, aCol + q] · B[j, bCol + q] for r ∈ [r0, r1), j ∈ [j0, j1): a T × T tile per
// invocation, the panel read as vec4 along q where aligned. The panel columns are never in the updated range.
function genUpdate(c: UpdateParams): string {
  const T = c.t, V = c.vec;
  const L: string[] = [];
  const Bn = c.selfB ? "C" : "B";
  L.push(`@compute @workgroup_size(${LANES}) fn main(@builtin(workgroup_id) wid: vec3u,`);
  L.push(`    @builtin(local_invocation_id) lid: vec3u) {`);
  L.push(`  ${SLOT_ARGS}`);
  L.push(`  let row0 = r0 + wid.y * ${T}u;`, `  let col0 = j0 + (wid.x * ${LANES}u + lid.x) * ${T}u;`);
  L.push(`  if (row0 >= r1 || col0 >= j1) { return; }`);
  if (c.lower) L.push(`  if (col0 > row0 + ${T - 1}u) { return; }`);
  const dv = V ? " / 4u" : "";
  for (let i = 0; i < T; i++) L.push(`  let a${i} = (min(row0 + ${i}u, r1 - 1u) * p.ldc + aCol)${dv};`);
  for (let j = 0; j < T; j++) L.push(`  let b${j} = (min(col0 + ${j}u, j1 - 1u) * p.ldb + bCol)${dv};`);
  for (let i = 0; i < T; i++) for (let j = 0; j < T; j++) L.push(`  var c${i}_${j} = 0.0;`);
  const step = V ? 4 : 1;
  L.push(`  for (var q = 0u; q < kk${dv}; q++) {`);
  for (let i = 0; i < T; i++) L.push(`    let av${i} = C[a${i} + q];`);
  for (let j = 0; j < T; j++) L.push(`    let bv${j} = ${Bn}[b${j} + q];`);
  for (let i = 0; i < T; i++) {
    for (let j = 0; j < T; j++) {
      for (let s = 0; s < step; s++) {
        const a = V ? `av${i}[${s}]` : `av${i}`, b = V ? `bv${j}[${s}]` : `bv${j}`;
        L.push(`    c${i}_${j} = fma(${a}, ${b}, c${i}_${j});`);
      }
    }
  }
  L.push(`  }`);
  for (let i = 0; i < T; i++) {
    L.push(`  if (row0 + ${i}u < r1) {`, `    let o = (row0 + ${i}u) * p.ldc + col0;`);
    if (V) {
      // Column bounds are multiples of 4: a group of 4 is all in or all out.
      for (let j = 0; j < T; j += 4) {
        const v = `vec4f(${seq(4).map((s) => `c${i}_${j + s}`).join(", ")})`;
        L.push(`    if (col0 + ${j}u < j1) { let k = (o + ${j}u) / 4u; C[k] = C[k] - ${v}; }`);
      }
    } else {
      for (let j = 0; j < T; j++) {
        L.push(`    if (col0 + ${j}u < j1) { C[o + ${j}u] = C[o + ${j}u] - c${i}_${j}; }`);
      }
    }
    L.push(`  }`);
  }
  L.push(`}`);
  return L.join("\n");
}

const updateKernel = variants("linalg_update", (c: UpdateParams) => ({
  bindings: [
    { name: "C", access: "read_write", type: c.vec ? "vec4<f32>" : "f32" },
    { name: "B", access: "read", type: c.vec ? "vec4<f32>" : "f32" },
    { name: "tab", access: "read", type: "u32" },
  ] as const,
  // ldc: row stride of C (and of its panel columns); the rows, columns and panel come from the slot.
  uniforms: { ldc: "u32", ldb: "u32", slot: "u32" } as const,
  workgroupSize: [LANES],
  body: genUpdate(c),
}));

// C[r0:r1, j0:j1] −= C[r0:r1, aCol:aCol+kk] · B[j0:j1, bCol:bCol+kk]ᵀ (B = C when `b` is null), the
// arguments in slot `slot` of `tab`.
function runUpdate(
  c: Tensor,
  b: Tensor | null,
  tab: Tensor,
  slot: number,
  u: Slot,
  lower: boolean,
  info: string,
): void {
  const e = c.engine;
  const [r0, r1, j0, j1, aCol, bCol, kk] = u;
  if (r1 <= r0 || j1 <= j0 || kk === 0) return;
  const ldc = c.shape[1], ldb = b ? b.shape[1] : ldc;
  const t = tileFor(r1 - r0, j1 - j0);
  const vec = [ldc, ldb, aCol, bCol, kk, j0, j1].every((v) => v % 4 === 0);
  e.run(updateKernel({ t, vec, lower, selfB: b === null }), {
    bindings: [c, b ?? e.placeholder(), tab],
    uniforms: { ldc, ldb, slot },
    workgroups: [Math.ceil((j1 - j0) / (t * LANES)), Math.ceil((r1 - r0) / t), 1],
    info,
  });
}

// Cholesky of order n, panel p: rows and columns [k1, n) updated with panel [k0, k1) (potrf, trsm: k0, nb).
const cholSlots = (n: number) => () =>
  Array.from({ length: Math.ceil(n / NB) }, (_, p): Slot => {
    const k0 = p * NB, nb = Math.min(NB, n - k0), k1 = k0 + nb;
    return [k1, n, k1, n, k0, k0, nb];
  });

// Solves of `rows` right-hand sides of order n, block b: forward updates columns [i1, n), back [0, i0).
const solveSlots = (n: number, rows: number, back: boolean) => () =>
  Array.from({ length: Math.ceil(n / NB) }, (_, b): Slot => {
    const i0 = b * NB, nb = Math.min(NB, n - i0);
    return back ? [0, rows, 0, i0, i0, i0, nb] : [0, rows, i0 + nb, n, i0, i0, nb];
  });

// Copy the lower triangle onto the upper one: S[i, j] = S[j, i] for j > i.
const mirrorKernel = single("linalg_mirror", () => ({
  bindings: [{ name: "S", access: "read_write" }] as const,
  uniforms: { n: "u32" } as const,
  workgroupSize: [64],
  body: `
${linearEntry(64)} {
  ${LINEAR_ID}
  if (i >= p.n * p.n) { return; }
  let r = i / p.n; let c = i % p.n;
  if (c > r) { S[i] = S[c * p.n + r]; }
}`,
}));

/** Options of {@linkcode choleskyInPlace}. */
export interface CholeskyOptions {
  /**
   * Where a pivot that is not positive is recorded, as `column + 1` at `statusIndex` (only when that entry
   * is still 0: the first failure stays). Without it the factorisation is not checked; read it back (or use
   * {@linkcode cholesky}) to learn whether it succeeded.
   */
  status?: Tensor;
  statusIndex?: number;
  /** The diagonal-block variant; {@linkcode stagesTiles} for the adapter by default (`selftest` runs both). */
  staged?: boolean;
}

/**
 * Factor a symmetric positive-definite (D, D) matrix in place: afterwards its lower triangle (with the
 * diagonal) holds L with A = L·Lᵀ, and its upper triangle Lᵀ (so that both solves read rows). Only the
 * lower triangle of the input is read. Records the work; a pivot that is not positive is reported through
 * `status` (see {@linkcode CholeskyOptions}) and leaves NaN in the factor.
 *
 * @example
 * ```ts
 * const status = engine.zeros([1]);
 * choleskyInPlace(a, { status, statusIndex: 0 });
 * if ((await status.toArray())[0] !== 0) throw new RangeError("not positive definite");
 * ```
 */
export function choleskyInPlace(a: Tensor, o: CholeskyOptions = {}): void {
  const op = "compute a Cholesky factorisation";
  const [n, n2] = checkMatrix(op, a, "A");
  if (n !== n2) throw new RangeError(`Cannot ${op}: A must be square, current shape is [${a.shape}]`);
  const si = o.statusIndex ?? 0;
  if (o.status && !(Number.isInteger(si) && si >= 0 && si < o.status.size)) {
    throw new RangeError(`Cannot ${op}: statusIndex ${si} is outside the status tensor [${o.status.shape}]`);
  }
  const e = a.engine;
  const status = o.status ?? e.zeros([1]);
  const slots = cholSlots(n)();
  const tab = slotTable(e, `cholesky ${n}`, () => slots);
  const block = { staged: o.staged ?? stagesTiles(e) };
  try {
    slots.forEach((slot, i) => {
      const [k1, , , , k0, , nb] = slot;
      e.run(potrfKernel(block), {
        bindings: [a, status, tab],
        uniforms: { n, slot: i, si: o.status ? si : 0 },
        workgroups: [1],
        info: `[${n},${n}] panel ${k0}+${nb}`,
      });
      if (k1 === n) return;
      e.run(trsmKernel(block), {
        bindings: [a, tab],
        uniforms: { n, slot: i },
        workgroups: grid(n - k1, NB),
        info: `[${n},${n}] panel ${k0}+${nb}`,
      });
      runUpdate(a, null, tab, i, slot, true, `[${n},${n}] trailing ${k1}`);
    });
    if (n > 1) e.run(mirrorKernel(), { bindings: [a], uniforms: { n }, workgroups: grid(n * n, 64) });
  } finally {
    if (!o.status) status.dispose();
  }
}

/**
 * The Cholesky factor of a symmetric positive-definite (D, D) matrix as a new tensor (lower triangle L,
 * upper triangle Lᵀ, as {@linkcode choleskyInPlace}); `shift` adds λ·I first. Reads one number back to
 * check the pivots: a `RangeError` names the first column whose pivot is not positive.
 *
 * @example
 * ```ts
 * const f = await cholesky(gram, { shift: 1e-3 });
 * ```
 */
export async function cholesky(a: Tensor, o: { shift?: number } = {}): Promise<Tensor> {
  const f = addDiagonal(a, o.shift ?? 0);
  const status = a.engine.zeros([1]);
  try {
    choleskyInPlace(f, { status, statusIndex: 0 });
    const s = (await status.toArray())[0];
    if (s !== 0) {
      throw new RangeError(
        `Cannot compute a Cholesky factorisation of [${a.shape}]: the pivot of column ${s - 1} is not ` +
          `positive (the matrix is not positive definite in float32)`,
      );
    }
  } catch (err) {
    f.dispose();
    throw err;
  } finally {
    status.dispose();
  }
  return f;
}

// Each invocation one right-hand side (a row of Z): z[i0 : i0+nb] ← solve with the diagonal block of the
// factor, forward (L z = b) or backward (Lᵀ x = z); the block staged in workgroup memory or read in place.
const trsvKernel = variants("linalg_trsv", (c: BlockVariant & { back: boolean }) => {
  const l = blockAt(c.staged, "l", "S", "i0");
  return {
    bindings: [
      { name: "S", access: "read" },
      { name: "Z", access: "read_write" },
      { name: "tab", access: "read", type: "u32" },
    ] as const,
    uniforms: { n: "u32", slot: "u32" } as const,
    workgroupSize: [NB],
    body: wgsl`
#if ${c.staged}
var<workgroup> l: array<array<f32, ${NB}>, ${NB}>; // the diagonal block of L [NB][NB], lower
#endif
${workgroupEntry(NB)} {
  ${WORKGROUP_ID}
  ${SLOT_ARGS}
  let n = p.n; let i0 = aCol; let nb = kk;
#if ${c.staged}
  for (var e = t; e < nb * nb; e += ${NB}u) {
    let r = e / nb; let c = e % nb;
    if (c <= r) { l[r][c] = S[(i0 + r) * n + i0 + c]; }
  }
  workgroupBarrier();
#endif
  let row = w * ${NB}u + t;
  if (row >= r1) { return; }
  let base = row * n + i0;
  var z: array<f32, ${NB}>;
  for (var q = 0u; q < nb; q++) { z[q] = Z[base + q]; }
#if ${c.back}
  for (var k = 0u; k < nb; k++) {
    let i = nb - 1u - k;
    var s = z[i];
    for (var q = i + 1u; q < nb; q++) { s -= ${l("q", "i")} * z[q]; }
    z[i] = s / ${l("i", "i")};
  }
#else
  for (var i = 0u; i < nb; i++) {
    var s = z[i];
    for (var q = 0u; q < i; q++) { s -= ${l("i", "q")} * z[q]; }
    z[i] = s / ${l("i", "i")};
  }
#endif
  for (var q = 0u; q < nb; q++) { Z[base + q] = z[q]; }
}`,
  };
});

/** Options of the triangular solves. */
export interface SolveOptions {
  /** The diagonal-block variant; {@linkcode stagesTiles} for the adapter by default (`selftest` runs both). */
  staged?: boolean;
}

function checkSolve(op: string, f: Tensor, z: Tensor): [number, number] {
  const [n, n2] = checkMatrix(op, f, "the factor");
  const [rows, d] = checkMatrix(op, z, "the right-hand sides");
  if (n !== n2 || d !== n) {
    throw new RangeError(`Cannot ${op}: factor [${f.shape}] and right-hand sides [${z.shape}] do not match`);
  }
  if (z.bytes > z.engine.maxBinding) {
    throw new RangeError(
      `Cannot ${op}: the right-hand sides [${z.shape}] exceed one storage binding; solve them by rows`,
    );
  }
  return [rows, n];
}

/**
 * Forward substitution in place: each row b of Z (R, D) becomes z with L·z = b, i.e. Z ← Z·L⁻ᵀ, for a
 * factor from {@linkcode choleskyInPlace}. Z must fit one storage binding (solve larger ones by rows).
 *
 * @example
 * ```ts
 * solveLowerInPlace(factor, rhs); // rhs: (R, D), one right-hand side per row
 * ```
 */
export function solveLowerInPlace(f: Tensor, z: Tensor, o: SolveOptions = {}): void {
  const [rows, n] = checkSolve("solve L·z = b", f, z);
  if (rows === 0) return;
  solveBlocks(f, z, rows, n, false, o.staged ?? stagesTiles(f.engine));
}

// The blocked substitution: per 64-column block (last first when `back`), the diagonal block's solve for
// every right-hand side, then the rank-64 update of the columns still to solve.
function solveBlocks(f: Tensor, z: Tensor, rows: number, n: number, back: boolean, staged: boolean): void {
  const e = f.engine;
  const slots = solveSlots(n, rows, back)();
  const tab = slotTable(e, `${back ? "back" : "forward"} ${n} ${rows}`, () => slots);
  const order = slots.map((_, i) => (back ? slots.length - 1 - i : i));
  for (const i of order) {
    const slot = slots[i], i0 = slot[4], nb = slot[6];
    e.run(trsvKernel({ back, staged }), {
      bindings: [f, z, tab],
      uniforms: { n, slot: i },
      workgroups: grid(rows, NB),
      info: `[${z.shape}] block ${i0}+${nb}`,
    });
    runUpdate(z, f, tab, i, slot, false, `[${z.shape}] ${back ? "back" : "forward"} ${i0}`);
  }
}

/**
 * Back substitution in place: each row z of Z (R, D) becomes x with Lᵀ·x = z, i.e. Z ← Z·L⁻¹, for a factor
 * from {@linkcode choleskyInPlace} (it reads Lᵀ from the upper triangle).
 *
 * @example
 * ```ts
 * solveUpperInPlace(factor, rhs);
 * ```
 */
export function solveUpperInPlace(f: Tensor, z: Tensor, o: SolveOptions = {}): void {
  const [rows, n] = checkSolve("solve Lᵀ·x = z", f, z);
  if (rows === 0) return;
  solveBlocks(f, z, rows, n, true, o.staged ?? stagesTiles(f.engine));
}

/**
 * Solve A·x = b for each row b of Z (R, D) in place, with A = L·Lᵀ factored by {@linkcode choleskyInPlace}:
 * Z ← Z·A⁻¹ (A is symmetric). Z must fit one storage binding.
 *
 * @example
 * ```ts
 * choleskySolveInPlace(factor, xty); // xty: (K, D) = Ycᵀ Xc → the ridge weights (K, D)
 * ```
 */
export function choleskySolveInPlace(f: Tensor, z: Tensor): void {
  solveLowerInPlace(f, z);
  solveUpperInPlace(f, z);
}

// ---------------------------------------------------------------- squared errors

// out[outOff + j] [+]= Σ_{r < rows} (Y[yOff + r·ldy + j] − m[mOff + j] − P[pOff + r·ldp + j])², compensated.
const sqerrKernel = single("linalg_sqerr", () => ({
  bindings: [
    { name: "P", access: "read" },
    { name: "Y", access: "read" },
    { name: "m", access: "read" },
    { name: "out", access: "read_write" },
  ] as const,
  uniforms: {
    rows: "u32",
    cols: "u32",
    ldp: "u32",
    pOff: "u32",
    ldy: "u32",
    yOff: "u32",
    mOff: "u32",
    outOff: "u32",
    acc: "u32",
  } as const,
  workgroupSize: [64],
  body: `
${linearEntry(64)} {
  ${LINEAR_ID}
  if (i >= p.cols) { return; }
  let mean = m[p.mOff + i];
  var acc = 0.0;
  var comp = 0.0;
  for (var r = 0u; r < p.rows; r++) {
    let d = Y[p.yOff + r * p.ldy + i] - mean - P[p.pOff + r * p.ldp + i];
    ${kahanAdd("acc", "comp", "d * d")}
  }
  let o = p.outOff + i;
  out[o] = select(acc, out[o] + acc, p.acc == 1u);
}`,
}));

/** Options of {@linkcode squaredErrorSums}. */
export interface SquaredErrorOptions {
  /** First column of Y compared with column 0 of P (default 0). */
  yColumn?: number;
  /** Column means of Y (one per column of Y), subtracted first: P predicts Y − mean (default 0). */
  yMean?: Tensor;
  /** Where the sums go, at `outOffset` (default: a new (M) tensor). */
  out?: Tensor;
  outOffset?: number;
}

/**
 * Per-column sums of squared errors Σ_r (Y[r, y₀+j] − μ[y₀+j] − P[r, j])² of predictions P (R, M) against
 * columns [y₀, y₀+M) of Y (R, K): compensated float32 sums, in runs of whole rows (P and Y may exceed one
 * binding).
 *
 * @example
 * ```ts
 * const sse = squaredErrorSums(pred, yVal, { yColumn: 0, yMean: my }); // (M)
 * ```
 */
export function squaredErrorSums(pr: Tensor, y: Tensor, o: SquaredErrorOptions = {}): Tensor {
  const op = "sum squared errors";
  const [rows, m] = checkMatrix(op, pr, "P"), [ry, k] = checkMatrix(op, y, "Y");
  const y0 = o.yColumn ?? 0, off = o.outOffset ?? 0;
  if (ry !== rows) {
    throw new RangeError(`Cannot ${op} of P [${pr.shape}] against Y [${y.shape}]: rows differ`);
  }
  checkColumns(op, "Y", k, [y0, m]);
  if (o.yMean && (o.yMean.rank !== 1 || o.yMean.shape[0] !== k)) {
    throw new RangeError(`Cannot ${op}: yMean has shape [${o.yMean.shape}], expected [${k}]`);
  }
  const e = pr.engine;
  const out = o.out ?? e.empty([m], "sse");
  if (off < 0 || off + m > out.size) {
    throw new RangeError(`Cannot ${op}: ${m} sums at ${off} exceed out [${out.shape}]`);
  }
  if (m === 0) return out;
  if (out.bytes > e.maxBinding) throw new RangeError(`Cannot ${op}: out [${out.shape}] exceeds one binding`);
  const mean = o.yMean ?? e.zeros([k]);
  try {
    const runs = runsOf(e, op, rows, [m, k]);
    if (rows === 0) {
      e.run(sqerrKernel(), {
        bindings: [pr, y, mean, out],
        uniforms: { rows: 0, cols: m, ldp: m, pOff: 0, ldy: k, yOff: y0, mOff: y0, outOff: off, acc: 0 },
        workgroups: grid(m, 64),
      });
    }
    runs.forEach((run, idx) => {
      const P = bindElements(pr, run.start * m, run.count * m);
      const Y = bindElements(y, run.start * k, run.count * k);
      e.run(sqerrKernel(), {
        bindings: [P.binding, Y.binding, mean, out],
        uniforms: {
          rows: run.count,
          cols: m,
          ldp: m,
          pOff: P.off,
          ldy: k,
          yOff: Y.off + y0,
          mOff: y0,
          outOff: off,
          acc: idx > 0 ? 1 : 0,
        },
        workgroups: grid(m, 64),
        info: `[${pr.shape}] vs [${y.shape}][:,${y0}+${m}] rows ${run.start}+${run.count}`,
      });
    });
  } finally {
    if (!o.yMean) mean.dispose();
  }
  return out;
}

// ---------------------------------------------------------------- CPU references (float64)

/**
 * CPU reference of the Cholesky factorisation (float64): the lower factor L (n, n), zeros above the
 * diagonal. Throws a `RangeError` naming the column of the first pivot that is not positive.
 */
export function choleskyCpu(a: ArrayLike<number>, n: number): Float64Array {
  const l = new Float64Array(n * n);
  for (let j = 0; j < n; j++) {
    let d = a[j * n + j];
    for (let k = 0; k < j; k++) d -= l[j * n + k] * l[j * n + k];
    if (!(d > 0)) {
      throw new RangeError(`Cannot compute a Cholesky factorisation: the pivot of column ${j} is ${d}`);
    }
    const s = Math.sqrt(d);
    l[j * n + j] = s;
    for (let i = j + 1; i < n; i++) {
      let v = a[i * n + j];
      for (let k = 0; k < j; k++) v -= l[i * n + k] * l[j * n + k];
      l[i * n + j] = v / s;
    }
  }
  return l;
}

/**
 * CPU reference of the solves (float64): each row b of `z` (rows, n) becomes the solution of L·x = b
 * (`upper` false) or Lᵀ·x = b (`upper` true), for the lower factor `l` (n, n).
 */
export function triangularSolveCpu(
  l: ArrayLike<number>,
  n: number,
  z: ArrayLike<number>,
  rows: number,
  upper: boolean,
): Float64Array {
  const out = Float64Array.from(z);
  for (let r = 0; r < rows; r++) {
    const x = out.subarray(r * n, (r + 1) * n);
    if (!upper) {
      for (let i = 0; i < n; i++) {
        let s = x[i];
        for (let q = 0; q < i; q++) s -= l[i * n + q] * x[q];
        x[i] = s / l[i * n + i];
      }
    } else {
      for (let i = n - 1; i >= 0; i--) {
        let s = x[i];
        for (let q = i + 1; q < n; q++) s -= l[q * n + i] * x[q];
        x[i] = s / l[i * n + i];
      }
    }
  }
  return out;
}

/**
 * CPU reference of {@linkcode crossprod} over all columns (float64): (A − 1μₐᵀ)ᵀ(B − 1μ_bᵀ) for A (r, m),
 * B (r, n), and, for tolerance scaling, Σ_r |a||b| of the same product.
 */
export function crossprodCpu(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  rows: number,
  m: number,
  n: number,
  aMean?: ArrayLike<number>,
  bMean?: ArrayLike<number>,
): { data: Float64Array; scale: Float64Array } {
  const data = new Float64Array(m * n), scale = new Float64Array(m * n);
  for (let r = 0; r < rows; r++) {
    for (let i = 0; i < m; i++) {
      const av = a[r * m + i] - (aMean ? aMean[i] : 0);
      for (let j = 0; j < n; j++) {
        const v = av * (b[r * n + j] - (bMean ? bMean[j] : 0));
        data[i * n + j] += v;
        scale[i * n + j] += Math.abs(v);
      }
    }
  }
  return { data, scale };
}
