/**
 * Self-test of every kernel on the adapter at hand: each op family's kernels, forward and backward, and
 * every variant this adapter can run (matmul register blocks and workgroup tiles, every conv2d strategy
 * and block size), on small seeded shapes with ragged edges (1, 7, 33, … — not multiples of any tile),
 * against the CPU references beside each kernel, with the test suite's tolerances (kernels/tolerance.ts).
 * It mirrors tests/kernels/*_test.ts; `he2gene selftest` (cli/selftest.ts) prints it, and it imports only
 * `engine/`, `kernels/` and `ops/` so a web page can run it too.
 *
 * The `fault` option (the CLI's `HE2GENE_SELFTEST_FAULT=<op>`) is a test hook: every GPU result of the
 * named ops is made wrong on the GPU (`+ 1` with the engine's own add before readback), so a test can
 * prove that a broken kernel fails the self-test and is named.
 *
 * @module
 */
import type { Engine } from "../engine/engine.ts";
import type { Tensor } from "../engine/tensor.ts";
import { noGrad, requiresGrad, Tape } from "../engine/autograd.ts";
import { mulberry32 } from "../engine/random.ts";
import { binary, binaryCpu, type BinaryOp, unary, unaryCpu, type UnaryOp } from "../kernels/elementwise.ts";
import { abs, add, div, exp, log, mul, neg, relu, sigmoid, sqrt, sub, tanh } from "./elementwise.ts";
import {
  reduce,
  REDUCE_ROWS,
  reduceBackward,
  reduceCpu,
  type ReduceOp,
  reduceRowsCandidates,
} from "../kernels/reduce.ts";
import {
  type Activation,
  matmulCandidates,
  matmulCpu,
  matmulForward,
  matmulReducedPrecisionVariants,
  transpose,
} from "../kernels/matmul.ts";
import { matmul } from "./matmul.ts";
import { withVariant } from "../kernels/tuning.ts";
import {
  conv2dBackwardBias,
  conv2dBackwardCpu,
  conv2dBackwardInput,
  conv2dBackwardWeight,
  conv2dCpu,
  conv2dForward,
  withConv2dVariant,
} from "../kernels/conv2d/mod.ts";
import {
  batchNorm2dBackward,
  batchNorm2dBackwardCpu,
  batchNorm2dCpu,
  batchNorm2dForward,
  batchNorm2dInference,
} from "../kernels/batchnorm.ts";
import {
  globalAvgPool2dBackward,
  globalAvgPool2dBackwardCpu,
  globalAvgPool2dCpu,
  globalAvgPool2dForward,
  maxPool2dBackward,
  maxPool2dBackwardCpu,
  maxPool2dCpu,
  maxPool2dForward,
  maxPool2dGeometry,
  type MaxPool2dOptions,
} from "../kernels/pool.ts";
import { bceLossCpu, maskedMseLossCpu, mseLossCpu } from "../kernels/loss.ts";
import { bceLoss, maskedMseLoss, mseLoss } from "./loss.ts";
import {
  Adam,
  type AdamCpuState,
  adamStepCpu,
  gradNorm,
  gradNormCpu,
  type OptimReads,
} from "../kernels/optim.ts";
import {
  layerNormBackward,
  layerNormBackwardCpu,
  layerNormCpu,
  layerNormForward,
} from "../kernels/layernorm.ts";
import {
  activationBackward,
  activationBackwardCpu,
  activationCpu,
  activationForward,
} from "../kernels/activation.ts";
import { softmaxBackward, softmaxBackwardCpu, softmaxCpu, softmaxForward } from "../kernels/softmax.ts";
import {
  attentionBackward,
  attentionBackwardCpu,
  attentionCpu,
  attentionForward,
} from "../kernels/attention.ts";
import {
  choleskyCpu,
  choleskyInPlace,
  crossprod,
  crossprodCpu,
  solveLowerInPlace,
  solveUpperInPlace,
  triangularSolveCpu,
} from "../kernels/linalg.ts";
import { hasSubgroups, stagesTiles } from "../kernels/_wgsl.ts";
import {
  compareClose,
  type Comparison,
  lossGradTolerance,
  TOL,
  type Tolerance,
} from "../kernels/tolerance.ts";

/**
 * The op families the self-test covers, in the order it runs them.
 *
 * @example
 * ```ts
 * const seen = new Set(results.map((r) => r.family));
 * const missing = SELFTEST_FAMILIES.filter((f) => !seen.has(f));
 * ```
 */
export const SELFTEST_FAMILIES = [
  "elementwise",
  "reduce",
  "matmul",
  "conv2d",
  "batchnorm",
  "pool",
  "loss",
  "optim",
  "transformer",
  "linalg",
] as const;

/** One op family of {@linkcode SELFTEST_FAMILIES}. */
export type SelftestFamily = typeof SELFTEST_FAMILIES[number];

/** The outcome of one self-test check: one op, one variant, over a few shapes. */
export interface SelftestResult {
  family: SelftestFamily;
  /** The op, e.g. `relu`, `matmul`, `conv2d_backward_weight`, `adam_step`. */
  op: string;
  /** The kernel variant or mode, e.g. `reg 16×16 cols`, `tiled 4×4`, `training`. */
  variant: string;
  /** The shapes checked, in short. */
  shape: string;
  /** Largest |GPU − CPU| of the output that came closest to (or went past) its tolerance; NaN on an error. */
  maxError: number;
  /**
   * That output's tolerance: `|err| ≤ atol + rtol·s`, `s` the reference value, Σ|a||b| (products), or the
   * scale a check names (`relativeTo`, e.g. `√A_ii` for a Cholesky factor).
   */
  tolerance: Tolerance & { relativeTo: string };
  /** Largest |err| / (atol + rtol·s) over every value checked: ≤ 1 passes. */
  ratio: number;
  /** Wall time of the check in ms: compilation on first use, the GPU run, readback and the CPU reference. */
  ms: number;
  ok: boolean;
  /** Why it failed: the output and shape, the first mismatch and the worst error, or the error thrown. */
  detail?: string;
}

/** Options of {@linkcode runSelftest}. */
export interface SelftestOptions {
  /**
   * Skip what is slow to compile on a software adapter and the large shapes: the 32×32 register-blocked
   * kernels (50–130 s each the first time on llvmpipe), all but one shape per 16×16 kernel, and the tiled
   * matmul behind OpenGL (~100 s there). Mesa caches compiled shaders, so later runs are much faster.
   */
  quick?: boolean;
  /** Ops whose GPU results are made wrong on purpose (a test hook); unknown names throw a RangeError. */
  fault?: readonly string[];
  /** Run only these ops (names as {@linkcode selftestOps}); unknown names throw a RangeError. */
  only?: readonly string[];
  /** Called before each check (e.g. to show what is compiling). */
  onStart?: (
    check: {
      family: SelftestFamily;
      op: string;
      variant: string;
      shape: string;
      index: number;
      total: number;
    },
  ) => void;
  /** Called with each result as it is known. */
  onResult?: (result: SelftestResult, index: number, total: number) => void;
  /**
   * Which check to run next, an index into the list (≥ its length ends the run). Several engines share
   * one self-test by calling one shared counter (the CLI's `--jobs`: each compiles its own kernels, so a
   * cold run scales with the cores); the default runs every check in turn.
   */
  next?: () => number;
}

// ------------------------------------------------------------------------------------------ plumbing

/** Seeded uniform values in [lo, hi) (mulberry32, as the tests' `rand`). */
/**
 * The tile variants (staged in workgroup memory, read from storage) of the kernels that have both: the
 * staged ones only where the backend compiles them in reasonable time (see `stagesTiles`); --quick only
 * the adapter's own.
 */
function stagedVariants(e: Engine, quick: boolean): boolean[] {
  return quick ? [stagesTiles(e)] : stagesTiles(e) ? [true, false] : [false];
}

function rnd(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  const u = mulberry32(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = lo + (hi - lo) * u();
  return out;
}

const errorText = (err: unknown) => `${(err as Error)?.name ?? "Error"}: ${(err as Error)?.message ?? err}`;
const prod = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);
const absf = (a: Float32Array) => a.map(Math.abs);
const fmt = (s: readonly number[]) => `[${s.join(",")}]`;

interface Worst {
  what: string;
  cmp: Comparison;
  tol: Tolerance;
  /** The name of the scale it was compared against, when not the reference. */
  scale?: string;
}

/**
 * Reads GPU results (wrong on purpose when the op is faulted) and compares them with the reference.
 * Readbacks start at once and are compared in {@linkcode Checker.settle}, so the many small reads of one
 * check wait for the GPU together rather than one after another.
 */
class Checker {
  #worst: Worst | null = null;
  #ratio = 0;
  #detail: string | undefined;
  #checked = 0;
  #pending: Promise<void>[] = [];

  constructor(readonly fault: boolean) {}

  /** The tensor's values; with a fault, those of `t + 1` computed on the GPU. Starts the readback now. */
  read(t: Tensor): Promise<Float32Array> {
    if (!this.fault) return t.toArray();
    const wrong = noGrad(() => add(t, 1));
    const p = wrong.toArray();
    wrong.dispose(); // the copy to the staging buffer is already submitted
    return p;
  }

  /**
   * Compare `got` (values, or a pending readback) with `want` (against `scale` where given: for products
   * Σ|a||b|, else what `scaleName` says).
   */
  close(
    what: string,
    got: ArrayLike<number> | Promise<ArrayLike<number>>,
    want: ArrayLike<number>,
    tol: Tolerance,
    scale?: ArrayLike<number>,
    scaleName = "Σ|a||b|",
  ): void {
    // A failed readback is a failed check (handled at once: never an unhandled rejection).
    this.#pending.push(
      Promise.resolve(got).then(
        (g) => this.#compare(what, g, want, tol, scale, scaleName),
        (err) => this.fail(`${what}: ${errorText(err)}`),
      ),
    );
  }

  /** Wait for every pending readback and compare it (never throws: failures are recorded). */
  async settle(): Promise<void> {
    const pending = this.#pending;
    this.#pending = [];
    await Promise.all(pending);
  }

  #compare(
    what: string,
    got: ArrayLike<number>,
    want: ArrayLike<number>,
    tol: Tolerance,
    scale: ArrayLike<number> | undefined,
    scaleName: string,
  ) {
    if (got.length !== want.length) {
      this.fail(`${what}: ${got.length} values, expected ${want.length}`);
      return;
    }
    const cmp = compareClose(got, want, tol, scale);
    this.#checked++;
    if (!this.#worst || cmp.ratio > this.#worst.cmp.ratio) {
      this.#worst = { what, cmp, tol, scale: scale ? scaleName : undefined };
    }
    this.#ratio = Math.max(this.#ratio, cmp.ratio);
    if (!cmp.ok && this.#detail === undefined) {
      const i = cmp.firstBad;
      this.#detail = `${what}: ${cmp.count} values, first mismatch at ${i}: got ${got[i]}, expected ` +
        `${want[i]}; worst |err| ${cmp.worstBad} at ${cmp.worstAt}`;
    }
  }

  /** Check an output's shape. */
  shape(what: string, got: readonly number[], want: readonly number[]) {
    if (got.length !== want.length || got.some((d, i) => d !== want[i])) {
      this.fail(`${what}: shape ${fmt(got)}, expected ${fmt(want)}`);
    }
  }

  fail(detail: string) {
    this.#detail ??= detail;
    this.#ratio = Infinity;
  }

  result(): Pick<SelftestResult, "maxError" | "tolerance" | "ratio" | "ok" | "detail"> {
    const w = this.#worst;
    const detail = this.#detail ?? (this.#checked === 0 ? "nothing was compared" : undefined);
    return {
      maxError: w ? w.cmp.maxError : NaN,
      tolerance: {
        rtol: w?.tol.rtol ?? NaN,
        atol: w?.tol.atol ?? NaN,
        relativeTo: w?.scale ?? "reference",
      },
      ratio: this.#ratio,
      ok: detail === undefined,
      detail,
    };
  }
}

