/**
 * 2-D convolution (NCHW, float32, groups 1, dilation 1, symmetric padding) with PyTorch semantics
 * (`torch.nn.functional.conv2d`): OH = ⌊(H + 2p − KH) / s⌋ + 1. The launchers here validate the shapes and
 * hand each pass to one strategy, chosen per call:
 *
 * - `blocked` (blocked.ts): register-blocked T×T GEMMs on zero-padded channels-last copies, no workgroup
 *   memory; 1×1 stride-1 convolutions through `matmulForward`. The default on software adapters
 *   (llvmpipe, `engine.adapterInfo.software`). Variants `blocked` (T by problem size), `blocked/t8`,
 *   `blocked/t16`, `blocked/t32`.
 * - `implicit_gemm` (implicit_gemm.ts): implicit GEMMs with TM×TN register blocks in 64-invocation
 *   workgroups, stride phases for the input gradient, split-K for the weight gradient. The default on GPUs.
 *   Variants `implicit_gemm` (8×8), `implicit_gemm/<TM>x<TN>`.
 * - `winograd` (winograd.ts): Winograd F(4×4, 3×3) or F(2×2, 3×3) over batched GEMMs for stride-1 3×3
 *   convolutions (4× / 2.25× fewer multiplications). Variants `winograd` (F4), `winograd/f4`, `winograd/f2`.
 * - `direct` (direct.ts): one output element per invocation; runs every geometry (the fallback).
 *
 * Both GEMM strategies also take `/split<N>` (the weight gradient's split-K target) and `blocked` takes
 * `/nomatmul`; see their modules. Which variant runs is
 * `chosenVariant(engine, "conv2d.fwd" | "conv2d.dx" | "conv2d.dw", conv2dShapeClass(g))` (kernels/tuning.ts):
 * a variant forced with `withVariant` (or {@linkcode withConv2dVariant} for all three passes), else the
 * engine's tuning table, else the default for the adapter's kind. A forced variant that cannot run a
 * geometry throws a RangeError naming the variant and the geometry; a table entry that cannot (its shape
 * class is coarser than one geometry) gives way to the default.
 *
 * Every output is a new tensor (overwrite); the differentiable `conv2d` and its gradient rule are in
 * ops/conv2d.ts.
 *
 * Batches beyond one storage binding (128 MiB on llvmpipe): each strategy states the largest binding and
 * workgroup count a pass needs at a batch size (`footprint`: its inputs, output and every intermediate —
 * channels-last copies, packed weights, dyᵀ, per-image GEMM results; Winograd chunks its transforms
 * itself). When the whole batch fits, the pass runs once on the tensors as given, exactly as before. When
 * not, the batch runs in the fewest equal chunks of whole images that fit (the last may be smaller): each
 * chunk's x, dy and residual are copied into pooled temporaries (a buffer copy costs next to nothing beside
 * a convolution, and keeps every kernel and its numbers as they are, instead of teaching each kernel a
 * binding offset), its y or dx is copied into place, and the chunks' weight gradients are summed by
 * `reduce`. Any batch that fits `maxBufferSize` runs; a RangeError names the pass, the geometry and the
 * variant when a single image does not fit.
 *
 * @module
 */
import type { Engine } from "../../engine/engine.ts";
import { fmtBytes } from "../../engine/pool.ts";
import { Tensor } from "../../engine/tensor.ts";
import { bindingElements } from "../_ranges.ts";
import { reduce } from "../reduce.ts";
import { chosenVariant, tuningKey, tuningOf, withVariant } from "../tuning.ts";
import {
  checkDy,
  type Conv2dCall,
  type Conv2dGeometry,
  conv2dGeometry,
  type Conv2dOptions,
  type Conv2dPass,
  type Conv2dStrategy,
  geometryLabel,
} from "./common.ts";
import { blocked } from "./blocked.ts";
import { implicitGemm } from "./implicit_gemm.ts";
import { direct } from "./direct.ts";
import { winograd, winogradSupports } from "./winograd.ts";

export { type Conv2dGeometry, conv2dGeometry, type Conv2dOptions, releaseConv2dWeight } from "./common.ts";
export { conv2dBackwardCpu, conv2dCpu } from "./reference.ts";

/** The strategies by name: the first part of a variant id. */
const STRATEGIES = {
  blocked,
  implicit_gemm: implicitGemm,
  direct,
  winograd,
} satisfies Record<string, Conv2dStrategy<unknown>>;

/** The tuning-table ops of the three passes. */
export type Conv2dTuningOp = "conv2d.fwd" | "conv2d.dx" | "conv2d.dw";

