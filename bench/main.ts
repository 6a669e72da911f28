/**
 * `deno task bench`: matmul GFLOP/s on this adapter, ours against tfjs-webgpu 4.22 on the same device.
 *
 * For each shape (M×K×N): the median after warm-up of
 * - wall: one matmul plus the readback of C (what a caller waits for),
 * - gpu: the kernel alone, from timestamp queries (when the adapter has `timestamp-query`);
 * the same for the peer, and the ratio ours / peer (> 1: we are faster).
 *
 * Then conv2d forward, dX and dW on ResNet-50 layer shapes against tfjs's conv2d /
 * Conv2DBackpropInput / Conv2DBackpropFilter (see bench/conv.ts), ResNet-50 + heads inference and training
 * against the same networks in tfjs, every layer's variant and speed (bench/layers.ts), slide I/O. After
 * the matmul, resnet and train suites, PyTorch on this machine's CPU does the same work (bench/peer_cpu.ts):
 * the speed goals are also shown scaled by PyTorch's figure in the same run against the issue's.
 *
 * First the adapter's FMA peak is measured (bench/peak.ts); every GFLOP/s figure is also shown as a
 * percentage of it ("% peak").
 *
 * Kernel variants (`--tune`): the suites run with the built-in defaults (no tuning table). With a tuning
 * table for this adapter — the one `he2gene tune` stored (`cached`, the default) or one made now if there is
 * none (`auto`; tuning takes a long time on llvmpipe) — the resnet, train and layers suites also time every
 * network pass, step or call with the table, in turns with the defaults (default first, then ABBA, so that a
 * drift in speed over the run falls on both alike), and the matmul suite times the table's kernel where it
 * differs, its calls in turns with the default's (ABBA too): "default" and "tuned" side by side, each with
 * its GPU time, and the ratio default ÷ tuned (≥ 1: the table is no slower). `--tune default` skips that.
 *
 * Options: `--json` (machine-readable), `--quick` (fewer shapes and reps), `--shapes a,b` (matmul names),
 * `--suite matmul,conv,resnet,layers,slide,train,slide-predict,encoders` (default all; slide-predict takes ~2 min, 32
 *   spots with `--quick`),
 * `--tune default|cached|auto` (default cached), `--no-peer` (or `--no-tfjs`, `--no-torch`: one of the
 * two peers), `--reps N`, `--data DIR` (the shared data folder; default `../shared/data` beside the project), `--resnet-batches 1,8,32` and `--train-batches 2,32`
 * (the batches of the resnet and train suites; default 1,8 and 2,8).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { createEngine, type Engine } from "../mod.ts";
import {
  chooseMatmulKernel,
  matmulForward,
  matmulReducedPrecisionVariants,
  matmulVariantId,
} from "../kernels/matmul.ts";
import { tuningOf, type TuningTable, useTuning, withVariant } from "../kernels/tuning.ts";
import { loadTuning, prepareTuning, tuningDir, tuningPath } from "../model/tune_cache.ts";
import { benchConv, type ConvRow, printConvTable } from "./conv.ts";
import { benchEncoders, printEncodersTable } from "./encoders.ts";
import { benchLayers, type LayerRow, type LayerTotal, printLayersTable } from "./layers.ts";
import { fmtPct, measurePeak, pctOfPeak } from "./peak.ts";
import type { TfjsPeer } from "./peer_tfjs.ts";
import { benchResNet, printResNetTable, type ResNetRow } from "./resnet.ts";
import { benchSlide, printSlideTable, type SlideRow } from "./slide.ts";
import { benchTrain, printTrainTable, type TrainRow } from "./train.ts";
import { benchPredictSlide, type PredictSlideRow, printPredictSlideTable } from "./predict_slide.ts";
import { printTorchCpuTable, runTorchCpu, type TorchCpu } from "./peer_cpu.ts";

interface Shape {
  name: string;
  m: number;
  k: number;
  n: number;
  transposeB?: boolean;
  note?: string;
}

const SHAPES: Shape[] = [
  { name: "256³", m: 256, k: 256, n: 256 },
  { name: "512³", m: 512, k: 512, n: 512 },
  { name: "1024³", m: 1024, k: 1024, n: 1024 },
  { name: "2048³", m: 2048, k: 2048, n: 2048 },
  { name: "layer1 3×3", m: 12544, k: 576, n: 64, note: "ResNet-50 layer1 conv as GEMM, batch 4" },
  { name: "layer2 3×3", m: 3136, k: 1152, n: 128, note: "layer2" },
  { name: "layer3 3×3", m: 784, k: 2304, n: 256, note: "layer3" },
  { name: "layer4 3×3", m: 196, k: 4608, n: 512, note: "layer4" },
  {
    name: "aux head",
    m: 32,
    k: 2048,
    n: 19699,
    transposeB: true,
    note: "32×2048 · (19699×2048)ᵀ, 161 MB weight",
  },
];
const SUITES = ["matmul", "conv", "resnet", "layers", "slide", "train", "slide-predict", "encoders"];
/** The suites that also time the tuning table's variants. */
const TUNED_SUITES = ["matmul", "resnet", "layers", "train"];
const TUNE_MODES = ["default", "cached", "auto"] as const;
type BenchTuneMode = (typeof TUNE_MODES)[number];
const QUICK = new Set(["256³", "512³", "1024³", "layer1 3×3", "aux head"]);