/** One check: an op and variant over a few shapes. */
interface Case {
  family: SelftestFamily;
  op: string;
  variant: string;
  shape: string;
  /** Records the GPU work, starts the readbacks and queues the comparisons (see {@linkcode Checker}). */
  run: (e: Engine, c: Checker) => void | Promise<void>;
}

/** Gradients of `inputs` through the tape of `f`, seeded with `dy` (the output gradient); readbacks started. */
function tapeGrads(
  e: Engine,
  f: (xs: Tensor[]) => Tensor,
  inputs: { data: Float32Array; shape: readonly number[] }[],
  dy: Float32Array | null,
  read: (t: Tensor) => Promise<Float32Array>,
): { y: Tensor; grads: (Promise<Float32Array> | null)[] } {
  const ts = inputs.map((x) => requiresGrad(e.tensor(x.data, x.shape)));
  const tape = new Tape();
  try {
    const y = tape.record(() => f(ts));
    const grads = tape.backward(y, dy ? e.tensor(dy, y.shape) : undefined);
    const out = ts.map((t) => {
      const g = grads.get(t);
      return g ? read(g) : null;
    });
    for (const g of grads.values()) g.dispose();
    return { y, grads: out };
  } finally {
    tape.dispose();
  }
}

/** Sum `g` (shape `gShape`) down to `shape`, undoing NumPy broadcasting (CPU; reduceCpu). */
function unbroadcastCpu(g: Float32Array, gShape: readonly number[], shape: readonly number[]): Float32Array {
  const lead = gShape.length - shape.length;
  const axes: number[] = [];
  for (let i = 0; i < gShape.length; i++) {
    if (i < lead || (shape[i - lead] === 1 && gShape[i] !== 1)) axes.push(i);
  }
  return axes.length ? reduceCpu("sum", g, gShape, { axes }).data : g;
}

// ------------------------------------------------------------------------------------------ elementwise

const UNARY: UnaryOp[] = ["relu", "sigmoid", "exp", "log", "sqrt", "neg", "abs", "tanh"];
/** The differentiable (taped) unary ops by name. */
const UNARY_FN: Record<UnaryOp, (x: Tensor) => Tensor> = { relu, sigmoid, exp, log, sqrt, neg, abs, tanh };
const BINARY: BinaryOp[] = ["add", "sub", "mul", "div", "maximum", "minimum"];

/** dx of each unary op from dy, x and y, composed of the CPU references (as the backward composes kernels). */
const UNARY_GRAD_CPU: Record<UnaryOp, (dy: Float32Array, x: Float32Array, y: Float32Array) => Float32Array> =
  {
    relu: (dy, x) => bin("relu_grad", dy, x),
    sigmoid: (dy, _x, y) => bin("sigmoid_grad", dy, y),
    exp: (dy, _x, y) => bin("mul", dy, y),
    log: (dy, x) => bin("div", dy, x),
    sqrt: (dy, _x, y) => bin("mul", bin("div", dy, y), new Float32Array(dy.length).fill(0.5)),
    neg: (dy) => unaryCpu("neg", dy),
    abs: (dy, x) => bin("sign_mul", dy, x),
    tanh: (dy, _x, y) => bin("tanh_grad", dy, y),
  };
const bin = (op: BinaryOp, a: Float32Array, b: Float32Array) =>
  binaryCpu(op, a, [a.length], b, [b.length]).data;

function unaryInput(op: UnaryOp, n: number, seed: number): Float32Array {
  // log and sqrt need positive inputs; the others see both signs and large magnitudes.
  return op === "log" || op === "sqrt" ? rnd(n, seed, 0.01, 50) : rnd(n, seed, -30, 30);
}

function elementwiseCases(quick: boolean): Case[] {
  const sizes = quick ? [1, 7, 33, 1000] : [1, 7, 33, 1000, 100_003];
  const sizeText = sizes.map((n) => `[${n}]`).join(" ");
  const cases: Case[] = [];
  for (const op of UNARY) {
    cases.push({
      family: "elementwise",
      op,
      variant: "forward",
      shape: sizeText,
      run: (e, c) => {
        for (const n of sizes) {
          const x = unaryInput(op, n, n + 3);
          const y = unary(op, e.tensor(x, [n]));
          c.close(`${op} [${n}]`, c.read(y), unaryCpu(op, x), TOL.elementwise);
        }
      },
    });
  }
  for (const op of UNARY) {
    cases.push({
      family: "elementwise",
      op: `${op}_backward`,
      variant: "tape",
      shape: "[7,33]",
      run: (e, c) => {
        const shape = [7, 33];
        // Inputs away from relu's and abs's kink at 0, where the derivative is a convention.
        const x = unaryInput(op, 231, 17).map((v) => (Math.abs(v) < 1e-3 ? 1 : v));
        const dy = rnd(231, 18);
        const { grads } = tapeGrads(
          e,
          ([t]) => UNARY_FN[op](t),
          [{ data: x, shape }],
          dy,
          (t) => c.read(t),
        );
        const want = UNARY_GRAD_CPU[op](dy, x, unaryCpu(op, x));
        c.close(`d${op}/dx [7,33]`, grads[0] ?? new Float32Array(), want, TOL.elementwise);
      },
    });
  }
  const pairs: [number[], number[]][] = [
    [[129], [129]],
    [[7, 33], [7, 33]],
    [[7, 33], [33]],
    [[7, 1], [1, 33]],
    [[2, 3, 1, 5], [3, 4, 1]],
    [[1], [1000]],
    [[], [3, 2]],
    [[1, 1, 1, 1, 1, 1, 2], [3, 1]],
  ];
  for (const op of BINARY) {
    cases.push({
      family: "elementwise",
      op,
      variant: "broadcast",
      shape: "[7,1]∘[1,33], [2,3,1,5]∘[3,4,1], …",
      run: (e, c) => {
        for (const [sa, sb] of pairs) {
          const na = prod(sa), nb = prod(sb);
          const a = rnd(na, na + 1, -4, 4);
          const b = op === "div" ? rnd(nb, nb + 2, 0.5, 3) : rnd(nb, nb + 2, -4, 4);
          const y = binary(op, e.tensor(a, sa), e.tensor(b, sb));
          const want = binaryCpu(op, a, sa, b, sb);
          const what = `${op} ${fmt(sa)} ∘ ${fmt(sb)}`;
          c.shape(what, y.shape, want.shape);
          c.close(what, c.read(y), want.data, TOL.elementwise);
        }
        // The scalar form (x ∘ 2.5) and its reversed form (2.5 ∘ x).
        const x = rnd(1000, 5, 0.5, 3), s = new Float32Array(1000).fill(2.5);
        const t = e.tensor(x, [10, 100]);
        c.close(`${op} x ∘ 2.5`, c.read(binary(op, t, 2.5)), bin(op, x, s), TOL.elementwise);
        c.close(`${op} 2.5 ∘ x`, c.read(binary(op, t, 2.5, true)), bin(op, s, x), TOL.elementwise);
      },
    });
  }
  // Same shapes from 2¹⁶ elements: operands read through flat textures on software adapters (vec4, storage
  // reads elsewhere).
  for (const op of BINARY) {
    cases.push({
      family: "elementwise",
      op,
      variant: "large",
      shape: "[2,16,48,48] ∘ same (textures on software adapters)",
      run: (e, c) => {
        const shape = [2, 16, 48, 48], n = prod(shape);
        const a = rnd(n, 17, -4, 4), b = op === "div" ? rnd(n, 18, 0.5, 3) : rnd(n, 18, -4, 4);
        const y = binary(op, e.tensor(a, shape), e.tensor(b, shape));
        c.close(`${op} [2,16,48,48]`, c.read(y), bin(op, a, b), TOL.elementwise);
      },
    });
  }
  for (const op of UNARY) {
    cases.push({
      family: "elementwise",
      op,
      variant: "large",
      shape: "[2,16,48,48] (textures on software adapters)",
      run: (e, c) => {
        const shape = [2, 16, 48, 48], x = unaryInput(op, prod(shape), 19);
        c.close(
          `${op} [2,16,48,48]`,
          c.read(unary(op, e.tensor(x, shape))),
          unaryCpu(op, x),
          TOL.elementwise,
        );
      },
    });
  }
  const fns = { add, sub, mul, div };
  for (const op of ["add", "sub", "mul", "div"] as const) {
    cases.push({
      family: "elementwise",
      op: `${op}_backward`,
      variant: "broadcast, tape",
      shape: "[7,33]∘[33], [7,1]∘[1,33], [2,3,1,5]∘[3,4,1]",
      run: (e, c) => {
        for (const [sa, sb] of [pairs[2], pairs[3], pairs[4]]) {
          const na = prod(sa), nb = prod(sb);
          const a = rnd(na, na + 11, -2, 2);
          const b = op === "div" ? rnd(nb, nb + 12, 0.5, 3) : rnd(nb, nb + 12, -2, 2);
          const yShape = binaryCpu(op, a, sa, b, sb).shape;
          const dy = rnd(prod(yShape), 13);
          const { grads } = tapeGrads(
            e,
            ([ta, tb]) => fns[op](ta, tb),
            [{ data: a, shape: sa }, { data: b, shape: sb }],
            dy,
            (t) => c.read(t),
          );
          // dy·∂y/∂a and dy·∂y/∂b at the output's shape, then summed down to each operand's shape.
          const ab = (o: BinaryOp, u: Float32Array, su: number[], v: Float32Array, sv: number[]) =>
            binaryCpu(o, u, su, v, sv).data;
          let ga: Float32Array, gb: Float32Array;
          if (op === "add") [ga, gb] = [dy, dy];
          else if (op === "sub") [ga, gb] = [dy, unaryCpu("neg", dy)];
          else if (op === "mul") [ga, gb] = [ab("mul", dy, yShape, b, sb), ab("mul", dy, yShape, a, sa)];
          else {
            ga = ab("div", dy, yShape, b, sb);
            const bb = ab("mul", b, sb, b, sb);
            gb = unaryCpu("neg", ab("div", ab("mul", dy, yShape, a, sa), yShape, bb, sb));
          }
          const what = `${op} ${fmt(sa)} ∘ ${fmt(sb)}`;
          // Broadcast operands sum a few products: the reduce tolerance.
          c.close(`${what} da`, grads[0] ?? [], unbroadcastCpu(ga, yShape, sa), TOL.reduce);
          c.close(`${what} db`, grads[1] ?? [], unbroadcastCpu(gb, yShape, sb), TOL.reduce);
        }
      },
    });
  }
  return cases;
}