const PASS: Record<Conv2dTuningOp, Conv2dPass> = {
  "conv2d.fwd": "fwd",
  "conv2d.dx": "dx",
  "conv2d.dw": "dw",
};
const TUNING_OP: Record<Conv2dPass, Conv2dTuningOp> = { fwd: "conv2d.fwd", dx: "conv2d.dx", dw: "conv2d.dw" };
/** The pass as error messages name it. */
const OP_NAME: Record<Conv2dPass, string> = {
  fwd: "conv2d",
  dx: "conv2d backward (input)",
  dw: "conv2d backward (weight)",
};

/** The variants {@linkcode conv2dCandidates} offers (where they can run). */
const CANDIDATES = [
  "blocked",
  "blocked/t8",
  "blocked/t16",
  "blocked/t32",
  "implicit_gemm",
  "implicit_gemm/4x4",
  "implicit_gemm/4x8",
  "implicit_gemm/8x4",
  "winograd/f4",
  "winograd/f2",
  "direct",
] as const;

interface Variant {
  id: string;
  strategy: Conv2dStrategy<unknown>;
  config: unknown;
}

/** Parse a variant id `<strategy>[/<param>…]`; throws a RangeError saying what is wrong. */
function parseVariant(id: string): Variant {
  const [name, ...params] = id.split("/");
  if (!Object.hasOwn(STRATEGIES, name)) {
    throw new RangeError(
      `unknown strategy "${name}" (the strategies are ${Object.keys(STRATEGIES).join(", ")})`,
    );
  }
  const strategy: Conv2dStrategy<unknown> = STRATEGIES[name as keyof typeof STRATEGIES];
  return { id, strategy, config: strategy.config(params) };
}

/**
 * The built-in choice: `blocked` on software adapters, but Winograd F(4×4, 3×3) there for the forward of
 * stride-1 3×3 convolutions with a constant weight (prediction); `implicit_gemm` on GPUs (`direct` if
 * neither can). ResNet-50's four stride-1 3×3 classes at batch 8 on llvmpipe, median wall ms of five
 * interleaved calls (forward with bias and ReLU, constant weight): 64 × 56² blocked 111.2 → Winograd 84.1,
 * 128 × 28² 101.2 → 71.2, 256 × 14² 110.4 → 55.3, 512 × 7² 105.3 → 65.8. Training keeps `blocked`: there
 * the weight's transform runs every step (13 × ~7.7 ms at batch 2), the step's GPU time fell only ~5 %, and
 * F(4×4)'s rounding (~10× the direct sum's, within TOL.conv2d) moved the losses of a few steps by up to 0.15 %.
 */
function defaultVariant(e: Engine, pass: Conv2dPass, g: Conv2dGeometry, constantWeight = false): Variant {
  if (e.adapterInfo.software && pass === "fwd" && constantWeight && winogradSupports(g)) {
    // Not where one image's transforms or the transformed weight exceed one binding.
    const w = parseVariant("winograd/f4");
    if (w.strategy.footprint(e, pass, { ...g, n: 1 }, w.config).elements <= bindingElements(e)) return w;
  }
  const v = parseVariant(e.adapterInfo.software ? "blocked" : "implicit_gemm");
  return v.strategy.unsupported(e, pass, g, v.config) === null ? v : parseVariant("direct");
}

/**
 * The variant that runs `pass` at `g` on `e`: forced, else the tuning table's, else the default (which
 * depends on whether the weight is constant, Conv2dOptions.constantWeight).
 */
function resolve(e: Engine, pass: Conv2dPass, g: Conv2dGeometry, constantWeight = false): Variant {
  const op = TUNING_OP[pass];
  const shapeClass = conv2dShapeClass(g);
  const id = chosenVariant(e, op, shapeClass);
  if (id === undefined) return defaultVariant(e, pass, g, constantWeight);
  // A forced variant equal to the table's entry is treated as the table's.
  const key = tuningKey(op, shapeClass);
  const fromTable = tuningOf(e)?.entries[key] === id;
  const refuse = (why: string) =>
    new RangeError(
      `Cannot ${OP_NAME[pass]} ${geometryLabel(g)} with variant "${id}"` +
        `${fromTable ? ` (tuning table entry "${key}")` : ""}: ${why}`,
    );
  let v: Variant;
  try {
    v = parseVariant(id);
  } catch (err) {
    throw refuse((err as Error).message);
  }
  const why = v.strategy.unsupported(e, pass, g, v.config);
  if (why === null) return v;
  if (fromTable) return defaultVariant(e, pass, g, constantWeight);
  throw refuse(why);
}

const call = (v: Variant, pass: Conv2dPass, info: string): Conv2dCall => ({
  op: OP_NAME[pass],
  variant: v.id,
  info,
});

