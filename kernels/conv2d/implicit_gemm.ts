/**
 * The "implicit_gemm" strategy: convolutions as implicit GEMMs with a TM×TN register block per invocation
 * and 64-invocation workgroups; the default on GPUs. Variant ids: `implicit_gemm` (8×8 blocks),
 * `implicit_gemm/<TM>x<TN>` (TM a multiple of 4, both ≤ 16), plus `/split<N>` (the weight gradient's
 * split-K aims for N invocations; default 16 384).
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
 * - Weights are first packed (one small dispatch) to (KH·KW, Cin, Cout⁺) for the forward and
 *   (KH·KW, Cout, Cin⁺) for the input gradient, zero-padded to the row tile, so every invocation reads its
 *   TM weights as aligned vec4 without bounds checks.
 *
 * @module
 */
import { type Engine, grid } from "../../engine/engine.ts";
import { single, type VariantParams, variants } from "../../engine/kernel.ts";
import type { Tensor } from "../../engine/tensor.ts";
import { LINEAR_ID, linearEntry, wgsl } from "../_wgsl.ts";
import {
  type Conv2dCall,
  type Conv2dFootprint,
  type Conv2dGeometry,
  type Conv2dOptions,
  type Conv2dPass,
  type Conv2dStrategy,
  each,
  each2,
  type Epilogue,
  epilogueBindings,
  epilogueFn,
  epilogueOf,
  epilogueTensors,
  GEOM,
  geomUniforms,
  groups,
  ioElements,
  isGemm,
  MAX_LOOP_STEPS,
  packedWeight,
  splitParam,
  sumSplits,
  WG,
} from "./common.ts";

/** Parameters of an `implicit_gemm` variant. */
export interface ImplicitGemmConfig {
  /** Register block: TM rows (a multiple of 4) × TN columns per invocation, for every pass. */
  tm: number;
  tn: number;
  /** Invocations the weight-gradient split-K aims for (more splits → more parallelism, more partials). */
  dwTarget: number;
}

// ------------------------------------------------------------------------------------------ weights

// w: (Cout, Cin, KH, KW) → wt: (KH·KW, A, BP), zero-padded along b to BP (a multiple of the row tile), so
// the kernels read TM consecutive b as aligned vec4 without bounds checks.
// Forward: (a, b) = (ci, co); input gradient (`swap`): (a, b) = (co, ci).
const packKernel = single("conv2d_pack_w", () => ({
  bindings: [{ name: "w", access: "read" }, { name: "wt", access: "read_write" }],
  uniforms: { cout: "u32", cin: "u32", kk: "u32", swap: "u32", bp: "u32", total: "u32" },
  workgroupSize: [WG],
  body: wgsl`
${linearEntry(WG)} {
  ${LINEAR_ID}
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
}));

/** Pack w for the forward (`swap` false) or input-gradient kernels; returns wt and BP / 4. */
function packWeights(w: Tensor, g: Conv2dGeometry, swap: boolean, tm: number): { wt: Tensor; bp4: number } {
  const e = w.engine;
  const nb = swap ? g.cin : g.cout, na = swap ? g.cout : g.cin;
  const bp = Math.max(1, Math.ceil(nb / tm)) * tm;
  const total = g.kh * g.kw * na * bp;
  const wt = e.empty([total], "conv2d packed w");
  e.run(packKernel(), {
    bindings: [w, wt],
    uniforms: { cout: g.cout, cin: g.cin, kk: g.kh * g.kw, swap: swap ? 1 : 0, bp, total },
    workgroups: grid(total, WG),
    info: `[${w.shape}]${swap ? " swapped" : ""}`,
  });
  return { wt, bp4: bp / 4 };
}

/** The forward's packed weight (cached for a constant weight): the layout depends on TM only. */
const forwardWeight = (w: Tensor, g: Conv2dGeometry, o: Conv2dOptions, tm: number) =>
  packedWeight(w, o.constantWeight, `implicit_gemm tm${tm}`, () => packWeights(w, g, false, tm).wt);

// ------------------------------------------------------------------------------------------ forward

interface TileParams extends VariantParams {
  tm: number;
  tn: number;
}
interface ForwardParams extends TileParams, Epilogue {}

// x: (N, Cin, H, W), w: (Cout, Cin, KH, KW) → y: (N, Cout, OH, OW)
// Invocation (g.x, g.y): output positions col0..col0+TN of the flattened (n, oh, ow), channels
// co0..co0+TM. Out-of-range rows/columns load clamped addresses and skip the store, so the K loop has
// no divergent control flow.
const forwardKernel = variants("conv2d_fwd", ({ tm, tn, ...epi }: ForwardParams) => ({
  bindings: [
    { name: "x", access: "read" },
    { name: "wt", access: "read", type: "vec4<f32>" },
    ...epilogueBindings(epi),
    { name: "y", access: "read_write" },
  ],
  uniforms: { ...GEOM, bp4: "u32" },
  workgroupSize: [WG],
  body: wgsl`
${epilogueFn(epi)}
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
    y[o] = epilogue(a${i}_${j}, co0 + ${i}u, o);
  }`)
  }
}`,
}));

