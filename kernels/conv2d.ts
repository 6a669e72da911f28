/**
 * 2-D convolution (NCHW, float32, groups 1, dilation 1, symmetric padding) as implicit GEMMs, with
 * PyTorch semantics (`torch.nn.functional.conv2d`): OH = ⌊(H + 2p − KH) / s⌋ + 1.
 *
 * - Forward: M = Cout, N = N·OH·OW, K = Cin·KH·KW. The im2col matrix is never materialised: each invocation
 *   computes a TM×TN register block (TM output channels × TN output positions) and gathers its inputs while
 *   loading, with the loop order (kh, kw) outer and ci inner so the bounds checks leave the inner loop.
 *   1×1 stride-1 unpadded convs run as a plain batched GEMM (`Y[n] = W · X[n]`, X[n] is Cin × H·W) with
 *   vec4 loads when H·W % 4 = 0. Fused epilogue: `+ bias[co]`, `+ residual`, ReLU (in that order).
 * - Backward for the input (a transposed convolution, M = Cin, N = N·H·W, K = Cout·KH·KW): invocations
 *   take TN input columns of one stride phase (iw ≡ r mod s) so only the taps kh ≡ (ih+p) mod s,
 *   kw ≡ (iw+p) mod s are visited — no wasted work at stride 2. 1×1 stride-1 uses the GEMM with Wᵀ.
 * - Backward for the weights: M = Cout, N = Cin (one (kh, kw) tap per workgroup row), K = N·OH·OW, split-K
 *   over the N·OH rows into partials [S, Cout, Cin, KH, KW], then summed by `reduce` over S. Inside a
 *   split the valid ow range is computed once per tap, so the inner loop has no bounds checks.
 * - Backward for the bias: `db = Σ_{n,h,w} dy`.
 * - Weights are first packed (one small dispatch) to (KH·KW, Cin, Cout⁺) for the forward and
 *   (KH·KW, Cout, Cin⁺) for the input gradient, zero-padded to the row tile, so every invocation reads its
 *   TM weights as aligned vec4 without bounds checks. Register tiles live in {@linkcode conv2dTiles}.
 *
 * The kernels above are the GPU ("tiled") path. Software adapters (llvmpipe) take the register-blocked
 * path instead (section "register-blocked path" below; `conv2dTiles.path` forces either): zero-padded
 * channels-last copies so that K is contiguous and a multiple of 4, T×T blocks per invocation read as vec4
 * (as in kernels/matmul.ts), the input gradient split into stride phases, the weight gradient split-K, and
 * 1×1 stride-1 convolutions through `matmulForward`. 3–5× faster there than the kernels above.
 *
 * Gradients: every backward output is a new tensor (overwrite); the tape sums (`+=`) the gradients of
 * tensors used twice. The fused epilogue is differentiable too (the ReLU mask is taken from the saved
 * output; the residual's gradient is the masked `dy`), so ResNet blocks can train with it as well as run
 * in no-grad inference.
 *
 * Tensors must fit one storage binding (128 MiB on llvmpipe); a larger one throws a RangeError from
 * `engine.run` (use a smaller batch).
 *
 * @module
 */
import { type Engine, grid } from "../engine/engine.ts";
import { defineKernel, type Kernel, kernelCache } from "../engine/kernel.ts";
import { Tensor } from "../engine/tensor.ts";
import { defineOp, needsGrad } from "../engine/autograd.ts";
import { binary } from "./elementwise.ts";
import { matmulForward } from "./matmul.ts";
import { reduce } from "./reduce.ts";

/** Options of {@linkcode conv2d}. */
export interface Conv2dOptions {
  /** Stride in both directions (default 1). */
  stride?: number;
  /** Zero padding on every side (default 0). */
  padding?: number;
  /** Bias of shape [Cout], added in the epilogue. */
  bias?: Tensor | null;
  /** Tensor of the output's shape added after the bias (ResNet shortcut). */
  residual?: Tensor | null;
  /** Apply ReLU last. */
  relu?: boolean;
  /**
   * The weight will not change while it lives (e.g. inference weights with batch norm folded in): its
   * packed layout is made once and reused by later calls; {@linkcode releaseConv2dWeight} frees it.
   */
  constantWeight?: boolean;
}

/** Geometry of one convolution, resolved from the shapes and options. */
export interface Conv2dGeometry {
  n: number;
  cin: number;
  h: number;
  w: number;
  cout: number;
  kh: number;
  kw: number;
  stride: number;
  pad: number;
  oh: number;
  ow: number;
}

/**
 * Register-block sizes (TM rows × TN columns per invocation) of each kernel. Tuning knobs; TN must be a
 * multiple of 4 for `gemm`. Changing them builds new kernel variants.
 */
export const conv2dTiles = {
  fwd: [8, 8] as [number, number],
  gemm: [8, 8] as [number, number],
  dx: [8, 8] as [number, number],
  dw: [8, 8] as [number, number],
  /** Invocations the weight-gradient split-K aims for (more splits → more parallelism, more partials). */
  dwTarget: 16384,
  /**
   * Which kernels run: "reg" (register-blocked T×T GEMMs on channels-last copies, for llvmpipe), "tiled"
   * (the 64-invocation workgroups above, for GPUs), or "auto": "reg" on software adapters.
   */
  path: "auto" as "auto" | "reg" | "tiled",
  /** Force the register-blocked block size T (8, 16 or 32; tests); default: by problem size. */
  reg: undefined as number | undefined,
  /** Register-blocked weight gradient: split K until at least this many workgroups run. */
  dwMinGroups: 16,
  /** Register-blocked path: run 1×1 stride-1 convolutions (no epilogue) through `matmulForward`. */
  matmul1x1: true,
};

const WG = 64;
const cache = kernelCache<Kernel>();

const GEOM = {
  batch: "u32",
  cin: "u32",
  hin: "u32",
  win: "u32",
  cout: "u32",
  hout: "u32",
  wout: "u32",
  kh: "u32",
  kw: "u32",
  stride: "u32",
  pad: "u32",
} as const;

function geomUniforms(g: Conv2dGeometry) {
  return {
    batch: g.n,
    cin: g.cin,
    hin: g.h,
    win: g.w,
    cout: g.cout,
    hout: g.oh,
    wout: g.ow,
    kh: g.kh,
    kw: g.kw,
    stride: g.stride,
    pad: g.pad,
  };
}

/** Workgroup counts, checked against the device's per-dimension limit. */
function groups(e: Engine, op: string, x: number, y: number, z = 1): [number, number, number] {
  const max = e.limits.maxComputeWorkgroupsPerDimension;
  if (x > max || y > max || z > max) {
    throw new RangeError(
      `Cannot ${op}: ${x}×${y}×${z} workgroups exceed the device limit of ${max} per dimension; ` +
        `use a smaller batch`,
    );
  }
  return [Math.max(x, 1), Math.max(y, 1), Math.max(z, 1)];
}

const seq = (n: number) => [...Array(n).keys()];
/** Lines for every (i, j) of a TM×TN block. */
const each2 = (tm: number, tn: number, f: (i: number, j: number) => string) =>
  seq(tm).flatMap((i) => seq(tn).map((j) => f(i, j))).join("\n");
const each = (n: number, f: (i: number) => string) => seq(n).map(f).join("\n");

interface Epilogue {
  bias: boolean;
  residual: boolean;
  relu: boolean;
}
const epiKey = (e: Epilogue) => `${e.bias ? "b" : ""}${e.residual ? "r" : ""}${e.relu ? "a" : ""}`;
function epiBindings(e: Epilogue) {
  const b: { name: string; access: "read" }[] = [];
  if (e.bias) b.push({ name: "bias", access: "read" });
  if (e.residual) b.push({ name: "res", access: "read" });
  return b;
}
/** WGSL storing `acc` for row `co` at output index `idx` through the epilogue. */
function epiStore(e: Epilogue, acc: string, co: string, idx: string): string {
  let v = acc;
  if (e.bias) v = `${v} + bias[${co}]`;
  if (e.residual) v = `${v} + res[${idx}]`;
  if (e.relu) v = `max(${v}, 0.0)`;
  return `y[${idx}] = ${v};`;
}

// ------------------------------------------------------------------------------------------ weights

// w: (Cout, Cin, KH, KW) → wt: (KH·KW, A, BP), zero-padded along b to BP (a multiple of the row tile), so
// the kernels read TM consecutive b as aligned vec4 without bounds checks.
// Forward: (a, b) = (ci, co); input gradient (`swap`): (a, b) = (co, ci).
const packKernel = defineKernel({
  name: "conv2d_pack_w",
  bindings: [{ name: "w", access: "read" }, { name: "wt", access: "read_write" }],
  uniforms: { cout: "u32", cin: "u32", kk: "u32", swap: "u32", bp: "u32", total: "u32" },
  workgroupSize: [WG],
  body: String.raw`
@compute @workgroup_size(${WG}) fn main(@builtin(global_invocation_id) g: vec3u,
    @builtin(num_workgroups) nwg: vec3u) {
  let i = g.x + g.y * (nwg.x * WG_X);
  if (i >= p.total) { return; }
  let b = i % p.bp;
  let t = i / p.bp;
  let na = select(p.cin, p.cout, p.swap == 1u);
  let nb = select(p.cout, p.cin, p.swap == 1u);
  let a = t % na;
  let tap = t / na;
  let co = select(b, a, p.swap == 1u);
  let ci = select(a, b, p.swap == 1u);
  wt[i] = select(0.0, w[min((co * p.cin + ci) * p.kk + tap, arrayLength(&w) - 1u)], b < nb);
}`,
});