/**
 * The shape class of a convolution in the tuning table: kernel and stride exactly, channels in and out and
 * the larger spatial side rounded up to powers of two, e.g. `k3s1 c64-64 hw64` (batch and padding left
 * out). ResNet-50's 53 convolutions at 224² fall into 23 classes.
 *
 * @example
 * ```ts
 * conv2dShapeClass(conv2dGeometry([8, 64, 56, 56], [64, 64, 3, 3], { padding: 1 })); // "k3s1 c64-64 hw64"
 * ```
 */
export function conv2dShapeClass(g: Conv2dGeometry): string {
  const pow2 = (v: number) => 2 ** Math.ceil(Math.log2(Math.max(v, 1)));
  const k = g.kh === g.kw ? `${g.kh}` : `${g.kh}x${g.kw}`;
  return `k${k}s${g.stride} c${pow2(g.cin)}-${pow2(g.cout)} hw${pow2(Math.max(g.h, g.w))}`;
}

/**
 * The variants that can run `op` at geometry `g` on `engine`: the candidates `he2gene tune` times (every
 * strategy; the block sizes of `blocked`; four register blocks of `implicit_gemm`).
 *
 * @example
 * ```ts
 * const ids = conv2dCandidates(engine, "conv2d.fwd", conv2dGeometry(x.shape, w.shape, { padding: 1 }));
 * // ["blocked", "blocked/t8", …, "direct"]
 * ```
 */
export function conv2dCandidates(engine: Engine, op: Conv2dTuningOp, g: Conv2dGeometry): string[] {
  if (!Object.hasOwn(PASS, op)) {
    throw new RangeError(
      `Cannot list conv2d candidates for "${op}": the ops are ${Object.keys(PASS).join(", ")}`,
    );
  }
  const pass = PASS[op];
  return CANDIDATES.filter((id) => {
    const v = parseVariant(id);
    return v.strategy.unsupported(engine, pass, g, v.config) === null;
  });
}

/**
 * Run `fn` with all three conv2d passes forced to `variant` (see `withVariant` in kernels/tuning.ts).
 *
 * @example
 * ```ts
 * const dw = withConv2dVariant("blocked/t16", () => conv2dBackwardWeight(x, dy, w.shape, { padding: 1 }));
 * ```
 */
export function withConv2dVariant<T>(variant: string, fn: () => T): T {
  return withVariant(
    "conv2d.fwd",
    variant,
    () => withVariant("conv2d.dx", variant, () => withVariant("conv2d.dw", variant, fn)),
  );
}

// ------------------------------------------------------------------------------------ chunks of images

/**
 * Images per launch of `pass`: the whole batch when its footprint fits the device (one launch), else the
 * size of the fewest equal chunks that fit (checked for the last, smaller one too). Throws a RangeError
 * when one image does not fit.
 */
function imagesPerLaunch(e: Engine, pass: Conv2dPass, g: Conv2dGeometry, v: Variant): number {
  const cap = bindingElements(e), maxGroups = e.limits.maxComputeWorkgroupsPerDimension;
  const need = (n: number) => v.strategy.footprint(e, pass, { ...g, n }, v.config);
  const fits = (n: number) => {
    const f = need(n);
    return f.elements <= cap && f.groups <= maxGroups;
  };
  if (fits(g.n)) return g.n;
  const one = need(1);
  if (one.elements > cap || one.groups > maxGroups) {
    const why = one.elements > cap
      ? `a binding of ${fmtBytes(4 * one.elements)}, more than maxStorageBufferBindingSize ` +
        `(${fmtBytes(e.maxBinding)})`
      : `${one.groups} workgroups along one dimension, more than the device's ${maxGroups}`;
    throw new RangeError(
      `Cannot ${OP_NAME[pass]} ${geometryLabel(g)} with variant "${v.id}": one image needs ${why}`,
    );
  }
  for (let k = 2;; k++) {
    const size = Math.ceil(g.n / k), last = g.n - (Math.ceil(g.n / size) - 1) * size;
    if (fits(size) && fits(last)) return size;
  }
}

/** Images `n0 … n0 + count` of a (N, …) tensor, copied into a new one. */
function images(t: Tensor, n0: number, count: number): Tensor {
  const e = t.engine, per = t.size / t.shape[0];
  const out = e.empty([count, ...t.shape.slice(1)], "conv2d chunk");
  e.copy(t, out, { srcOffset: n0 * per, size: count * per });
  return out;
}

