/**
 * HE2Gene's three heads on a frozen image encoder (issue 17 item 4): target genes, auxiliary genes and the
 * tumour logit (+ sigmoid), keyed as HE2Gene-Base's heads (`fc1`, `fc2`, `fc3`) but on the encoder's D
 * features. `mlp` puts one hidden layer (`hidden.*`, ReLU, no dropout) before the three heads, SHARED by them:
 * the auxiliary genes then shape the representation the target genes are read from, as the backbone is
 * shared in HE2Gene (with independent linear heads the auxiliary head cannot change the target predictions).
 * `ridge` has `linear`'s tensors (its gene heads fitted in closed form).
 *
 * Training runs on cached features (`forward(features)`); `predict(x)` runs encoder → heads on normalised
 * images, with the same outputs as `HE2Gene.predict`, so prediction pipelines take either
 * ({@linkcode PredictModel}).
 *
 * @module
 */
import type { Engine } from "../engine/engine.ts";
import type { Tensor } from "../engine/tensor.ts";
import { noGrad } from "../engine/autograd.ts";
import { relu, sigmoid } from "../ops/elementwise.ts";
import { linear } from "../ops/matmul.ts";
import type { Encoder } from "./encoder.ts";
import { HEAD_KEYS, type HostTensor } from "./he2gene.ts";
import { uniform } from "./resnet.ts";

/** What prediction pipelines need of a model: HE2Gene and EncoderHeads both are one. */
export interface PredictModel {
  readonly engine: Engine;
  readonly config: { readonly targetGenes: number; readonly auxGenes: number };
  /** Input side (default 224) and normalisation (default HE2Gene's) of `predict`'s images. */
  readonly inputSize?: number;
  readonly mean?: readonly [number, number, number];
  readonly std?: readonly [number, number, number];
  /** The image encoder in front of the heads, whose own preprocessing then applies (timm's eval transform). */
  readonly encoder?: Encoder | null;
  /** x: (N, 3, S, S) normalised → (N, T), (N, A), (N, 1); the caller owns the results. */
  predict(x: Tensor): { target: Tensor; aux: Tensor; tumorProb: Tensor };
  dispose(): void;
}

/** The head kinds of `train --head`. */
export const HEAD_KINDS = ["linear", "mlp", "ridge"] as const;
export type HeadKind = typeof HEAD_KINDS[number];

/** Sizes of an EncoderHeads. */
export interface EncoderHeadsConfig {
  /** Feature length D of the encoder. */
  dim: number;
  targetGenes: number;
  auxGenes: number;
  head: HeadKind;
  /** Width of the shared hidden layer (`mlp` only). */
  hidden?: number;
}

const H = HEAD_KEYS.base;

/** Every key and shape an EncoderHeads state dict holds. */
export function headShapes(c: EncoderHeadsConfig): Map<string, number[]> {
  const out = new Map<string, number[]>();
  const f = c.head === "mlp" ? c.hidden! : c.dim;
  if (c.head === "mlp") {
    out.set("hidden.weight", [c.hidden!, c.dim]);
    out.set("hidden.bias", [c.hidden!]);
  }
  for (const [key, n] of [[H.target, c.targetGenes], [H.aux, c.auxGenes], [H.tumor, 1]] as const) {
    out.set(`${key}.weight`, [n, f]);
    out.set(`${key}.bias`, [n]);
  }
  return out;
}

/**
 * The heads (and, for `predict`, the encoder) on one engine.
 *
 * @example
 * ```ts
 * const heads = EncoderHeads.init(engine, { dim: 2048, targetGenes: 250, auxGenes: 750, head: "linear" });
 * const out = heads.forward(features, { training: true }); // features: (N, 2048)
 * ```
 */
export class EncoderHeads implements PredictModel {
  readonly params: Map<string, Tensor> = new Map();

  private constructor(
    readonly engine: Engine,
    readonly config: EncoderHeadsConfig,
    host: Map<string, HostTensor>,
    /** Owned: disposed with the heads. Null while training on cached features. */
    public encoder: Encoder | null,
  ) {
    for (const [k, t] of host) {
      this.params.set(k, engine.tensor(t.data, t.shape, { requiresGrad: true }).keep());
    }
  }

  get inputSize(): number | undefined {
    return this.encoder?.inputSize;
  }
  get mean(): readonly [number, number, number] | undefined {
    return this.encoder?.mean;
  }
  get std(): readonly [number, number, number] | undefined {
    return this.encoder?.std;
  }