/** Pack w for the forward (`swap` false) or input-gradient kernels; returns wt and BP / 4. */
function packWeights(w: Tensor, g: Conv2dGeometry, swap: boolean, tm: number): { wt: Tensor; bp4: number } {
  if (tm % 4 !== 0) throw new RangeError(`Cannot conv2d: row tile ${tm} is not a multiple of 4`);
  const e = w.engine;
  const nb = swap ? g.cin : g.cout, na = swap ? g.cout : g.cin;
  const bp = Math.max(1, Math.ceil(nb / tm)) * tm;
  const total = g.kh * g.kw * na * bp;
  const wt = e.empty([total], "conv2d packed w");
  e.run(packKernel, {
    bindings: [w, wt],
    uniforms: { cout: g.cout, cin: g.cin, kk: g.kh * g.kw, swap: swap ? 1 : 0, bp, total },
    workgroups: grid(total, WG),
    info: `[${w.shape}]${swap ? " swapped" : ""}`,
  });
  return { wt, bp4: bp / 4 };
}

// Packed layouts of constant weights (Conv2dOptions.constantWeight), by layout key.
const packedCache = new WeakMap<Tensor, Map<string, Tensor>>();

/**
 * `make()` the packed weight, or for a constant weight reuse the one made before with the same `key`.
 * Returns it and whether the caller must dispose it after use.
 */
function packedWeight(w: Tensor, constant: boolean | undefined, key: string, make: () => Tensor) {
  if (!constant) return { t: make(), temporary: true };
  let byKey = packedCache.get(w);
  if (!byKey) packedCache.set(w, byKey = new Map());
  let t = byKey.get(key);
  if (!t || t.disposed) {
    t = make().keep();
    byKey.set(key, t);
  }
  return { t, temporary: false };
}

/** Free the packed layouts cached for a constant weight (call before disposing it). */
export function releaseConv2dWeight(w: Tensor): void {
  for (const t of packedCache.get(w)?.values() ?? []) t.dispose();
  packedCache.delete(w);
}

// ------------------------------------------------------------------------------------------ forward

// x: (N, Cin, H, W), w: (Cout, Cin, KH, KW) → y: (N, Cout, OH, OW)
// Invocation (g.x, g.y): output positions col0..col0+TN of the flattened (n, oh, ow), channels
// co0..co0+TM. Out-of-range rows/columns load clamped addresses and skip the store, so the K loop has
// no divergent control flow.
function forwardKernel(tm: number, tn: number, epi: Epilogue): Kernel {
  return cache(`fwd:${tm}x${tn}:${epiKey(epi)}`, () =>
    defineKernel({
      name: `conv2d_fwd_${tm}x${tn}${epiKey(epi) ? "_" + epiKey(epi) : ""}`,
      bindings: [
        { name: "x", access: "read" },
        { name: "wt", access: "read", type: "vec4<f32>" },
        ...epiBindings(epi),
        { name: "y", access: "read_write" },
      ],
      uniforms: { ...GEOM, bp4: "u32" },
      workgroupSize: [WG],
      body: String.raw`
@compute @workgroup_size(${WG}) fn main(@builtin(global_invocation_id) g: vec3u) {
  let hw = p.hin * p.win;
  let ohw = p.hout * p.wout;
  let P = p.batch * ohw;
  let col0 = g.x * ${tn}u;
  let co0 = g.y * ${tm}u;
${
        each(tn, (j) =>
          `  let c${j} = min(col0 + ${j}u, P - 1u);
  let n${j} = c${j} / ohw;
  let r${j} = c${j} % ohw;
  let xb${j} = n${j} * p.cin * hw;
  let ihb${j} = i32((r${j} / p.wout) * p.stride) - i32(p.pad);
  let iwb${j} = i32((r${j} % p.wout) * p.stride) - i32(p.pad);`)
      }
${each2(tm, tn, (i, j) => `  var a${i}_${j} = 0.0;`)}
  for (var kh = 0u; kh < p.kh; kh++) {
${
        each(tn, (j) =>
          `    let ih${j} = ihb${j} + i32(kh);
    let hok${j} = ih${j} >= 0 && ih${j} < i32(p.hin);`)
      }
    for (var kw = 0u; kw < p.kw; kw++) {
${
        each(tn, (j) =>
          `      let iw${j} = iwb${j} + i32(kw);
      let ok${j} = hok${j} && iw${j} >= 0 && iw${j} < i32(p.win);
      var xi${j} = select(0u, xb${j} + u32(ih${j}) * p.win + u32(iw${j}), ok${j});
      let m${j} = select(0.0, 1.0, ok${j});`)
      }
      var wi = (kh * p.kw + kw) * p.cin * p.bp4 + co0 / 4u;
      for (var ci = 0u; ci < p.cin; ci++) {
${each(tm / 4, (q) => `        let wv${q} = wt[wi + ${q}u];`)}
        wi += p.bp4;
${each(tn, (j) => `        let xv${j} = x[xi${j}] * m${j};\n        xi${j} += hw;`)}
${each2(tm, tn, (i, j) => `        a${i}_${j} = fma(wv${i >> 2}[${i & 3}], xv${j}, a${i}_${j});`)}
      }
    }
  }
${
        each2(tm, tn, (i, j) =>
          `  if (co0 + ${i}u < p.cout && col0 + ${j}u < P) {
    let o = (n${j} * p.cout + co0 + ${i}u) * ohw + r${j};
    ${epiStore(epi, `a${i}_${j}`, `co0 + ${i}u`, "o")}
  }`)
      }
}`,
    }) as unknown as Kernel);
}

// Batched GEMM for 1×1 stride-1 convs: y[n, m, q] = Σ_k a[m·sam + k·sak] · b[n, k, q] (+ epilogue),
// b: (N, K, Q). Forward: a = w (sam = Cin, sak = 1); input gradient: a = wᵀ (sam = 1, sak = Cin).
// With `vec`, Q % 4 = 0 and b is read as vec4 along q (groups of 4 columns never straddle two n).
function gemmKernel(tm: number, tn: number, vec: boolean, epi: Epilogue): Kernel {
  return cache(`gemm:${tm}x${tn}:${vec}:${epiKey(epi)}`, () => {
    const groups = tn / 4;
    const cols = vec
      ? each(groups, (gq) =>
        `  let c${gq} = min(col0 + ${4 * gq}u, P - 4u);
  let n${gq} = c${gq} / p.q;
  let r${gq} = c${gq} % p.q;
  var bi${gq} = (n${gq} * p.k * p.q + r${gq}) / 4u;`)
      : each(tn, (j) =>
        `  let c${j} = min(col0 + ${j}u, P - 1u);
  let n${j} = c${j} / p.q;
  let r${j} = c${j} % p.q;
  var bi${j} = n${j} * p.k * p.q + r${j};`);
    const loads = vec
      ? each(groups, (gq) => `    let bv${gq} = b[bi${gq}];\n    bi${gq} += q4;`)
      : each(tn, (j) => `    let bv${j} = b[bi${j}];\n    bi${j} += p.q;`);
    const bval = (j: number) => (vec ? `bv${j >> 2}[${j & 3}]` : `bv${j}`);
    // Output column j: its n and q.
    const nq = (j: number) => (vec ? [`n${j >> 2}`, `r${j >> 2} + ${j & 3}u`] : [`n${j}`, `r${j}`]);
    return defineKernel({
      name: `conv2d_gemm_${tm}x${tn}${vec ? "_vec4" : ""}${epiKey(epi) ? "_" + epiKey(epi) : ""}`,
      bindings: [
        { name: "a", access: "read", type: "vec4<f32>" },
        { name: "b", access: "read", type: vec ? "vec4<f32>" : "f32" },
        ...epiBindings(epi),
        { name: "y", access: "read_write" },
      ],
      uniforms: { batch: "u32", m: "u32", k: "u32", q: "u32", bp4: "u32" },
      workgroupSize: [WG],
      body: String.raw`
@compute @workgroup_size(${WG}) fn main(@builtin(global_invocation_id) g: vec3u) {
  let P = p.batch * p.q;
  let q4 = p.q / 4u;
  let col0 = g.x * ${tn}u;
  let m0 = g.y * ${tm}u;
${cols}
  var ai = m0 / 4u;
${each2(tm, tn, (i, j) => `  var a${i}_${j} = 0.0;`)}
  for (var kk = 0u; kk < p.k; kk++) {
${each(tm / 4, (q) => `    let av${q} = a[ai + ${q}u];`)}
    ai += p.bp4;
${loads}
${each2(tm, tn, (i, j) => `    a${i}_${j} = fma(av${i >> 2}[${i & 3}], ${bval(j)}, a${i}_${j});`)}
  }
${
        each2(tm, tn, (i, j) =>
          `  if (m0 + ${i}u < p.m && col0 + ${j}u < P) {
    let o = (${nq(j)[0]} * p.m + m0 + ${i}u) * p.q + ${nq(j)[1]};
    ${epiStore(epi, `a${i}_${j}`, `m0 + ${i}u`, "o")}
  }`)
      }
}`,
    }) as unknown as Kernel;
  });
}