/** A (N, …) output of shape `shape` assembled from `launch(n0, count)` on chunks of `per` images. */
function stitched(
  e: Engine,
  shape: readonly number[],
  per: number,
  launch: (n0: number, count: number) => Tensor,
): Tensor {
  const out = e.empty(shape, "conv2d");
  const n = shape[0], perImage = out.size / n;
  for (let n0 = 0; n0 < n; n0 += per) {
    e.scope(() => e.copy(launch(n0, Math.min(per, n - n0)), out, { dstOffset: n0 * perImage }));
  }
  return out;
}

// ------------------------------------------------------------------------------------------ launchers

/**
 * Convolution forward with the fused epilogue, not recorded on the tape (use `conv2d` from ops/ for
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
  if (outShape.includes(0)) return e.empty(outShape, "conv2d");
  const v = resolve(e, "fwd", g, !!options.constantWeight);
  const info = `[${x.shape}]*[${w.shape}] s${g.stride} p${g.pad}`;
  const per = imagesPerLaunch(e, "fwd", g, v);
  if (per === g.n) return v.strategy.forward(x, w, g, options, v.config, call(v, "fwd", info));
  return stitched(e, outShape, per, (n0, nc) =>
    v.strategy.forward(
      images(x, n0, nc),
      w,
      { ...g, n: nc },
      { ...options, residual: residual ? images(residual, n0, nc) : null },
      v.config,
      call(v, "fwd", `${info} images ${n0}+${nc}`),
    ));
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
  if (xShape.includes(0)) return e.empty(xShape, "conv2d dx");
  if (g.cout === 0 || dy.size === 0) return e.zeros(xShape, "conv2d dx");
  const v = resolve(e, "dx", g);
  const info = `dy[${dy.shape}]*[${w.shape}]→[${xShape}] s${g.stride} p${g.pad}`;
  const per = imagesPerLaunch(e, "dx", g, v);
  if (per === g.n) return v.strategy.backwardInput(dy, w, g, v.config, call(v, "dx", info));
  return stitched(e, xShape, per, (n0, nc) =>
    v.strategy.backwardInput(
      images(dy, n0, nc),
      w,
      { ...g, n: nc },
      v.config,
      call(v, "dx", `${info} images ${n0}+${nc}`),
    ));
}

/**
 * Gradient of the convolution's weight from x and dy.
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
  if (wShape.includes(0)) return e.empty(wShape, "conv2d dw");
  if (g.n * g.oh === 0 || g.ow === 0) return e.zeros(wShape, "conv2d dw");
  const v = resolve(e, "dw", g);
  const info = `x[${x.shape}] dy[${dy.shape}]→[${wShape}] s${g.stride} p${g.pad}`;
  const per = imagesPerLaunch(e, "dw", g, v);
  if (per === g.n) return v.strategy.backwardWeight(x, dy, g, v.config, call(v, "dw", info));
  // dw = Σ over the chunks of their weight gradients: stacked (S, Cout, Cin, KH, KW), then summed.
  const chunks = Math.ceil(g.n / per), size = wShape.reduce((a, b) => a * b, 1);
  const parts = e.empty([chunks, ...wShape], "conv2d dw chunks");
  for (let k = 0; k < chunks; k++) {
    const n0 = k * per, nc = Math.min(per, g.n - n0);
    e.scope(() => {
      const dw = v.strategy.backwardWeight(
        images(x, n0, nc),
        images(dy, n0, nc),
        { ...g, n: nc },
        v.config,
        call(v, "dw", `${info} images ${n0}+${nc}`),
      );
      e.copy(dw, parts, { dstOffset: k * size });
    });
  }
  const dw = reduce("sum", parts, { axes: 0 });
  parts.dispose();
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

/**
 * The variant `op` runs at geometry `g` on `engine` now: a forced one, else the tuning table's (where it can
 * run `g`), else the built-in default for the adapter's kind and whether the weight is constant
 * (Conv2dOptions.constantWeight: prediction). For reports such as the benchmark's.
 *
 * @example
 * ```ts
 * const g = conv2dGeometry([8, 64, 56, 56], [64, 64, 3, 3], { padding: 1 });
 * conv2dVariantFor(engine, "conv2d.fwd", g); // "blocked" on llvmpipe without a tuning table
 * conv2dVariantFor(engine, "conv2d.fwd", g, true); // "winograd/f4" there
 * ```
 */
export function conv2dVariantFor(
  engine: Engine,
  op: Conv2dTuningOp,
  g: Conv2dGeometry,
  constantWeight = false,
): string {
  if (!Object.hasOwn(PASS, op)) {
    throw new RangeError(
      `Cannot name the conv2d variant for "${op}": the ops are ${Object.keys(PASS).join(", ")}`,
    );
  }
  return resolve(engine, PASS[op], g, constantWeight).id;
}
