/**
 * The CSV tables of HE2Gene's outputs and atomic writes (temporary name, then rename), so a failure never
 * leaves a partial file. The NPY / NPZ writers live in `npy.ts` (re-exported here).
 *
 * @module
 */
export { encodeNpy, encodeNpz, encodeZip, type NpyArray } from "./npy.ts";

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
