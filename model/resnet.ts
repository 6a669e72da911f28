/**
 * A config-driven ResNet as torchvision builds it (bottleneck v1.5: the stride sits on the 3×3 conv),
 * parameters named by PyTorch's state-dict keys (`conv1.weight`, `layer1.0.downsample.1.running_var`, …).
 *
 *   x (N, 3, H, W) → conv1 7×7/2 → bn1 → relu → maxpool 3×3/2 → layer1…layer4 → global average pool
 *   → features (N, C) with C = 2048 for resnet50, 512 for resnet18.
 *
 * Two forward paths:
 * - `forward(params, x, { training })`: conv → batch norm (batch statistics in training, running ones in
 *   eval) → ReLU, all differentiable; used for training.
 * - `foldForInference(params)` + `forwardFolded`: each eval-mode batch norm folded into its conv
 *   (w' = w·γ/√(σ²+ε), b' = β − μ·γ/√(σ²+ε), in float64 on the CPU), so a block is three fused conv
 *   dispatches (bias, residual, ReLU in the epilogue). Used for prediction.
 *
 * Reference: He et al. 2016, https://arxiv.org/abs/1512.03385; torchvision `models/resnet.py`.
 *
 * @module
 */
import { checkpoint } from "../engine/autograd.ts";
import type { Engine } from "../engine/engine.ts";
import { mulberry32 } from "../engine/random.ts";
import type { Tensor } from "../engine/tensor.ts";
import { add as addOp, relu } from "../ops/elementwise.ts";
import { conv2dForward, releaseConv2dWeight } from "../kernels/conv2d/mod.ts";
import { conv2d } from "../ops/conv2d.ts";
import type { BatchNormState } from "../kernels/batchnorm.ts";
import { batchNorm2d } from "../ops/batchnorm.ts";
import { globalAvgPool2dForward, maxPool2dForward } from "../kernels/pool.ts";
import { globalAvgPool, maxPool2d } from "../ops/pool.ts";

/** A ResNet architecture. */
export interface ResNetConfig {
  /** `resnet50`, `resnet18`, `tiny`, or a name for a custom config. */
  name: string;
  block: "bottleneck" | "basic";
  /** Blocks per stage (layer1…layer4). */
  layers: readonly [number, number, number, number];
  /** Channels of the stem and of layer1's planes (64 in torchvision); stages double it. */
  width: number;
}

/** torchvision's `resnet50()`, HE2Gene's backbone (2048 features). */
export const RESNET50: ResNetConfig = {
  name: "resnet50",
  block: "bottleneck",
  layers: [3, 4, 6, 3],
  width: 64,
};
/** torchvision's `resnet18()` (512 features). */
export const RESNET18: ResNetConfig = { name: "resnet18", block: "basic", layers: [2, 2, 2, 2], width: 64 };
/** A small bottleneck ResNet that trains on a CPU in minutes (one block per stage, width 8: 256 features). */
export const TINY: ResNetConfig = { name: "tiny", block: "bottleneck", layers: [1, 1, 1, 1], width: 8 };

/** Named configs. */
export const BACKBONES: Record<string, ResNetConfig> = { resnet50: RESNET50, resnet18: RESNET18, tiny: TINY };

const EXPANSION = { bottleneck: 4, basic: 1 } as const;

/** Width of the pooled features. */
export function featureDim(c: ResNetConfig): number {
  return c.width * 8 * EXPANSION[c.block];
}

/** One conv (no bias) followed by its batch norm, as named in the state dict. */
export interface ConvBn {
  conv: string; // e.g. "layer1.0.conv2"
  bn: string; // e.g. "layer1.0.bn2"
  cin: number;
  cout: number;
  k: number;
  stride: number;
  pad: number;
}

/** One residual block. */
export interface Block {
  prefix: string; // "layer2.0"
  convs: ConvBn[]; // 2 (basic) or 3 (bottleneck)
  downsample: ConvBn | null;
}

