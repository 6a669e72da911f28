/**
 * Per-layer timings of ResNet-50 + HE2Gene heads: every distinct convolution geometry of the network
 * (`resnetConvGeometries`, model/tune.ts) and the heads' matmuls, at the shapes inference (batch 8: conv
 * forward with the folded bias and ReLU, constant weights) and training (batch 2: forward, input gradient,
 * weight gradient; the stem has no input gradient) run, with
 * - the variant the built-in default picks (no tuning table) and, when a table is given, the table's;
 * - wall time per call: recording, submission and completion (`engine.sync()`, no readback), the median of
 *   `reps` after one warm-up call (which compiles); with a table the two variants take turns, so that a
 *   load from other processes falls on both alike;
 * - GFLOP/s = 2·N·Cout·OH·OW·Cin·KH·KW / time (the same count for the three passes; 2·M·N·K for matmul)
 *   and its fraction of the adapter's measured FMA peak (bench/peak.ts).
 *
 * The totals weight each geometry by how many of ResNet-50's 53 convolutions have it (counted from
 * `layout(RESNET50)`): the time one network pass spends in convolutions and heads (batch norm, pooling and
 * elementwise work are not counted). `quick`: one timed call per case, and at training only the geometries
 * of layer1 and layer4 (the totals then cover those only and say so).
 *
 * Run alone: `deno run --allow-read --allow-env bench/layers.ts [--quick] [--reps N] [--json]`.
 *
 * @module
 */
import { parseArgs } from "node:util";
import type { Engine } from "../engine/engine.ts";
import type { Tensor } from "../engine/tensor.ts";
import { mulberry32 } from "../engine/random.ts";
import {
  conv2dBackwardInput,
  conv2dBackwardWeight,
  conv2dForward,
  type Conv2dGeometry,
  type Conv2dTuningOp,
  conv2dVariantFor,
  releaseConv2dWeight,
} from "../kernels/conv2d/mod.ts";
import { chooseMatmulKernel, matmulForward, matmulVariantId } from "../kernels/matmul.ts";
import { type TuningTable, useTuning } from "../kernels/tuning.ts";
import { featureDim, RESNET50 } from "../model/mod.ts";
import { layout } from "../model/resnet.ts";
import { defaultTuneClock, resnetConvGeometries, type TuneClock } from "../model/tune.ts";
import { fmtPct, pctOfPeak } from "./peak.ts";

/** Batch of the inference rows and of the training rows. */
export const LAYERS_BATCH = { inference: 8, training: 2 } as const;
const SIZE = 224;
const GENES = { target: 250, aux: 19699, tumor: 1 };

/** Time and speed of one variant on one case. */
export interface VariantTiming {
  variant: string;
  ms: number;
  gflops: number;
  pctPeak: number;
}

/** One case: a convolution pass at one geometry, or one head matmul. */
export interface LayerRow {
  phase: "inference" | "training";
  batch: number;
  /** The op as the tuning table names it: `conv2d.fwd`, `conv2d.dx`, `conv2d.dw` or `matmul`. */
  op: string;
  /** The layers with this shape: the first one, and how many more. */
  layers: string;
  shape: string;
  /** How many times one network pass runs this case. */
  uses: number;
  /** GFLOP of one call. */
  gflop: number;
  default: VariantTiming;
  tuned?: VariantTiming;
  /** Default time ÷ tuned time (> 1: the table's variant is faster). */
  ratio?: number;
}

/** The use-weighted sum over one phase. */
export interface LayerTotal {
  phase: "inference" | "training";
  batch: number;
  /** Convolutions (of 53) the total covers, counting uses. */
  convs: number;
  gflop: number;
  defaultMs: number;
  defaultGflops: number;
  defaultPctPeak: number;
  tunedMs?: number;
  tunedGflops?: number;
  tunedPctPeak?: number;
  ratio?: number;
}

interface Case {
  phase: LayerRow["phase"];
  batch: number;
  op: string;
  layers: string;
  shape: string;
  uses: number;
  flops: number;
  /** The variant id that runs now (depends on the tuning table in use). */
  variant(e: Engine): string;
  /** Make the inputs; `run` records one call. */
  setup(e: Engine): { run: () => Tensor; dispose: () => void };
}

