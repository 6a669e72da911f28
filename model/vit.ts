/**
 * timm Vision Transformers (`vit_{tiny,small,base,large,huge,giant}_patch{14,16}` and the pathology models
 * built on them: UNI, Virchow2, H-optimus, Phikon-v2) as image encoders, read from a Hugging Face folder's
 * `config.json` (`architecture`, `model_args`, `pretrained_cfg`) and its weights in timm's state-dict layout.
 *
 *   x (N, 3, S, S) → patch_embed.proj (P×P conv, stride P) → (N, T, D) patch tokens
 *     → + pos_embed, with the class token and `reg_tokens` register tokens in front ([cls, reg…, patches];
 *       with `no_embed_class` the position embedding covers the patches only and is added before)
 *     → depth × block: h += ls1(attn(norm1(h))); h += ls2(mlp(norm2(h)))
 *         attn: qkv → heads → softmax(q·kᵀ/√d)·v → proj;  mlp: fc1 → GELU → fc2, or SwiGLU (packed fc1:
 *         silu(first half) · second half → fc2, timm's `SwiGLUPacked`)
 *     → norm → pool: the class token (`global_pool: token`), or the mean of the patch tokens (`avg`, then
 *       `fc_norm` instead of `norm`) → (N, D), the features (timm's `forward_head(pre_logits=True)`); or
 *       both side by side (`token+avg`, ours: Virchow/Virchow2's embedding, for their `global_pool: ""`)
 *       → (N, 2D).
 *
 * The architecture is read from the weights' shapes (embedding width, depth, MLP width, register tokens,
 * LayerScale, biases) and the config (heads, pooling, MLP kind); keys that the model does not use are
 * refused, naming them, except `head.*` (the classifier). `features` is inference only (no autograd);
 * `trainable(k)` puts the last k blocks and the final norm on the autograd tape for fine-tuning.
 * Reference: timm `timm/models/vision_transformer.py`, `timm/layers/mlp.py`.
 *
 * @module
 */
import type { Engine } from "../engine/engine.ts";
import type { Tensor } from "../engine/tensor.ts";
import { noGrad, zeroGrad } from "../engine/autograd.ts";
import { conv2d } from "../ops/conv2d.ts";
import { add, mul } from "../ops/elementwise.ts";
import { linear } from "../ops/matmul.ts";
import { mean } from "../ops/reduce.ts";
import { swapAxes12 } from "../ops/permute.ts";
import { concat, narrow, reshape } from "../ops/shape.ts";
import { attention, gelu, layerNorm, silu } from "../ops/transformer.ts";
import { transpose } from "../kernels/matmul.ts";
import type { Encoder, TrainableEncoder } from "./encoder.ts";
import type { HostTensor } from "./he2gene.ts";

/** Heads per width of timm's named sizes (what the weights cannot say). */
const HEADS_BY_NAME: Record<string, number> = {
  tiny: 3,
  small: 6,
  base: 12,
  large: 16,
  huge: 16,
  giant: 24,
  gigantic: 16,
};

/**
 * The preprocessing of timm's `pretrained_cfg` (absent fields: timm's `PretrainedCfg` defaults), which
 * `embed` applies as timm's eval transform (pipeline/embed.ts `encoderInput`).
 */
export interface ViTPreprocess {
  /** `input_size[-1]`: the square side the model is fed. */
  inputSize: number;
  /** `bicubic` (default) or `bilinear`, PIL's; others are resized bicubic (the CLI warns). */
  interpolation: string;
  /** `crop_pct` (default 0.875): resize the shorter side to `floor(inputSize / cropPct)`, centre-crop. */
  cropPct: number;
  /** `crop_mode`: `center` (default, also when absent) or `squash`; others run as `center` (CLI warns). */
  cropMode?: string;
  mean: [number, number, number];
  std: [number, number, number];
}