// ------------------------------------------------------------------------------------------ register-blocked path

// Software adapters (llvmpipe) run every pass as a register-blocked GEMM in the style of kernels/matmul.ts:
// each invocation owns a T×T block of the output (T = 8, 16 or 32), both operands are read as vec4 along K
// (or along the output columns), K advances by 4 per loop step with the 4 FMAs of one accumulator back to
// back, out-of-range rows and columns are clamped (no branches in the K loop) and only stores are guarded.
// On llvmpipe a storage load costs ~200 instructions whatever its width, so FMAs per load is what counts:
// a T×T block does 4·T² FMAs per 2·T vec4 loads. To make K contiguous, activations are first copied to a
// zero-padded channels-last layout (N, H+2p, W+2p, C⁴), C⁴ = C rounded up to 4 (conv1: 3 → 4), and weights
// to (rows, KH, KW, C⁴): for fixed (n, kh) the KW·C⁴ values of one output position are contiguous.
//
//   forward: y[n, co, oh, ow] = Σ_kh Σ_(kw,ci) A[co, kh, kw, ci] · xp[n, oh·s + kh, ow·s + kw, ci]
//   input gradient: one such stride-1 correlation per stride phase (ih mod s, iw mod s) over the padded
//     channels-last dy, with the phase's taps of w flipped and transposed (rows = ci, K = (th, tw, co)), so
//     no FMA multiplies an inserted zero; each phase stores its strided subset of dx.
//   weight gradient: dw[co, (kh, kw, ci)] = Σ_k dyᵀ[co, k] · xp[P(k) + Q(kh, kw, ci)], k = (n, oh, ow): dyᵀ
//     is read as vec4 along k, xp as vec4 along ci (the output columns), P(k) comes from a small table;
//     split-K over k when the output has few blocks, partials summed by `reduce`.

/** Invocations per workgroup of the register-blocked kernels. */
const RWG = 8;

const c4 = (c: number) => Math.ceil(c / 4) * 4;

// x: (N, C, H, W) → xp: (N, HP, WP, C⁴) as vec4, x at offset (pt, pl), zeros elsewhere.
const nhwcKernel = defineKernel({
  name: "conv2d_nhwc",
  bindings: [{ name: "x", access: "read" }, { name: "xp", access: "read_write", type: "vec4<f32>" }],
  uniforms: {
    c: "u32",
    h: "u32",
    w: "u32",
    hp: "u32",
    wp: "u32",
    c4q: "u32",
    pt: "u32",
    pl: "u32",
    total: "u32",
  },
  workgroupSize: [WG],
  body: String.raw`
@compute @workgroup_size(${WG}) fn main(@builtin(global_invocation_id) g: vec3u,
    @builtin(num_workgroups) nwg: vec3u) {
  let i = g.x + g.y * (nwg.x * WG_X);
  if (i >= p.total) { return; }
  let cq = i % p.c4q;
  var t = i / p.c4q;
  let iw = i32(t % p.wp) - i32(p.pl);
  t = t / p.wp;
  let ih = i32(t % p.hp) - i32(p.pt);
  let n = t / p.hp;
  let inside = ih >= 0 && ih < i32(p.h) && iw >= 0 && iw < i32(p.w);
  let last = arrayLength(&x) - 1u;
  var v = vec4<f32>(0.0);
  for (var s = 0u; s < 4u; s++) {
    let c = cq * 4u + s;
    let idx = ((n * p.c + c) * p.h + u32(ih)) * p.w + u32(iw);
    v[s] = select(0.0, x[min(idx, last)], inside && c < p.c);
  }
  xp[i] = v;
}`,
});

/** Copy a (N, C, H, W) tensor to (N, H + pt + pb, W + pl + pr, C⁴), zero-padded. */
function toNhwc(x: Tensor, pt: number, pb: number, pl: number, pr: number): Tensor {
  const e = x.engine;
  const [n, c, h, w] = x.shape;
  const hp = h + pt + pb, wp = w + pl + pr, c4q = c4(c) / 4;
  const total = n * hp * wp * c4q;
  const xp = e.empty([n, hp, wp, 4 * c4q], "conv2d channels-last");
  e.run(nhwcKernel, {
    bindings: [x, xp],
    uniforms: { c, h, w, hp, wp, c4q, pt, pl, total },
    workgroups: grid(total, WG),
    info: `[${x.shape}] → [${xp.shape}]`,
  });
  return xp;
}

// w: (Cout, Cin, KH, KW) → a: (M, T1, T2, C⁴) as vec4, zero-padded along c; one vec4 per invocation.
//   Forward (swap 0): m = co, c = ci, kh = t1, kw = t2.
//   Input gradient (swap 1, flip 1): m = ci, c = co, kh = kh0 + s·(T1 − 1 − t1), kw = kw0 + s·(T2 − 1 − t2).
const packAKernel = defineKernel({
  name: "conv2d_pack_a",
  bindings: [{ name: "w", access: "read" }, { name: "a", access: "read_write", type: "vec4<f32>" }],
  uniforms: {
    cout: "u32",
    cin: "u32",
    kh: "u32",
    kw: "u32",
    kh0: "u32",
    kw0: "u32",
    s: "u32",
    t1: "u32",
    t2: "u32",
    cq: "u32",
    swap: "u32",
    flip: "u32",
    total: "u32",
  },
  workgroupSize: [WG],
  body: String.raw`
@compute @workgroup_size(${WG}) fn main(@builtin(global_invocation_id) g: vec3u,
    @builtin(num_workgroups) nwg: vec3u) {
  // g.y = row m, g.x = (t1, t2, c/4) within the row: two divisions per vec4.
  let i = g.x;
  if (i >= p.total) { return; }
  let m = g.y;
  let tap = i / p.cq;
  let c4 = (i - tap * p.cq) * 4u;
  let t1 = tap / p.t2;
  let t2 = tap - t1 * p.t2;
  let kh = p.kh0 + p.s * select(t1, p.t1 - 1u - t1, p.flip == 1u);
  let kw = p.kw0 + p.s * select(t2, p.t2 - 1u - t2, p.flip == 1u);
  let kk = p.kh * p.kw;
  // w index = (co·Cin + ci)·KK + kh·KW + kw; c steps by Cin·KK (swap) or KK.
  let sw = p.swap == 1u;
  let nc = select(p.cin, p.cout, sw);
  let step = select(kk, p.cin * kk, sw);
  let base = select(m * p.cin * kk, m * kk, sw) + kh * p.kw + kw;
  let last = arrayLength(&w) - 1u;
  var v = vec4<f32>(0.0);
  for (var s = 0u; s < 4u; s++) {
    v[s] = select(0.0, w[min(base + (c4 + s) * step, last)], c4 + s < nc);
  }
  a[m * p.total + i] = v;
}`,
});

function packA(
  w: Tensor,
  g: Conv2dGeometry,
  o: { swap: boolean; kh0: number; kw0: number; t1: number; t2: number },
): Tensor {
  const e = w.engine;
  const rows = o.swap ? g.cin : g.cout, cp = c4(o.swap ? g.cout : g.cin);
  const total = o.t1 * o.t2 * cp / 4; // vec4 per row
  // A phase without taps still binds a (never read) buffer.
  const a = e.empty([Math.max(4 * rows * total, 4)], "conv2d packed w");
  if (total === 0) return a;
  e.run(packAKernel, {
    bindings: [w, a],
    uniforms: {
      cout: g.cout,
      cin: g.cin,
      kh: g.kh,
      kw: g.kw,
      kh0: o.kh0,
      kw0: o.kw0,
      s: o.swap ? g.stride : 1,
      t1: o.t1,
      t2: o.t2,
      cq: cp / 4,
      swap: o.swap ? 1 : 0,
      flip: o.swap ? 1 : 0,
      total,
    },
    workgroups: groups(e, "conv2d", Math.ceil(total / WG), rows),
    info: `[${w.shape}] → [${rows},${o.t1},${o.t2},${cp}]`,
  });
  return a;
}

// Row and column of the block owned by an invocation: lanes along rows (rmul = WG, rl = 1) or along
// columns (cmul = WG, cl = 1), chosen by the host as in chooseMatmulKernel.
const LANES = { rmul: "u32", rl: "u32", cmul: "u32", cl: "u32" } as const;
const blockStart = (tm: number, tn: number) =>
  `  let row0 = (wid.y * p.rmul + lid.x * p.rl) * ${tm}u;
  let col0 = (wid.x * p.cmul + lid.x * p.cl) * ${tn}u;`;

// The 4 FMAs of one accumulator back to back ("ijk"): c += a[0..3] · b[0..3].
const fma4 = (
  tm: number,
  tn: number,
  a: (i: number, s: number) => string,
  b: (j: number, s: number) => string,
) =>
  each2(tm, tn, (i, j) => {
    let v = `c${i}_${j}`;
    for (let s = 0; s < 4; s++) v = `fma(${a(i, s)}, ${b(j, s)}, ${v})`;
    return `      c${i}_${j} = ${v};`;
  });

