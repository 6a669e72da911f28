/**
 * Matrix multiply kernels: C = act(op(A) · op(B) + bias), batched, with either operand transposed; the
 * launcher `matmulForward`, the kernel choice and the CPU reference. The differentiable `matmul` and
 * `linear` (and the matmul gradient rule) are in `ops/matmul.ts`.
 *
 *   A: (…, M, K)  or (…, K, M) with `transposeA`
 *   B: (…, K, N)  or (…, N, K) with `transposeB` (PyTorch Linear weight layout [out, in])
 *   bias: (N,)     C: (…, M, N)
 *
 * Two kernel families, chosen per adapter by {@linkcode chooseMatmulKernel} (the tuning table first, see
 * `kernels/tuning.ts`; each configuration has a variant id such as `reg/32x32/rows` or `tiled/64x64`):
 * - `reg`: register-blocked, no workgroup memory. Each invocation owns a TM×TN block of C (up to 32×32;
 *   1, 2 or 4 × 32 or 64 for products of few rows), reads A and B as vec4 where the layout allows, unrolls
 *   K by 4 and emits the FMAs of one accumulator back to back. On llvmpipe every storage load costs ~200 instructions (a per-lane loop), so FMAs per
 *   load is what counts: 32×32 blocks reach ~25 GFLOP/s there, 8× a shared-memory kernel.
 * - `tiled`: 64×64 workgroup tiles staged through workgroup memory, 4×4 per thread (or 128×128, 8×8 per
 *   thread): the usual winner on real GPUs.
 * Rows or columns out of range are clamped inside the K loop (no branches) and skipped at the store.
 *
 * Large operands: A and C are split into row blocks, a transposed B into row blocks of N, so each binding
 * stays within `maxStorageBufferBindingSize` (the 2048 × 19 699 auxiliary head is 161 MB, more than
 * llvmpipe's 128 MiB).
 *
 * @module
 */
import type { Engine, TensorRange } from "../engine/engine.ts";
import { single, type VariantParams, variants } from "../engine/kernel.ts";
import { shapeSize, Tensor } from "../engine/tensor.ts";
import { blockWorkgroup, f16Round, hasF16, NO_F16, stagesTiles, wgsl } from "./_wgsl.ts";
import { binary, unary } from "./elementwise.ts";
import {
  KSTEP,
  matmulOuterTex,
  matmulTex,
  OUTER_MAX_K,
  TEX_TILES,
  TEX_WIDE,
  texCannot,
  type TexConfig,
  texLayout,
} from "./matmul_tex.ts";
import { flatFits, flatLoad, textureReads } from "../engine/flat.ts";
import { chosenVariant, forcedVariant } from "./tuning.ts";

/** Activation fused into the epilogue. */
export type Activation = "none" | "relu" | "sigmoid";

/**
 * Options for {@linkcode matmulForward} (and `matmul` in `ops/matmul.ts`). The kernel is the tuning
 * table's choice; tests and benchmarks force one with `withVariant("matmul", id, fn)` (`kernels/tuning.ts`).
 */
export interface MatmulOptions {
  transposeA?: boolean;
  transposeB?: boolean;
  /** Added to every row of C: shape (N,). */
  bias?: Tensor;
  /** Applied after the bias. */
  activation?: Activation;
}

/** A register-blocked kernel configuration. */
export interface RegConfig {
  kind: "reg";
  /** Rows and columns of C per invocation. */
  tm: number;
  tn: number;
  /** Invocations per workgroup (1-D). */
  wg: number;
  /** Consecutive invocations take consecutive row blocks ("rows") or column blocks ("cols"). */
  lanes: "rows" | "cols";
}

/** A workgroup-memory tiled kernel configuration. */
export interface TiledConfig {
  kind: "tiled";
  /** Per-thread block and workgroup shape; the workgroup tile is (wy·tm) × (wx·tn), K step bk. */
  tm: number;
  tn: number;
  wx: number;
  wy: number;
  bk: number;
  /**
   * Tiles stored in workgroup memory as f16 (operands rounded to nearest f16, ties to even; FMAs and C in
   * f32): half the workgroup memory and its traffic. Needs `shader-f16`. Such a variant computes the product of
   * the f16-rounded operands, not of A and B, so `tune` never chooses it: it runs only when forced or named
   * in a tuning table by hand (see {@linkcode matmulReducedPrecisionVariants}).
   */
  f16?: boolean;
}

export type { TexConfig } from "./matmul_tex.ts";

/** A kernel configuration. */
export type MatmulConfig = RegConfig | TiledConfig | TexConfig;

const KU = 4;

/** Parameters of one matmul kernel: the configuration (its variant id) and the operand layout. */
interface MatmulParams extends VariantParams {
  /** Canonical variant id of the configuration, e.g. `reg/16x16/cols` (see {@linkcode matmulVariantId}). */
  cfg: string;
  /** Invocations per workgroup of a register block (kernels/_wgsl.ts `blockWorkgroup`); 0 for tiles. */
  wg: number;
  vecA: boolean;
  vecB: boolean;
  /** C read and written as vec4 (register blocks, N and every offset a multiple of 4). */
  vecC: boolean;
  transB: boolean;
  bias: boolean;
  act: Activation;
}

/** WGSL of each fused activation (also used by kernels/matmul_tex.ts). */
export const ACT_WGSL: Record<Activation, (v: string) => string> = {
  none: (v) => v,
  relu: (v) => `max(${v}, 0.0)`,
  sigmoid: (v) => `(1.0 / (1.0 + exp(-(${v}))))`,
};

const UNIFORMS = {
  M: "u32",
  N: "u32",
  K: "u32",
  ldc: "u32", // row stride of C (N unless a column block is written)
  sa: "u32", // batch strides in elements (0 = broadcast)
  sb: "u32",
  sc: "u32",
  cOff: "u32", // first C element of this block
  biasOff: "u32",
  lda: "u32", // row stride of A (K unless a column block of A is read)
  aOff: "u32", // first column of A (split-K over a large untransposed B)
  acc: "u32", // 1: C += result (later split-K blocks)
} as const;

const BINDINGS = (v: MatmulParams) =>
  [
    { name: "A", access: "read", type: v.vecA ? "vec4<f32>" : "f32" },
    { name: "B", access: "read", type: v.vecB ? "vec4<f32>" : "f32" },
    { name: "bias", access: "read" },
    { name: "C", access: "read_write", type: v.vecC ? "vec4<f32>" : "f32" },
  ] as const;

// ---------------------------------------------------------------- register-blocked kernel

