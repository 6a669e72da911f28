/**
 * PIL's bilinear and bicubic resamplers (Pillow ≥ 7, `libImaging/Resample.c`), reproduced bit for bit on
 * the CPU.
 *
 * torchvision's `transforms.Resize((224, 224))` on a PIL image calls `img.resize((224, 224), BILINEAR)`:
 * a separable convolution with the triangle filter (support 1; `BICUBIC`: the cubic convolution kernel with
 * a = −0.5, support 2) whose support grows with the downscale factor (antialiasing). Per output pixel the weights are normalised in float64, then turned into fixed point
 * with `PRECISION_BITS = 32 − 8 − 2 = 22` bits (rounded half away from zero). The horizontal pass runs
 * first and its result is stored as uint8 (rounded, clipped); the vertical pass reads that.
 * `reducing_gap` is off by default and not reproduced.
 *
 * Crops follow `img.crop(box).resize(…)`: the crop is a new image whose pixels outside the source are 0.
 *
 * @module
 */
import type { RgbImage } from "./decode.ts";

/** Fixed-point fraction bits of the 8-bit resampler. */
export const PRECISION_BITS = 32 - 8 - 2;

/** A PIL crop box `[left, upper, right, lower]` in source pixels (right/lower exclusive). */
export type CropBox = readonly [number, number, number, number];

/** Fixed-point weights for one axis: output `i` reads `count[i]` inputs from `start[i]`. */
export interface AxisCoeffs {
  /** Output size. */
  outSize: number;
  /** Coefficients per output (PIL's `ksize`); `weights` is `[outSize, ksize]`, unused slots 0. */
  ksize: number;
  /** First input index per output (PIL's `xmin`). */
  start: Int32Array;
  /** Number of inputs per output (PIL's `xmax − xmin`). */
  count: Int32Array;
  /** Weights scaled by 2^22 and rounded (PIL's `normalize_coeffs_8bpc`). */
  weights: Int32Array;
}

/** The resampling filters reproduced: PIL's `Image.BILINEAR` and `Image.BICUBIC`. */
export type ResampleFilter = "bilinear" | "bicubic";

// Triangle filter, support 1 (PIL's `bilinear_filter`).
function triangle(x: number): number {
  if (x < 0) x = -x;
  return x < 1 ? 1 - x : 0;
}

