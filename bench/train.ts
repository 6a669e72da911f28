/**
 * HE2Gene training throughput: one `Trainer.step` (forward in training mode, backward, Adam with L2 weight
 * decay 1e-4 and global gradient-norm clipping at 1.0; HE2Gene-Base loss MSE(target) + 20·MSE(aux) +
 * BCE(tumour)) on a synthetic batch (random normalised 224×224 input, random targets, tumour labels 0/1).
 *
 * 1. ResNet-50 + heads (250 target, 19 699 aux, 1 tumour) at batch 2 and 8 (`--quick`: 2): seconds per
 *    step, the median after one warm-up step; the warm-up (which compiles the shaders) is reported apart.
 * 2. The same step written with tfjs-webgpu ops on the same device (NHWC; batch norm in training mode from
 *    `tf.moments`; ReLU, max pool, residual adds, global mean, three dense heads, the same loss;
 *    `tf.variableGrads`, clipping and L2 decay by hand, `tf.train.adam`), starting from the same weights, so
 *    the first-step losses must agree. The 19 699 × 2048 aux weight (161 MB) exceeds llvmpipe's 128 MiB
 *    storage binding, where tfjs returns zeros: the peer gets that head split in two halves (rows 0…9849
 *    and 9850…19 698) whose outputs are concatenated. tfjs does not update batch-norm running statistics
 *    (they play no part in a training step's output).
 * 3. The `tiny` backbone: spots per second for HE2Gene-Base at batch 32 and HE2Gene-Spat at batch 32, where
 *    each spot's 8 neighbours go through the backbone too (288 images per step; spatial weight 0.01).
 *
 * Where our step fails because a tensor exceeds one storage binding (llvmpipe: 128 MiB) — the aux head's
 * backward at 19 699 genes, Spat's 288-image input — the failure is recorded in the row and a fallback is
 * timed: ResNet-50 with the largest aux head that fits (both sides, so the losses still compare), the tiny
 * backbone at half the batch.
 *
 * Peak GPU memory is our buffer pool's peak (`pool.stats().peakInUseBytes` after `resetPeak()`), model,
 * gradients and Adam state included.
 *
 * With a tuning table (`opts.table`), our steps alternate between the built-in kernel variants ("ours") and
 * the table ("tuned") on the same trainer, in ABBA order (a warm-up step each, default first so that the
 * first-step loss is still the one from the initial weights), so that a drift in speed over the run falls
 * on both alike; the peak memory then covers both.
 *
 * Alone: `deno run -A bench/train.ts [--quick] [--no-peer] [--reps N] [--json]`; `--check` compares the
 * first three losses of both steps on the tiny backbone at 64×64 (seconds).
 *
 * @module
 */
import { parseArgs } from "node:util";
import type { Engine } from "../engine/engine.ts";
import type { Tensor } from "../engine/tensor.ts";
import {
  DEFAULT_TRAIN,
  featureDim,
  HE2Gene,
  HEAD_KEYS,
  type HostTensor,
  RESNET50,
  type ResNetConfig,
  type StepLosses,
  TINY,
  type TrainConfig,
  Trainer,
  type Variant,
} from "../model/mod.ts";
import { layout, uniform } from "../model/resnet.ts";
import { type TuningTable, useTuning } from "../kernels/tuning.ts";
import type { TfjsPeer } from "./peer_tfjs.ts";

/** One row of the table. */
export interface TrainRow {
  /** e.g. "resnet50 base". */
  name: string;
  backbone: string;
  variant: Variant;
  /** Centre spots per step. */
  batch: number;
  /** Images through the backbone per step (batch, or 9·batch for Spat). */
  images: number;
  /** Aux genes of the network that was timed (19 699 unless our step failed at that size, see oursError). */
  auxGenes: number;
  /** Why our step failed with the full 19 699-gene aux head (the row then holds the fallback's figures). */
  oursError?: string;
  /** Timed steps after the warm-up. */
  reps: number;
  /** The first step (shader compilation included), seconds. */
  oursFirstS: number;
  /** Median seconds per step after the warm-up. */
  oursSPerStep: number;
  /** With a tuning table: median seconds per step with it, and oursSPerStep ÷ that (> 1: it is faster). */
  tunedSPerStep?: number;
  tunedRatio?: number;
  /** Centre spots per second. */
  oursSpotsPerS: number;
  /** Our pool's peak bytes in use during the row, MiB. */
  peakMiB: number;
  /** Loss of the first step (before any update). */
  oursLoss: number;
  /** Every step's loss was finite. */
  oursFinite: boolean;
  peerReps?: number;
  peerFirstS?: number;
  peerSPerStep?: number;
  /** Peer seconds ÷ ours (> 1: he2gene is faster). */
  ratio?: number;
  peerLoss?: number;
  peerFinite?: boolean;
  /** |ours − peer| / |ours| of the first-step loss (same weights, same batch). */
  lossRelDiff?: number;
  peerErrors?: string[];
}

