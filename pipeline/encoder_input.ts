/**
 * What an encoder sees of an image: timm's eval transform for a ViT, PIL's bilinear to its size for the
 * others, normalised with its mean and std — shared by `embed`, training on an encoder's features and
 * prediction through an encoder, so that all three give the encoder the same pixels.
 *
 * @module
 */
import type { Tensor } from "../engine/tensor.ts";
import type { Encoder } from "../model/encoder.ts";
import { ViTEncoder } from "../model/vit.ts";
import { type CropBox, resizeNormalize } from "../slide/mod.ts";
import { evalTransformGeometry } from "../slide/resample.ts";

/**
 * The encoder's input for packed images of one size (`uploadImages`: `[M, H, W]`) → `[M, 3, S, S]`,
 * normalised with the encoder's mean and std. A timm ViT gets timm's eval transform from its config
 * (`transforms_imagenet_eval`: `Resize(floor(S / crop_pct))` with PIL's bicubic or bilinear, the shorter side
 * or both with `crop_mode: squash`, then `CenterCrop(S)`; PIL-exact); other encoders the whole image resized
 * to S × S with PIL's bilinear (torchvision's `Resize((S, S))`, as HE2Gene). With `box`, the same of that
 * crop of each image (a view of test-time augmentation).
 *
 * @example
 * ```ts
 * const x = encoderInput(encoder, uploadImages(engine, patches)); // [M, 3, 224, 224]
 * ```
 */
export function encoderInput(encoder: Encoder, src: Tensor, box?: CropBox): Tensor {
  const { mean, std } = encoder;
  const boxes = box ? [box] : undefined;
  if (!(encoder instanceof ViTEncoder)) {
    return resizeNormalize(src, { size: encoder.inputSize, boxes, mean, std });
  }
  const pre = encoder.config.preprocess;
  const [, H, W] = src.shape;
  const [w, h] = box ? [box[2] - box[0], box[3] - box[1]] : [W, H];
  const g = evalTransformGeometry(w, h, {
    inputSize: pre.inputSize,
    cropPct: pre.cropPct,
    cropMode: pre.cropMode === "squash" ? "squash" : "center",
  });
  return resizeNormalize(src, {
    size: [g.size[1], g.size[0]],
    window: g.window,
    filter: pre.interpolation === "bilinear" ? "bilinear" : "bicubic",
    boxes,
    mean,
    std,
  });
}