/** A ViT's architecture. */
export interface ViTConfig {
  /** timm's architecture name, e.g. `vit_large_patch16_224`. */
  name: string;
  patchSize: number;
  /** Input side the position embedding was made for. */
  imgSize: number;
  embedDim: number;
  depth: number;
  numHeads: number;
  mlp: "gelu" | "swiglu";
  /** fc1's output width (SwiGLU: both halves). */
  mlpHidden: number;
  classToken: boolean;
  regTokens: number;
  /** The position embedding covers the patch tokens only. */
  noEmbedClass: boolean;
  /** `token+avg`: the class token and the mean of the patch tokens side by side (2D; Virchow's embedding). */
  globalPool: "token" | "avg" | "token+avg";
  /** `fc_norm` after pooling (and no final `norm`). */
  fcNorm: boolean;
  layerScale: boolean;
  qkvBias: boolean;
  eps: number;
  preprocess: ViTPreprocess;
  /**
   * timm's `dynamic_img_size`: inputs of other sides than `imgSize` (multiples of the patch) are taken, the
   * position embedding resampled to their patch grid ({@linkcode resampleAbsPosEmbed}). Default false.
   */
  dynamicImgSize?: boolean;
}

type Json = Record<string, unknown>;

const isObj = (v: unknown): v is Json => typeof v === "object" && v !== null && !Array.isArray(v);

/**
 * The architecture of a timm ViT from its `config.json` and its weights' shapes; throws a `RangeError`
 * naming the file and what is missing or not supported.
 *
 * @example
 * ```ts
 * const cfg = vitConfig(JSON.parse(await Deno.readTextFile("uni/config.json")), shapes, "uni/config.json");
 * ```
 */
