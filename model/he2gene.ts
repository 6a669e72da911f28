/**
 * The HE2Gene network: a ResNet backbone (`base_model.*`, torchvision with `fc = Identity`), global average
 * pooling, and three linear heads — target genes, auxiliary genes, tumour logit (+ sigmoid).
 *
 *   HE2Gene-Base (`AuxAnnotateResNet50`):        fc1 (target), fc2 (aux), fc3 (tumour)
 *   HE2Gene-Spat (`AuxAnnotateSpatialResNet50`): fc (target), fc_aux (aux), fc_tmr (tumour)
 *
 * Head sizes come from the checkpoint, so other gene counts work too. In eval mode Spat is the same
 * network as Base. Reference: Chen et al., Bioinformatics 2024; github.com/Microbiods/HE2Gene
 * `src/models/resnet.py`.
 *
 * @module
 */
import type { Engine } from "../engine/engine.ts";
import type { Tensor } from "../engine/tensor.ts";
import { noGrad } from "../engine/autograd.ts";
import { matmulForward } from "../kernels/matmul.ts";
import { sigmoid } from "../ops/elementwise.ts";
import { linear } from "../ops/matmul.ts";
import { inferResNetConfig } from "./encoder.ts";
import {
  type BnStates,
  disposeFolded,
  featureDim,
  type FoldedParams,
  foldForInference,
  initResNet,
  maxActivationPerImage,
  parameterShapes,
  type ResNetConfig,
  resnetForward,
  resnetForwardFolded,
  uniform,
} from "./resnet.ts";

/** Which of HE2Gene's two checkpoints (only the head names differ). */
export type Variant = "base" | "spat";

/** State-dict prefixes of the three heads per variant. */
export const HEAD_KEYS: Record<Variant, { target: string; aux: string; tumor: string }> = {
  base: { target: "fc1", aux: "fc2", tumor: "fc3" },
  spat: { target: "fc", aux: "fc_aux", tumor: "fc_tmr" },
};

/** Architecture and sizes of an HE2Gene network. */
export interface HE2GeneConfig {
  backbone: ResNetConfig;
  variant: Variant;
  targetGenes: number;
  auxGenes: number;
}

/** One tensor of a state dict, on the host. */
export interface HostTensor {
  shape: number[];
  data: Float32Array;
}

/** Outputs of a forward pass. */
export interface HE2GeneOutput {
  /** (N, targetGenes): predicted log1p-normalised expression. */
  target: Tensor;
  /** (N, auxGenes). */
  aux: Tensor;
  /** (N, 1): tumour probability. */
  tumorProb: Tensor;
  /** (N, C) pooled backbone features. */
  features: Tensor;
}

const BACKBONE_PREFIX = "base_model.";

/** Every key and shape an HE2Gene state dict must hold. */
export function expectedShapes(c: HE2GeneConfig): Map<string, number[]> {
  const out = new Map<string, number[]>();
  for (const [k, s] of parameterShapes(c.backbone)) out.set(BACKBONE_PREFIX + k, s);
  const f = featureDim(c.backbone);
  const h = HEAD_KEYS[c.variant];
  for (const [key, n] of [[h.target, c.targetGenes], [h.aux, c.auxGenes], [h.tumor, 1]] as const) {
    out.set(`${key}.weight`, [n, f]);
    out.set(`${key}.bias`, [n]);
  }
  return out;
}

/**
 * Read the architecture from a state dict's keys and shapes: variant from the head names, block type from
 * `conv3`, blocks per stage by counting, width from `conv1`, gene counts from the heads.
 */
export function inferConfig(shapes: Map<string, number[]>, file = "checkpoint"): HE2GeneConfig {
  const variant: Variant | null = shapes.has("fc1.weight") ? "base" : shapes.has("fc.weight") ? "spat" : null;
  if (!variant) {
    throw new RangeError(
      `Cannot read ${file} as an HE2Gene model: no head found (expected fc1/fc2/fc3 for HE2Gene-Base or ` +
        `fc/fc_aux/fc_tmr for HE2Gene-Spat); keys start with ${[...shapes.keys()].slice(0, 4).join(", ")}…`,
    );
  }
  const backbone = inferResNetConfig(shapes, BACKBONE_PREFIX, file);
  const h = HEAD_KEYS[variant];
  return {
    backbone,
    variant,
    targetGenes: shapes.get(`${h.target}.weight`)?.[0] ?? 0,
    auxGenes: shapes.get(`${h.aux}.weight`)?.[0] ?? 0,
  };
}

/**
 * Compare a state dict against a config: one `RangeError` listing every missing key, unexpected key and
 * shape mismatch (expected and found), or nothing.
 */