// ------------------------------------------------------------------------------------------ reduce

function reduceCases(e: Engine, quick: boolean): Case[] {
  const shapes: [number[], number | number[] | undefined][] = [
    [[1], undefined],
    [[7], 0],
    [[33, 129], 1],
    [[33, 129], 0],
    [[7, 33, 5], [0, 2]],
    [[7, 33, 5], [1]],
    [[4, 3, 9, 11], [1, 2]],
    [[4, 3, 9, 11], [-1]],
    [[1000], undefined],
    ...(quick ? [] : [[[2, 10000], 1], [[20001, 3], 0]] as [number[], number][]),
  ];
  const cases: Case[] = [];
  // The row passes (inner = 1) also through subgroup operations where the device has them (Chrome).
  const rowVariants = reduceRowsCandidates(e);
  for (const rows of rowVariants) {
    for (const op of ["sum", "mean", "max"] as ReduceOp[]) {
      cases.push({
        family: "reduce",
        op,
        variant: rows === "tree" ? "axes, keepDims" : `axes, keepDims, rows by ${rows}`,
        shape: quick ? "[33,129], [7,33,5], [4,3,9,11], …" : "… [2,10000], [20001,3]",
        run: (e, c) =>
          withVariant(REDUCE_ROWS, rows, () => {
            for (const [shape, axes] of shapes) {
              const n = prod(shape);
              const x = rnd(n, n, -2, 2);
              for (const keepDims of [false, true]) {
                const y = reduce(op, e.tensor(x, shape), { axes, keepDims });
                const want = reduceCpu(op, x, shape, { axes, keepDims });
                const what = `${op} ${fmt(shape)} axes ${axes}${keepDims ? " keepDims" : ""}`;
                c.shape(what, y.shape, want.shape);
                c.close(what, c.read(y), want.data, TOL.reduce);
              }
            }
          }),
      });
    }
  }
  for (const op of ["sum", "mean"] as const) {
    cases.push({
      family: "reduce",
      op: `${op}_backward`,
      variant: "broadcast back",
      shape: "[7,33,5] axes [0,2], [4,3,9,11] axis 1",
      run: (e, c) => {
        for (const [shape, axes] of [[[7, 33, 5], [0, 2]], [[4, 3, 9, 11], [1]]] as [number[], number[]][]) {
          const kept = shape.map((d, i) => (axes.includes(i) ? 1 : d));
          const dy = rnd(prod(kept), 32);
          const dx = reduceBackward(op, e.tensor(dy, kept), shape, { axes });
          // dx = dy broadcast over the reduced axes (÷ R for the mean).
          const r = axes.reduce((p, a) => p * shape[a], 1);
          const want = binaryCpu(
            "mul",
            new Float32Array(prod(shape)).fill(op === "sum" ? 1 : 1 / r),
            shape,
            dy,
            kept,
          );
          c.close(`d${op} ${fmt(shape)} axes ${axes}`, c.read(dx), want.data, TOL.elementwise);
        }
      },
    });
  }
  return cases;
}

// ------------------------------------------------------------------------------------------ matmul

/** A matmul check: C = op(A)·op(B) (+ bias, activation), batched or broadcast. */
export interface MmCase {
  m: number;
  k: number;
  n: number;
  tA?: boolean;
  tB?: boolean;
  batchA?: number[];
  batchB?: number[];
  bias?: boolean;
  act?: Activation;
}

function mmLabel(s: MmCase): string {
  const b = s.batchA ?? s.batchB;
  return `${b ? `${b.join("×")}·` : ""}${s.m}×${s.k}×${s.n}${s.tA ? " Aᵀ" : ""}${s.tB ? " Bᵀ" : ""}` +
    `${s.bias ? ` +bias` : ""}${s.act && s.act !== "none" ? ` ${s.act}` : ""}`;
}

/**
 * One matmul on the GPU against matmulCpu (as tests/kernels/matmul_test.ts `check`). `f16`: a reduced-precision
 * variant's check, against the CPU product of A and B rounded to f16 (what such a variant computes).
 */
function mmCheck(e: Engine, c: Checker, s: MmCase, f16 = false): void {
  const aShape = [...(s.batchA ?? []), ...(s.tA ? [s.k, s.m] : [s.m, s.k])];
  const bShape = [...(s.batchB ?? []), ...(s.tB ? [s.n, s.k] : [s.k, s.n])];
  const na = prod(aShape), nb = prod(bShape);
  const a = rnd(na, na + s.m), b = rnd(nb, nb + s.n);
  const bias = s.bias ? rnd(s.n, 7) : undefined;
  const o = { transposeA: s.tA, transposeB: s.tB, activation: s.act };
  const r = (x: Float32Array) => f16 ? x.map(Math.f16round) : x;
  const want = matmulCpu(r(a), aShape, r(b), bShape, { ...o, bias });
  const y = matmulForward(e.tensor(a, aShape), e.tensor(b, bShape), {
    ...o,
    bias: bias ? e.tensor(bias, [s.n]) : undefined,
  });
  c.shape(mmLabel(s), y.shape, want.shape);
  // Sigmoid is scaled by its slope ≤ 1/4, so the same scale bounds its error.
  c.close(mmLabel(s), c.read(y), want.data, TOL.matmul, want.scale);
}

function matmulCases(e: Engine, quick: boolean): Case[] {
  const shapes: MmCase[] = [
    { m: 1, k: 1, n: 1 },
    { m: 7, k: 33, n: 129 },
    { m: 129, k: 7, n: 33 },
    { m: 33, k: 129, n: 7 },
    { m: 1000, k: 12, n: 20 },
    { m: 5, k: 1000, n: 3 },
    { m: 64, k: 64, n: 64 },
  ];
  // `id`: the matmul variant forced for the whole check (else the adapter's choice for each shape).
  const mm = (variant: string, shape: string, list: MmCase[], id?: string, f16 = false): Case => ({
    family: "matmul",
    op: "matmul",
    variant,
    shape,
    run: (e, c) => {
      const all = () => list.forEach((s) => mmCheck(e, c, s, f16));
      if (id) withVariant("matmul", id, all);
      else all();
    },
  });
  const cases: Case[] = [
    mm("auto", "1×1×1, 7×33×129, 5×1000×3, …", shapes),
    mm("auto, Aᵀ / Bᵀ / AᵀBᵀ", "7×33×129, 129×7×33, 33×129×7", [
      ...[shapes[1], shapes[2], shapes[3]].flatMap((s) =>
        [[true, false], [false, true], [true, true]].map(([tA, tB]) => ({ ...s, tA, tB }))
      ),
    ]),
    // A short K (a weight gradient dyᵀ·x): Aᵀ·B from flat textures on software adapters.
    mm("auto, Aᵀ with a short K", "Aᵀ 2×999 · 2×64, Aᵀ 16×37 · 16×12", [
      { m: 999, k: 2, n: 64, tA: true },
      { m: 37, k: 16, n: 12, tA: true },
    ]),
    mm("auto, batched / broadcast", "3·7×12×9, 2×3·7×12×9 Bᵀ, 4·7×13×9, …", [
      { m: 7, k: 12, n: 9, batchA: [3], batchB: [3] },
      { m: 7, k: 12, n: 9, batchA: [2, 3], batchB: [2, 3], tB: true },
      { m: 7, k: 13, n: 9, batchA: [4] },
      { m: 7, k: 13, n: 9, batchB: [4], tA: true },
      { m: 5, k: 8, n: 6, batchA: [3], tA: true },
    ]),
    mm(
      "auto, bias + none / relu / sigmoid",
      "33×20×17, 9×16×12 Bᵀ",
      (["none", "relu", "sigmoid"] as Activation[]).flatMap((act) => [
        { m: 33, k: 20, n: 17, bias: true, act },
        { m: 9, k: 16, n: 12, bias: true, act, tB: true },
      ]),
    ),
  ];
  // Every variant, forced: register blocks 8/16/32 with both lane mappings, texture blocks 16/32 (batched
  // cases: batches stacked along the textures' rows), and the tiled kernel where the
  // adapter's limits allow its 16×16 workgroup and 8 KiB of workgroup memory (matmulCandidates).
  // Behind OpenGL the tiled kernels take ~15 s each to compile the first time (0.6 s through Vulkan; see
  // stagesTiles) and are not the default, so --quick leaves them out there; the 32×32 blocks (~15 s each to
  // compile) everywhere.
  const slowTiled = !stagesTiles(e);
  const vec: MmCase = { m: 300, k: 36, n: 260 }; // vec4 A and B, partial blocks
  const scalar: MmCase = { m: 129, k: 33, n: 77 }; // scalar A and B
  const batched: MmCase = { m: 65, k: 36, n: 60, batchA: [2], batchB: [2] }; // vec's kernel, two products
  const epilogue: MmCase = {
    m: 65,
    k: 40,
    n: 30,
    tB: true,
    bias: true,
    act: "relu",
    batchA: [2],
    batchB: [2],
  };
  const vecIds = matmulCandidates(e, vec.m, vec.n, vec.k);
  const ids = vecIds.filter((id) =>
    !quick || !(/^(reg|tex)\/32x32/.test(id) || (id.startsWith("tiled/") && slowTiled))
  );
  // Variants offered only for large products (the 32×64 texture block on software adapters, ~13 s to
  // compile): checked on the vec4 shape (ragged blocks), not with --quick.
  if (!quick) ids.push(...matmulCandidates(e, 1024, 1024, 1024).filter((id) => !vecIds.includes(id)));
  for (const id of ids) {
    // Each (layout, epilogue) is a kernel of its own: ~3 s to compile at 16×16 on llvmpipe, ~15 s at 32×32.
    let list = /^(reg|tex)\/32x(32|64)/.test(id) ? [vec] : [vec, batched, scalar, epilogue];
    if (quick && /^(reg|tex)\/16x16/.test(id)) list = id.endsWith("/rows") ? [vec, batched] : [scalar];
    cases.push(mm(id, list.map(mmLabel).join(", "), list, id));
  }
  // The reduced-precision variants (f16 tiles, where the device has shader-f16): against the product of the
  // f16-rounded operands, with the same tolerance. Not with --quick where tiled kernels compile slowly.
  for (const id of matmulReducedPrecisionVariants(e).filter(() => !quick || !slowTiled)) {
    const list = [vec, batched, scalar, epilogue];
    cases.push(mm(`${id} (f16 ref)`, list.map(mmLabel).join(", "), list, id, true));
  }
  // The skinny blocks (1, 2 or 4 rows × 32 or 64 columns, registers or textures) are candidates for
  // products of ≤ 4 rows. Each compiles one kernel per layout (~5 s at 4 × 64 on llvmpipe): --quick checks
  // the layout of the heads' forward (Bᵀ, bias, vec4 operands, a partial column block) only, and for the
  // texture blocks, the default for heads on software adapters, their input gradient's (B untransposed) too.
  for (const m of [1, 2, 3]) {
    for (const id of matmulCandidates(e, m, vec.n, vec.k).filter((id) => /^(reg|tex)\/[124]x/.test(id))) {
      const list = quick
        ? [{ ...vec, m, tB: true, bias: true }, ...(id.startsWith("tex/") ? [{ ...vec, m }] : [])]
        : [{ ...vec, m }, { ...scalar, m }, { ...epilogue, m }];
      cases.push(mm(id, list.map(mmLabel).join(", "), list, id));
    }
  }
  cases.push({
    family: "matmul",
    op: "matmul_backward",
    variant: "tape, bias; Bᵀ",
    shape: "7×33×5, 33×7×20 Bᵀ",
    run: (e, c) => {
      for (const s of [{ m: 7, k: 33, n: 5 }, { m: 33, k: 7, n: 20, tB: true }]) {
        const aShape = [s.m, s.k], bShape = s.tB ? [s.n, s.k] : [s.k, s.n];
        const a = rnd(s.m * s.k, 41), b = rnd(s.k * s.n, 42), bias = rnd(s.n, 43), dy = rnd(s.m * s.n, 44);
        const { grads } = tapeGrads(
          e,
          ([ta, tb, tbias]) => matmul(ta, tb, { transposeB: s.tB, bias: tbias }),
          [{ data: a, shape: aShape }, { data: b, shape: bShape }, { data: bias, shape: [s.n] }],
          dy,
          (t) => c.read(t),
        );
        // dA = dY·op(B)ᵀ, dB = Aᵀ·dY (or its transpose for Bᵀ), dbias = Σ_rows dY.
        const da = matmulCpu(dy, [s.m, s.n], b, bShape, { transposeB: !s.tB });
        const db = s.tB
          ? matmulCpu(dy, [s.m, s.n], a, aShape, { transposeA: true })
          : matmulCpu(a, aShape, dy, [s.m, s.n], { transposeA: true });
        const what = mmLabel(s);
        c.close(`${what} dA`, grads[0] ?? [], da.data, TOL.matmul, da.scale);
        c.close(`${what} dB`, grads[1] ?? [], db.data, TOL.matmul, db.scale);
        c.close(
          `${what} dbias`,
          grads[2] ?? [],
          reduceCpu("sum", dy, [s.m, s.n], { axes: 0 }).data,
          TOL.reduce,
        );
      }
    },
  });
  cases.push({
    family: "matmul",
    op: "transpose",
    variant: "last two axes",
    shape: "[2,17,33], [1,1], [65,3]",
    run: (e, c) => {
      for (const shape of [[2, 17, 33], [1, 1], [65, 3]]) {
        const x = rnd(prod(shape), 51);
        const [r, q] = shape.slice(-2), batch = prod(shape.slice(0, -2));
        const want = new Float32Array(x.length);
        for (let t = 0; t < batch; t++) {
          for (let i = 0; i < r; i++) {
            for (let j = 0; j < q; j++) want[t * r * q + j * r + i] = x[t * r * q + i * q + j];
          }
        }
        c.close(`transpose ${fmt(shape)}`, c.read(transpose(e.tensor(x, shape))), want, TOL.exact);
      }
    },
  });
  return cases;
}