type Opts = {
  quick: boolean;
  reps: number;
  log: (s: string) => void;
  table?: TuningTable | null;
  /** ResNet-50 batches to time (default 2 and 8; 2 with --quick). */
  batches?: number[];
  /** The peer runs only at batches up to this (default: all). */
  peerMaxBatch?: number;
};

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const h = s.length >> 1;
  return s.length === 0 ? NaN : s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
}

/** Host data of one synthetic batch. */
interface HostBatch {
  b: number;
  n: number;
  size: number;
  x: Float32Array; // (n, 3, size, size)
  target: Float32Array; // (b, G)
  aux: Float32Array; // (b, A)
  tumor: Int8Array; // (b)
  nbr?: number[][];
}

function synthBatch(b: number, n: number, size: number, g: number, a: number, seed: number): HostBatch {
  const rng = uniform(seed);
  // Normalised inputs: roughly zero mean, unit variance (uniform on ±√3).
  const x = new Float32Array(n * 3 * size * size);
  for (let i = 0; i < x.length; i++) x[i] = (2 * rng() - 1) * 1.7320508;
  // log1p-normalised expression is ≥ 0 and mostly small.
  const target = Float32Array.from({ length: b * g }, () => 3 * rng() * rng());
  const aux = Float32Array.from({ length: b * a }, () => 3 * rng() * rng());
  const tumor = Int8Array.from({ length: b }, (_, i) => i % 2);
  const nbr = n > b
    ? Array.from(
      { length: b },
      (_, i) => Array.from({ length: (n - b) / b }, (_, k) => i * ((n - b) / b) + k),
    )
    : undefined;
  return { b, n, size, x, target, aux, tumor, nbr };
}

/**
 * Our side: warm-up + reps `Trainer.step`s on one batch; with `table`, as many again with that tuning table,
 * interleaved (ABBA), and the engine left on its built-in defaults.
 */
async function timeOurs(
  e: Engine,
  backbone: ResNetConfig,
  variant: Variant,
  cfg: TrainConfig,
  hb: HostBatch,
  reps: number,
  sd: boolean,
  table?: TuningTable | null,
): Promise<{
  first: number;
  times: number[];
  losses: StepLosses[];
  peakMiB: number;
  stateDict?: Map<string, HostTensor>;
  tunedTimes?: number[];
}> {
  const model = HE2Gene.init(
    e,
    { backbone, variant, targetGenes: hb.target.length / hb.b, auxGenes: hb.aux.length / hb.b },
    7,
  );
  // The peer starts from the same weights (read before any update).
  const stateDict = sd ? await model.stateDict() : undefined;
  const trainer = new Trainer(e, model, cfg);
  const g = hb.target.length / hb.b, a = hb.aux.length / hb.b;
  e.pool.resetPeak();
  // Mode 0: as the engine is (the built-in defaults in bench/main.ts); mode 1: the tuning table.
  const modes = table ? [0, 1] : [0];
  const times: number[][] = modes.map(() => []);
  const losses: StepLosses[] = [];
  let first = NaN;
  try {
    for (let i = 0; i < 1 + reps; i++) {
      for (const m of i % 2 ? [...modes].reverse() : modes) {
        if (table) useTuning(e, m ? table : null);
        const t0 = performance.now();
        const x = e.tensor(hb.x, [hb.n, 3, hb.size, hb.size]);
        const target = e.tensor(hb.target, [hb.b, g]);
        const aux = e.tensor(hb.aux, [hb.b, a]);
        let l: StepLosses;
        try {
          l = await trainer.step({ x, b: hb.b, target, aux, tumor: hb.tumor, nbr: hb.nbr });
        } finally {
          for (const t of [x, target, aux] as Tensor[]) t.dispose();
        }
        const s = (performance.now() - t0) / 1000;
        if (i === 0 && m === 0) first = s;
        else if (i > 0) times[m].push(s);
        losses.push(l);
      }
    }
  } finally {
    if (table) useTuning(e, null);
    trainer.dispose();
    model.dispose();
  }
  const peakMiB = e.pool.stats().peakInUseBytes / 2 ** 20;
  e.pool.trim();
  return { first, times: times[0], losses, peakMiB, stateDict, tunedTimes: table ? times[1] : undefined };
}

// deno-lint-ignore no-explicit-any
type TfTensor = any;

