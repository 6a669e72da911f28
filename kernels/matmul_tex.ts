/**
 * The `tex` matmul kernels: A and B read through rgba32float textures (`textureLoad`), C a storage buffer.
 *
 * Why: Mesa's llvmpipe turns every storage-buffer load into a loop over the 8 SIMD lanes with a bounds check
 * per lane and component, while a texel fetch is a straight gather of 8 × 16 bytes and a transpose — about
 * 1.2 ns per lane and texel on this machine (2 cores). A 32 × 32 block per invocation with A and B as
 * textures computes 1024³ in ~47 ms of wall time where the same block from storage buffers takes ~79 ms
 * (interleaved runs of raw WebGPU kernels; see ARCHITECTURE.md). Real GPUs read textures through their
 * texture caches, so the variant is a candidate for the tuner everywhere.
 *
 * Layout: A (M × K) as texels (kq, m) = A[m, 4kq … 4kq+3]; B (K × N) as texels (nq, k) = B[k, 4nq … 4nq+3],
 * or, transposed (N × K, a linear layer's weight), as texels (kq, n) like A. K is padded with zeros to a
 * multiple of 16 (the loop reads 16 k per iteration), N to a multiple of 4. A texture is filled by a buffer
 * copy when its rows are exactly a tensor's rows and 256-byte aligned (K or N a multiple of 64), else by
 * {@linkcode packKernel}. Batched products stack their batches along the textures' rows (an operand shared
 * by every product is stored once) and take the batch from the workgroup's z. Each invocation owns TM rows × TN columns of C (lanes along the dimension that
 * pads less), loads 4 texels of A per row and 4 × TN/4 (or TN) of B per iteration (1 and 4 × TN/4 for
 * 32 × 32 blocks, {@linkcode texelsPerStep}), then runs each accumulator's FMAs back to back.
 *
 * @module
 */
import type { Engine, EngineTexture } from "../engine/engine.ts";
import { type VariantParams, variants } from "../engine/kernel.ts";
import type { Tensor } from "../engine/tensor.ts";
import { flatLoad, flatTexel, flatTexture } from "../engine/flat.ts";
import { ACT_WGSL, type Activation } from "./matmul.ts"; // a cycle: read only when a kernel is built

/** A texture-operand kernel configuration: TM × TN outputs per invocation, WG invocations per workgroup. */
export interface TexConfig {
  kind: "tex";
  tm: number;
  tn: number;
  wg: number;
  lanes: "rows" | "cols";
}

/** Block sizes of the square `tex` variants. */
export const TEX_TILES = [16, 32] as const;
/**
 * The wide `tex` block: 32 rows × 64 columns, lanes along N, so that the 8 lanes of a workgroup share A's
 * rows. On llvmpipe each texel fetch is a gather whatever the lanes read; a 32 × 32 block spends about half of
 * 1024³'s time in its 64 fetches per step, and 32 × 64 computes twice the FMAs for 96. 1024³ took 36.5–37.3 ms
 * of GPU time against 41.1–41.4 for 32 × 32 cols (best of 5, six alternations in one process; 64 × 32 with
 * lanes along M: 42.4–43.0). Its kernel takes ~13 s to compile the first time (32 × 32: ~3 s), and 64 × 64
 * (33–36 ms) 76 s, so it is a candidate for large products only, and not the built-in choice.
 */
export const TEX_WIDE = { tm: 32, tn: 64, lanes: "cols" } as const;
/** k per loop iteration (4 texels of 4); K is padded to a multiple of it. */
export const KSTEP = 16;

