/**
 * Fine-tuning an image encoder under HE2Gene's heads (`train --unfreeze-last K`, issue 17 item 4): the
 * encoder's last K blocks ({@linkcode Encoder.trainable}) and three linear heads on its D features —
 *
 *   features = encoder(x)                       (N, D): blocks before the last K frozen (folded, noGrad)
 *   target   = features · Wtᵀ + bt              (N, targetGenes)
 *   aux      = features · Waᵀ + ba              (N, auxGenes)
 *   tumour   = σ(features · Wmᵀ + bm)           (N, 1)
 *
 * trained by `Trainer` (model/train.ts) with HE2Gene's loss, as HE2Gene's own fine-tuning of its ResNet
 * (the trainable blocks' batch norms in training mode). Keys: the trainable encoder parameters under
 * `encoder.` + the weights' own keys (`encoder.layer4.2.conv1.weight`, `encoder.blocks.11.attn.qkv.weight`),
 * the heads as HE2Gene's (`HEAD_KEYS`: fc1/fc2/fc3 or fc/fc_aux/fc_tmr).
 *
 * @module
 */
import type { Engine } from "../engine/engine.ts";
import type { Tensor } from "../engine/tensor.ts";
import { noGrad, zeroGrad } from "../engine/autograd.ts";
import { sigmoid } from "../ops/elementwise.ts";
import { linear } from "../ops/matmul.ts";
import type { Encoder, TrainableEncoder } from "./encoder.ts";
import { type HE2GeneOutput, HEAD_KEYS, type HostTensor, initHeads, type Variant } from "./he2gene.ts";
import type { TrainableModel } from "./train.ts";

/** The prefix of the encoder's keys in a fine-tuned model's parameters and state dict. */
export const ENCODER_PREFIX = "encoder.";

/** What a {@linkcode FineTunedEncoder} is: how many blocks train, and its heads. */
export interface FineTuneConfig {
  /** Trainable blocks at the end of the encoder; 0: none (the heads alone train, on frozen features). */
  k: number;
  variant: Variant;
  targetGenes: number;
  auxGenes: number;
}

/** Options of {@linkcode FineTunedEncoder.create}. */
export interface FineTuneOptions {
  /** Blocks to unfreeze, counted from the end (1 … the encoder's blocks; 0: none). */
  k: number;
  /** Head names (default "base": fc1/fc2/fc3). Read from `heads` when those are given. */
  variant?: Variant;
  /** Head sizes; required unless `heads` are given (then they must agree with them). */
  targetGenes?: number;
  auxGenes?: number;
  /** Seed of the fresh heads (as `HE2Gene.init`'s); default 0. */
  seed?: number;
  /**
   * Start the heads from these weights instead of fresh ones (e.g. heads first trained on frozen features,
   * then fine-tuned with the last blocks): the six keys of one variant (`fc1.weight`, `fc1.bias`, … or
   * `fc.weight`, …), [n, D] and [n]; other keys are ignored.
   */
  heads?: Map<string, HostTensor>;
}

/** The variant and sizes of the heads in `sd`, checked against the encoder's dimension `d`. */
function headConfig(sd: Map<string, HostTensor>, d: number, file: string): Omit<FineTuneConfig, "k"> {
  const variant: Variant | null = sd.has("fc1.weight") ? "base" : sd.has("fc.weight") ? "spat" : null;
  if (!variant) {
    throw new RangeError(
      `Cannot read the heads of ${file}: expected fc1/fc2/fc3 (HE2Gene-Base) or fc/fc_aux/fc_tmr ` +
        `(HE2Gene-Spat); found ${[...sd.keys()].slice(0, 6).join(", ") || "no keys"}`,
    );
  }
  const h = HEAD_KEYS[variant];
  const problems: string[] = [];
  const rows = (key: string) => sd.get(`${key}.weight`)?.shape[0] ?? 0;
  for (const [key, n] of [[h.target, rows(h.target)], [h.aux, rows(h.aux)], [h.tumor, 1]] as const) {
    for (const [k, want] of [[`${key}.weight`, [n, d]], [`${key}.bias`, [n]]] as const) {
      const got = sd.get(k);
      if (!got) problems.push(`missing ${k} (expected [${want}])`);
      else if (got.shape.length !== want.length || got.shape.some((s, i) => s !== want[i])) {
        problems.push(`${k}: expected [${want}], found [${got.shape}]`);
      }
    }
  }
  if (problems.length) {
    throw new RangeError(`Cannot read the heads of ${file} on ${d} features: ${problems.join("; ")}`);
  }
  return { variant, targetGenes: rows(h.target), auxGenes: rows(h.aux) };
}