/** The layer list of a config: stem conv/bn and every block, with shapes. */
export function layout(c: ResNetConfig): { stem: ConvBn; blocks: Block[] } {
  const e = EXPANSION[c.block];
  const stem: ConvBn = { conv: "conv1", bn: "bn1", cin: 3, cout: c.width, k: 7, stride: 2, pad: 3 };
  const blocks: Block[] = [];
  let inplanes = c.width;
  for (let s = 0; s < 4; s++) {
    const planes = c.width * 2 ** s;
    for (let b = 0; b < c.layers[s]; b++) {
      const prefix = `layer${s + 1}.${b}`;
      const stride = b === 0 && s > 0 ? 2 : 1;
      const convs: ConvBn[] = c.block === "bottleneck"
        ? [
          {
            conv: `${prefix}.conv1`,
            bn: `${prefix}.bn1`,
            cin: inplanes,
            cout: planes,
            k: 1,
            stride: 1,
            pad: 0,
          },
          { conv: `${prefix}.conv2`, bn: `${prefix}.bn2`, cin: planes, cout: planes, k: 3, stride, pad: 1 },
          {
            conv: `${prefix}.conv3`,
            bn: `${prefix}.bn3`,
            cin: planes,
            cout: planes * e,
            k: 1,
            stride: 1,
            pad: 0,
          },
        ]
        : [
          { conv: `${prefix}.conv1`, bn: `${prefix}.bn1`, cin: inplanes, cout: planes, k: 3, stride, pad: 1 },
          {
            conv: `${prefix}.conv2`,
            bn: `${prefix}.bn2`,
            cin: planes,
            cout: planes,
            k: 3,
            stride: 1,
            pad: 1,
          },
        ];
      const downsample = stride !== 1 || inplanes !== planes * e
        ? {
          conv: `${prefix}.downsample.0`,
          bn: `${prefix}.downsample.1`,
          cin: inplanes,
          cout: planes * e,
          k: 1,
          stride,
          pad: 0,
        }
        : null;
      blocks.push({ prefix, convs, downsample });
      inplanes = planes * e;
    }
  }
  return { stem, blocks };
}

/** Every parameter and buffer of the backbone: state-dict key → shape (`num_batches_tracked` is []). */
export function parameterShapes(c: ResNetConfig): Map<string, number[]> {
  const out = new Map<string, number[]>();
  const add = (cb: ConvBn) => {
    out.set(`${cb.conv}.weight`, [cb.cout, cb.cin, cb.k, cb.k]);
    for (const s of ["weight", "bias", "running_mean", "running_var"]) out.set(`${cb.bn}.${s}`, [cb.cout]);
    out.set(`${cb.bn}.num_batches_tracked`, []);
  };
  const { stem, blocks } = layout(c);
  add(stem);
  for (const b of blocks) {
    b.convs.forEach(add);
    if (b.downsample) add(b.downsample);
  }
  return out;
}

/** Backbone tensors keyed by state-dict key (without any `base_model.` prefix). */
export type Params = Map<string, Tensor>;

/** Batch-norm counters keyed by the BN's key prefix (`layer1.0.bn1`). */
export type BnStates = Map<string, BatchNormState>;

function convBn(p: Params, st: BnStates, cb: ConvBn, x: Tensor, training: boolean, act: boolean): Tensor {
  const w = p.get(`${cb.conv}.weight`)!;
  const y = conv2d(x, w, { stride: cb.stride, padding: cb.pad });
  const z = batchNorm2d(y, {
    weight: p.get(`${cb.bn}.weight`)!,
    bias: p.get(`${cb.bn}.bias`)!,
    runningMean: p.get(`${cb.bn}.running_mean`),
    runningVar: p.get(`${cb.bn}.running_var`),
    training,
    momentum: 0.1,
    eps: 1e-5,
    state: st.get(cb.bn),
  });
  y.dispose();
  if (!act) return z;
  const r = relu(z);
  z.dispose();
  return r;
}

/**
 * The differentiable forward pass, (N, 3, H, W) → (N, C) features. Intermediates are released as soon as
 * the next layer has consumed them (the autograd tape keeps its own references). With `checkpoint`, the
 * stem and each residual block are checkpointed (`checkpoint` in engine/autograd.ts): the tape keeps only
 * their inputs and outputs, and backward recomputes each block once — about a third more time for a
 * fraction of the memory (what lets HE2Gene-Spat's 32 spots with their neighbours train at 224 px).
 *
 * @example
 * ```ts
 * const features = resnetForward(RESNET50, params, bnStates, x, { training: true });
 * ```
 */