interface TexParams extends VariantParams {
  tm: number;
  tn: number;
  wg: number;
  lanes: string;
  transB: boolean;
  vecC: boolean;
  /** Several products (wid.z): batch offsets into the textures and C. Unbatched kernels go without them. */
  batched: boolean;
  bias: boolean;
  /** The bias is per row of C (a convolution's output channel) instead of per column. */
  rowBias: boolean;
  /** A residual of C's shape added before the activation, read from a flat texture `R`. */
  res: boolean;
  act: string;
  /**
   * B's rows (n with `transB`, k without) folded into side-by-side bands of `p.band` rows (`p.band` texels
   * of k without `transB`), band b from texel column b·`p.bandX`: a B taller than the adapter's textures
   * (a 19 699-gene head's weight). Unbatched kernels only.
   */
  bands: boolean;
}

/**
 * Texels of k each loop iteration reads per row: 4 (KSTEP values), but 1 for 32 × 32 blocks. On llvmpipe a
 * block's accumulators and fetched operands live on the stack; a 32 × 32 block's 1 024 accumulators take
 * 32 KiB of it, and 4 texels of operands per row and column another 32 KiB, past the CPU's L1. One texel per
 * iteration: 1024³ 73–76 → 63–64 ms (interleaved raw kernels). 16 × 16 blocks gain nothing from it. The same
 * k order, so the same bits.
 */
export const texelsPerStep = (tm: number, tn: number): number => tm * tn >= 1024 ? 1 : KSTEP / 4;