/**
 * tfjs-core's package entry (the `tf-core.node.js` bundle) registers no gradients: `@tensorflow/tfjs`
 * imports `dist/register_all_gradients.js`, whose extensionless relative imports Deno cannot load. These are
 * tfjs's own gradient configs (`tfjs-core/src/gradients/*_grad.ts`) for the kernels this network records,
 * written with public ops; a kernel that already has one is left alone.
 */
function registerGradients(tf: TfTensor): void {
  const bu = tf.broadcast_util;
  const unbroadcast = (g: TfTensor, shape: number[], out: number[]) => {
    const axes = bu.getReductionAxes(shape, out);
    return tf.reshape(axes.length ? tf.sum(g, axes) : g, shape);
  };
  const binary = (
    name: string,
    da: (dy: TfTensor, a: TfTensor, b: TfTensor) => TfTensor,
    db: (dy: TfTensor, a: TfTensor, b: TfTensor) => TfTensor,
  ) => ({
    kernelName: name,
    inputsToSave: ["a", "b"],
    gradFunc: (dy: TfTensor, [a, b]: TfTensor[]) => {
      const out = bu.assertAndGetBroadcastShape(a.shape, b.shape);
      return {
        a: () => unbroadcast(da(dy, a, b), a.shape, out),
        b: () => unbroadcast(db(dy, a, b), b.shape, out),
      };
    },
  });
  const unary = (name: string, dx: (dy: TfTensor, x: TfTensor) => TfTensor, save: "x" | "y" = "x") => ({
    kernelName: name,
    ...(save === "x" ? { inputsToSave: ["x"] } : { outputsToSave: [true] }),
    gradFunc: (dy: TfTensor, [x]: TfTensor[]) => ({ x: () => dx(dy, x) }),
  });
  const reduceGrad = (name: string, mean: boolean) => ({
    kernelName: name,
    inputsToSave: ["x"],
    gradFunc: (dy: TfTensor, [x]: TfTensor[], attrs: { axis: number | number[] }) => ({
      x: () => {
        const axes: number[] = tf.util.parseAxisParam(attrs.axis, x.shape);
        const shape = x.shape.slice();
        let n = 1;
        for (const a of axes) (n *= shape[a]), (shape[a] = 1);
        const g = tf.mul(tf.reshape(dy, shape), tf.ones(x.shape));
        return mean ? tf.div(g, n) : g;
      },
    }),
  });
  const f32 = (t: TfTensor) => tf.cast(t, "float32");
  const configs = [
    binary("Add", (dy) => dy, (dy) => dy),
    binary("Sub", (dy) => dy, (dy) => tf.neg(dy)),
    binary("Multiply", (dy, _a, b) => tf.mul(dy, b), (dy, a) => tf.mul(dy, a)),
    binary(
      "RealDiv",
      (dy, _a, b) => tf.div(dy, b),
      (dy, a, b) => tf.neg(tf.div(tf.mul(dy, a), tf.square(b))),
    ),
    binary(
      "Maximum",
      (dy, a, b) => tf.mul(dy, f32(tf.greaterEqual(a, b))),
      (dy, a, b) => tf.mul(dy, f32(tf.less(a, b))),
    ),
    binary(
      "Minimum",
      (dy, a, b) => tf.mul(dy, f32(tf.lessEqual(a, b))),
      (dy, a, b) => tf.mul(dy, f32(tf.greater(a, b))),
    ),
    binary(
      "SquaredDifference",
      (dy, a, b) => tf.mul(dy, tf.mul(2, tf.sub(a, b))),
      (dy, a, b) => tf.mul(dy, tf.mul(2, tf.sub(b, a))),
    ),
    unary("Neg", (dy) => tf.neg(dy)),
    unary("Log", (dy, x) => tf.div(dy, x)),
    unary("Log1p", (dy, x) => tf.div(dy, tf.add(x, 1))),
    unary("Rsqrt", (dy, x) => tf.neg(tf.div(dy, tf.mul(tf.pow(x, 1.5), 2)))),
    unary("Sqrt", (dy, x) => tf.div(dy, tf.mul(tf.sqrt(x), 2))),
    unary("Square", (dy, x) => tf.mul(dy, tf.mul(x, 2))),
    unary("Relu", (dy, x) => tf.mul(dy, f32(tf.step(x)))),
    unary("Sigmoid", (dy, y) => tf.mul(dy, tf.mul(y, tf.sub(1, y))), "y"),
    unary("Cast", (dy) => tf.clone(dy)),
    reduceGrad("Mean", true),
    reduceGrad("Sum", false),
    {
      kernelName: "Reshape",
      inputsToSave: ["x"],
      gradFunc: (dy: TfTensor, [x]: TfTensor[]) => ({ x: () => tf.reshape(dy, x.shape) }),
    },
    {
      kernelName: "Transpose",
      gradFunc: (dy: TfTensor, _: TfTensor[], attrs: { perm: number[] }) => ({
        x: () => tf.transpose(dy, tf.backend_util.getUndoAxesPermutation(attrs.perm)),
      }),
    },
    {
      kernelName: "Concat",
      saveAllInputs: true,
      gradFunc: (dy: TfTensor, saved: TfTensor[], attrs: { axis: number }) => {
        const axis = tf.util.parseAxisParam(attrs.axis, saved[0].shape)[0];
        return tf.split(dy, saved.map((t) => t.shape[axis]), axis).map((t: TfTensor) => () => t);
      },
    },
    {
      kernelName: "BatchMatMul",
      inputsToSave: ["a", "b"],
      gradFunc: (dy: TfTensor, [a, b]: TfTensor[], attrs: { transposeA: boolean; transposeB: boolean }) => {
        const { transposeA: ta, transposeB: tb } = attrs;
        if (!ta && !tb) {
          return {
            a: () => tf.matMul(dy, b, false, true),
            b: () => tf.matMul(a, dy, true, false),
          };
        }
        if (!ta && tb) {
          return {
            a: () => tf.matMul(dy, b, false, false),
            b: () => tf.matMul(dy, a, true, false),
          };
        }
        if (ta && !tb) {
          return {
            a: () => tf.matMul(b, dy, false, true),
            b: () => tf.matMul(a, dy, false, false),
          };
        }
        return { a: () => tf.matMul(b, dy, true, true), b: () => tf.matMul(dy, a, true, true) };
      },
    },
    {
      kernelName: "Conv2D",
      inputsToSave: ["x", "filter"],
      gradFunc: (dy: TfTensor, [x, w]: TfTensor[], attrs: TfTensor) => {
        const { strides, pad, dataFormat, dimRoundingMode } = attrs;
        const common = { strides, pad, dataFormat, dimRoundingMode };
        return {
          x: () =>
            tf.engine().runKernel("Conv2DBackpropInput", { dy, filter: w }, {
              ...common,
              inputShape: x.shape,
            }),
          filter: () =>
            tf.engine().runKernel("Conv2DBackpropFilter", { x, dy }, { ...common, filterShape: w.shape }),
        };
      },
    },
    {
      kernelName: "MaxPool",
      inputsToSave: ["x"],
      outputsToSave: [true],
      gradFunc: (dy: TfTensor, [x, y]: TfTensor[], attrs: TfTensor) => ({
        x: () =>
          tf.engine().runKernel("MaxPoolGrad", { dy, input: x, output: y }, {
            filterSize: attrs.filterSize,
            strides: attrs.strides,
            pad: attrs.pad,
            dimRoundingMode: attrs.dimRoundingMode,
          }),
      }),
    },
  ];
  for (const c of configs) if (tf.getGradient(c.kernelName) == null) tf.registerGradient(c);
}

