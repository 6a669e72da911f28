/**
 * safetensors: an 8-byte little-endian header length N, N bytes of JSON
 * `{ name: { dtype, shape, data_offsets: [begin, end] }, "__metadata__": { string: string } }`, then the
 * tensor bytes, offsets relative to the end of the header, covering the data without holes or overlaps.
 *
 * Spec: https://huggingface.co/docs/safetensors (format section) and
 * https://github.com/huggingface/safetensors#format
 *
 * @module
 */
import { DTYPE_SIZE, isDType, numel, type TensorEntry } from "./dtype.ts";
import { CheckpointError } from "./errors.ts";
import { readWholeFile } from "./zip.ts";

/** A safetensors file: its tensors (in header order) and its `__metadata__`. */
export interface Safetensors {
  tensors: Map<string, TensorEntry>;
  metadata: Record<string, string>;
}

/** Headers larger than this are refused (the reference implementation's limit is 100 MB). */
const MAX_HEADER = 100_000_000;

/**
 * Read a safetensors file.
 *
 * @example
 * ```ts ignore
 * import { readSafetensors } from "./safetensors.ts";
 * const { tensors, metadata } = await readSafetensors("model_base.safetensors");
 * console.log(tensors.get("fc1.weight")?.shape, JSON.parse(metadata.target_genes ?? "[]").length);
 * ```
 */
export async function readSafetensors(path: string): Promise<Safetensors> {
  return parseSafetensors(await readWholeFile(path), path);
}

/** Parse safetensors bytes; `file` names them in errors. Tensor bytes are views of `bytes`. */
export function parseSafetensors(bytes: Uint8Array, file: string): Safetensors {
  if (bytes.length < 8) {
    throw new CheckpointError(
      file,
      0,
      `expected an 8-byte header length, but the file has ${bytes.length} bytes`,
    );
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = dv.getBigUint64(0, true);
  if (n > BigInt(Math.min(MAX_HEADER, bytes.length - 8))) {
    throw new CheckpointError(
      file,
      0,
      `expected a header length of at most ${Math.min(MAX_HEADER, bytes.length - 8)} bytes, found ${n}`,
    );
  }
  const start = 8 + Number(n);
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, start)));
  } catch (e) {
    throw new CheckpointError(file, 8, `expected a UTF-8 JSON header of ${n} bytes: ${(e as Error).message}`);
  }
  if (!header || typeof header !== "object" || Array.isArray(header)) {
    throw new CheckpointError(file, 8, "expected the header to be a JSON object");
  }
  const data = bytes.subarray(start);
  const tensors = new Map<string, TensorEntry>();
  let metadata: Record<string, string> = {};
  const spans: [number, number, string][] = [];
  for (const [name, info] of Object.entries(header as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (!info || typeof info !== "object" || Object.values(info).some((v) => typeof v !== "string")) {
        throw new CheckpointError(file, 8, "expected __metadata__ to map strings to strings");
      }
      metadata = { ...(info as Record<string, string>) };
      continue;
    }
    const { dtype, shape, data_offsets: off } = (info ?? {}) as Record<string, unknown>;
    if (!isDType(dtype)) {
      throw new CheckpointError(
        file,
        8,
        `tensor ${name}: expected a known dtype, found ${JSON.stringify(dtype)}`,
      );
    }
    if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
      throw new CheckpointError(
        file,
        8,
        `tensor ${name}: expected a shape of non-negative ints, found ${JSON.stringify(shape)}`,
      );
    }
    if (
      !Array.isArray(off) || off.length !== 2 || !off.every((d) => Number.isInteger(d) && d >= 0) ||
      off[0] > off[1]
    ) {
      throw new CheckpointError(
        file,
        8,
        `tensor ${name}: expected data_offsets [begin, end], found ${JSON.stringify(off)}`,
      );
    }
    const want = numel(shape) * DTYPE_SIZE[dtype];
    if (off[1] - off[0] !== want) {
      throw new CheckpointError(
        file,
        start + off[0],
        `tensor ${name}: expected ${want} bytes for ${dtype} [${shape}], data_offsets span ${
          off[1] - off[0]
        }`,
      );
    }
    if (off[1] > data.length) {
      throw new CheckpointError(
        file,
        start + off[0],
        `tensor ${name}: expected data up to byte ${
          start + off[1]
        }, but the file ends at byte ${bytes.length}`,
      );
    }
    tensors.set(name, { dtype, shape: [...shape], bytes: data.subarray(off[0], off[1]) });
    spans.push([off[0], off[1], name]);
  }
  // The data must be covered exactly: no holes, no overlaps, nothing after the last tensor.
  spans.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let end = 0;
  for (const [b, e, name] of spans) {
    if (b !== end) {
      throw new CheckpointError(
        file,
        start + end,
        `tensor ${name}: expected data to begin at ${end}, found ${b} (a hole or overlap)`,
      );
    }
    end = e;
  }
  if (end !== data.length) {
    throw new CheckpointError(
      file,
      start + end,
      `expected the file to end after the last tensor, found ${data.length - end} more bytes`,
    );
  }
  return { tensors, metadata };
}