interface GemmParams extends TileParams, Epilogue {
  /** b is read as vec4 along q (Q % 4 = 0, TN % 4 = 0). */
  vec: boolean;
}

// Batched GEMM for 1×1 stride-1 convs: y[n, m, q] = Σ_k a[m·sam + k·sak] · b[n, k, q] (+ epilogue),
// b: (N, K, Q). Forward: a = w (sam = Cin, sak = 1); input gradient: a = wᵀ (sam = 1, sak = Cin).
// With `vec`, Q % 4 = 0 and b is read as vec4 along q (groups of 4 columns never straddle two n).
const gemmKernel = variants("conv2d_gemm", ({ tm, tn, vec, ...epi }: GemmParams) => {
  const quads = Math.floor(tn / 4);
  return {
    bindings: [
      { name: "a", access: "read", type: "vec4<f32>" },
      { name: "b", access: "read", type: vec ? "vec4<f32>" : "f32" },
      ...epilogueBindings(epi),
      { name: "y", access: "read_write" },
    ],
    uniforms: { batch: "u32", m: "u32", k: "u32", q: "u32", bp4: "u32" },
    workgroupSize: [WG],
    body: wgsl`
${epilogueFn(epi)}
@compute @workgroup_size(${WG}) fn main(@builtin(global_invocation_id) g: vec3u) {
  let P = p.batch * p.q;
  let q4 = p.q / 4u;
  let col0 = g.x * ${tn}u;
  let m0 = g.y * ${tm}u;
#if ${vec}
${
      each(quads, (gq) =>
        `  let c${gq} = min(col0 + ${4 * gq}u, P - 4u);
  let n${gq} = c${gq} / p.q;
  let r${gq} = c${gq} % p.q;
  var bi${gq} = (n${gq} * p.k * p.q + r${gq}) / 4u;`)
    }
#else
${
      each(tn, (j) =>
        `  let c${j} = min(col0 + ${j}u, P - 1u);
  let n${j} = c${j} / p.q;
  let r${j} = c${j} % p.q;
  var bi${j} = n${j} * p.k * p.q + r${j};`)
    }
#endif
  var ai = m0 / 4u;
${each2(tm, tn, (i, j) => `  var a${i}_${j} = 0.0;`)}
  for (var kk = 0u; kk < p.k; kk++) {
${each(tm / 4, (q) => `    let av${q} = a[ai + ${q}u];`)}
    ai += p.bp4;
#if ${vec}
${each(quads, (gq) => `    let bv${gq} = b[bi${gq}];\n    bi${gq} += q4;`)}
${each2(tm, tn, (i, j) => `    a${i}_${j} = fma(av${i >> 2}[${i & 3}], bv${j >> 2}[${j & 3}], a${i}_${j});`)}
#else
${each(tn, (j) => `    let bv${j} = b[bi${j}];\n    bi${j} += p.q;`)}
${each2(tm, tn, (i, j) => `    a${i}_${j} = fma(av${i >> 2}[${i & 3}], bv${j}, a${i}_${j});`)}
#endif
  }
${
      each2(tm, tn, (i, j) => {
        // Output column j: its image n and position q.
        const [n, q] = vec ? [`n${j >> 2}`, `r${j >> 2} + ${j & 3}u`] : [`n${j}`, `r${j}`];
        return `  if (m0 + ${i}u < p.m && col0 + ${j}u < P) {
    let o = (${n} * p.m + m0 + ${i}u) * p.q + ${q};
    y[o] = epilogue(a${i}_${j}, m0 + ${i}u, o);
  }`;
      })
    }
}`,
  };
});

