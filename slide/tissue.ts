/**
 * Tissue detection and tiling on a low-resolution RGB image of a slide (a pyramid level or a thumbnail):
 * HSV saturation `S = (max − min) / max`, Otsu's threshold on its 256-bin histogram (Otsu 1979,
 * https://doi.org/10.1109/TSMC.1979.4310076), an optional morphological opening and closing, and the
 * non-overlapping level-0 tiles whose tissue fraction reaches a minimum. CPU only: it runs on a thumbnail.
 *
 * Tiling rule: the grid is anchored at the slide's top-left corner and has ⌈W / tilePx⌉ × ⌈H / tilePx⌉
 * tiles of `tilePx` level-0 pixels, so it covers every pixel of the W × H slide (level-0 geometry, not the
 * thumbnail's, which made of whole boxes can stop short of the right and bottom edges). When W or H is not
 * a multiple of `tilePx`, the tiles of the last column / row reach past the slide's edge: they keep their
 * full size and place (every tile shows the same area at the same magnification, never stretched or
 * shifted onto its neighbour), the part past the edge is background (read as white, as for a spot at the
 * edge in `extract-patches`), and their tissue fraction is taken over the whole tile with that part counted
 * as background — so the minimum tissue fraction means the same for every tile: the share of the patch the
 * model sees that is tissue.
 *
 * @module
 */

/** A low-resolution RGB image of a slide; `downsample` = level-0 pixels per image pixel. */
export interface SlideThumbnail {
  width: number;
  height: number;
  /** Interleaved RGB, `width × height × 3` bytes. */
  data: Uint8Array;
  downsample: number;
}

/** Options for {@linkcode tissueMask}. */
export interface TissueMaskOptions {
  /** Saturation threshold in [0, 255]; default: Otsu's. Tissue is `S·255 > threshold`. */
  threshold?: number;
  /** Radius (pixels) of the square structuring element of the opening then closing; 0 = none (default 1). */
  cleanup?: number;
}

/** A tissue mask (1 = tissue, row-major) and the saturation threshold used. */
export interface TissueMask {
  width: number;
  height: number;
  mask: Uint8Array;
  threshold: number;
}

/** One tile: level-0 top-left `x, y` and grid position `col, row` (`x = col·tilePx`). */
export interface Tile {
  x: number;
  y: number;
  col: number;
  row: number;
  /** Fraction of the tile's thumbnail pixels that are tissue. */
  tissue: number;
}

/** Options for {@linkcode tissueTiles}. */
export interface TileOptions extends TissueMaskOptions {
  /** Tile side in level-0 pixels. */
  tilePx: number;
  /** Smallest tissue fraction of a kept tile (default 0.5). */
  minTissueFraction?: number;
  /**
   * The slide's level-0 width and height. Default: the thumbnail's size × `downsample`, rounded — which
   * falls short of the slide when the thumbnail was made of whole boxes, so pass them for a slide.
   */
  slideWidth?: number;
  slideHeight?: number;
}

/** Saturation of each pixel quantised to 0…255 (`round(255·(max − min)/max)`, 0 for black). */
export function saturation(img: Pick<SlideThumbnail, "width" | "height" | "data">): Uint8Array {
  const n = img.width * img.height;
  const s = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    const r = img.data[3 * i], g = img.data[3 * i + 1], b = img.data[3 * i + 2];
    const mx = Math.max(r, g, b), mn = Math.min(r, g, b);
    s[i] = mx === 0 ? 0 : Math.round((255 * (mx - mn)) / mx);
  }
  return s;
}

/**
 * Otsu's threshold of a 256-bin histogram: the `t` maximising the between-class variance of
 * `{≤ t}` and `{> t}` (the first maximum; skimage's `threshold_otsu` convention, classes `≤ t` / `> t`).
 */
export function otsu(hist: ArrayLike<number>): number {
  let total = 0, sumAll = 0;
  for (let i = 0; i < hist.length; i++) {
    total += hist[i];
    sumAll += i * hist[i];
  }
  let w0 = 0, sum0 = 0, best = -1, bestT = 0;
  for (let t = 0; t < hist.length - 1; t++) {
    w0 += hist[t];
    sum0 += t * hist[t];
    const w1 = total - w0;
    if (w0 === 0 || w1 === 0) continue;
    const d = sum0 / w0 - (sumAll - sum0) / w1;
    const between = w0 * w1 * d * d;
    if (between > best) {
      best = between;
      bestT = t;
    }
  }
  return bestT;
}

/** Binary erosion (`min`) or dilation (`max`) with a (2r + 1)² square, separable; outside = background for dilation, tissue for erosion. */
function morph(m: Uint8Array, w: number, h: number, r: number, dilate: boolean): Uint8Array {
  const pad = dilate ? 0 : 1;
  const tmp = new Uint8Array(m.length), out = new Uint8Array(m.length);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      let v = dilate ? 0 : 1;
      for (let k = -r; k <= r; k++) {
        const xx = x + k;
        const s = xx < 0 || xx >= w ? pad : m[y * w + xx];
        v = dilate ? v | s : v & s;
      }
      tmp[y * w + x] = v;
    }
  }
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      let v = dilate ? 0 : 1;
      for (let k = -r; k <= r; k++) {
        const yy = y + k;
        const s = yy < 0 || yy >= h ? pad : tmp[yy * w + x];
        v = dilate ? v | s : v & s;
      }
      out[y * w + x] = v;
    }
  }
  return out;
}

/**
 * Tissue mask of a thumbnail: saturation, Otsu threshold (unless given), opening then closing.
 *
 * @example
 * ```ts
 * const { mask, threshold } = tissueMask(decodeImage(await Deno.readFile("thumb.png"), "thumb.png"));
 * ```
 */
