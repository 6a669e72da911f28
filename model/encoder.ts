/**
 * Image encoders: a network that turns normalised images into one feature vector each, for `embed` and for
 * training HE2Gene from pretrained weights (issue 17).
 *
 * - torchvision ResNets in their ImageNet state-dict layout (`conv1.weight`, `bn1.*`, `layer1.0.…`, `fc.*`;
 *   `fc` is dropped: the features are the global-average-pooled 2048 values of ResNet-50, as torchvision's
 *   model with `fc = nn.Identity()`), normalised with ImageNet's mean and std;
 * - an HE2Gene checkpoint's backbone (its pooled features, before the heads), normalised as HE2Gene is.
 *
 * Inference only: batch norms folded into the convolutions (eval mode), no autograd.
 *
 * @module
 */
import type { Engine } from "../engine/engine.ts";
import type { Tensor } from "../engine/tensor.ts";
import { noGrad } from "../engine/autograd.ts";
import {
  BACKBONES,
  disposeFolded,
  featureDim,
  type FoldedParams,
  foldForInference,
  maxActivationPerImage,
  parameterShapes,
  type ResNetConfig,
  resnetForwardFolded,
} from "./resnet.ts";
import type { HostTensor } from "./he2gene.ts";

/** ImageNet's per-channel mean and std (torchvision's `transforms.Normalize` for its pretrained weights). */
export const IMAGENET_MEAN = [0.485, 0.456, 0.406] as const;
export const IMAGENET_STD = [0.229, 0.224, 0.225] as const;
/** HE2Gene's (the original's `transforms.Normalize`, computed on its training patches). */
export const HE2GENE_NORM = { mean: [0.5319, 0.5080, 0.6824], std: [0.2442, 0.2063, 0.1633] } as const;

/**
 * The ResNet architecture of a state dict's keys under `prefix`: block type from `layer1.0.conv3`, blocks
 * per stage by counting, width from `conv1`. A known torchvision network keeps its name (`resnet50`).
 */
export function inferResNetConfig(
  shapes: Map<string, number[]>,
  prefix = "",
  file = "checkpoint",
): ResNetConfig {
  const stem = shapes.get(`${prefix}conv1.weight`);
  if (!stem) throw new RangeError(`Cannot read ${file}: ${prefix}conv1.weight is missing`);
  const layers = [1, 2, 3, 4].map((s) => {
    let n = 0;
    while (shapes.has(`${prefix}layer${s}.${n}.conv1.weight`)) n++;
    return n;
  }) as [number, number, number, number];
  const block = shapes.has(`${prefix}layer1.0.conv3.weight`) ? "bottleneck" : "basic";
  const width = stem[0];
  const known = Object.values(BACKBONES).find((b) =>
    b.block === block && b.width === width && b.layers.every((l, i) => l === layers[i])
  );
  return known ?? { name: `resnet-${block}-${layers.join("")}-w${width}`, block, layers, width };
}

/** A torchvision ResNet read from a state dict: its architecture and its backbone tensors (no `fc`). */
export interface TorchvisionResNet {
  config: ResNetConfig;
  /** Keyed as `parameterShapes(config)` (torchvision's keys); `num_batches_tracked` included. */
  tensors: Map<string, HostTensor>;
}

/**
 * Read a torchvision ResNet state dict (ImageNet layout; a `module.` prefix from DataParallel is removed).
 * `fc.weight`/`fc.bias` (ImageNet's 1000 classes) are dropped. Every missing key, unexpected key and shape
 * mismatch is listed in one `RangeError` naming the file; a `num_batches_tracked` the file lacks (older
 * torchvision weights) counts 0.
 *
 * @example
 * ```ts
 * const { tensors } = await readCheckpoint("resnet50-0676ba61.pth");
 * const { config } = torchvisionResNet(tensors, "resnet50-0676ba61.pth"); // config.name === "resnet50"
 * ```
 */
export function torchvisionResNet(sd: Map<string, HostTensor>, file = "checkpoint"): TorchvisionResNet {
  const keys = [...sd.keys()];
  const strip = keys.length > 0 && keys.every((k) => k.startsWith("module.")) ? "module." : "";
  const shapes = new Map(keys.map((k) => [k.slice(strip.length), sd.get(k)!.shape]));
  if (!shapes.has("conv1.weight")) {
    const heGene = keys.some((k) => k.startsWith("base_model."));
    throw new RangeError(
      `Cannot read ${file} as a torchvision ResNet: conv1.weight is missing` +
        (heGene
          ? " (it is an HE2Gene checkpoint: use --encoder he2gene, or --init to fine-tune it whole)"
          : `; keys start with ${keys.slice(0, 4).join(", ")}${keys.length > 4 ? "…" : ""}`),
    );
  }
  const config = inferResNetConfig(shapes, "", file);
  const want = parameterShapes(config);
  const problems: string[] = [];
  const tensors = new Map<string, HostTensor>();
  for (const [k, s] of want) {
    const got = sd.get(strip + k);
    if (!got) {
      if (k.endsWith("num_batches_tracked")) tensors.set(k, { shape: [], data: new Float32Array(1) });
      else problems.push(`missing ${k} (expected [${s}])`);
    } else if (got.shape.length !== s.length || got.shape.some((d, i) => d !== s[i])) {
      problems.push(`${k}: expected [${s}], found [${got.shape}]`);
    } else tensors.set(k, got);
  }
  for (const [k, s] of shapes) {
    if (!want.has(k) && k !== "fc.weight" && k !== "fc.bias") problems.push(`unexpected ${k} [${s}]`);
  }
  if (problems.length) {
    throw new RangeError(
      `Cannot load ${file} as a torchvision ${config.name}: ${problems.length} problem(s):\n  ` +
        problems.slice(0, 20).join("\n  ") +
        (problems.length > 20 ? `\n  … and ${problems.length - 20} more` : ""),
    );
  }
  return { config, tensors };
}