function forward(
  x: Tensor,
  w: Tensor,
  g: Conv2dGeometry,
  o: Conv2dOptions,
  c: ImplicitGemmConfig,
  call: Conv2dCall,
): Tensor {
  const e = x.engine;
  const y = e.empty([g.n, g.cout, g.oh, g.ow], "conv2d");
  const epi = epilogueOf(o);
  const { tm, tn } = c;
  const bp4 = Math.max(1, Math.ceil(g.cout / tm)) * tm / 4;
  const { t: wt, temporary } = forwardWeight(w, g, o, tm);
  const info = `${call.info} ${call.variant}`;
  if (isGemm(g)) {
    const q = g.h * g.w;
    const vec = q % 4 === 0 && tn % 4 === 0;
    e.run(gemmKernel({ tm, tn, vec, ...epi }), {
      bindings: [wt, x, ...epilogueTensors(o), y],
      uniforms: { batch: g.n, m: g.cout, k: g.cin, q, bp4 },
      workgroups: groups(e, call, Math.ceil(g.n * q / (tn * WG)), Math.ceil(g.cout / tm)),
      info,
    });
  } else {
    e.run(forwardKernel({ tm, tn, ...epi }), {
      bindings: [x, wt, ...epilogueTensors(o), y],
      uniforms: { ...geomUniforms(g), bp4 },
      workgroups: groups(e, call, Math.ceil(g.n * g.oh * g.ow / (tn * WG)), Math.ceil(g.cout / tm)),
      info,
    });
  }
  if (temporary) wt.dispose();
  return y;
}

// ------------------------------------------------------------------------------------------ backward