function genTex(v: TexParams): string {
  const { tm: TM, tn: TN, wg: WG, transB: tB } = v;
  const U = texelsPerStep(TM, TN);
  const L: string[] = [];
  L.push(`@compute @workgroup_size(${WG}, 1, 1)`);
  L.push(`fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u) {`);
  L.push(`  let M = p.M; let N = p.N;`);
  // Batches (wid.z) stack along the textures' rows: A's from row z·aSlab, B's from z·bSlab (0: shared).
  // Only in batched kernels: the extra offset in every B coordinate cost 1024³ ~5–10 % on llvmpipe.
  const aBase = v.batched ? "aBase + " : "", bBase = v.batched ? "bBase + " : "";
  if (v.batched) L.push(`  let aBase = wid.z * p.aSlab; let bBase = wid.z * p.bSlab;`);
  if (v.lanes === "rows") {
    L.push(`  let row0 = (wid.y * ${WG}u + lid.x) * ${TM}u;`, `  let col0 = wid.x * ${TN}u;`);
  } else {
    L.push(`  let row0 = wid.y * ${TM}u;`, `  let col0 = (wid.x * ${WG}u + lid.x) * ${TN}u;`);
  }
  // Rows and columns past the edge read the last one (no branch in the loop) and are not stored.
  for (let i = 0; i < TM; i++) L.push(`  let ra${i} = ${aBase}min(row0 + ${i}u, M - 1u);`);
  if (tB && v.bands) {
    // Column j's band and row in it, and the band's first texel column.
    for (let j = 0; j < TN; j++) {
      L.push(
        `  let nb${j} = min(col0 + ${j}u, N - 1u) / p.band;`,
        `  let rb${j} = min(col0 + ${j}u, N - 1u) - nb${j} * p.band;`,
        `  let bx${j} = nb${j} * p.bandX;`,
      );
    }
    for (let i = 0; i < TM; i++) for (let j = 0; j < TN; j++) L.push(`  var c${i}_${j} = 0.0;`);
  } else if (tB) {
    for (let j = 0; j < TN; j++) L.push(`  let rb${j} = ${bBase}min(col0 + ${j}u, N - 1u);`);
    for (let i = 0; i < TM; i++) for (let j = 0; j < TN; j++) L.push(`  var c${i}_${j} = 0.0;`);
  } else {
    for (let q = 0; q < TN / 4; q++) L.push(`  let cq${q} = min(col0 / 4u + ${q}u, (N + 3u) / 4u - 1u);`);
    for (let i = 0; i < TM; i++) for (let q = 0; q < TN / 4; q++) L.push(`  var c${i}_${q} = vec4f(0.0);`);
  }
  L.push(`  for (var kq = 0u; kq < p.KQ; kq += ${U}u) {`);
  // Without transB, bands of p.band texels of k (a multiple of U): one band per iteration.
  if (!tB && v.bands) {
    L.push(
      `    let kb = kq / p.band;`,
      `    let bx = kb * p.bandX;`,
      `    let by = (kq - kb * p.band) * 4u;`,
    );
  }
  for (let u = 0; u < U; u++) {
    for (let i = 0; i < TM; i++) L.push(`    let a${i}_${u} = textureLoad(A, vec2u(kq + ${u}u, ra${i}), 0);`);
    if (tB) {
      for (let j = 0; j < TN; j++) {
        const x = v.bands ? `kq + ${u}u + bx${j}` : `kq + ${u}u`;
        L.push(`    let b${j}_${u} = textureLoad(B, vec2u(${x}, rb${j}), 0);`);
      }
    } else {
      for (let s = 0; s < 4; s++) {
        for (let q = 0; q < TN / 4; q++) {
          const at = v.bands
            ? `cq${q} + bx, by + ${4 * u + s}u`
            : `cq${q}, ${bBase}(kq + ${u}u) * 4u + ${s}u`;
          L.push(`    let b${s}_${q}_${u} = textureLoad(B, vec2u(${at}), 0);`);
        }
      }
    }
  }
  // Each accumulator's 16 FMAs back to back (k ascending).
  for (let i = 0; i < TM; i++) {
    if (tB) {
      for (let j = 0; j < TN; j++) {
        for (let u = 0; u < U; u++) {
          for (let s = 0; s < 4; s++) {
            L.push(`    c${i}_${j} = fma(a${i}_${u}[${s}], b${j}_${u}[${s}], c${i}_${j});`);
          }
        }
      }
    } else {
      for (let q = 0; q < TN / 4; q++) {
        for (let u = 0; u < U; u++) {
          for (let s = 0; s < 4; s++) {
            L.push(`    c${i}_${q} = fma(vec4f(a${i}_${u}[${s}]), b${s}_${q}_${u}, c${i}_${q});`);
          }
        }
      }
    }
  }
  L.push(`  }`);
  const acc = (i: number, j: number) => tB ? `c${i}_${j}` : `c${i}_${j >> 2}[${j & 3}]`;
  if (v.bias && !v.rowBias) {
    for (let j = 0; j < TN; j++) L.push(`  let bias${j} = bias[p.biasOff + min(col0 + ${j}u, N - 1u)];`);
  }
  // (acc + bias) + residual, then the activation: the order of conv2d's epilogue.
  const val = (i: number, j: number, res?: string) => {
    let x = acc(i, j);
    if (v.bias) x = `${x} + ${v.rowBias ? `rbias${i}` : `bias${j}`}`;
    if (res) x = `(${x}) + ${res}`;
    return ACT_WGSL[v.act as Activation](x);
  };
  for (let i = 0; i < TM; i++) {
    L.push(
      `  if (row0 + ${i}u < M) {`,
      `    let r = p.cOff + ${v.batched ? "wid.z * p.sc + " : ""}(row0 + ${i}u) * p.ldc + col0;`,
    );
    if (v.bias && v.rowBias) L.push(`    let rbias${i} = bias[p.biasOff + row0 + ${i}u];`);
    if (v.vecC) {
      for (let j = 0; j < TN; j += 4) {
        const res = v.res ? `res${j}` : undefined;
        const vv = `vec4f(${[0, 1, 2, 3].map((d) => val(i, j + d, res && `${res}[${d}]`)).join(", ")})`;
        const load = v.res ? `let res${j} = ${flatTexel("R", `(r + ${j}u) / 4u`)}; ` : "";
        L.push(`    if (col0 + ${j}u < N) { ${load}C[(r + ${j}u) / 4u] = ${vv}; }`);
      }
    } else {
      for (let j = 0; j < TN; j++) {
        const res = v.res ? flatLoad("R", `r + ${j}u`) : undefined;
        L.push(`    if (col0 + ${j}u < N) { C[r + ${j}u] = ${val(i, j, res)}; }`);
      }
    }
    L.push(`  }`);
  }
  L.push(`}`);
  return L.join("\n");
}