function randomTensor(e: Engine, shape: number[], seed: number): Tensor {
  const rnd = mulberry32(seed);
  const a = new Float32Array(shape.reduce((x, y) => x * y, 1));
  for (let i = 0; i < a.length; i++) a[i] = rnd() * 2 - 1;
  return e.tensor(a, shape);
}

const geomKey = (g: Conv2dGeometry) =>
  `${g.cin}→${g.cout} k${g.kh}x${g.kw} s${g.stride} p${g.pad} ${g.h}x${g.w}`;

/**
 * ResNet-50's convolutions at `batch`: each distinct geometry (in network order, as
 * `resnetConvGeometries` lists them) with the names of the convolutions that have it.
 */
export function resnetConvUses(batch: number): { g: Conv2dGeometry; names: string[] }[] {
  const geoms = resnetConvGeometries(RESNET50, batch, SIZE);
  const byKey = new Map(geoms.map((g) => [geomKey(g), { g, names: [] as string[] }]));
  const out = (s: number, k: number, st: number, p: number) => Math.floor((s + 2 * p - k) / st) + 1;
  const use = (
    name: string,
    cin: number,
    h: number,
    cout: number,
    k: number,
    stride: number,
    pad: number,
  ) => {
    const oh = out(h, k, stride, pad);
    const key = geomKey({ n: batch, cin, h, w: h, cout, kh: k, kw: k, stride, pad, oh, ow: oh });
    const u = byKey.get(key);
    if (!u) throw new Error(`bench/layers: ${name} (${key}) is not among resnetConvGeometries`);
    u.names.push(name);
    return oh;
  };
  const { stem, blocks } = layout(RESNET50);
  let h = use(stem.conv, stem.cin, SIZE, stem.cout, stem.k, stem.stride, stem.pad);
  h = out(h, 3, 2, 1); // max pool
  for (const b of blocks) {
    const h0 = h;
    for (const cv of b.convs) h = use(cv.conv, cv.cin, h, cv.cout, cv.k, cv.stride, cv.pad);
    const d = b.downsample;
    if (d) use(d.conv, d.cin, h0, d.cout, d.k, d.stride, 0);
  }
  const uses = [...byKey.values()];
  const unused = uses.find((u) => u.names.length === 0);
  if (unused) throw new Error(`bench/layers: geometry ${geomKey(unused.g)} is used by no convolution`);
  return uses;
}

function convCases(phase: LayerRow["phase"], quick: boolean): Case[] {
  const batch = LAYERS_BATCH[phase];
  const cases: Case[] = [];
  for (const { g, names } of resnetConvUses(batch)) {
    // --quick trains only layer1's and layer4's geometries (the largest and the smallest spatial sizes).
    if (quick && phase === "training" && !/^layer[14]\./.test(names[0])) continue;
    const xs = [g.n, g.cin, g.h, g.w], ws = [g.cout, g.cin, g.kh, g.kw], ys = [g.n, g.cout, g.oh, g.ow];
    const o = { stride: g.stride, padding: g.pad };
    const flops = 2 * g.n * g.cout * g.oh * g.ow * g.cin * g.kh * g.kw;
    const shape = `x[${xs}] w[${ws}] s${g.stride} p${g.pad}`;
    const ops: Conv2dTuningOp[] = phase === "inference"
      ? ["conv2d.fwd"]
      : ["conv2d.fwd", "conv2d.dx", "conv2d.dw"];
    for (const op of ops) {
      // The stem's input (the image) needs no gradient: training runs no dx there.
      const uses = op === "conv2d.dx" ? names.filter((n) => n !== "conv1").length : names.length;
      if (uses === 0) continue;
      cases.push({
        phase,
        batch,
        op,
        layers: names.length > 1 ? `${names[0]} +${names.length - 1}` : names[0],
        shape,
        uses,
        flops,
        variant: (e) => conv2dVariantFor(e, op, g, phase === "inference" && op === "conv2d.fwd"),
        setup(e) {
          const x = randomTensor(e, xs, 1), w = randomTensor(e, ws, 2);
          const dy = op === "conv2d.fwd" ? null : randomTensor(e, ys, 3);
          const bias = phase === "inference" ? randomTensor(e, [g.cout], 4) : null;
          const run = op === "conv2d.dx"
            ? () => conv2dBackwardInput(dy!, w, xs, o)
            : op === "conv2d.dw"
            ? () => conv2dBackwardWeight(x, dy!, ws, o)
            : phase === "inference"
            ? () => conv2dForward(x, w, { ...o, bias, relu: true, constantWeight: true })
            : () => conv2dForward(x, w, o);
          return {
            run,
            dispose: () => {
              releaseConv2dWeight(w);
              for (const t of [x, w, dy, bias]) t?.dispose();
            },
          };
        },
      });
    }
  }
  return cases;
}