function median(xs: number[]): number {
  const s = [...xs].filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const h = s.length >> 1;
  return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
}

function fill(n: number, seed: number): Float32Array {
  // Small multiples of 1/16: sums are exact in float32, so both engines' checksums must agree exactly.
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (((Math.imul(i + seed, 0x9e3779b1) >>> 0) % 17) - 8) / 16;
  return out;
}

interface Row {
  shape: string;
  m: number;
  k: number;
  n: number;
  transposeB: boolean;
  /** The default kernel's variant id (no tuning table). */
  kernel: string;
  oursWallMs: number;
  oursGpuMs: number;
  oursGflops: number;
  oursPctPeak: number;
  /** The tuning table's kernel (when a table is in use), its time and speed, and default ÷ tuned time. */
  tunedKernel?: string;
  tunedWallMs?: number;
  /** The table's kernel alone (timestamps). */
  tunedGpuMs?: number;
  tunedGflops?: number;
  tunedPctPeak?: number;
  tunedRatio?: number;
  peerWallMs?: number;
  peerGpuMs?: number;
  peerGflops?: number;
  peerPctPeak?: number;
  ratioWall?: number;
  ratioGpu?: number;
  checksumOurs: number;
  checksumPeer?: number;
  peerErrors?: string[];
}

/** Runs `record` (which records one product) with a kernel choice in effect: the defaults or a table. */
type Choice = <T>(record: () => T) => T;
const defaults: Choice = (record) => record();

/**
 * Wall and GPU medians of the same product under each of `choices`, their reps interleaved (ABBA: A B, B A,
 * …) so that a drift in the machine's speed falls on every choice alike; with each choice's C (the first timed
 * call's) and its checksum.
 */
async function timeOurs(
  e: Engine,
  a: Float32Array,
  b: Float32Array,
  s: Shape,
  warmup: number,
  reps: number,
  choices: Choice[] = [defaults],
) {
  const ta = e.tensor(a, [s.m, s.k]);
  const tb = e.tensor(b, s.transposeB ? [s.n, s.k] : [s.k, s.n]);
  const record = () => matmulForward(ta, tb, { transposeB: s.transposeB });
  const wall: number[][] = choices.map(() => []);
  const gpu: number[][] = choices.map(() => []);
  const result: Float32Array[] = choices.map(() => new Float32Array(0));
  const order = (i: number) => choices.map((_, j) => (i % 2 === 0 ? j : choices.length - 1 - j));
  for (let i = 0; i < warmup + reps; i++) {
    for (const j of order(i)) {
      const t0 = performance.now();
      const c = choices[j](record);
      const data = await c.toArray();
      const t1 = performance.now();
      c.dispose();
      if (i >= warmup) wall[j].push(t1 - t0);
      if (i === warmup) result[j] = data;
    }
  }
  for (let i = 0; i < Math.min(reps, 3); i++) {
    for (const j of order(i)) {
      let c = null as ReturnType<typeof matmulForward> | null;
      const ms = await e.timeGpu(() => {
        c = choices[j](record);
      });
      c!.dispose();
      if (ms !== null) gpu[j].push(ms);
    }
  }
  ta.dispose();
  tb.dispose();
  return choices.map((_, j) => ({
    wallMs: median(wall[j]),
    gpuMs: median(gpu[j]),
    result: result[j],
    checksum: result[j].reduce((acc, v) => acc + v, 0),
  }));
}

/** The tiled kernel with f32 and with f16 tiles on one product: GPU and wall medians, their difference. */
interface F16TilesRow {
  shape: string;
  f32: { kernel: string; wallMs: number; gpuMs: number };
  f16: { kernel: string; wallMs: number; gpuMs: number };
  /** max |C_f16 − C_f32| ÷ max |C_f32|. */
  maxRelDiff: number;
}

/**
 * The reduced-precision matmul (`tiled/64x64/f16`, forced: `tune` never chooses it) against the same kernel
 * with f32 tiles, in turns, on 1024³ (when the run has that shape and the device `shader-f16`).
 */
async function benchF16Tiles(
  e: Engine,
  shapes: Shape[],
  reps: number,
  log: (s: string) => void,
): Promise<F16TilesRow | null> {
  const s = shapes.find((x) => x.name === "1024³");
  const f16 = matmulReducedPrecisionVariants(e).find((id) => id === "tiled/64x64/f16");
  if (!s || !f16) return null;
  const f32 = "tiled/64x64";
  log(`… ${s.name} with f32 and f16 tiles (${f32}, ${f16}; reduced precision, forced)`);
  // Not `fill`'s values, which f16 holds exactly: values with full float32 mantissas.
  const noisy = (n: number, seed: number) =>
    Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.7071 + seed));
  const a = noisy(s.m * s.k, 1), b = noisy(s.k * s.n, 2);
  const force = (id: string): Choice => (record) => withVariant("matmul", id, record);
  const [t32, t16] = await timeOurs(e, a, b, s, 1, Math.min(reps, 5), [force(f32), force(f16)]);
  const c32 = t32.result, c16 = t16.result;
  let diff = 0, top = 0;
  for (let i = 0; i < c32.length; i++) {
    diff = Math.max(diff, Math.abs(c16[i] - c32[i]));
    top = Math.max(top, Math.abs(c32[i]));
  }
  return {
    shape: s.name,
    f32: { kernel: f32, wallMs: t32.wallMs, gpuMs: t32.gpuMs },
    f16: { kernel: f16, wallMs: t16.wallMs, gpuMs: t16.gpuMs },
    maxRelDiff: top > 0 ? diff / top : diff,
  };
}