/**
 * The same training step in tfjs (NHWC), from our state dict; the aux head split in two halves.
 * Returns a step function (resolves with the loss once the update has run) and a disposer.
 */
function buildPeerTrainer(
  peer: TfjsPeer,
  device: GPUDevice,
  backbone: ResNetConfig,
  variant: Variant,
  cfg: TrainConfig,
  sd: Map<string, HostTensor>,
): { step(x: TfTensor, t: TfTensor, a: TfTensor, m: TfTensor): Promise<number>; dispose(): void } {
  const tf = peer.tf;
  registerGradients(tf);
  const vars: TfTensor[] = [];
  const variable = (data: Float32Array, shape: number[]) => {
    const v = tf.variable(tf.tensor(data, shape), true);
    vars.push(v);
    return v;
  };
  const get = (k: string) => sd.get(`base_model.${k}`)!;
  const { stem, blocks } = layout(backbone);
  const convs = new Map<string, { w: TfTensor; g: TfTensor; b: TfTensor }>();
  const add = (cb: { conv: string; bn: string; cin: number; cout: number; k: number }) => {
    const w = get(`${cb.conv}.weight`).data;
    const hwio = new Float32Array(w.length);
    for (let o = 0; o < cb.cout; o++) {
      for (let i = 0; i < cb.cin; i++) {
        for (let kk = 0; kk < cb.k * cb.k; kk++) {
          hwio[(kk * cb.cin + i) * cb.cout + o] = w[(o * cb.cin + i) * cb.k * cb.k + kk];
        }
      }
    }
    convs.set(cb.conv, {
      w: variable(hwio, [cb.k, cb.k, cb.cin, cb.cout]),
      g: variable(get(`${cb.bn}.weight`).data, [cb.cout]),
      b: variable(get(`${cb.bn}.bias`).data, [cb.cout]),
    });
  };
  add(stem);
  for (const b of blocks) {
    b.convs.forEach(add);
    if (b.downsample) add(b.downsample);
  }
  const keys = HEAD_KEYS[variant];
  const head = (key: string, n0 = 0, n1?: number) => {
    const w = sd.get(`${key}.weight`)!, b = sd.get(`${key}.bias`)!;
    const [n, f] = w.shape;
    const end = n1 ?? n;
    return {
      w: variable(w.data.slice(n0 * f, end * f), [end - n0, f]),
      b: variable(b.data.slice(n0, end), [end - n0]),
    };
  };
  const nAux = sd.get(`${keys.aux}.weight`)!.shape[0];
  const half = Math.ceil(nAux / 2);
  const fcT = head(keys.target),
    fcA1 = head(keys.aux, 0, half),
    fcA2 = head(keys.aux, half),
    fcM = head(keys.tumor);
  const opt = tf.train.adam(cfg.lr, 0.9, 0.999, 1e-8);

  const convBn = (
    x: TfTensor,
    cb: { conv: string; stride: number; pad: number },
    relu: boolean,
    residual?: TfTensor,
  ) => {
    const { w, g, b } = convs.get(cb.conv)!;
    const p = cb.pad;
    const y = tf.conv2d(x, w, cb.stride, [[0, 0], [p, p], [p, p], [0, 0]], "NHWC");
    // Training-mode batch norm: batch statistics (biased variance), ε = 1e-5.
    const { mean, variance } = tf.moments(y, [0, 1, 2]);
    let z = tf.add(tf.mul(tf.mul(tf.sub(y, mean), tf.rsqrt(tf.add(variance, 1e-5))), g), b);
    if (residual) z = tf.add(z, residual);
    return relu ? tf.relu(z) : z;
  };
  const lossFn = (x: TfTensor, yt: TfTensor, ya: TfTensor, ym: TfTensor) => {
    let y = convBn(x, stem, true);
    y = tf.maxPool(y, 3, 2, 1);
    for (const b of blocks) {
      const identity = b.downsample ? convBn(y, b.downsample, false) : y;
      let z = y;
      b.convs.forEach((cb, i) => {
        const last = i === b.convs.length - 1;
        z = convBn(z, cb, true, last ? identity : undefined);
      });
      y = z;
    }
    const f = tf.mean(y, [1, 2]);
    const lin = (h: { w: TfTensor; b: TfTensor }) => tf.add(tf.matMul(f, h.w, false, true), h.b);
    const pt = lin(fcT);
    const pa = tf.concat([lin(fcA1), lin(fcA2)], 1);
    const pm = tf.sigmoid(lin(fcM));
    const lt = tf.mean(tf.squaredDifference(pt, yt));
    const la = tf.mean(tf.squaredDifference(pa, ya));
    // PyTorch's BCE: logs clamped at −100.
    const lm = tf.mean(tf.neg(tf.add(
      tf.mul(ym, tf.maximum(tf.log(pm), -100)),
      tf.mul(tf.sub(1, ym), tf.maximum(tf.log1p(tf.neg(pm)), -100)),
    )));
    return tf.add(tf.add(lt, tf.mul(la, cfg.auxWeight)), tf.mul(lm, cfg.tmrWeight));
  };
  const byName = new Map<string, TfTensor>(vars.map((v) => [v.name, v]));

  return {
    async step(x, yt, ya, ym) {
      device.pushErrorScope("validation");
      let value: TfTensor;
      try {
        value = tf.tidy(() => {
          const { value, grads } = tf.variableGrads(() => lossFn(x, yt, ya, ym), vars);
          // clip_grad_norm_(max_norm) then Adam's L2 decay (grad + wd·w), as torch.optim.Adam.
          let sq = tf.scalar(0);
          for (const n of Object.keys(grads)) sq = tf.add(sq, tf.sum(tf.square(grads[n])));
          const scale = tf.minimum(1, tf.div(cfg.clipNorm, tf.add(tf.sqrt(sq), 1e-6)));
          const g2: Record<string, TfTensor> = {};
          for (const n of Object.keys(grads)) {
            g2[n] = tf.add(tf.mul(grads[n], scale), tf.mul(byName.get(n), cfg.weightDecay));
          }
          opt.applyGradients(g2);
          return value;
        });
      } catch (err) {
        await device.popErrorScope();
        throw err;
      }
      const l = (await value.data())[0] as number;
      value.dispose();
      const err = await device.popErrorScope();
      if (err) throw new Error(`tfjs step raised a GPU error: ${err.message.split("\n")[0]}`);
      return l;
    },
    dispose() {
      opt.dispose();
      for (const v of vars) v.dispose();
    },
  };
}