export function resnetForward(
  c: ResNetConfig,
  p: Params,
  st: BnStates,
  x: Tensor,
  options: { training: boolean; checkpoint?: boolean },
): Tensor {
  const { stem, blocks } = layout(c);
  const t = options.training;
  const stemPool = ([xi]: readonly Tensor[]) => {
    const h = convBn(p, st, stem, xi, t, true);
    const m = maxPool2d(h, { kernelSize: 3, stride: 2, padding: 1 });
    h.dispose();
    return m;
  };
  const stemParams = [`${stem.conv}.weight`, `${stem.bn}.weight`, `${stem.bn}.bias`].map((k) => p.get(k)!);
  let y = options.checkpoint ? checkpoint(stemPool, [x], stemParams) : stemPool([x]);
  for (const b of blocks) {
    const sum = options.checkpoint
      ? checkpoint(([yi]) => residualBlock(p, st, b, yi, t), [y], blockParams(p, b))
      : residualBlock(p, st, b, y, t);
    y.dispose();
    y = sum;
  }
  const f = globalAvgPool(y);
  y.dispose();
  return f;
}

/**
 * relu(convs(y) + identity(y)) of one residual block, differentiable (batch norms in training or eval mode
 * as `training` says); y stays the caller's. Used by {@linkcode resnetForward} and by the fine-tuned last
 * blocks of an encoder (model/encoder.ts).
 */
export function residualBlock(p: Params, st: BnStates, b: Block, y: Tensor, t: boolean): Tensor {
  let z = y;
  for (let i = 0; i < b.convs.length; i++) {
    const last = i === b.convs.length - 1;
    const next = convBn(p, st, b.convs[i], z, t, !last);
    if (z !== y) z.dispose();
    z = next;
  }
  const identity = b.downsample ? convBn(p, st, b.downsample, y, t, false) : y;
  const sum = addRelu(z, identity);
  z.dispose();
  if (identity !== y) identity.dispose();
  return sum;
}

// The learnable tensors of a block (conv weights, batch-norm weights and biases).
function blockParams(p: Params, b: Block): Tensor[] {
  const cbs = b.downsample ? [...b.convs, b.downsample] : b.convs;
  return cbs.flatMap((cb) => [`${cb.conv}.weight`, `${cb.bn}.weight`, `${cb.bn}.bias`].map((k) => p.get(k)!));
}

function addRelu(a: Tensor, b: Tensor): Tensor {
  // relu(a + b): the residual join, through the differentiable elementwise ops.
  const s = addOp(a, b);
  const r = relu(s);
  s.dispose();
  return r;
}

/** Folded (conv + eval BN) weights and biases for {@linkcode resnetForwardFolded}. */
export type FoldedParams = Map<string, { weight: Tensor; bias: Tensor }>;

/**
 * Fold every batch norm (eval mode, running statistics) into its conv: float64 on the CPU, one upload
 * per tensor. `read(key)` returns the host data of a parameter.
 */
export function foldForInference(
  engine: Engine,
  c: ResNetConfig,
  read: (key: string) => Float32Array,
  eps = 1e-5,
): FoldedParams {
  const out: FoldedParams = new Map();
  const fold = (cb: ConvBn) => {
    const w = read(`${cb.conv}.weight`);
    const g = read(`${cb.bn}.weight`), b = read(`${cb.bn}.bias`);
    const mu = read(`${cb.bn}.running_mean`), v = read(`${cb.bn}.running_var`);
    const per = cb.cin * cb.k * cb.k;
    const fw = new Float32Array(w.length);
    const fb = new Float32Array(cb.cout);
    for (let o = 0; o < cb.cout; o++) {
      const s = g[o] / Math.sqrt(v[o] + eps);
      for (let i = 0; i < per; i++) fw[o * per + i] = w[o * per + i] * s;
      fb[o] = b[o] - mu[o] * s;
    }
    out.set(cb.conv, {
      weight: engine.tensor(fw, [cb.cout, cb.cin, cb.k, cb.k]).keep(),
      bias: engine.tensor(fb, [cb.cout]).keep(),
    });
  };
  const { stem, blocks } = layout(c);
  fold(stem);
  for (const b of blocks) {
    b.convs.forEach(fold);
    if (b.downsample) fold(b.downsample);
  }
  return out;
}

/**
 * The largest tensor one image produces on its way through the backbone at `h × w` input, in elements:
 * conv outputs and the zero-padded channels-last input copies the register-blocked conv path makes. A batch
 * must keep `batch × this × 4` bytes within one storage binding.
 */