function printF16Tiles(r: F16TilesRow): void {
  const g = (ms: number) => (Number.isFinite(ms) ? `${ms.toFixed(1)} ms GPU` : "no GPU clock");
  console.log(
    `\nreduced precision, ${r.shape}: ${r.f32.kernel} ${r.f32.wallMs.toFixed(1)} ms (${g(r.f32.gpuMs)}), ` +
      `${r.f16.kernel} ${r.f16.wallMs.toFixed(1)} ms (${g(r.f16.gpuMs)}); f32/f16 tiles ` +
      `${(r.f32.wallMs / r.f16.wallMs).toFixed(2)}× on the wall clock; the f16 tiles' C differs by up to ` +
      `${r.maxRelDiff.toExponential(1)} of max |C| (operands rounded to f16; never chosen by tune).`,
  );
}

const HOST_OPS = 2000;

// Host-side cost of recording one small op (the per-op JavaScript work that dominates small layers).
async function hostCost(
  e: Engine,
  peer: { tf?: unknown } | null,
): Promise<{ oursUs: number; peerUs?: number }> {
  const { add } = await import("../ops/elementwise.ts");
  const x = e.tensor(new Float32Array(256), [256]);
  const once = () =>
    e.scope(() => {
      let y = x;
      for (let i = 0; i < HOST_OPS; i++) {
        const z = add(y, 1);
        if (y !== x) y.dispose();
        y = z;
      }
    });
  once();
  await e.sync();
  const samples: number[] = [];
  for (let r = 0; r < 3; r++) {
    const t0 = performance.now();
    once();
    samples.push(((performance.now() - t0) * 1000) / HOST_OPS);
    await e.sync();
  }
  x.dispose();
  // deno-lint-ignore no-explicit-any
  const tf = (peer as any)?.tf;
  let peerUs: number | undefined;
  if (tf) {
    const px = tf.zeros([256]);
    const run = () =>
      tf.tidy(() => {
        let y = px;
        for (let i = 0; i < HOST_OPS; i++) y = tf.add(y, 1);
        return y;
      });
    const warm = run();
    await warm.data();
    warm.dispose();
    const ps: number[] = [];
    for (let r = 0; r < 3; r++) {
      const t0 = performance.now();
      const y = run();
      ps.push(((performance.now() - t0) * 1000) / HOST_OPS);
      await y.data();
      y.dispose();
    }
    px.dispose();
    peerUs = median(ps);
  }
  return { oursUs: median(samples), peerUs };
}

const gf = (s: Shape, ms: number) => (2 * s.m * s.n * s.k) / (ms * 1e6);
const f1 = (x: number | undefined) => (x === undefined || !Number.isFinite(x) ? "–" : x.toFixed(1));
const f2 = (x: number | undefined) => (x === undefined || !Number.isFinite(x) ? "–" : x.toFixed(2));

const ratio = (x: number | undefined) => (x === undefined || !Number.isFinite(x) ? "–" : `${x.toFixed(2)}×`);

/** The tuning table the bench compares with the built-in defaults, and a line saying where it came from. */
interface BenchTuning {
  mode: BenchTuneMode;
  table: TuningTable | null;
  path: string | null;
  choices: number;
  note: string;
}

/**
 * The table for `--tune`: none (`default`), the stored one (`cached`), or the stored one else a new one
 * (`auto`: `prepareTuning`, which times every candidate and stores the result; checks first that the cache
 * folder is writable, so that a long tuning run does not end in a permission error). Leaves the engine on
 * its built-in defaults.
 */
async function benchTuning(e: Engine, mode: BenchTuneMode, log: (s: string) => void): Promise<BenchTuning> {
  const path = tuningPath(e);
  if (mode === "default") {
    return {
      mode,
      table: null,
      path,
      choices: 0,
      note: "kernel variants: built-in defaults only (--tune default)",
    };
  }
  let table: TuningTable | null;
  if (mode === "auto") {
    const dir = tuningDir();
    if (!dir) {
      throw new Error("Cannot use --tune auto: neither XDG_CACHE_HOME nor HOME is set (no tuning cache)");
    }
    const { state } = await Deno.permissions.request({ name: "write", path: dir });
    if (state !== "granted") {
      throw new Error(
        `Cannot use --tune auto: no write permission for the tuning cache ${dir} (--allow-write=${dir})`,
      );
    }
    await prepareTuning(e, "auto", log);
    table = tuningOf(e) ?? null;
  } else table = await loadTuning(e, log);
  useTuning(e, null);
  const choices = table ? Object.keys(table.entries).length : 0;
  if (!table) {
    return {
      mode,
      table,
      path,
      choices,
      note: `kernel variants: no tuning table for this adapter (${path ?? "no cache folder"}), so built-in ` +
        "defaults only; `he2gene tune` or `--tune auto` makes one",
    };
  }
  if (choices === 0) {
    return {
      mode,
      table: null,
      path,
      choices,
      note: `kernel variants: the tuning table ${path} keeps every built-in default, so defaults only`,
    };
  }
  return {
    mode,
    table,
    path,
    choices,
    note: `kernel variants: built-in defaults, then the tuning table (${choices} choices) from ${path} ` +
      `for the ${TUNED_SUITES.join(", ")} suites`,
  };
}

