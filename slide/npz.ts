/**
 * NPY / NPZ writers and the CSV tables of HE2Gene's outputs, written atomically (temporary name, then
 * rename), so a failure never leaves a partial file.
 *
 * NPY: https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html (version 1.0 header,
 * 64-byte aligned). NPZ: a zip of `.npy` members, stored (no compression), as `np.savez` writes.
 * Zip: https://pkware.cachefly.net/webdocs/casestudies/APPNOTE.TXT (local headers, central directory).
 *
 * @module
 */
import { crc32 } from "node:zlib";

/** An array to save: float32 numbers or strings (saved as fixed-width unicode, `<U{n}`). */
export type NpyArray =
  | { dtype: "f4"; shape: number[]; data: Float32Array }
  | { dtype: "U"; shape: number[]; data: string[] };

const enc = new TextEncoder();

/** Encode one array in NPY format. */
export function encodeNpy(a: NpyArray): Uint8Array {
  const n = a.shape.reduce((p, d) => p * d, 1);
  if (a.data.length !== n) {
    throw new RangeError(
      `Cannot write npy: shape [${a.shape}] needs ${n} values, current value has ${a.data.length}`,
    );
  }
  let descr: string, body: Uint8Array;
  if (a.dtype === "f4") {
    descr = "<f4";
    body = new Uint8Array(a.data.buffer, a.data.byteOffset, a.data.byteLength);
  } else {
    // UTF-32 little-endian code points, each string padded to the longest.
    const cps = a.data.map((s) => [...s].map((c) => c.codePointAt(0)!));
    const width = Math.max(1, ...cps.map((c) => c.length));
    descr = `<U${width}`;
    const u32 = new Uint32Array(n * width);
    cps.forEach((c, i) => u32.set(c, i * width));
    body = new Uint8Array(u32.buffer);
  }
  const shape = a.shape.length === 1 ? `(${a.shape[0]},)` : `(${a.shape.join(", ")})`;
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shape}, }`;
  const pad = 64 - ((10 + header.length + 1) % 64);
  header += " ".repeat(pad % 64) + "\n";
  const h = enc.encode(header);
  const out = new Uint8Array(10 + h.length + body.length);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0], 0); // \x93NUMPY v1.0
  new DataView(out.buffer).setUint16(8, h.length, true);
  out.set(h, 10);
  out.set(body, 10 + h.length);
  return out;
}

/** A stored (uncompressed) zip of named members. Sizes must stay below 4 GiB (no ZIP64). */
export function encodeZip(members: [string, Uint8Array][]): Uint8Array {
  const parts: Uint8Array[] = [];
  const central: Uint8Array[] = [];
  let offset = 0;
  for (const [name, data] of members) {
    const nm = enc.encode(name);
    const crc = crc32(data) >>> 0;
    const local = new Uint8Array(30 + nm.length);
    const lv = new DataView(local.buffer);
    lv.setUint32(0, 0x04034b50, true);
    lv.setUint16(4, 20, true); // version needed
    lv.setUint32(14, crc, true);
    lv.setUint32(18, data.length, true);
    lv.setUint32(22, data.length, true);
    lv.setUint16(26, nm.length, true);
    local.set(nm, 30);
    const cd = new Uint8Array(46 + nm.length);
    const cv = new DataView(cd.buffer);
    cv.setUint32(0, 0x02014b50, true);
    cv.setUint16(4, 20, true);
    cv.setUint16(6, 20, true);
    cv.setUint32(16, crc, true);
    cv.setUint32(20, data.length, true);
    cv.setUint32(24, data.length, true);
    cv.setUint16(28, nm.length, true);
    cv.setUint32(42, offset, true);
    cd.set(nm, 46);
    parts.push(local, data);
    central.push(cd);
    offset += local.length + data.length;
  }
  const cdSize = central.reduce((s, c) => s + c.length, 0);
  const end = new Uint8Array(22);
  const ev = new DataView(end.buffer);
  ev.setUint32(0, 0x06054b50, true);
  ev.setUint16(8, members.length, true);
  ev.setUint16(10, members.length, true);
  ev.setUint32(12, cdSize, true);
  ev.setUint32(16, offset, true);
  const out = new Uint8Array(offset + cdSize + 22);
  let p = 0;
  for (const x of [...parts, ...central, end]) {
    out.set(x, p);
    p += x.length;
  }
  return out;
}

/** Encode arrays as an NPZ file (`np.load(path)[name]`). */
export function encodeNpz(arrays: Record<string, NpyArray>): Uint8Array {
  return encodeZip(Object.entries(arrays).map(([k, a]) => [`${k}.npy`, encodeNpy(a)]));
}

/**
 * Write `data` to `path` atomically: a temporary file in the same folder, then a rename.
 *
 * @example
 * ```ts
 * await writeAtomic("out/predictions.npz", encodeNpz({ target: { dtype: "f4", shape: [1, 2], data } }));
 * ```
 */
export async function writeAtomic(path: string, data: Uint8Array | string): Promise<void> {
  const tmp = `${path}.tmp-${Deno.pid}-${Math.random().toString(36).slice(2, 8)}`;
  try {
    if (typeof data === "string") await Deno.writeTextFile(tmp, data);
    else await Deno.writeFile(tmp, data);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

// pandas' float formatting writes Python's repr of the float32 value widened to float64? No: DataFrame of
// float32 writes repr(float(np.float32)) → shortest repr of the float32 value, e.g. 3.344802.
function fmtFloat32(v: number): string {
  if (Number.isNaN(v)) return "";
  // Shortest decimal that rounds back to the same float32 (as numpy's repr of float32).
  for (let p = 1; p <= 9; p++) {
    const s = v.toPrecision(p);
    if (Math.fround(Number(s)) === v) return String(Number(s));
  }
  return String(v);
}

function csvField(s: string): string {
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

/**
 * A CSV table as pandas' `DataFrame.to_csv` writes it: an empty first header cell, the index in the first
 * column, float32 values in their shortest round-trip form.
 */
export function csvTable(index: string[], columns: string[], values: Float32Array | boolean[]): string {
  const lines = ["," + columns.map(csvField).join(",")];
  const w = columns.length;
  index.forEach((name, i) => {
    const row: string[] = [csvField(name)];
    for (let j = 0; j < w; j++) {
      const v = values[i * w + j];
      row.push(typeof v === "boolean" ? (v ? "True" : "False") : fmtFloat32(v));
    }
    lines.push(row.join(","));
  });
  return lines.join("\n") + "\n";
}