export function vitConfig(config: unknown, shapes: Map<string, number[]>, file = "config.json"): ViTConfig {
  if (!isObj(config)) throw new RangeError(`Cannot read ${file}: not a JSON object`);
  const arch = String(config.architecture ?? config.arch ?? "");
  const args = isObj(config.model_args) ? config.model_args : {};
  const pre = isObj(config.pretrained_cfg) ? config.pretrained_cfg : {};
  const fail = (why: string): never => {
    throw new RangeError(`Cannot use ${file} (${arch || "no architecture"}) as a timm ViT: ${why}`);
  };
  if (!/^vit_/.test(arch)) fail(`the architecture must be a timm vit_* model`);
  const proj = shapes.get("patch_embed.proj.weight");
  if (!proj || proj.length !== 4) fail("the weights have no patch_embed.proj.weight [D, 3, P, P]");
  const [embedDim, cin, patchSize] = proj!;
  if (cin !== 3) fail(`patch_embed.proj.weight has ${cin} input channels, not 3`);
  let depth = 0;
  while (shapes.has(`blocks.${depth}.norm1.weight`)) depth++;
  if (depth === 0) fail("the weights have no blocks.0.norm1.weight");
  const numHeads = Number(args.num_heads ?? HEADS_BY_NAME[/^vit_([a-z]+)_/.exec(arch)?.[1] ?? ""] ?? NaN);
  if (!Number.isInteger(numHeads) || numHeads < 1 || embedDim % numHeads) {
    fail(
      `the number of heads is unknown (model_args.num_heads, or a vit_<size>_… name) or does not divide ${embedDim}`,
    );
  }
  const mlpLayer = String(args.mlp_layer ?? "");
  const act = String(args.act_layer ?? "").toLowerCase();
  // SwiGLUPacked from the config, or from the shapes (fc2 reads half of fc1's outputs), as named
  // architectures such as vit_giant_patch14_reg4_dinov2 carry it in their name, not in model_args.
  const fc1 = shapes.get("blocks.0.mlp.fc1.weight"), fc2 = shapes.get("blocks.0.mlp.fc2.weight");
  const packed = !!fc1 && !!fc2 && fc2[1] * 2 === fc1[0];
  const swiglu = /swiglu/i.test(mlpLayer) || (!mlpLayer && packed);
  if (!swiglu && mlpLayer && !/^mlp$/i.test(mlpLayer)) {
    fail(`mlp_layer ${mlpLayer} is not supported (Mlp, SwiGLUPacked)`);
  }
  if (!swiglu && act && !/^gelu/.test(act)) {
    fail(`act_layer ${act} is not supported with the plain Mlp (GELU)`);
  }
  if (swiglu && act && !/silu|swish/.test(act)) fail(`SwiGLU with act_layer ${act} is not supported (SiLU)`);
  const pool = String(args.global_pool ?? (shapes.has("fc_norm.weight") ? "avg" : "token"));
  if (pool === "") {
    fail(
      'global_pool "" (timm returns every token, unpooled): choose the pooling with --pool token, avg, or ' +
        "token+avg (Virchow/Virchow2's embedding: the class token and the mean of the patch tokens)",
    );
  }
  if (pool !== "token" && pool !== "avg" && pool !== "token+avg") {
    fail(`global_pool ${pool} is not supported (token, avg, token+avg)`);
  }
  const classToken = shapes.has("cls_token");
  if (pool !== "avg" && !classToken) fail(`global_pool ${pool} needs a cls_token`);
  if (pool === "token+avg" && shapes.has("fc_norm.weight")) fail("global_pool token+avg with an fc_norm");
  const reg = shapes.get("reg_token");
  const regTokens = reg ? reg[1] : 0;
  const posLen = shapes.get("pos_embed")?.[1] ?? fail("the weights have no pos_embed");
  const prefix = (classToken ? 1 : 0) + regTokens;
  // The position embedding covers the patch tokens alone (no_embed_class) or the prefix tokens too.
  const square = (m: number) => m > 0 && Number.isInteger(Math.sqrt(m));
  const noEmbedClass = args.no_embed_class !== undefined
    ? Boolean(args.no_embed_class)
    : !square(posLen - prefix);
  const patches = noEmbedClass ? posLen : posLen - prefix;
  if (!square(patches)) fail(`pos_embed has ${posLen} positions: not a square grid of patches (+ ${prefix})`);
  const side = Math.sqrt(patches);
  const imgSize = Number(args.img_size ?? side * patchSize);
  if (Math.floor(imgSize / patchSize) !== side) {
    fail(
      `pos_embed has a ${side}×${side} grid, which does not fit img_size ${imgSize} with patch ${patchSize}`,
    );
  }
  const input = Array.isArray(pre.input_size) ? Number(pre.input_size.at(-1)) : imgSize;
  const dynamicImgSize = Boolean(args.dynamic_img_size);
  if (Array.isArray(pre.input_size) && Number(pre.input_size.at(-2)) !== input) {
    fail(`pretrained_cfg.input_size [${pre.input_size}] is not square`);
  }
  if (!dynamicImgSize && input !== imgSize) {
    fail(`pretrained_cfg.input_size ${input} differs from img_size ${imgSize} without dynamic_img_size`);
  }
  if (dynamicImgSize && (!Number.isInteger(input) || input < patchSize || input % patchSize)) {
    fail(`pretrained_cfg.input_size ${input} is not a multiple of the patch size ${patchSize}`);
  }
  if (args.dynamic_img_pad) fail("dynamic_img_pad is not supported (inputs must be multiples of the patch)");
  const triple = (v: unknown, d: readonly number[]) =>
    (Array.isArray(v) && v.length === 3 ? v.map(Number) : [...d]) as [number, number, number];
  return {
    name: arch,
    patchSize,
    imgSize,
    embedDim,
    depth,
    numHeads,
    mlp: swiglu ? "swiglu" : "gelu",
    mlpHidden: shapes.get("blocks.0.mlp.fc1.weight")?.[0] ??
      fail("the weights have no blocks.0.mlp.fc1.weight"),
    classToken,
    regTokens,
    noEmbedClass,
    globalPool: pool as ViTConfig["globalPool"],
    fcNorm: shapes.has("fc_norm.weight"),
    layerScale: shapes.has("blocks.0.ls1.gamma"),
    qkvBias: shapes.has("blocks.0.attn.qkv.bias"),
    eps: 1e-6,
    dynamicImgSize,
    preprocess: {
      inputSize: input,
      interpolation: String(pre.interpolation || "bicubic"),
      // timm's resolve_data_config: a missing or zero crop_pct is DEFAULT_CROP_PCT.
      cropPct: Number(pre.crop_pct || 0.875),
      cropMode: String(pre.crop_mode || "center"),
      mean: triple(pre.mean, [0.485, 0.456, 0.406]),
      std: triple(pre.std, [0.229, 0.224, 0.225]),
    },
  };
}

// torch's cubic convolution (`cubic_convolution1/2`, aten/src/ATen/native/UpSample.h): a = −0.75 in the
// plain bicubic, −0.5 in the antialiased one (as PIL).
function cubicWeight(x: number, a: number): number {
  x = Math.abs(x);
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a;
  return 0;
}

/**
 * `F.interpolate(mode="bicubic", align_corners=False)` along one axis as a dense `[outSize, inSize]` matrix
 * (float64). `antialias`: torch's `_upsample_bicubic2d_aa` (PIL's scheme: support 2 widened by the
 * downscale factor, taps inside the input, weights normalised); else the plain kernel (4 taps around
 * `(i + 0.5) · scale − 0.5`, indices clamped to the border).
 */