const texKernel = variants("matmul_tex", (v: TexParams) => ({
  bindings: [
    { name: "A", access: "read", texture: "sampled" },
    { name: "B", access: "read", texture: "sampled" },
    { name: "bias", access: "read" },
    { name: "C", access: "read_write", type: v.vecC ? "vec4<f32>" : "f32" },
    ...(v.res ? [{ name: "R", access: "read", texture: "sampled" }] as const : []),
  ] as const,
  uniforms: {
    M: "u32",
    N: "u32",
    KQ: "u32",
    ldc: "u32",
    cOff: "u32",
    biasOff: "u32",
    aSlab: "u32",
    bSlab: "u32",
    sc: "u32",
    band: "u32",
    bandX: "u32",
  } as const,
  workgroupSize: [v.wg],
  body: genTex(v),
}));

/**
 * Fill a texture from matrices: texel (x, z·height + y) = src[off + z·stride + y·rowLen + 4x … +3] for
 * batch z (`off` a multiple of 4 where rows are read as vec4), zero past `rowLen` or `rows` (the padding the matmul loop reads). With `tex`, src is read from
 * its {@linkcode flatTexture} `S` (a texel fetch instead of a storage load, which is a loop over the SIMD
 * lanes on llvmpipe); the same values.
 */
export const packKernel = variants("matmul_tex_pack", (v: { vec: boolean; tex?: boolean }) => ({
  // vec: rows of a multiple of 4 floats read as vec4 (one bounds-checked load per texel instead of four).
  bindings: [
    v.tex
      ? { name: "S", access: "read", texture: "sampled" }
      : { name: "src", access: "read", type: v.vec ? "vec4<f32>" : "f32" },
    { name: "T", access: "read_write", texture: "write" },
  ] as const,
  uniforms: { rowLen: "u32", rows: "u32", width: "u32", height: "u32", stride: "u32", off: "u32" } as const,
  workgroupSize: [64],
  body: `
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3u) {
  let x = g.x;
  let y = g.y;
  if (x >= p.width || y >= p.height) { return; }
  var v = vec4f(0.0);
  if (y < p.rows) {
    let base = p.off + g.z * p.stride + y * p.rowLen;
${
    v.vec
      ? `    if (4u * x < p.rowLen) {
      let j = (base + 4u * x) / 4u;
      v = ${v.tex ? flatTexel("S", "j") : "src[j]"};
    }`
      : `    for (var c = 0u; c < 4u; c++) {
      let j = base + 4u * x + c;
      if (4u * x + c < p.rowLen) { v[c] = ${v.tex ? flatLoad("S", "j") : "src[j]"}; }
    }`
  }
  }
  textureStore(T, vec2u(x, g.z * p.height + y), v);
}`,
}));

/**
 * Where the `tex` kernels keep A and B for an m × n × k product, with `nbA` and `nbB` batches of each operand
 * stacked along the rows (1: unbatched, or shared by every product): texture sizes [width, height] in texels,
 * and B's bands. A B taller than the adapter's textures (n rows with `transB`, k without) goes in `bands`
 * bands of `band` rows side by side, band b from texel column b · `bandX` (unbatched products only, and only
 * where B's rows are whole texture rows, copied without a kernel). `copiesB`: B is filled by copies alone (no
 * kernel binds it, so it may exceed a storage binding).
 */
export interface TexLayout {
  a: [number, number];
  b: [number, number];
  bands: number;
  /** Rows of B in a band (n with `transB`); without `transB`, texels of k (rows / 4). */
  band: number;
  bandX: number;
  copiesB: boolean;
}