// Cubic convolution with a = −0.5, support 2 (PIL's `bicubic_filter`, its operation order: the weights are
// float64 as in C, so each one is the same double).
function cubic(x: number): number {
  const a = -0.5;
  if (x < 0) x = -x;
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

const FILTERS: Record<ResampleFilter, { fn: (x: number) => number; support: number }> = {
  bilinear: { fn: triangle, support: 1 },
  bicubic: { fn: cubic, support: 2 },
};

/**
 * PIL's `precompute_coeffs` + `normalize_coeffs_8bpc` for the bilinear filter, resizing the input span
 * `[in0, in1)` of an axis of `inSize` pixels to `outSize`.
 *
 * @example
 * ```ts
 * const c = bilinearCoeffs(150, 224); // upsampling: 2 taps per output
 * console.log(c.ksize, c.start[0], c.count[0]);
 * ```
 */
export function bilinearCoeffs(inSize: number, outSize: number, in0 = 0, in1 = inSize): AxisCoeffs {
  return pilCoeffs(inSize, outSize, "bilinear", in0, in1);
}

/**
 * PIL's `precompute_coeffs` + `normalize_coeffs_8bpc` for `filter`, resizing the input span `[in0, in1)` of
 * an axis of `inSize` pixels to `outSize`. Bicubic weights can be negative (rounded half away from zero, as
 * PIL).
 *
 * @example
 * ```ts
 * const c = pilCoeffs(300, 224, "bicubic"); // downsampling: support 2 × 300/224 each side
 * console.log(c.ksize); // 7
 * ```
 */
export function pilCoeffs(
  inSize: number,
  outSize: number,
  filter: ResampleFilter = "bilinear",
  in0 = 0,
  in1 = inSize,
): AxisCoeffs {
  if (!(inSize >= 1 && outSize >= 1)) {
    throw new RangeError(`Cannot resize: sizes must be ≥ 1, current values are ${inSize} → ${outSize}`);
  }
  const f = FILTERS[filter];
  if (!f) {
    throw new RangeError(`Cannot resize: filter must be bilinear or bicubic, current value is ${filter}`);
  }
  // in0 / in1 are C floats in PIL; for integer boxes the float → double conversion is exact.
  const scale = (Math.fround(in1) - Math.fround(in0)) / outSize;
  const filterscale = Math.max(scale, 1);
  const support = f.support * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const start = new Int32Array(outSize);
  const count = new Int32Array(outSize);
  const weights = new Int32Array(outSize * ksize);
  const k = new Float64Array(ksize);
  const one = 1 << PRECISION_BITS;
  for (let xx = 0; xx < outSize; xx++) {
    const center = in0 + (xx + 0.5) * scale;
    const ss = 1 / filterscale;
    // (int) truncates toward zero, as in C.
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const w = f.fn((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (let x = 0; x < ksize; x++) {
      const w = x < xmax ? (ww !== 0 ? k[x] / ww : k[x]) : 0;
      weights[xx * ksize + x] = w < 0 ? Math.trunc(-0.5 + w * one) : Math.trunc(0.5 + w * one);
    }
    start[xx] = xmin;
    count[xx] = xmax;
  }
  return { outSize, ksize, start, count, weights };
}

// PIL's clip8: round-shifted fixed point → uint8.
function clip8(v: number): number {
  if (v >= (1 << PRECISION_BITS) * 256) return 255;
  if (v <= 0) return 0;
  return v >> PRECISION_BITS;
}

/** Options for {@linkcode resizeCpu}. */
export interface ResizeCpuOptions {
  /** Crop `[left, upper, right, lower]` taken first, as `img.crop(box)` (default: the whole image). */
  box?: CropBox;
  /** `Image.BILINEAR` (default) or `Image.BICUBIC`. */
  filter?: ResampleFilter;
}

/**
 * Resize of an RGB image exactly as `img.crop(box).resize((width, height), Image.BILINEAR)` (or
 * `Image.BICUBIC` with `filter: "bicubic"`) in Pillow ≥ 7: the CPU reference of {@linkcode resizeNormalize}.
 *
 * @example
 * ```ts
 * import { decodeImage, resizeCpu } from "./mod.ts";
 * const img = decodeImage(await Deno.readFile("D2_6_22.tif"), "D2_6_22.tif");
 * const out = resizeCpu(img, [224, 224]); // out.data: 224 × 224 × 3 uint8, equal to PIL's
 * ```
 */
export function resizeCpu(
  img: Pick<RgbImage, "width" | "height" | "data">,
  size: readonly [number, number],
  options: ResizeCpuOptions = {},
): { width: number; height: number; channels: 3; data: Uint8Array } {
  const [outW, outH] = size;
  const box = options.box ?? [0, 0, img.width, img.height];
  checkBox(box, "resizeCpu");
  const src = cropCpu(img, box);
  const inW = src.width, inH = src.height;
  const h = pilCoeffs(inW, outW, options.filter);
  const v = pilCoeffs(inH, outH, options.filter);
  // PIL skips a pass whose axis keeps its size; that pass would be the identity anyway.
  const needH = outW !== inW;
  const needV = outH !== inH;
  const half = 1 << (PRECISION_BITS - 1);

  // Horizontal pass over the rows the vertical pass reads: [yFirst, yLast).
  const yFirst = needV ? v.start[0] : 0;
  const yLast = needV ? v.start[outH - 1] + v.count[outH - 1] : inH;
  let tmp = src.data, tmpW = inW, tmpY0 = 0;
  if (needH) {
    tmpW = outW;
    tmpY0 = yFirst;
    tmp = new Uint8Array((yLast - yFirst) * outW * 3);
    for (let y = yFirst; y < yLast; y++) {
      const row = y * inW * 3;
      for (let xx = 0; xx < outW; xx++) {
        const x0 = h.start[xx], n = h.count[xx], kk = xx * h.ksize;
        for (let c = 0; c < 3; c++) {
          let ss = half;
          for (let x = 0; x < n; x++) ss += src.data[row + (x0 + x) * 3 + c] * h.weights[kk + x];
          tmp[((y - yFirst) * outW + xx) * 3 + c] = clip8(ss);
        }
      }
    }
  }
  if (!needV) return { width: tmpW, height: inH, channels: 3, data: tmp === src.data ? tmp.slice() : tmp };
  const out = new Uint8Array(outW * outH * 3);
  for (let yy = 0; yy < outH; yy++) {
    const y0 = v.start[yy] - tmpY0, n = v.count[yy], kk = yy * v.ksize;
    for (let xx = 0; xx < tmpW; xx++) {
      for (let c = 0; c < 3; c++) {
        let ss = half;
        for (let y = 0; y < n; y++) ss += tmp[((y0 + y) * tmpW + xx) * 3 + c] * v.weights[kk + y];
        out[(yy * tmpW + xx) * 3 + c] = clip8(ss);
      }
    }
  }
  return { width: tmpW, height: outH, channels: 3, data: out };
}

/** `img.crop(box)`: a new image; pixels outside the source are 0 (as PIL's crop). */
export function cropCpu(
  img: Pick<RgbImage, "width" | "height" | "data">,
  box: CropBox,
): { width: number; height: number; channels: 3; data: Uint8Array } {
  checkBox(box, "crop");
  const [l, t, r, b] = box;
  if (l === 0 && t === 0 && r === img.width && b === img.height) {
    return { width: img.width, height: img.height, channels: 3, data: img.data };
  }
  const w = r - l, h = b - t;
  const out = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) {
    const sy = t + y;
    if (sy < 0 || sy >= img.height) continue;
    for (let x = 0; x < w; x++) {
      const sx = l + x;
      if (sx < 0 || sx >= img.width) continue;
      const s = (sy * img.width + sx) * 3, d = (y * w + x) * 3;
      out[d] = img.data[s];
      out[d + 1] = img.data[s + 1];
      out[d + 2] = img.data[s + 2];
    }
  }
  return { width: w, height: h, channels: 3, data: out };
}

/**
 * The box of a centred `width × height` crop, as torchvision's `CenterCrop` places it
 * (`top = round((H − h) / 2)`, `left = round((W − w) / 2)`, Python's round-half-even).
 *
 * @example
 * ```ts
 * centerBox(150, 150, 75, 75); // [38, 38, 113, 113]
 * ```
 */
export function centerBox(srcW: number, srcH: number, width: number, height = width): CropBox {
  const left = roundHalfEven((srcW - width) / 2);
  const top = roundHalfEven((srcH - height) / 2);
  return [left, top, left + width, top + height];
}

/** timm's eval preprocessing (`pretrained_cfg`): what {@linkcode evalTransformGeometry} reads. */
export interface EvalTransform {
  /** The model's square input side (`input_size[-1]`). */
  inputSize: number;
  /** `crop_pct` (timm's default 0.875). */
  cropPct: number;
  /** `crop_mode`: `center` (default: the shorter side resized, aspect kept) or `squash` (both sides). */
  cropMode?: "center" | "squash";
}

/**
 * Where timm's eval transform (`transforms_imagenet_eval`) takes a `srcW × srcH` image: torchvision's
 * `Resize(floor(inputSize / cropPct))` (the shorter side to that, the longer to `int(s · long / short)`;
 * `squash`: both sides) then `CenterCrop(inputSize)`. Returns the resized `size` `[width, height]` (PIL order)
 * and the `window` of the resized image the crop keeps; where the window leaves the image (crop_pct > 1)
 * torchvision pads with 0, `(c − S) // 2` before.
 *
 * @example
 * ```ts
 * evalTransformGeometry(150, 150, { inputSize: 224, cropPct: 0.875 });
 * // { size: [256, 256], window: [16, 16, 240, 240] }
 * ```
 */
export function evalTransformGeometry(
  srcW: number,
  srcH: number,
  t: EvalTransform,
): { size: [number, number]; window: CropBox } {
  const { inputSize: c, cropPct } = t;
  if (!(Number.isInteger(c) && c >= 1 && cropPct > 0)) {
    throw new RangeError(
      `Cannot place timm's eval crop: inputSize must be an integer ≥ 1 and cropPct > 0, current values are ` +
        `${c} and ${cropPct}`,
    );
  }
  const s = Math.floor(c / cropPct);
  let size: [number, number];
  if (t.cropMode === "squash") size = [s, s];
  else if (srcW <= srcH) size = [s, Math.trunc(s * srcH / srcW)];
  else size = [Math.trunc(s * srcW / srcH), s];
  const at = (S: number) => (c > S ? -Math.floor((c - S) / 2) : roundHalfEven((S - c) / 2));
  const left = at(size[0]), top = at(size[1]);
  return { size, window: [left, top, left + c, top + c] };
}

function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Throw unless `box` is four integers with right > left and lower > upper. */
export function checkBox(box: CropBox, op: string): void {
  if (
    !Array.isArray(box) || box.length !== 4 || box.some((v) => !Number.isInteger(v)) || box[2] <= box[0] ||
    box[3] <= box[1]
  ) {
    throw new RangeError(
      `Cannot ${op}: box must be integers [left, upper, right, lower] with right > left and lower > upper, ` +
        `current value is [${box}]`,
    );
  }
}
