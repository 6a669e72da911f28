/**
 * What every conv2d strategy shares: the options and the resolved geometry (PyTorch semantics,
 * `torch.nn.functional.conv2d`: OH = ⌊(H + 2p − KH) / s⌋ + 1), the strategy interface that
 * kernels/conv2d/mod.ts dispatches through, the fused epilogue as one WGSL function, the workgroup-count
 * check, the code-generation helpers of the unrolled register blocks, and the cache of packed layouts of
 * constant weights ({@linkcode releaseConv2dWeight}).
 *
 * @module
 */
import type { Engine } from "../../engine/engine.ts";
import type { BindingDecl, VariantParams } from "../../engine/kernel.ts";
import type { Tensor } from "../../engine/tensor.ts";
import { wgsl } from "../_wgsl.ts";
import { reduce } from "../reduce.ts";

/** Options of `conv2d` and {@linkcode Conv2dStrategy.forward}. */
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
 * Resolve and validate the geometry; errors name the op and both shapes.
 *
 * @example
 * ```ts
 * const g = conv2dGeometry([8, 3, 224, 224], [64, 3, 7, 7], { stride: 2, padding: 3 }); // g.oh = 112
 * ```
 */
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

/** `x[N,C,H,W] w[Co,Ci,KH,KW] s1 p1`: a geometry in errors and traces. */
export const geometryLabel = (g: Conv2dGeometry) =>
  `x[${g.n},${g.cin},${g.h},${g.w}] w[${g.cout},${g.cin},${g.kh},${g.kw}] s${g.stride} p${g.pad}`;

/** Throw unless dy has the convolution's output shape. */
export function checkDy(dy: Tensor, g: Conv2dGeometry): void {
  const want = [g.n, g.cout, g.oh, g.ow];
  if (dy.rank !== 4 || dy.shape.some((d, i) => d !== want[i])) {
    throw new RangeError(
      `Cannot conv2d backward with dy of shape [${dy.shape}]: the convolution's output has shape [${want}]`,
    );
  }
}

/** 1×1, stride 1, no padding: the convolution is a batched GEMM over H·W. */
export const isGemm = (g: Conv2dGeometry) => g.kh === 1 && g.kw === 1 && g.stride === 1 && g.pad === 0;

// ------------------------------------------------------------------------------------------ strategies

/** The three passes of a convolution, as the tuning table names them (`conv2d.fwd`, …). */
export type Conv2dPass = "fwd" | "dx" | "dw";

/** One launch of a strategy: the op's name in errors, the variant id, and the shapes (traces). */
export interface Conv2dCall {
  /** `conv2d`, `conv2d backward (input)` or `conv2d backward (weight)`. */
  op: string;
  /** The variant id, e.g. `blocked/t16`. */
  variant: string;
  /** Shapes, stride and padding, shown in traces and errors. */
  info: string;
}

/**
 * What one launch of a pass needs of the device, for kernels/conv2d/mod.ts to split a batch that does not
 * fit into chunks of whole images that do.
 */
export interface Conv2dFootprint {
  /**
   * The most f32 elements one storage binding holds: the inputs, the output and every intermediate the
   * strategy makes (channels-last copies, packed weights, partial sums, transforms not chunked inside).
   */
  elements: number;
  /** The most workgroups of one dispatch along one dimension (0: all dispatches go through `grid`). */
  groups: number;
}

/**
 * A convolution strategy: its three passes on validated, non-empty inputs, each returning a new tensor.
 * A variant id is `<strategy>[/<param>…]`; `config` parses the params (throwing a RangeError that says
 * what it accepts) and `unsupported` says why a geometry cannot run (null: it can).
 */
export interface Conv2dStrategy<C> {
  /** Parse the params of a variant id (the parts after the strategy's name). */
  config(params: readonly string[]): C;
  /** Why this variant cannot run `pass` at `g` on `e`, or null. */
  unsupported(e: Engine, pass: Conv2dPass, g: Conv2dGeometry, c: C): string | null;
  /**
   * What `pass` at `g` (batch `g.n`) needs, never less than it binds and dispatches, so that the launchers
   * can split a batch that exceeds the device's limits.
   */
  footprint(e: Engine, pass: Conv2dPass, g: Conv2dGeometry, c: C): Conv2dFootprint;
  /** y = epilogue(conv(x, w)) of shape (N, Cout, OH, OW). */
  forward(x: Tensor, w: Tensor, g: Conv2dGeometry, o: Conv2dOptions, c: C, call: Conv2dCall): Tensor;
  /** dx of shape (N, Cin, H, W) from dy (N, Cout, OH, OW). */
  backwardInput(dy: Tensor, w: Tensor, g: Conv2dGeometry, c: C, call: Conv2dCall): Tensor;
  /** dw of shape (Cout, Cin, KH, KW) from x and dy. */
  backwardWeight(x: Tensor, dy: Tensor, g: Conv2dGeometry, c: C, call: Conv2dCall): Tensor;
}

/**
 * The most elements of the tensors a launcher is given or returns: x (or dx), y (or dy, the residual) and
 * w (or dw); the bias is smaller than w.
 */
export const ioElements = (g: Conv2dGeometry) =>
  Math.max(g.n * g.cin * g.h * g.w, g.n * g.cout * g.oh * g.ow, g.cout * g.cin * g.kh * g.kw);

