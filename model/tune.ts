/**
 * Autotuning: time every correct variant of each tunable op (conv2d forward / input gradient / weight
 * gradient, matmul, and in training batch norm's four passes) on the shapes ResNet-50 inference and training
 * use on this adapter, and pick the fastest per (op, shape class). The result is a {@linkcode TuningTable} that `kernels/tuning.ts` applies; `tune_cache.ts`
 * stores it per adapter.
 *
 * A candidate counts only if its output on the real shape agrees with the op's default variant within the
 * test suite's tolerance (`TOL.conv2d` / `TOL.matmul`, against the scale Σ|a||b| of the same product on
 * absolute values; `TOL.batchNorm`, against |default|); the self-test has already checked each variant
 * against the CPU reference on ragged shapes. A candidate replaces the default only when it is faster by more than {@linkcode TUNE_MARGIN}, so
 * that timing noise never makes the tuned choice slower than the fixed one.
 *
 * @module
 */
import type { Engine } from "../engine/engine.ts";
import type { Tensor } from "../engine/tensor.ts";
import { mulberry32 } from "../engine/random.ts";
import {
  conv2dBackwardInput,
  conv2dBackwardWeight,
  conv2dCandidates,
  conv2dForward,
  type Conv2dGeometry,
  conv2dShapeClass,
  conv2dVariantFor,
  releaseConv2dWeight,
} from "../kernels/conv2d/mod.ts";
import {
  chooseMatmulKernel,
  matmulCandidates,
  matmulForward,
  matmulShapeClass,
  matmulVariantId,
} from "../kernels/matmul.ts";
import {
  batchNorm2dBackwardInput,
  batchNorm2dForward,
  batchNorm2dParamGrads,
  batchNorm2dStatistics,
  batchNormCandidates,
  batchNormShapeClass,
  type BatchNormTuningOp,
  batchNormVariantFor,
} from "../kernels/batchnorm.ts";
import { unary } from "../kernels/elementwise.ts";
import { hasSubgroups } from "../kernels/_wgsl.ts";
import {
  reduce,
  REDUCE_ROWS,
  reduceRowsCandidates,
  reduceRowsShapeClass,
  rowVariant,
} from "../kernels/reduce.ts";
import { TOL, type Tolerance } from "../kernels/tolerance.ts";
import { tuningKey, tuningOf, type TuningTable, useTuning, withVariant } from "../kernels/tuning.ts";
import { layout, RESNET50, type ResNetConfig } from "./resnet.ts";

/** A candidate must beat the default by this fraction of the default's time to replace it. */
export const TUNE_MARGIN = 0.05;

/** One tunable op on one shape. */
export interface TuneCase {
  /**
   * Op name as the tuning table knows it (`conv2d.fwd`, `conv2d.dx`, `conv2d.dw`, `matmul`, `batchnorm.*`,
   * `reduce.rows`).
   */
  op: string;
  shapeClass: string;
  /** Human-readable shape. */
  label: string;
  /** FLOPs of one call (for GFLOP/s). */
  flops: number;
  candidates: string[];
  /** The variant the op runs without a table or a forced variant (not timed again as a candidate). */
  defaultVariant: string;
  /**
   * Inputs made once; `run` records one call and returns its output; `scale` the `s` of the tolerance per
   * output value (Σ|a||b| for products), |default output| when absent.
   */
  setup(e: Engine): { run: () => Tensor; scale?: () => Tensor; inputs: Tensor[]; release?: () => void };
  /** One tolerance, or one per equal part of the output (batch norm's statistics: mean, then rstd). */
  tol: Tolerance | readonly Tolerance[];
}

/** The time of one candidate, or why it was not counted. */
export interface TuneTiming {
  variant: string;
  ms?: number;
  gflops?: number;
  error?: string;
}

/** What tuning found for one case. */
export interface TuneResult {
  op: string;
  shapeClass: string;
  label: string;
  default: TuneTiming;
  chosen: string;
  timings: TuneTiming[];
  /** The fastest candidate and the default timed alternately; the candidate is chosen only if it still wins. */
  confirmed?: { defaultMs: number; variantMs: number };
}