/** One of issue 13's speed goals on llvmpipe, with what this run measured. */
interface Goal {
  goal: string;
  unit: string;
  /** "≤": lower is better. */
  sense: "≤" | "≥";
  target: number;
  default?: number;
  tuned?: number;
  met?: boolean;
  /**
   * PyTorch on this machine's CPU for the same work in this run, the figure the issue gave for it when the
   * goal was set, and the target scaled by their ratio (the goal on a machine as fast as this run's, as far
   * as PyTorch measures it), with the verdict against that.
   */
  torch?: { label: string; now: number; then?: number; scaledTarget?: number; scaledMet?: boolean };
}

function goals(rows: Row[], resnet: ResNetRow[], train: TrainRow[], torch: TorchCpu | null): Goal[] {
  const out: Goal[] = [];
  const add = (g: Omit<Goal, "met">) => {
    const best = [g.default, g.tuned].filter((x): x is number => x !== undefined && Number.isFinite(x));
    if (best.length === 0) return;
    const v = g.sense === "≤" ? Math.min(...best) : Math.max(...best);
    const meets = (t: number) => (g.sense === "≤" ? v <= t : v >= t);
    if (g.torch?.then !== undefined) {
      // Time goals scale with PyTorch's time, throughput goals with its throughput.
      g.torch.scaledTarget = g.target * g.torch.now / g.torch.then;
      g.torch.scaledMet = meets(g.torch.scaledTarget);
    }
    out.push({ ...g, met: meets(g.target) });
  };
  const inf = resnet.find((r) => r.batch === 8);
  if (inf) {
    add({
      goal: "ResNet-50 + heads inference, batch 8",
      unit: "s/image",
      sense: "≤",
      target: 0.35,
      default: inf.oursSPerImage,
      tuned: inf.tunedSPerImage,
      // The issue gave ONNX Runtime Web's figure for this one, not PyTorch's: no scaled target.
      torch: torch?.inferSPerImage[8] === undefined
        ? undefined
        : { label: "PyTorch CPU s/image", now: torch.inferSPerImage[8] },
    });
  }
  const step = train.find((r) => r.backbone === "resnet50" && r.batch === 2);
  if (step) {
    add({
      goal: "ResNet-50 training step, batch 2",
      unit: "s/step",
      sense: "≤",
      target: 3.5,
      default: step.oursSPerStep,
      tuned: step.tunedSPerStep,
      // "today 4.5; … PyTorch CPU 0.73 s" (issue 13).
      torch: torch?.trainSPerStep[2] === undefined
        ? undefined
        : { label: "PyTorch CPU s/step", now: torch.trainSPerStep[2], then: 0.73 },
    });
  }
  const mm = rows.find((r) => r.m === 1024 && r.k === 1024 && r.n === 1024 && !r.transposeB);
  if (mm) {
    add({
      goal: "matmul 1024³",
      unit: "GFLOP/s",
      sense: "≥",
      target: 40,
      default: mm.oursGflops,
      tuned: mm.tunedGflops,
      // "the CPU's limit is ~190" (issue 13): PyTorch's matmul reaches that limit.
      torch: torch?.matmulGflops === undefined
        ? undefined
        : { label: "PyTorch CPU GFLOP/s", now: torch.matmulGflops, then: 190 },
    });
  }
  return out;
}

/** `deno task bench --help`. */
export const BENCH_USAGE = `deno task bench [options]

  Times he2gene's kernels and networks on this adapter against tfjs-webgpu on the same device and PyTorch on
  this machine's CPU, and prints figures and ratios (see bench/main.ts for what each suite measures).

  --suite LIST            suites, comma-separated (default all): ${SUITES.join(",")}
  --quick                 fewer shapes and repetitions
  --reps N                repetitions (median; default 5, 3 with --quick)
  --shapes LIST           matmul shapes by name
  --tune MODE             default|cached|auto: kernel variants of the built-in defaults, and also the table
                          \`he2gene tune\` stored (cached, the default) or one made now (auto)
  --resnet-batches LIST   batches of the resnet suite (default 1,8)
  --train-batches LIST    batches of the train suite (default 2,8)
  --no-peer               no peers (tfjs-webgpu on the same device, PyTorch on the CPU)
  --no-tfjs               no tfjs-webgpu peer
  --no-torch              no PyTorch CPU peer (after the matmul, resnet and train suites, and in encoders)
  --peer-max-batch N      run the peer only at batches up to N (resnet and train suites)
  --data DIR              the shared data folder (default ../shared/data beside the project)
  --json                  machine-readable output
  -h, --help              this text`;