/** Options of {@linkcode writeSafetensors} and {@linkcode encodeSafetensors}. */
export interface WriteSafetensorsOptions {
  /** `__metadata__`: strings only (store JSON as a string). */
  metadata?: Record<string, string>;
}

/**
 * The header and the data chunks of a safetensors file, in file order. Tensors are laid out by decreasing
 * element size (stable), so every tensor is aligned to its element size when the header is padded to 8;
 * the header lists them in the map's order.
 */
export function encodeSafetensors(
  tensors: ReadonlyMap<string, TensorEntry>,
  options: WriteSafetensorsOptions = {},
): Uint8Array[] {
  const names = [...tensors.keys()];
  const order = names.map((n, i) => [n, i] as const).sort((a, b) =>
    DTYPE_SIZE[tensors.get(b[0])!.dtype] - DTYPE_SIZE[tensors.get(a[0])!.dtype] || a[1] - b[1]
  );
  const offsets = new Map<string, [number, number]>();
  let pos = 0;
  for (const [name] of order) {
    const t = tensors.get(name)!;
    const want = numel(t.shape) * DTYPE_SIZE[t.dtype];
    if (t.bytes.length !== want) {
      throw new RangeError(
        `Cannot write tensor ${name}: ${t.dtype} [${t.shape}] needs ${want} bytes, got ${t.bytes.length}`,
      );
    }
    offsets.set(name, [pos, pos + want]);
    pos += want;
  }
  const header: Record<string, unknown> = {};
  if (options.metadata) {
    for (const [k, v] of Object.entries(options.metadata)) {
      if (typeof v !== "string") {
        throw new TypeError(`Cannot write metadata ${k}: expected a string, got ${typeof v}`);
      }
    }
    header.__metadata__ = options.metadata;
  }
  for (const name of names) {
    if (name === "__metadata__") throw new RangeError("Cannot write a tensor named __metadata__");
    const t = tensors.get(name)!;
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: offsets.get(name) };
  }
  let json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  if (padded !== json.length) {
    const p = new Uint8Array(padded).fill(0x20); // spaces are valid JSON whitespace
    p.set(json);
    json = p;
  }
  const len = new Uint8Array(8);
  new DataView(len.buffer).setBigUint64(0, BigInt(json.length), true);
  return [len, json, ...order.map(([name]) => tensors.get(name)!.bytes)];
}

/**
 * Write a safetensors file. It is written under a temporary name in the same folder and renamed when
 * complete, so a failed write leaves no partial file at `path`.
 *
 * @example
 * ```ts ignore
 * import { writeSafetensors } from "./safetensors.ts";
 * const w = new Float32Array([1, 2, 3, 4]);
 * await writeSafetensors("w.safetensors", new Map([["w", { dtype: "F32", shape: [2, 2], bytes: new Uint8Array(w.buffer) }]]), {
 *   metadata: { target_genes: JSON.stringify(["GAPDH", "ACTB"]) },
 * });
 * ```
 */
export async function writeSafetensors(
  path: string,
  tensors: ReadonlyMap<string, TensorEntry>,
  options: WriteSafetensorsOptions = {},
): Promise<void> {
  const chunks = encodeSafetensors(tensors, options);
  const tmp = `${path}.tmp-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
  const f = await Deno.open(tmp, { write: true, createNew: true });
  try {
    for (const c of chunks) {
      for (let off = 0; off < c.length;) off += await f.write(c.subarray(off));
    }
    f.close();
    await Deno.rename(tmp, path);
  } catch (e) {
    try {
      f.close();
    } catch { /* already closed */ }
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}