/** Options of {@linkcode tune}. */
export interface TuneOptions {
  /** Batch of the inference shapes (default 8). */
  batchSize?: number;
  /** Batch of the training shapes (default 2; 0 skips training ops). */
  trainBatchSize?: number;
  /** Image side (default 224). */
  imageSize?: number;
  /** One shape per op and class, fewer repetitions (default false). */
  quick?: boolean;
  /** Only ops whose name starts with one of these. */
  only?: readonly string[];
  /** Matmul shapes [M, N, K] instead of the heads' and the benchmark's (tests). */
  matmulShapes?: MatmulShape[];
  /**
   * Called after each case, with the table of the cases tuned so far (a caller can store it, so that a run
   * cut short keeps what it measured).
   */
  onProgress?: (done: number, total: number, r: TuneResult, table: TuningTable) => void;
  /**
   * Start no new case after this many seconds (default: no limit). The table then holds the cases tuned so
   * far; the others keep the built-in defaults. Each case is whole (compiled, checked, timed, confirmed).
   */
  maxSeconds?: number;
  /**
   * How a run is timed: "gpu", the dispatches' time from timestamp queries (`Engine.timeGpu`), or "wall",
   * recording + submission + completion on the host clock. Default: "wall" on a software adapter (the CPU
   * that records also computes, so host cost is part of a variant's cost) or without `timestamp-query`;
   * "gpu" on a hardware adapter, where one wait for completion costs ~12 ms in Deno and would swamp every
   * kernel's time (seen on an NVIDIA H200: every case timed 11–14 ms, whatever the variant).
   */
  clock?: TuneClock;
}

/** See `TuneOptions.clock`. */
export type TuneClock = "gpu" | "wall";

/** The clock `tune` uses on this engine by default (see `TuneOptions.clock`). */
export function defaultTuneClock(e: Engine): TuneClock {
  return !e.adapterInfo.software && e.device.features.has("timestamp-query") ? "gpu" : "wall";
}

/** Conv geometries of a ResNet at `batch` × 3 × size × size, in network order (duplicates removed). */
export function resnetConvGeometries(c: ResNetConfig, batch: number, size: number): Conv2dGeometry[] {
  const out = (s: number, k: number, st: number, p: number) => Math.floor((s + 2 * p - k) / st) + 1;
  const geoms: Conv2dGeometry[] = [];
  const seen = new Set<string>();
  const add = (cin: number, h: number, cout: number, k: number, stride: number, pad: number) => {
    const oh = out(h, k, stride, pad);
    const g = { n: batch, cin, h, w: h, cout, kh: k, kw: k, stride, pad, oh, ow: oh };
    const key = JSON.stringify(g);
    if (!seen.has(key)) geoms.push(g);
    seen.add(key);
    return oh;
  };
  const { stem, blocks } = layout(c);
  let h = add(stem.cin, size, stem.cout, stem.k, stem.stride, stem.pad);
  h = out(h, 3, 2, 1); // max pool
  for (const b of blocks) {
    const h0 = h;
    for (const cv of b.convs) h = add(cv.cin, h, cv.cout, cv.k, cv.stride, cv.pad);
    if (b.downsample) add(b.downsample.cin, h0, b.downsample.cout, b.downsample.k, b.downsample.stride, 0);
  }
  return geoms;
}

function randomTensor(e: Engine, shape: number[], seed: number): Tensor {
  const rnd = mulberry32(seed);
  const n = shape.reduce((a, b) => a * b, 1);
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = rnd() * 2 - 1;
  return e.tensor(a, shape);
}

const absT = (t: Tensor) => unary("abs", t);

