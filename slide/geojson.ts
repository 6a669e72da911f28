/**
 * Predictions as GeoJSON that QuPath imports (File › Import objects, or drag and drop onto the viewer):
 * a `FeatureCollection` with one `Polygon` per spot or tile, its patch square in level-0 pixels (origin at
 * the top-left corner, y down, as QuPath's image coordinates), the ring closed by repeating its first point.
 * Each feature's `properties` carry what QuPath reads:
 * - `objectType`: `"tile"` (whole-slide tiles) or `"detection"` (spots);
 * - `name`: the spot or tile name of the other outputs (`C2_25_13`);
 * - `measurements`: `{ gene: predicted log1p expression, …, tumor_prob }`, one column each in QuPath's
 *   measurement table;
 * - `classification`: `{ name: "Tumor" | "Normal", color: [r, g, b] }`, tumour where `tumor_prob` > 0.5
 *   (as `tumor_pred.csv` and the h5ad's `obs['tumor']`, the original's rule).
 *
 * Specs: GeoJSON, RFC 7946 (https://www.rfc-editor.org/rfc/rfc7946); QuPath's object GeoJSON
 * (https://qupath.readthedocs.io/en/stable/docs/advanced/exporting_annotations.html).
 *
 * @module
 */
import { fmtFloat32 } from "./npz.ts";

/** A QuPath classification: its name and display colour. */
export interface GeoJsonClass {
  name: string;
  color: [number, number, number];
}

/** The class of a tumour spot or tile (QuPath's built-in "Tumor" and its colour). */
export const TUMOR_CLASS: GeoJsonClass = { name: "Tumor", color: [200, 0, 0] };
/** The class of the others. */
export const NORMAL_CLASS: GeoJsonClass = { name: "Normal", color: [0, 150, 50] };
/** `tumor_prob` at and above which a spot or tile is classified "Tumor". */
export const TUMOR_THRESHOLD = 0.5;

/** What {@linkcode predictionsGeoJson} draws: P squares and their predictions. */
export interface GeoJsonPredictions {
  /** (P) spot or tile names. */
  names: string[];
  /** (P, 2) level-0 top-left x, y of each square, row-major. */
  topLeft: ArrayLike<number>;
  /** Side of every square in level-0 pixels. */
  size: number;
  /** Gene names, the measurement keys. */
  genes: string[];
  /** (P, genes) predicted values, row-major. */
  values: ArrayLike<number>;
  /** (P) tumour probability. */
  tumorProb: ArrayLike<number>;
  /** QuPath's object type: `"tile"` for tissue tiles, `"detection"` for spots. */
  objectType: "tile" | "detection";
}

/** One GeoJSON feature as {@linkcode predictionFeature} builds it. */
export interface GeoJsonFeature {
  type: "Feature";
  geometry: { type: "Polygon"; coordinates: number[][][] };
  properties: {
    objectType: "tile" | "detection";
    name: string;
    classification: GeoJsonClass;
    measurements: Record<string, number>;
  };
}

function check(p: GeoJsonPredictions): void {
  const P = p.names.length, G = p.genes.length;
  const bad = (what: string, n: number, want: number) =>
    new RangeError(`Cannot write GeoJSON: ${what} has ${n} values, expected ${want}`);
  if (p.topLeft.length !== 2 * P) throw bad("topLeft", p.topLeft.length, 2 * P);
  if (p.values.length !== P * G) throw bad("values", p.values.length, P * G);
  if (p.tumorProb.length !== P) throw bad("tumorProb", p.tumorProb.length, P);
  if (!(p.size > 0)) {
    throw new RangeError(`Cannot write GeoJSON: size must be > 0, current value is ${p.size}`);
  }
  const keys = new Set(p.genes);
  if (keys.size !== G || keys.has("tumor_prob")) {
    throw new RangeError(`Cannot write GeoJSON: the gene names must be unique and not "tumor_prob"`);
  }
}

// A float32 as its shortest decimal (as the CSVs), so the file is no longer than it needs to be. JSON has
// no NaN or Inf: such a value is an error naming the spot, never a number.
function f32(v: number, name: string, what: string): number {
  if (!Number.isFinite(v)) throw new RangeError(`Cannot write GeoJSON: ${name} has ${what} = ${v}`);
  return Number(fmtFloat32(v));
}

/**
 * The feature of square `i`: a closed ring (top-left, top-right, bottom-right, bottom-left, top-left) in
 * level-0 pixels, with its name, class and measurements.
 *
 * @example
 * ```ts
 * const f = predictionFeature({
 *   names: ["C2_25_13"], topLeft: [6856, 3436], size: 150, genes: ["ERBB2"],
 *   values: new Float32Array([1.5]), tumorProb: new Float32Array([0.9]), objectType: "detection",
 * }, 0);
 * console.log(f.properties.classification.name); // "Tumor"
 * ```
 */
export function predictionFeature(p: GeoJsonPredictions, i: number): GeoJsonFeature {
  const G = p.genes.length;
  const [x, y, s] = [p.topLeft[2 * i], p.topLeft[2 * i + 1], p.size];
  const measurements: Record<string, number> = {};
  for (let g = 0; g < G; g++) measurements[p.genes[g]] = f32(p.values[i * G + g], p.names[i], p.genes[g]);
  measurements.tumor_prob = f32(p.tumorProb[i], p.names[i], "tumor_prob");
  return {
    type: "Feature",
    geometry: { type: "Polygon", coordinates: [[[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]] },
    properties: {
      objectType: p.objectType,
      name: p.names[i],
      classification: p.tumorProb[i] > TUMOR_THRESHOLD ? TUMOR_CLASS : NORMAL_CLASS,
      measurements,
    },
  };
}

/**
 * Encode the predictions as a GeoJSON `FeatureCollection` (UTF-8, one feature a line), built a feature at a
 * time so that a whole slide's tiles (tens of thousands × hundreds of genes) need no single giant string.
 *
 * @example
 * ```ts
 * const bytes = predictionsGeoJson({
 *   names: ["S_0_0", "S_1_0"], topLeft: [0, 0, 200, 0], size: 200, genes: ["FASN"],
 *   values: new Float32Array([0.4, 2.1]), tumorProb: new Float32Array([0.1, 0.7]), objectType: "tile",
 * });
 * await Deno.writeFile("predictions.geojson", bytes);
 * ```
 */
export function predictionsGeoJson(p: GeoJsonPredictions): Uint8Array {
  check(p);
  const te = new TextEncoder();
  const parts: Uint8Array[] = [te.encode('{"type":"FeatureCollection","features":[\n')];
  for (let i = 0; i < p.names.length; i++) {
    parts.push(te.encode((i ? ",\n" : "") + JSON.stringify(predictionFeature(p, i))));
  }
  parts.push(te.encode("\n]}\n"));
  const out = new Uint8Array(parts.reduce((n, b) => n + b.length, 0));
  let o = 0;
  for (const b of parts) {
    out.set(b, o);
    o += b.length;
  }
  return out;
}