// C block (TM × TN) per invocation:
//   for k in 0..K step 4: load TM A values (vec4 along K) and TN B values (vec4 along N or K),
//   c[i][j] += a[i][k..k+3] · b[k..k+3][j], the 4 FMAs of one accumulator back to back.
function genReg(c: RegConfig, v: MatmulParams): string {
  const { tm: TM, tn: TN, wg: WG } = c;
  const { transB: tB, vecA: vA, vecB: vB } = v;
  const L: string[] = [];
  L.push(`@compute @workgroup_size(${WG}, 1, 1)`);
  L.push(`fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u) {`);
  L.push(`  let M = p.M; let N = p.N; let K = p.K;`);
  if (c.lanes === "rows") {
    L.push(`  let row0 = (wid.y * ${WG}u + lid.x) * ${TM}u;`, `  let col0 = wid.x * ${TN}u;`);
  } else {
    L.push(`  let row0 = wid.y * ${TM}u;`, `  let col0 = (wid.x * ${WG}u + lid.x) * ${TN}u;`);
  }
  L.push(`  let batch = wid.z;`);
  const aDiv = vA ? " / 4u" : "";
  const bDiv = vB ? " / 4u" : "";
  L.push(`  let aBase = batch * (p.sa${aDiv});`, `  let bBase = batch * (p.sb${bDiv});`);
  for (let i = 0; i < TM; i++) {
    L.push(`  let a${i} = aBase + (min(row0 + ${i}u, M - 1u) * p.lda + p.aOff)${aDiv};`);
  }
  if (!tB) {
    if (vB) {
      for (let j = 0; j < TN / 4; j++) L.push(`  let b${j} = bBase + min(col0 / 4u + ${j}u, N / 4u - 1u);`);
    } else for (let j = 0; j < TN; j++) L.push(`  let b${j} = bBase + min(col0 + ${j}u, N - 1u);`);
  } else {
    for (let j = 0; j < TN; j++) L.push(`  let b${j} = bBase + min(col0 + ${j}u, N - 1u) * (K${bDiv});`);
  }
  for (let i = 0; i < TM; i++) for (let j = 0; j < TN; j++) L.push(`  var c${i}_${j} = 0.0;`);
  const kvec = vA || (vB && tB); // an operand is read as vec4 along K: K advances in steps of 4

  const step = (ku: number, ind: string): string[] => {
    const S: string[] = [];
    for (let g = 0; g < ku; g += kvec ? 4 : 1) {
      const gs = kvec ? 4 : 1;
      for (let i = 0; i < TM; i++) {
        if (vA) S.push(`${ind}let av${i}_${g} = A[a${i} + (k + ${g}u) / 4u];`);
        else for (let s = 0; s < gs; s++) S.push(`${ind}let av${i}_${g + s} = A[a${i} + k + ${g + s}u];`);
      }
      const aval = (i: number, s: number) => (vA ? `av${i}_${g}[${s}]` : `av${i}_${g + s}`);
      let bval: (s: number, j: number) => string;
      if (!tB && vB) {
        for (let s = 0; s < gs; s++) {
          for (let j = 0; j < TN / 4; j++) {
            S.push(`${ind}let bv${g + s}_${j} = B[(k + ${g + s}u) * (N / 4u) + b${j}];`);
          }
        }
        bval = (s, j) => `bv${g + s}_${j >> 2}[${j & 3}]`;
      } else if (!tB) {
        for (let s = 0; s < gs; s++) {
          for (let j = 0; j < TN; j++) S.push(`${ind}let bv${g + s}_${j} = B[(k + ${g + s}u) * N + b${j}];`);
        }
        bval = (s, j) => `bv${g + s}_${j}`;
      } else if (vB) {
        for (let j = 0; j < TN; j++) S.push(`${ind}let bv${g}_${j} = B[b${j} + (k + ${g}u) / 4u];`);
        bval = (s, j) => `bv${g}_${j}[${s}]`;
      } else {
        for (let s = 0; s < gs; s++) {
          for (let j = 0; j < TN; j++) S.push(`${ind}let bv${g + s}_${j} = B[b${j} + k + ${g + s}u];`);
        }
        bval = (s, j) => `bv${g + s}_${j}`;
      }
      for (let i = 0; i < TM; i++) {
        for (let j = 0; j < TN; j++) {
          for (let s = 0; s < gs; s++) {
            S.push(`${ind}c${i}_${j} = fma(${aval(i, s)}, ${bval(s, j)}, c${i}_${j});`);
          }
        }
      }
    }
    return S;
  };
  L.push(
    `  var k = 0u;`,
    `  loop {`,
    `    if (k + ${KU}u > K) { break; }`,
    ...step(KU, "    "),
    `    k = k + ${KU}u;`,
    `  }`,
  );
  const tail = kvec ? 4 : 1;
  if (KU > tail) {
    L.push(
      `  loop {`,
      `    if (k + ${tail - 1}u >= K) { break; }`,
      ...step(tail, "    "),
      `    k = k + ${tail}u;`,
      `  }`,
    );
  }
  const cBase = `p.cOff + batch * p.sc`;
  if (v.bias) {
    for (let j = 0; j < TN; j++) L.push(`  let bias${j} = bias[p.biasOff + min(col0 + ${j}u, N - 1u)];`);
  }
  const val = (i: number, j: number) => ACT_WGSL[v.act](v.bias ? `c${i}_${j} + bias${j}` : `c${i}_${j}`);
  for (let i = 0; i < TM; i++) {
    L.push(`  if (row0 + ${i}u < M) {`, `    let r = ${cBase} + (row0 + ${i}u) * p.ldc + col0;`);
    if (v.vecC) {
      // C as vec4s: N, ldc, the offsets and col0 are multiples of 4, so a group is all in or all out.
      for (let j = 0; j < TN; j += 4) {
        const vv = `vec4f(${[0, 1, 2, 3].map((d) => val(i, j + d)).join(", ")})`;
        L.push(
          `    if (col0 + ${j}u < N) { let q = (r + ${j}u) / 4u; let cv = ${vv}; ` +
            `C[q] = select(cv, C[q] + cv, p.acc == 1u); }`,
        );
      }
    } else {
      for (let j = 0; j < TN; j++) {
        L.push(
          `    if (col0 + ${j}u < N) { C[r + ${j}u] = select(${val(i, j)}, C[r + ${j}u] + ${
            val(i, j)
          }, p.acc == 1u); }`,
        );
      }
    }
    L.push(`  }`);
  }
  L.push(`}`);
  return L.join("\n");
}

// ---------------------------------------------------------------- tiled kernel