/** The {@linkcode TexLayout} of a product on `e`, or why the `tex` kernels cannot compute it. */
export function texLayout(
  e: Engine,
  m: number,
  n: number,
  k: number,
  transB: boolean,
  nbA = 1,
  nbB = 1,
): TexLayout | string {
  const max = e.limits.maxTextureDimension2D;
  const kq = Math.ceil(k / KSTEP) * (KSTEP / 4);
  const a: [number, number] = [kq, m * nbA];
  // B's rows and their width in texels; whole texture rows copied where the row length is exact.
  const rows = transB ? n : kq * 4, width = transB ? kq : Math.ceil(n / 4);
  const rowLen = transB ? k : n;
  const exact = rowLen === width * 4 && rowLen % 64 === 0;
  if (rows * nbB > max && nbA === 1 && nbB === 1 && a[1] <= max && a[0] <= max) {
    const bands = Math.ceil(rows / max);
    // Without transB a band holds whole loop iterations (KSTEP values of k).
    const r = transB ? Math.ceil(rows / bands) : Math.ceil(rows / bands / KSTEP) * KSTEP;
    if (!exact) {
      return `B's ${rows} rows would need ${bands} bands of a texture, which take rows of a multiple of 64 ` +
        `floats (${rowLen} here)`;
    }
    if (bands * width > max) {
      return `B would be ${bands} bands of ${width} × ${r} texels; the adapter allows ${max} per side`;
    }
    return { a, b: [bands * width, r], bands, band: transB ? r : r / 4, bandX: width, copiesB: true };
  }
  const b: [number, number] = [width, rows * nbB];
  if (Math.max(...a, ...b) > max) {
    return `its textures would be ${a[0]} × ${a[1]} and ${b[0]} × ${b[1]} texels; the adapter allows ` +
      `${max} per side`;
  }
  return { a, b, bands: 1, band: 0, bandX: 0, copiesB: exact && rows === (transB ? n : k) };
}

/** Why the `tex` kernels cannot compute this product on `e` (texture size limits), or null. */
export function texCannot(
  e: Engine,
  m: number,
  n: number,
  k: number,
  transB: boolean,
  nbA = 1,
  nbB = 1,
): string | null {
  const l = texLayout(e, m, n, k, transB, nbA, nbB);
  return typeof l === "string" ? l : null;
}

/**
 * Fill `t` with `nb` slabs of `rows` rows of `rowLen` floats of `src` (the batches one after the other), each
 * slab `t.height / nb` texel rows, zeros past `rowLen` and `rows`: a copy where the layout allows (rows of
 * exactly `4 · t.width` floats, a multiple of 64), else {@linkcode packKernel}. The first slab starts at
 * element `offset` of src (a batch range of a batched product).
 */
export function fillTexture(
  e: Engine,
  src: Tensor,
  t: EngineTexture,
  rowLen: number,
  rows: number,
  nb = 1,
  offset = 0,
): void {
  const height = t.height / nb;
  if (rowLen === t.width * 4 && rows === height && rowLen % 64 === 0) {
    e.copyToTexture(src, t, offset);
    return;
  }
  // On software adapters src is read through a flat texture (copied, no kernel): ~1/3 of the pack's time.
  const S = e.adapterInfo.software ? flatTexture(e, "matmul.src", src) : null;
  e.run(packKernel({ vec: rowLen % 4 === 0, ...(S ? { tex: true } : {}) }), {
    bindings: [S ?? src, t],
    uniforms: { rowLen, rows, width: t.width, height, stride: rows * rowLen, off: offset },
    workgroups: [Math.ceil(t.width / 64), height, nb],
    info: `[${src.shape}] → ${t.width}×${t.height} texels`,
  });
}

/**
 * Fill `t` with B in the bands of `l` (whole rows of `rowLen` floats copied, no kernel), and zeros in the
 * rows past B's `rows` that the loop reads (without `transB`, K padded to a multiple of 16).
 */