function convCases(e: Engine, geoms: Conv2dGeometry[], training: boolean): TuneCase[] {
  const cases: TuneCase[] = [];
  const seen = new Set<string>();
  for (const g of geoms) {
    const opts = { stride: g.stride, padding: g.pad };
    const xs = [g.n, g.cin, g.h, g.w], ws = [g.cout, g.cin, g.kh, g.kw], ys = [g.n, g.cout, g.oh, g.ow];
    const flops = 2 * g.n * g.cout * g.oh * g.ow * g.cin * g.kh * g.kw;
    const label = `x[${xs}] w[${ws}] s${g.stride} p${g.pad}`;
    const ops = training ? ["conv2d.fwd", "conv2d.dx", "conv2d.dw"] : ["conv2d.fwd"];
    for (const op of ops) {
      const inference = !training && op === "conv2d.fwd";
      const shapeClass = conv2dShapeClass(g);
      const key = tuningKey(op, shapeClass);
      if (seen.has(key)) continue;
      seen.add(key);
      cases.push({
        op,
        shapeClass,
        label,
        flops,
        tol: TOL.conv2d,
        candidates: conv2dCandidates(e, op as "conv2d.fwd", g),
        defaultVariant: conv2dVariantFor(e, op as "conv2d.fwd", g, inference),
        setup(e) {
          const x = randomTensor(e, xs, 1), w = randomTensor(e, ws, 2), dy = randomTensor(e, ys, 3);
          // An inference forward runs as the network's folded convolutions do (resnetForwardFolded): bias
          // and ReLU fused, packed weights kept. The epilogue can change the code path (blocked's 1×1
          // convolutions go through matmul only without one): timed without it, tune chose on an H200 a
          // variant that took 0.32 ms there and 31.5 ms in the network.
          const bias = inference ? randomTensor(e, [g.cout], 4) : null;
          const call = (x: Tensor, w: Tensor, dy: Tensor, b: Tensor | null, constantWeight: boolean) =>
            op === "conv2d.fwd"
              ? conv2dForward(x, w, inference ? { ...opts, bias: b, relu: true, constantWeight } : opts)
              : op === "conv2d.dx"
              ? conv2dBackwardInput(dy, w, xs, opts)
              : conv2dBackwardWeight(x, dy, ws, opts);
          return {
            inputs: bias ? [x, w, dy, bias] : [x, w, dy],
            run: () => call(x, w, dy, bias, true),
            scale: () => {
              const abs = [x, w, dy, ...(bias ? [bias] : [])].map(absT);
              const s = call(abs[0], abs[1], abs[2], abs[3] ?? null, false);
              for (const t of abs) t.dispose();
              return s;
            },
            release: () => releaseConv2dWeight(w),
          };
        },
      });
    }
  }
  return cases;
}

/** A matmul shape [M, N, K], with B transposed (stored N × K, as a linear layer's weight) when `true`. */
export type MatmulShape = [number, number, number] | [number, number, number, boolean];

function matmulCases(e: Engine, shapes: MatmulShape[]): TuneCase[] {
  const seen = new Set<string>();
  const cases: TuneCase[] = [];
  for (const [m, n, k, transposeB = false] of shapes) {
    const shapeClass = matmulShapeClass(m, n, k);
    if (seen.has(shapeClass)) continue;
    seen.add(shapeClass);
    cases.push({
      op: "matmul",
      shapeClass,
      label: transposeB ? `${m}×${k} · (${n}×${k})ᵀ` : `${m}×${k} · ${k}×${n}`,
      flops: 2 * m * n * k,
      tol: TOL.matmul,
      candidates: matmulCandidates(e, m, n, k, transposeB),
      defaultVariant: matmulVariantId(chooseMatmulKernel(e, m, n, k, transposeB)),
      setup(e) {
        const a = randomTensor(e, [m, k], 4), b = randomTensor(e, transposeB ? [n, k] : [k, n], 5);
        return {
          inputs: [a, b],
          run: () => matmulForward(a, b, { transposeB }),
          scale: () => {
            const [aa, ab] = [absT(a), absT(b)];
            const s = matmulForward(aa, ab, { transposeB });
            aa.dispose();
            ab.dispose();
            return s;
          },
        };
      },
    });
  }
  return cases;
}

/** The input shapes of a ResNet's batch norms (each conv's output) at `batch` × 3 × size², duplicates removed. */
export function resnetBatchNormShapes(c: ResNetConfig, batch: number, size: number): number[][] {
  const shapes = new Map<string, number[]>();
  for (const g of resnetConvGeometries(c, batch, size)) {
    const s = [g.n, g.cout, g.oh, g.ow];
    shapes.set(`${s}`, s);
  }
  return [...shapes.values()];
}

/** Arithmetic per value of each batch-norm pass (for the GFLOP/s column). */
const BN_FLOPS: Record<BatchNormTuningOp, number> = {
  "batchnorm.stats": 6,
  "batchnorm.sums": 4,
  "batchnorm.apply": 4,
  "batchnorm.dx": 8,
};