// ------------------------------------------------------------------------------------------ conv2d

/** [N, Cin, H, W, Cout, K, stride, padding]: awkward sizes, not multiples of any register tile. */
export type ConvCase = [number, number, number, number, number, number, number, number];
/**
 * The conv2d geometries (also tests/kernels/conv2d_test.ts's). Channels rounded up to 4 that are a multiple
 * of 16 (indices 13, 14) let `blocked` read its forward and input-gradient operands through textures; the
 * last two: `blocked`'s matmul path.
 */
export const CONV_CASES: readonly ConvCase[] = [
  [1, 1, 1, 1, 1, 1, 1, 0], // 1×1 GEMM, scalar path (implicit_gemm)
  [2, 3, 7, 9, 5, 3, 1, 1],
  [3, 5, 13, 13, 17, 3, 2, 1],
  [2, 17, 9, 7, 3, 1, 1, 0], // 1×1 GEMM, scalar path (H·W = 63)
  [3, 5, 4, 5, 6, 1, 1, 0], // 1×1 GEMM, vec4 path (H·W = 20)
  [2, 5, 13, 9, 7, 1, 2, 0], // 1×1 stride-2 (ResNet downsample)
  [1, 3, 13, 13, 5, 7, 2, 3], // ResNet conv1 geometry
  [2, 3, 9, 13, 4, 7, 1, 3],
  [1, 1, 1, 1, 3, 3, 1, 1], // the 1×1 input sees only the centre tap
  [2, 5, 1, 7, 3, 3, 1, 1],
  [1, 3, 9, 9, 2, 3, 2, 0], // (H − K) odd at stride 2: the last row gets no gradient
  [1, 2, 1, 1, 3, 7, 2, 3], // taps entirely outside the input
  [2, 3, 8, 8, 5, 3, 3, 1], // stride 3
  [2, 13, 9, 7, 30, 3, 2, 1], // textures in `blocked` (Cin 13 → 16, Cout 30 → 32), stride phases
  [3, 16, 5, 6, 15, 1, 2, 0], // textures, 1×1 stride 2: input-gradient phases without taps
  [2, 8, 4, 6, 12, 1, 1, 0], // 1×1 with H·W, Cin, Cout multiples of 4: matmul in `blocked`
  [1, 4, 3, 4, 8, 1, 1, 0],
];
/** The stride-1 3×3 geometries of {@linkcode CONV_CASES} (those Winograd runs). */
const WINOGRAD_CASES = [1, 8, 9];
const CONV_SHAPE = "17 geometries: 1×1, 3×3, 7×7; stride 1/2/3; padding 0–3";

function convData(cc: ConvCase, seed: number) {
  const [n, cin, h, w, cout, k, stride, padding] = cc;
  const xShape = [n, cin, h, w], wShape = [cout, cin, k, k];
  const oh = Math.floor((h + 2 * padding - k) / stride) + 1,
    ow = Math.floor((w + 2 * padding - k) / stride) + 1;
  const yShape = [n, cout, oh, ow];
  return {
    xShape,
    wShape,
    yShape,
    o: { stride, padding },
    x: rnd(prod(xShape), seed),
    w: rnd(prod(wShape), seed + 1),
    b: rnd(cout, seed + 2),
    r: rnd(prod(yShape), seed + 3),
    dy: rnd(prod(yShape), seed + 4),
    label: `x${fmt(xShape)} w${fmt(wShape)} s${stride} p${padding}`,
  };
}