/**
 * An encoder's last K blocks + HE2Gene's three heads, trained as one model (a {@linkcode TrainableModel}).
 * The encoder's own `features` keep the weights it was built with; `forward` and `predict` run the trained
 * blocks. After training, `stateDict()` holds what changed; `fromStateDict` rebuilds the model from it and
 * the original weights, and its `predict` (the rebuilt encoder's folded path) gives what
 * `forward(x, { training: false })` gave.
 *
 * @example
 * ```ts
 * const enc = ResNetEncoder.fromTorchvision(engine, torchvisionResNet(tensors, "resnet50.pth"));
 * const model = FineTunedEncoder.create(engine, enc, { k: 3, targetGenes: 250, auxGenes: 19699 });
 * const trainer = new Trainer(engine, model, DEFAULT_TRAIN);
 * await trainer.step(batch);
 * const sd = await model.stateDict(); // encoder.layer4.*, fc1/fc2/fc3
 * const again = FineTunedEncoder.fromStateDict(engine, sd, {
 *   weights: tensors,
 *   build: (w) => ResNetEncoder.fromTorchvision(engine, torchvisionResNet(w, "resnet50.pth")),
 * });
 * const { target, aux, tumorProb } = again.predict(x);
 * ```
 */
export class FineTunedEncoder implements TrainableModel {
  /** The trainable encoder parameters (`encoder.<key>`), then the heads. */
  readonly params: Map<string, Tensor> = new Map();
  #tail: TrainableEncoder | null;
  #heads = new Map<string, Tensor>();
  // k = 0 from a state dict: its encoder entries (the rebuilt encoder holds them), given back by stateDict.
  #frozen: Map<string, HostTensor>;
  #ownsEncoder: boolean;
  #live = true;