// dy: (N, Cout, OH, OW), w: (Cout, Cin, KH, KW) → dx: (N, Cin, H, W)
// dx[n, ci, ih, iw] = Σ_{co, kh, kw : (ih+p−kh) = s·oh, (iw+p−kw) = s·ow} dy[n, co, oh, ow] · w[co, ci, kh, kw]
// Invocation g.x = (n, ih, phase r, block qb): columns iw_j = (qb·TN + j)·s + r, which share the phase
// (iw_j + p) mod s, and read consecutive ow = ow_0 + j. Rows: ci0..ci0+TM (g.y).
const dxKernel = variants("conv2d_dx", ({ tm, tn }: TileParams) => ({
  bindings: [
    { name: "dy", access: "read" },
    { name: "wt", access: "read", type: "vec4<f32>" },
    { name: "dx", access: "read_write" },
  ],
  uniforms: { ...GEOM, qb: "u32", bp4: "u32" },
  workgroupSize: [WG],
  body: wgsl`
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
}));

function backwardInput(
  dy: Tensor,
  w: Tensor,
  g: Conv2dGeometry,
  c: ImplicitGemmConfig,
  call: Conv2dCall,
): Tensor {
  const e = dy.engine;
  const dx = e.empty([g.n, g.cin, g.h, g.w], "conv2d dx");
  const info = `${call.info} ${call.variant}`;
  if (isGemm(g)) {
    const { tm, tn } = c;
    const q = g.h * g.w;
    const vec = q % 4 === 0 && tn % 4 === 0;
    const { wt, bp4 } = packWeights(w, g, true, tm);
    e.run(gemmKernel({ tm, tn, vec, bias: false, residual: false, relu: false }), {
      bindings: [wt, dy, dx],
      uniforms: { batch: g.n, m: g.cin, k: g.cout, q, bp4 },
      workgroups: groups(e, call, Math.ceil(g.n * q / (tn * WG)), Math.ceil(g.cin / tm)),
      info,
    });
    wt.dispose();
    return dx;
  }
  // A 4-row tile when Cin ≤ 4 (conv1), so that few lanes multiply padding.
  const [tm, tn] = [g.cin <= 4 ? 4 : c.tm, c.tn];
  const qb = Math.ceil(Math.ceil(g.w / g.stride) / tn);
  const { wt, bp4 } = packWeights(w, g, true, tm);
  e.run(dxKernel({ tm, tn }), {
    bindings: [dy, wt, dx],
    uniforms: { ...geomUniforms(g), qb, bp4 },
    workgroups: groups(e, call, Math.ceil(g.n * g.h * g.stride * qb / WG), Math.ceil(g.cin / tm)),
    info,
  });
  wt.dispose();
  return dx;
}

// x: (N, Cin, H, W), dy: (N, Cout, OH, OW) → part: (S, Cout, Cin, KH, KW)
// part[s, co, ci, kh, kw] = Σ_{(n, oh) in split s} Σ_ow dy[n, co, oh, ow] · x[n, ci, oh·s−p+kh, ow·s−p+kw]
// Invocation g.x = (tap = kh·KW + kw, co block, ci block), g.y = split; TM × TN = co × ci. Neighbouring
// invocations share the tap, so the row skip and the ow range are mostly uniform across a SIMD group; with
// the tap in the lane index, small Cin (conv1: Cin = 3, 49 taps) still fills whole workgroups.
const dwKernel = variants("conv2d_dw", ({ tm, tn }: TileParams) => ({
  bindings: [
    { name: "x", access: "read" },
    { name: "dy", access: "read" },
    { name: "part", access: "read_write" },
  ],
  uniforms: { ...GEOM, cb: "u32", mb: "u32", chunk: "u32" },
  workgroupSize: [WG],
  body: wgsl`
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
}));

/**
 * Splits of the weight gradient's K = N·OH rows (with a narrower ci tile when Cin is small, conv1, so that
 * few lanes multiply padding): about dwTarget invocations, each split keeping ≥ 2 rows and the partials
 * under 64 MiB and within one binding, but enough that no invocation loops more than MAX_LOOP_STEPS times
 * over rows and columns (the footprint then counts the partials).
 */
function dwSplits(e: Engine, g: Conv2dGeometry, c: ImplicitGemmConfig): { splits: number; chunk: number } {
  const rows = g.n * g.oh;
  const wSize = g.cout * g.cin * g.kh * g.kw;
  const perSplit = Math.ceil(g.cout / c.tm) * Math.ceil(g.cin / Math.min(c.tn, g.cin)) * g.kh * g.kw;
  let splits = Math.max(1, Math.min(Math.ceil(c.dwTarget / perSplit), Math.ceil(rows / 2)));
  splits = Math.max(1, Math.min(splits, Math.floor(Math.min(64 << 20, e.maxBinding) / (4 * wSize)), 65535));
  splits = Math.max(splits, Math.ceil(rows / Math.max(1, Math.floor(MAX_LOOP_STEPS / (g.ow + 1)))));
  const chunk = Math.ceil(rows / splits);
  return { splits: Math.ceil(rows / chunk), chunk };
}

function backwardWeight(
  x: Tensor,
  dy: Tensor,
  g: Conv2dGeometry,
  c: ImplicitGemmConfig,
  call: Conv2dCall,
): Tensor {
  const e = x.engine;
  const wShape = [g.cout, g.cin, g.kh, g.kw];
  const [tm, tn] = [c.tm, Math.min(c.tn, g.cin)];
  const mb = Math.ceil(g.cout / tm), cb = Math.ceil(g.cin / tn);
  const perSplit = mb * cb * g.kh * g.kw;
  const { splits, chunk } = dwSplits(e, g, c);
  const part = e.empty([splits, ...wShape], "conv2d dw partials");
  e.run(dwKernel({ tm, tn }), {
    bindings: [x, dy, part],
    uniforms: { ...geomUniforms(g), cb, mb, chunk },
    workgroups: groups(e, call, Math.ceil(perSplit / WG), splits),
    info: `${call.info} ${call.variant} splits ${splits}`,
  });
  return sumSplits(part, wShape);
}