function fillBands(
  e: Engine,
  src: Tensor,
  t: EngineTexture,
  l: TexLayout,
  rowLen: number,
  rows: number,
  read: number,
) {
  const r = t.height, w = l.bandX;
  for (let b = 0; b < l.bands && b * r < rows; b++) {
    e.copyToTexture(src, t, b * r * rowLen, Math.min(r, rows - b * r), { x: b * w, width: w });
  }
  const last = (l.bands - 1) * r, pad = read - rows;
  if (pad > 0) {
    const z = e.zeros([pad * rowLen]);
    e.copyToTexture(z, t, 0, pad, { x: (l.bands - 1) * w, y: rows - last, width: w });
    z.dispose();
  }
}

/**
 * C = act(A·op(B) + bias) with the `tex` kernel `c` for `nb` products: A (nbA × m × k, nbA 1 or nb: shared
 * or one per product), B (nbB × k × n, or nbB × n × k with `transB`), C (nb × m × n).
 */
export function matmulTex(
  e: Engine,
  c: TexConfig,
  a: Tensor,
  b: Tensor,
  out: Tensor,
  bias: Tensor,
  o: {
    m: number;
    n: number;
    k: number;
    transB: boolean;
    hasBias: boolean;
    act: string;
    info: string;
    nb?: number;
    nbA?: number;
    nbB?: number;
    /** The bias is per row of C (M values), not per column. */
    rowBias?: boolean;
    /** Added to C before the activation (C's shape), read through a flat texture. */
    residual?: Tensor;
    /**
     * Where this launch's first product starts in A, B and C (elements): one launch of several over a
     * batch whose stacked textures would not fit.
     */
    at?: { a: number; b: number; c: number };
  },
): void {
  const { m, n, k, transB, nb = 1, nbA = 1, nbB = 1, at = { a: 0, b: 0, c: 0 } } = o;
  const l = texLayout(e, m, n, k, transB, nbA, nbB);
  if (typeof l === "string") throw new RangeError(`Cannot matmul ${o.info} through textures: ${l}`);
  const R = o.residual ? flatTexture(e, "matmul.res", o.residual) : null;
  if (o.residual && !R) throw new RangeError(`Cannot read the residual of ${o.info} through a texture`);
  const [[aw, ah], [bw, bh]] = [l.a, l.b];
  const bands = l.bands > 1;
  const ta = e.texture("matmul.A", aw, ah);
  const tb = e.texture(bands ? "matmul.Bbands" : "matmul.B", bw, bh);
  fillTexture(e, a, ta, k, m, nbA, at.a);
  const bOff = at.b;
  if (bands) fillBands(e, b, tb, l, transB ? k : n, transB ? n : k, transB ? n : aw * 4);
  else if (transB) fillTexture(e, b, tb, k, n, nbB, bOff);
  else fillTexture(e, b, tb, n, k, nbB, bOff);
  const kernel = texKernel({
    tm: c.tm,
    tn: c.tn,
    wg: c.wg,
    lanes: c.lanes,
    transB,
    vecC: n % 4 === 0,
    batched: nb > 1,
    bias: o.hasBias,
    rowBias: !!o.rowBias && o.hasBias,
    res: R !== null,
    act: o.act,
    bands,
  });
  const groups = c.lanes === "rows"
    ? [Math.ceil(n / c.tn), Math.ceil(m / (c.tm * c.wg)), nb] as const
    : [Math.ceil(n / (c.tn * c.wg)), Math.ceil(m / c.tm), nb] as const;
  e.run(kernel, {
    bindings: R ? [ta, tb, bias, out, R] : [ta, tb, bias, out],
    uniforms: {
      M: m,
      N: n,
      KQ: aw,
      ldc: n,
      cOff: at.c,
      biasOff: 0,
      aSlab: nbA > 1 ? m : 0,
      bSlab: nbB > 1 ? bh / nbB : 0,
      sc: m * n,
      band: l.band,
      bandX: l.bandX,
    },
    workgroups: groups,
    info: o.info,
  });
}