// Workgroup tile BM × BN, K step BK; A and B tiles staged in workgroup memory (k-major, as vec4 so that an
// invocation reads its TM rows and TN columns of one k in TM/4 + TN/4 loads), zero-filled outside. Each
// invocation owns TM consecutive rows and TN consecutive columns of C, accumulated in scalar registers
// written out: no function-scope arrays, which a driver may keep in local memory (the array version took 6.4 ms
// of GPU time for 1024³ on an H200, where tfjs-webgpu's kernel takes 0.4 ms). The summation order over k is
// unchanged (k0 ascending, kk ascending), so every variant gives the same bits as before.
function genTiled(c: TiledConfig, v: MatmulParams): string {
  const { tm: TM, tn: TN, wx: WX, wy: WY, bk: BK } = c;
  const BM = WY * TM, BN = WX * TN, NT = WX * WY;
  const seq = (n: number) => Array.from({ length: n }, (_, i) => i);
  const each2 = (f: (i: number, j: number) => string) =>
    seq(TM).flatMap((i) => seq(TN).map((j) => f(i, j))).join("\n");
  const val = (i: number, j: number) =>
    ACT_WGSL[v.act](v.bias ? `c${i}_${j} + bias[p.biasOff + gn]` : `c${i}_${j}`);
  // f16 tiles: each staged value rounded to nearest f16 (exact conversion), read back widened to f32.
  const T = c.f16 ? "f16" : "f32";
  const stage = (x: string) => c.f16 ? `f16(${f16Round(x)})` : x;
  const tile = (x: string) => c.f16 ? `vec4f(${x})` : x;
  return wgsl`
var<workgroup> As: array<vec4<${T}>, ${(BK * BM) / 4}>; // [BK][BM]
var<workgroup> Bs: array<vec4<${T}>, ${(BK * BN) / 4}>; // [BK][BN]
@compute @workgroup_size(${WX}, ${WY}, 1)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u,
        @builtin(local_invocation_index) li: u32) {
  let M = p.M; let N = p.N; let K = p.K;
  let batch = wid.z;
  let aBase = batch * p.sa;
  let bBase = batch * p.sb;
  let m0 = wid.y * ${BM}u;
  let n0 = wid.x * ${BN}u;
${each2((i, j) => `  var c${i}_${j} = 0.0;`)}
  for (var k0 = 0u; k0 < K; k0 += ${BK}u) {
    for (var e = li; e < ${BM * BK}u; e += ${NT}u) {
      let r = e / ${BK}u; let kk = e % ${BK}u;
      let gm = m0 + r; let gk = k0 + kk;
      var x = 0.0;
      if (gm < M && gk < K) { x = A[aBase + gm * p.lda + p.aOff + gk]; }
      let s = kk * ${BM}u + r;
      As[s / 4u][s % 4u] = ${stage("x")};
    }
    for (var e = li; e < ${BN * BK}u; e += ${NT}u) {
#if ${v.transB}
      let cc = e / ${BK}u; let kk = e % ${BK}u;
      let gn = n0 + cc; let gk = k0 + kk;
      var x = 0.0;
      if (gn < N && gk < K) { x = B[bBase + gn * K + gk]; }
#else
      let kk = e / ${BN}u; let cc = e % ${BN}u;
      let gn = n0 + cc; let gk = k0 + kk;
      var x = 0.0;
      if (gn < N && gk < K) { x = B[bBase + gk * N + gn]; }
#endif
      let s = kk * ${BN}u + cc;
      Bs[s / 4u][s % 4u] = ${stage("x")};
    }
    workgroupBarrier();
    for (var kk = 0u; kk < ${BK}u; kk++) {
${
    seq(TM / 4).map((q) => `      let a${q} = ${tile(`As[kk * ${BM / 4}u + lid.y * ${TM / 4}u + ${q}u]`)};`)
      .join("\n")
  }
${
    seq(TN / 4).map((q) => `      let b${q} = ${tile(`Bs[kk * ${BN / 4}u + lid.x * ${TN / 4}u + ${q}u]`)};`)
      .join("\n")
  }
${each2((i, j) => `      c${i}_${j} = fma(a${i >> 2}[${i & 3}], b${j >> 2}[${j & 3}], c${i}_${j});`)}
    }
    workgroupBarrier();
  }
${
    seq(TM).map((i) =>
      `  {
    let gm = m0 + lid.y * ${TM}u + ${i}u;
    if (gm < M) {
${
        seq(TN).map((j) =>
          `      {
        let gn = n0 + lid.x * ${TN}u + ${j}u;
        if (gn < N) {
          let ci = p.cOff + batch * p.sc + gm * p.ldc + gn;
          C[ci] = select(${val(i, j)}, C[ci] + ${val(i, j)}, p.acc == 1u);
        }
      }`
        ).join("\n")
      }
    }
  }`
    ).join("\n")
  }
}`;
}

// ---------------------------------------------------------------- variants and the kernel choice

/** Square register-block sizes that have a kernel (TM = TN). */
const REG_TILES = [8, 16, 32] as const;
/**
 * Skinny register blocks TM × TN for products with few rows (a linear layer at a small batch: 2 × 2048 ·
 * 2048 × 19 699): a square block would compute mostly clamped rows there.
 */
const SKINNY_M = [1, 2, 4] as const, SKINNY_N = [32, 64] as const;
const isSkinny = (tm: number, tn: number) =>
  (SKINNY_M as readonly number[]).includes(tm) && (SKINNY_N as readonly number[]).includes(tn);
/** The workgroup-memory tiled kernel: 64 × 64 tiles, 4 × 4 per invocation, 16 × 16 invocations, K step 16. */
const TILED: TiledConfig = { kind: "tiled", tm: 4, tn: 4, wx: 16, wy: 16, bk: 16 };
/** Its large-tile sibling for big products: 128 × 128 tiles, 8 × 8 per invocation, K step 8. */
const TILED_128: TiledConfig = { kind: "tiled", tm: 8, tn: 8, wx: 16, wy: 16, bk: 8 };
const TILED_CONFIGS = [TILED, TILED_128];
/** The tiled kernels with f16 tiles (reduced precision: never a tuning candidate). */
const TILED_F16_CONFIGS: TiledConfig[] = TILED_CONFIGS.map((c) => ({ ...c, f16: true }));

/**
 * The variant id of a configuration: `reg/<TM>x<TN>/<lanes>`, `tex/<TM>x<TN>/<lanes>` or `tiled/<BM>x<BN>`
 * (`tiled/<BM>x<BN>/f16` with f16 tiles).
 *
 * @example
 * ```ts
 * matmulVariantId({ kind: "reg", tm: 16, tn: 16, wg: 8, lanes: "cols" }); // "reg/16x16/cols"
 * ```
 */
export function matmulVariantId(c: MatmulConfig): string {
  if (c.kind === "tex") return `tex/${c.tm}x${c.tn}/${c.lanes}`;
  if (c.kind === "reg") return `reg/${c.tm}x${c.tn}/${c.lanes}`;
  return `tiled/${c.wy * c.tm}x${c.wx * c.tn}${c.f16 ? "/f16" : ""}`;
}

// Lanes along the dimension that pads less: WG invocations × t rows ("rows") or × t columns ("cols").
// The `tex` block of the built-in choice for an m × n C (see builtinKernel).
function texBlocks(m: number, n: number, wg: number): TexConfig {
  let best: TexConfig | undefined, cost = Infinity;
  for (const t of [32, 16]) {
    for (const lanes of ["cols", "rows"] as const) {
      const padded = paddedOutputs(m, n, t, lanes, wg);
      const c = t === 32 ? padded / 1.5 : padded;
      if (c < cost) [best, cost] = [{ kind: "tex", tm: t, tn: t, wg, lanes }, c];
    }
  }
  return best!;
}

// Outputs an m × n product computes with t × t blocks, wg invocations a workgroup along `lanes`.
function paddedOutputs(m: number, n: number, t: number, lanes: "rows" | "cols", wg: number): number {
  const wm = lanes === "rows" ? wg * t : t, wn = lanes === "cols" ? wg * t : t;
  return Math.ceil(m / wm) * wm * Math.ceil(n / wn) * wn;
}

function lanesFor(m: number, n: number, t: number, wg: number): RegConfig["lanes"] {
  return paddedOutputs(m, n, t, "cols", wg) < paddedOutputs(m, n, t, "rows", wg) ? "cols" : "rows";
}

/** Products of at least this many FLOPs may take the wide texture block (its ~13 s compile pays there). */
const WIDE_TEX_FLOPS = 2 ** 30;