// out[n, m, i·os + rh, j·os + rw] = epi(Σ_kh Σ_t A[m, kh, t] · B[n, i·sh + offh + kh, j·sh + offw, t])
//   A: (M, KH, ROWQ) vec4, B: (N, HP, WP, C⁴) vec4, t runs over the ROWQ = KW·C⁴/4 vec4 of one tap row.
// Columns c = (n, i, j) of the GEMM, N = batch·OHW.
function regFwdKernel(tm: number, tn: number): Kernel {
  return cache(`rf:${tm}x${tn}`, () =>
    defineKernel({
      name: `conv2d_reg_fwd_${tm}x${tn}`,
      bindings: [
        { name: "A", access: "read", type: "vec4<f32>" },
        { name: "B", access: "read", type: "vec4<f32>" },
        { name: "bias", access: "read" },
        { name: "res", access: "read" },
        { name: "y", access: "read_write" },
      ],
      uniforms: {
        M: "u32",
        N: "u32",
        ohw: "u32",
        ow: "u32",
        hp: "u32",
        wp: "u32",
        c4q: "u32",
        sh: "u32",
        offh: "u32",
        offw: "u32",
        kh: "u32",
        rowq: "u32",
        oplane: "u32",
        outw: "u32",
        os: "u32",
        rh: "u32",
        rw: "u32",
        hasBias: "u32",
        hasRes: "u32",
        relu: "u32",
        ...LANES,
      },
      workgroupSize: [RWG],
      body: String.raw`
@compute @workgroup_size(${RWG}) fn main(@builtin(workgroup_id) wid: vec3u,
    @builtin(local_invocation_id) lid: vec3u) {
${blockStart(tm, tn)}
  let ka4 = p.kh * p.rowq;
${each(tm, (i) => `  let a${i} = min(row0 + ${i}u, p.M - 1u) * ka4;`)}
${
        each(tn, (j) =>
          `  let q${j} = min(col0 + ${j}u, p.N - 1u) % p.ohw;
  let b${j} = ((min(col0 + ${j}u, p.N - 1u) / p.ohw * p.hp + q${j} / p.ow * p.sh + p.offh) * p.wp + q${j} % p.ow * p.sh + p.offw) * p.c4q;`)
      }
${each2(tm, tn, (i, j) => `  var c${i}_${j} = 0.0;`)}
  var ab = 0u;
  var bb = 0u;
  for (var kh = 0u; kh < p.kh; kh++) {
    for (var k = 0u; k < p.rowq; k++) {
${each(tm, (i) => `      let av${i} = A[a${i} + ab + k];`)}
${each(tn, (j) => `      let bv${j} = B[b${j} + bb + k];`)}
${fma4(tm, tn, (i, s) => `av${i}[${s}]`, (j, s) => `bv${j}[${s}]`)}
    }
    ab += p.rowq;
    bb += p.wp * p.c4q;
  }
${
        each(tm, (i) =>
          `  var bi${i} = 0.0;
  if (p.hasBias != 0u) { bi${i} = bias[min(row0 + ${i}u, p.M - 1u)]; }`)
      }
${
        each(tn, (j) =>
          `  if (col0 + ${j}u < p.N) {
    let n = (col0 + ${j}u) / p.ohw;
    let q = (col0 + ${j}u) % p.ohw;
    let o = n * p.M * p.oplane + (q / p.ow * p.os + p.rh) * p.outw + q % p.ow * p.os + p.rw;
${
            each(tm, (i) =>
              `    if (row0 + ${i}u < p.M) {
      let oi = o + (row0 + ${i}u) * p.oplane;
      var v = c${i}_${j} + bi${i};
      if (p.hasRes != 0u) { v += res[oi]; }
      if (p.relu != 0u) { v = max(v, 0.0); }
      y[oi] = v;
    }`)
          }
  }`)
      }
}`,
    }) as unknown as Kernel);
}

// part[z, m, c, tap] = Σ_{k in split z} A[m, k] · xp[P[k] + Q(tap, c)]
//   A = dyᵀ: (Cout, K⁴) vec4 along k = (n, oh, ow); xp: (N, HP, WP, C⁴) vec4 along c; column group
//   g = (tap, c/4), Q = (kh·WP + kw)·C⁴/4 + c/4; P[k] = ((n·HP + oh·s)·WP + ow·s)·C⁴/4 (0 past the end).
function regDwKernel(tm: number, tn: number): Kernel {
  const tq = tn / 4;
  return cache(`rw:${tm}x${tn}`, () =>
    defineKernel({
      name: `conv2d_reg_dw_${tm}x${tn}`,
      bindings: [
        { name: "A", access: "read", type: "vec4<f32>" },
        { name: "B", access: "read", type: "vec4<f32>" },
        { name: "P", access: "read", type: "u32" },
        { name: "part", access: "read_write" },
      ],
      uniforms: {
        M: "u32",
        k4: "u32",
        kp: "u32",
        lda: "u32",
        nq: "u32",
        c4q: "u32",
        cin: "u32",
        kw: "u32",
        kk: "u32",
        wp: "u32",
        chunk: "u32",
        ...LANES,
      },
      workgroupSize: [RWG],
      body: String.raw`
@compute @workgroup_size(${RWG}) fn main(@builtin(workgroup_id) wid: vec3u,
    @builtin(local_invocation_id) lid: vec3u) {
${blockStart(tm, tn)}
${each(tm, (i) => `  let a${i} = min(row0 + ${i}u, p.M - 1u) * p.lda;`)}
${
        each(tq, (q) =>
          `  let g${q} = min(col0 / 4u + ${q}u, p.nq - 1u);
  let b${q} = ((g${q} / p.c4q) / p.kw * p.wp + (g${q} / p.c4q) % p.kw) * p.c4q + g${q} % p.c4q;`)
      }
${each2(tm, tn, (i, j) => `  var c${i}_${j} = 0.0;`)}
  let k1 = min(p.k4, (wid.z + 1u) * p.chunk);
  for (var k = wid.z * p.chunk; k < k1; k++) {
      let ao = P[p.kp + k];
${each(tm, (i) => `      let av${i} = A[a${i} + ao];`)}
${each(4, (s) => `      let p${s} = P[4u * k + ${s}u];`)}
${each(4, (s) => each(tq, (q) => `      let bv${s}_${q} = B[p${s} + b${q}];`))}
${fma4(tm, tn, (i, s) => `av${i}[${s}]`, (j, s) => `bv${s}_${j >> 2}[${j & 3}]`)}
  }
  let zb = wid.z * p.M * p.cin * p.kk;
${
        each(tn, (j) =>
          `  {
    let gq = col0 / 4u + ${j >> 2}u;
    let ci = gq % p.c4q * 4u + ${j & 3}u;
    if (gq < p.nq && ci < p.cin) {
      let o = zb + ci * p.kk + gq / p.c4q;
${each(tm, (i) => `      if (row0 + ${i}u < p.M) { part[o + (row0 + ${i}u) * p.cin * p.kk] = c${i}_${j}; }`)}
    }
  }`)
      }
}`,
    }) as unknown as Kernel);
}

// dy: (N, Cout, OHW) → dyᵀ: (Cout, K⁴), K⁴ = N·OHW rounded up to 4, zeros past N·OHW.
const dyTKernel = defineKernel({
  name: "conv2d_dyt",
  bindings: [{ name: "dy", access: "read" }, { name: "dyt", access: "read_write" }],
  uniforms: { cout: "u32", ohw: "u32", nk: "u32", kp: "u32", total: "u32" },
  workgroupSize: [WG],
  body: String.raw`
@compute @workgroup_size(${WG}) fn main(@builtin(global_invocation_id) g: vec3u,
    @builtin(num_workgroups) nwg: vec3u) {
  let i = g.x + g.y * (nwg.x * WG_X);
  if (i >= p.total) { return; }
  let k = i % p.kp;
  let co = i / p.kp;
  let idx = (k / p.ohw * p.cout + co) * p.ohw + k % p.ohw;
  dyt[i] = select(0.0, dy[min(idx, arrayLength(&dy) - 1u)], k < p.nk);
}`,
});

// P[k], k < K⁴: ((n·HP + oh·s)·WP + ow·s)·C⁴/4 for k = (n, oh, ow) < N·OH·OW, else 0 (vec4 offsets into xp).
// P[K⁴ + k4]: offset of dy's vec4 k4 in A: dy itself, (n·Cout·OHW + oh·OW + ow)/4 with k = 4·k4, when
// OHW % 4 = 0 (`direct`), else k4 in the copy dyᵀ.
const pTableKernel = defineKernel({
  name: "conv2d_ptable",
  bindings: [{ name: "P", access: "read_write", type: "u32" }],
  uniforms: {
    nk: "u32",
    ohw: "u32",
    ow: "u32",
    hp: "u32",
    wp: "u32",
    s: "u32",
    c4q: "u32",
    kp: "u32",
    cout: "u32",
    direct: "u32",
    total: "u32",
  },
  workgroupSize: [WG],
  body: String.raw`
@compute @workgroup_size(${WG}) fn main(@builtin(global_invocation_id) g: vec3u,
    @builtin(num_workgroups) nwg: vec3u) {
  let i = g.x + g.y * (nwg.x * WG_X);
  if (i >= p.total) { return; }
  if (i >= p.kp) {
    let k = 4u * (i - p.kp);
    P[i] = select(k / 4u, (k / p.ohw * p.cout * p.ohw + k % p.ohw) / 4u, p.direct == 1u);
    return;
  }
  let q = i % p.ohw;
  let v = ((i / p.ohw * p.hp + q / p.ow * p.s) * p.wp + q % p.ow * p.s) * p.c4q;
  P[i] = select(0u, v, i < p.nk);
}`,
});