// ------------------------------------------------------------------------------------------ footprint

/** Elements of a packed weight (KH·KW, A, BP): BP = B rounded up to the row tile TM. */
const packedElements = (g: Conv2dGeometry, a: number, b: number, tm: number) =>
  g.kh * g.kw * a * Math.max(1, Math.ceil(b / tm)) * tm;

/**
 * The largest binding and workgroup count of a pass: x, y, w (ioElements), the packed weight (the input
 * gradient's 4-row tile for Cin ≤ 4 packs less than TM rows) and the weight gradient's partials. Along x,
 * the forward and the GEMMs take TN·64 columns per workgroup, the input gradient 64 (n, ih, phase, column
 * block) rows; along y the weight gradient runs its splits.
 */
function footprint(e: Engine, pass: Conv2dPass, g: Conv2dGeometry, c: ImplicitGemmConfig): Conv2dFootprint {
  const io = ioElements(g);
  if (pass === "fwd") {
    return {
      elements: Math.max(io, packedElements(g, g.cin, g.cout, c.tm)),
      groups: Math.max(Math.ceil(g.n * g.oh * g.ow / (c.tn * WG)), Math.ceil(g.cout / c.tm)),
    };
  }
  if (pass === "dx") {
    const cols = isGemm(g)
      ? Math.ceil(g.n * g.h * g.w / (c.tn * WG))
      : Math.ceil(g.n * g.h * g.stride * Math.ceil(Math.ceil(g.w / g.stride) / c.tn) / WG);
    return {
      elements: Math.max(io, packedElements(g, g.cout, g.cin, c.tm)),
      groups: Math.max(cols, Math.ceil(g.cin / 4)),
    };
  }
  const perSplit = Math.ceil(g.cout / c.tm) * Math.ceil(g.cin / Math.min(c.tn, g.cin)) * g.kh * g.kw;
  const { splits } = dwSplits(e, g, c);
  return {
    elements: Math.max(io, splits * g.cout * g.cin * g.kh * g.kw),
    groups: Math.max(Math.ceil(perSplit / WG), splits),
  };
}

// ------------------------------------------------------------------------------------------ strategy

/** The register block of `implicit_gemm` without a `<TM>x<TN>` param. */
const IMPLICIT_GEMM_TILES = [8, 8] as const;

/**
 * The `implicit_gemm` strategy (see the module comment); params `<TM>x<TN>` and `split<N>`.
 *
 * @example
 * ```ts
 * const c = implicitGemm.config(["4x8"]); // { tm: 4, tn: 8, dwTarget: 16384 }
 * ```
 */
export const implicitGemm: Conv2dStrategy<ImplicitGemmConfig> = {
  config(params) {
    const c: ImplicitGemmConfig = { tm: IMPLICIT_GEMM_TILES[0], tn: IMPLICIT_GEMM_TILES[1], dwTarget: 16384 };
    for (const part of params) {
      const tiles = /^(\d+)x(\d+)$/.exec(part);
      const split = splitParam(part);
      if (tiles) {
        const [tm, tn] = [Number(tiles[1]), Number(tiles[2])];
        if (tm % 4 !== 0 || tm < 4 || tm > 16 || tn < 1 || tn > 16) {
          throw new RangeError(`"${part}": TM must be 4, 8, 12 or 16 and TN 1 to 16`);
        }
        Object.assign(c, { tm, tn });
      } else if (split !== undefined) {
        c.dwTarget = split;
      } else {
        throw new RangeError(`unknown parameter "${part}" (implicit_gemm takes <TM>x<TN> and split<N>)`);
      }
    }
    return c;
  },
  unsupported: () => null,
  footprint,
  forward,
  backwardInput,
  backwardWeight,
};