/**
 * Whether {@linkcode TEX_WIDE} is a tuning candidate: on software adapters (on a GPU a 32 × 64 block per
 * invocation would be 2 048 registers), for B untransposed, products of ≥ 2³⁰ FLOPs, and C at least one
 * workgroup's 32 × 512 block.
 */
function wideTexCandidate(engine: Engine, m: number, n: number, k: number, transposeB: boolean): boolean {
  return engine.adapterInfo.software && !transposeB && 2 * m * n * k >= WIDE_TEX_FLOPS &&
    m >= TEX_WIDE.tm && n >= TEX_WIDE.tn * blockWorkgroup(engine);
}

// The configuration of a variant id (lanes: as given, else for an m × n product) with workgroups of `wg`
// invocations (register and texture blocks), or a message why not.
function parseVariant(id: string, m: number, n: number, wg: number): MatmulConfig | string {
  const reg = /^reg\/(\d+)x(\d+)(?:\/(rows|cols))?$/.exec(id);
  if (reg) {
    const tm = Number(reg[1]), tn = Number(reg[2]);
    if (!(tm === tn && (REG_TILES as readonly number[]).includes(tm)) && !isSkinny(tm, tn)) {
      return `register blocks are ${REG_TILES.map((t) => `${t}x${t}`).join(", ")} and ` +
        `${SKINNY_M.join("|")}x${SKINNY_N.join("|")}`;
    }
    const lanes = (reg[3] as RegConfig["lanes"] | undefined) ?? lanesFor(m, n, tm, wg);
    return { kind: "reg", tm, tn, wg, lanes };
  }
  const tex = /^tex\/(\d+)x(\d+)(?:\/(rows|cols))?$/.exec(id);
  if (tex) {
    const tm = Number(tex[1]), tn = Number(tex[2]);
    if (tm === TEX_WIDE.tm && tn === TEX_WIDE.tn) {
      if (tex[3] && tex[3] !== TEX_WIDE.lanes) {
        return `the ${tm}x${tn} texture block has lanes along N (cols)`;
      }
      return { kind: "tex", ...TEX_WIDE, wg };
    }
    if (!(tm === tn && (TEX_TILES as readonly number[]).includes(tm)) && !isSkinny(tm, tn)) {
      return `texture blocks are ${TEX_TILES.map((t) => `${t}x${t}`).join(" and ")}, ` +
        `${TEX_WIDE.tm}x${TEX_WIDE.tn}/cols and ${SKINNY_M.join("|")}x${SKINNY_N.join("|")}`;
    }
    return {
      kind: "tex",
      tm,
      tn,
      wg,
      lanes: (tex[3] as TexConfig["lanes"] | undefined) ?? lanesFor(m, n, tm, wg),
    };
  }
  const tiled = [...TILED_CONFIGS, ...TILED_F16_CONFIGS].find((c) => matmulVariantId(c) === id);
  if (tiled) return tiled;
  return "the variants are reg/<t>x<t>[/rows|/cols] (t = 8, 16, 32), reg/<1|2|4>x<32|64>[/rows|/cols], " +
    "tex/<t>x<t>[/rows|/cols] (t = 16, 32), tex/32x64[/cols], tex/<1|2|4>x<32|64>[/rows|/cols], " +
    "tiled/64x64[/f16] and tiled/128x128[/f16]";
}

// Why `c` cannot run on `engine` (workgroup size and memory of the tiled kernel), or null.
function cannotRun(engine: Engine, c: MatmulConfig): string | null {
  if (c.kind !== "tiled") return null;
  if (c.f16 && !hasF16(engine)) return NO_F16;
  const invocations = c.wx * c.wy, bytes = (c.f16 ? 2 : 4) * c.bk * (c.wy * c.tm + c.wx * c.tn);
  const l = engine.limits;
  if (
    l.maxComputeInvocationsPerWorkgroup < invocations || l.maxComputeWorkgroupSizeX < c.wx ||
    l.maxComputeWorkgroupSizeY < c.wy || l.maxComputeWorkgroupStorageSize < bytes
  ) {
    return `it needs ${c.wx}×${c.wy} invocations and ${bytes} bytes of workgroup memory per workgroup; ` +
      `the adapter allows ${l.maxComputeInvocationsPerWorkgroup} invocations and ` +
      `${l.maxComputeWorkgroupStorageSize} bytes`;
  }
  return null;
}

/**
 * The configuration of variant `id` for an m × n product on `engine`: `reg/<t>x<t>` (t = 8, 16, 32; lanes
 * along the dimension that pads less), `reg/<t>x<t>/rows` or `/cols`, `tiled/64x64` or `tiled/128x128` (and
 * their `/f16` forms, see {@linkcode matmulReducedPrecisionVariants}), the `tex` blocks. Throws a
 * `RangeError` naming the variant when it is unknown or cannot run on this adapter.
 *
 * @example
 * ```ts
 * const cfg = matmulVariant(engine, "reg/16x16", 300, 260); // { kind: "reg", tm: 16, …, lanes: "rows" }
 * ```
 */
export function matmulVariant(engine: Engine, id: string, m: number, n: number): MatmulConfig {
  const c = parseVariant(id, m, n, blockWorkgroup(engine));
  if (typeof c === "string") throw new RangeError(`Cannot use matmul variant "${id}": ${c}`);
  const why = cannotRun(engine, c);
  if (why) throw new RangeError(`Cannot use matmul variant "${id}" on this adapter: ${why}`);
  return c;
}

/**
 * The shape class of an m × n × k product in the tuning table: each dimension rounded up to a power of two,
 * e.g. `m4096 n64 k1024`.
 *
 * @example
 * ```ts
 * matmulShapeClass(3136, 64, 576); // "m4096 n64 k1024"
 * ```
 */
export function matmulShapeClass(m: number, n: number, k: number): string {
  const p2 = (x: number) => (x <= 1 ? x : 2 ** Math.ceil(Math.log2(x)));
  return `m${p2(m)} n${p2(n)} k${p2(k)}`;
}

/**
 * The variant ids that can compute an m × n × k product on `engine` (what `he2gene tune` times): every
 * register block with both lane mappings, except blocks at least twice the size of C in both dimensions
 * (8×8 always), the texture-operand blocks (lanes along the dimension that pads less) where the operands fit
 * the adapter's texture size (B stored n × k with `transposeB`), and the tiled kernels where the adapter's
 * limits allow them (128×128 only where C holds a whole 128 × 128 tile). Empty when no kernel runs (an
 * empty C, or K = 0).
 *
 * @example
 * ```ts
 * for (const id of matmulCandidates(engine, 3136, 64, 576)) withVariant("matmul", id, () => time(id));
 * ```
 */