function conv2dCases(quick: boolean): Case[] {
  const cases: Case[] = [];
  // Every strategy and block size, forced for all three passes (kernels/conv2d/mod.ts). A block size
  // compiles one kernel per row-block height (4, 8, 16, 32: by Cout, or Cin for dx) and pass: ~3 s each at
  // 16 and ~15–50 s at 32 on llvmpipe the first time. `subset` (indices into CONV_CASES) keeps the
  // geometries whose M fills the block (Cout 17 for y and dw, Cin 17 for dx): one kernel each.
  type Subset = { quickOnly?: boolean; y: number[]; dx: number[]; dw: number[] };
  const variants: { variant: string; slow?: boolean; subset?: Subset }[] = [
    { variant: "blocked" },
    { variant: "blocked/t8/split1048576" },
    // Operands from storage buffers where `blocked` would read textures.
    { variant: "blocked/notex", subset: { y: [13, 14], dx: [13, 14], dw: [0, 13, 14] } },
    {
      variant: "blocked/t16/split1/nomatmul",
      subset: { quickOnly: true, y: [2, 15], dx: [2, 15], dw: [2, 15] },
    },
    { variant: "blocked/t32", slow: true, subset: { y: [2], dx: [3], dw: [2] } },
    { variant: "implicit_gemm" },
    { variant: "implicit_gemm/4x4" },
    { variant: "implicit_gemm/4x8", slow: true },
    { variant: "implicit_gemm/8x4/split1", slow: true },
    { variant: "direct" },
    // Winograd runs the stride-1 3×3 geometries only.
    { variant: "winograd/f4", subset: { y: WINOGRAD_CASES, dx: WINOGRAD_CASES, dw: WINOGRAD_CASES } },
    { variant: "winograd/f2", subset: { y: WINOGRAD_CASES, dx: WINOGRAD_CASES, dw: WINOGRAD_CASES } },
  ];
  for (const { variant, slow, subset } of variants) {
    if (slow && quick) continue;
    const use = subset && (quick || !subset.quickOnly) ? subset : null;
    const pick = (which: "y" | "dx" | "dw") => {
      const geometries = use ? use[which].map((i) => [i, CONV_CASES[i]] as const) : [...CONV_CASES.entries()];
      const shape = use ? geometries.map(([, cc]) => convData(cc, 0).label).join(", ") : CONV_SHAPE;
      return { geometries, shape };
    };
    const fwd = pick("y");
    // `run` only records dispatches and starts readbacks (synchronously), so the forced variant cannot
    // leak into other checks.
    cases.push({
      family: "conv2d",
      op: "conv2d",
      variant,
      shape: fwd.shape,
      run: (e, c) =>
        withConv2dVariant(variant, () => {
          for (const [i, cc] of fwd.geometries) {
            const d = convData(cc, 10 * i + 1);
            const y = conv2dForward(e.tensor(d.x, d.xShape), e.tensor(d.w, d.wShape), d.o);
            const want = conv2dCpu(d.x, d.xShape, d.w, d.wShape, d.o);
            const scale = conv2dCpu(absf(d.x), d.xShape, absf(d.w), d.wShape, d.o).data;
            c.shape(d.label, y.shape, want.shape);
            c.close(d.label, c.read(y), want.data, TOL.conv2d, scale);
          }
        }),
    });
    for (const [op, which] of [["conv2d_backward_input", "dx"], ["conv2d_backward_weight", "dw"]] as const) {
      if (pick(which).geometries.length === 0) continue; // a pass the variant does not change
      cases.push({
        family: "conv2d",
        op,
        variant,
        shape: pick(which).shape,
        run: (e, c) =>
          withConv2dVariant(variant, () => {
            for (const [i, cc] of pick(which).geometries) {
              const d = convData(cc, 10 * i + 2);
              const want = conv2dBackwardCpu(d.x, d.xShape, d.w, d.wShape, d.dy, d.o);
              const scale = conv2dBackwardCpu(absf(d.x), d.xShape, absf(d.w), d.wShape, absf(d.dy), d.o);
              const dy = e.tensor(d.dy, d.yShape);
              const got = which === "dx"
                ? conv2dBackwardInput(dy, e.tensor(d.w, d.wShape), d.xShape, d.o)
                : conv2dBackwardWeight(e.tensor(d.x, d.xShape), dy, d.wShape, d.o);
              c.shape(`${which} ${d.label}`, got.shape, which === "dx" ? d.xShape : d.wShape);
              c.close(`${which} ${d.label}`, c.read(got), want[which], TOL.conv2d, scale[which]);
            }
          }),
      });
    }
  }
  // The fused epilogue (bias, residual, ReLU) of every strategy.
  for (const strategy of ["blocked", "implicit_gemm", "direct", "winograd"] as const) {
    const wino = strategy === "winograd";
    cases.push({
      family: "conv2d",
      op: "conv2d",
      variant: `${strategy} + bias/res/relu`,
      shape: wino
        ? "x[2,3,7,9] w3×3 s1, x[2,5,1,7] w3×3 s1"
        : "x[3,5,13,13] w3×3 s2, x[3,5,4,5] 1×1, x[1,3,13,13] w7×7 s2, x[2,13,9,7] w3×3 s2",
      run: (e, c) =>
        withConv2dVariant(strategy, () => {
          for (
            const cc of wino
              ? [CONV_CASES[1], CONV_CASES[9]]
              : [CONV_CASES[2], CONV_CASES[4], CONV_CASES[6], CONV_CASES[13]]
          ) {
            const d = convData(cc, 5);
            for (const [bias, residual, relu] of [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [0, 1, 1]]) {
              const y = conv2dForward(e.tensor(d.x, d.xShape), e.tensor(d.w, d.wShape), {
                ...d.o,
                bias: bias ? e.tensor(d.b, [d.wShape[0]]) : null,
                residual: residual ? e.tensor(d.r, d.yShape) : null,
                relu: !!relu,
              });
              const o = { ...d.o, bias: bias ? d.b : undefined, residual: residual ? d.r : undefined };
              const want = conv2dCpu(d.x, d.xShape, d.w, d.wShape, { ...o, relu: !!relu });
              const scale = conv2dCpu(absf(d.x), d.xShape, absf(d.w), d.wShape, {
                ...o,
                bias: bias ? absf(d.b) : undefined,
                residual: residual ? absf(d.r) : undefined,
              }).data;
              const what = `${d.label} bias ${bias} residual ${residual} relu ${relu}`;
              c.close(what, c.read(y), want.data, TOL.conv2d, scale);
            }
          }
        }),
    });
  }
  // A 1×1 stride-1 convolution with an epilogue large enough (2²² FLOPs per image) for a `tex` matmul: one
  // texture matmul applying it on software adapters (matmulRowEpilogue), the blocked kernels elsewhere.
  cases.push({
    family: "conv2d",
    op: "conv2d",
    variant: "blocked 1×1 + bias/res/relu (one texture matmul on software adapters)",
    shape: "x[2,256,16,16] w1×1 → 32",
    run: (e, c) =>
      withConv2dVariant("blocked", () => {
        const d = convData([2, 256, 16, 16, 32, 1, 1, 0], 6);
        for (const [bias, residual] of [[1, 1], [0, 1], [1, 0]]) {
          const y = conv2dForward(e.tensor(d.x, d.xShape), e.tensor(d.w, d.wShape), {
            ...d.o,
            bias: bias ? e.tensor(d.b, [d.wShape[0]]) : null,
            residual: residual ? e.tensor(d.r, d.yShape) : null,
            relu: true,
          });
          const o = { ...d.o, bias: bias ? d.b : undefined, residual: residual ? d.r : undefined };
          const want = conv2dCpu(d.x, d.xShape, d.w, d.wShape, { ...o, relu: true });
          const scale = conv2dCpu(absf(d.x), d.xShape, absf(d.w), d.wShape, {
            ...o,
            bias: bias ? absf(d.b) : undefined,
            residual: residual ? absf(d.r) : undefined,
          }).data;
          c.close(
            `${d.label} bias ${bias} residual ${residual} relu 1`,
            c.read(y),
            want.data,
            TOL.conv2d,
            scale,
          );
        }
      }),
  });
  cases.push({
    family: "conv2d",
    op: "conv2d_backward_bias",
    variant: "Σ over N, H, W",
    shape: CONV_SHAPE,
    run: (e, c) => {
      for (const [i, cc] of CONV_CASES.entries()) {
        const d = convData(cc, 10 * i + 3);
        const want = conv2dBackwardCpu(d.x, d.xShape, d.w, d.wShape, d.dy, d.o);
        const scale = conv2dBackwardCpu(absf(d.x), d.xShape, absf(d.w), d.wShape, absf(d.dy), d.o);
        const db = conv2dBackwardBias(e.tensor(d.dy, d.yShape));
        c.close(`db ${d.label}`, c.read(db), want.db, TOL.conv2d, scale.db);
      }
    },
  });
  return cases;
}

// ------------------------------------------------------------------------------------------ batch norm

function batchNormCases(e: Engine, quick: boolean): Case[] {
  // [N, C, H, W] with awkward sizes. H·W % 4 ≠ 0 (scalar loads) and = 0 ([3,5,12,12], [3,2,36,36]: vec4
  // loads); [3,5,12,12] leaves a remainder of a 256-value chunk; [3,2,36,36] and [2,2,45,45] split each
  // channel into 2–16 parts of 256 … 2048 values, chunks that straddle samples; the largest splits each
  // channel into 7 workgroups of the tree pass.
  const shapes = [
    [1, 1, 1, 2],
    [2, 3, 1, 1],
    [3, 1, 2, 2],
    [1, 3, 7, 9],
    [2, 17, 13, 13],
    [3, 17, 9, 7],
    [3, 5, 12, 12],
    [3, 2, 36, 36],
    [2, 2, 45, 45],
    ...(quick ? [] : [[2, 3, 112, 112]]),
  ];
  const shapeText = quick
    ? "[1,1,1,2] … [3,17,9,7], [3,5,12,12], [3,2,36,36], [2,2,45,45]"
    : "[1,1,1,2] … [2,2,45,45], [2,3,112,112]";
  const params = (c: number, seed: number) => ({
    w: rnd(c, seed, 0.5, 1.5),
    b: rnd(c, seed + 1, -1, 1),
    rm: rnd(c, seed + 2, -0.5, 0.5),
    rv: rnd(c, seed + 3, 0.5, 2),
  });
  // The variants (kernels/batchnorm.ts): `partials` for the statistics and Σdy, Σdy·x̂ passes, `elementwise`
  // for the normalise and input-gradient passes; null keeps the adapter's default. `run` only records
  // dispatches and starts readbacks (synchronously), so the forced variants cannot leak into other checks.
  const forced = (partials: string | null, elementwise: string, fn: () => void) => {
    const ops = [["batchnorm.apply", elementwise], ["batchnorm.dx", elementwise]];
    if (partials !== null) ops.push(["batchnorm.stats", partials], ["batchnorm.sums", partials]);
    ops.reduceRight((inner, [op, id]) => () => withVariant(op, id, inner), fn)();
  };
  // Every partial-sum variant in training mode, each elementwise one with both partial-sum strategies and
  // in eval mode (which has no partial sums in forward).
  const pairs = [
    ["tree", "scalar"],
    ["tree", "vec4"],
    ["serial/256", "vec4"],
    ["serial/512", "vec4"],
    ["serial/1024", "vec4"],
    ["serial/2048", "scalar"],
    // Textures: [3,2,36,36] is one texture row and a tail.
    ["serial/2048/tex", "tex"],
    // Subgroup operations, where the device has them (Chrome; SwiftShader's subgroups are 4 wide).
    ...(hasSubgroups(e) ? [["subgroup", "scalar"]] : []),
  ];
  const modes: { training: boolean; partials: string | null; elementwise: string }[] = [
    ...pairs.map(([partials, elementwise]) => ({ training: true, partials, elementwise })),
    { training: false, partials: null, elementwise: "scalar" },
    { training: false, partials: null, elementwise: "vec4" },
    { training: false, partials: null, elementwise: "tex" },
  ];
  const cases: Case[] = [];
  for (const { training, partials, elementwise } of modes) {
    const mode = training ? "training" : "eval";
    const variant = [mode, partials, elementwise].filter((v) => v !== null).join(", ");
    cases.push({
      family: "batchnorm",
      op: "batch_norm",
      variant,
      shape: shapeText,
      run: (e, c) =>
        forced(partials, elementwise, () => {
          for (const shape of shapes) {
            const ch = shape[1];
            // An offset of 50 makes a naive Σx² variance lose all precision; Welford must not.
            const x = rnd(prod(shape), prod(shape), 49, 51);
            const p = params(ch, 2);
            const want = batchNorm2dCpu(x, shape, {
              weight: p.w,
              bias: p.b,
              runningMean: p.rm,
              runningVar: p.rv,
              training,
            });
            const runningMean = e.tensor(p.rm, [ch]), runningVar = e.tensor(p.rv, [ch]);
            const got = batchNorm2dForward(e.tensor(x, shape), {
              weight: e.tensor(p.w, [ch]),
              bias: e.tensor(p.b, [ch]),
              runningMean,
              runningVar,
              training,
            });
            const what = `${fmt(shape)} ${mode}`;
            c.close(`y ${what}`, c.read(got.y), want.y, TOL.batchNorm.forward);
            c.close(`mean ${what}`, c.read(got.mean), want.mean, TOL.batchNorm.stats);
            c.close(`rstd ${what}`, c.read(got.rstd), want.rstd, TOL.batchNorm.rstd);
            const rm = training ? want.runningMean! : p.rm, rv = training ? want.runningVar! : p.rv;
            c.close(`running_mean ${what}`, c.read(runningMean), rm, TOL.batchNorm.stats);
            c.close(`running_var ${what}`, c.read(runningVar), rv, TOL.batchNorm.stats);
          }
        }),
    });
    cases.push({
      family: "batchnorm",
      op: "batch_norm_backward",
      variant,
      shape: shapeText,
      run: (e, c) =>
        forced(partials, elementwise, () => {
          for (const shape of shapes) {
            const ch = shape[1];
            const x = rnd(prod(shape), prod(shape) + 1, -2, 2), dy = rnd(prod(shape), prod(shape) + 2);
            const p = params(ch, 6);
            const xt = e.tensor(x, shape), wt = e.tensor(p.w, [ch]);
            const fwd = batchNorm2dForward(xt, {
              weight: wt,
              bias: e.tensor(p.b, [ch]),
              runningMean: e.tensor(p.rm, [ch]),
              runningVar: e.tensor(p.rv, [ch]),
              training,
            });
            const ref = batchNorm2dCpu(x, shape, {
              weight: p.w,
              bias: p.b,
              runningMean: p.rm,
              runningVar: p.rv,
              training,
            });
            const want = batchNorm2dBackwardCpu(dy, x, shape, {
              weight: p.w,
              mean: ref.mean,
              rstd: ref.rstd,
              training,
            });
            const got = batchNorm2dBackward(e.tensor(dy, shape), xt, {
              weight: wt,
              mean: fwd.mean,
              rstd: fwd.rstd,
              training,
            });
            const what = `${fmt(shape)} ${mode}`;
            c.close(`dx ${what}`, c.read(got.dx), want.dx, TOL.batchNorm.grad);
            c.close(`dweight ${what}`, c.read(got.dweight), want.dweight, TOL.batchNorm.grad);
            c.close(`dbias ${what}`, c.read(got.dbias), want.dbias, TOL.batchNorm.grad);
          }
        }),
    });
  }
  for (const relu of [false, true]) {
    for (const elementwise of ["scalar", "vec4", "tex"]) {
      cases.push({
        family: "batchnorm",
        op: "batch_norm_inference",
        variant: `fused${relu ? ", relu" : ""}, ${elementwise}`,
        shape: "[1,1,1,1], [2,3,7,9], [3,17,13,13], [2,3,4,6], [2,5,24,20]",
        run: (e, c) =>
          forced(null, elementwise, () => {
            // [2,5,24,20]: one texture row (4 096 values) and a tail.
            for (const shape of [[1, 1, 1, 1], [2, 3, 7, 9], [3, 17, 13, 13], [2, 3, 4, 6], [2, 5, 24, 20]]) {
              const ch = shape[1];
              const x = rnd(prod(shape), 31, -3, 3);
              const p = params(ch, 32);
              const want =
                batchNorm2dCpu(x, shape, { weight: p.w, bias: p.b, runningMean: p.rm, runningVar: p.rv }).y;
              const y = batchNorm2dInference(e.tensor(x, shape), {
                weight: e.tensor(p.w, [ch]),
                bias: e.tensor(p.b, [ch]),
                runningMean: e.tensor(p.rm, [ch]),
                runningVar: e.tensor(p.rv, [ch]),
                relu,
              });
              c.close(
                `${fmt(shape)}`,
                c.read(y),
                relu ? want.map((v) => Math.max(v, 0)) : want,
                TOL.batchNorm.forward,
              );
            }
          }),
      });
    }
  }
  return cases;
}

