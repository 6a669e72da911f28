/**
 * A small synthetic spatial-transcriptomics section for the demo and tests: an H&E-like image (pink stroma
 * with fibres, purple nuclei) with a tumour region whose morphology differs (dense, large, dark nuclei),
 * spots on a square grid, and counts tied to the morphology under each spot (Poisson noise).
 *
 * Each gene's rate is `base · exp(a·nuclear density + b·tumour + c·eosin)`, so a model that sees the
 * patch can predict expression, and the tumour label is visible. Everything is seeded.
 *
 * @module
 */
import { mulberry32 } from "../engine/random.ts";
import type { RgbImage } from "./decode.ts";

/** The generated section. */
export interface SyntheticSection {
  image: RgbImage;
  /** Spot centres (pixels), grid coordinates, tumour labels. */
  spots: { pixel: [number, number]; array: [number, number]; tumor: boolean }[];
  genes: string[];
  /** (spots, genes) raw counts. */
  counts: Float32Array;
  /** Pixels between neighbouring spot centres. */
  spacing: number;
}

const rng = mulberry32;

function poisson(lambda: number, u: () => number): number {
  if (lambda > 30) return Math.max(0, Math.round(lambda + Math.sqrt(lambda) * normal(u)));
  const l = Math.exp(-lambda);
  let k = 0, p = 1;
  do {
    k++;
    p *= u();
  } while (p > l);
  return k - 1;
}

function normal(u: () => number): number {
  return Math.sqrt(-2 * Math.log(u() + 1e-12)) * Math.cos(2 * Math.PI * u());
}

/**
 * Generate a section with `rows × cols` spots `spacing` px apart and `genes` genes.
 *
 * @example
 * ```ts
 * const s = syntheticSection({ rows: 16, cols: 16, genes: 40, seed: 1 });
 * ```
 */
export function syntheticSection(
  o: { rows?: number; cols?: number; spacing?: number; genes?: number; seed?: number } = {},
): SyntheticSection {
  const rows = o.rows ?? 16, cols = o.cols ?? 16, spacing = o.spacing ?? 40, nGenes = o.genes ?? 40;
  const u = rng(o.seed ?? 1);
  const pad = spacing;
  const W = cols * spacing + 2 * pad, H = rows * spacing + 2 * pad;
  // Tumour: an irregular blob (union of discs); an immune band; stroma elsewhere.
  const blobs = Array.from({ length: 4 }, () => ({
    x: pad + (0.25 + 0.5 * u()) * cols * spacing,
    y: pad + (0.25 + 0.5 * u()) * rows * spacing,
    r: (0.12 + 0.12 * u()) * Math.min(rows, cols) * spacing,
  }));
  const inTumour = (x: number, y: number) => blobs.some((b) => (x - b.x) ** 2 + (y - b.y) ** 2 < b.r * b.r);
  const data = new Uint8Array(W * H * 3);
  // Stroma: pink with eosin fibres.
  const fibreF = 0.05 + 0.05 * u(), fibreP = u() * 6;
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const f = 0.5 + 0.5 * Math.sin(fibreF * (x + 0.6 * y) + fibreP + 2 * Math.sin(0.013 * y));
      const i = (y * W + x) * 3;
      data[i] = 235 - 25 * f;
      data[i + 1] = 180 - 60 * f;
      data[i + 2] = 205 - 30 * f;
    }
  }
  // Nuclei: dense, large and dark in the tumour; sparse and small elsewhere.
  const nNuclei = Math.round((W * H) / 90);
  for (let k = 0; k < nNuclei; k++) {
    const x = u() * W, y = u() * H;
    const t = inTumour(x, y);
    if (!t && u() > 0.35) continue;
    const r = t ? 3.2 + 1.8 * u() : 1.6 + 1.2 * u();
    const dark = t ? 0.85 : 0.6;
    const [R, G, B] = [110 - 60 * dark, 60 - 30 * dark, 160 - 20 * dark];
    for (let dy = -Math.ceil(r); dy <= Math.ceil(r); dy++) {
      for (let dx = -Math.ceil(r); dx <= Math.ceil(r); dx++) {
        if (dx * dx + dy * dy > r * r) continue;
        const px = Math.round(x + dx), py = Math.round(y + dy);
        if (px < 0 || py < 0 || px >= W || py >= H) continue;
        const i = (py * W + px) * 3;
        data[i] = R;
        data[i + 1] = G;
        data[i + 2] = B;
      }
    }
  }
  // Spots and their morphology (measured from the image under the spot).
  const spots: SyntheticSection["spots"] = [];
  const feats: [number, number, number][] = [];
  const half = Math.floor(spacing / 2);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const px = pad + c * spacing + spacing / 2, py = pad + r * spacing + spacing / 2;
      let nuc = 0, eos = 0, n = 0;
      for (let y = Math.round(py - half); y < py + half; y++) {
        for (let x = Math.round(px - half); x < px + half; x++) {
          const i = (y * W + x) * 3;
          if (data[i + 1] < 90) nuc++;
          else eos += (235 - data[i]) / 25;
          n++;
        }
      }
      const tumor = inTumour(px, py);
      spots.push({ pixel: [px, py], array: [c, r], tumor });
      feats.push([nuc / n, tumor ? 1 : 0, eos / n]);
    }
  }
  const genes = Array.from({ length: nGenes }, (_, g) => `SYN${String(g + 1).padStart(3, "0")}`);
  const coef = genes.map(() => ({
    base: Math.exp(1 + 2.5 * u()),
    a: 6 * (u() - 0.3),
    b: 1.5 * (u() - 0.4),
    c: 2 * (u() - 0.5),
  }));
  const counts = new Float32Array(spots.length * nGenes);
  feats.forEach(([nuc, t, eos], s) => {
    coef.forEach((k, g) => {
      counts[s * nGenes + g] = poisson(k.base * Math.exp(k.a * nuc + k.b * t + k.c * eos), u);
    });
  });
  return { image: { width: W, height: H, channels: 3, data, warnings: [] }, spots, genes, counts, spacing };
}

/** Cut a `size` × `size` patch centred on (cx, cy) (top-left = ⌊c⌋ − size/2, as HE2Gene); white outside. */
export function cropPatch(
  img: Pick<RgbImage, "width" | "height" | "data">,
  cx: number,
  cy: number,
  size: number,
): RgbImage {
  const x0 = Math.floor(cx) - Math.floor(size / 2), y0 = Math.floor(cy) - Math.floor(size / 2);
  const out = new Uint8Array(size * size * 3).fill(255);
  for (let y = 0; y < size; y++) {
    const sy = y0 + y;
    if (sy < 0 || sy >= img.height) continue;
    for (let x = 0; x < size; x++) {
      const sx = x0 + x;
      if (sx < 0 || sx >= img.width) continue;
      const s = (sy * img.width + sx) * 3, d = (y * size + x) * 3;
      out[d] = img.data[s];
      out[d + 1] = img.data[s + 1];
      out[d + 2] = img.data[s + 2];
    }
  }
  return { width: size, height: size, channels: 3, data: out, warnings: [] };
}