  private constructor(
    readonly engine: Engine,
    readonly encoder: Encoder,
    readonly config: FineTuneConfig,
    heads: Map<string, HostTensor>,
    o: { frozen?: Map<string, HostTensor>; ownsEncoder?: boolean } = {},
  ) {
    this.#frozen = o.frozen ?? new Map();
    this.#ownsEncoder = o.ownsEncoder ?? false;
    if (config.k > 0 && !encoder.trainable) {
      throw new TypeError(`Cannot fine-tune ${encoder.name}: it has no trainable blocks`);
    }
    this.#tail = config.k > 0 ? encoder.trainable!(config.k) : null;
    for (const [k, t] of this.#tail?.params ?? []) this.params.set(ENCODER_PREFIX + k, t);
    const h = HEAD_KEYS[config.variant];
    for (const key of [h.target, h.aux, h.tumor]) {
      for (const k of [`${key}.weight`, `${key}.bias`]) {
        const t = heads.get(k)!;
        const p = engine.tensor(t.data, t.shape, { requiresGrad: true }).keep();
        this.#heads.set(k, p);
        this.params.set(k, p);
      }
    }
  }

  /**
   * The last `o.k` blocks of `encoder` trainable (see {@linkcode Encoder.trainable}) under fresh heads
   * (PyTorch's `nn.Linear` initialisation, as `HE2Gene.init`) or `o.heads`. The encoder stays the caller's:
   * `dispose()` leaves it.
   */
  static create(engine: Engine, encoder: Encoder, o: FineTuneOptions): FineTunedEncoder {
    if (!Number.isInteger(o.k) || o.k < 0) {
      throw new RangeError(`Cannot unfreeze the last ${o.k} blocks of ${encoder.name}: give 0 or more`);
    }
    const d = encoder.dim;
    let heads: Map<string, HostTensor>, c: Omit<FineTuneConfig, "k">;
    if (o.heads) {
      c = headConfig(o.heads, d, "the given heads");
      const wrong = (["variant", "targetGenes", "auxGenes"] as const).filter((k) =>
        o[k] !== undefined && o[k] !== c[k]
      );
      if (wrong.length) {
        throw new RangeError(
          `Cannot use the given heads: ${
            wrong.map((k) => `${k} ${o[k]} asked, the heads have ${c[k]}`).join("; ")
          }`,
        );
      }
      heads = o.heads;
    } else {
      const { targetGenes, auxGenes } = o;
      for (const [name, n] of [["targetGenes", targetGenes], ["auxGenes", auxGenes]] as const) {
        if (n === undefined || !Number.isInteger(n) || n < 1) {
          throw new RangeError(`Cannot make fresh heads: ${name} is ${n}, expected a positive integer`);
        }
      }
      c = { variant: o.variant ?? "base", targetGenes: targetGenes!, auxGenes: auxGenes! };
      heads = initHeads(c, d, o.seed ?? 0);
    }
    return new FineTunedEncoder(engine, encoder, { ...c, k: o.k }, heads);
  }

  /**
   * Rebuild a fine-tuned model from its `stateDict()` and the encoder's original weights: the `encoder.*`
   * entries (original keys after the prefix, shapes checked) replace those of `o.weights`, `o.build` makes
   * the encoder from the merged weights (it owns them afterwards, and this model owns the encoder), the
   * other entries are the heads. `o.k` (default 0) makes that many blocks of the rebuilt encoder trainable
   * again (to go on training); with 0 `predict` runs the rebuilt encoder's inference path and the heads.
   */
  static fromStateDict(
    engine: Engine,
    sd: Map<string, HostTensor>,
    o: {
      weights: Map<string, HostTensor>;
      build: (weights: Map<string, HostTensor>) => Encoder;
      k?: number;
      file?: string;
    },
  ): FineTunedEncoder {
    const file = o.file ?? "checkpoint";
    const trained = new Map<string, HostTensor>(), heads = new Map<string, HostTensor>();
    for (const [k, t] of sd) {
      if (k.startsWith(ENCODER_PREFIX)) trained.set(k.slice(ENCODER_PREFIX.length), t);
      else heads.set(k, t);
    }
    const problems: string[] = [];
    for (const [k, t] of trained) {
      const w = o.weights.get(k);
      if (!w) problems.push(`${ENCODER_PREFIX}${k}: not in the encoder's weights`);
      else if (w.shape.length !== t.shape.length || w.shape.some((s, i) => s !== t.shape[i])) {
        problems.push(`${ENCODER_PREFIX}${k}: [${t.shape}], the encoder's weights have [${w.shape}]`);
      }
    }
    if (problems.length) {
      throw new RangeError(`Cannot apply ${file} to the encoder's weights: ${problems.join("; ")}`);
    }
    const encoder = o.build(new Map([...o.weights, ...trained]));
    try {
      const c = headConfig(heads, encoder.dim, file);
      const h = HEAD_KEYS[c.variant];
      const want = new Set([h.target, h.aux, h.tumor].flatMap((k) => [`${k}.weight`, `${k}.bias`]));
      const extra = [...heads.keys()].filter((k) => !want.has(k));
      if (extra.length) {
        throw new RangeError(
          `Cannot read ${file} as a fine-tuned encoder: unexpected ${
            extra.slice(0, 8).join(", ")
          } (encoder ` +
            `keys start with ${ENCODER_PREFIX})`,
        );
      }
      const k = o.k ?? 0;
      return new FineTunedEncoder(engine, encoder, { ...c, k }, heads, {
        frozen: k === 0 ? trained : undefined,
        ownsEncoder: true,
      });
    } catch (err) {
      encoder.dispose();
      throw err;
    }
  }

  #check(): void {
    if (!this.#live) throw new Error(`Cannot use the fine-tuned ${this.encoder.name}: it was disposed`);
  }

  /**
   * x: (N, 3, S, S) normalised → the heads' outputs and the features, the trainable blocks and the heads on
   * the tape. `training`: the trainable blocks' batch norms (ResNet) use batch statistics and update their
   * running ones. `checkpoint` is not used (the trainable blocks are few).
   */
  forward(x: Tensor, options: { training: boolean; checkpoint?: boolean }): HE2GeneOutput {
    this.#check();
    // features: (N, D)
    const features = this.#tail
      ? this.#tail.forward(x, { training: options.training })
      : this.encoder.features(x);
    const head = (role: "target" | "aux" | "tumor") => {
      const key = HEAD_KEYS[this.config.variant][role];
      return { w: this.#heads.get(`${key}.weight`)!, b: this.#heads.get(`${key}.bias`)! };
    };
    const t = head("target"), a = head("aux"), m = head("tumor");
    const logit = linear(features, m.w, m.b);
    const tumorProb = sigmoid(logit);
    logit.dispose();
    return { target: linear(features, t.w, t.b), aux: linear(features, a.w, a.b), tumorProb, features };
  }

  /** Eval mode (running batch-norm statistics), no autograd: `forward(x, { training: false })`. */
  predict(x: Tensor): HE2GeneOutput {
    return noGrad(() => this.engine.scope(() => this.forward(x, { training: false })));
  }

  /**
   * What training changes, read back: the trainable blocks under `encoder.` + their original keys (a
   * ResNet's with its batch norms' running statistics and `num_batches_tracked`), then the heads.
   */
  async stateDict(): Promise<Map<string, HostTensor>> {
    this.#check();
    const out = new Map<string, HostTensor>();
    const enc = this.#tail ? await this.#tail.stateDict() : this.#frozen;
    for (const [k, t] of enc) out.set(ENCODER_PREFIX + k, t);
    for (const [k, t] of this.#heads) out.set(k, { shape: [...t.shape], data: await t.toArray() });
    return out;
  }

  /** Release the trainable blocks and the heads (and the encoder when `fromStateDict` built it). */
  dispose(): void {
    if (!this.#live) return;
    this.#live = false;
    this.#tail?.dispose();
    zeroGrad(this.#heads.values());
    for (const t of this.#heads.values()) t.dispose();
    this.#heads.clear();
    this.params.clear();
    if (this.#ownsEncoder) this.encoder.dispose();
  }
}