// ------------------------------------------------------------------------------------------ pooling

function poolCases(quick: boolean): Case[] {
  const shapes = [
    [1, 1, 1, 1],
    [2, 3, 2, 2],
    [3, 1, 7, 9],
    [1, 17, 9, 7],
    [2, 3, 13, 13],
    [3, 17, 13, 2],
    ...(quick ? [] : [[2, 3, 112, 112]]),
  ];
  const shapeText = quick ? "[1,1,1,1] … [2,3,13,13], [3,17,13,2]" : "[1,1,1,1] … [3,17,13,2], [2,3,112,112]";
  const pools: MaxPool2dOptions[] = [
    { kernelSize: 3, stride: 2, padding: 1 }, // the ResNet stem
    { kernelSize: 2 },
    { kernelSize: 3, stride: 1, padding: 1 },
    { kernelSize: [3, 2], stride: [2, 1], padding: [1, 0] },
    { kernelSize: 5, stride: 3, padding: 2 },
    { kernelSize: 1 },
  ];
  const name = (o: MaxPool2dOptions) => {
    const two = (v: number | readonly [number, number] | undefined, d: string) =>
      v === undefined ? d : typeof v === "number" ? `${v}` : v.join("×");
    return `k${two(o.kernelSize, "")} s${two(o.stride, two(o.kernelSize, ""))} p${two(o.padding, "0")}`;
  };
  const fits = (shape: number[], o: MaxPool2dOptions) => {
    try {
      maxPool2dGeometry(shape[2], shape[3], o);
      return true;
    } catch {
      return false;
    }
  };
  const cases: Case[] = [];
  for (const o of pools) {
    cases.push({
      family: "pool",
      op: "max_pool2d",
      variant: `${name(o)}, with indices`,
      shape: shapeText,
      run: (e, c) => {
        for (const shape of shapes.filter((s) => fits(s, o))) {
          // Continuous values, then small integers (many ties: the first maximum wins), then all negative.
          for (
            const [seed, round, lo, hi] of [[1, false, -1, 1], [2, true, -3, 3], [3, false, -9, -1]] as const
          ) {
            const x = rnd(prod(shape), seed + prod(shape), lo, hi).map((v) => (round ? Math.round(v) : v));
            const want = maxPool2dCpu(x, shape, o);
            const { y, indices } = maxPool2dForward(e.tensor(x, shape), o, true);
            const what = `${fmt(shape)} seed ${seed}`;
            c.shape(what, y.shape, want.shape);
            c.close(`y ${what}`, c.read(y), want.y, TOL.pool.maxForward);
            c.close(
              `indices ${what}`,
              c.read(indices!),
              Float32Array.from(want.indices),
              TOL.pool.maxForward,
            );
          }
        }
      },
    });
    cases.push({
      family: "pool",
      op: "max_pool2d_backward",
      variant: name(o),
      shape: shapeText,
      run: (e, c) => {
        for (const shape of shapes.filter((s) => fits(s, o))) {
          const x = rnd(prod(shape), 7 + prod(shape), -3, 3).map(Math.round); // ties share one argmax
          const fwd = maxPool2dForward(e.tensor(x, shape), o, true);
          const dy = rnd(fwd.y.size, 8);
          const want = maxPool2dBackwardCpu(dy, maxPool2dCpu(x, shape, o).indices, shape);
          const dx = maxPool2dBackward(e.tensor(dy, fwd.y.shape), fwd.indices!, shape, o);
          c.close(`dx ${fmt(shape)}`, c.read(dx), want, TOL.pool.maxBackward);
        }
      },
    });
  }
  cases.push({
    family: "pool",
    op: "global_avg_pool2d",
    variant: "forward",
    shape: shapeText,
    run: (e, c) => {
      for (const shape of shapes) {
        const x = rnd(prod(shape), 61 + prod(shape), -2, 2);
        const y = globalAvgPool2dForward(e.tensor(x, shape));
        c.shape(fmt(shape), y.shape, shape.slice(0, 2));
        c.close(fmt(shape), c.read(y), globalAvgPool2dCpu(x, shape), TOL.pool.avg);
      }
    },
  });
  // From 2¹⁶ values: x through a flat texture on software adapters (max pooling; the global average over
  // 7 × 7 planes one invocation per row), storage reads elsewhere.
  cases.push({
    family: "pool",
    op: "max_pool2d",
    variant: "large, k3 s2 p1 (textures on software adapters)",
    shape: "[2,16,56,57]",
    run: (e, c) => {
      const shape = [2, 16, 56, 57], o = pools[0];
      const x = rnd(prod(shape), 63, -3, 3).map(Math.round);
      const want = maxPool2dCpu(x, shape, o);
      const { y, indices } = maxPool2dForward(e.tensor(x, shape), o, true);
      c.close(`y ${fmt(shape)}`, c.read(y), want.y, TOL.pool.maxForward);
      c.close(
        `indices ${fmt(shape)}`,
        c.read(indices!),
        Float32Array.from(want.indices),
        TOL.pool.maxForward,
      );
    },
  });
  cases.push({
    family: "pool",
    op: "global_avg_pool2d",
    variant: "large, 7 × 7 planes (one invocation per row on software adapters)",
    shape: "[2,2048,7,7]",
    run: (e, c) => {
      const shape = [2, 2048, 7, 7];
      const x = rnd(prod(shape), 64, -2, 2);
      c.close(
        fmt(shape),
        c.read(globalAvgPool2dForward(e.tensor(x, shape))),
        globalAvgPool2dCpu(x, shape),
        TOL.pool.avg,
      );
    },
  });
  cases.push({
    family: "pool",
    op: "global_avg_pool2d_backward",
    variant: "broadcast ÷ H·W",
    shape: shapeText,
    run: (e, c) => {
      for (const shape of shapes) {
        const dy = rnd(shape[0] * shape[1], 62);
        const dx = globalAvgPool2dBackward(e.tensor(dy, [shape[0], shape[1]]), shape);
        c.close(`dx ${fmt(shape)}`, c.read(dx), globalAvgPool2dBackwardCpu(dy, shape), TOL.pool.avg);
      }
    },
  });
  return cases;
}

// ------------------------------------------------------------------------------------------ losses