// The heads: y = f·Wᵀ + b with f (B, 2048) and W (genes, 2048). Training adds the linear layer's gradients
// as ops/matmul.ts computes them: df = dy·W (B × 2048, K = genes) and dW = dyᵀ·f (genes × 2048, K = B).
function headCases(phase: LayerRow["phase"]): Case[] {
  const batch = LAYERS_BATCH[phase], f = featureDim(RESNET50);
  const cases: Case[] = [];
  const heads = [["fc1 (target)", GENES.target], ["fc2 (aux)", GENES.aux], [
    "fc3 (tumour)",
    GENES.tumor,
  ]] as const;
  for (const [name, genes] of heads) {
    const passes = phase === "inference" ? ["fwd"] as const : ["fwd", "dx", "dw"] as const;
    for (const pass of passes) {
      // [M, N, K] of the product chooseMatmulKernel sees.
      const [m, n, k] = pass === "fwd"
        ? [batch, genes, f]
        : pass === "dx"
        ? [batch, f, genes]
        : [genes, f, batch];
      cases.push({
        phase,
        batch,
        op: "matmul",
        layers: `${name} ${pass}`,
        shape: pass === "fwd"
          ? `[${batch},${f}]·[${genes},${f}]ᵀ`
          : pass === "dx"
          ? `[${batch},${genes}]·[${genes},${f}]`
          : `[${batch},${genes}]ᵀ·[${batch},${f}]`,
        uses: 1,
        flops: 2 * m * n * k,
        variant: (e) => matmulVariantId(chooseMatmulKernel(e, m, n, k, pass === "fwd")),
        setup(e) {
          const x = randomTensor(e, [batch, f], 5), w = randomTensor(e, [genes, f], 6);
          const dy = pass === "fwd" ? null : randomTensor(e, [batch, genes], 7);
          const b = pass === "fwd" ? randomTensor(e, [genes], 8) : null;
          const run = pass === "fwd"
            ? () => matmulForward(x, w, { transposeB: true, bias: b! })
            : pass === "dx"
            ? () => matmulForward(dy!, w)
            : () => matmulForward(dy!, x, { transposeA: true });
          return { run, dispose: () => [x, w, dy, b].forEach((t) => t?.dispose()) };
        },
      });
    }
  }
  return cases;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const h = s.length >> 1;
  return s.length === 0 ? NaN : s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
}

// One call's time: on the GPU clock (timestamp queries, the kernels alone) where tune uses it, i.e. on a
// hardware adapter, where one host wait for completion (~12 ms in Deno) would swamp every kernel; else
// recording to completion on the host clock.
async function once(e: Engine, run: () => Tensor, clock: TuneClock): Promise<number> {
  if (clock === "gpu") {
    const out: Tensor[] = [];
    const ms = await e.timeGpu(() => void out.push(run()));
    for (const t of out) t.dispose();
    if (ms !== null) return ms;
  }
  const t0 = performance.now();
  const y = run();
  await e.sync();
  const ms = performance.now() - t0;
  y.dispose();
  return ms;
}

// The clock of the last benchLayers run (for the table's legend).
let lastClock: TuneClock = "wall";

/** Options of {@linkcode benchLayers}. */
export interface LayersOptions {
  quick: boolean;
  /** Timed calls per case and variant (after one warm-up). */
  reps: number;
  log: (s: string) => void;
  /** The adapter's measured peak, GFLOP/s (bench/peak.ts). */
  peakGflops: number;
  /** A tuning table to time beside the built-in defaults (null: defaults only). */
  table: TuningTable | null;
}