export function matmulCandidates(
  engine: Engine,
  m: number,
  n: number,
  k: number,
  transposeB = false,
): string[] {
  if (m === 0 || n === 0 || k === 0) return [];
  const out: string[] = [], wg = blockWorkgroup(engine);
  for (const t of REG_TILES) {
    if (t > REG_TILES[0] && t >= 2 * Math.max(m, n)) continue;
    for (const lanes of ["rows", "cols"] as const) {
      out.push(matmulVariantId({ kind: "reg", tm: t, tn: t, wg, lanes }));
    }
  }
  if (m <= SKINNY_M[SKINNY_M.length - 1]) {
    const tm = SKINNY_M.find((t) => t >= m)!;
    for (const tn of SKINNY_N) out.push(matmulVariantId({ kind: "reg", tm, tn, wg, lanes: "cols" }));
  }
  if (!texCannot(engine, m, n, k, transposeB)) {
    for (const t of TEX_TILES) {
      if (t > TEX_TILES[0] && t >= 2 * Math.max(m, n)) continue;
      out.push(matmulVariantId({ kind: "tex", tm: t, tn: t, wg, lanes: lanesFor(m, n, t, wg) }));
    }
    if (wideTexCandidate(engine, m, n, k, transposeB)) {
      out.push(matmulVariantId({ kind: "tex", ...TEX_WIDE, wg }));
    }
    if (m <= SKINNY_M[SKINNY_M.length - 1]) {
      const tm = SKINNY_M.find((t) => t >= m)!;
      for (const tn of SKINNY_N) {
        out.push(matmulVariantId({ kind: "tex", tm, tn, wg, lanes: "cols" }));
      }
    }
  }
  for (const c of TILED_CONFIGS) {
    // 128 × 128 tiles only where C has at least one whole tile (else 64 × 64 pads less).
    if (c !== TILED && (m < c.wy * c.tm || n < c.wx * c.tn)) continue;
    if (!cannotRun(engine, c)) out.push(matmulVariantId(c));
  }
  return out;
}

/**
 * The reduced-precision variants that can run on `engine`: the tiled kernels with f16 tiles (`tiled/64x64/f16`,
 * `tiled/128x128/f16`), where the device has `shader-f16` and room for their workgroup. They compute
 * op(A)·op(B) of A and B rounded to f16 (nearest, ties to even; f32 FMAs and C), so they differ from the
 * float32 product by ~2⁻¹¹ of each operand: not what PyTorch computes in float32. `he2gene tune` never
 * offers them ({@linkcode matmulCandidates} leaves them out); they run when forced (`withVariant`) or named in a
 * tuning table by hand, and the self-test checks them against the CPU product of the rounded operands.
 *
 * @example
 * ```ts
 * for (const id of matmulReducedPrecisionVariants(engine)) withVariant("matmul", id, () => time(id));
 * ```
 */
export function matmulReducedPrecisionVariants(engine: Engine): string[] {
  return TILED_F16_CONFIGS.filter((c) => !cannotRun(engine, c)).map(matmulVariantId);
}

/** Whether matmul variant `id` is a reduced-precision one ({@linkcode matmulReducedPrecisionVariants}). */
export function isReducedPrecisionMatmul(id: string): boolean {
  return TILED_F16_CONFIGS.some((c) => matmulVariantId(c) === id);
}

/**
 * The kernel for an m × n × k product on `engine`: the tuning table's variant for
 * {@linkcode matmulShapeClass} (or a forced one, `withVariant("matmul", id, fn)`), else the built-in
 * table. Software adapters (llvmpipe): A and B through textures (`tex`, kernels/matmul_tex.ts) from 2²²
 * FLOPs (all `batch` products together), 32×32 or 16×16 blocks with lanes along M or N, whichever pads C
 * least (first compile ~3–8 s on llvmpipe, cached by Mesa afterwards) — where the operands fit the adapter's
 * texture size (B stored n × k with `transposeB`; a taller B in bands, see matmul_tex.ts `texLayout`), else
 * register blocks from storage buffers (32×32 from 2²⁸ FLOPs, 16×16 from 2²²); 8×8 register blocks for
 * small products; for ≤ 4 rows 1, 2 or 4 × 32 blocks with lanes along N (through textures 2 × 32 with
 * `transposeB`, 2 × 64 without).
 * Hardware adapters: 64×64 workgroup tiles (register blocks as on llvmpipe behind OpenGL). A variant that is
 * unknown or cannot run throws a `RangeError` naming it. A table's `tex/32x64/cols` (the wide texture block)
 * applies only to products it is a candidate for (single, B untransposed, see `wideTexCandidate`); forced,
 * to any.
 *
 * @example
 * ```ts
 * const cfg = chooseMatmulKernel(engine, 1024, 1024, 1024); // { kind: "tex", tm: 32, lanes: "cols", … } on llvmpipe
 * ```
 */
export function chooseMatmulKernel(
  engine: Engine,
  m: number,
  n: number,
  k: number,
  transposeB = false,
  batch = 1,
): MatmulConfig {
  const shapeClass = matmulShapeClass(m, n, k);
  const chosen = chosenVariant(engine, "matmul", shapeClass);
  if (chosen !== undefined) {
    const c = matmulVariant(engine, chosen, m, n);
    // A table's wide texture block applies where it was a candidate: its kernels for Bᵀ or batched products
    // (not what tune times) take 35–43 s to compile on llvmpipe. Forced, it runs anywhere.
    const wide = c.kind === "tex" && c.tm === TEX_WIDE.tm && c.tn === TEX_WIDE.tn;
    if (!wide || forcedVariant("matmul") === chosen) return c;
    if (batch === 1 && wideTexCandidate(engine, m, n, k, transposeB)) return c;
  }
  return builtinKernel(engine, m, n, k, !texCannot(engine, m, n, k, transposeB), transposeB, batch);
}

/**
 * Whether products of this class read textures: a `tex` variant from the tuning table (or forced), or no
 * entry on a software adapter (where the built-in choice reads textures wherever they fit).
 */
function texturesChosen(engine: Engine, m: number, n: number, k: number): boolean {
  const chosen = chosenVariant(engine, "matmul", matmulShapeClass(m, n, k));
  return chosen === undefined ? engine.adapterInfo.software : chosen.startsWith("tex/");
}