function batchNormCases(e: Engine, shapes: number[][]): TuneCase[] {
  const cases: TuneCase[] = [];
  const seen = new Set<string>();
  for (const shape of shapes) {
    const [n, c, h, w] = shape;
    for (const op of Object.keys(BN_FLOPS) as BatchNormTuningOp[]) {
      const shapeClass = batchNormShapeClass(c, n * h * w);
      const key = tuningKey(op, shapeClass);
      const candidates = batchNormCandidates(op, shape, hasSubgroups(e));
      if (seen.has(key) || candidates.length < 2) continue; // vec4 needs H·W % 4 = 0
      seen.add(key);
      cases.push({
        op,
        shapeClass,
        label: `x[${shape}]`,
        flops: BN_FLOPS[op] * n * c * h * w,
        // stats returns (mean; rstd), sums (dweight; dbias).
        tol: op === "batchnorm.stats"
          ? [TOL.batchNorm.stats, TOL.batchNorm.rstd]
          : op === "batchnorm.apply"
          ? TOL.batchNorm.forward
          : TOL.batchNorm.grad,
        candidates,
        defaultVariant: batchNormVariantFor(e, op, shape),
        setup(e) {
          const x = randomTensor(e, shape, 6), dy = randomTensor(e, shape, 7);
          const weight = randomTensor(e, [c], 8), bias = randomTensor(e, [c], 9);
          // The statistics and sums that the later passes read, from the default variants.
          const { mean, rstd } = batchNorm2dStatistics(x);
          const { dweight, dbias } = batchNorm2dParamGrads(dy, x, { mean, rstd });
          const stacked = (a: Tensor, b: Tensor) => {
            const out = e.empty([2, c], "tune stacked");
            e.copy(a, out);
            e.copy(b, out, { dstOffset: c });
            a.dispose();
            b.dispose();
            return out;
          };
          const run = {
            "batchnorm.stats": () => {
              const s = batchNorm2dStatistics(x);
              return stacked(s.mean, s.rstd);
            },
            "batchnorm.sums": () => {
              const g = batchNorm2dParamGrads(dy, x, { mean, rstd });
              return stacked(g.dweight, g.dbias);
            },
            // Eval mode: the normalise pass that training runs, after a one-dispatch copy of the statistics.
            "batchnorm.apply": () => {
              const f = batchNorm2dForward(x, { weight, bias, runningMean: mean, runningVar: rstd });
              f.mean.dispose();
              f.rstd.dispose();
              return f.y;
            },
            "batchnorm.dx": () =>
              batchNorm2dBackwardInput(dy, x, { weight, mean, rstd, dweight, dbias, training: true }),
          }[op];
          return { inputs: [x, dy, weight, bias, mean, rstd, dweight, dbias], run };
        },
      });
    }
  }
  return cases;
}

/**
 * The row reductions of a training step's losses (every value of the batch's target and auxiliary
 * predictions, `batch` × genes) through `reduce.rows`, where the device has more than one variant (subgroups).
 */
function reduceCases(e: Engine, batch: number): TuneCase[] {
  const candidates = reduceRowsCandidates(e);
  if (candidates.length < 2) return [];
  const seen = new Set<string>();
  const cases: TuneCase[] = [];
  for (const r of [batch * 250, batch * 19699]) {
    const shapeClass = reduceRowsShapeClass(r);
    if (seen.has(shapeClass)) continue;
    seen.add(shapeClass);
    cases.push({
      op: REDUCE_ROWS,
      shapeClass,
      label: `sum of [${r}]`,
      flops: r,
      candidates,
      defaultVariant: rowVariant(e, r),
      tol: TOL.reduce,
      setup(e) {
        const x = randomTensor(e, [r], 10);
        return { inputs: [x], run: () => reduce("sum", x) };
      },
    });
  }
  return cases;
}

/** The ops `tune` knows (`only` selects among them by prefix); `reduce.rows` only where there are subgroups. */
export const TUNABLE_OPS: readonly string[] = [
  "conv2d.fwd",
  "conv2d.dx",
  "conv2d.dw",
  "matmul",
  "batchnorm.stats",
  "batchnorm.sums",
  "batchnorm.apply",
  "batchnorm.dx",
  REDUCE_ROWS,
];

/**
 * Why `only` (op-name prefixes) names no tunable op — `unknown op "x" (tunable: …)` for the first that
 * matches none — or null when each matches one.
 *
 * @example
 * ```ts
 * unknownTuneOp(["batchnorm", "softmax"]); // 'unknown op "softmax" (tunable: conv2d.fwd, …)'
 * ```
 */