/** The options `deno task bench` parses (see {@linkcode BENCH_USAGE}). */
export const BENCH_OPTIONS = {
  json: { type: "boolean", default: false },
  quick: { type: "boolean", default: false },
  shapes: { type: "string" },
  "no-peer": { type: "boolean", default: false },
  "no-tfjs": { type: "boolean", default: false },
  "no-torch": { type: "boolean", default: false },
  reps: { type: "string" },
  suite: { type: "string", default: SUITES.join(",") },
  data: { type: "string" },
  tune: { type: "string", default: "cached" },
  "resnet-batches": { type: "string" },
  "train-batches": { type: "string" },
  "peer-max-batch": { type: "string" },
  help: { type: "boolean", short: "h", default: false },
} as const;

/** Run the benchmark with CLI-style arguments. */
export async function main(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: BENCH_OPTIONS, strict: true });
  if (values.help) {
    console.log(BENCH_USAGE);
    return;
  }
  const log = (s: string) => (values.json ? console.error(s) : console.log(s));
  const tuneMode = values.tune as BenchTuneMode;
  if (!TUNE_MODES.includes(tuneMode)) {
    throw new Error(`--tune must be ${TUNE_MODES.join(", ")}, current value is ${values.tune}`);
  }
  const suites = new Set((values.suite ?? "").split(",").map((x) => x.trim()));
  for (const name of suites) {
    if (!SUITES.includes(name)) throw new Error(`unknown suite "${name}" (${SUITES.join(", ")})`);
  }
  const peerMaxBatch = values["peer-max-batch"] === undefined ? undefined : Number(values["peer-max-batch"]);
  if (peerMaxBatch !== undefined && !(Number.isInteger(peerMaxBatch) && peerMaxBatch >= 1)) {
    throw new Error(
      `--peer-max-batch must be a positive integer, current value is ${values["peer-max-batch"]}`,
    );
  }
  const wanted = values.shapes?.split(",").map((x) => x.trim());
  const shapes = SHAPES.filter((
    s,
  ) => (wanted ? wanted.includes(s.name) : !values.quick || QUICK.has(s.name)));
  if (shapes.length === 0) {
    throw new Error(
      `no shape matches --shapes ${values.shapes}; names: ${SHAPES.map((s) => s.name).join(", ")}`,
    );
  }
  const e = await createEngine();
  useTuning(e, null);
  const info = e.adapterInfo;
  const reps = values.reps ? Number(values.reps) : values.quick ? 3 : 5;
  log(`adapter: ${info.name}${info.software ? " (software)" : ""}, backend: ${info.backend}`);
  log(
    `timestamps: ${e.device.features.has("timestamp-query") ? "yes" : "no"}; median of ${reps} after warm-up`,
  );
  const peak = await measurePeak(e);
  log(
    `peak: ${
      peak.gflops.toFixed(1)
    } GFLOP/s (FMA-throughput kernel, bench/peak.ts); "% peak" is relative to it`,
  );
  const tuning: BenchTuning = TUNED_SUITES.some((s) => suites.has(s))
    ? await benchTuning(e, tuneMode, log)
    : { mode: tuneMode, table: null, path: null, choices: 0, note: "kernel variants: built-in defaults" };
  log(tuning.note);
  const table = tuning.table;
  // Run `f` with the tuning table, then back to the built-in defaults.
  const withTableSync = <T>(f: () => T): T => {
    useTuning(e, table);
    try {
      return f();
    } finally {
      useTuning(e, null);
    }
  };
  let peer: TfjsPeer | null = null;
  if (!values["no-peer"] && !values["no-tfjs"]) {
    const { createTfjsPeer } = await import("./peer_tfjs.ts");
    // tfjs 4.22 reads only vendor and architecture (for Intel tuning).
    peer = await createTfjsPeer(e.device, { vendor: info.vendor, architecture: "" } as GPUAdapterInfo);
    log(`peer: ${peer.name} on the same device`);
  }
  const rows: Row[] = [];
  for (const s of suites.has("matmul") ? shapes : []) {
    const a = fill(s.m * s.k, 1), b = fill(s.k * s.n, 2);
    const big = 2 * s.m * s.n * s.k > 2 ** 33;
    const r = big ? Math.max(1, Math.min(reps, 2)) : reps;
    const kernel = matmulVariantId(chooseMatmulKernel(e, s.m, s.n, s.k, s.transposeB));
    log(`… ${s.name} (${s.m}×${s.k}×${s.n}${s.transposeB ? ", Bᵀ" : ""}) with ${kernel}`);
    // With a table whose kernel differs, the default and the table's kernel are timed in turns.
    const tunedId = table
      ? withTableSync(() => matmulVariantId(chooseMatmulKernel(e, s.m, s.n, s.k, s.transposeB)))
      : kernel;
    if (tunedId !== kernel) log(`  … tuned: ${tunedId}`);
    const tableChoice: Choice = (record) => withTableSync(record);
    const [ours, timedTuned] = await timeOurs(
      e,
      a,
      b,
      s,
      1,
      r,
      tunedId !== kernel ? [defaults, tableChoice] : [defaults],
    );
    const row: Row = {
      shape: s.name,
      m: s.m,
      k: s.k,
      n: s.n,
      transposeB: !!s.transposeB,
      kernel,
      oursWallMs: ours.wallMs,
      oursGpuMs: ours.gpuMs,
      oursGflops: gf(s, ours.wallMs),
      oursPctPeak: pctOfPeak(gf(s, ours.wallMs), peak.gflops),
      checksumOurs: ours.checksum,
    };
    if (table) {
      // The table's kernel is timed only where it differs from the default (the same kernel otherwise).
      const tuned = timedTuned ?? ours;
      row.tunedKernel = tunedId;
      row.tunedGpuMs = tuned.gpuMs;
      row.tunedWallMs = tuned.wallMs;
      row.tunedGflops = gf(s, tuned.wallMs);
      row.tunedPctPeak = pctOfPeak(row.tunedGflops, peak.gflops);
      row.tunedRatio = ours.wallMs / tuned.wallMs;
    }
    if (peer) {
      const p = await peer.timeMatmul(a, b, s.m, s.k, s.n, {
        transposeB: !!s.transposeB,
        warmup: 1,
        reps: r,
      });
      row.peerWallMs = p.wallMs;
      row.peerGpuMs = p.gpuMs;
      row.peerGflops = gf(s, p.wallMs);
      // A peer that raised a GPU error computed nothing useful (tfjs returns zeros): no ratio, no % peak.
      row.peerPctPeak = p.errors.length ? undefined : pctOfPeak(row.peerGflops, peak.gflops);
      row.ratioWall = p.errors.length ? undefined : p.wallMs / ours.wallMs;
      row.ratioGpu = p.errors.length ? undefined : p.gpuMs / ours.gpuMs;
      row.checksumPeer = p.checksum;
      if (p.errors.length) row.peerErrors = p.errors.map((x: string) => x.split("\n")[0]);
    }
    rows.push(row);
  }
  const f16Tiles = suites.has("matmul") ? await benchF16Tiles(e, shapes, reps, log) : null;
  const host = await hostCost(e, peer);
  // Each suite's table is printed as soon as the suite ends (a run cut short keeps what it measured).
  const printMatmul = () => {
    const tuned = rows.some((r) => r.tunedKernel !== undefined);
    const head = [
      "shape",
      "M×K×N",
      "kernel",
      "ours ms",
      "GFLOP/s",
      "% peak",
      "gpu ms",
      ...(tuned ? ["tuned kernel", "GFLOP/s", "% peak", "gpu ms", "default/tuned"] : []),
      "peer ms",
      "GFLOP/s",
      "% peak",
      "gpu ms",
      "ours/peer",
      "gpu ratio",
      "check",
    ];
    const left = new Set([0, 1, 2, ...(tuned ? [7] : [])]);
    const lines = rows.map((r) => [
      r.shape,
      `${r.m}×${r.k}×${r.n}${r.transposeB ? "ᵀ" : ""}`,
      r.kernel,
      f1(r.oursWallMs),
      f2(r.oursGflops),
      fmtPct(r.oursPctPeak),
      f1(r.oursGpuMs),
      ...(tuned
        ? [
          r.tunedKernel ?? "–",
          f2(r.tunedGflops),
          fmtPct(r.tunedPctPeak),
          f1(r.tunedGpuMs),
          ratio(r.tunedRatio),
        ]
        : []),
      f1(r.peerWallMs),
      f2(r.peerGflops),
      fmtPct(r.peerPctPeak),
      f1(r.peerGpuMs),
      ratio(r.ratioWall),
      r.ratioGpu === undefined || !Number.isFinite(r.ratioGpu) ? "–" : `${r.ratioGpu.toFixed(2)}×`,
      r.checksumPeer === undefined
        ? "–"
        : r.peerErrors
        ? "peer failed (GPU error)"
        : r.checksumPeer === r.checksumOurs
        ? "same"
        : "DIFFERENT",
    ]);
    const widths = head.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
    const fmt = (l: string[]) =>
      l.map((c, i) => (left.has(i) ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ");
    if (rows.length) {
      console.log("\n" + fmt(head));
      console.log(widths.map((w) => "-".repeat(w)).join("  "));
      for (const l of lines) console.log(fmt(l));
      console.log(
        "\nours/peer = peer wall time ÷ ours (matmul + readback; > 1 means he2gene is faster); gpu = kernel time " +
          "from timestamps; kernel: the built-in default's variant" +
          (tuned
            ? "; tuned: the tuning table's (timed only where it differs, its calls in turns with the " +
              "default's), default/tuned = wall time ratio."
            : "."),
      );
    }
    console.log(
      `\nhost cost per op (recording ${HOST_OPS} small adds, no GPU wait): ours ${
        host.oursUs.toFixed(1)
      } µs` +
        (host.peerUs === undefined ? "" : `, ${peer ? "peer" : ""} ${host.peerUs.toFixed(1)} µs`),
    );
    for (const r of rows) {
      if (r.peerErrors) {
        console.log(`peer on ${r.shape}: ${r.peerErrors[0]} (tfjs returns zeros here; no ratio)`);
      }
    }
  };
  if (!values.json) {
    printMatmul();
    if (f16Tiles) printF16Tiles(f16Tiles);
  }
  const batchList = (name: string, v: string | undefined) => {
    if (v === undefined) return undefined;
    const list = v.split(",").map((x) => Number(x.trim()));
    if (!list.length || list.some((b) => !Number.isInteger(b) || b < 1)) {
      throw new Error(`--${name} must be positive integers separated by commas, current value is ${v}`);
    }
    return list;
  };
  const resnetBatches = batchList("resnet-batches", values["resnet-batches"]);
  const trainBatches = batchList("train-batches", values["train-batches"]);
  const suiteOpts = { quick: values.quick ?? false, reps: Math.min(reps, 3), log, peerMaxBatch };
  let convRows: ConvRow[] = [];
  if (suites.has("conv")) {
    log("\nconv2d (ResNet-50 layer shapes, batch 2) …");
    convRows = await benchConv(e, peer, { ...suiteOpts, peakGflops: peak.gflops });
    if (!values.json && convRows.length) {
      console.log("\nconv2d, batch 2 (built-in default variants; the layers suite shows the tuned ones):");
      printConvTable(convRows, console.log);
    }
  }
  let resnetRows: ResNetRow[] = [];
  if (suites.has("resnet")) {
    log("\nResNet-50 + HE2Gene heads, inference …");
    resnetRows = await benchResNet(e, peer, { ...suiteOpts, table, batches: resnetBatches });
    if (!values.json && resnetRows.length) {
      console.log("\nResNet-50 + heads (250 target, 19 699 aux, tumour), inference, seconds per image:");
      printResNetTable(resnetRows, console.log);
    }
  }
  let layerRows: LayerRow[] = [];
  let layerTotals: LayerTotal[] = [];
  if (suites.has("layers")) {
    log("\nResNet-50 layers: each conv geometry and head matmul, default variant and tuned …");
    ({ rows: layerRows, totals: layerTotals } = await benchLayers(e, {
      ...suiteOpts,
      peakGflops: peak.gflops,
      table,
    }));
    if (!values.json && layerRows.length) {
      console.log("\nResNet-50 layers, per call (inference at batch 8, training at batch 2):");
      printLayersTable(layerRows, layerTotals, console.log);
    }
  }
  let trainRows: TrainRow[] = [];
  if (suites.has("train")) {
    log("\nHE2Gene training step …");
    trainRows = await benchTrain(e, peer, { ...suiteOpts, table, batches: trainBatches });
    if (!values.json && trainRows.length) {
      console.log("\nHE2Gene training step (forward, backward, clip 1.0, Adam + L2 1e-4), seconds per step:");
      printTrainTable(trainRows, console.log);
    }
  }
  // PyTorch on the CPU, once, for the work the three suites above timed.
  let torchCpu: TorchCpu | null = null;
  const torchWork = {
    infer: resnetRows.map((r) => r.batch),
    train: trainRows.filter((r) => r.backbone === "resnet50" && r.variant === "base").map((r) => r.batch),
  };
  if (
    !values["no-peer"] && !values["no-torch"] &&
    (rows.length || torchWork.infer.length || torchWork.train.length)
  ) {
    log("\nPyTorch on this machine's CPU, the same work (bench/peer_torch.py) …");
    torchCpu = await runTorchCpu({
      inferBatches: torchWork.infer,
      trainBatches: torchWork.train,
      reps: Math.min(reps, 3),
      log,
    });
    if (torchCpu && !values.json) {
      const mm = rows.find((r) => r.m === 1024 && r.k === 1024 && r.n === 1024 && !r.transposeB);
      const best = (a: number | undefined, b: number | undefined) =>
        a === undefined ? b : b === undefined ? a : Math.min(a, b);
      printTorchCpuTable(torchCpu, {
        matmulGflops: mm ? Math.max(mm.oursGflops, mm.tunedGflops ?? 0) : undefined,
        inferSPerImage: Object.fromEntries(
          resnetRows.map((r) => [r.batch, best(r.oursSPerImage, r.tunedSPerImage)!]),
        ),
        trainSPerStep: Object.fromEntries(
          trainRows.filter((r) => r.backbone === "resnet50" && r.variant === "base")
            .map((r) => [r.batch, best(r.oursSPerStep, r.tunedSPerStep)!]),
        ),
      }, console.log);
    }
  }
  // Suites that measured nothing (their data is missing), with the reason.
  const skipped: string[] = [];
  let slideRows: SlideRow[] = [];
  if (suites.has("slide")) {
    log("\nslide I/O and Macenko, ours against openslide / PIL / numpy …");
    slideRows = await benchSlide(e, {
      quick: values.quick ?? false,
      reps: Math.min(reps, 3),
      log,
      dataDir: values.data,
    });
    if (slideRows.every((r) => Number.isNaN(r.oursMs))) {
      // Nothing measured (no data): say so instead of an empty table.
      skipped.push(`slide: ${slideRows.map((r) => r.note).find(Boolean) ?? "no data"}`);
    } else if (!values.json && slideRows.length) {
      console.log("\nslide I/O and stain normalisation (throughput, wall time):");
      printSlideTable(slideRows, console.log);
    }
  }
  let predictSlideRows: PredictSlideRow[] = [];
  if (suites.has("slide-predict")) {
    log("\npredict-slide on her2st C2 (ResNet-50 HE2Gene-Base, --tta single), by stage …");
    predictSlideRows = await benchPredictSlide(e, {
      quick: values.quick ?? false,
      log,
      dataDir: values.data,
    });
    if (predictSlideRows.every((r) => r.run === "skipped")) {
      skipped.push(`slide-predict: ${predictSlideRows[0]?.note ?? "no data"}`);
    } else if (!values.json && predictSlideRows.length) {
      console.log("\npredict-slide, her2st C2, spots per second by stage:");
      printPredictSlideTable(predictSlideRows, console.log);
    }
  }
  if (suites.has("encoders")) {
    log("\nencoders: ResNet-50 and ViT-S/B/L/16 forward at batch 8, the attention op, PyTorch CPU …");
    const enc = await benchEncoders(e, {
      quick: values.quick ?? false,
      reps: Math.min(reps, 3),
      log,
      peer: !values["no-peer"] && !values["no-torch"],
    });
    if (!values.json) {
      console.log("\nencoders, forward at batch 8 (224 px), images per second:");
      printEncodersTable(enc, console.log);
    }
  }
  peer?.dispose();
  // The peak again: a CPU shared with other processes at the start would make every "% peak" too high.
  const peakEnd = await measurePeak(e);
  const peakNote = peakEnd.gflops > 1.1 * peak.gflops
    ? `warning: the peak measured at the end is ${peakEnd.gflops.toFixed(1)} GFLOP/s, ` +
      `${((peakEnd.gflops / peak.gflops - 1) * 100).toFixed(0)}% above the one at the start: the adapter ` +
      `(CPU) was busy then, and the "% peak" figures are too high`
    : null;
  if (peakNote && values.json) console.error(peakNote);
  const goalRows = goals(rows, resnetRows, trainRows, torchCpu);
  if (values.json) {
    const { table: _table, ...tuningInfo } = tuning;
    console.log(
      JSON.stringify(
        {
          adapter: info,
          date: new Date().toISOString(),
          peak,
          peakEnd,
          tuning: { ...tuningInfo, entries: table?.entries },
          rows,
          f16Tiles,
          hostCost: host,
          conv: convRows,
          resnet: resnetRows,
          layers: { rows: layerRows, totals: layerTotals },
          slide: slideRows,
          train: trainRows,
          predictSlide: predictSlideRows,
          torchCpu,
          goals: goalRows,
        },
        null,
        2,
      ),
    );
  } else {
    console.log(`\npeak: ${peak.gflops.toFixed(1)} GFLOP/s (FMA-throughput kernel); ${tuning.note}`);
    if (peakNote) console.log(peakNote);
    if (goalRows.length) {
      console.log(
        info.software
          ? "\nspeed goals on llvmpipe (issue 13; the better of default and tuned counts):"
          : `\nspeed goals set for llvmpipe (issue 13), shown for reference on ${info.name}:`,
      );
      for (const g of goalRows) {
        const v = (
          x: number | undefined,
        ) => (x === undefined ? "–" : x.toFixed(g.unit === "GFLOP/s" ? 1 : 3));
        console.log(
          `  ${g.goal}: ${g.sense} ${g.target} ${g.unit}; default ${v(g.default)}, tuned ${v(g.tuned)}: ` +
            `${g.met ? "met" : "NOT met"}`,
        );
        const t = g.torch;
        if (t) {
          console.log(
            `    ${t.label} in this run ${v(t.now)}` +
              (t.then === undefined || t.scaledTarget === undefined
                ? ""
                : ` (${t.then} when the goal was set): the goal scaled to this run's machine ` +
                  `${g.sense} ${v(t.scaledTarget)}: ${t.scaledMet ? "met" : "NOT met"}`),
          );
        }
      }
    }
  }
  e.destroy();
  if (skipped.length) {
    for (const s of skipped) console.error(`bench: skipped ${s}`);
    // Asked for by name and not measured: a failure (with the default, every suite, it is only a note).
    if (args.some((a) => a === "--suite" || a.startsWith("--suite="))) Deno.exitCode = 1;
  }
}

if (import.meta.main) {
  try {
    await main(Deno.args);
  } catch (err) {
    // An option the parser does not know, or a value it refuses: one line, not a stack trace.
    const msg = (err as Error).message;
    if (
      (err as { code?: string }).code?.startsWith("ERR_PARSE_ARGS") ||
      /^--|^unknown suite|^no shape/.test(msg)
    ) {
      console.error(`bench: ${msg} (deno task bench --help lists the options)`);
      Deno.exit(2);
    }
    throw err;
  }
}