function bicubicAxis(inSize: number, outSize: number, antialias: boolean): Float64Array {
  const m = new Float64Array(outSize * inSize);
  const scale = inSize / outSize;
  for (let i = 0; i < outSize; i++) {
    const row = m.subarray(i * inSize, (i + 1) * inSize);
    if (antialias) {
      const support = 2 * Math.max(scale, 1), inv = scale >= 1 ? 1 / scale : 1;
      const center = scale * (i + 0.5);
      const lo = Math.max(Math.trunc(center - support + 0.5), 0);
      const hi = Math.min(Math.trunc(center + support + 0.5), inSize);
      let total = 0;
      for (let j = lo; j < hi; j++) total += row[j] = cubicWeight((j - center + 0.5) * inv, -0.5);
      if (total !== 0) { for (let j = lo; j < hi; j++) row[j] /= total; }
    } else {
      const src = scale * (i + 0.5) - 0.5, i0 = Math.floor(src), t = src - i0;
      for (let k = -1; k <= 2; k++) {
        row[Math.min(Math.max(i0 + k, 0), inSize - 1)] += cubicWeight(t - k, -0.75);
      }
    }
  }
  return m;
}

/** Options of {@linkcode resampleAbsPosEmbed}. */
export interface ResamplePosEmbedOptions {
  /** The grid the embedding holds, `[rows, cols]` (default: square, from its length). */
  oldGrid?: readonly [number, number];
  /** Prefix tokens at its front (class, registers) kept as they are (default 0). */
  prefix?: number;
  /**
   * torch's `antialias` (default true: timm's `resample_abs_pos_embed` default, which
   * `VisionTransformer._pos_embed` uses for `dynamic_img_size`).
   */
  antialias?: boolean;
}

/**
 * timm's `resample_abs_pos_embed` (timm/layers/pos_embed.py) on the CPU: the patch-grid part of a position
 * embedding `[1, prefix + h·w, D]` resized to `newGrid` by `F.interpolate(mode="bicubic",
 * align_corners=False, antialias)`, the prefix tokens kept in front. Computed in float64 (torch: float32),
 * returned as float32 `[1, prefix + newGrid[0]·newGrid[1], D]`; the same grid returns the input.
 *
 * @example
 * ```ts
 * // UNI (ViT-L/16, 224 px: 14 × 14 patches + class token) fed 256 px: a 16 × 16 grid.
 * const pe = resampleAbsPosEmbed(tensors.get("pos_embed")!, [16, 16], { prefix: 1 }); // [1, 257, 1024]
 * ```
 */
export function resampleAbsPosEmbed(
  pos: HostTensor,
  newGrid: readonly [number, number],
  o: ResamplePosEmbedOptions = {},
): HostTensor {
  const prefix = o.prefix ?? 0;
  const [one, len, D] = pos.shape;
  const n = len - prefix;
  const [oh, ow] = o.oldGrid ?? [Math.round(Math.sqrt(n)), Math.round(Math.sqrt(n))];
  const [nh, nw] = newGrid;
  if (pos.shape.length !== 3 || one !== 1 || oh * ow !== n || !(nh >= 1 && nw >= 1)) {
    throw new RangeError(
      `Cannot resample pos_embed [${pos.shape}] (prefix ${prefix}) from a ${oh}×${ow} grid to ${nh}×${nw}`,
    );
  }
  if (nh === oh && nw === ow) return pos;
  const aa = o.antialias ?? true;
  const wh = bicubicAxis(oh, nh, aa), ww = bicubicAxis(ow, nw, aa);
  const src = pos.data.subarray(prefix * D);
  // Along the columns, then the rows: tmp [oh, nw, D], out [nh, nw, D].
  const tmp = new Float64Array(oh * nw * D);
  for (let r = 0; r < oh; r++) {
    for (let x = 0; x < nw; x++) {
      const t = tmp.subarray((r * nw + x) * D, (r * nw + x + 1) * D);
      for (let j = 0; j < ow; j++) {
        const w = ww[x * ow + j];
        if (w === 0) continue;
        const s = src.subarray((r * ow + j) * D, (r * ow + j + 1) * D);
        for (let d = 0; d < D; d++) t[d] += w * s[d];
      }
    }
  }
  const data = new Float32Array((prefix + nh * nw) * D);
  data.set(pos.data.subarray(0, prefix * D));
  const acc = new Float64Array(D);
  for (let y = 0; y < nh; y++) {
    for (let x = 0; x < nw; x++) {
      acc.fill(0);
      for (let r = 0; r < oh; r++) {
        const w = wh[y * oh + r];
        if (w === 0) continue;
        const t = tmp.subarray((r * nw + x) * D, (r * nw + x + 1) * D);
        for (let d = 0; d < D; d++) acc[d] += w * t[d];
      }
      data.set(acc, (prefix + y * nw + x) * D);
    }
  }
  return { shape: [1, prefix + nh * nw, D], data };
}