function lossCases(quick: boolean): Case[] {
  const shapes = [[1], [7], [33], [1000], [7, 33], ...(quick ? [] : [[37, 19699]])];
  const shapeText = quick ? "[1], [7], [33], [1000], [7,33]" : "[1] … [7,33], [37,19699]";
  const cases: Case[] = [];
  type Inputs = { p: Float32Array; t: Float32Array; shape: number[]; mask?: number[]; what: string };
  const defs: {
    op: string;
    variant: string;
    shape: string;
    inputs: () => Inputs[];
    gpu: (p: Tensor, t: Tensor, mask: Tensor | null) => Tensor;
    cpu: (x: Inputs) => ReturnType<typeof mseLossCpu>;
  }[] = [
    {
      op: "mse_loss",
      variant: "mean",
      shape: shapeText,
      inputs: () =>
        shapes.map((shape) => {
          const n = prod(shape);
          return { p: rnd(n, n, -2, 2), t: rnd(n, n + 1, -2, 2), shape, what: fmt(shape) };
        }),
      gpu: (p, t) => mseLoss(p, t),
      cpu: (x) => mseLossCpu(x.p, x.t),
    },
    {
      op: "bce_loss",
      variant: "mean, logs clamped at −100",
      shape: shapeText + ", p ∈ {0, 1}",
      inputs: () => [
        ...shapes.map((shape) => {
          const n = prod(shape);
          return { p: rnd(n, n, 0.001, 0.999), t: rnd(n, n + 1, 0, 1), shape, what: fmt(shape) };
        }),
        {
          p: new Float32Array([0, 0, 1, 1, 0, 1, 0.5, 1e-30]),
          t: new Float32Array([0, 1, 0, 1, 0.3, 0.6, 1, 1]),
          shape: [8],
          what: "p at 0 and 1",
        },
      ],
      gpu: (p, t) => bceLoss(p, t),
      cpu: (x) => bceLossCpu(x.p, x.t),
    },
    {
      op: "masked_mse_loss",
      variant: "rows held: none, one, three, all",
      shape: "[5,33], [1,33]",
      inputs: () =>
        [[0, 0, 0, 0, 0], [0, 0, 1, 0, 0], [1, 0, 1, 0, 1], [1, 1, 1, 1, 1], [1], [0]].map((mask) => {
          const n = mask.length * 33;
          return {
            p: rnd(n, mask.length),
            t: rnd(n, mask.length + 7),
            shape: [mask.length, 33],
            mask,
            what: `mask [${mask}]`,
          };
        }),
      gpu: (p, t, m) => maskedMseLoss(p, t, m!),
      cpu: (x) => maskedMseLossCpu(x.p, x.t, x.mask!),
    },
  ];
  for (const d of defs) {
    cases.push({
      family: "loss",
      op: d.op,
      variant: d.variant,
      shape: d.shape,
      run: (e, c) => {
        for (const x of d.inputs()) {
          const mask = x.mask ? e.tensor(x.mask, [x.mask.length]) : null;
          const y = d.gpu(e.tensor(x.p, x.shape), e.tensor(x.t, x.shape), mask);
          c.shape(x.what, y.shape, []);
          c.close(x.what, c.read(y), [d.cpu(x).loss], TOL.loss);
        }
      },
    });
    cases.push({
      family: "loss",
      op: `${d.op}_backward`,
      variant: "tape: input and target",
      shape: d.shape,
      run: (e, c) => {
        for (const x of d.inputs()) {
          const mask = x.mask ? e.tensor(x.mask, [x.mask.length]) : null;
          const { grads } = tapeGrads(
            e,
            ([p, t]) => d.gpu(p, t, mask),
            [{ data: x.p, shape: x.shape }, { data: x.t, shape: x.shape }],
            null,
            (t) => c.read(t),
          );
          const want = d.cpu(x), tol = lossGradTolerance(x.p.length);
          c.close(`d/dinput ${x.what}`, grads[0] ?? [], want.grad, tol);
          c.close(`d/dtarget ${x.what}`, grads[1] ?? [], want.gradTarget, tol);
        }
      },
    });
  }
  return cases;
}

// ------------------------------------------------------------------------------------------ optimizer

function optimCases(): Case[] {
  const shapes: Record<string, number[]> = { a: [1], b: [7], "c.weight": [33, 5], d: [1000] };
  // Texture reads in rows of 16 texels (64 floats), 3 rows a chunk, so that these small tensors have
  // whole-row chunks as well as storage tails.
  const textureLayout = { width: 16, rows: 3 };
  const cases: Case[] = (["storage", "texture"] as const).map((reads) => ({
    family: "optim",
    op: "grad_norm",
    variant: `norm and clip factor, ${reads} reads`,
    shape: "[1], [7], [9000]; max 0.5 and 100",
    run: (e, c) => {
      const gs = [rnd(1, 1), rnd(7, 2), rnd(9000, 3, -0.01, 0.01)];
      const ts = gs.map((g) => e.tensor(g, [g.length]));
      for (const maxNorm of [0.5, 100]) {
        const { norm, scale } = gradNorm(ts, maxNorm, { reads, textureLayout });
        const want = gradNormCpu(gs, maxNorm);
        c.close(`norm, max ${maxNorm}`, c.read(norm), [want.norm], TOL.adam.norm);
        c.close(`scale, max ${maxNorm}`, c.read(scale), [want.scale], TOL.adam.norm);
      }
    },
  }));
  const trials: {
    variant: string;
    lr: number;
    weightDecay: number;
    clipNorm?: number;
    maxChunkElements?: number;
    reads: OptimReads;
  }[] = [
    { variant: "plain", lr: 1e-2, weightDecay: 0, reads: "storage" },
    { variant: "weight decay, clipped", lr: 1e-2, weightDecay: 0.05, clipNorm: 1, reads: "storage" },
    {
      variant: "ranges of 128, clipped",
      lr: 1e-2,
      weightDecay: 0.01,
      clipNorm: 1,
      maxChunkElements: 128,
      reads: "storage",
    },
    { variant: "texture reads, clipped", lr: 1e-2, weightDecay: 0.05, clipNorm: 1, reads: "texture" },
  ];
  for (const t of trials) {
    cases.push({
      family: "optim",
      op: "adam_step",
      variant: t.variant,
      shape: "[1], [7], [33,5], [1000]; 3 steps",
      run: async (e, c) => {
        const params = new Map<string, Tensor>(), cpu = new Map<string, AdamCpuState>();
        for (const [name, shape] of Object.entries(shapes)) {
          const x = rnd(prod(shape), name.length * 7 + shape[0]);
          params.set(name, e.tensor(x, shape));
          const n = x.length;
          cpu.set(name, {
            theta: Float64Array.from(x),
            m: new Float64Array(n),
            v: new Float64Array(n),
            step: 0,
          });
        }
        const opts = { lr: t.lr, betas: [0.9, 0.999] as const, eps: 1e-8, weightDecay: t.weightDecay };
        const opt = new Adam(params, {
          ...opts,
          maxChunkElements: t.maxChunkElements,
          reads: t.reads,
          textureLayout,
        });
        try {
          for (let s = 0; s < 3; s++) {
            const grads = new Map<string, Tensor>(), cpuGrads = new Map<string, Float32Array>();
            for (const [name, shape] of Object.entries(shapes)) {
              const g = rnd(prod(shape), 1000 * s + name.length);
              grads.set(name, e.tensor(g, shape));
              cpuGrads.set(name, g);
            }
            const norm = opt.step(grads, { clipNorm: t.clipNorm });
            const want = t.clipNorm === undefined
              ? undefined
              : gradNormCpu([...cpuGrads.values()], t.clipNorm);
            for (const [name, g] of cpuGrads) adamStepCpu(cpu.get(name)!, g, { ...opts, clip: want?.scale });
            if (norm) {
              c.close(`gradient norm, step ${s + 1}`, c.read(norm), [want!.norm], TOL.adam.norm);
            }
          }
          const state = await opt.stateDict();
          for (const [name, p] of params) {
            const want = cpu.get(name)!;
            c.close(`${name} after 3 steps`, c.read(p), want.theta, TOL.adam.theta);
            c.close(`${name}.exp_avg`, state.get(`${name}.exp_avg`)!.data, want.m, TOL.adam.moments);
            c.close(`${name}.exp_avg_sq`, state.get(`${name}.exp_avg_sq`)!.data, want.v, TOL.adam.moments);
          }
        } finally {
          opt.dispose();
        }
      },
    });
  }
  return cases;
}

// ------------------------------------------------------------------------------------------ runner

// ------------------------------------------------------------------------------------------ transformer

/**
 * Layer norm, GELU (exact erf), SiLU, softmax and fused attention, forward and backward, on small ragged
 * shapes (the same in --quick but for attention, whose every head dimension is a kernel of its own to
 * compile: there only d = 64 and a scalar-row d, and only the adapter's tile variant).
 */
function transformerCases(e: Engine, quick: boolean): Case[] {
  const T = TOL.transformer;
  const lnShapes = [[1, 1], [3, 7], [2, 13, 100]];
  const rowShapes = [[1, 1], [3, 5], [2, 3, 37]];
  // N not a multiple of the 32-row tiles; d = 64 (ViT), 48 and 8 (vec4 rows), 6 (scalar rows).
  const attShapes = quick
    ? [[2, 3, 37, 64], [1, 2, 45, 6]]
    : [[1, 1, 1, 8], [2, 3, 37, 64], [1, 2, 45, 48], [1, 2, 45, 6]];
  const cases: Case[] = [];
  const lnText = lnShapes.map(fmt).join(", "), rowText = rowShapes.map(fmt).join(", ");
  const attText = attShapes.map(fmt).join(", ");
  const ln = (backward: boolean): Case => ({
    family: "transformer",
    op: backward ? "layer_norm_backward" : "layer_norm",
    variant: backward ? "dx, dweight, dbias" : "last axis, eps 1e-6",
    shape: lnText,
    run: (e, c) => {
      for (const shape of lnShapes) {
        const n = prod(shape), ch = shape.at(-1)!;
        const x = rnd(n, 71 + n, 2, 4), w = rnd(ch, 72, 0.5, 1.5), b = rnd(ch, 73);
        const f = layerNormForward(e.tensor(x, shape), e.tensor(w, [ch]), e.tensor(b, [ch]));
        if (!backward) {
          c.close(`y ${fmt(shape)}`, c.read(f.y), layerNormCpu(x, ch, w, b).y, T.layerNorm);
          continue;
        }
        const dy = rnd(n, 74 + n);
        const g = layerNormBackward(e.tensor(dy, shape), e.tensor(x, shape), {
          weight: e.tensor(w, [ch]),
          ...f,
        });
        const want = layerNormBackwardCpu(dy, x, ch, w);
        c.close(`dx ${fmt(shape)}`, c.read(g.dx), want.dx, T.layerNormGrad);
        c.close(`dweight ${fmt(shape)}`, c.read(g.dweight), want.dweight, T.layerNormGrad);
        c.close(`dbias ${fmt(shape)}`, c.read(g.dbias), want.dbias, T.layerNormGrad);
      }
    },
  });
  cases.push(ln(false), ln(true));
  for (const op of ["gelu", "silu"] as const) {
    for (const backward of [false, true]) {
      cases.push({
        family: "transformer",
        op: backward ? `${op}_backward` : op,
        variant: op === "gelu" ? "exact erf" : "x·σ(x)",
        shape: "[1], [7], [1000] in [−9, 9]",
        run: (e, c) => {
          for (const n of [1, 7, 1000]) {
            const x = rnd(n, 81 + n, -9, 9), dy = rnd(n, 82 + n);
            if (backward) {
              const dx = activationBackward(op, e.tensor(dy, [n]), e.tensor(x, [n]));
              c.close(`dx [${n}]`, c.read(dx), activationBackwardCpu(op, dy, x), T.activation);
            } else {
              c.close(
                `[${n}]`,
                c.read(activationForward(op, e.tensor(x, [n]))),
                activationCpu(op, x),
                T.activation,
              );
            }
          }
        },
      });
    }
  }
  for (const backward of [false, true]) {
    cases.push({
      family: "transformer",
      op: backward ? "softmax_backward" : "softmax",
      variant: backward ? "from the saved output" : "last axis, max-subtracted",
      shape: rowText,
      run: (e, c) => {
        for (const shape of rowShapes) {
          const size = prod(shape), n = shape.at(-1)!;
          const x = rnd(size, 91 + size, -60, 120), dy = rnd(size, 92 + size);
          const y = softmaxForward(e.tensor(x, shape));
          if (backward) {
            const dx = softmaxBackward(e.tensor(dy, shape), y);
            c.close(`dx ${fmt(shape)}`, c.read(dx), softmaxBackwardCpu(dy, x, n), T.softmax);
          } else {
            c.close(fmt(shape), c.read(y), softmaxCpu(x, n), T.softmax);
          }
        }
      },
    });
  }
  // Tiles staged in workgroup memory (not on OpenGL: see stagesTiles) and read from storage.
  for (
    const [backward, staged] of [false, true].flatMap((b) => stagedVariants(e, quick).map((s) => [b, s]))
  ) {
    cases.push({
      family: "transformer",
      op: backward ? "attention_backward" : "attention",
      variant: `${backward ? "dq, dk, dv from the saved logsumexp" : "fused, online softmax"}, ${
        staged ? "staged" : "storage"
      } tiles`,
      shape: attText,
      run: (e, c) => {
        for (const shape of attShapes) {
          const size = prod(shape), scale = 1 / Math.sqrt(shape[3]);
          const q = rnd(size, 101, -2, 2), k = rnd(size, 102, -2, 2), v = rnd(size, 103);
          const [tq, tk, tv] = [q, k, v].map((x) => e.tensor(x, shape));
          const f = attentionForward(tq, tk, tv, scale, { staged });
          if (!backward) {
            c.close(fmt(shape), c.read(f.out), attentionCpu(q, k, v, shape, scale), T.attention);
            continue;
          }
          const dout = rnd(size, 104);
          const g = attentionBackward(e.tensor(dout, shape), { q: tq, k: tk, v: tv, ...f }, scale, {
            staged,
          });
          const want = attentionBackwardCpu(dout, q, k, v, shape, scale);
          c.close(`dq ${fmt(shape)}`, c.read(g.dq), want.dq, T.attentionGrad);
          c.close(`dk ${fmt(shape)}`, c.read(g.dk), want.dk, T.attentionGrad);
          c.close(`dv ${fmt(shape)}`, c.read(g.dv), want.dv, T.attentionGrad);
        }
      },
    });
  }
  return cases;
}

