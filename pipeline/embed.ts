/**
 * Features of patches from an image encoder (`he2gene embed`): encoded bytes in, an (N, D) float32 matrix
 * out, and its NPZ encoder. No files, no terminal: warnings and progress go through callbacks,
 * cancellation through an `AbortSignal`.
 *
 * @module
 */
import type { Engine } from "../engine/engine.ts";
import type { Encoder } from "../model/encoder.ts";
import { type RgbImage, uploadImages } from "../slide/mod.ts";
import { encoderInput } from "./encoder_input.ts";
import { encodeNpz } from "../slide/npz.ts";

export { encoderInput };
import { decodeBatch, type PatchImage } from "./predict_patches.ts";
import { readPatches, type SlidePatch } from "./predict_slide.ts";
import type { Slide } from "../slide/wsi.ts";

/** Features of a set of patches, on the host. */
export interface PatchFeatures {
  names: string[];
  /** Feature length D. */
  dim: number;
  /** (N, D), row-major. */
  features: Float32Array;
  /** The encoder's name. */
  encoder: string;
}

/** Options of {@linkcode embedPatches}. */
export interface EmbedOptions {
  batchSize: number;
  /** Checked after every batch: an aborted signal throws its reason. */
  signal?: AbortSignal;
  /** Called after every batch with the patches done and their total. */
  onProgress?: (done: number, total: number) => void;
  /** Decoder warnings and patches not 150 × 150 (`name`: the patch's name). */
  onWarning?: (name: string, message: string) => void;
  /** How a patch is named in error messages (default its name; the CLI gives its path). */
  label?: (name: string) => string;
}

/**
 * Encode every patch: decode, bring it to the encoder's input ({@linkcode encoderInput}: timm's eval
 * transform for a ViT, else PIL's bilinear to its size), normalise with the encoder's mean and std, and run
 * the encoder. Patches of one size in a batch go through the GPU together.
 * A feature that comes out NaN or Inf is an error naming the patch.
 *
 * @example
 * ```ts
 * const enc = ResNetEncoder.fromTorchvision(engine, torchvisionResNet(tensors, "resnet50.pth"));
 * const f = await embedPatches(engine, enc, [{ name: "A1_3_4", bytes }], { batchSize: 8 });
 * await Deno.writeFile("features.npz", featuresNpz(f));
 * ```
 */
export async function embedPatches(
  engine: Engine,
  encoder: Encoder,
  images: PatchImage[],
  o: EmbedOptions,
): Promise<PatchFeatures> {
  if (!(Number.isInteger(o.batchSize) && o.batchSize >= 1)) {
    throw new RangeError(
      `Cannot embed patches: batchSize must be an integer ≥ 1, current value is ${o.batchSize}`,
    );
  }
  const label = o.label ?? ((n: string) => n);
  const P = images.length, D = encoder.dim;
  const out: PatchFeatures = {
    names: images.map((p) => p.name),
    dim: D,
    features: new Float32Array(P * D),
    encoder: encoder.name,
  };
  for (let b0 = 0; b0 < P; b0 += o.batchSize) {
    o.signal?.throwIfAborted();
    const batch = images.slice(b0, b0 + o.batchSize);
    const { decoded, bySize } = await decodeBatch(batch, label, o.onWarning);
    for (const idx of bySize) {
      const f = await engine.scope(async () => {
        const src = uploadImages(engine, idx.map((i) => decoded[i]));
        const x = encoderInput(encoder, src);
        src.dispose();
        return await encoder.features(x).toArray();
      });
      idx.forEach((i, j) => {
        const row = f.subarray(j * D, (j + 1) * D);
        const bad = row.findIndex((v) => !Number.isFinite(v));
        if (bad >= 0) {
          throw new Error(
            `Cannot embed patch ${label(batch[i].name)}: feature ${bad} is ${
              row[bad]
            } (the weights or the image ` +
              `give non-finite values)`,
          );
        }
        out.features.set(row, (b0 + i) * D);
      });
    }
    o.onProgress?.(Math.min(b0 + o.batchSize, P), P);
  }
  o.signal?.throwIfAborted();
  return out;
}