/** Every key and shape the weights of `c` must hold (`head.*` aside). */
export function vitShapes(c: ViTConfig): Map<string, number[]> {
  const D = c.embedDim, out = new Map<string, number[]>();
  const ln = (k: string) => {
    out.set(`${k}.weight`, [D]);
    out.set(`${k}.bias`, [D]);
  };
  out.set("patch_embed.proj.weight", [D, 3, c.patchSize, c.patchSize]);
  out.set("patch_embed.proj.bias", [D]);
  if (c.classToken) out.set("cls_token", [1, 1, D]);
  if (c.regTokens) out.set("reg_token", [1, c.regTokens, D]);
  const patches = (c.imgSize / c.patchSize) ** 2;
  out.set("pos_embed", [1, patches + (c.noEmbedClass ? 0 : (c.classToken ? 1 : 0) + c.regTokens), D]);
  for (let i = 0; i < c.depth; i++) {
    const b = `blocks.${i}`;
    ln(`${b}.norm1`);
    out.set(`${b}.attn.qkv.weight`, [3 * D, D]);
    if (c.qkvBias) out.set(`${b}.attn.qkv.bias`, [3 * D]);
    out.set(`${b}.attn.proj.weight`, [D, D]);
    out.set(`${b}.attn.proj.bias`, [D]);
    if (c.layerScale) out.set(`${b}.ls1.gamma`, [D]);
    ln(`${b}.norm2`);
    out.set(`${b}.mlp.fc1.weight`, [c.mlpHidden, D]);
    out.set(`${b}.mlp.fc1.bias`, [c.mlpHidden]);
    const hidden = c.mlp === "swiglu" ? c.mlpHidden / 2 : c.mlpHidden;
    out.set(`${b}.mlp.fc2.weight`, [D, hidden]);
    out.set(`${b}.mlp.fc2.bias`, [D]);
    if (c.layerScale) out.set(`${b}.ls2.gamma`, [D]);
  }
  ln(c.fcNorm ? "fc_norm" : "norm");
  return out;
}

/**
 * A timm ViT as an {@linkcode Encoder}: the pooled features of `forward_head(pre_logits=True)`. The input
 * side is the config's; its mean and std are the config's.
 *
 * @example
 * ```ts
 * const enc = ViTEncoder.fromTimm(engine, JSON.parse(configText), tensors, "uni");
 * const f = enc.features(x); // (N, 1024) for ViT-L/16
 * ```
 */
export class ViTEncoder implements Encoder {
  readonly name: string;
  readonly dim: number;
  readonly inputSize: number;
  readonly mean: readonly [number, number, number];
  readonly std: readonly [number, number, number];
  #p: Map<string, Tensor> | null = new Map();
  // The weights as given (timm's keys, qkv and SwiGLU's fc1 packed), for `trainable`.
  #host: Map<string, HostTensor>;
  /** The weights' pos_embed on the host, resampled per patch grid on first use (dynamic_img_size). */
  #posHost: HostTensor | undefined;