export function unknownTuneOp(only: readonly string[] | undefined): string | null {
  const bad = (only ?? []).find((o) => !TUNABLE_OPS.some((k) => k.startsWith(o)));
  return bad === undefined ? null : `unknown op "${bad}" (tunable: ${TUNABLE_OPS.join(", ")})`;
}

/**
 * Why `tune` with these options would time nothing on `e` (so that a caller refuses it rather than store an
 * empty table over a real one), or null. Only `only` can do that: `reduce.rows` alone where the device has no
 * subgroups, or ops that `trainBatchSize` 0 leaves out.
 */
export function nothingToTune(e: Engine, o: TuneOptions): string | null {
  if (!o.only?.length || tuneCases(e, o).length > 0) return null;
  return `${o.only.join(",")} has nothing to tune on ${e.adapterInfo.name}` +
    (hasSubgroups(e) ? "" : " (reduce.rows has a second variant only where the device has subgroups)");
}

/** The cases {@linkcode tune} times for these options. */
export function tuneCases(e: Engine, o: TuneOptions = {}): TuneCase[] {
  const batch = o.batchSize ?? 8, trainBatch = o.trainBatchSize ?? 2, size = o.imageSize ?? 224;
  let cases = convCases(e, resnetConvGeometries(RESNET50, batch, size), false);
  if (trainBatch > 0) {
    const train = convCases(e, resnetConvGeometries(RESNET50, trainBatch, size), true);
    const have = new Set(cases.map((c) => tuningKey(c.op, c.shapeClass)));
    cases.push(...train.filter((c) => !have.has(tuningKey(c.op, c.shapeClass))));
  }
  // HE2Gene's heads (2048 → 250 target and 19 699 auxiliary genes) at both batches, and the benchmark's
  // square product.
  const mm: MatmulShape[] = [];
  for (const b of new Set([batch, trainBatch || batch])) {
    mm.push([b, 250, 2048, true], [b, 19699, 2048, true]);
  }
  cases.push(...matmulCases(e, o.matmulShapes ?? [...mm, [1024, 1024, 1024]]));
  // --quick on a hardware adapter leaves out the 32×32 register blocks (matmul reg/32x32, conv blocked/t32
  // and plain `blocked`, which picks 32 for big products): made for llvmpipe (1 024 accumulators per
  // invocation), and 15 s each to compile on NVIDIA's driver (H200, 2026-12-04).
  if (o.quick && !e.adapterInfo.software) {
    const llvmpipeOnly = (v: string) => v.startsWith("reg/32x32") || v === "blocked" || v === "blocked/t32";
    for (const c of cases) c.candidates = c.candidates.filter((v) => !llvmpipeOnly(v));
  }
  if (trainBatch > 0) cases.push(...batchNormCases(e, resnetBatchNormShapes(RESNET50, trainBatch, size)));
  if (trainBatch > 0) cases.push(...reduceCases(e, trainBatch));
  if (o.only?.length) cases = cases.filter((c) => o.only!.some((p) => c.op.startsWith(p)));
  return cases;
}

/**
 * Median milliseconds of `reps` runs on `clock`. A run that records more passes than `timeGpu` can time is
 * timed on the wall clock instead.
 */
async function timeRuns(e: Engine, run: () => Tensor, reps: number, clock: TuneClock): Promise<number> {
  const times: number[] = [];
  for (let r = 0; r < reps; r++) {
    const out: Tensor[] = [];
    let ms = clock === "gpu" ? await e.timeGpu(() => void out.push(run())) : null;
    if (ms === null) {
      for (const t of out.splice(0)) t.dispose();
      const t0 = performance.now();
      out.push(run());
      await e.sync();
      ms = performance.now() - t0;
    }
    times.push(ms);
    for (const t of out) t.dispose();
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)];
}

/**
 * Largest violation ratio |got − want| / (atol + rtol·s) (≤ 1 passes), s = `scale` or |want|; with several
 * tolerances, one per equal part of the output.
 */
function violation(
  got: Float32Array,
  want: Float32Array,
  scale: Float32Array | null,
  tol: Tolerance | readonly Tolerance[],
): number {
  const tols: readonly Tolerance[] = "rtol" in tol ? [tol] : tol;
  const part = got.length / tols.length;
  let worst = 0;
  for (let i = 0; i < got.length; i++) {
    const t = tols[Math.floor(i / part)];
    const r = Math.abs(got[i] - want[i]) / (t.atol + t.rtol * (scale ? scale[i] : Math.abs(want[i])));
    if (!(r <= worst)) worst = Number.isNaN(r) ? Infinity : r;
  }
  return worst;
}