// The built-in table; `textures`: whether the operands fit the adapter's texture size.
function builtinKernel(
  engine: Engine,
  m: number,
  n: number,
  k: number,
  textures: boolean,
  transposeB = false,
  batch = 1,
): MatmulConfig {
  // Hardware adapters: workgroup tiles, but not behind OpenGL, where each tiled kernel takes ~15 s to
  // compile (kernels/_wgsl.ts stagesTiles); `he2gene tune` may still pick them there.
  if (!engine.adapterInfo.software && stagesTiles(engine)) return TILED;
  const wg = blockWorkgroup(engine);
  // A few rows (a head at batch ≤ 4): a skinny block, lanes along N (twice as fast as 16×16 on llvmpipe
  // for 2 × 2048 · 2048 × 19 699 and its input gradient).
  const skinny = SKINNY_M.find((t) => t >= m);
  if (skinny !== undefined) {
    // Through textures 4–6× the register blocks' speed there (the weight's reads); a 2 × 64 block for the
    // input gradient (B untransposed), 2 × 32 for the forward.
    if (textures) return { kind: "tex", tm: skinny, tn: transposeB ? 32 : 64, wg, lanes: "cols" };
    return { kind: "reg", tm: skinny, tn: 32, wg, lanes: "cols" };
  }
  // The work of every product of a batch (Winograd's 36 at batch 2: 36 × 392 × 64 × 64 took 8 × 8 register
  // blocks from storage buffers as 3.2 MFLOP products).
  const flops = 2 * m * n * k * batch;
  // Through textures from 2²² FLOPs: 32 × 32 or 16 × 16 blocks, lanes along M or N, whichever computes the
  // fewest padded outputs, 32 × 32 blocks counted at 1/1.5 of theirs (they run ~1.5× the FLOP rate of
  // 16 × 16 on llvmpipe: one texel of k per loop step, texelsPerStep), lanes along N on a tie (1024³ runs
  // as fast either way). Winograd's 36 products at batch 8, median GPU ms of five interleaved (llvmpipe):
  // 1 568 × 64 × 64 16 × 16 rows 33.0 → 32 × 32 rows 25.0; 392 × 128 × 128 32 × 32 cols 45.6 → rows 26.5;
  // 32 × 512 × 512 16 × 16 cols 44.9 → 32 × 32 cols 28.3. Before, 32 × 32 cols wherever C had 64 rows and
  // 128 columns (ResNet-50's 1×1 convolutions: as fast as now), else 16 × 16.
  if (textures && flops >= 2 ** 22) return texBlocks(m, n, wg);
  // Register blocks (textures run 1.5–2× their GFLOP/s on llvmpipe from 256³ up: 12 544 × 576 · 576 × 64
  // 1.7×): 32 × 32 only where C is at least that big both ways (8 × 2048 · 2048 × 19 699 through textures:
  // 16 × 16 82 ms, 32 × 32 123 ms on llvmpipe).
  const t = flops >= 2 ** 28 && Math.min(m, n) >= 32 ? 32 : flops >= 2 ** 22 ? 16 : 8;
  return { kind: "reg", tm: t, tn: t, wg, lanes: lanesFor(m, n, t, wg) };
}

// One kernel per (configuration, layout, epilogue).
const matmulKernel = variants("matmul", (p: MatmulParams) => {
  const c = parseVariant(p.cfg, 0, 0, p.wg) as RegConfig | TiledConfig; // canonical reg/tiled ids only
  return {
    bindings: BINDINGS(p),
    uniforms: UNIFORMS,
    workgroupSize: c.kind === "reg" ? [c.wg] : [c.wx, c.wy],
    f16: c.kind === "tiled" && c.f16,
    body: c.kind === "reg" ? genReg(c, p) : genTiled(c, p),
  };
});

function workgroups(c: MatmulConfig, m: number, n: number, batch: number): [number, number, number] {
  if (c.kind === "tiled") return [Math.ceil(n / (c.wx * c.tn)), Math.ceil(m / (c.wy * c.tm)), batch];
  if (c.lanes === "rows") return [Math.ceil(n / c.tn), Math.ceil(m / (c.tm * c.wg)), batch];
  return [Math.ceil(n / (c.tn * c.wg)), Math.ceil(m / c.tm), batch];
}

// ---------------------------------------------------------------- launcher (no autograd)

function dims(op: string, a: Tensor, b: Tensor, o: MatmulOptions) {
  if (!(a instanceof Tensor) || !(b instanceof Tensor)) {
    throw new TypeError(`Cannot ${op}: operands must be Tensors`);
  }
  if (a.rank < 2 || b.rank < 2) {
    throw new TypeError(`Cannot ${op} tensors of shapes [${a.shape}] and [${b.shape}]: both need rank ≥ 2`);
  }
  const [ar, ac] = a.shape.slice(-2), [br, bc] = b.shape.slice(-2);
  const [m, ka] = o.transposeA ? [ac, ar] : [ar, ac];
  const [kb, n] = o.transposeB ? [bc, br] : [br, bc];
  if (ka !== kb) {
    throw new RangeError(
      `Cannot ${op} tensors of shapes [${a.shape}] and [${b.shape}]` +
        `${o.transposeA ? " (A transposed)" : ""}${
          o.transposeB ? " (B transposed)" : ""
        }: inner dimensions ${ka} ≠ ${kb}`,
    );
  }
  const ba = a.shape.slice(0, -2), bb = b.shape.slice(0, -2);
  if (ba.length && bb.length && (ba.length !== bb.length || ba.some((d, i) => d !== bb[i]))) {
    throw new RangeError(
      `Cannot ${op} tensors of shapes [${a.shape}] and [${b.shape}]: batch dimensions differ (broadcast only a 2-D operand)`,
    );
  }
  if (o.bias && (o.bias.rank !== 1 || o.bias.shape[0] !== n)) {
    throw new RangeError(`Cannot ${op}: bias of shape [${o.bias.shape}] does not match N = ${n}`);
  }
  const batchShape = ba.length ? ba : bb;
  return { m, n, k: ka, batchShape, batch: shapeSize(batchShape) };
}

// y[b, j, i] = x[b, i, j]; a 16×16 tile through workgroup memory keeps both sides coalesced.
// x: [batch, r, c]; y: [batch, c, r]
const transposeKernel = single("transpose", () => ({
  bindings: [{ name: "x", access: "read" }, { name: "y", access: "read_write" }],
  uniforms: { r: "u32", c: "u32" },
  workgroupSize: [16, 16],
  body: `
var<workgroup> tile: array<f32, 272>; // 16 × 17 (padded)
@compute @workgroup_size(16, 16) fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) l: vec3u) {
  let base = wid.z * p.r * p.c;
  let i = wid.y * 16u + l.y;
  let j = wid.x * 16u + l.x;
  if (i < p.r && j < p.c) { tile[l.y * 17u + l.x] = x[base + i * p.c + j]; }
  workgroupBarrier();
  let oi = wid.x * 16u + l.y; // row of y = column of x
  let oj = wid.y * 16u + l.x;
  if (oi < p.c && oj < p.r) { y[base + oi * p.r + oj] = tile[l.x * 17u + l.y]; }
}`,
}));

// The same with x read from a flat texture (engine/flat.ts) and no workgroup memory: one invocation per
// vec4 of y (4 values of one y row, x's column), R a multiple of 4. y: [batch, c, r] as vec4.
const transposeTexKernel = single("transpose_tex", () => ({
  bindings: [
    { name: "X", access: "read", texture: "sampled" },
    { name: "y", access: "read_write", type: "vec4<f32>" },
  ] as const,
  uniforms: { r: "u32", c: "u32" },
  workgroupSize: [64],
  body: `
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3u) {
  let q = g.x;
  let oi = g.y;
  if (4u * q >= p.r || oi >= p.c) { return; }
  let base = g.z * p.r * p.c;
  var v = vec4f(0.0);
  for (var s = 0u; s < 4u; s++) {
    let i = base + (4u * q + s) * p.c + oi;
    v[s] = ${flatLoad("X", "i")};
  }
  y[(base + oi * p.r) / 4u + q] = v;
}`,
}));