  private constructor(readonly engine: Engine, readonly config: ViTConfig, tensors: Map<string, HostTensor>) {
    this.#host = tensors;
    this.name = `${config.name} (timm)`;
    this.dim = config.globalPool === "token+avg" ? 2 * config.embedDim : config.embedDim;
    this.inputSize = config.preprocess.inputSize;
    if (config.dynamicImgSize) this.#posHost = tensors.get("pos_embed");
    this.mean = config.preprocess.mean;
    this.std = config.preprocess.std;
    const D = config.embedDim;
    const up = (k: string, t: HostTensor) => this.#p!.set(k, engine.tensor(t.data, t.shape).keep());
    for (const [k, t] of tensors) {
      const m = /^(blocks\.\d+)\.attn\.qkv\.(weight|bias)$/.exec(k);
      if (m) {
        // q, k, v as three linears (rows 0…D−1, D…2D−1, 2D…3D−1 of timm's packed qkv).
        const per = t.data.length / 3;
        ["q", "k", "v"].forEach((w, i) =>
          up(`${m[1]}.attn.${w}.${m[2]}`, {
            shape: m[2] === "weight" ? [D, D] : [D],
            data: t.data.subarray(i * per, (i + 1) * per),
          })
        );
      } else if (config.mlp === "swiglu" && /^blocks\.\d+\.mlp\.fc1\.(weight|bias)$/.test(k)) {
        // SwiGLUPacked: fc1's first half is the gate (through SiLU), the second the value.
        const half = t.data.length / 2, h = config.mlpHidden / 2;
        const shape = t.shape.length === 2 ? [h, t.shape[1]] : [h];
        up(k.replace("fc1", "fc1_gate"), { shape, data: t.data.subarray(0, half) });
        up(k.replace("fc1", "fc1_value"), { shape, data: t.data.subarray(half) });
      } else if (!k.startsWith("head.")) up(k, t);
    }
  }

  /**
   * From timm's `config.json` (parsed) and the weights (`model.safetensors` or `pytorch_model.bin`); every
   * missing key, unexpected key and shape mismatch is listed in one `RangeError` naming `file`.
   */
  static fromTimm(
    engine: Engine,
    config: unknown,
    tensors: Map<string, HostTensor>,
    file = "weights",
  ): ViTEncoder {
    const shapes = new Map([...tensors].map(([k, v]) => [k, v.shape]));
    const c = vitConfig(config, shapes, file);
    const want = vitShapes(c);
    const problems: string[] = [];
    for (const [k, s] of want) {
      const got = shapes.get(k);
      if (!got) problems.push(`missing ${k} (expected [${s}])`);
      else if (got.length !== s.length || got.some((d, i) => d !== s[i])) {
        problems.push(`${k}: expected [${s}], found [${got}]`);
      }
    }
    for (const [k, s] of shapes) {
      if (!want.has(k) && !k.startsWith("head.")) problems.push(`unexpected ${k} [${s}]`);
    }
    if (problems.length) {
      throw new RangeError(
        `Cannot load ${file} as ${c.name}: ${problems.length} problem(s):\n  ` +
          problems.slice(0, 20).join("\n  ") +
          (problems.length > 20 ? `\n  … and ${problems.length - 20} more` : ""),
      );
    }
    return new ViTEncoder(engine, c, tensors);
  }