export function checkStateDict(c: HE2GeneConfig, shapes: Map<string, number[]>, file = "checkpoint"): void {
  const want = expectedShapes(c);
  const problems: string[] = [];
  for (const [k, s] of want) {
    const got = shapes.get(k);
    if (!got) problems.push(`missing ${k} (expected [${s}])`);
    else if (got.length !== s.length || got.some((d, i) => d !== s[i])) {
      problems.push(`${k}: expected [${s}], found [${got}]`);
    }
  }
  for (const [k, s] of shapes) if (!want.has(k)) problems.push(`unexpected ${k} [${s}]`);
  if (problems.length) {
    throw new RangeError(
      `Cannot load ${file} as HE2Gene-${c.variant === "base" ? "Base" : "Spat"} (${c.backbone.name}, ` +
        `${c.targetGenes} target / ${c.auxGenes} aux genes): ${problems.length} problem(s):\n  ` +
        problems.join("\n  "),
    );
  }
}

/**
 * Fresh heads on `f` features as PyTorch's `nn.Linear` initialises them: weight and bias ~ U(−1/√f, 1/√f)
 * (kaiming_uniform with a = √5), drawn in the order target, aux, tumour from `uniform(seed + 1)` — what
 * `HE2Gene.init` gives its heads. Keys as `HEAD_KEYS[c.variant]`.
 *
 * @example
 * ```ts
 * const heads = initHeads({ variant: "base", targetGenes: 250, auxGenes: 19699 }, 1024); // fc1, fc2, fc3
 * ```
 */
export function initHeads(
  c: { variant: Variant; targetGenes: number; auxGenes: number },
  f: number,
  seed = 0,
): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  const rng = uniform(seed + 1);
  const h = HEAD_KEYS[c.variant];
  const bound = 1 / Math.sqrt(f);
  const u = () => (2 * rng() - 1) * bound;
  for (const [key, n] of [[h.target, c.targetGenes], [h.aux, c.auxGenes], [h.tumor, 1]] as const) {
    out.set(`${key}.weight`, { shape: [n, f], data: Float32Array.from({ length: n * f }, u) });
    out.set(`${key}.bias`, { shape: [n], data: Float32Array.from({ length: n }, u) });
  }
  return out;
}

/**
 * An HE2Gene network on one engine. Parameters are keyed by the checkpoint's state-dict keys.
 *
 * @example
 * ```ts
 * const model = HE2Gene.fromStateDict(engine, stateDict); // Map<key, { shape, data }>
 * const { target, aux, tumorProb } = model.predict(images); // images: (N, 3, 224, 224), normalised
 * ```
 */
export class HE2Gene {
  readonly params: Map<string, Tensor> = new Map();
  readonly bnStates: BnStates = new Map();
  #folded: FoldedParams | null = null;
  #host: Map<string, HostTensor> | null;

  private constructor(
    readonly engine: Engine,
    readonly config: HE2GeneConfig,
    host: Map<string, HostTensor>,
  ) {
    this.#host = host;
    for (const [k, t] of host) {
      if (k.endsWith("num_batches_tracked")) {
        const bn = k.slice(BACKBONE_PREFIX.length, -".num_batches_tracked".length);
        this.bnStates.set(bn, { numBatchesTracked: t.data[0] ?? 0 });
        continue;
      }
      const trainable = !k.endsWith("running_mean") && !k.endsWith("running_var");
      this.params.set(k, engine.tensor(t.data, t.shape, { requiresGrad: trainable }).keep());
    }
  }

  /** Build from a state dict (shapes checked; every problem listed in one error). */
  static fromStateDict(engine: Engine, sd: Map<string, HostTensor>, file = "checkpoint"): HE2Gene {
    const shapes = new Map([...sd].map(([k, v]) => [k, v.shape]));
    const config = inferConfig(shapes, file);
    checkStateDict(config, shapes, file);
    return new HE2Gene(engine, config, sd);
  }

  /**
   * A freshly initialised network (torchvision's init for the backbone, PyTorch Linear's for the heads), or
   * with `backbone` (torchvision-layout tensors of `config.backbone`, e.g. ImageNet weights read by
   * `torchvisionResNet`) as the original's `pretrained=True`: the backbone from the weights, running
   * statistics included, and fresh heads.
   */
  static init(engine: Engine, config: HE2GeneConfig, seed = 0, backbone?: Map<string, HostTensor>): HE2Gene {
    const host = new Map<string, HostTensor>();
    const shapes = expectedShapes(config);
    const fresh = backbone ? null : initResNet(config.backbone, seed);
    for (const k of parameterShapes(config.backbone).keys()) {
      const shape = shapes.get(BACKBONE_PREFIX + k)!;
      const t = backbone ? backbone.get(k) : { shape, data: fresh!.get(k)! };
      if (!t || t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
        throw new RangeError(
          `Cannot initialise the ${config.backbone.name} backbone: ${k} is ${
            t ? `[${t.shape}]` : "missing"
          }, ` +
            `expected [${shape}]`,
        );
      }
      host.set(BACKBONE_PREFIX + k, { shape, data: t.data });
    }
    for (const [k, t] of initHeads(config, featureDim(config.backbone), seed)) host.set(k, t);
    return new HE2Gene(engine, config, host);
  }