/** Batched transpose of the last two dimensions (materialised). */
export function transpose(x: Tensor): Tensor {
  if (x.rank < 2) throw new TypeError(`Cannot transpose a tensor of shape [${x.shape}]: rank < 2`);
  const e = x.engine;
  const [r, c] = x.shape.slice(-2);
  const batch = shapeSize(x.shape.slice(0, -2));
  const y = e.empty([...x.shape.slice(0, -2), c, r], "transpose");
  if (y.size === 0) return y;
  if (x.bytes > e.maxBinding) {
    throw new RangeError(`Cannot transpose [${x.shape}]: larger than one storage binding`);
  }
  const max = e.limits.maxComputeWorkgroupsPerDimension;
  const tex = textureReads(e, "transpose", [x], r % 4 === 0 && c <= max && batch <= max);
  if (tex) {
    e.run(transposeTexKernel(), {
      bindings: [tex[0], y],
      uniforms: { r, c },
      workgroups: [Math.ceil(r / 4 / 64), c, batch],
      info: `[${x.shape}] textures`,
    });
    return y;
  }
  e.run(transposeKernel(), {
    bindings: [x, y],
    uniforms: { r, c },
    workgroups: [Math.ceil(c / 16), Math.ceil(r / 16), batch],
    info: `[${x.shape}]`,
  });
  return y;
}

/**
 * Products per `tex` launch of a batch of `nb`: all of them where the batched operands' slabs stacked along
 * the textures' rows fit the adapter's texture size, else as many as fit, spread evenly over the launches
 * ({@linkcode texLayout} then says whether they fit).
 */
function texBatches(
  e: Engine,
  m: number,
  n: number,
  k: number,
  transB: boolean,
  nb: number,
  aBatched: boolean,
  bBatched: boolean,
): number {
  const max = e.limits.maxTextureDimension2D;
  const bRows = transB ? n : Math.ceil(k / KSTEP) * KSTEP;
  let per = nb;
  if (aBatched) per = Math.min(per, Math.floor(max / m));
  if (bBatched) per = Math.min(per, Math.floor(max / bRows));
  // Not even one product fits: all of them, so that texLayout refuses the call (B's bands, which hold one
  // operand taller than a texture, are for unbatched products only).
  if (per >= nb || per < 1) return nb;
  const launches = Math.ceil(nb / per);
  return Math.ceil(nb / launches);
}

function alignedBlock(e: Engine, rowElems: number[], maxRows: number): number {
  // Rows per block so that a block of every operand fits one binding and block offsets stay aligned.
  let step = 1;
  while (rowElems.some((r) => (step * r * 4) % e.offsetAlign !== 0)) step *= 2;
  const fit = Math.floor(e.maxBinding / 4 / Math.max(...rowElems, 1));
  const rows = Math.max(step, Math.floor(fit / step) * step);
  return Math.min(rows, maxRows);
}

/**
 * `act(op(A)·op(B) + bias)` without recording for autograd (the differentiable form is `matmul` in
 * `ops/matmul.ts`): A (…, M, K), B (…, K, N) (either transposed), batch dimensions equal or one operand 2-D.
 *
 * @example
 * ```ts
 * const y = matmulForward(x, w, { transposeB: true, bias: b, activation: "relu" });
 * ```
 */
export function matmulForward(a: Tensor, b: Tensor, o: MatmulOptions = {}): Tensor {
  const e = a.engine;
  const { m, n, k, batchShape, batch } = dims("matmul", a, b, o);
  if (o.transposeA) {
    // A short K (a weight gradient at a small batch) where the choice is a `tex` kernel: Aᵀ·B straight from
    // flat textures, no transpose (19 699 × 2 · 2 × 2048 on llvmpipe: 270 → ~70 ms).
    if (
      a.rank === 2 && b.rank === 2 && !o.transposeB && !o.bias && (o.activation ?? "none") === "none" &&
      k <= OUTER_MAX_K && texturesChosen(e, m, n, k)
    ) {
      const out = e.empty([m, n], "matmul");
      if (matmulOuterTex(e, a, b, out)) return out;
      out.dispose();
    }
    const at = transpose(a);
    try {
      return matmulForward(at, b, { ...o, transposeA: false });
    } finally {
      at.dispose();
    }
  }
  const aBatched = a.rank > 2, bBatched = b.rank > 2;
  // A batched against a 2-D B: fold the batch into M (one large GEMM).
  const fold = aBatched && !bBatched;
  const M = fold ? batch * m : m;
  const nb = fold ? 1 : batch;
  const out = e.empty([...batchShape, m, n], "matmul");
  if (out.size === 0) return out;
  if (k === 0) {
    out.dispose();
    const z = e.zeros([...batchShape, m, n]);
    return o.bias || (o.activation && o.activation !== "none") ? epilogueOnly(z, o) : z;
  }
  const tB = !!o.transposeB;
  const big = (t: Tensor) => t.bytes > e.maxBinding;
  // Blocks: rows of A/C (unbatched or folded), rows of a transposed B (= columns of C), and for a large
  // untransposed B its rows (= a K range: C accumulates over the blocks, the epilogue runs once at the end).
  const splitM = nb === 1 && (big(a) || big(out));
  const splitN = nb === 1 && tB && big(b);
  const splitK = nb === 1 && !tB && big(b);
  if ((big(a) || big(out)) && !splitM || big(b) && !(splitN || splitK)) {
    throw new RangeError(
      `Cannot matmul tensors of shapes [${a.shape}] and [${b.shape}]: an operand exceeds one storage binding ` +
        `(${e.maxBinding} bytes) in a layout that cannot be split; use a smaller batch size`,
    );
  }
  const nBlock = splitN ? alignedBlock(e, [k], n) : n;
  let cfg = chooseMatmulKernel(e, M, n, k, tB, nb);
  if (cfg.kind === "tex") {
    // Textures: operands that fit a binding (the pack kernel reads them whole) and, batches stacked along
    // the rows, the adapter's texture size; any other call takes the built-in kernel.
    // A B over one binding (a large head's weight) too, where copies alone fill its texture.
    const nbA = aBatched && !fold ? nb : 1, nbB = bBatched ? nb : 1;
    // Products per launch: all of them, or as many as the textures hold stacked (Winograd's 36 products).
    const per = texBatches(e, M, n, k, tB, nb, nbA > 1, nbB > 1);
    const l = texLayout(e, M, n, k, tB, nbA > 1 ? per : 1, nbB > 1 ? per : 1);
    if (!splitM && typeof l !== "string" && (l.copiesB || !splitN && !splitK)) {
      for (let z0 = 0; z0 < nb; z0 += per) {
        const g = Math.min(per, nb - z0);
        matmulTex(e, cfg, a, b, out, o.bias ?? e.placeholder(), {
          m: M,
          n,
          k,
          transB: tB,
          hasBias: !!o.bias,
          act: o.activation ?? "none",
          info: `[${a.shape}]x[${b.shape}]${tB ? "ᵀ" : ""}${per < nb ? ` products ${z0}+${g}` : ""}`,
          nb: g,
          nbA: nbA > 1 ? g : 1,
          nbB: nbB > 1 ? g : 1,
          at: { a: nbA > 1 ? z0 * M * k : 0, b: nbB > 1 ? z0 * k * n : 0, c: z0 * M * n },
        });
      }
      return out;
    }
    cfg = builtinKernel(e, M, n, k, false, tB, nb);
  }
  if (cfg.kind === "tex") throw new Error("unreachable: the built-in matmul table has no tex kernel");
  const reg = cfg.kind === "reg";
  const epilogue = !splitK; // with split-K, bias and activation are applied after the last block
  const kernel = matmulKernel({
    cfg: matmulVariantId(cfg),
    wg: cfg.kind === "reg" ? cfg.wg : 0,
    vecA: reg && k % 4 === 0,
    vecB: reg && (tB ? k % 4 === 0 : n % 4 === 0),
    vecC: reg && n % 4 === 0 && nBlock % 4 === 0,
    transB: tB,
    bias: epilogue && !!o.bias,
    act: epilogue ? o.activation ?? "none" : "none",
  });
  const sa = aBatched && !fold ? m * k : 0;
  const sb = bBatched ? k * n : 0;
  const sc = fold ? 0 : m * n;
  const mBlock = splitM ? alignedBlock(e, [k, n], M) : M;
  let kBlock = k;
  if (splitK) {
    kBlock = alignedBlock(e, [n], k);
    if (kBlock >= 8) kBlock -= kBlock % 4; // keep vec4 reads of A aligned
  }
  const biasT = o.bias ?? e.placeholder();
  for (let m0 = 0; m0 < M; m0 += mBlock) {
    const mc = Math.min(mBlock, M - m0);
    for (let n0 = 0; n0 < n; n0 += nBlock) {
      const nc = Math.min(nBlock, n - n0);
      for (let k0 = 0; k0 < k; k0 += kBlock) {
        const kc = Math.min(kBlock, k - k0);
        const aBind: Tensor | TensorRange = splitM ? { tensor: a, offset: m0 * k, size: mc * k } : a;
        const bBind: Tensor | TensorRange = splitN
          ? { tensor: b, offset: n0 * k, size: nc * k }
          : splitK
          ? { tensor: b, offset: k0 * n, size: kc * n }
          : b;
        const cBind: Tensor | TensorRange = splitM ? { tensor: out, offset: m0 * n, size: mc * n } : out;
        e.run(kernel, {
          bindings: [aBind, bBind, biasT, cBind],
          uniforms: {
            M: mc,
            N: nc,
            K: kc,
            ldc: n,
            sa,
            sb,
            sc,
            cOff: n0,
            biasOff: n0,
            lda: k,
            aOff: k0,
            acc: k0 > 0 ? 1 : 0,
          },
          workgroups: workgroups(cfg, mc, nc, nb),
          info:
            `[${a.shape}]${o.transposeA ? "ᵀ" : ""}x[${b.shape}]${
              tB ? "ᵀ" : ""
            } block m${m0}+${mc} n${n0}+${nc}` +
            (splitK ? ` k${k0}+${kc}` : ""),
        });
      }
    }
  }
  if (splitK && (o.bias || (o.activation && o.activation !== "none"))) return epilogueOnly(out, o);
  return out;
}