  /**
   * Fresh heads as PyTorch's nn.Linear (U(±1/√in) for weights and biases); `biases` sets the target and
   * aux biases (e.g. the training means).
   */
  static init(
    engine: Engine,
    config: EncoderHeadsConfig,
    seed = 0,
    biases: { target?: Float32Array; aux?: Float32Array } = {},
  ): EncoderHeads {
    if (config.head === "mlp" && !(Number.isInteger(config.hidden) && config.hidden! >= 1)) {
      throw new RangeError(
        `Cannot create an mlp head: hidden must be a positive integer, current value is ${config.hidden}`,
      );
    }
    const rng = uniform(seed + 1);
    const host = new Map<string, HostTensor>();
    const shapes = headShapes(config);
    for (const [k, shape] of shapes) {
      // nn.Linear: weight and bias both U(−1/√in, 1/√in), `in` = the weight's columns.
      const bound = 1 / Math.sqrt(shapes.get(k.replace(/\.bias$/, ".weight"))![1]);
      const n = shape.reduce((a, b) => a * b, 1);
      host.set(k, { shape, data: Float32Array.from({ length: n }, () => (2 * rng() - 1) * bound) });
    }
    if (biases.target) host.get(`${H.target}.bias`)!.data.set(biases.target);
    if (biases.aux) host.get(`${H.aux}.bias`)!.data.set(biases.aux);
    return new EncoderHeads(engine, config, host, null);
  }

  /**
   * From a state dict (`fc1`/`fc2`/`fc3`, and `hidden` for mlp); every missing or misshapen key is listed
   * in one RangeError naming `file`. The encoder, if given, must give `dim` features.
   */
  static fromStateDict(
    engine: Engine,
    sd: Map<string, HostTensor>,
    o: { head: HeadKind; encoder?: Encoder | null; file?: string },
  ): EncoderHeads {
    const file = o.file ?? "checkpoint";
    const first = sd.get(o.head === "mlp" ? "hidden.weight" : `${H.target}.weight`);
    const config: EncoderHeadsConfig = {
      dim: first?.shape[1] ?? 0,
      targetGenes: sd.get(`${H.target}.weight`)?.shape[0] ?? 0,
      auxGenes: sd.get(`${H.aux}.weight`)?.shape[0] ?? 0,
      head: o.head,
      hidden: o.head === "mlp" ? first?.shape[0] : undefined,
    };
    const want = headShapes(config);
    const problems: string[] = [];
    for (const [k, s] of want) {
      const got = sd.get(k)?.shape;
      if (!got) problems.push(`missing ${k}`);
      else if (got.length !== s.length || got.some((d, i) => d !== s[i])) {
        problems.push(`${k}: expected [${s}], found [${got}]`);
      }
    }
    for (const k of sd.keys()) if (!want.has(k)) problems.push(`unexpected ${k}`);
    if (o.encoder && o.encoder.dim !== config.dim) {
      problems.push(
        `the encoder ${o.encoder.name} gives ${o.encoder.dim} features, the heads take ${config.dim}`,
      );
    }
    if (problems.length) {
      throw new RangeError(`Cannot load ${file} as ${o.head} heads: ${problems.join("; ")}`);
    }
    return new EncoderHeads(
      engine,
      config,
      new Map([...want.keys()].map((k) => [k, sd.get(k)!])),
      o.encoder ?? null,
    );
  }

  /** features: (N, D) → the three outputs, differentiable. */
  forward(features: Tensor): { target: Tensor; aux: Tensor; tumorProb: Tensor } {
    const p = (k: string) => this.params.get(k)!;
    let f = features;
    if (this.config.head === "mlp") {
      const h = linear(features, p("hidden.weight"), p("hidden.bias"));
      f = relu(h);
      h.dispose();
    }
    const logit = linear(f, p(`${H.tumor}.weight`), p(`${H.tumor}.bias`));
    const out = {
      target: linear(f, p(`${H.target}.weight`), p(`${H.target}.bias`)),
      aux: linear(f, p(`${H.aux}.weight`), p(`${H.aux}.bias`)),
      tumorProb: sigmoid(logit),
    };
    logit.dispose();
    if (f !== features) f.dispose();
    return out;
  }

  /** Inference on features (no autograd); the caller owns the results. */
  predictFeatures(features: Tensor): { target: Tensor; aux: Tensor; tumorProb: Tensor } {
    return noGrad(() => this.engine.scope(() => this.forward(features)));
  }

  /** Encoder → heads on normalised images (N, 3, S, S); needs the encoder. */
  predict(x: Tensor): { target: Tensor; aux: Tensor; tumorProb: Tensor } {
    const enc = this.encoder;
    if (!enc) {
      throw new Error(
        "Cannot predict from images: these heads have no encoder (load it with the checkpoint)",
      );
    }
    return noGrad(() =>
      this.engine.scope(() => {
        const f = enc.features(x);
        const out = this.forward(f);
        f.dispose();
        return out;
      })
    );
  }

  /** The heads' state dict on the host. */
  async stateDict(): Promise<Map<string, HostTensor>> {
    const out = new Map<string, HostTensor>();
    for (const [k, t] of this.params) out.set(k, { shape: [...t.shape], data: await t.toArray() });
    return out;
  }

  /** Release the heads and the encoder. */
  dispose(): void {
    for (const t of this.params.values()) t.dispose();
    this.params.clear();
    this.encoder?.dispose();
    this.encoder = null;
  }
}