// ------------------------------------------------------------------------------------------ linalg

/** A seeded SPD matrix A = XᵀX/r + 0.05·I from X (r, n) = (2n + 3, n), float32 values. */
function spdMatrix(n: number, seed: number): Float32Array {
  const r = 2 * n + 3;
  const x = rnd(r * n, seed);
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

/**
 * The Cholesky factorisation and the triangular solves of closed-form ridge regression, and the centred
 * cross product that builds its Gram matrix, on ragged orders (1, 7, 65, 130: partial 64-column panels,
 * scalar and vec4 paths), each diagonal-block variant the adapter runs (--quick: its default one; well under
 * a second each on llvmpipe once compiled).
 */
function linalgCases(e: Engine, quick: boolean): Case[] {
  const sizes = [1, 7, 65, 130];
  const shape = sizes.map((n) => `[${n},${n}]`).join(", ");
  // The diagonal blocks staged in workgroup memory (not on OpenGL: see stagesTiles) and in place.
  const blockVariants = stagedVariants(e, quick).map((staged) => ({
    staged,
    name: staged ? "workgroup-staged blocks" : "in-place blocks",
  }));
  return [
    ...blockVariants.map(({ staged, name }): Case => ({
      family: "linalg",
      op: "cholesky",
      variant: `64-column panels, ${name}`,
      shape,
      run: (e, c) => {
        for (const n of sizes) {
          const a = spdMatrix(n, 201 + n);
          const l = choleskyCpu(a, n);
          // Stored as L below the diagonal and Lᵀ above; |L_ij| ≤ √A_ii.
          const want = new Float64Array(n * n), scale = new Float64Array(n * n);
          for (let i = 0; i < n; i++) {
            for (let j = 0; j < n; j++) {
              want[i * n + j] = j <= i ? l[i * n + j] : l[j * n + i];
              scale[i * n + j] = Math.sqrt(a[Math.max(i, j) * (n + 1)]);
            }
          }
          const t = e.tensor(a, [n, n]);
          choleskyInPlace(t, { staged });
          c.close(`[${n},${n}]`, c.read(t), want, TOL.linalg.cholesky, scale, "√A_ii");
        }
      },
    })),
    ...blockVariants.map(({ staged, name }): Case => ({
      family: "linalg",
      op: "triangular_solve",
      variant: `forward and back, ${name}`,
      shape: `${shape} × 37 right-hand sides`,
      run: (e, c) => {
        const rows = 37;
        for (const n of sizes) {
          const l = choleskyCpu(spdMatrix(n, 211 + n), n);
          const storage = new Float32Array(n * n);
          for (let i = 0; i < n; i++) {
            for (let j = 0; j <= i; j++) storage[i * n + j] = storage[j * n + i] = l[i * n + j];
          }
          const l32 = Float64Array.from(storage, (v, i) => (i % n <= Math.floor(i / n) ? v : 0));
          const f = e.tensor(storage, [n, n]);
          const b = rnd(rows * n, 221 + n);
          for (const upper of [false, true]) {
            const want = triangularSolveCpu(l32, n, b, rows, upper);
            // Norm-wise: against the largest |x| of each right-hand side.
            const scale = new Float64Array(rows * n);
            for (let r = 0; r < rows; r++) {
              let m = 0;
              for (let j = 0; j < n; j++) m = Math.max(m, Math.abs(want[r * n + j]));
              scale.fill(m, r * n, (r + 1) * n);
            }
            const z = e.tensor(b, [rows, n]);
            (upper ? solveUpperInPlace : solveLowerInPlace)(f, z, { staged });
            c.close(
              `${upper ? "Lᵀ·x = b" : "L·z = b"} [${n},${n}]`,
              c.read(z),
              want,
              TOL.linalg.solve,
              scale,
              "max|x| (row)",
            );
          }
        }
      },
    })),
    {
      family: "linalg",
      op: "crossprod",
      variant: "centred, register-blocked",
      shape: "[37,13]ᵀ·[37,70], [50,64]ᵀ·[50,300]",
      run: (e, c) => {
        for (const [rows, m, n] of [[37, 13, 70], [50, 64, 300]]) {
          const a = rnd(rows * m, 231 + m, -1, 3), b = rnd(rows * n, 232 + n, 0, 2);
          const ma = rnd(m, 233, 0, 1), mb = rnd(n, 234, 0.5, 1.5);
          const want = crossprodCpu(a, b, rows, m, n, ma, mb);
          const got = crossprod(e.tensor(a, [rows, m]), e.tensor(b, [rows, n]), {
            aMean: e.tensor(ma, [m]),
            bMean: e.tensor(mb, [n]),
          });
          c.close(`[${rows},${m}]ᵀ·[${rows},${n}]`, c.read(got), want.data, TOL.matmul, want.scale);
        }
      },
    },
  ];
}

function allCases(e: Engine, quick: boolean): Case[] {
  return [
    ...elementwiseCases(quick),
    ...reduceCases(e, quick),
    ...matmulCases(e, quick),
    ...conv2dCases(quick),
    ...batchNormCases(e, quick),
    ...poolCases(quick),
    ...lossCases(quick),
    ...optimCases(),
    ...transformerCases(e, quick),
    ...linalgCases(e, quick),
  ];
}

/**
 * The op names the self-test checks (the names `fault` and `only` accept), in the order it runs them.
 *
 * @example
 * ```ts
 * console.log(selftestOps(engine).join(", ")); // relu, sigmoid, …, conv2d_backward_weight, …, adam_step
 * ```
 */
export function selftestOps(engine: Engine): string[] {
  return [...new Set(allCases(engine, false).map((c) => c.op))];
}

function checkNames(engine: Engine, what: string, names: readonly string[]): void {
  const known = selftestOps(engine);
  const unknown = names.filter((n) => !known.includes(n));
  if (unknown.length) {
    throw new RangeError(
      `Cannot ${what}: unknown op${unknown.length > 1 ? "s" : ""} ${
        unknown.map((n) => `"${n}"`).join(", ")
      }; ` +
        `the ops are: ${known.join(", ")}`,
    );
  }
}

/**
 * Run every kernel, forward and backward, in every variant this adapter can run, against its CPU
 * reference; returns one result per (op, variant) — with `next`, per check this engine ran. A check that throws is a failed result (its `detail`
 * holds the message), and the run goes on. Forced conv2d variants end with each conv check.
 *
 * @example
 * ```ts
 * const engine = await createEngine();
 * const results = await runSelftest(engine, { quick: true, onResult: (r) => console.log(r.op, r.ok) });
 * console.log(`${results.filter((r) => !r.ok).length} failed`);
 * ```
 */
export async function runSelftest(engine: Engine, options: SelftestOptions = {}): Promise<SelftestResult[]> {
  const fault = new Set(options.fault ?? []);
  checkNames(engine, "inject a selftest fault", [...fault]);
  if (options.only) checkNames(engine, "select selftest ops", options.only);
  const only = options.only ? new Set(options.only) : null;
  const cases = allCases(engine, options.quick ?? false).filter((c) => !only || only.has(c.op));
  const results: SelftestResult[] = [];
  let turn = 0;
  const next = options.next ?? (() => turn++);
  for (let index = next(); index < cases.length; index = next()) {
    const k = cases[index];
    options.onStart?.({
      family: k.family,
      op: k.op,
      variant: k.variant,
      shape: k.shape,
      index,
      total: cases.length,
    });
    const c = new Checker(fault.has(k.op));
    const t0 = performance.now();
    try {
      await engine.scope(async () => {
        try {
          await k.run(engine, c);
        } finally {
          await c.settle(); // the readbacks already started, also when run threw
        }
      });
      engine.checkError();
    } catch (err) {
      c.fail(errorText(err));
    }
    const r: SelftestResult = {
      family: k.family,
      op: k.op,
      variant: k.variant,
      shape: k.shape,
      ms: performance.now() - t0,
      ...c.result(),
    };
    if (r.detail === undefined) delete r.detail;
    results.push(r);
    options.onResult?.(r, index, cases.length);
  }
  return results;
}
