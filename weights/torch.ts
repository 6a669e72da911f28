/**
 * PyTorch checkpoints written by `torch.save(state_dict)`, in both formats, read without running any
 * pickled code: only the globals a state dict needs are allowed (see {@linkcode TORCH_GLOBALS}).
 *
 * - zip (PyTorch ≥ 1.6): `<folder>/data.pkl` (the pickle) and `<folder>/data/<key>` (one raw storage per
 *   key); `<folder>` is named after the file, not always `archive`. Spec: `torch/serialization.py`
 *   (`_save`, `_load`), https://github.com/pytorch/pytorch/blob/main/torch/serialization.py
 * - legacy (`_use_new_zipfile_serialization=False`): pickles of the magic number, the protocol version and
 *   sys_info, then the main pickle, then a pickle of the storage keys, then each storage as an int64
 *   element count followed by its raw bytes (`_legacy_save` / `_legacy_load` in the same file).
 *
 * Persistent ids are `('storage', torch.FloatStorage, key, location, numel[, view_metadata])`; tensors are
 * `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`.
 *
 * @module
 */
import { asFloat32Entry, type DType, DTYPE_SIZE, numel, type TensorEntry } from "./dtype.ts";
import { CheckpointError } from "./errors.ts";
import { describe, PyGlobal, unpickle } from "./pickle.ts";
import { isZip, openZip, readWholeFile } from "./zip.ts";

/** A checkpoint read by {@linkcode readTorch}. */
export interface TorchCheckpoint {
  /** State-dict key → tensor, in the order of the state dict. */
  tensors: Map<string, TensorEntry>;
  /** `"zip"` (PyTorch ≥ 1.6) or `"legacy"`. */
  format: "zip" | "legacy";
  /** The key of the checkpoint dict that held the state dict (`"state_dict"`, `"model"`, …), or null. */
  wrapper: string | null;
  /** State-dict keys whose values are not tensors (skipped). */
  skipped: string[];
}

/** Options of {@linkcode readTorch} and {@linkcode parseTorch}. */
export interface ReadTorchOptions {
  /** Convert F16, BF16 and F64 tensors to F32 (default false: keep every dtype as stored). */
  float32?: boolean;
}

/** The storage classes of `torch` and their dtypes. */
const STORAGE_DTYPES: Record<string, DType> = {
  DoubleStorage: "F64",
  FloatStorage: "F32",
  HalfStorage: "F16",
  BFloat16Storage: "BF16",
  LongStorage: "I64",
  IntStorage: "I32",
  ShortStorage: "I16",
  CharStorage: "I8",
  ByteStorage: "U8",
  BoolStorage: "BOOL",
};

/** Wrapper keys under which training scripts store the state dict. */
const WRAPPER_KEYS = ["state_dict", "model", "model_state_dict", "net"];

const LEGACY_MAGIC = 0x1950a86a20f9469cfc6cn;
const LEGACY_PROTOCOL = 1001;

/** One storage: its dtype, element count and (once read) its bytes. */
class Storage {
  bytes: Uint8Array | null = null;
  constructor(readonly key: string, readonly dtype: DType, readonly numel: number) {}
}

/** A tensor as pickled: a strided view of a storage. */
class TorchTensor {
  constructor(
    readonly storage: Storage,
    readonly offset: number,
    readonly size: number[],
    readonly stride: number[],
  ) {}
}

function ints(v: unknown, what: string): number[] {
  if (!Array.isArray(v) || !v.every((x) => typeof x === "number" && Number.isInteger(x) && x >= 0)) {
    throw new TypeError(`expected ${what} as a tuple of non-negative ints, found ${describe(v)}`);
  }
  return v as number[];
}

function rebuildTensor(args: unknown[]): TorchTensor {
  const [storage, offset, size, stride] = args;
  if (!(storage instanceof Storage)) throw new TypeError(`expected a storage, found ${describe(storage)}`);
  if (typeof offset !== "number") throw new TypeError(`expected a storage offset, found ${describe(offset)}`);
  const sz = ints(size, "size"), st = ints(stride, "stride");
  if (sz.length !== st.length) throw new TypeError(`size ${sz} and stride ${st} differ in length`);
  return new TorchTensor(storage, offset, sz, st);
}