/** What `embed` needs of an encoder. */
export interface Encoder {
  /** e.g. "resnet50 (torchvision)". */
  readonly name: string;
  /** Feature length D. */
  readonly dim: number;
  /** Input side (the patch is resized to size × size). */
  readonly inputSize: number;
  /** Per-channel normalisation of its inputs (RGB in [0, 1]). */
  readonly mean: readonly [number, number, number];
  readonly std: readonly [number, number, number];
  /** x: (N, 3, size, size) normalised → (N, D); the caller owns the result. */
  features(x: Tensor): Tensor;
  /** Release its GPU buffers. */
  dispose(): void;
}

/**
 * A ResNet backbone as an encoder: batch norms folded (eval mode), global average pooling; batches whose
 * activations exceed one storage binding run in chunks.
 *
 * @example
 * ```ts
 * const enc = ResNetEncoder.fromTorchvision(engine, torchvisionResNet(tensors, file));
 * const f = enc.features(x); // (N, 2048)
 * ```
 */
export class ResNetEncoder implements Encoder {
  readonly dim: number;
  readonly inputSize = 224;
  #folded: FoldedParams | null;

  private constructor(
    readonly engine: Engine,
    readonly config: ResNetConfig,
    folded: FoldedParams,
    readonly name: string,
    readonly mean: readonly [number, number, number],
    readonly std: readonly [number, number, number],
  ) {
    this.#folded = folded;
    this.dim = featureDim(config);
  }

  /** A torchvision ResNet, normalised with ImageNet's mean and std. */
  static fromTorchvision(engine: Engine, r: TorchvisionResNet): ResNetEncoder {
    const folded = foldForInference(engine, r.config, (k) => r.tensors.get(k)!.data);
    return new ResNetEncoder(
      engine,
      r.config,
      folded,
      `${r.config.name} (torchvision)`,
      IMAGENET_MEAN,
      IMAGENET_STD,
    );
  }

  /**
   * The backbone of an HE2Gene state dict (`base_model.*`), normalised as HE2Gene is: its pooled features,
   * the input of the three heads.
   */
  static fromHE2Gene(engine: Engine, sd: Map<string, HostTensor>, file = "checkpoint"): ResNetEncoder {
    const prefix = "base_model.";
    const shapes = new Map([...sd].map(([k, v]) => [k, v.shape]));
    const config = inferResNetConfig(shapes, prefix, file);
    const missing = [...parameterShapes(config).keys()].filter((k) =>
      !k.endsWith("num_batches_tracked") && !sd.has(prefix + k)
    );
    if (missing.length) {
      throw new RangeError(
        `Cannot read ${file} as an HE2Gene backbone: missing ${missing.slice(0, 8).join(", ")}`,
      );
    }
    const folded = foldForInference(engine, config, (k) => sd.get(prefix + k)!.data);
    return new ResNetEncoder(
      engine,
      config,
      folded,
      `${config.name} (HE2Gene backbone)`,
      HE2GENE_NORM.mean,
      HE2GENE_NORM.std,
    );
  }

  features(x: Tensor): Tensor {
    const folded = this.#folded;
    if (!folded) throw new Error(`Cannot compute features: the ${this.name} encoder was disposed`);
    const e = this.engine;
    const [n, , h, w] = x.shape;
    const perImage = 4 * maxActivationPerImage(this.config, h, w);
    const chunk = Math.max(1, Math.floor(e.limits.maxStorageBufferBindingSize / perImage));
    return noGrad(() => {
      if (n <= chunk) return resnetForwardFolded(this.config, folded, x);
      const out = e.empty([n, this.dim], "encoder features");
      const per = x.size / n;
      for (let i = 0; i < n; i += chunk) {
        const b = Math.min(chunk, n - i);
        e.scope(() => {
          const xi = e.empty([b, ...x.shape.slice(1)], "encoder chunk");
          e.copy(x, xi, { srcOffset: i * per, size: b * per });
          const f = resnetForwardFolded(this.config, folded, xi);
          e.copy(f, out, { dstOffset: i * this.dim, size: b * this.dim });
        });
      }
      return out;
    });
  }

  dispose(): void {
    if (this.#folded) disposeFolded(this.#folded);
    this.#folded = null;
  }
}