/** Most k of a {@linkcode matmulOuterTex} product (a weight gradient's batch). */
export const OUTER_MAX_K = 16;
/** Rows of C per invocation of the outer-product kernel. */
const OUTER_TM = 8;

/**
 * C = Aᵀ · B for a short K (a linear layer's weight gradient dyᵀ · x at a small batch): A (K × M) and B
 * (K × N) read from flat textures (no pack, no transpose), each invocation OUTER_TM rows × 4 columns of C,
 * k ascending from 0 as in every matmul kernel (the same bits). What it costs is C's stores: the 19 699 ×
 * 2048 head's gradient at batch 2 is 40 M floats.
 */
const outerKernel = variants("matmul_outer_tex", (v: { k: number }) => ({
  bindings: [
    { name: "A", access: "read", texture: "sampled" },
    { name: "B", access: "read", texture: "sampled" },
    { name: "C", access: "read_write", type: "vec4<f32>" },
  ] as const,
  uniforms: { M: "u32", N: "u32", mOff: "u32", rows: "u32" } as const,
  workgroupSize: [64],
  body: `
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3u) {
  let nq = g.x;
  if (4u * nq >= p.N) { return; }
  let row0 = g.y * ${OUTER_TM}u;
${
    Array.from({ length: v.k }, (_, k) => `  let b${k} = ${flatTexel("B", `${k}u * (p.N / 4u) + nq`)};`).join(
      "\n",
    )
  }
  for (var i = 0u; i < ${OUTER_TM}u; i++) {
    let r = row0 + i;
    if (r >= p.rows) { return; }
    let m = p.mOff + r;
    var c = vec4f(0.0);
${
    Array.from(
      { length: v.k },
      (_, k) => `    c = fma(vec4f(${flatLoad("A", `${k}u * p.M + m`)}), b${k}, c);`,
    ).join("\n")
  }
    C[r * (p.N / 4u) + nq] = c;
  }
}`,
}));

/**
 * C (M × N) = Aᵀ · B through {@linkcode outerKernel}, A (K × M), B (K × N), K ≤ {@linkcode OUTER_MAX_K},
 * N a multiple of 4; C bound in row blocks of at most one binding. False where it does not apply (K, N, or
 * the operands' flat textures that do not fit the adapter): the caller then takes another kernel.
 */
export function matmulOuterTex(e: Engine, a: Tensor, b: Tensor, out: Tensor): boolean {
  const [k, m] = a.shape, n = b.shape[1];
  if (k > OUTER_MAX_K || n % 4 !== 0 || out.size !== m * n) return false;
  // A flat texture holds whole texels: A (K·M values, M odd for a 19 699-gene head) padded with zeros.
  let a4: Tensor | null = null;
  if (a.size % 4 !== 0) {
    a4 = e.zeros([Math.ceil(a.size / 4) * 4]);
    e.copy(a, a4, { size: a.size });
  }
  const A = flatTexture(e, "matmul.outerA", a4 ?? a);
  a4?.dispose();
  const B = A && flatTexture(e, "matmul.outerB", b);
  if (!A || !B) return false;
  // Row blocks of C within one binding, offsets aligned.
  let step = OUTER_TM;
  while ((step * n * 4) % e.offsetAlign !== 0) step *= 2;
  const rows = Math.max(step, Math.floor(e.maxBinding / 4 / n / step) * step);
  for (let m0 = 0; m0 < m; m0 += rows) {
    const mc = Math.min(rows, m - m0);
    e.run(outerKernel({ k }), {
      bindings: [A, B, { tensor: out, offset: m0 * n, size: mc * n }],
      uniforms: { M: m, N: n, mOff: m0, rows: mc },
      workgroups: [Math.ceil(n / 4 / 64), Math.ceil(mc / OUTER_TM), 1],
      info: `[${a.shape}]ᵀx[${b.shape}] rows ${m0}+${mc}`,
    });
  }
  return true;
}