/**
 * Y[z] = act(W · X[z] + bias + residual[z]) with the bias per row of W (an output channel): a 1×1 stride-1
 * convolution's forward with its epilogue on NCHW tensors, W (M × K), X (nb × K × N), Y (nb × M × N), in one
 * `tex` kernel (no layout copies). Null where the chosen kernel for the product is not a `tex` one or the
 * operands do not fit its textures or one binding; the caller then takes its own path.
 */
export function matmulRowEpilogue(
  w: Tensor,
  x: Tensor,
  o: { bias?: Tensor; residual?: Tensor; relu: boolean },
): Tensor | null {
  const e = w.engine;
  if (w.rank !== 2 || x.rank !== 3 || x.shape[1] !== w.shape[1]) {
    throw new RangeError(
      `matmulRowEpilogue: W [${w.shape}] and X [${x.shape}] are not (M, K) and (nb, K, N)`,
    );
  }
  const [m, k] = w.shape, [nb, , n] = x.shape;
  if (o.bias && o.bias.size !== m) {
    throw new RangeError(`matmulRowEpilogue: bias [${o.bias.shape}] for ${m} rows`);
  }
  if (o.residual && o.residual.size !== nb * m * n) {
    throw new RangeError(`matmulRowEpilogue: residual [${o.residual.shape}] for an output of ${nb * m * n}`);
  }
  const cfg = chooseMatmulKernel(e, m, n, k, false, nb);
  if (cfg.kind !== "tex" || typeof texLayout(e, m, n, k, false, 1, nb) === "string") return null;
  if ([w, x, o.residual].some((t) => t && t.bytes > e.maxBinding) || nb * m * n * 4 > e.maxBinding) {
    return null;
  }
  if (o.residual && (o.residual.size % 4 !== 0 || !flatFits(e, o.residual.size))) return null;
  const out = e.empty([nb, m, n], "matmul");
  matmulTex(e, cfg, w, x, out, o.bias ?? e.placeholder(), {
    m,
    n,
    k,
    transB: false,
    hasBias: !!o.bias,
    rowBias: true,
    residual: o.residual,
    act: o.relu ? "relu" : "none",
    info: `[${w.shape}]x[${x.shape}] + row bias${o.residual ? " + residual" : ""}`,
    nb,
    nbA: 1,
    nbB: nb,
  });
  return out;
}

// K = 0: C = act(bias) (or act(0)).
function epilogueOnly(z: Tensor, o: MatmulOptions): Tensor {
  let y = z;
  if (o.bias) {
    y = binary("add", z, o.bias);
    z.dispose();
  }
  if (o.activation && o.activation !== "none") {
    const t = unary(o.activation, y);
    y.dispose();
    y = t;
  }
  return y;
}

// ---------------------------------------------------------------- CPU reference (float64)

/**
 * CPU reference of {@linkcode matmulForward}. Returns C and, for tolerance scaling, Σ_k |a_ik|·|b_kj|.
 */
export function matmulCpu(
  a: Float32Array,
  aShape: readonly number[],
  b: Float32Array,
  bShape: readonly number[],
  o: { transposeA?: boolean; transposeB?: boolean; bias?: Float32Array; activation?: Activation } = {},
): { data: Float32Array; shape: number[]; scale: Float64Array } {
  const [ar, ac] = aShape.slice(-2), [br, bc] = bShape.slice(-2);
  const [m, k] = o.transposeA ? [ac, ar] : [ar, ac];
  const n = o.transposeB ? br : bc;
  const batchShape = aShape.length > 2 ? aShape.slice(0, -2) : bShape.slice(0, -2);
  const batch = shapeSize(batchShape);
  const out = new Float32Array(batch * m * n);
  const scale = new Float64Array(batch * m * n);
  for (let t = 0; t < batch; t++) {
    const ao = aShape.length > 2 ? t * m * k : 0, bo = bShape.length > 2 ? t * k * n : 0;
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let s = 0, sc = 0;
        for (let p = 0; p < k; p++) {
          const av = a[ao + (o.transposeA ? p * m + i : i * k + p)];
          const bv = b[bo + (o.transposeB ? j * k + p : p * n + j)];
          s += av * bv;
          sc += Math.abs(av * bv);
        }
        if (o.bias) {
          s += o.bias[j];
          sc += Math.abs(o.bias[j]);
        }
        if (o.activation === "relu") s = Math.max(s, 0);
        if (o.activation === "sigmoid") s = 1 / (1 + Math.exp(-s));
        out[t * m * n + i * n + j] = s;
        scale[t * m * n + i * n + j] = sc;
      }
    }
  }
  return { data: out, shape: [...batchShape, m, n], scale };
}
