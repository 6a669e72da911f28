/**
 * The common shape of spatial-transcriptomics datasets (her2st, HBCIS, 10x Visium), the error and warning
 * types of their readers, and small shared readers: text (gzip or plain), delimited tables, and the pixel
 * size of a JPEG or PNG read from its header without decoding.
 *
 * JPEG: ITU T.81 B.2.2 (SOFn: length, precision, height, width); PNG: https://www.w3.org/TR/png/#11IHDR.
 *
 * @module
 */
import { gunzipSync } from "node:zlib";

/** One spot (a capture area on the array). */
export interface Spot {
  /** Unique within its section: `"{x}x{y}"` for ST, the barcode for Visium. */
  id: string;
  /** The id of the section it belongs to. */
  section: string;
  /** Centre in level-0 (full-resolution) pixels of the section's coordinate frame, `[x, y]`. */
  pixel: [number, number];
  /** Position on the array grid, `[x, y]` (ST: `x y` columns; Visium: `[array_col, array_row]`). */
  array: [number, number];
  /** Counts of all the dataset's genes, in `SpatialDataset.genes` order. */
  counts?: Float32Array;
  /** Annotation (pathologist label or expression-cluster name). */
  label?: string;
  /** Whether the spot is tumour. */
  tumor?: boolean;
}

/** One tissue section: its slide, its spots. */
export interface Section {
  id: string;
  /** The H&E image for this section (spots' `pixel` × `imageScale` are pixels of this image). */
  slidePath: string;
  spots: Spot[];
  /** Micrometres per pixel of the spots' `pixel` frame (measured from the spot grid), when known. */
  mpp?: number;
  /** Factor from `pixel` coordinates to pixels of `slidePath` (Visium hires / lowres images); 1 if absent. */
  imageScale?: number;
  /** `square` (ST: 8 neighbours at ±1) or `hex` (Visium: array_col steps by 2). */
  grid?: "square" | "hex";
  /** Slide size in pixels, when read from the image header. */
  imageSize?: [number, number];
  /** Where `label` / `tumor` come from. */
  labelSource?: "pathologist" | "cluster" | "npz" | "none";
  /** Dataset genes absent from this section's count file (their counts are 0: the file lists no reads). */
  missingGenes?: string[];
}

/** A spatial transcriptomics dataset. */
export interface SpatialDataset {
  name: string;
  sections: Section[];
  /** Gene names (symbols where the source has them), the order of every `Spot.counts`. */
  genes: string[];
  /** Gene ids (Ensembl) where the source has them, parallel to `genes`. */
  geneIds?: string[];
  /** Problems found while reading, with counts; never silently dropped. */
  warnings: DatasetWarning[];
}

/** A problem found while reading: what, where and how many. */
export interface DatasetWarning {
  /** `unjoined-spots`, `invalid-counts`, `outside-image`, `unlabelled-spots`, `missing-genes`, … */
  code: string;
  section?: string;
  count: number;
  message: string;
}

/** Bad dataset input: names the file (or folder), what was expected, and the line when there is one. */
export class DatasetError extends Error {
  constructor(readonly file: string, message: string, readonly line = -1) {
    super(`${file}${line >= 0 ? `:${line}` : ""}: ${message}`);
    this.name = "DatasetError";
  }
}

/**
 * The names that occur more than once in `names`, each with the (0-based) positions where it occurs, in
 * order of first occurrence.
 *
 * @example
 * ```ts
 * duplicates(["A", "B", "A"]); // [["A", [0, 2]]]
 * ```
 */
export function duplicates(names: readonly string[]): [string, number[]][] {
  const at = new Map<string, number[]>();
  names.forEach((n, i) => {
    const l = at.get(n);
    if (l) l.push(i);
    else at.set(n, [i]);
  });
  return [...at].filter(([, l]) => l.length > 1);
}

/**
 * `"A (2×), B (3×)"` for the first `max` duplicated names, with how many more there are; `where` turns a
 * name's positions into text (e.g. line numbers) shown instead of the count.
 */
export function describeDuplicates(
  dups: [string, number[]][],
  where: (positions: number[]) => string = (p) => `${p.length}×`,
  max = 5,
): string {
  const shown = dups.slice(0, max).map(([n, p]) => `${n} (${where(p)})`).join(", ");
  return dups.length > max ? `${shown} and ${dups.length - max} more` : shown;
}

/** Read a text file, gunzipping when it starts with the gzip magic. */
export async function readText(path: string): Promise<string> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new DatasetError(path, "expected a file, found none");
    throw e;
  }
  if (bytes[0] === 0x1f && bytes[1] === 0x8b) {
    try {
      bytes = new Uint8Array(gunzipSync(bytes));
    } catch (e) {
      throw new DatasetError(path, `expected gzip data: ${(e as Error).message}`);
    }
  }
  return new TextDecoder().decode(bytes);
}

/** Split a delimited text into rows of cells (no quoting: the her2st / 10x files use none). */
export function splitRows(text: string, sep: string | RegExp): string[][] {
  return text.split(/\r?\n/).filter((l) => l.trim() !== "").map((l) => l.split(sep));
}

/** Whether a path exists. */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/**
 * Width and height of a JPEG (from its first SOF marker) or PNG (IHDR), reading only the header bytes;
 * null for other formats or when no SOF is found.
 *
 * @example
 * ```ts ignore
 * await imageSize("5714_HE_BT_C2.jpg"); // [9324, 9910]
 * ```
 */
export async function imageSize(path: string): Promise<[number, number] | null> {
  using f = await Deno.open(path);
  let buf = new Uint8Array(0);
  const chunk = new Uint8Array(1 << 16);
  for (;;) {
    const size = sizeFromHeader(buf);
    if (size !== undefined) return size;
    const n = await f.read(chunk);
    if (n === null) return null;
    const next = new Uint8Array(buf.length + n);
    next.set(buf);
    next.set(chunk.subarray(0, n), buf.length);
    buf = next;
  }
}

/** Size from the header bytes seen so far: a size, null (not an image / no SOF), or undefined (need more). */
function sizeFromHeader(b: Uint8Array): [number, number] | null | undefined {
  if (b.length < 24) return undefined;
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (dv.getUint32(0) === 0x89504e47) return [dv.getUint32(16), dv.getUint32(20)];
  if (b[0] !== 0xff || b[1] !== 0xd8) return null;
  let p = 2;
  while (p + 4 <= b.length) {
    if (b[p] !== 0xff) return null;
    const m = b[p + 1];
    if (m === 0xff) {
      p++; // fill byte
      continue;
    }
    if (m === 0xd8 || m === 0x01 || (m >= 0xd0 && m <= 0xd7)) {
      p += 2;
      continue;
    }
    if (m === 0xd9 || m === 0xda) return null; // end of image / start of scan before any SOF
    // SOF0–SOF15 except DHT (C4), JPG (C8) and DAC (CC): length, precision, height, width.
    if (m >= 0xc0 && m <= 0xcf && m !== 0xc4 && m !== 0xc8 && m !== 0xcc) {
      if (p + 9 > b.length) return undefined;
      return [dv.getUint16(p + 7), dv.getUint16(p + 5)];
    }
    p += 2 + dv.getUint16(p + 2);
  }
  return undefined;
}