/**
 * Block (TM rows × TN columns per invocation) and lane mapping of a register-blocked GEMM of M×N×K:
 * 32×32 for big products (~15 s to compile on llvmpipe the first time), 16×16 and 8×8 below, and fewer
 * rows when M is small (the input gradient of conv1 has M = 3).
 */
function chooseRegBlock(m: number, n: number, k: number): { tm: number; tn: number; cols: boolean } {
  const flops = 2 * m * n * k;
  const t = conv2dTiles.reg ?? (flops >= 2 ** 27 ? 32 : flops >= 2 ** 22 ? 16 : 8);
  const tm = Math.min(t, Math.max(4, 2 ** Math.ceil(Math.log2(m)))), tn = t;
  // Pad less: RWG invocations × tm rows (lanes along rows) or × tn columns.
  const padRows = Math.ceil(m / (RWG * tm)) * RWG * tm * Math.ceil(n / tn) * tn;
  const padCols = Math.ceil(m / tm) * tm * Math.ceil(n / (RWG * tn)) * RWG * tn;
  return { tm, tn, cols: padCols < padRows };
}

function lanes(
  e: Engine,
  op: string,
  m: number,
  n: number,
  b: { tm: number; tn: number; cols: boolean },
  z = 1,
) {
  const { tm, tn, cols } = b;
  const uniforms = cols ? { rmul: 1, rl: 0, cmul: RWG, cl: 1 } : { rmul: RWG, rl: 1, cmul: 1, cl: 0 };
  const workgroups = cols
    ? groups(e, op, Math.ceil(n / (tn * RWG)), Math.ceil(m / tm), z)
    : groups(e, op, Math.ceil(n / tn), Math.ceil(m / (tm * RWG)), z);
  return { uniforms, workgroups };
}

/** Forward on the register-blocked path. */
function regForward(x: Tensor, w: Tensor, g: Conv2dGeometry, o: Conv2dOptions, y: Tensor, info: string) {
  const e = x.engine;
  const xp = toNhwc(x, g.pad, g.pad, g.pad, g.pad);
  const { t: a, temporary } = packedWeight(
    w,
    o.constantWeight,
    "reg-fwd",
    () => packA(w, g, { swap: false, kh0: 0, kw0: 0, t1: g.kh, t2: g.kw }),
  );
  const cp = c4(g.cin), N = g.n * g.oh * g.ow;
  const blk = chooseRegBlock(g.cout, N, g.kh * g.kw * cp);
  const l = lanes(e, "conv2d", g.cout, N, blk);
  e.run(regFwdKernel(blk.tm, blk.tn), {
    bindings: [a, xp, o.bias ?? e.placeholder(), o.residual ?? e.placeholder(), y],
    uniforms: {
      M: g.cout,
      N,
      ohw: g.oh * g.ow,
      ow: g.ow,
      hp: g.h + 2 * g.pad,
      wp: g.w + 2 * g.pad,
      c4q: cp / 4,
      sh: g.stride,
      offh: 0,
      offw: 0,
      kh: g.kh,
      rowq: g.kw * cp / 4,
      oplane: g.oh * g.ow,
      outw: g.ow,
      os: 1,
      rh: 0,
      rw: 0,
      hasBias: o.bias ? 1 : 0,
      hasRes: o.residual ? 1 : 0,
      relu: o.relu ? 1 : 0,
      ...l.uniforms,
    },
    workgroups: l.workgroups,
    info: `${info} reg ${blk.tm}×${blk.tn}`,
  });
  xp.dispose();
  if (temporary) a.dispose();
}

/** Taps of one stride phase along one axis: first tap k0, count T, and the row offset ch. */
function phase(r: number, s: number, p: number, k: number) {
  const k0 = (r + p) % s;
  const taps = k0 < k ? Math.ceil((k - k0) / s) : 0;
  return { k0, taps, ch: (r + p - k0) / s };
}

/** Input gradient on the register-blocked path: one stride-1 correlation per stride phase. */
function regBackwardInput(dy: Tensor, w: Tensor, g: Conv2dGeometry, dx: Tensor, info: string) {
  const e = dy.engine;
  const s = g.stride;
  // Phase r covers rows i·s + r, i < ceil((H − r)/s); it reads dy rows i + ch − taps + 1 … i + ch.
  const pads = (size: number, out: number, k: number) => {
    let lo = 0, hi = 0;
    for (let r = 0; r < s && r < size; r++) {
      const ph = phase(r, s, g.pad, k);
      if (ph.taps === 0) continue;
      lo = Math.max(lo, ph.taps - 1 - ph.ch);
      hi = Math.max(hi, Math.ceil((size - r) / s) - 1 + ph.ch - (out - 1));
    }
    return [lo, hi];
  };
  const [pt, pb] = pads(g.h, g.oh, g.kh), [pl, pr] = pads(g.w, g.ow, g.kw);
  const dyp = toNhwc(dy, pt, pb, pl, pr);
  const cp = c4(g.cout);
  for (let rh = 0; rh < s && rh < g.h; rh++) {
    for (let rw = 0; rw < s && rw < g.w; rw++) {
      const ph = phase(rh, s, g.pad, g.kh), pw = phase(rw, s, g.pad, g.kw);
      const hi = Math.ceil((g.h - rh) / s), wi = Math.ceil((g.w - rw) / s);
      const a = packA(w, g, { swap: true, kh0: ph.k0, kw0: pw.k0, t1: ph.taps, t2: pw.taps });
      const N = g.n * hi * wi;
      const blk = chooseRegBlock(g.cin, N, ph.taps * pw.taps * cp);
      const l = lanes(e, "conv2d backward (input)", g.cin, N, blk);
      e.run(regFwdKernel(blk.tm, blk.tn), {
        bindings: [a, dyp, e.placeholder(), e.placeholder(), dx],
        uniforms: {
          M: g.cin,
          N,
          ohw: hi * wi,
          ow: wi,
          hp: g.oh + pt + pb,
          wp: g.ow + pl + pr,
          c4q: cp / 4,
          sh: 1,
          offh: ph.ch - ph.taps + 1 + pt,
          offw: pw.ch - pw.taps + 1 + pl,
          kh: ph.taps,
          rowq: pw.taps * cp / 4,
          oplane: g.h * g.w,
          outw: g.w,
          os: s,
          rh,
          rw,
          hasBias: 0,
          hasRes: 0,
          relu: 0,
          ...l.uniforms,
        },
        workgroups: l.workgroups,
        info: `${info} phase (${rh},${rw}) reg ${blk.tm}×${blk.tn}`,
      });
      a.dispose();
    }
  }
  dyp.dispose();
}

/** Weight gradient on the register-blocked path (split-K when the output has few blocks). */
function regBackwardWeight(
  x: Tensor,
  dy: Tensor,
  g: Conv2dGeometry,
  wShape: readonly number[],
  info: string,
) {
  const e = x.engine;
  const xp = toNhwc(x, g.pad, g.pad, g.pad, g.pad);
  const cp = c4(g.cin), hp = g.h + 2 * g.pad, wp = g.w + 2 * g.pad;
  const nk = g.n * g.oh * g.ow, kp = c4(nk);
  // A = dy read in place when each image's OH·OW is a multiple of 4, else the copy dyᵀ (Cout, K⁴).
  const direct = (g.oh * g.ow) % 4 === 0;
  let dyt: Tensor | null = null;
  if (!direct) {
    dyt = e.empty([g.cout, kp], "conv2d dyᵀ");
    e.run(dyTKernel, {
      bindings: [dy, dyt],
      uniforms: { cout: g.cout, ohw: g.oh * g.ow, nk, kp, total: g.cout * kp },
      workgroups: grid(g.cout * kp, WG),
      info: `[${dy.shape}] → [${dyt.shape}]`,
    });
  }
  const ptab = e.empty([kp + kp / 4], "conv2d dw offsets");
  e.run(pTableKernel, {
    bindings: [ptab],
    uniforms: {
      nk,
      ohw: g.oh * g.ow,
      ow: g.ow,
      hp,
      wp,
      s: g.stride,
      c4q: cp / 4,
      kp,
      cout: g.cout,
      direct: direct ? 1 : 0,
      total: kp + kp / 4,
    },
    workgroups: grid(kp + kp / 4, WG),
    info: `${kp} + ${kp / 4} offsets`,
  });
  const kk = g.kh * g.kw, nq = kk * cp / 4, ncol = 4 * nq, k4 = kp / 4;
  const blk = chooseRegBlock(g.cout, ncol, kp);
  const { tm, tn } = blk;
  const wgs = blk.cols
    ? Math.ceil(ncol / (tn * RWG)) * Math.ceil(g.cout / tm)
    : Math.ceil(ncol / tn) * Math.ceil(g.cout / (tm * RWG));
  // Split K until there are ≥ dwMinGroups workgroups, keeping ≥ 64 steps per split and the partials small.
  const wSize = g.cout * g.cin * kk;
  let splits = Math.min(
    Math.ceil(conv2dTiles.dwMinGroups / wgs),
    Math.ceil(k4 / 64),
    Math.max(1, Math.floor((64 << 20) / (4 * wSize))),
  );
  splits = Math.max(1, splits);
  const chunk = Math.ceil(k4 / splits);
  splits = Math.ceil(k4 / chunk);
  const part = e.empty([splits, ...wShape], "conv2d dw partials");
  const l = lanes(e, "conv2d backward (weight)", g.cout, ncol, blk, splits);
  e.run(regDwKernel(tm, tn), {
    bindings: [dyt ?? dy, xp, ptab, part],
    uniforms: {
      M: g.cout,
      k4,
      kp,
      lda: direct ? g.oh * g.ow / 4 : k4,
      nq,
      c4q: cp / 4,
      cin: g.cin,
      kw: g.kw,
      kk,
      wp,
      chunk,
      ...l.uniforms,
    },
    workgroups: l.workgroups,
    info: `${info} reg ${blk.tm}×${blk.tn} splits ${splits}`,
  });
  xp.dispose();
  dyt?.dispose();
  ptab.dispose();
  if (splits === 1) {
    const dw = part.reshape(wShape);
    part.dispose();
    return dw;
  }
  const dw = reduce("sum", part, { axes: 0 });
  part.dispose();
  return dw;
}