  /** Parameters of the backbone without the `base_model.` prefix. */
  #backbone(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    for (const [k, t] of this.params) {
      if (k.startsWith(BACKBONE_PREFIX)) out.set(k.slice(BACKBONE_PREFIX.length), t);
    }
    return out;
  }

  #head(role: "target" | "aux" | "tumor"): { w: Tensor; b: Tensor } {
    const key = HEAD_KEYS[this.config.variant][role];
    return { w: this.params.get(`${key}.weight`)!, b: this.params.get(`${key}.bias`)! };
  }

  /**
   * The differentiable forward pass (training: batch statistics, running ones updated; eval: running).
   * x: (N, 3, H, W) normalised. `checkpoint`: activation checkpointing of the backbone (`resnetForward`).
   */
  forward(x: Tensor, options: { training: boolean; checkpoint?: boolean }): HE2GeneOutput {
    const features = resnetForward(this.config.backbone, this.#backbone(), this.bnStates, x, options);
    const t = this.#head("target"), a = this.#head("aux"), m = this.#head("tumor");
    const logit = linear(features, m.w, m.b);
    const tumorProb = sigmoid(logit);
    logit.dispose();
    return { target: linear(features, t.w, t.b), aux: linear(features, a.w, a.b), tumorProb, features };
  }

  /**
   * Inference (eval mode, no autograd): batch norms folded into the convs, heads as fused matmuls.
   * x: (N, 3, H, W) normalised; any N (batches whose activations exceed one storage binding run in chunks).
   * The caller owns the returned tensors.
   */
  predict(x: Tensor, o: { chunk?: number } = {}): { target: Tensor; aux: Tensor; tumorProb: Tensor } {
    // A batch whose activations would exceed one storage binding runs in chunks that fit (`o.chunk`
    // forces a chunk size).
    const [n, , h, w] = x.shape;
    const perImage = 4 * maxActivationPerImage(this.config.backbone, h, w);
    const chunk = o.chunk ??
      Math.max(1, Math.floor(this.engine.limits.maxStorageBufferBindingSize / perImage));
    if (n <= chunk) return this.#predict(x);
    const e = this.engine, per = x.size / n;
    const out = {
      target: e.empty([n, this.config.targetGenes], "predict target"),
      aux: e.empty([n, this.config.auxGenes], "predict aux"),
      tumorProb: e.empty([n, 1], "predict tumour"),
    };
    for (let i = 0; i < n; i += chunk) {
      const b = Math.min(chunk, n - i);
      e.scope(() => {
        const xi = e.empty([b, ...x.shape.slice(1)], "predict chunk");
        e.copy(x, xi, { srcOffset: i * per, size: b * per });
        const r = this.#predict(xi);
        for (const k of ["target", "aux", "tumorProb"] as const) {
          const cols = out[k].shape[1];
          e.copy(r[k], out[k], { dstOffset: i * cols, size: b * cols });
        }
      });
    }
    return out;
  }

  #predict(x: Tensor): { target: Tensor; aux: Tensor; tumorProb: Tensor } {
    return noGrad(() => {
      this.#folded ??= this.#fold();
      const f = resnetForwardFolded(this.config.backbone, this.#folded, x);
      const t = this.#head("target"), a = this.#head("aux"), m = this.#head("tumor");
      const out = {
        target: matmulForward(f, t.w, { transposeB: true, bias: t.b }),
        aux: matmulForward(f, a.w, { transposeB: true, bias: a.b }),
        tumorProb: matmulForward(f, m.w, { transposeB: true, bias: m.b, activation: "sigmoid" }),
      };
      f.dispose();
      return out;
    });
  }

  #fold(): FoldedParams {
    const host = this.#host;
    if (!host) {
      throw new Error("Cannot fold batch norms: host copies were released; call prepareInference() first");
    }
    const folded = foldForInference(
      this.engine,
      this.config.backbone,
      (k) => host.get(BACKBONE_PREFIX + k)!.data,
    );
    this.#host = null; // the GPU holds everything now
    return folded;
  }

  /**
   * Make `predict` use the current parameters (after training): reads the backbone back once and refolds.
   */
  async prepareInference(): Promise<void> {
    const host = new Map<string, HostTensor>();
    for (const [k, t] of this.params) {
      if (k.startsWith(BACKBONE_PREFIX)) host.set(k, { shape: [...t.shape], data: await t.toArray() });
    }
    if (this.#folded) disposeFolded(this.#folded);
    this.#folded = null;
    this.#host = host;
  }

  /** The state dict on the host (float32; `num_batches_tracked` as a 1-element array with shape []). */
  async stateDict(): Promise<Map<string, HostTensor>> {
    const out = new Map<string, HostTensor>();
    for (const key of expectedShapes(this.config).keys()) {
      if (key.endsWith("num_batches_tracked")) {
        const bn = key.slice(BACKBONE_PREFIX.length, -".num_batches_tracked".length);
        out.set(key, { shape: [], data: new Float32Array([this.bnStates.get(bn)?.numBatchesTracked ?? 0]) });
      } else {
        const t = this.params.get(key)!;
        out.set(key, { shape: [...t.shape], data: await t.toArray() });
      }
    }
    return out;
  }

  /** Release every GPU buffer of the model. */
  dispose(): void {
    for (const t of this.params.values()) t.dispose();
    this.params.clear();
    if (this.#folded) disposeFolded(this.#folded);
    this.#folded = null;
  }
}