/**
 * Time the candidates of every case and return the table of winners with every timing, and the number of
 * cases there were (`results` holds fewer when `maxSeconds` stopped the run). The engine's own table is set
 * aside while tuning (defaults are timed as built in) and restored afterwards.
 */
export async function tune(
  e: Engine,
  o: TuneOptions = {},
): Promise<{ table: TuningTable; results: TuneResult[]; total: number }> {
  const before = tuningOf(e);
  useTuning(e, null);
  try {
    return await tuneAll(e, o);
  } finally {
    useTuning(e, before ?? null);
  }
}

/** Median time of `run` with and without `variant` forced, alternating the two (ABBA…) against drift. */
async function timePair(
  e: Engine,
  op: string,
  variant: string,
  run: () => Tensor,
  reps: number,
  clock: TuneClock,
): Promise<{ defaultMs: number; variantMs: number }> {
  const d: number[] = [], v: number[] = [];
  for (let r = 0; r < reps; r++) {
    const order = r % 2 === 0 ? [false, true] : [true, false];
    for (const forced of order) {
      const ms = forced
        ? await withVariant(op, variant, () => timeRuns(e, run, 1, clock))
        : await timeRuns(e, run, 1, clock);
      (forced ? v : d).push(ms);
    }
  }
  const med = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  return { defaultMs: med(d), variantMs: med(v) };
}

async function tuneAll(
  e: Engine,
  o: TuneOptions,
): Promise<{ table: TuningTable; results: TuneResult[]; total: number }> {
  const cases = tuneCases(e, o);
  const start = performance.now();
  const reps = o.quick ? 2 : 5;
  const clock = o.clock ?? defaultTuneClock(e);
  const entries: Record<string, string> = {};
  const results: TuneResult[] = [];
  for (const c of cases) {
    if (o.maxSeconds !== undefined && (performance.now() - start) / 1000 >= o.maxSeconds) break;
    const { run, scale, inputs, release } = c.setup(e);
    // The default (no variant forced): the reference output and the time to beat.
    const ref = run();
    const want = await ref.toArray();
    ref.dispose();
    const s = scale?.();
    const sc = s ? await s.toArray() : null;
    s?.dispose();
    const defMs = await timeRuns(e, run, reps, clock);
    const def: TuneTiming = { variant: "default", ms: defMs, gflops: c.flops / defMs / 1e6 };
    const timings: TuneTiming[] = [];
    let best = { variant: "", ms: defMs * (1 - TUNE_MARGIN) };
    for (const v of c.candidates) {
      if (v === c.defaultVariant) continue; // timed above as the default
      try {
        const ms = await withVariant(c.op, v, async () => {
          const y = run(); // compiles on first use
          const got = await y.toArray();
          y.dispose();
          const bad = violation(got, want, sc, c.tol);
          if (bad > 1) throw new Error(`differs from the default by ${bad.toFixed(1)}× the tolerance`);
          return await timeRuns(e, run, reps, clock);
        });
        timings.push({ variant: v, ms, gflops: c.flops / ms / 1e6 });
        if (ms < best.ms) best = { variant: v, ms };
      } catch (err) {
        timings.push({ variant: v, error: (err as Error).message });
      }
    }
    // Confirm a winner against the default, timed alternately (a one-off measurement can be noise).
    let confirmed: TuneResult["confirmed"];
    if (best.variant) {
      confirmed = await timePair(e, c.op, best.variant, run, Math.max(3, reps), clock);
      if (!(confirmed.variantMs < confirmed.defaultMs * (1 - TUNE_MARGIN))) best.variant = "";
    }
    release?.();
    for (const t of inputs) t.dispose();
    const chosen = best.variant || "default";
    if (best.variant) entries[tuningKey(c.op, c.shapeClass)] = best.variant;
    const r: TuneResult = {
      op: c.op,
      shapeClass: c.shapeClass,
      label: c.label,
      default: def,
      chosen,
      timings,
      confirmed,
    };
    results.push(r);
    o.onProgress?.(results.length, cases.length, r, { entries: { ...entries } });
  }
  return { table: { entries }, results, total: cases.length };
}