/**
 * A 1×1 stride-1 convolution whose operands the register-blocked matmul reads as vec4 without copies
 * (H·W, Cin and Cout multiples of 4): it runs as `matmulForward` on the NCHW tensors.
 */
const plainGemm = (g: Conv2dGeometry) =>
  isGemm(g) && conv2dTiles.matmul1x1 && (g.h * g.w) % 4 === 0 && g.cin % 4 === 0 && g.cout % 4 === 0;

/** Whether this engine runs convolutions on the register-blocked path. */
function useReg(e: Engine): boolean {
  return conv2dTiles.path === "reg" || (conv2dTiles.path === "auto" && e.adapterInfo.software);
}

/** Resolve and validate the geometry; errors name the op and both shapes. */
export function conv2dGeometry(
  xShape: readonly number[],
  wShape: readonly number[],
  options: { stride?: number; padding?: number } = {},
  op = "conv2d",
): Conv2dGeometry {
  const stride = options.stride ?? 1;
  const pad = options.padding ?? 0;
  if (xShape.length !== 4 || wShape.length !== 4) {
    throw new TypeError(
      `Cannot ${op} input of shape [${xShape}] with weight of shape [${wShape}]: both must have rank 4 ` +
        `(N, C, H, W) and (Cout, Cin, KH, KW)`,
    );
  }
  const [n, cin, h, w] = xShape;
  const [cout, wcin, kh, kw] = wShape;
  if (wcin !== cin) {
    throw new RangeError(
      `Cannot ${op} input of shape [${xShape}] with weight of shape [${wShape}]: input has ${cin} ` +
        `channels, weight expects ${wcin}`,
    );
  }
  if (!Number.isInteger(stride) || stride < 1) {
    throw new RangeError(`Cannot ${op}: stride must be a positive integer, current value is ${stride}`);
  }
  if (!Number.isInteger(pad) || pad < 0) {
    throw new RangeError(`Cannot ${op}: padding must be a non-negative integer, current value is ${pad}`);
  }
  if (kh < 1 || kw < 1 || h + 2 * pad < kh || w + 2 * pad < kw) {
    throw new RangeError(
      `Cannot ${op} input of shape [${xShape}] with weight of shape [${wShape}] at padding ${pad}: ` +
        `the kernel is larger than the padded input`,
    );
  }
  const oh = Math.floor((h + 2 * pad - kh) / stride) + 1;
  const ow = Math.floor((w + 2 * pad - kw) / stride) + 1;
  return { n, cin, h, w, cout, kh, kw, stride, pad, oh, ow };
}

const isGemm = (g: Conv2dGeometry) => g.kh === 1 && g.kw === 1 && g.stride === 1 && g.pad === 0;

/**
 * Convolution forward with the fused epilogue, not recorded on the tape (use {@linkcode conv2d} for
 * training).
 *
 * @example
 * ```ts
 * const y = conv2dForward(x, w, { stride: 2, padding: 3 }); // x: [N,3,224,224], w: [64,3,7,7]
 * ```
 */
export function conv2dForward(x: Tensor, w: Tensor, options: Conv2dOptions = {}): Tensor {
  if (!(x instanceof Tensor) || !(w instanceof Tensor)) {
    throw new TypeError("Cannot conv2d: input and weight must be Tensors");
  }
  const g = conv2dGeometry(x.shape, w.shape, options);
  const outShape = [g.n, g.cout, g.oh, g.ow];
  const { bias, residual } = options;
  if (bias && (bias.rank !== 1 || bias.shape[0] !== g.cout)) {
    throw new RangeError(
      `Cannot conv2d with weight of shape [${w.shape}] and bias of shape [${bias.shape}]: bias must be [${g.cout}]`,
    );
  }
  if (residual && (residual.rank !== 4 || residual.shape.some((d, i) => d !== outShape[i]))) {
    throw new RangeError(
      `Cannot conv2d input of shape [${x.shape}] with residual of shape [${residual.shape}]: ` +
        `the output has shape [${outShape}]`,
    );
  }
  const e = x.engine;
  const y = e.empty(outShape, "conv2d");
  if (y.size === 0) return y;
  const epi = { bias: !!bias, residual: !!residual, relu: !!options.relu };
  const extra = [bias, residual].filter((t): t is Tensor => !!t);
  const info = `[${x.shape}]*[${w.shape}] s${g.stride} p${g.pad}`;
  if (useReg(e)) {
    if (plainGemm(g) && !bias && !residual && !options.relu) {
      // y[n] = W · x[n]: (Cout, Cin) · (Cin, H·W), no copies.
      y.dispose();
      return e.scope(() =>
        matmulForward(w.reshape([g.cout, g.cin]), x.reshape([g.n, g.cin, g.h * g.w])).reshape(outShape)
      );
    }
    regForward(x, w, g, options, y, info);
    return y;
  }
  if (isGemm(g)) {
    const [tm, tn] = conv2dTiles.gemm;
    const q = g.h * g.w;
    const vec = q % 4 === 0 && tn % 4 === 0;
    const bp4 = Math.max(1, Math.ceil(g.cout / tm)) * tm / 4;
    const { t: wt, temporary } = packedWeight(
      w,
      options.constantWeight,
      `fwd ${tm}`,
      () => packWeights(w, g, false, tm).wt,
    );
    e.run(gemmKernel(tm, tn, vec, epi), {
      bindings: [wt, x, ...extra, y],
      uniforms: { batch: g.n, m: g.cout, k: g.cin, q, bp4 },
      workgroups: groups(e, "conv2d", Math.ceil(g.n * q / (tn * WG)), Math.ceil(g.cout / tm)),
      info,
    });
    if (temporary) wt.dispose();
  } else {
    const [tm, tn] = conv2dTiles.fwd;
    const bp4 = Math.max(1, Math.ceil(g.cout / tm)) * tm / 4;
    const { t: wt, temporary } = packedWeight(
      w,
      options.constantWeight,
      `fwd ${tm}`,
      () => packWeights(w, g, false, tm).wt,
    );
    e.run(forwardKernel(tm, tn, epi), {
      bindings: [x, wt, ...extra, y],
      uniforms: { ...geomUniforms(g), bp4 },
      workgroups: groups(e, "conv2d", Math.ceil(g.n * g.oh * g.ow / (tn * WG)), Math.ceil(g.cout / tm)),
      info,
    });
    if (temporary) wt.dispose();
  }
  return y;
}

// ------------------------------------------------------------------------------------------ backward

// dy: (N, Cout, OH, OW), w: (Cout, Cin, KH, KW) → dx: (N, Cin, H, W)
// dx[n, ci, ih, iw] = Σ_{co, kh, kw : (ih+p−kh) = s·oh, (iw+p−kw) = s·ow} dy[n, co, oh, ow] · w[co, ci, kh, kw]
// Invocation g.x = (n, ih, phase r, block qb): columns iw_j = (qb·TN + j)·s + r, which share the phase
// (iw_j + p) mod s, and read consecutive ow = ow_0 + j. Rows: ci0..ci0+TM (g.y).
function dxKernel(tm: number, tn: number): Kernel {
  return cache(`dx:${tm}x${tn}`, () =>
    defineKernel({
      name: `conv2d_dx_${tm}x${tn}`,
      bindings: [
        { name: "dy", access: "read" },
        { name: "wt", access: "read", type: "vec4<f32>" },
        { name: "dx", access: "read_write" },
      ],
      uniforms: { ...GEOM, qb: "u32", bp4: "u32" },
      workgroupSize: [WG],
      body: String.raw`
@compute @workgroup_size(${WG}) fn main(@builtin(global_invocation_id) g: vec3u) {
  let s = p.stride;
  let ohw = p.hout * p.wout;
  let qb = g.x % p.qb;
  var t = g.x / p.qb;
  let rw = t % s;
  t = t / s;
  let ih = t % p.hin;
  let valid = t / p.hin < p.batch;
  let n = min(t / p.hin, p.batch - 1u);
  let ci0 = g.y * ${tm}u;
${
        each(tn, (j) =>
          `  let iw${j} = (qb * ${tn}u + ${j}u) * s + rw;
  let cok${j} = valid && iw${j} < p.win;`)
      }
${each2(tm, tn, (i, j) => `  var a${i}_${j} = 0.0;`)}
  let dyb = n * p.cout * ohw;
  for (var kh = (ih + p.pad) % s; kh < p.kh; kh += s) {
    let th = i32(ih + p.pad) - i32(kh);
    if (th < 0) { break; }
    let oh = u32(th) / s;
    if (oh >= p.hout) { continue; }
    for (var kw = (rw + p.pad) % s; kw < p.kw; kw += s) {
${
        each(tn, (j) =>
          `      let tw${j} = i32(iw${j} + p.pad) - i32(kw);
      let ok${j} = cok${j} && tw${j} >= 0 && u32(tw${j}) / s < p.wout;
      var di${j} = select(0u, dyb + oh * p.wout + u32(tw${j}) / s, ok${j});
      let m${j} = select(0.0, 1.0, ok${j});`)
      }
      var wi = (kh * p.kw + kw) * p.cout * p.bp4 + ci0 / 4u;
      for (var co = 0u; co < p.cout; co++) {
${each(tm / 4, (q) => `        let wv${q} = wt[wi + ${q}u];`)}
        wi += p.bp4;
${each(tn, (j) => `        let dv${j} = dy[di${j}] * m${j};\n        di${j} += ohw;`)}
${each2(tm, tn, (i, j) => `        a${i}_${j} = fma(wv${i >> 2}[${i & 3}], dv${j}, a${i}_${j});`)}
      }
    }
  }
${
        each2(
          tm,
          tn,
          (i, j) =>
            `  if (ci0 + ${i}u < p.cin && cok${j}) { dx[((n * p.cin + ci0 + ${i}u) * p.hin + ih) * p.win + iw${j}] = a${i}_${j}; }`,
        )
      }
}`,
    }) as unknown as Kernel);
}