async function timePeer(
  peer: TfjsPeer,
  device: GPUDevice,
  backbone: ResNetConfig,
  variant: Variant,
  cfg: TrainConfig,
  sd: Map<string, HostTensor>,
  hb: HostBatch,
  reps: number,
): Promise<{ first: number; times: number[]; losses: number[]; errors: string[] }> {
  const tf = peer.tf;
  const net = buildPeerTrainer(peer, device, backbone, variant, cfg, sd);
  const g = hb.target.length / hb.b, a = hb.aux.length / hb.b;
  const x = tf.tidy(() => tf.transpose(tf.tensor4d(hb.x, [hb.n, 3, hb.size, hb.size]), [0, 2, 3, 1]));
  const yt = tf.tensor2d(hb.target, [hb.b, g]);
  const ya = tf.tensor2d(hb.aux, [hb.b, a]);
  const ym = tf.tensor2d(Float32Array.from(hb.tumor), [hb.b, 1]);
  const times: number[] = [];
  const losses: number[] = [];
  const errors: string[] = [];
  let first = NaN;
  try {
    for (let i = 0; i < 1 + reps; i++) {
      const t0 = performance.now();
      losses.push(await net.step(x, yt, ya, ym));
      const s = (performance.now() - t0) / 1000;
      if (i === 0) first = s;
      else times.push(s);
    }
  } catch (err) {
    errors.push(String((err as Error).message ?? err).split("\n")[0]);
  } finally {
    for (const t of [x, yt, ya, ym]) t.dispose();
    net.dispose();
  }
  return { first, times, losses, errors };
}

