/**
 * Winograd convolution F(m×m, 3×3), m = 2 or 4, for the stride-1 3×3 convolutions (half of ResNet-50's
 * FLOPs). Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016
 * (https://arxiv.org/abs/1509.09308): with α = m + 2, an m×m output tile is
 *
 *   Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A       d: α×α input tile, g: 3×3 filter, Σ over input channels inside [ ]
 *
 * so the α² products per tile and channel pair become α² batched GEMMs over the channels:
 * 1. input transform   x (N, C, H, W)       → V (α², T⁴, C⁴)       V[ξ][t][c] = (Bᵀ d_{t,c} B)[ξ]
 * 2. weight transform  w (R, C, 3, 3)       → U (α², R⁴, C⁴)       U[ξ][r][c] = (G g_{r,c} Gᵀ)[ξ]
 * 3. α² GEMMs (kernels/matmul.ts)           → M (α², T⁴, R⁴)       M[ξ] = V[ξ] · U[ξ]ᵀ
 * 4. output transform + epilogue            → y (N, R, OH, OW)     y_tile = Aᵀ M A (+ bias, + residual, ReLU)
 * T = N·⌈OH/m⌉·⌈OW/m⌉ tiles; ⁴ marks a dimension zero-padded to a multiple of 4 so that every transform
 * reads and writes vec4 (four channels or four tiles per invocation) and the GEMMs read vec4 along K.
 * The GEMM does 2·α²·T·R·C FLOPs against the direct 18·N·OH·OW·R·C: 2.25× fewer for m = 2, 4× for m = 4
 * (less the tile padding of ragged OH, OW).
 *
 * - Input gradient (stride 1): dx is the stride-1 3×3 correlation of dy with the spatially flipped,
 *   in/out-transposed weights at padding 2 − p, so it runs through the forward with a flipped weight
 *   transform.
 * - Weight gradient: the adjoint of Y = Aᵀ[(G g Gᵀ) ⊙ V]A in g is dg = Gᵀ[(A dY Aᵀ) ⊙ V]G (this is
 *   F(3×3, m×m) with the roles of the matrices exchanged), summed over tiles: the same input transform V,
 *   a transform of dy to Z with Z[ξ][r][t] = (A dY_{t,r} Aᵀ)[ξ], α² GEMMs P[ξ] = Z[ξ] · V[ξ] (K = T, split
 *   into runs of ~384 tiles: α²·S GEMMs, long K runs are slow on llvmpipe), then dw = Gᵀ (Σ_S P) G. Same
 *   FLOP saving as the forward.
 *
 * Large batches run in chunks of images so that every intermediate fits one storage binding; the weight
 * gradient accumulates over chunks. Every output is a new tensor.
 *
 * Rounding: the transforms mix up to α² values with coefficients up to 5 (Bᵀ) and 8 (Aᵀ) at m = 4, so the
 * float32 error, measured as for the direct convolution against Σ|x||w| (`TOL.conv2d`), is about the direct
 * sum's at m = 2 and ~10× it at m = 4 on zero-mean data; both stay within `TOL.conv2d` (m = 4 at ≤ 1/3 of
 * its bound on the shapes tested, tests/kernels/winograd_test.ts).
 *
 * @module
 */
import { type Engine, type EngineTexture, grid } from "../../engine/engine.ts";
import { type VariantParams, variants } from "../../engine/kernel.ts";
import { Tensor } from "../../engine/tensor.ts";
import { flatFits, flatLoad, flatTexel, flatTexture } from "../../engine/flat.ts";
import { LINEAR_ID, linearEntry, wgsl } from "../_wgsl.ts";
import { matmulForward } from "../matmul.ts";
import { toNhwc } from "./blocked.ts";
import {
  type Conv2dGeometry,
  type Conv2dOptions,
  type Conv2dStrategy,
  ioElements,
  packedWeight,
} from "./common.ts";

/** Output tile size m of F(m×m, 3×3). */
export type WinogradTile = 2 | 4;

/** Strategy settings of the Winograd launchers (tests, benchmarks and the tuning table). */
export interface WinogradConfig {
  /**
   * Output tile m of F(m×m, 3×3): 4 (default: 4× fewer GEMM FLOPs than direct, the fastest on llvmpipe) or 2
   * (2.25× fewer, rounding error as small as the direct convolution's).
   */
  tile?: WinogradTile;
  /** Images per pass (default: as many as keep every intermediate within one storage binding). */
  imagesPerChunk?: number;
}

type Mat = readonly (readonly number[])[];

/**
 * Transform matrices of F(m×m, 3×3) (Lavin & Gray 2016, §4.1 and §4.2): Bᵀ (α×α), G (α×3), Aᵀ (m×α), for
 * the correlation y[i] = Σ_k d[i + k]·g[k]; interpolation points 0, ±1 (m = 2) and 0, ±1, ±2 (m = 4), and ∞.
 *
 * @example
 * ```ts
 * const { bt, g, at } = WINOGRAD_MATRICES[2]; // 4×4, 4×3, 2×4
 * ```
 */