// x: (N, Cin, H, W), dy: (N, Cout, OH, OW) → part: (S, Cout, Cin, KH, KW)
// part[s, co, ci, kh, kw] = Σ_{(n, oh) in split s} Σ_ow dy[n, co, oh, ow] · x[n, ci, oh·s−p+kh, ow·s−p+kw]
// Invocation g.x = (tap = kh·KW + kw, co block, ci block), g.y = split; TM × TN = co × ci. Neighbouring
// invocations share the tap, so the row skip and the ow range are mostly uniform across a SIMD group; with
// the tap in the lane index, small Cin (conv1: Cin = 3, 49 taps) still fills whole workgroups.
function dwKernel(tm: number, tn: number): Kernel {
  return cache(`dw:${tm}x${tn}`, () =>
    defineKernel({
      name: `conv2d_dw_${tm}x${tn}`,
      bindings: [
        { name: "x", access: "read" },
        { name: "dy", access: "read" },
        { name: "part", access: "read_write" },
      ],
      uniforms: { ...GEOM, cb: "u32", mb: "u32", chunk: "u32" },
      workgroupSize: [WG],
      body: String.raw`
@compute @workgroup_size(${WG}) fn main(@builtin(global_invocation_id) g: vec3u) {
  let s = p.stride;
  let hw = p.hin * p.win;
  let ohw = p.hout * p.wout;
  let kk = p.kh * p.kw;
  let cb = g.x % p.cb;
  let mb = (g.x / p.cb) % p.mb;
  let valid = g.x / (p.cb * p.mb) < kk;
  let tap = min(g.x / (p.cb * p.mb), kk - 1u);
  let kh = tap / p.kw;
  let kw = tap % p.kw;
  let split = g.y;
  let co0 = mb * ${tm}u;
  let ci0 = cb * ${tn}u;
  // Valid ow: 0 ≤ ow·s − p + kw < W.
  let dw = i32(kw) - i32(p.pad);
  let owlo = u32(max(0, (-dw + i32(s) - 1) / i32(s)));
  let lastw = i32(p.win) - 1 - dw; // floor division below needs lastw ≥ 0
  let owhi = select(0u, u32(min(lastw / i32(s) + 1, i32(p.wout))), lastw >= 0);
${each(tm, (i) => `  let cr${i} = min(co0 + ${i}u, p.cout - 1u);`)}
${each(tn, (j) => `  let cc${j} = min(ci0 + ${j}u, p.cin - 1u);`)}
${each2(tm, tn, (i, j) => `  var a${i}_${j} = 0.0;`)}
  let rows = p.batch * p.hout;
  let r1 = min(rows, (split + 1u) * p.chunk);
  for (var r = split * p.chunk; r < r1; r++) {
    let n = r / p.hout;
    let oh = r % p.hout;
    let ih = i32(oh * s + kh) - i32(p.pad);
    if (ih < 0 || ih >= i32(p.hin)) { continue; }
${each(tm, (i) => `    var dyi${i} = (n * p.cout + cr${i}) * ohw + oh * p.wout + owlo;`)}
${each(tn, (j) => `    var xi${j} = u32(i32((n * p.cin + cc${j}) * hw + u32(ih) * p.win + owlo * s) + dw);`)}
    for (var ow = owlo; ow < owhi; ow++) {
${each(tm, (i) => `      let dv${i} = dy[dyi${i}];\n      dyi${i} += 1u;`)}
${each(tn, (j) => `      let xv${j} = x[xi${j}];\n      xi${j} += s;`)}
${each2(tm, tn, (i, j) => `      a${i}_${j} = fma(dv${i}, xv${j}, a${i}_${j});`)}
    }
  }
  if (!valid) { return; }
${
        each2(
          tm,
          tn,
          (i, j) =>
            `  if (co0 + ${i}u < p.cout && ci0 + ${j}u < p.cin) { part[((split * p.cout + co0 + ${i}u) * p.cin + ci0 + ${j}u) * kk + tap] = a${i}_${j}; }`,
        )
      }
}`,
    }) as unknown as Kernel);
}

/**
 * Gradient of the convolution's input: dx of shape `xShape` from dy (a transposed convolution).
 *
 * @example
 * ```ts
 * const dx = conv2dBackwardInput(dy, w, x.shape, { stride: 2, padding: 1 });
 * ```
 */
export function conv2dBackwardInput(
  dy: Tensor,
  w: Tensor,
  xShape: readonly number[],
  options: { stride?: number; padding?: number } = {},
): Tensor {
  const g = conv2dGeometry(xShape, w.shape, options, "conv2d backward (input)");
  checkDy(dy, g);
  const e = dy.engine;
  const dx = e.empty(xShape, "conv2d dx");
  if (dx.size === 0) return dx;
  if (g.cout === 0 || dy.size === 0) return e.zeros(xShape, "conv2d dx");
  const info = `dy[${dy.shape}]*[${w.shape}]→[${xShape}] s${g.stride} p${g.pad}`;
  if (useReg(e)) {
    if (plainGemm(g)) {
      // dx[n] = Wᵀ · dy[n]: (Cin, Cout) · (Cout, H·W).
      dx.dispose();
      return e.scope(() =>
        matmulForward(w.reshape([g.cout, g.cin]), dy.reshape([g.n, g.cout, g.h * g.w]), { transposeA: true })
          .reshape(xShape)
      );
    }
    regBackwardInput(dy, w, g, dx, info);
    return dx;
  }
  if (isGemm(g)) {
    const [tm, tn] = conv2dTiles.gemm;
    const q = g.h * g.w;
    const vec = q % 4 === 0 && tn % 4 === 0;
    const { wt, bp4 } = packWeights(w, g, true, tm);
    e.run(gemmKernel(tm, tn, vec, { bias: false, residual: false, relu: false }), {
      bindings: [wt, dy, dx],
      uniforms: { batch: g.n, m: g.cin, k: g.cout, q, bp4 },
      workgroups: groups(e, "conv2d backward (input)", Math.ceil(g.n * q / (tn * WG)), Math.ceil(g.cin / tm)),
      info,
    });
    wt.dispose();
    return dx;
  }
  // A 4-row tile when Cin ≤ 4 (conv1), so that few lanes multiply padding.
  const [tm, tn] = [g.cin <= 4 ? 4 : conv2dTiles.dx[0], conv2dTiles.dx[1]];
  const qb = Math.ceil(Math.ceil(g.w / g.stride) / tn);
  const { wt, bp4 } = packWeights(w, g, true, tm);
  e.run(dxKernel(tm, tn), {
    bindings: [dy, wt, dx],
    uniforms: { ...geomUniforms(g), qb, bp4 },
    workgroups: groups(
      e,
      "conv2d backward (input)",
      Math.ceil(g.n * g.h * g.stride * qb / WG),
      Math.ceil(g.cin / tm),
    ),
    info,
  });
  wt.dispose();
  return dx;
}

/**
 * Gradient of the convolution's weight (split-K implicit GEMM over N·OH·OW, then a sum over splits).
 *
 * @example
 * ```ts
 * const dw = conv2dBackwardWeight(x, dy, w.shape, { stride: 1, padding: 1 });
 * ```
 */