// The row's tuned fields from timeOurs's result (none without a table).
function tunedFields(ours: { times: number[]; tunedTimes?: number[] }): Partial<TrainRow> {
  if (!ours.tunedTimes) return {};
  const t = median(ours.tunedTimes);
  return { tunedSPerStep: t, tunedRatio: median(ours.times) / t };
}

/**
 * Run the training benchmark; with `opts.table`, our steps alternate with that tuning table (the engine is
 * left on its built-in defaults afterwards).
 */
export async function benchTrain(engine: Engine, peer: TfjsPeer | null, opts: Opts): Promise<TrainRow[]> {
  const rows: TrainRow[] = [];
  const base: TrainConfig = { ...DEFAULT_TRAIN };
  const reps = Math.max(1, opts.reps);
  // 1 + 2: ResNet-50, ours and tfjs.
  for (const batch of opts.batches ?? (opts.quick ? [2] : [2, 8])) {
    opts.log(`… ResNet-50 + heads, training step, batch ${batch}`);
    let auxGenes = 19699;
    let hb = synthBatch(batch, batch, 224, 250, auxGenes, 100 + batch);
    let ours: Awaited<ReturnType<typeof timeOurs>>;
    let oursError: string | undefined;
    try {
      ours = await timeOurs(engine, RESNET50, "base", base, hb, reps, peer !== null, opts.table);
    } catch (err) {
      // On llvmpipe (128 MiB bindings) the aux head's backward dX = dY·W reads the 161 MB weight as an
      // untransposed B, which matmul cannot split: fall back to the largest aux head that fits one binding,
      // so that the rest of the step is still measured (the peer then gets the same network).
      if (!(err instanceof RangeError)) throw err;
      oursError = err.message.split("\n")[0];
      auxGenes = Math.floor(engine.maxBinding / (4 * featureDim(RESNET50)) / 1000) * 1000;
      opts.log(`  ours failed with 19 699 aux genes: ${oursError}`);
      opts.log(
        `  falling back to ${auxGenes} aux genes (largest multiple of 1000 whose weight fits one binding)`,
      );
      hb = synthBatch(batch, batch, 224, 250, auxGenes, 100 + batch);
      ours = await timeOurs(engine, RESNET50, "base", base, hb, reps, peer !== null, opts.table);
    }
    const row: TrainRow = {
      name: "resnet50 base",
      backbone: RESNET50.name,
      variant: "base",
      batch,
      images: batch,
      auxGenes,
      oursError,
      reps: ours.times.length,
      oursFirstS: ours.first,
      oursSPerStep: median(ours.times),
      oursSpotsPerS: batch / median(ours.times),
      peakMiB: ours.peakMiB,
      oursLoss: ours.losses[0].total,
      oursFinite: ours.losses.every((l) => Number.isFinite(l.total)),
      ...tunedFields(ours),
    };
    opts.log(
      `  ours: first ${ours.first.toFixed(1)} s, then ${row.oursSPerStep.toFixed(2)} s/step` +
        (row.tunedSPerStep === undefined ? "" : ` (tuned ${row.tunedSPerStep.toFixed(2)} s/step)`) +
        `; loss ${ours.losses.map((l) => l.total.toFixed(4)).join(", ")}`,
    );
    if (peer && ours.stateDict && batch <= (opts.peerMaxBatch ?? Infinity)) {
      const peerReps = opts.quick ? 1 : Math.min(reps, 2);
      opts.log(`… tfjs-webgpu, batch ${batch} (${1 + peerReps} steps)`);
      const p = await timePeer(peer, engine.device, RESNET50, "base", base, ours.stateDict, hb, peerReps);
      ours.stateDict.clear();
      row.peerReps = p.times.length;
      row.peerFirstS = p.first;
      row.peerSPerStep = median(p.times);
      row.ratio = row.peerSPerStep / row.oursSPerStep;
      row.peerLoss = p.losses[0];
      row.peerFinite = p.losses.length > 0 && p.losses.every(Number.isFinite);
      if (row.peerLoss !== undefined) {
        row.lossRelDiff = Math.abs(row.peerLoss - row.oursLoss) / Math.abs(row.oursLoss);
      }
      if (p.errors.length) row.peerErrors = p.errors;
      opts.log(
        `  tfjs: first ${p.first.toFixed(1)} s, then ${row.peerSPerStep.toFixed(2)} s/step; ` +
          `loss ${p.losses.map((l) => l.toFixed(4)).join(", ")}${p.errors.length ? `; ${p.errors[0]}` : ""}`,
      );
    }
    rows.push(row);
  }
  // 3: the tiny backbone, Base and Spat.
  for (const variant of ["base", "spat"] as const) {
    const cfg: TrainConfig = { ...base, spatWeight: variant === "spat" ? 0.01 : 0 };
    let oursError: string | undefined;
    // Batch 32; on llvmpipe Spat's 288-image input (173 MB) exceeds one binding in the stem conv, so a
    // batch that fails that way is halved until it runs (spots per second stay comparable).
    for (let batch = 32; batch >= 1; batch >>= 1) {
      const images = variant === "spat" ? 9 * batch : batch;
      const label = `HE2Gene-${variant === "base" ? "Base" : "Spat"}`;
      opts.log(`… tiny backbone, ${label}, batch ${batch} (${images} images)`);
      const hb = synthBatch(batch, images, 224, 250, 19699, 200 + images);
      let ours: Awaited<ReturnType<typeof timeOurs>>;
      try {
        ours = await timeOurs(engine, TINY, variant, cfg, hb, reps, false, opts.table);
      } catch (err) {
        if (!(err instanceof RangeError) || batch === 1) throw err;
        oursError ??= `batch ${batch}: ${err.message.split("\n")[0]}`;
        opts.log(`  failed: ${err.message.split("\n")[0]}; halving the batch`);
        continue;
      }
      rows.push({
        name: `tiny ${variant}`,
        backbone: TINY.name,
        variant,
        batch,
        images,
        auxGenes: 19699,
        oursError,
        reps: ours.times.length,
        oursFirstS: ours.first,
        oursSPerStep: median(ours.times),
        oursSpotsPerS: batch / median(ours.times),
        peakMiB: ours.peakMiB,
        oursLoss: ours.losses[0].total,
        oursFinite: ours.losses.every((l) => Number.isFinite(l.total)),
        ...tunedFields(ours),
      });
      opts.log(
        `  first ${ours.first.toFixed(1)} s, then ${median(ours.times).toFixed(2)} s/step ` +
          `(${(batch / median(ours.times)).toFixed(1)} spots/s)` +
          (ours.tunedTimes ? `, tuned ${median(ours.tunedTimes).toFixed(2)} s/step` : "") + "; " +
          `loss ${ours.losses.map((l) => l.total.toFixed(4)).join(", ")}`,
      );
      break;
    }
  }
  return rows;
}

