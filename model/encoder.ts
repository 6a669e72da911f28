/**
 * Image encoders: a network that turns normalised images into one feature vector each, for `embed` and for
 * training HE2Gene from pretrained weights (issue 17).
 *
 * - torchvision ResNets in their ImageNet state-dict layout (`conv1.weight`, `bn1.*`, `layer1.0.…`, `fc.*`;
 *   `fc` is dropped: the features are the global-average-pooled 2048 values of ResNet-50, as torchvision's
 *   model with `fc = nn.Identity()`), normalised with ImageNet's mean and std;
 * - an HE2Gene checkpoint's backbone (its pooled features, before the heads), normalised as HE2Gene is.
 *
 * `features(x)` is inference only: batch norms folded into the convolutions (eval mode), no autograd.
 * `trainable(k)` fine-tunes the last k blocks (`train --unfreeze-last K`): the frozen ones still run folded
 * under noGrad, the last k on the autograd tape ({@linkcode TrainableEncoder}).
 *
 * @module
 */
import type { Engine } from "../engine/engine.ts";
import type { Tensor } from "../engine/tensor.ts";
import { noGrad, zeroGrad } from "../engine/autograd.ts";
import { globalAvgPool } from "../ops/pool.ts";
import {
  BACKBONES,
  type BnStates,
  disposeFolded,
  featureDim,
  type FoldedParams,
  foldForInference,
  layout,
  maxActivationPerImage,
  parameterShapes,
  type Params,
  residualBlock,
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

// A batch norm's tensors in state-dict order (`num_batches_tracked`, a counter, is kept apart).
const BN_KEYS = ["weight", "bias", "running_mean", "running_var"] as const;

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
  /**
   * The last `k` blocks made trainable, for fine-tuning (`train --unfreeze-last K`): ResNet bottleneck or
   * basic blocks counted from the end (layer4.2, layer4.1, layer4.0, layer3.5, …), ViT transformer blocks
   * (+ the final `norm` or `fc_norm`). A `RangeError` unless 1 ≤ k ≤ the number of blocks. The encoder's own
   * `features` keep the weights it was built with.
   */
  trainable?(k: number): TrainableEncoder;
  /** Release its GPU buffers. */
  dispose(): void;
}

/**
 * An encoder whose last K blocks train (see {@linkcode Encoder.trainable}); the blocks before them are frozen
 * and run on the inference path under noGrad.
 *
 * @example
 * ```ts
 * const t = encoder.trainable!(2);
 * const opt = new Adam(t.params, { lr: 1e-5 });
 * const loss = mseLoss(linear(t.forward(x), w, b), y); // on the tape: the last 2 blocks and the head
 * await backward(loss);
 * opt.step();
 * const trained = await t.stateDict(); // under the weights' own keys
 * ```
 */
export interface TrainableEncoder {
  /**
   * The trainable parameters (`requiresGrad`) under the weights' own keys (torchvision's `layer4.2.conv1.weight`,
   * an HE2Gene backbone's `base_model.layer4.2.conv1.weight`, timm's `blocks.11.attn.qkv.weight`), in
   * state-dict order: only the last K blocks (+ a ViT's final norm). Batch-norm running statistics are
   * buffers, not parameters.
   */
  readonly params: Map<string, Tensor>;
  /**
   * x: (N, 3, size, size) normalised → (N, D) features, the last K blocks recorded on the tape (outside
   * noGrad). `training` (default true) is PyTorch's `model.train()` for the trainable blocks' batch norms
   * (ResNet; what HE2Gene's fine-tuning does): batch statistics, running statistics updated with momentum
   * 0.1; false: the running statistics (validation). The frozen blocks always run in eval mode. ViTs have
   * no batch norm or dropout: the same either way.
   */
  forward(x: Tensor, options?: { training?: boolean }): Tensor;
  /**
   * What training changes, read back, under the weights' own keys: the parameters, and for a ResNet the
   * trainable blocks' batch-norm `running_mean`, `running_var` and `num_batches_tracked`.
   */
  stateDict(): Promise<Map<string, HostTensor>>;
  /** Release the trainable tensors (and their gradients); the encoder itself stays usable. */
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
  // The unfolded weights (the caller's host tensors, keyed without `prefix`), for `trainable`.
  #host: (key: string) => HostTensor | undefined;