export function conv2dBackwardWeight(
  x: Tensor,
  dy: Tensor,
  wShape: readonly number[],
  options: { stride?: number; padding?: number } = {},
): Tensor {
  const g = conv2dGeometry(x.shape, wShape, options, "conv2d backward (weight)");
  checkDy(dy, g);
  const e = x.engine;
  const wSize = g.cout * g.cin * g.kh * g.kw;
  if (wSize === 0) return e.empty(wShape, "conv2d dw");
  const rows = g.n * g.oh;
  if (rows === 0 || g.ow === 0) return e.zeros(wShape, "conv2d dw");
  if (useReg(e) && plainGemm(g)) {
    // dw = Σ_n dy[n] · x[n]ᵀ: (Cout, H·W) · (H·W, Cin) per image, then the sum over n.
    return e.scope(() => {
      const per = matmulForward(dy.reshape([g.n, g.cout, g.h * g.w]), x.reshape([g.n, g.cin, g.h * g.w]), {
        transposeB: true,
      });
      return (g.n === 1 ? per : reduce("sum", per, { axes: 0 })).reshape(wShape);
    });
  }
  if (useReg(e)) {
    return regBackwardWeight(
      x,
      dy,
      g,
      wShape,
      `x[${x.shape}] dy[${dy.shape}]→[${wShape}] s${g.stride} p${g.pad}`,
    );
  }
  // A narrower ci tile when Cin is small (conv1), so that few lanes multiply padding.
  const [tm, tn] = [conv2dTiles.dw[0], Math.min(conv2dTiles.dw[1], g.cin)];
  const mb = Math.ceil(g.cout / tm), cb = Math.ceil(g.cin / tn);
  const perSplit = mb * cb * g.kh * g.kw;
  // Split K = N·OH rows so that there are about dwTarget invocations, each split keeping ≥ 2 rows,
  // and the partials stay under 64 MiB.
  let splits = Math.max(1, Math.min(Math.ceil(conv2dTiles.dwTarget / perSplit), Math.ceil(rows / 2)));
  splits = Math.max(1, Math.min(splits, Math.floor((64 << 20) / (4 * wSize)), 65535));
  const chunk = Math.ceil(rows / splits);
  splits = Math.ceil(rows / chunk);
  const part = e.empty([splits, ...wShape], "conv2d dw partials");
  e.run(dwKernel(tm, tn), {
    bindings: [x, dy, part],
    uniforms: { ...geomUniforms(g), cb, mb, chunk },
    workgroups: groups(e, "conv2d backward (weight)", Math.ceil(perSplit / WG), splits),
    info: `x[${x.shape}] dy[${dy.shape}]→[${wShape}] s${g.stride} p${g.pad} splits ${splits}`,
  });
  if (splits === 1) {
    const dw = part.reshape(wShape);
    part.dispose();
    return dw;
  }
  const dw = reduce("sum", part, { axes: 0 });
  part.dispose();
  return dw;
}

/**
 * Gradient of the bias: the sum of dy over N, H and W.
 *
 * @example
 * ```ts
 * const db = conv2dBackwardBias(dy); // [Cout]
 * ```
 */
export function conv2dBackwardBias(dy: Tensor): Tensor {
  if (dy.rank !== 4) {
    throw new TypeError(`Cannot conv2d backward (bias) of dy with shape [${dy.shape}]: dy must have rank 4`);
  }
  return reduce("sum", dy, { axes: [0, 2, 3] });
}

function checkDy(dy: Tensor, g: Conv2dGeometry): void {
  const want = [g.n, g.cout, g.oh, g.ow];
  if (dy.rank !== 4 || dy.shape.some((d, i) => d !== want[i])) {
    throw new RangeError(
      `Cannot conv2d backward with dy of shape [${dy.shape}]: the convolution's output has shape [${want}]`,
    );
  }
}

// ------------------------------------------------------------------------------------------ autograd

interface OpOptions {
  stride: number;
  padding: number;
  relu: boolean;
}
interface Saved {
  /** The output, kept for the ReLU mask (only with `relu`). */
  y: Tensor | null;
}

// Inputs: x, w, bias, residual. x and w themselves are what backward needs (the tape keeps inputs).
const conv2dOp = defineOp<[Tensor, Tensor, Tensor | null, Tensor | null], OpOptions, Saved>({
  name: "conv2d",
  forward: ([x, w, bias, residual], o) => {
    const y = conv2dForward(x, w, { stride: o.stride, padding: o.padding, bias, residual, relu: o.relu });
    return { output: y, saved: { y: o.relu ? y : null } };
  },
  backward: (gy, saved, [x, w, bias, residual], o) =>
    gy.engine.scope(() => {
      const g = saved.y ? binary("relu_grad", gy, saved.y) : gy;
      const geo = { stride: o.stride, padding: o.padding };
      return [
        needsGrad(x) ? conv2dBackwardInput(g, w, x.shape, geo) : null,
        needsGrad(w) ? conv2dBackwardWeight(x, g, w.shape, geo) : null,
        bias && needsGrad(bias) ? conv2dBackwardBias(g) : null,
        residual && needsGrad(residual) ? g.reshape(g.shape) : null,
      ];
    }),
});

/**
 * 2-D convolution (NCHW), differentiable in x, w, bias and residual, with PyTorch semantics:
 * `y = relu?(conv(x, w, stride, padding) + bias + residual)`.
 *
 * @example
 * ```ts
 * const y = conv2d(x, w, { stride: 1, padding: 1, bias: b });          // x: [N,64,56,56], w: [64,64,3,3]
 * const out = conv2d(h, w3, { residual: shortcut, relu: true });       // fused ResNet block tail
 * ```
 */
export function conv2d(x: Tensor, w: Tensor, options: Conv2dOptions = {}): Tensor {
  return conv2dOp([x, w, options.bias ?? null, options.residual ?? null], {
    stride: options.stride ?? 1,
    padding: options.padding ?? 0,
    relu: !!options.relu,
  });
}

// ------------------------------------------------------------------------------------------ CPU reference

/**
 * CPU reference of the forward pass (float64 accumulation), with the same epilogue.
 *
 * @example
 * ```ts
 * const { data, shape } = conv2dCpu(x, [1, 3, 8, 8], w, [4, 3, 3, 3], { padding: 1 });
 * ```
 */
export function conv2dCpu(
  x: Float32Array,
  xShape: readonly number[],
  w: Float32Array,
  wShape: readonly number[],
  options: {
    stride?: number;
    padding?: number;
    bias?: Float32Array;
    residual?: Float32Array;
    relu?: boolean;
  } = {},
): { data: Float32Array; shape: number[] } {
  const g = conv2dGeometry(xShape, wShape, options);
  const { n: N, cin, h: H, w: W, cout, kh: KH, kw: KW, stride: s, pad, oh: OH, ow: OW } = g;
  const y = new Float32Array(N * cout * OH * OW);
  for (let n = 0; n < N; n++) {
    for (let co = 0; co < cout; co++) {
      for (let oh = 0; oh < OH; oh++) {
        for (let ow = 0; ow < OW; ow++) {
          let acc = options.bias ? options.bias[co] : 0;
          for (let ci = 0; ci < cin; ci++) {
            for (let kh = 0; kh < KH; kh++) {
              const ih = oh * s - pad + kh;
              if (ih < 0 || ih >= H) continue;
              for (let kw = 0; kw < KW; kw++) {
                const iw = ow * s - pad + kw;
                if (iw < 0 || iw >= W) continue;
                acc += x[((n * cin + ci) * H + ih) * W + iw] * w[((co * cin + ci) * KH + kh) * KW + kw];
              }
            }
          }
          const o = ((n * cout + co) * OH + oh) * OW + ow;
          if (options.residual) acc += options.residual[o];
          y[o] = options.relu ? Math.max(acc, 0) : acc;
        }
      }
    }
  }
  return { data: y, shape: [N, cout, OH, OW] };
}

/**
 * CPU reference of the backward pass (float64 accumulation): gradients of x, w and the bias given dy.
 *
 * @example
 * ```ts
 * const { dx, dw, db } = conv2dBackwardCpu(x, [1, 3, 8, 8], w, [4, 3, 3, 3], dy, { padding: 1 });
 * ```
 */
export function conv2dBackwardCpu(
  x: Float32Array,
  xShape: readonly number[],
  w: Float32Array,
  wShape: readonly number[],
  dy: Float32Array,
  options: { stride?: number; padding?: number } = {},
): { dx: Float32Array; dw: Float32Array; db: Float32Array } {
  const g = conv2dGeometry(xShape, wShape, options);
  const { n: N, cin, h: H, w: W, cout, kh: KH, kw: KW, stride: s, pad, oh: OH, ow: OW } = g;
  const dx = new Float64Array(x.length);
  const dw = new Float64Array(w.length);
  const db = new Float64Array(cout);
  for (let n = 0; n < N; n++) {
    for (let co = 0; co < cout; co++) {
      for (let oh = 0; oh < OH; oh++) {
        for (let ow = 0; ow < OW; ow++) {
          const d = dy[((n * cout + co) * OH + oh) * OW + ow];
          db[co] += d;
          for (let ci = 0; ci < cin; ci++) {
            for (let kh = 0; kh < KH; kh++) {
              const ih = oh * s - pad + kh;
              if (ih < 0 || ih >= H) continue;
              for (let kw = 0; kw < KW; kw++) {
                const iw = ow * s - pad + kw;
                if (iw < 0 || iw >= W) continue;
                const xi = ((n * cin + ci) * H + ih) * W + iw;
                const wi = ((co * cin + ci) * KH + kh) * KW + kw;
                dx[xi] += d * w[wi];
                dw[wi] += d * x[xi];
              }
            }
          }
        }
      }
    }
  }
  return { dx: Float32Array.from(dx), dw: Float32Array.from(dw), db: Float32Array.from(db) };
}