/**
 * Time every case with the built-in defaults and, when `opts.table` is given, with the table; returns the
 * rows and the use-weighted totals per phase. Leaves the engine without a table.
 *
 * @example
 * ```ts
 * const { rows, totals } = await benchLayers(engine, { quick: true, reps: 1, log: console.log, peakGflops: 90, table: null });
 * printLayersTable(rows, totals, console.log);
 * ```
 */
export async function benchLayers(
  e: Engine,
  opts: LayersOptions,
): Promise<{ rows: LayerRow[]; totals: LayerTotal[] }> {
  const { log, peakGflops, table } = opts;
  const modes: (TuningTable | null)[] = table ? [null, table] : [null];
  const rows: LayerRow[] = [];
  const reps = opts.quick ? 1 : Math.max(1, opts.reps);
  const clock = defaultTuneClock(e);
  lastClock = clock;
  try {
    for (const phase of ["inference", "training"] as const) {
      const cases = [...convCases(phase, opts.quick), ...headCases(phase)];
      log(`… layers, ${phase} at batch ${LAYERS_BATCH[phase]}: ${cases.length} cases`);
      for (const c of cases) {
        const { run, dispose } = c.setup(e);
        try {
          const variants: string[] = [];
          const times: number[][] = modes.map(() => []);
          for (const t of modes) {
            useTuning(e, t);
            variants.push(c.variant(e));
            await once(e, run, clock); // compiles
          }
          for (let r = 0; r < reps; r++) {
            for (let i = 0; i < modes.length; i++) {
              useTuning(e, modes[i]);
              times[i].push(await once(e, run, clock));
            }
          }
          const timing = (i: number): VariantTiming => {
            const ms = median(times[i]), gflops = c.flops / ms / 1e6;
            return { variant: variants[i], ms, gflops, pctPeak: pctOfPeak(gflops, peakGflops) };
          };
          const row: LayerRow = {
            phase: c.phase,
            batch: c.batch,
            op: c.op,
            layers: c.layers,
            shape: c.shape,
            uses: c.uses,
            gflop: c.flops / 1e9,
            default: timing(0),
          };
          if (table) {
            row.tuned = timing(1);
            row.ratio = row.default.ms / row.tuned.ms;
          }
          log(
            `  ${c.op} ${c.layers}: ${row.default.variant} ${row.default.ms.toFixed(1)} ms` +
              (row.tuned ? `, tuned ${row.tuned.variant} ${row.tuned.ms.toFixed(1)} ms` : ""),
          );
          rows.push(row);
        } finally {
          useTuning(e, null);
          dispose();
        }
      }
    }
  } finally {
    useTuning(e, null);
  }
  return { rows, totals: layerTotals(rows, peakGflops) };
}

/** The use-weighted totals of each phase. */
export function layerTotals(rows: LayerRow[], peakGflops: number): LayerTotal[] {
  const totals: LayerTotal[] = [];
  for (const phase of ["inference", "training"] as const) {
    const rs = rows.filter((r) => r.phase === phase);
    if (rs.length === 0) continue;
    const sum = (f: (r: LayerRow) => number) => rs.reduce((s, r) => s + r.uses * f(r), 0);
    const gflop = sum((r) => r.gflop);
    const defaultMs = sum((r) => r.default.ms);
    const t: LayerTotal = {
      phase,
      batch: rs[0].batch,
      convs: rs.filter((r) => r.op === "conv2d.fwd").reduce((s, r) => s + r.uses, 0),
      gflop,
      defaultMs,
      defaultGflops: gflop / defaultMs * 1e3,
      defaultPctPeak: pctOfPeak(gflop / defaultMs * 1e3, peakGflops),
    };
    if (rs.every((r) => r.tuned)) {
      t.tunedMs = sum((r) => r.tuned!.ms);
      t.tunedGflops = gflop / t.tunedMs * 1e3;
      t.tunedPctPeak = pctOfPeak(t.tunedGflops, peakGflops);
      t.ratio = t.defaultMs / t.tunedMs;
    }
    totals.push(t);
  }
  return totals;
}