/** Features of a slide's patches, with where they are. */
export interface SlideFeatures extends PatchFeatures {
  /** (P, 2) level-0 centre x, y. */
  pixel: Float64Array;
  /** (P, 2) array x, y (spots) or tile column, row. */
  grid: Int32Array;
}

/**
 * Encode a slide's patches (`spotPatches` / `tilePatches` of pipeline/predict_slide.ts), read from level 0 in
 * batches — the next batch is read while the GPU encodes the current one, never all at once — resized to the
 * encoder's input and normalised as it expects. A non-finite feature is an error naming the spot or tile.
 *
 * @example
 * ```ts
 * const { patches } = spotPatches(spots, "C2_selection.tsv", { section: "C2", size: 150, width, height });
 * const f = await embedSlide(engine, encoder, slide, patches, { batchSize: 8 });
 * ```
 */
export async function embedSlide(
  engine: Engine,
  encoder: Encoder,
  slide: Slide,
  patches: SlidePatch[],
  o: Omit<EmbedOptions, "onWarning" | "label">,
): Promise<SlideFeatures> {
  if (!(Number.isInteger(o.batchSize) && o.batchSize >= 1)) {
    throw new RangeError(
      `Cannot embed a slide: batchSize must be an integer ≥ 1, current value is ${o.batchSize}`,
    );
  }
  const P = patches.length, D = encoder.dim, bs = o.batchSize;
  const out: SlideFeatures = {
    names: patches.map((p) => p.name),
    dim: D,
    features: new Float32Array(P * D),
    encoder: encoder.name,
    pixel: new Float64Array(P * 2),
    grid: new Int32Array(P * 2),
  };
  patches.forEach((p, i) => {
    out.pixel.set([p.px, p.py], 2 * i);
    out.grid.set([p.gx, p.gy], 2 * i);
  });
  const read = (b0: number) => readPatches(slide, patches.slice(b0, b0 + bs));
  let next: Promise<RgbImage[]> | null = P ? read(0) : null;
  try {
    for (let b0 = 0; b0 < P; b0 += bs) {
      o.signal?.throwIfAborted();
      const images = await next!;
      next = b0 + bs < P ? read(b0 + bs) : null;
      const f = await engine.scope(async () => {
        const src = uploadImages(engine, images);
        const x = encoderInput(encoder, src);
        src.dispose();
        return await encoder.features(x).toArray();
      });
      const bad = f.findIndex((v) => !Number.isFinite(v));
      if (bad >= 0) {
        throw new Error(
          `Cannot embed ${out.names[b0 + Math.floor(bad / D)]}: feature ${bad % D} is ${
            f[bad]
          } (the weights or ` +
            `the image give non-finite values)`,
        );
      }
      out.features.set(f, b0 * D);
      o.onProgress?.(Math.min(b0 + bs, P), P);
    }
  } finally {
    next?.catch(() => {}); // a read still in flight when encoding failed
  }
  o.signal?.throwIfAborted();
  return out;
}

/**
 * `features.npz`: `features` (N, D) float32 and `names`, and for a slide `pixel` (N, 2) float64 level-0
 * centres and `grid` (N, 2) int32 array positions or tile columns and rows; `compress` deflates.
 */
export function featuresNpz(f: PatchFeatures | SlideFeatures, o: { compress?: boolean } = {}): Uint8Array {
  const N = f.names.length;
  return encodeNpz({
    features: { dtype: "f4", shape: [N, f.dim], data: f.features },
    names: { dtype: "U", shape: [N], data: f.names },
    ...("pixel" in f
      ? {
        pixel: { dtype: "f8", shape: [N, 2], data: f.pixel },
        grid: { dtype: "i4", shape: [N, 2], data: f.grid },
      }
      : {}),
  }, { compress: o.compress });
}
