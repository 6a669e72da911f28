/**
 * Patches → one normalised, optionally augmented GPU batch: the images are packed and uploaded once per
 * size, resized to `size` × `size` with PIL's bilinear arithmetic, normalised, and given per-sample
 * dihedral symmetries (random flips and 90° rotations for training).
 *
 * @module
 */
import type { Engine } from "../engine/engine.ts";
import type { Tensor } from "../engine/tensor.ts";
import type { RgbImage } from "./decode.ts";
import { dihedralEach, HE2GENE_MEAN, HE2GENE_STD, resizeNormalize, uploadImages } from "./resize.ts";

/** Options of {@linkcode assembleBatch}. */
export interface BatchOptions {
  /** Output side (default 224). */
  size?: number;
  /** Symmetry per image (0…7, see `DIHEDRAL_NAMES`); default none. */
  ks?: readonly number[];
  mean?: readonly [number, number, number];
  std?: readonly [number, number, number];
}

/**
 * @example
 * ```ts
 * const x = assembleBatch(engine, patches, { size: 224, ks: patches.map(() => rng.int(8)) });
 * ```
 */
export function assembleBatch(
  engine: Engine,
  images: readonly Pick<RgbImage, "width" | "height" | "data">[],
  o: BatchOptions = {},
): Tensor {
  const size = o.size ?? 224;
  const n = images.length;
  const plane = 3 * size * size;
  const x = engine.empty([n, 3, size, size], "batch");
  const bySize = new Map<string, number[]>();
  images.forEach((img, i) => {
    const k = `${img.width}x${img.height}`;
    bySize.set(k, [...(bySize.get(k) ?? []), i]);
  });
  engine.scope(() => {
    for (const idx of bySize.values()) {
      const src = uploadImages(engine, idx.map((i) => images[i]));
      let r = resizeNormalize(src, { size, mean: o.mean ?? HE2GENE_MEAN, std: o.std ?? HE2GENE_STD });
      if (o.ks) r = dihedralEach(r, idx.map((i) => o.ks![i]));
      if (idx.length === n) engine.copy(r, x);
      else {idx.forEach((i, j) =>
          engine.copy(r, x, { srcOffset: j * plane, dstOffset: i * plane, size: plane })
        );}
    }
  });
  return x;
}