/**
 * The globals a state dict needs, by `module.name`; every other global is refused. Storage classes are
 * markers (their `value` is the dtype); the rest are callables.
 */
export const TORCH_GLOBALS: ReadonlyMap<string, PyGlobal> = (() => {
  type Fn = (args: unknown[]) => unknown;
  const calls: [string, string, Fn][] = [
    ["collections", "OrderedDict", (args) => new Map((args[0] as [unknown, unknown][] | undefined) ?? [])],
    ["torch._utils", "_rebuild_tensor", rebuildTensor],
    ["torch._utils", "_rebuild_tensor_v2", rebuildTensor],
    ["torch._utils", "_rebuild_parameter", (args) => args[0]],
    ["torch._utils", "_rebuild_parameter_with_state", (args) => args[0]],
    // Python 3 bytes in protocol 2: _codecs.encode("…", "latin1")
    ["_codecs", "encode", (args) => Uint8Array.from(String(args[0]), (c) => c.charCodeAt(0) & 0xff)],
  ];
  const m = new Map<string, PyGlobal>();
  for (const [mod, name, fn] of calls) m.set(`${mod}.${name}`, new PyGlobal(mod, name, fn));
  for (const [name, dtype] of Object.entries(STORAGE_DTYPES)) {
    m.set(`torch.${name}`, new PyGlobal("torch", name, undefined, dtype));
  }
  return m;
})();

/** `persistent_load` for both formats: `('storage', type, key, location, numel[, view_metadata])`. */
function storageLoader(storages: Map<string, Storage>) {
  return (pid: unknown): Storage => {
    if (!Array.isArray(pid) || pid[0] !== "storage" || pid.length < 5) {
      throw new TypeError(`expected ('storage', type, key, location, numel), found ${describe(pid)}`);
    }
    const [, type, key, , n, view] = pid;
    if (!(type instanceof PyGlobal) || typeof type.value !== "string") {
      throw new TypeError(`expected a torch storage class, found ${describe(type)}`);
    }
    if (view !== undefined && view !== null) {
      throw new TypeError(`storage ${key}: storage views (PyTorch < 0.4 checkpoints) are not supported`);
    }
    if (typeof key !== "string" || typeof n !== "number" || !Number.isInteger(n) || n < 0) {
      throw new TypeError(`expected a storage key and element count, found ${describe(key)}, ${describe(n)}`);
    }
    let s = storages.get(key);
    if (!s) storages.set(key, s = new Storage(key, type.value as DType, n));
    if (s.dtype !== type.value || s.numel !== n) {
      throw new TypeError(`storage ${key} is used as ${s.numel} × ${s.dtype} and as ${n} × ${type.value}`);
    }
    return s;
  };
}

/**
 * Read a PyTorch checkpoint file (zip or legacy format).
 *
 * @example
 * ```ts ignore
 * import { readTorch, toFloat32 } from "./mod.ts";
 * const ckpt = await readTorch("model_base.pt");
 * const w = ckpt.tensors.get("fc1.weight")!; // { dtype: "F32", shape: [19699, 2048], bytes }
 * console.log(w.shape, toFloat32(w)[0]);
 * ```
 */
export async function readTorch(path: string, options: ReadTorchOptions = {}): Promise<TorchCheckpoint> {
  return parseTorch(await readWholeFile(path), { ...options, file: path });
}

/**
 * Parse a PyTorch checkpoint from memory; `file` names it in errors. Tensor bytes are views of `bytes` where
 * the storage is stored uncompressed and the tensor contiguous.
 */
export function parseTorch(bytes: Uint8Array, options: ReadTorchOptions & { file: string }): TorchCheckpoint {
  const { file } = options;
  let format: "zip" | "legacy";
  let root: unknown;
  if (isZip(bytes)) {
    format = "zip";
    root = readZipPickle(bytes, file);
  } else if (bytes.length > 0 && bytes[0] === 0x80) {
    format = "legacy";
    root = readLegacyPickle(bytes, file);
  } else {
    const head = [...bytes.subarray(0, 4)].map((b) => b.toString(16).padStart(2, "0")).join(" ");
    throw new CheckpointError(
      file,
      0,
      `expected a PyTorch checkpoint: a zip (50 4b 03 04) or a pickle (80 02), found ${
        head || "an empty file"
      }`,
    );
  }
  return collect(root, format, file, options.float32 ?? false);
}