export function tissueMask(
  img: Pick<SlideThumbnail, "width" | "height" | "data">,
  options: TissueMaskOptions = {},
): TissueMask {
  const { width: w, height: h } = img;
  if (img.data.length !== w * h * 3) {
    throw new RangeError(
      `Cannot compute a tissue mask: expected ${w * h * 3} bytes (RGB), got ${img.data.length}`,
    );
  }
  const s = saturation(img);
  const hist = new Float64Array(256);
  for (const v of s) hist[v]++;
  const threshold = options.threshold ?? otsu(hist);
  let mask: Uint8Array = new Uint8Array(w * h);
  for (let i = 0; i < s.length; i++) mask[i] = s[i] > threshold ? 1 : 0;
  const r = options.cleanup ?? 1;
  if (r > 0) {
    mask = morph(morph(mask, w, h, r, false), w, h, r, true); // opening: drop specks
    mask = morph(morph(mask, w, h, r, true), w, h, r, false); // closing: fill pinholes
  }
  return { width: w, height: h, mask, threshold };
}

/**
 * Non-overlapping level-0 tiles of `tilePx` pixels covering the tissue of a slide thumbnail, row-major,
 * on the grid of the module doc's tiling rule (`cols × rows` = ⌈W / tilePx⌉ × ⌈H / tilePx⌉, edge tiles
 * reaching past the slide included). A tile's tissue fraction is the mean mask over the thumbnail pixels
 * whose centres fall inside its part within the slide (or the pixel under that part's centre when it is
 * smaller than a thumbnail pixel), times the share of the tile within the slide. `col, row` are grid
 * positions, so the 8-neighbours of a tile are the tiles at `col ± 1, row ± 1` (see
 * {@linkcode tileNeighbours}).
 *
 * @example
 * ```ts
 * const thumb = { ...decodeImage(bytes, "lowres.png"), downsample: 1 / 0.045 };
 * const { tiles } = tissueTiles(thumb, { tilePx: 224 });
 * ```
 */
export function tissueTiles(
  img: SlideThumbnail,
  options: TileOptions,
): { tiles: Tile[]; mask: TissueMask; threshold: number; cols: number; rows: number } {
  const { tilePx, minTissueFraction = 0.5 } = options;
  const ds = img.downsample;
  if (!(ds > 0) || !Number.isFinite(ds)) {
    throw new RangeError(`Cannot tile: downsample must be positive, current value is ${ds}`);
  }
  if (!(tilePx > 0) || !Number.isInteger(tilePx)) {
    throw new RangeError(`Cannot tile: tilePx must be a positive integer, current value is ${tilePx}`);
  }
  const W0 = options.slideWidth ?? Math.round(img.width * ds);
  const H0 = options.slideHeight ?? Math.round(img.height * ds);
  if (!(W0 >= 1 && H0 >= 1 && Number.isInteger(W0) && Number.isInteger(H0))) {
    throw new RangeError(
      `Cannot tile: the slide size must be positive integers, current value is ${W0}×${H0}`,
    );
  }
  const mask = tissueMask(img, options);
  const cols = Math.ceil(W0 / tilePx), rows = Math.ceil(H0 / tilePx);
  // Thumbnail pixel range whose centres (i + ½)·ds lie in [a, b): i ∈ [ceil(a/ds − ½), ceil(b/ds − ½)).
  const span = (a: number, b: number, n: number): [number, number] => {
    let i0 = Math.ceil(a / ds - 0.5), i1 = Math.ceil(b / ds - 0.5);
    if (i1 <= i0) i0 = Math.floor((a + b) / 2 / ds), i1 = i0 + 1;
    return [Math.max(0, Math.min(n - 1, i0)), Math.max(1, Math.min(n, i1))];
  };
  const tiles: Tile[] = [];
  for (let row = 0; row < rows; row++) {
    // The tile's part within the slide, [top, bottom) in level-0 pixels.
    const top = row * tilePx, bottom = Math.min(top + tilePx, H0);
    const [y0, y1] = span(top, bottom, img.height);
    for (let col = 0; col < cols; col++) {
      const left = col * tilePx, right = Math.min(left + tilePx, W0);
      const [x0, x1] = span(left, right, img.width);
      let sum = 0;
      for (let y = y0; y < y1; y++) for (let x = x0; x < x1; x++) sum += mask.mask[y * img.width + x];
      // Past the slide's edge is background: scale by the share of the tile within the slide.
      const inside = ((right - left) * (bottom - top)) / (tilePx * tilePx);
      const tissue = (sum / ((y1 - y0) * (x1 - x0))) * inside;
      if (tissue >= minTissueFraction) tiles.push({ x: left, y: top, col, row, tissue });
    }
  }
  return { tiles, mask, threshold: mask.threshold, cols, rows };
}

/**
 * The 8-neighbours of each tile among `tiles` (indices into `tiles`, −1 where absent), in the order
 * (−1,−1), (0,−1), (1,−1), (−1,0), (1,0), (−1,1), (0,1), (1,1) as (dcol, drow).
 *
 * @example
 * ```ts
 * const nb = tileNeighbours(tiles); // nb[i][4] is the tile right of tiles[i], or −1
 * ```
 */
export function tileNeighbours(tiles: readonly Pick<Tile, "col" | "row">[]): number[][] {
  const at = new Map<string, number>();
  tiles.forEach((t, i) => at.set(`${t.col},${t.row}`, i));
  const d = [[-1, -1], [0, -1], [1, -1], [-1, 0], [1, 0], [-1, 1], [0, 1], [1, 1]];
  return tiles.map((t) => d.map(([dc, dr]) => at.get(`${t.col + dc},${t.row + dr}`) ?? -1));
}