  private constructor(
    readonly engine: Engine,
    readonly config: ResNetConfig,
    folded: FoldedParams,
    readonly name: string,
    readonly mean: readonly [number, number, number],
    readonly std: readonly [number, number, number],
    host: (key: string) => HostTensor | undefined,
    readonly prefix = "",
  ) {
    this.#folded = folded;
    this.#host = host;
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
      (k) => r.tensors.get(k),
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
      (k) => sd.get(prefix + k),
      prefix,
    );
  }

  features(x: Tensor): Tensor {
    return noGrad(() => this.#runFolded(x));
  }

  // The folded network (the first `blocks` blocks only, unpooled, when given) in chunks of images whose
  // activations fit one storage binding.
  #runFolded(x: Tensor, blocks?: number): Tensor {
    const folded = this.#folded;
    if (!folded) throw new Error(`Cannot compute features: the ${this.name} encoder was disposed`);
    const e = this.engine;
    const [n, , h, w] = x.shape;
    const perImage = 4 * maxActivationPerImage(this.config, h, w);
    const chunk = Math.max(1, Math.floor(e.maxBinding / perImage));
    if (n <= chunk) return resnetForwardFolded(this.config, folded, x, { blocks });
    let out: Tensor | null = null;
    const per = x.size / n;
    for (let i = 0; i < n; i += chunk) {
      const b = Math.min(chunk, n - i);
      const f = e.scope(() => {
        const xi = e.empty([b, ...x.shape.slice(1)], "encoder chunk");
        e.copy(x, xi, { srcOffset: i * per, size: b * per });
        return resnetForwardFolded(this.config, folded, xi, { blocks });
      });
      out ??= e.empty([n, ...f.shape.slice(1)], "encoder features");
      e.copy(f, out, { dstOffset: i * (f.size / b), size: f.size });
      f.dispose();
    }
    return out!;
  }

  /**
   * The last `k` residual blocks trainable (see {@linkcode TrainableEncoder}): their convolutions and batch
   * norms unfolded, uploaded from the weights the encoder was built from, on the tape through the same
   * differentiable blocks as HE2Gene's training (`residualBlock`, model/resnet.ts); batch norms in training
   * mode by default, as PyTorch's HE2Gene fine-tunes. The stem and the blocks before run folded under
   * noGrad. The stem never trains.
   *
   * @example
   * ```ts
   * const t = ResNetEncoder.fromTorchvision(engine, r).trainable(3); // layer4.0…layer4.2
   * const f = t.forward(x); // (N, 2048), on the tape
   * ```
   */
  trainable(k: number): TrainableEncoder {
    if (!this.#folded) throw new Error(`Cannot fine-tune: the ${this.name} encoder was disposed`);
    const { blocks } = layout(this.config);
    if (!Number.isInteger(k) || k < 1 || k > blocks.length) {
      throw new RangeError(
        `Cannot unfreeze the last ${k} blocks of ${this.name}: it has ${blocks.length} (give 1 to ${blocks.length})`,
      );
    }
    const e = this.engine, prefix = this.prefix, frozen = blocks.length - k, tail = blocks.slice(frozen);
    const convBns = tail.flatMap((b) => (b.downsample ? [...b.convs, b.downsample] : b.convs));
    const p: Params = new Map(), st: BnStates = new Map(), params = new Map<string, Tensor>();
    for (const cb of convBns) {
      for (const key of [`${cb.conv}.weight`, ...BN_KEYS.map((s) => `${cb.bn}.${s}`)]) {
        const grad = !key.includes(".running_");
        const h = this.#host(key);
        if (!h) throw new Error(`Cannot fine-tune ${this.name}: its weights no longer hold ${prefix}${key}`);
        const t = e.tensor(h.data, h.shape, { requiresGrad: grad }).keep();
        p.set(key, t);
        if (grad) params.set(prefix + key, t);
      }
      st.set(cb.bn, { numBatchesTracked: this.#host(`${cb.bn}.num_batches_tracked`)?.data[0] ?? 0 });
    }
    let live = true;
    const check = () => {
      if (!live) throw new Error(`Cannot use the trainable blocks of ${this.name}: they were disposed`);
    };
    return {
      params,
      forward: (x, options = {}) => {
        check();
        const training = options.training ?? true;
        return e.scope(() => {
          // (N, C, H, W) after the frozen blocks, then the trainable ones on the tape.
          let y = noGrad(() => this.#runFolded(x, frozen));
          for (const b of tail) {
            const s = residualBlock(p, st, b, y, training);
            y.dispose();
            y = s;
          }
          const f = globalAvgPool(y);
          y.dispose();
          return f;
        });
      },
      stateDict: async () => {
        check();
        const out = new Map<string, HostTensor>();
        for (const cb of convBns) {
          for (const key of [`${cb.conv}.weight`, ...BN_KEYS.map((s) => `${cb.bn}.${s}`)]) {
            const t = p.get(key)!;
            out.set(prefix + key, { shape: [...t.shape], data: await t.toArray() });
          }
          out.set(`${prefix}${cb.bn}.num_batches_tracked`, {
            shape: [],
            data: new Float32Array([st.get(cb.bn)!.numBatchesTracked]),
          });
        }
        return out;
      },
      dispose: () => {
        if (!live) return;
        live = false;
        zeroGrad(p.values());
        for (const t of p.values()) t.dispose();
        p.clear();
      },
    };
  }

  dispose(): void {
    if (this.#folded) disposeFolded(this.#folded);
    this.#folded = null;
  }
}