/**
 * The most loop iterations one invocation runs: llvmpipe (Mesa's gallivm) ends the loops of an invocation
 * once they have iterated 65 535 times in all, silently (`LP_MAX_TGSI_LOOP_ITERATIONS`, a guard against
 * infinite loops). The weight gradients, which sum over N·OH·OW, split their sums to stay at half of that.
 */
export const MAX_LOOP_STEPS = 1 << 15;

/** Parse a `split<N>` param (N ≥ 1), or return undefined when `part` is not one. */
export function splitParam(part: string): number | undefined {
  const m = /^split(\d+)$/.exec(part);
  if (!m) return undefined;
  const v = Number(m[1]);
  if (!Number.isSafeInteger(v) || v < 1) throw new RangeError(`"${part}": the split target must be ≥ 1`);
  return v;
}

/** Workgroup counts, checked against the device's per-dimension limit (the error names the variant). */
export function groups(e: Engine, call: Conv2dCall, x: number, y: number, z = 1): [number, number, number] {
  const max = e.limits.maxComputeWorkgroupsPerDimension;
  if (x > max || y > max || z > max) {
    throw new RangeError(
      `Cannot ${call.op} ${call.info} with variant "${call.variant}": ${x}×${y}×${z} workgroups exceed ` +
        `the device limit of ${max} per dimension; use a smaller batch or another variant`,
    );
  }
  return [Math.max(x, 1), Math.max(y, 1), Math.max(z, 1)];
}

// ------------------------------------------------------------------------------------------ WGSL helpers

/** Invocations per workgroup of the one-dimensional kernels (packing, copies, direct, implicit GEMM). */
export const WG = 64;

/** The geometry as kernel uniforms (`p.batch`, `p.cin`, `p.hin`, …). */
export const GEOM = {
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

/** Values of {@linkcode GEOM} for `g`. */
export function geomUniforms(g: Conv2dGeometry) {
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

const seq = (n: number) => [...Array(n).keys()];
/** Lines `f(i)` for i < n (unrolled register blocks). */
export const each = (n: number, f: (i: number) => string) => seq(n).map(f).join("\n");
/** Lines for every (i, j) of a TM×TN block. */
export const each2 = (tm: number, tn: number, f: (i: number, j: number) => string) =>
  seq(tm).flatMap((i) => seq(tn).map((j) => f(i, j))).join("\n");

/** The fused epilogue of a forward kernel: which of `+ bias[co]`, `+ residual`, ReLU it applies. */
export interface Epilogue extends VariantParams {
  bias: boolean;
  residual: boolean;
  relu: boolean;
}

/** The epilogue a call asks for. */
export const epilogueOf = (o: Conv2dOptions): Epilogue => ({
  bias: !!o.bias,
  residual: !!o.residual,
  relu: !!o.relu,
});

/** The epilogue's storage bindings (`bias`, `res`), between the inputs and `y`. */
export function epilogueBindings(e: Epilogue): BindingDecl[] {
  const b: BindingDecl[] = [];
  if (e.bias) b.push({ name: "bias", access: "read" });
  if (e.residual) b.push({ name: "res", access: "read" });
  return b;
}

/** The epilogue's tensors, in the order of {@linkcode epilogueBindings}. */
export const epilogueTensors = (o: Conv2dOptions): Tensor[] =>
  [o.bias, o.residual].filter((t): t is Tensor => !!t);

/**
 * WGSL `fn epilogue(v, co, o) -> f32`: `v + bias[co] + res[o]`, then ReLU, each only where `e` asks for
 * it (in that order, as PyTorch's `relu(conv(x) + b + shortcut)`).
 */
export const epilogueFn = (e: Epilogue) =>
  wgsl`
fn epilogue(v: f32, co: u32, o: u32) -> f32 {
  var r = v;
#if ${e.bias}
  r = r + bias[co];
#endif
#if ${e.residual}
  r = r + res[o];
#endif
#if ${e.relu}
  r = max(r, 0.0);
#endif
  return r;
}`;

// ------------------------------------------------------------------------------------------ constant weights

// Packed layouts of constant weights (Conv2dOptions.constantWeight), by layout key.
const packedCache = new WeakMap<Tensor, Map<string, Tensor>>();

/**
 * `make()` the packed weight, or for a constant weight reuse the one made before with the same `key` (the
 * layout: a strategy and its packing parameters). Returns it and whether the caller must dispose it.
 */
export function packedWeight(
  w: Tensor,
  constant: boolean | undefined,
  key: string,
  make: () => Tensor,
): { t: Tensor; temporary: boolean } {
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

/**
 * Free the packed layouts cached for a constant weight (call before disposing it).
 *
 * @example
 * ```ts
 * const y = conv2dForward(x, w, { padding: 1, constantWeight: true });
 * releaseConv2dWeight(w);
 * w.dispose();
 * ```
 */
export function releaseConv2dWeight(w: Tensor): void {
  for (const t of packedCache.get(w)?.values() ?? []) t.dispose();
  packedCache.delete(w);
}

/**
 * The weight gradient from split-K partials `part` of shape [S, ...wShape]: their sum over S (a reshape when
 * S = 1). Consumes `part`.
 */
export function sumSplits(part: Tensor, wShape: readonly number[]): Tensor {
  const dw = part.shape[0] === 1 ? part.reshape(wShape) : reduce("sum", part, { axes: 0 });
  part.dispose();
  return dw;
}