function readZipPickle(bytes: Uint8Array, file: string): unknown {
  const zip = openZip(bytes, file);
  const pkl = [...zip.entries.keys()].filter((n) => n === "data.pkl" || n.endsWith("/data.pkl"))
    .sort((a, b) => a.length - b.length)[0];
  if (!pkl) {
    const names = [...zip.entries.keys()].slice(0, 5).join(", ");
    throw new CheckpointError(
      file,
      -1,
      `expected a zip entry <folder>/data.pkl (torch.save), found ${names || "no entries"}`,
    );
  }
  const folder = pkl.slice(0, pkl.length - "data.pkl".length);
  const order = zip.entries.has(`${folder}byteorder`)
    ? new TextDecoder().decode(zip.read(`${folder}byteorder`).bytes)
    : "little";
  if (order.trim() !== "little") {
    throw new CheckpointError(
      file,
      -1,
      `expected byteorder "little", found "${order.trim()}" (big-endian checkpoints are not supported)`,
    );
  }
  const storages = new Map<string, Storage>();
  const p = zip.read(pkl);
  const { value } = unpickle(p.bytes, 0, {
    file,
    base: p.stored ? p.offset : undefined,
    where: pkl,
    globals: TORCH_GLOBALS,
    persistentLoad: storageLoader(storages),
  });
  for (const s of storages.values()) {
    const name = `${folder}data/${s.key}`;
    if (!zip.entries.has(name)) {
      throw new CheckpointError(file, -1, `expected a zip entry ${name} for storage ${s.key}, found none`);
    }
    const e = zip.read(name);
    const want = s.numel * DTYPE_SIZE[s.dtype];
    if (e.bytes.length !== want) {
      throw new CheckpointError(
        file,
        e.offset,
        `expected ${want} bytes for storage ${name} (${s.numel} × ${s.dtype}), found ${e.bytes.length}`,
      );
    }
    s.bytes = e.bytes;
  }
  return value;
}