export const WINOGRAD_MATRICES: Record<WinogradTile, { bt: Mat; g: Mat; at: Mat }> = {
  2: {
    bt: [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
    g: [[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]],
    at: [[1, 1, 1, 0], [0, 1, -1, -1]],
  },
  4: {
    bt: [
      [4, 0, -5, 0, 1, 0],
      [0, -4, -4, 1, 1, 0],
      [0, 4, -4, -1, 1, 0],
      [0, -2, -1, 2, 1, 0],
      [0, 2, -1, -2, 1, 0],
      [0, 4, 0, -5, 0, 1],
    ],
    g: [
      [1 / 4, 0, 0],
      [-1 / 6, -1 / 6, -1 / 6],
      [-1 / 6, 1 / 6, -1 / 6],
      [1 / 24, 1 / 12, 1 / 6],
      [1 / 24, -1 / 12, 1 / 6],
      [0, 0, 1],
    ],
    at: [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
  },
};

/**
 * Whether the Winograd launchers handle this convolution: 3×3, stride 1, padding ≤ 2 (the input gradient
 * runs at padding 2 − p), at least one channel in and out.
 *
 * @example
 * ```ts
 * winogradSupports(conv2dGeometry([8, 64, 56, 56], [64, 64, 3, 3], { padding: 1 })); // true
 * ```
 */
export function winogradSupports(g: Conv2dGeometry): boolean {
  return g.kh === 3 && g.kw === 3 && g.stride === 1 && g.pad <= 2 && g.cin > 0 && g.cout > 0;
}

// ------------------------------------------------------------------------------------------ WGSL generation

const WG = 64;
const c4 = (c: number) => Math.ceil(c / 4) * 4;
const tileOf = (c: WinogradConfig): WinogradTile => c.tile ?? 4;
/** Tiles per split of the weight gradient's GEMMs. */
const SPLIT_TILES = 384;
const range = (n: number) => [...Array(n).keys()];
const transpose = (a: Mat): number[][] => a[0].map((_, j) => a.map((row) => row[j]));

/** WGSL literal of a coefficient (f32 context). */
const lit = (c: number) => (Number.isInteger(c) ? c.toFixed(1) : String(c));

/** `Σ_i c[i]·terms[i]` on vec4 values, with zeros skipped and ±1 as a plain sum or difference. */
function lin(c: readonly number[], terms: readonly string[]): string {
  let s = "";
  c.forEach((ci, i) => {
    if (ci === 0) return;
    const t = Math.abs(ci) === 1 ? terms[i] : `${lit(Math.abs(ci))} * ${terms[i]}`;
    s += s === "" ? (ci < 0 ? `-${t}` : t) : ci < 0 ? ` - ${t}` : ` + ${t}`;
  });
  return s === "" ? "vec4<f32>(0.0)" : s;
}

/**
 * WGSL `let`s computing `out = L · X · Rᵀ` (X: rows × cols of vec4 names), unrolled with constant
 * coefficients; returns the lines and the names of `out` (L.length × R.length).
 */
function sandwich(name: string, L: Mat, X: readonly string[][], R: Mat): { lines: string; out: string[][] } {
  const lines: string[] = [];
  const tmp = L.map((row, r) =>
    X[0].map((_, j) => {
      lines.push(`  let ${name}t${r}_${j} = ${lin(row, X.map((x) => x[j]))};`);
      return `${name}t${r}_${j}`;
    })
  );
  const out = tmp.map((trow, r) =>
    R.map((rrow, s) => {
      lines.push(`  let ${name}${r}_${s} = ${lin(rrow, trow)};`);
      return `${name}${r}_${s}`;
    })
  );
  return { lines: lines.join("\n"), out };
}

const names = (p: string, rows: number, cols: number) =>
  range(rows).map((a) => range(cols).map((b) => `${p}${a}_${b}`));

interface TileParams extends VariantParams {
  m: WinogradTile;
}

// x: (N, C, H, W) → v: (α², TP, C⁴) as vec4 over channels. Invocation (t, q): tile t = (img, th, tw), channels
// 4q..4q+3; reads its α×α window at (th·m − pad, tw·m − pad), zero outside the image, outside C and for the
// padding tiles t ≥ T; writes v[ξ][t][q] = (Bᵀ d B)[ξ] for the α² ξ.
const inputKernel = variants("winograd_input", (p: TileParams) => {
  const { m } = p, a = m + 2, B = WINOGRAD_MATRICES[m].bt;
  const loads = range(a).flatMap((i) =>
    range(a).map((j) =>
      `  let d${i}_${j} = ld(base + u32(h0 + ${i}) * p.w + u32(w0 + ${j}), rok${i} && cok${j});`
    )
  );
  const ok = range(a).map((i) =>
    `  let rok${i} = t < p.t && h0 + ${i} >= 0 && h0 + ${i} < i32(p.h);` +
    ` let cok${i} = w0 + ${i} >= 0 && w0 + ${i} < i32(p.w);`
  );
  const v = sandwich("v", B, names("d", a, a), B);
  return {
    bindings: [{ name: "x", access: "read" }, { name: "v", access: "read_write", type: "vec4<f32>" }],
    uniforms: {
      xOff: "u32",
      c: "u32",
      h: "u32",
      w: "u32",
      pad: "u32",
      tilesW: "u32",
      tilesHW: "u32",
      t: "u32",
      tp: "u32",
      cq: "u32",
    },
    workgroupSize: [WG],
    body: wgsl`
var<private> lane: vec4<bool>;
var<private> plane: u32;
// Four channels of one input position (0 where masked); indices are clamped so masked loads stay in range.
fn ld(at: u32, inside: bool) -> vec4<f32> {
  let last = arrayLength(&x) - 1u;
  let k = select(vec4<bool>(false), lane, inside);
  return vec4<f32>(select(0.0, x[min(at, last)], k.x), select(0.0, x[min(at + plane, last)], k.y),
    select(0.0, x[min(at + 2u * plane, last)], k.z), select(0.0, x[min(at + 3u * plane, last)], k.w));
}
${linearEntry(WG)} {
  ${LINEAR_ID}
  if (i >= p.tp * p.cq) { return; }
  let q = i % p.cq;
  let t = i / p.cq;
  let img = t / p.tilesHW;
  let rem = t % p.tilesHW;
  let h0 = i32(rem / p.tilesW * ${m}u) - i32(p.pad);
  let w0 = i32(rem % p.tilesW * ${m}u) - i32(p.pad);
  let c0 = q * 4u;
  plane = p.h * p.w;
  lane = vec4<bool>(c0 < p.c, c0 + 1u < p.c, c0 + 2u < p.c, c0 + 3u < p.c);
  let base = p.xOff + (img * p.c + c0) * plane;
${ok.join("\n")}
${loads.join("\n")}
${v.lines}
${v.out.flat().map((n, xi) => `  v[(${xi}u * p.tp + t) * p.cq + q] = ${n};`).join("\n")}
}`,
  };
});

// The same from xp: (N, HP, WP, C⁴), x channels-last with zeros at least `pad` wide around it and below
// and right of it as far as the last tile reads (toNhwc), read as a flat texture X of texels (4 channels):
// one texel fetch per window position and no masks, where inputKernel makes 4 bounds-checked storage loads
// (a loop over the SIMD lanes each on llvmpipe). Padding tiles t ≥ T write zeros. The same values.
const inputTexKernel = variants("winograd_input_tex", (p: TileParams) => {
  const { m } = p, a = m + 2, B = WINOGRAD_MATRICES[m].bt;
  const loads = range(a).flatMap((i) =>
    range(a).map((j) => `  let d${i}_${j} = ${flatTexel("X", `base + ${i}u * rs + ${j}u * p.cq`)};`)
  );
  const v = sandwich("v", B, names("d", a, a), B);
  const store = (xi: number, val: string) => `  v[(${xi}u * p.tp + t) * p.cq + q] = ${val};`;
  return {
    bindings: [
      { name: "X", access: "read", texture: "sampled" },
      { name: "v", access: "read_write", type: "vec4<f32>" },
    ] as const,
    uniforms: {
      img0: "u32",
      hp: "u32",
      wp: "u32",
      tilesW: "u32",
      tilesHW: "u32",
      t: "u32",
      tp: "u32",
      cq: "u32",
    },
    workgroupSize: [WG],
    body: `
${linearEntry(WG)} {
  ${LINEAR_ID}
  if (i >= p.tp * p.cq) { return; }
  let q = i % p.cq;
  let t = i / p.cq;
  if (t >= p.t) {
${range(a * a).map((xi) => "  " + store(xi, "vec4f(0.0)")).join("\n")}
    return;
  }
  let img = p.img0 + t / p.tilesHW;
  let rem = t % p.tilesHW;
  let rs = p.wp * p.cq;
  let base = ((img * p.hp + rem / p.tilesW * ${m}u) * p.wp + rem % p.tilesW * ${m}u) * p.cq + q;
${loads.join("\n")}
${v.lines}
${v.out.flat().map((n, xi) => store(xi, n)).join("\n")}
}`,
  };
});

interface WeightParams extends TileParams {
  /** Input gradient: g = w[s][r] rotated by 180° (in/out transposed, spatially flipped). */
  flip: boolean;
}

// w → u: (α², R⁴, S⁴) as vec4 over s. Forward: w (R, S, 3, 3) and g_{r,s} = w[r][s]. With `flip` (input
// gradient): w (S, R, 3, 3) and g_{r,s}[a][b] = w[s][r][2 − a][2 − b]. u[ξ][r][q] = (G g Gᵀ)[ξ], zero
// outside R and S. Invocation (r, q): one r, s = 4q..4q+3.
const weightKernel = variants("winograd_weight", (p: WeightParams) => {
  const { m } = p, G = WINOGRAD_MATRICES[m].g;
  const loads = range(3).flatMap((i) =>
    range(3).map((j) =>
      `  let g${i}_${j} = vec4<f32>(ldw(r, s0, ${i}u, ${j}u), ldw(r, s0 + 1u, ${i}u, ${j}u), ` +
      `ldw(r, s0 + 2u, ${i}u, ${j}u), ldw(r, s0 + 3u, ${i}u, ${j}u));`
    )
  );
  const u = sandwich("u", G, names("g", 3, 3), G);
  return {
    bindings: [{ name: "w", access: "read" }, { name: "u", access: "read_write", type: "vec4<f32>" }],
    uniforms: { r: "u32", s: "u32", rp: "u32", sq: "u32" },
    workgroupSize: [WG],
    body: wgsl`
fn ldw(r: u32, s: u32, a: u32, b: u32) -> f32 {
#if ${p.flip}
  let at = ((s * p.r + r) * 3u + 2u - a) * 3u + 2u - b;
#else
  let at = ((r * p.s + s) * 3u + a) * 3u + b;
#endif
  return select(0.0, w[min(at, arrayLength(&w) - 1u)], r < p.r && s < p.s);
}
${linearEntry(WG)} {
  ${LINEAR_ID}
  if (i >= p.rp * p.sq) { return; }
  let q = i % p.sq;
  let r = i / p.sq;
  let s0 = q * 4u;
${loads.join("\n")}
${u.lines}
${u.out.flat().map((n, xi) => `  u[(${xi}u * p.rp + r) * p.sq + q] = ${n};`).join("\n")}
}`,
  };
});

interface OutputParams extends TileParams {
  bias: boolean;
  residual: boolean;
  relu: boolean;
  /**
   * mw and the residual read from flat textures M and R, a texel fetch each instead of a storage load (a
   * loop over the SIMD lanes on llvmpipe). The same values.
   */
  tex: boolean;
  /** With `tex`: y's tile rows are whole vec4s (m = 4, OW a multiple of 4), one vec4 store per row and channel. */
  vec: boolean;
}

// mw: (α², TP, R⁴) → y: (N, R, OH, OW). Invocation (t, q): tile t, channels 4q..4q+3:
// y_tile = Aᵀ M A, then + bias[r], + residual, ReLU (conv2dForward's epilogue, in that order); rows and
// columns past OH, OW and channels past R are not stored.
const outputKernel = variants("winograd_output", (p: OutputParams) => {
  const { m } = p, a = m + 2, A = WINOGRAD_MATRICES[m].at, vec = p.tex && p.vec;
  const at = (i: number, j: number) => `(${i * a + j}u * p.tp + t) * p.rq + q`;
  const loads = range(a).flatMap((i) =>
    range(a).map((j) => `  let m${i}_${j} = ${p.tex ? flatTexel("M", at(i, j)) : `mw[${at(i, j)}]`};`)
  );
  const o = sandwich("o", A, names("m", a, a), A);
  const stores = vec
    ? range(m).map((i) =>
      `    if (oh0 + ${i}u < p.oh) {
      let at = yb + (oh0 + ${i}u) * p.ow + ow0;
      y[at / 4u] = epi(vec4f(${range(m).map((j) => `${o.out[i][j]}[k]`).join(", ")}), co, at);
    }`
    )
    : range(m).flatMap((i) =>
      range(m).map((j) =>
        `    if (oh0 + ${i}u < p.oh && ow0 + ${j}u < p.ow) {
      let at = yb + (oh0 + ${i}u) * p.ow + ow0 + ${j}u;
      y[at] = epi(${o.out[i][j]}[k], co, at);
    }`
      )
    );
  const T = vec ? "vec4f" : "f32";
  const res = !p.tex ? "res[at]" : vec ? flatTexel("R", "at / 4u") : flatLoad("R", "at");
  return {
    bindings: [
      p.tex
        ? { name: "M", access: "read", texture: "sampled" } as const
        : { name: "mw", access: "read", type: "vec4<f32>" } as const,
      ...(p.bias ? [{ name: "bias", access: "read" } as const] : []),
      ...(p.residual
        ? [
          p.tex
            ? { name: "R", access: "read", texture: "sampled" } as const
            : { name: "res", access: "read" } as const,
        ]
        : []),
      { name: "y", access: "read_write", type: vec ? "vec4<f32>" : "f32" },
    ],
    uniforms: {
      yOff: "u32",
      r: "u32",
      oh: "u32",
      ow: "u32",
      tilesW: "u32",
      tilesHW: "u32",
      t: "u32",
      tp: "u32",
      rq: "u32",
    },
    workgroupSize: [WG],
    body: wgsl`
fn epi(acc: ${T}, co: u32, at: u32) -> ${T} {
  var v = acc;
#if ${p.bias}
  v = v + bias[co];
#endif
#if ${p.residual}
  v = v + ${res};
#endif
#if ${p.relu}
  v = max(v, ${T}(0.0));
#endif
  return v;
}
${linearEntry(WG)} {
  ${LINEAR_ID}
  if (i >= p.t * p.rq) { return; }
  let q = i % p.rq;
  let t = i / p.rq;
  let img = t / p.tilesHW;
  let rem = t % p.tilesHW;
  let oh0 = rem / p.tilesW * ${m}u;
  let ow0 = rem % p.tilesW * ${m}u;
${loads.join("\n")}
${o.lines}
  for (var k = 0u; k < 4u; k++) {
    let co = q * 4u + k;
    if (co >= p.r) { break; }
    let yb = p.yOff + (img * p.r + co) * p.oh * p.ow;
${stores.join("\n")}
  }
}`,
  };
});

// dy: (N, R, OH, OW) → z: (α², S, R⁴, TK) as vec4 over tiles, the TP = S·TK tiles split in S runs of TK
// (split-K of the GEMM that sums over tiles). Invocation (r, q): channel r, tiles 4q..4q+3;
// z[ξ][s][r][tile] = (A dY Aᵀ)[ξ] with dY the m×m block of dy at (th·m, tw·m), zero past OH, OW, R and T.
const gradOutputKernel = variants("winograd_dy", (p: TileParams) => {
  const { m } = p, AT = WINOGRAD_MATRICES[m].at, A = transpose(AT);
  const lanes = range(4).map((k) =>
    `  let t${k} = q * 4u + ${k}u; let b${k} = tile(t${k}, r); ` +
    `let h${k} = b${k}.y; let w${k} = b${k}.z; let ok${k} = r < p.r && t${k} < p.t;`
  );
  const one = (k: number, i: number, j: number) =>
    `select(0.0, dy[min(b${k}.x + (h${k} + ${i}u) * p.ow + w${k} + ${j}u, last)], ` +
    `ok${k} && h${k} + ${i}u < p.oh && w${k} + ${j}u < p.ow)`;
  const loads = range(m).flatMap((i) =>
    range(m).map((j) => `  let e${i}_${j} = vec4<f32>(${range(4).map((k) => one(k, i, j)).join(",\n    ")});`)
  );
  const z = sandwich("z", A, names("e", m, m), A);
  const a = m + 2;
  return {
    bindings: [{ name: "dy", access: "read" }, { name: "z", access: "read_write", type: "vec4<f32>" }],
    uniforms: {
      dyOff: "u32",
      r: "u32",
      oh: "u32",
      ow: "u32",
      tilesW: "u32",
      tilesHW: "u32",
      t: "u32",
      rp: "u32",
      tq: "u32",
      tk4: "u32",
    },
    workgroupSize: [WG],
    body: wgsl`
// (first element of dy's (img, r) plane, tile row origin, tile column origin) of tile t.
fn tile(t: u32, r: u32) -> vec3<u32> {
  let img = t / p.tilesHW;
  let rem = t % p.tilesHW;
  return vec3<u32>(p.dyOff + (img * p.r + r) * p.oh * p.ow, rem / p.tilesW * ${m}u, rem % p.tilesW * ${m}u);
}
${linearEntry(WG)} {
  ${LINEAR_ID}
  if (i >= p.rp * p.tq) { return; }
  let q = i % p.tq;
  let r = i / p.tq;
  let last = arrayLength(&dy) - 1u;
  let splits = p.tq / p.tk4;
  let zb = ((q / p.tk4) * p.rp + r) * p.tk4 + q % p.tk4;
  let zs = splits * p.rp * p.tk4;
${lanes.join("\n")}
${loads.join("\n")}
${z.lines}
${
      range(a * a).map((xi) => `  z[zb + ${xi}u * zs] = ${z.out[Math.floor(xi / a)][xi % a]};`)
        .join("\n")
    }
}`,
  };
});

// pw: (α², splits, R⁴, S⁴) → dw: (R, S, 3, 3), dw = Gᵀ (Σ_splits P) G (or dw += with acc = 1, for later
// image chunks). Invocation (r, q): channel r, s = 4q..4q+3.
const gradWeightKernel = variants("winograd_dw", (p: TileParams) => {
  const { m } = p, a = m + 2, GT = transpose(WINOGRAD_MATRICES[m].g);
  const sums = range(a * a).map((xi) => `    pp${Math.floor(xi / a)}_${xi % a} += pw[at + ${xi}u * ps];`);
  const dg = sandwich("dg", GT, names("pp", a, a), GT);
  const stores = range(3).flatMap((i) =>
    range(3).map((j) =>
      `    { let at = ((r * p.s + s) * 3u + ${i}u) * 3u + ${j}u; let v = ${dg.out[i][j]}[k];
      dw[at] = select(v, dw[at] + v, p.acc == 1u); }`
    )
  );
  return {
    bindings: [{ name: "pw", access: "read", type: "vec4<f32>" }, { name: "dw", access: "read_write" }],
    uniforms: { r: "u32", s: "u32", rp: "u32", sq: "u32", splits: "u32", acc: "u32" },
    workgroupSize: [WG],
    body: wgsl`
${linearEntry(WG)} {
  ${LINEAR_ID}
  if (i >= p.r * p.sq) { return; }
  let q = i % p.sq;
  let r = i / p.sq;
${range(a * a).map((xi) => `  var pp${Math.floor(xi / a)}_${xi % a} = vec4<f32>(0.0);`).join("\n")}
  let ps = p.splits * p.rp * p.sq;
  for (var k = 0u; k < p.splits; k++) {
    let at = (k * p.rp + r) * p.sq + q;
${sums.join("\n")}
  }
${dg.lines}
  for (var k = 0u; k < 4u; k++) {
    let s = q * 4u + k;
    if (s >= p.s) { break; }
${stores.join("\n")}
  }
}`,
  };
});

// ------------------------------------------------------------------------------------------ launchers

/** Tile grid of an OH×OW output. */
function tiling(m: number, oh: number, ow: number) {
  const tilesW = Math.ceil(ow / m), tilesHW = Math.ceil(oh / m) * tilesW;
  return { tilesW, tilesHW };
}

/**
 * Images per chunk so that every (α², tiles⁴, widest⁴) intermediate fits one storage binding; throws a
 * RangeError naming the op when one image does not.
 */
function imagesPerChunk(
  e: Engine,
  op: string,
  cfg: WinogradConfig,
  n: number,
  perImage: number,
  widest: number,
) {
  const a2 = (tileOf(cfg) + 2) ** 2;
  // Tiles per binding, less the padding of T to TP (c4 per split, ~1% with SPLIT_TILES; see the weight gradient).
  const fit = Math.floor((Math.floor(e.maxBinding / (4 * a2 * widest)) - 4) / (perImage * 1.02));
  if (fit < 1) {
    throw new RangeError(
      `Cannot ${op}: one image's Winograd transform (${a2}×${perImage} tiles × ${widest} channels) exceeds ` +
        `one storage binding (${e.maxBinding} bytes)`,
    );
  }
  return Math.max(1, Math.min(n, cfg.imagesPerChunk ?? fit, fit));
}

/** U (α², R⁴, S⁴) of `w`; see `weightKernel`. */
function transformWeight(
  w: Tensor,
  m: WinogradTile,
  r: number,
  s: number,
  flip: boolean,
  op: string,
): Tensor {
  const e = w.engine;
  const a2 = (m + 2) ** 2, rp = c4(r), sq = c4(s) / 4;
  const u = e.empty([a2, rp, 4 * sq], "winograd U");
  if (u.bytes > e.maxBinding) {
    u.dispose();
    throw new RangeError(
      `Cannot ${op}: the transformed weight [${u.shape}] exceeds one storage binding (${e.maxBinding} bytes)`,
    );
  }
  e.run(weightKernel({ m, flip }), {
    bindings: [w, u],
    uniforms: { r, s, rp, sq },
    workgroups: grid(rp * sq, WG),
    info: `[${w.shape}]${flip ? " flipped" : ""} → [${u.shape}]`,
  });
  return u;
}

/** The channels-last copy of a transform's input that {@linkcode channelsLast} makes. */
interface ChannelsLast {
  /** A flat texture of xp (N, HP, WP, C⁴). */
  tex: EngineTexture;
  hp: number;
  wp: number;
}

/** xp's padded height and width: `pad` zeros above and left of x, and below and right as far as tiles read. */
function paddedSize(m: WinogradTile, geo: { h: number; w: number; pad: number; oh: number; ow: number }) {
  return {
    hp: Math.ceil(geo.oh / m) * m + 2,
    wp: Math.ceil(geo.ow / m) * m + 2,
  };
}

/**
 * On software adapters, x (N, C, H, W) copied channels-last with its zero padding (toNhwc) into a flat
 * texture for `inputTexKernel`; null elsewhere, or where the copy would not fit a texture or one binding.
 */
function channelsLast(
  x: Tensor,
  m: WinogradTile,
  geo: { c: number; h: number; w: number; pad: number; oh: number; ow: number },
): ChannelsLast | null {
  const e = x.engine;
  if (!e.adapterInfo.software) return null;
  const { hp, wp } = paddedSize(m, geo);
  const size = x.shape[0] * hp * wp * c4(geo.c);
  if (4 * size > e.maxBinding || !flatFits(e, size)) return null;
  const xp = toNhwc(x, geo.pad, hp - geo.h - geo.pad, geo.pad, wp - geo.w - geo.pad, true);
  try {
    const tex = flatTexture(e, "winograd.x", xp);
    return tex ? { tex, hp, wp } : null;
  } finally {
    xp.dispose();
  }
}

/**
 * V (α², TP, C⁴) of images n0..n0+nc of `x` (N, C, H, W) at padding `pad` (TP ≥ T, a multiple of 4), read
 * from `xp` where given.
 */
function transformInput(
  x: Tensor,
  m: WinogradTile,
  geo: { c: number; h: number; w: number; pad: number; oh: number; ow: number },
  n0: number,
  nc: number,
  tp: number,
  xp: ChannelsLast | null = null,
): Tensor {
  const e = x.engine;
  const a2 = (m + 2) ** 2, { tilesW, tilesHW } = tiling(m, geo.oh, geo.ow);
  const t = nc * tilesHW, cq = c4(geo.c) / 4;
  const v = e.empty([a2, tp, 4 * cq], "winograd V");
  if (xp) {
    e.run(inputTexKernel({ m }), {
      bindings: [xp.tex, v],
      uniforms: { img0: n0, hp: xp.hp, wp: xp.wp, tilesW, tilesHW, t, tp, cq },
      workgroups: grid(tp * cq, WG),
      info: `[${x.shape}] channels-last images ${n0}+${nc} p${geo.pad} → [${v.shape}]`,
    });
    return v;
  }
  e.run(inputKernel({ m }), {
    bindings: [x, v],
    uniforms: {
      xOff: n0 * geo.c * geo.h * geo.w,
      c: geo.c,
      h: geo.h,
      w: geo.w,
      pad: geo.pad,
      tilesW,
      tilesHW,
      t,
      tp,
      cq,
    },
    workgroups: grid(tp * cq, WG),
    info: `[${x.shape}] images ${n0}+${nc} p${geo.pad} → [${v.shape}]`,
  });
  return v;
}

/**
 * The forward machinery: y (N, R, OH, OW) = corr(src (N, S, H, W), g) at padding `pad`, stride 1, where
 * g_{r,s} = w[r][s] (forward) or w[s][r] rotated by 180° (`flip`: input gradient), with the epilogue.
 */
function forwardCore(
  src: Tensor,
  w: Tensor,
  geo: { n: number; s: number; h: number; w: number; r: number; pad: number; oh: number; ow: number },
  flip: boolean,
  o: Conv2dOptions,
  cfg: WinogradConfig,
  op: string,
): Tensor {
  const e = src.engine;
  const m = tileOf(cfg);
  const y = e.empty([geo.n, geo.r, geo.oh, geo.ow], flip ? "conv2d dx" : "conv2d");
  if (y.size === 0) return y;
  const sp = c4(geo.s), rp = c4(geo.r);
  const { tilesW, tilesHW } = tiling(m, geo.oh, geo.ow);
  const per = imagesPerChunk(e, op, cfg, geo.n, tilesHW, Math.max(sp, rp));
  // Transformed constant weights (Conv2dOptions.constantWeight) are cached per tile size.
  const { t: u, temporary } = packedWeight(
    w,
    o.constantWeight && !flip,
    `winograd/f${m}`,
    () => transformWeight(w, m, geo.r, geo.s, flip, op),
  );
  const epi = { bias: !!o.bias, residual: !!o.residual, relu: !!o.relu };
  const inGeo = { c: geo.s, h: geo.h, w: geo.w, pad: geo.pad, oh: geo.oh, ow: geo.ow };
  const xp = channelsLast(src, m, inGeo);
  // On software adapters the output transform reads M and the residual through flat textures.
  const vec = m === 4 && geo.ow % 4 === 0;
  const R = xp && o.residual ? flatTexture(e, "winograd.res", o.residual) : null;
  const texOut = xp !== null && (!o.residual || R !== null);
  for (let n0 = 0; n0 < geo.n; n0 += per) {
    const nc = Math.min(per, geo.n - n0), t = nc * tilesHW, tp = c4(t);
    e.scope(() => {
      const v = transformInput(src, m, inGeo, n0, nc, tp, xp);
      // M[ξ] (T⁴ × R⁴) = V[ξ] (T⁴ × S⁴) · U[ξ]ᵀ
      const mw = matmulForward(v, u, { transposeB: true });
      // (An M larger than a flat texture holds, on an adapter whose bindings are larger, reads the buffer.)
      const M = texOut ? flatTexture(e, "winograd.m", mw) : null;
      e.run(outputKernel({ m, ...epi, tex: M !== null, vec: M !== null && vec }), {
        bindings: M
          ? [M, ...(o.bias ? [o.bias] : []), ...(R ? [R] : []), y]
          : [mw, ...(o.bias ? [o.bias] : []), ...(o.residual ? [o.residual] : []), y],
        uniforms: {
          yOff: n0 * geo.r * geo.oh * geo.ow,
          r: geo.r,
          oh: geo.oh,
          ow: geo.ow,
          tilesW,
          tilesHW,
          t,
          tp,
          rq: rp / 4,
        },
        workgroups: grid(t * rp / 4, WG),
        info: `[${mw.shape}] → [${y.shape}] images ${n0}+${nc}`,
      });
    });
  }
  if (temporary) u.dispose();
  return y;
}

function check(op: string, g: Conv2dGeometry, shapes: [string, Tensor, number[]][]): void {
  if (!winogradSupports(g)) {
    throw new RangeError(
      `Cannot ${op}: Winograd needs a 3×3 kernel, stride 1 and padding ≤ 2, current values are ` +
        `${g.kh}×${g.kw}, stride ${g.stride}, padding ${g.pad} (${g.cin} → ${g.cout} channels)`,
    );
  }
  for (const [name, t, want] of shapes) {
    if (!(t instanceof Tensor)) throw new TypeError(`Cannot ${op}: ${name} must be a Tensor`);
    if (t.rank !== want.length || t.shape.some((d, i) => d !== want[i])) {
      throw new RangeError(`Cannot ${op} with ${name} of shape [${t.shape}]: the geometry needs [${want}]`);
    }
  }
}

/**
 * Convolution forward by Winograd F(m×m, 3×3) with conv2dForward's epilogue (`+ bias`, `+ residual`,
 * ReLU, in that order); not recorded on the tape. `g` is the geometry from `conv2dGeometry`.
 *
 * @example
 * ```ts
 * const g = conv2dGeometry(x.shape, w.shape, { padding: 1 });
 * if (winogradSupports(g)) y = winogradForward(x, w, g, { padding: 1, bias: b, relu: true });
 * ```
 */
export function winogradForward(
  x: Tensor,
  w: Tensor,
  g: Conv2dGeometry,
  options: Conv2dOptions = {},
  config: WinogradConfig = {},
): Tensor {
  const op = "conv2d (Winograd)";
  const yShape = [g.n, g.cout, g.oh, g.ow];
  const shapes: [string, Tensor, number[]][] = [
    ["input", x, [g.n, g.cin, g.h, g.w]],
    ["weight", w, [g.cout, g.cin, 3, 3]],
  ];
  if (options.bias) shapes.push(["bias", options.bias, [g.cout]]);
  if (options.residual) shapes.push(["residual", options.residual, yShape]);
  check(op, g, shapes);
  const geo = { n: g.n, s: g.cin, h: g.h, w: g.w, r: g.cout, pad: g.pad, oh: g.oh, ow: g.ow };
  return forwardCore(x, w, geo, false, options, config, op);
}

/**
 * Gradient of the input of a stride-1 3×3 convolution: dx (N, Cin, H, W) is the correlation of dy with
 * the flipped, in/out-transposed weights at padding 2 − p, run through the Winograd forward.
 *
 * @example
 * ```ts
 * const dx = winogradBackwardInput(dy, w, conv2dGeometry(x.shape, w.shape, { padding: 1 }));
 * ```
 */
export function winogradBackwardInput(
  dy: Tensor,
  w: Tensor,
  g: Conv2dGeometry,
  config: WinogradConfig = {},
): Tensor {
  const op = "conv2d backward (input, Winograd)";
  check(op, g, [["dy", dy, [g.n, g.cout, g.oh, g.ow]], ["weight", w, [g.cout, g.cin, 3, 3]]]);
  const geo = { n: g.n, s: g.cout, h: g.oh, w: g.ow, r: g.cin, pad: 2 - g.pad, oh: g.h, ow: g.w };
  return forwardCore(dy, w, geo, true, {}, config, op);
}

/**
 * Gradient of the weight of a stride-1 3×3 convolution, dw (Cout, Cin, 3, 3) = Σ_tiles Gᵀ[(A dY Aᵀ) ⊙
 * (Bᵀ d B)]G: the adjoint of the forward's Winograd form, with its GEMMs summing over the tiles.
 *
 * @example
 * ```ts
 * const dw = winogradBackwardWeight(x, dy, conv2dGeometry(x.shape, w.shape, { padding: 1 }));
 * ```
 */
export function winogradBackwardWeight(
  x: Tensor,
  dy: Tensor,
  g: Conv2dGeometry,
  config: WinogradConfig = {},
): Tensor {
  const op = "conv2d backward (weight, Winograd)";
  check(op, g, [["input", x, [g.n, g.cin, g.h, g.w]], ["dy", dy, [g.n, g.cout, g.oh, g.ow]]]);
  const e = x.engine;
  const m = tileOf(config), a2 = (m + 2) ** 2;
  const wShape = [g.cout, g.cin, 3, 3];
  if (g.n === 0 || g.oh === 0 || g.ow === 0) return e.zeros(wShape, "conv2d dw");
  const dw = e.empty(wShape, "conv2d dw");
  const cp = c4(g.cin), rp = c4(g.cout);
  const { tilesW, tilesHW } = tiling(m, g.oh, g.ow);
  const per = imagesPerChunk(e, op, config, g.n, tilesHW, Math.max(cp, rp));
  const dwKernel = gradWeightKernel({ m });
  const inGeo = { c: g.cin, h: g.h, w: g.w, pad: g.pad, oh: g.oh, ow: g.ow };
  const xp = channelsLast(x, m, inGeo);
  for (let n0 = 0; n0 < g.n; n0 += per) {
    const nc = Math.min(per, g.n - n0), t = nc * tilesHW;
    // Split the sum over tiles (the GEMMs' K) into runs of ~SPLIT_TILES (long K runs are slow on llvmpipe),
    // keeping the partials P within 64 MiB and one binding.
    const splits = Math.max(
      1,
      Math.min(
        Math.round(t / SPLIT_TILES),
        Math.floor(Math.min(64 << 20, e.maxBinding) / (4 * a2 * rp * cp)),
      ),
    );
    const tk = c4(Math.ceil(t / splits)), tp = splits * tk;
    e.scope(() => {
      const v = transformInput(x, m, inGeo, n0, nc, tp, xp);
      const z = e.empty([a2 * splits, rp, tk], "winograd Z");
      e.run(gradOutputKernel({ m }), {
        bindings: [dy, z],
        uniforms: {
          dyOff: n0 * g.cout * g.oh * g.ow,
          r: g.cout,
          oh: g.oh,
          ow: g.ow,
          tilesW,
          tilesHW,
          t,
          rp,
          tq: tp / 4,
          tk4: tk / 4,
        },
        workgroups: grid(rp * tp / 4, WG),
        info: `[${dy.shape}] images ${n0}+${nc} → [${z.shape}]`,
      });
      // P[ξ, s] (Cout⁴ × Cin⁴) = Z[ξ, s] (Cout⁴ × TK) · V[ξ, s] (TK × Cin⁴)
      const pw = matmulForward(z, v.reshape([a2 * splits, tk, cp]));
      e.run(dwKernel, {
        bindings: [pw, dw],
        uniforms: { r: g.cout, s: g.cin, rp, sq: cp / 4, splits, acc: n0 > 0 ? 1 : 0 },
        workgroups: grid(g.cout * cp / 4, WG),
        info: `[${pw.shape}] → [${wShape}] images ${n0}+${nc}`,
      });
    });
  }
  return dw;
}

/**
 * The `winograd` strategy of kernels/conv2d/mod.ts: variants `winograd` (F(4×4, 3×3)), `winograd/f4`,
 * `winograd/f2`; stride-1 3×3 convolutions with padding ≤ 2 only.
 */
export const winograd: Conv2dStrategy<WinogradConfig> = {
  config(params) {
    const c: WinogradConfig = {};
    for (const p of params) {
      if (p === "f2" || p === "f4") c.tile = p === "f2" ? 2 : 4;
      else throw new RangeError(`unknown parameter "${p}" (winograd takes f2 or f4)`);
    }
    return c;
  },
  unsupported: (_e, _pass, g) =>
    winogradSupports(g) ? null : "Winograd runs only 3×3 stride-1 convolutions with padding ≤ 2",
  // x, y, dy, dx and the residual are bound whole; the transforms V, M, Z and P run in chunks of images
  // that fit (imagesPerChunk), U is one (α², R⁴, S⁴) tensor, the channels-last copy of the transform's
  // input (software adapters) one tensor. Every dispatch goes through `grid`.
  footprint: (_e, pass, g, c) => {
    const m = tileOf(c), a2 = (m + 2) ** 2;
    const u = pass === "dw" ? 0 : a2 * c4(g.cin) * c4(g.cout);
    const src = pass === "dx"
      ? { c: g.cout, h: g.oh, w: g.ow, pad: 2 - g.pad, oh: g.h, ow: g.w }
      : { c: g.cin, h: g.h, w: g.w, pad: g.pad, oh: g.oh, ow: g.ow };
    const { hp, wp } = paddedSize(m, src);
    return { elements: Math.max(ioElements(g), u, g.n * hp * wp * c4(src.c)), groups: 0 };
  },
  forward: (x, w, g, o, c) => winogradForward(x, w, g, o, c),
  backwardInput: (dy, w, g, c) => winogradBackwardInput(dy, w, g, c),
  backwardWeight: (x, dy, g, c) => winogradBackwardWeight(x, dy, g, c),
};