const fx = (
  x: number | undefined,
  d: number,
) => (x === undefined || !Number.isFinite(x) ? "–" : x.toFixed(d));

/** Print the training table. */
export function printTrainTable(rows: TrainRow[], log: (s: string) => void): void {
  const tuned = rows.some((r) => r.tunedSPerStep !== undefined);
  const head = [
    "network",
    "aux",
    "batch",
    "images",
    "ours 1st s",
    "ours s/step",
    "spots/s",
    ...(tuned ? ["tuned s/step", "default/tuned"] : []),
    "peak MiB",
    "tfjs 1st s",
    "tfjs s/step",
    "tfjs/ours",
    "1st loss ours / tfjs",
    "finite",
  ];
  const lines = rows.map((r) => [
    r.name,
    String(r.auxGenes),
    String(r.batch),
    String(r.images),
    fx(r.oursFirstS, 1),
    fx(r.oursSPerStep, 2),
    fx(r.oursSpotsPerS, 2),
    ...(tuned ? [fx(r.tunedSPerStep, 2), r.tunedRatio !== undefined ? `${fx(r.tunedRatio, 2)}×` : "–"] : []),
    fx(r.peakMiB, 0),
    fx(r.peerFirstS, 1),
    fx(r.peerSPerStep, 2),
    r.ratio !== undefined && Number.isFinite(r.ratio) ? `${r.ratio.toFixed(2)}×` : "–",
    `${fx(r.oursLoss, 4)} / ${fx(r.peerLoss, 4)}`,
    r.oursFinite && r.peerFinite !== false ? "yes" : "NO",
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
  const fmt = (l: string[]) =>
    l.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ");
  log(fmt(head));
  log(widths.map((w) => "-".repeat(w)).join("  "));
  for (const l of lines) log(fmt(l));
  log(
    "s/step: median after one warm-up step (1st: the warm-up, shader compilation included); spots/s: centre " +
      "spots per second (Spat also runs each spot's 8 neighbours through the backbone). tfjs gets the aux head " +
      "split in two halves (its 161 MB weight exceeds the 128 MiB binding on llvmpipe, where tfjs returns zeros)." +
      (tuned
        ? " ours: built-in kernel variants; tuned: the tuning table's (default/tuned > 1: the table is faster)."
        : ""),
  );
  for (const r of rows) {
    if (r.lossRelDiff !== undefined) {
      log(
        `${r.name} batch ${r.batch}: first-step losses (same weights) differ by ${
          r.lossRelDiff.toExponential(1)
        } (relative)`,
      );
    }
    if (r.peerErrors) log(`${r.name} batch ${r.batch}: tfjs failed: ${r.peerErrors[0]}`);
    if (r.oursError && r.backbone === RESNET50.name) {
      log(
        `${r.name} batch ${r.batch}: he2gene FAILED with 19 699 aux genes (${r.oursError}); the row is for ` +
          `${r.auxGenes} aux genes on both sides`,
      );
    } else if (r.oursError) {
      log(`${r.name}: he2gene FAILED at ${r.oursError}; the row is for batch ${r.batch}`);
    }
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      quick: { type: "boolean", default: false },
      "no-peer": { type: "boolean", default: false },
      reps: { type: "string" },
      json: { type: "boolean", default: false },
      check: { type: "boolean", default: false },
    },
    strict: true,
  });
  const { createEngine } = await import("../mod.ts");
  const log = (s: string) => (values.json ? console.error(s) : console.log(s));
  const e = await createEngine();
  const info = e.adapterInfo;
  log(`adapter: ${info.name}${info.software ? " (software)" : ""}, backend: ${info.backend}`);
  let peer: TfjsPeer | null = null;
  if (!values["no-peer"]) {
    const { createTfjsPeer } = await import("./peer_tfjs.ts");
    peer = await createTfjsPeer(e.device, { vendor: info.vendor, architecture: "" } as GPUAdapterInfo);
    log(`peer: ${peer.name} on the same device`);
  }
  const reps = values.reps ? Number(values.reps) : values.quick ? 2 : 3;
  if (values.check) {
    // A fast agreement check of the two training steps: tiny backbone, 64×64, batch 4, 3 steps each.
    const hb = synthBatch(4, 4, 64, 250, 19699, 5);
    const ours = await timeOurs(e, TINY, "base", DEFAULT_TRAIN, hb, 2, true);
    log(`ours: ${ours.losses.map((l) => l.total.toFixed(6)).join(", ")}`);
    if (peer) {
      const p = await timePeer(peer, e.device, TINY, "base", DEFAULT_TRAIN, ours.stateDict!, hb, 2);
      log(`tfjs: ${p.losses.map((l) => l.toFixed(6)).join(", ")} ${p.errors.join("; ")}`);
    }
    peer?.dispose();
    e.destroy();
    Deno.exit(0);
  }
  const rows = await benchTrain(e, peer, { quick: values.quick ?? false, reps, log });
  peer?.dispose();
  if (values.json) {
    console.log(JSON.stringify({ adapter: info, date: new Date().toISOString(), train: rows }, null, 2));
  } else {
    console.log("\nHE2Gene training step (Trainer.step: forward, backward, clip 1.0, Adam + L2 1e-4):");
    printTrainTable(rows, console.log);
  }
  e.destroy();
}