const f1 = (x: number | undefined) => (x === undefined || !Number.isFinite(x) ? "–" : x.toFixed(1));
const f2 = (x: number | undefined) => (x === undefined || !Number.isFinite(x) ? "–" : x.toFixed(2));
const ratio = (x: number | undefined) => (x === undefined || !Number.isFinite(x) ? "–" : `${x.toFixed(2)}×`);

/** Print the per-layer table and the totals. */
export function printLayersTable(rows: LayerRow[], totals: LayerTotal[], log: (s: string) => void): void {
  const tuned = rows.some((r) => r.tuned);
  const head = ["phase", "op", "layers", "shape", "uses", "default", "ms", "GFLOP/s", "% peak"];
  if (tuned) head.push("tuned", "ms", "GFLOP/s", "% peak", "default/tuned");
  const lines = rows.map((r) => {
    const l = [
      `${r.phase} b${r.batch}`,
      r.op,
      r.layers,
      r.shape,
      String(r.uses),
      r.default.variant,
      f1(r.default.ms),
      f2(r.default.gflops),
      fmtPct(r.default.pctPeak),
    ];
    if (tuned) {
      l.push(
        r.tuned?.variant ?? "–",
        f1(r.tuned?.ms),
        f2(r.tuned?.gflops),
        fmtPct(r.tuned?.pctPeak),
        ratio(r.ratio),
      );
    }
    return l;
  });
  const left = new Set([0, 1, 2, 3, 5, 9]);
  const widths = head.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
  const fmt = (l: string[]) =>
    l.map((c, i) => (left.has(i) ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ");
  log(fmt(head));
  log(widths.map((w) => "-".repeat(w)).join("  "));
  for (const l of lines) log(fmt(l));
  for (const t of totals) {
    const what = t.phase === "inference" ? "conv forward + heads" : "conv forward, dx, dw + heads";
    const per = t.phase === "inference" ? `${(t.defaultMs / 1000 / t.batch).toFixed(3)} s/image` : "per step";
    log(
      `total ${t.phase}, batch ${t.batch} (${what}, ${t.convs} of 53 convolutions, weighted by use; ` +
        `${t.gflop.toFixed(1)} GFLOP): default ${(t.defaultMs / 1000).toFixed(2)} s (${per}), ` +
        `${f1(t.defaultGflops)} GFLOP/s, ${fmtPct(t.defaultPctPeak)} of peak` +
        (t.tunedMs === undefined
          ? ""
          : `; tuned ${(t.tunedMs / 1000).toFixed(2)} s, ${f1(t.tunedGflops)} GFLOP/s, ` +
            `${fmtPct(t.tunedPctPeak)} of peak; default/tuned ${ratio(t.ratio)}`),
    );
  }
  log(
    (lastClock === "gpu"
      ? "ms: one call's GPU time (timestamp queries), median after a warm-up; "
      : "ms: one call, recording to completion, median after a warm-up; ") +
      "uses: calls per network pass; " +
      "default/tuned > 1: the tuning table's variant is faster. Batch norm, pooling and elementwise ops are " +
      "not in the totals.",
  );
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      quick: { type: "boolean", default: false },
      reps: { type: "string" },
      json: { type: "boolean", default: false },
    },
    strict: true,
  });
  const { createEngine } = await import("../engine/engine.ts");
  const { measurePeak } = await import("./peak.ts");
  const log = (s: string) => (values.json ? console.error(s) : console.log(s));
  const e = await createEngine();
  const peak = await measurePeak(e);
  log(`adapter: ${e.adapterInfo.name}; peak ${peak.gflops.toFixed(1)} GFLOP/s (FMA kernel)`);
  const reps = values.reps ? Number(values.reps) : 3;
  const r = await benchLayers(e, { quick: values.quick, reps, log, peakGflops: peak.gflops, table: null });
  if (values.json) console.log(JSON.stringify({ adapter: e.adapterInfo, peak, ...r }, null, 2));
  else printLayersTable(r.rows, r.totals, console.log);
  e.destroy();
}