  #get(k: string): Tensor {
    const t = this.#p?.get(k);
    if (!t) throw new Error(`Cannot run ${this.name}: ${this.#p ? `no parameter ${k}` : "it was disposed"}`);
    return t;
  }

  /**
   * The position embedding for a `gh × gw` patch grid: the weights' on their own grid, else (with
   * `dynamic_img_size`) resampled as timm does ({@linkcode resampleAbsPosEmbed}), once per grid.
   */
  #posEmbed(gh: number, gw: number): Tensor {
    const c = this.config, g = c.imgSize / c.patchSize, own = this.#get("pos_embed");
    if (gh === g && gw === g) return own;
    const key = `pos_embed@${gh}x${gw}`;
    let t = this.#p!.get(key);
    if (!t) {
      const prefix = c.noEmbedClass ? 0 : (c.classToken ? 1 : 0) + c.regTokens;
      const r = resampleAbsPosEmbed(this.#posHost!, [gh, gw], { oldGrid: [g, g], prefix });
      this.#p!.set(key, t = this.engine.tensor(r.data, r.shape).keep());
    }
    return t;
  }

  features(x: Tensor): Tensor {
    return noGrad(() => this.#forward(x, this.config.depth, null));
  }

  /**
   * x → features with blocks ≥ `frozen` (and the final norm) taking their weights from `leaf` (timm's keys,
   * packed: sliced here with the differentiable `narrow`), recorded on the tape; everything before under
   * noGrad with the encoder's own weights. `leaf` null: all frozen.
   */
  #forward(x: Tensor, frozen: number, leaf: ((key: string) => Tensor) | null): Tensor {
    const c = this.config, e = this.engine, [n, , hh, ww] = x.shape;
    // The widest activation of one image (the MLP's hidden layer, the tokens, the input): a batch whose
    // widest activation exceeds one storage binding runs in chunks of images, joined (differentiably).
    const T = (c.classToken ? 1 : 0) + c.regTokens +
      Math.floor(hh / c.patchSize) * Math.floor(ww / c.patchSize);
    const perImage = 4 * Math.max(T * Math.max(c.mlpHidden, c.embedDim), 3 * hh * ww);
    const chunk = Math.max(1, Math.floor(e.maxBinding / perImage));
    if (n <= chunk) return this.#forwardBatch(x, frozen, leaf);
    return e.scope(() => {
      const parts: Tensor[] = [];
      for (let i = 0; i < n; i += chunk) {
        parts.push(this.#forwardBatch(narrow(x, 0, i, Math.min(chunk, n - i)), frozen, leaf));
      }
      return concat(parts, 0);
    });
  }

  #forwardBatch(x: Tensor, frozen: number, leaf: ((key: string) => Tensor) | null): Tensor {
    const c = this.config, e = this.engine, p = (k: string) => this.#get(k);
    const [n, ch, hh, ww] = x.shape;
    const fits = c.dynamicImgSize
      ? hh % c.patchSize === 0 && ww % c.patchSize === 0 && hh > 0 && ww > 0
      : hh === c.imgSize && ww === c.imgSize;
    if (ch !== 3 || !fits) {
      throw new RangeError(
        `Cannot run ${this.name} on [${x.shape}]: it takes [N, 3, ${
          c.dynamicImgSize ? `H, W] with H and W multiples of ${c.patchSize}` : `${c.imgSize}, ${c.imgSize}]`
        }`,
      );
    }
    const gh = hh / c.patchSize, gw = ww / c.patchSize;
    const D = c.embedDim, H = c.numHeads, d = D / H, P = gh * gw;
    const prefix = (c.classToken ? 1 : 0) + c.regTokens, T = prefix + P;
    // A trainable block's weights under the frozen path's names: q, k, v and SwiGLU's gate and value are
    // row ranges of timm's packed qkv and fc1 (rows 0…D−1, D…2D−1, 2D…3D−1; first half, second half).
    const trained = (b: number) => (s: string): Tensor => {
      const key = `blocks.${b}.${s}`;
      const qkv = /^attn\.([qkv])\.(weight|bias)$/.exec(s);
      if (qkv) return narrow(leaf!(`blocks.${b}.attn.qkv.${qkv[2]}`), 0, "qkv".indexOf(qkv[1]) * D, D);
      const glu = /^mlp\.fc1_(gate|value)\.(weight|bias)$/.exec(s);
      if (glu) {
        const h = c.mlpHidden / 2;
        return narrow(leaf!(`blocks.${b}.mlp.fc1.${glu[2]}`), 0, glu[1] === "gate" ? 0 : h, h);
      }
      return leaf!(key);
    };
    const block = (h: Tensor, k: (s: string) => Tensor): Tensor => {
      const heads = (t: Tensor) => swapAxes12(reshape(t, [n, T, H, d])); // (N, H, T, d)
      const qkvBias = (w: string) => (c.qkvBias ? k(`attn.${w}.bias`) : undefined);
      const y = layerNorm(h, k("norm1.weight"), k("norm1.bias"), c.eps);
      const [q, kk, v] = ["q", "k", "v"].map((w) => heads(linear(y, k(`attn.${w}.weight`), qkvBias(w))));
      const o = reshape(swapAxes12(attention(q, kk, v, 1 / Math.sqrt(d))), [n * T, D]);
      let a = linear(o, k("attn.proj.weight"), k("attn.proj.bias"));
      if (c.layerScale) a = mul(a, k("ls1.gamma"));
      h = add(h, a);
      const y2 = layerNorm(h, k("norm2.weight"), k("norm2.bias"), c.eps);
      const hidden = c.mlp === "swiglu"
        ? mul(
          silu(linear(y2, k("mlp.fc1_gate.weight"), k("mlp.fc1_gate.bias"))),
          linear(y2, k("mlp.fc1_value.weight"), k("mlp.fc1_value.bias")),
        )
        : gelu(linear(y2, k("mlp.fc1.weight"), k("mlp.fc1.bias")));
      let m = linear(hidden, k("mlp.fc2.weight"), k("mlp.fc2.bias"));
      if (c.layerScale) m = mul(m, k("ls2.gamma"));
      return add(h, m);
    };
    return e.scope(() => {
      let tokens = noGrad(() => {
        // Patch tokens: (N, D, g, g) → (N, P, D).
        const conv = conv2d(x, p("patch_embed.proj.weight"), {
          stride: c.patchSize,
          bias: p("patch_embed.proj.bias"),
        });
        let patches = transpose(conv.reshape([n, D, P]));
        if (c.noEmbedClass) patches = add(patches, this.#posEmbed(gh, gw).reshape([P, D]));
        // Tokens [cls, reg…, patches] per image.
        let h = e.empty([n, T, D], "vit tokens");
        for (let i = 0; i < n; i++) {
          let at = i * T * D;
          if (c.classToken) {
            e.copy(p("cls_token"), h, { dstOffset: at, size: D });
            at += D;
          }
          if (c.regTokens) {
            e.copy(p("reg_token"), h, { dstOffset: at, size: c.regTokens * D });
            at += c.regTokens * D;
          }
          e.copy(patches, h, { srcOffset: i * P * D, dstOffset: at, size: P * D });
        }
        if (!c.noEmbedClass) h = add(h, this.#posEmbed(gh, gw).reshape([T, D]));
        h = h.reshape([n * T, D]);
        for (let b = 0; b < frozen; b++) h = block(h, (s) => p(`blocks.${b}.${s}`));
        return h;
      });
      for (let b = frozen; b < c.depth; b++) tokens = block(tokens, trained(b));
      const fin = (s: string) => (leaf ? leaf(s) : p(s));
      if (!c.fcNorm) tokens = layerNorm(tokens, fin("norm.weight"), fin("norm.bias"), c.eps);
      const perImage = reshape(tokens, [n, T, D]);
      const cls = () => reshape(narrow(perImage, 1, 0, 1), [n, D]);
      const avg = () => mean(narrow(perImage, 1, prefix, P), { axes: 1 });
      const pooled = c.globalPool === "token"
        ? cls()
        : c.globalPool === "avg"
        ? avg()
        : concat([cls(), avg()], 1);
      return c.fcNorm ? layerNorm(pooled, fin("fc_norm.weight"), fin("fc_norm.bias"), c.eps) : pooled;
    });
  }

  /**
   * The last `k` transformer blocks and the final norm (`norm`, or `fc_norm` with mean pooling) trainable
   * (see {@linkcode TrainableEncoder}): their weights uploaded from the ones the encoder was built from,
   * under timm's keys (qkv and SwiGLU's fc1 packed, as timm has them); the patch embedding, class and
   * register tokens, position embedding and the blocks before stay frozen (under noGrad).
   *
   * @example
   * ```ts
   * const t = ViTEncoder.fromTimm(engine, config, tensors).trainable(2);
   * const f = t.forward(x); // (N, D), the last two blocks on the tape
   * ```
   */
  trainable(k: number): TrainableEncoder {
    const c = this.config, e = this.engine;
    if (!this.#p) throw new Error(`Cannot fine-tune: the ${this.name} encoder was disposed`);
    if (!Number.isInteger(k) || k < 1 || k > c.depth) {
      throw new RangeError(
        `Cannot unfreeze the last ${k} blocks of ${this.name}: it has ${c.depth} (give 1 to ${c.depth})`,
      );
    }
    const frozen = c.depth - k, norm = c.fcNorm ? "fc_norm." : "norm.";
    const params = new Map<string, Tensor>();
    for (const key of vitShapes(c).keys()) {
      const b = /^blocks\.(\d+)\./.exec(key);
      if (b ? Number(b[1]) < frozen : !key.startsWith(norm)) continue;
      const h = this.#host.get(key)!;
      params.set(key, e.tensor(h.data, h.shape, { requiresGrad: true }).keep());
    }
    let live = true;
    const leaf = (key: string) => {
      const t = params.get(key);
      if (!t) throw new Error(`Cannot run the trainable blocks of ${this.name}: no parameter ${key}`);
      return t;
    };
    const check = () => {
      if (!live) throw new Error(`Cannot use the trainable blocks of ${this.name}: they were disposed`);
    };
    return {
      params,
      forward: (x) => {
        check();
        return this.#forward(x, frozen, leaf);
      },
      stateDict: async () => {
        check();
        const out = new Map<string, HostTensor>();
        for (const [key, t] of params) out.set(key, { shape: [...t.shape], data: await t.toArray() });
        return out;
      },
      dispose: () => {
        if (!live) return;
        live = false;
        zeroGrad(params.values());
        for (const t of params.values()) t.dispose();
      },
    };
  }

  dispose(): void {
    for (const t of this.#p?.values() ?? []) t.dispose();
    this.#p = null;
  }
}