export function maxActivationPerImage(c: ResNetConfig, h: number, w: number): number {
  const out = (s: number, k: number, stride: number, pad: number) =>
    Math.floor((s + 2 * pad - k) / stride) + 1;
  const c4 = (ch: number) => Math.ceil(ch / 4) * 4;
  const { stem, blocks } = layout(c);
  let max = Math.max(3 * h * w, (h + 2 * stem.pad) * (w + 2 * stem.pad) * c4(stem.cin));
  let H = out(h, stem.k, stem.stride, stem.pad), W = out(w, stem.k, stem.stride, stem.pad);
  max = Math.max(max, stem.cout * H * W);
  H = out(H, 3, 2, 1);
  W = out(W, 3, 2, 1); // max pool
  for (const b of blocks) {
    for (const cv of b.convs) {
      max = Math.max(max, (H + 2 * cv.pad) * (W + 2 * cv.pad) * c4(cv.cin));
      H = out(H, cv.k, cv.stride, cv.pad);
      W = out(W, cv.k, cv.stride, cv.pad);
      max = Math.max(max, cv.cout * H * W);
    }
  }
  return max;
}

/**
 * Inference forward with folded batch norms: each conv runs once with bias, residual and ReLU fused.
 * Not differentiable (no autograd); releases every intermediate. With `blocks`, only the stem and the
 * first `blocks` residual blocks run, and their output (N, C, H, W) is returned unpooled.
 */
export function resnetForwardFolded(
  c: ResNetConfig,
  f: FoldedParams,
  x: Tensor,
  options: { blocks?: number } = {},
): Tensor {
  const { stem, blocks } = layout(c);
  const conv = (cb: ConvBn, inp: Tensor, opts: { relu: boolean; residual?: Tensor }) => {
    const { weight, bias } = f.get(cb.conv)!;
    return conv2dForward(inp, weight, {
      stride: cb.stride,
      padding: cb.pad,
      constantWeight: true,
      bias,
      relu: opts.relu,
      residual: opts.residual ?? null,
    });
  };
  const h = conv(stem, x, { relu: true });
  let y = maxPool2dForward(h, { kernelSize: 3, stride: 2, padding: 1 }, false).y;
  h.dispose();
  for (const b of blocks.slice(0, options.blocks ?? blocks.length)) {
    const identity = b.downsample ? conv(b.downsample, y, { relu: false }) : y;
    let z = y;
    for (let i = 0; i < b.convs.length; i++) {
      const last = i === b.convs.length - 1;
      const next = conv(b.convs[i], z, last ? { relu: true, residual: identity } : { relu: true });
      if (z !== y) z.dispose();
      z = next;
    }
    if (identity !== y) identity.dispose();
    y.dispose();
    y = z;
  }
  if (options.blocks !== undefined) return y;
  const out = globalAvgPool2dForward(y);
  y.dispose();
  return out;
}

/** Release folded parameters. */
export function disposeFolded(f: FoldedParams): void {
  for (const { weight, bias } of f.values()) {
    releaseConv2dWeight(weight);
    weight.dispose();
    bias.dispose();
  }
  f.clear();
}

/**
 * torchvision's initialisation: convs Kaiming-normal (fan_out, ReLU gain), batch norm γ = 1, β = 0,
 * running mean 0 and variance 1. Seeded; returns host arrays keyed by state-dict key.
 */
export function initResNet(c: ResNetConfig, seed: number): Map<string, Float32Array> {
  const rng = gaussian(seed);
  const out = new Map<string, Float32Array>();
  for (const [key, shape] of parameterShapes(c)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    if (key.endsWith("num_batches_tracked")) {
      out.set(key, data);
      continue;
    }
    if (shape.length === 4) {
      const std = Math.sqrt(2 / (shape[0] * shape[2] * shape[3]));
      for (let i = 0; i < n; i++) data[i] = rng() * std;
    } else if (key.endsWith(".weight") || key.endsWith("running_var")) {
      data.fill(1);
    }
    out.set(key, data);
  }
  return out;
}

/** A seeded uniform generator on (0, 1) (mulberry32). */
export function uniform(seed: number): () => number {
  const u = mulberry32(seed);
  return () => u() + 0.5 / 4294967296; // never 0 (Box–Muller takes a log)
}

/** A seeded standard-normal generator (mulberry32 + Box–Muller). */
export function gaussian(seed: number): () => number {
  const uni = uniform(seed);
  return () => Math.sqrt(-2 * Math.log(uni())) * Math.cos(2 * Math.PI * uni());
}