function readLegacyPickle(bytes: Uint8Array, file: string): unknown {
  const noGlobals = { file, base: 0, globals: new Map<string, PyGlobal>() };
  const magic = unpickle(bytes, 0, { ...noGlobals, where: "the magic-number pickle" });
  if (magic.value !== LEGACY_MAGIC) {
    throw new CheckpointError(
      file,
      0,
      `expected the legacy torch.save magic number, found ${describe(magic.value)}`,
    );
  }
  const proto = unpickle(bytes, magic.end, { ...noGlobals, where: "the protocol-version pickle" });
  if (proto.value !== LEGACY_PROTOCOL) {
    throw new CheckpointError(
      file,
      magic.end,
      `expected protocol version ${LEGACY_PROTOCOL}, found ${describe(proto.value)}`,
    );
  }
  const sys = unpickle(bytes, proto.end, { ...noGlobals, where: "the sys_info pickle" });
  if (sys.value instanceof Map && sys.value.get("little_endian") === false) {
    throw new CheckpointError(
      file,
      proto.end,
      "expected a little-endian checkpoint (big-endian ones are not supported)",
    );
  }
  const storages = new Map<string, Storage>();
  const main = unpickle(bytes, sys.end, {
    file,
    base: 0,
    where: "the main pickle",
    globals: TORCH_GLOBALS,
    persistentLoad: storageLoader(storages),
  });
  const keys = unpickle(bytes, main.end, { ...noGlobals, where: "the storage-keys pickle" });
  if (!Array.isArray(keys.value)) {
    throw new CheckpointError(
      file,
      main.end,
      `expected the list of storage keys, found ${describe(keys.value)}`,
    );
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let pos = keys.end;
  for (const key of keys.value) {
    const s = storages.get(String(key));
    if (!s) throw new CheckpointError(file, pos, `storage key ${key} is listed but no tensor uses it`);
    if (pos + 8 > bytes.length) {
      throw new CheckpointError(
        file,
        pos,
        `expected the int64 element count of storage ${key}, but the file ends at byte ${bytes.length}`,
      );
    }
    const n = Number(dv.getBigInt64(pos, true));
    if (n !== s.numel) {
      throw new CheckpointError(
        file,
        pos,
        `expected ${s.numel} elements for storage ${key}, the file says ${n}`,
      );
    }
    pos += 8;
    const len = n * DTYPE_SIZE[s.dtype];
    if (pos + len > bytes.length) {
      throw new CheckpointError(
        file,
        pos,
        `expected ${len} bytes of storage ${key} (${n} × ${s.dtype}), but the file ends at byte ${bytes.length}`,
      );
    }
    s.bytes = bytes.subarray(pos, pos + len);
    pos += len;
  }
  return main.value;
}

function collect(root: unknown, format: "zip" | "legacy", file: string, float32: boolean): TorchCheckpoint {
  if (!(root instanceof Map)) {
    throw new CheckpointError(file, -1, `expected a state dict (a dict of tensors), found ${describe(root)}`);
  }
  let dict: Map<unknown, unknown> = root, wrapper: string | null = null;
  const hasTensors = (m: Map<unknown, unknown>) => [...m.values()].some((v) => v instanceof TorchTensor);
  if (!hasTensors(root)) {
    const k = WRAPPER_KEYS.find((k) =>
      root.get(k) instanceof Map && hasTensors(root.get(k) as Map<unknown, unknown>)
    );
    if (k === undefined) {
      const keys = [...root.keys()].slice(0, 8).map(String).join(", ");
      throw new CheckpointError(
        file,
        -1,
        `expected a state dict (a dict of tensors) or a checkpoint dict holding one under ` +
          `${WRAPPER_KEYS.join("/")}, found a dict with keys ${keys || "(none)"}`,
      );
    }
    dict = root.get(k) as Map<unknown, unknown>;
    wrapper = k;
  }
  const tensors = new Map<string, TensorEntry>();
  const skipped: string[] = [];
  for (const [k, v] of dict) {
    if (!(v instanceof TorchTensor)) {
      skipped.push(String(k));
      continue;
    }
    const entry = materialize(v, String(k), file);
    tensors.set(String(k), float32 ? asFloat32Entry(entry) : entry);
  }
  return { tensors, format, wrapper, skipped };
}

/** The tensor's elements as C-contiguous bytes: a view when already contiguous, else a gathered copy. */
function materialize(t: TorchTensor, key: string, file: string): TensorEntry {
  const { storage: s, offset, size, stride } = t;
  const el = DTYPE_SIZE[s.dtype];
  const n = numel(size);
  if (!s.bytes) throw new CheckpointError(file, -1, `tensor ${key}: storage ${s.key} was never read`);
  const shape = [...size];
  if (n === 0) return { dtype: s.dtype, shape, bytes: new Uint8Array(0) };
  let last = offset;
  for (let d = 0; d < size.length; d++) last += (size[d] - 1) * stride[d];
  if (last >= s.numel) {
    throw new CheckpointError(
      file,
      -1,
      `tensor ${key}: size [${size}], stride [${stride}] at offset ${offset} reaches element ${last} ` +
        `of storage ${s.key}, which holds ${s.numel}`,
    );
  }
  let contiguous = true;
  for (let d = size.length - 1, want = 1; d >= 0; d--) {
    if (size[d] !== 1 && stride[d] !== want) contiguous = false;
    want *= size[d];
  }
  if (contiguous) return { dtype: s.dtype, shape, bytes: s.bytes.subarray(offset * el, (offset + n) * el) };
  // Odometer over the indices in C order: x[i0, …, ik] = storage[offset + Σ i_d · stride_d].
  const out = new Uint8Array(n * el);
  const idx = new Array(size.length).fill(0);
  let src = offset;
  for (let i = 0; i < n; i++) {
    out.set(s.bytes.subarray(src * el, src * el + el), i * el);
    for (let d = size.length - 1; d >= 0; d--) {
      if (++idx[d] < size[d]) {
        src += stride[d];
        break;
      }
      src -= (size[d] - 1) * stride[d];
      idx[d] = 0;
    }
  }
  return { dtype: s.dtype, shape, bytes: out };
}
