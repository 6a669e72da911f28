/**
 * Load an HE2Gene checkpoint — PyTorch `.pt` (HE2Gene's `model_base.pt` / `model_spat.pt`, zip or legacy)
 * or our safetensors — into a model, with the gene names its metadata carries.
 *
 * @module
 */
import type { Engine } from "../engine/engine.ts";
import { HE2Gene, type HostTensor } from "../model/mod.ts";
import {
  assertFinite,
  CheckpointError,
  countNonFinite,
  readSafetensors,
  readTorch,
  type TensorEntry,
  toFloat32,
  writeSafetensors,
} from "../weights/mod.ts";

/** A loaded checkpoint. */
export interface LoadedModel {
  model: HE2Gene;
  /** Gene names from the checkpoint's metadata (safetensors), when present. */
  targetGenes?: string[];
  auxGenes?: string[];
  format: string;
}

/**
 * The entries as float32 host arrays. Refused, naming `path` and the tensors: NaN or ±Inf in any float
 * tensor (F16, BF16, F32, F64), and F64 values beyond float32's range.
 */
function toHost(entries: ReadonlyMap<string, TensorEntry>, path: string): Map<string, HostTensor> {
  assertFinite(entries, path);
  const tensors = new Map<string, HostTensor>();
  const overflow: string[] = [];
  for (const [k, e] of entries) {
    const data = toFloat32(e);
    if (e.dtype === "F64") {
      const c = countNonFinite({ dtype: "F32", shape: e.shape, bytes: new Uint8Array(data.buffer) });
      if (c.inf) overflow.push(`${k} (${c.inf} values)`);
    }
    tensors.set(k, { shape: e.shape, data });
  }
  if (overflow.length) {
    throw new CheckpointError(
      path,
      -1,
      `expected float64 weights within float32's range (±3.4e38), found larger values in ${
        overflow.join(", ")
      }`,
    );
  }
  return tensors;
}

/** Read a checkpoint's tensors as float32 host arrays, and its metadata (non-finite weights refused). */
export async function readCheckpoint(
  path: string,
): Promise<{ tensors: Map<string, HostTensor>; metadata: Record<string, string>; format: string }> {
  if ((await Deno.stat(path).catch(() => null))?.isDirectory) {
    throw new Error(`Cannot read the checkpoint ${path}: it is a folder, not a checkpoint file`);
  }
  if (path.endsWith(".safetensors")) {
    const st = await readSafetensors(path);
    return { tensors: toHost(st.tensors, path), metadata: st.metadata, format: "safetensors" };
  }
  const ck = await readTorch(path);
  const tensors = toHost(ck.tensors, path);
  return {
    tensors,
    metadata: {},
    format: `PyTorch ${ck.format}${ck.wrapper ? ` (under "${ck.wrapper}")` : ""}`,
  };
}

function genes(meta: Record<string, string>, key: string): string[] | undefined {
  if (!meta[key]) return undefined;
  const v = JSON.parse(meta[key]);
  return Array.isArray(v) ? v.map(String) : undefined;
}

/**
 * Load a model from a checkpoint file; shape problems are reported all at once, naming the file, and
 * NaN / Inf weights are refused, naming the tensors.
 *
 * @example
 * ```ts
 * const { model, targetGenes } = await loadModel(engine, "model_base.pt");
 * ```
 */
export async function loadModel(engine: Engine, path: string): Promise<LoadedModel> {
  const { tensors, metadata, format } = await readCheckpoint(path);
  const model = HE2Gene.fromStateDict(engine, tensors, path);
  return {
    model,
    targetGenes: genes(metadata, "target_genes"),
    auxGenes: genes(metadata, "aux_genes"),
    format,
  };
}

/**
 * Save a model as safetensors (float32; `num_batches_tracked` as int64), with the model config and the gene
 * names in its metadata. Written under a temporary name, then renamed.
 *
 * @example
 * ```ts
 * await saveModel(model, "best.safetensors", { targetGenes, auxGenes });
 * ```
 */
export async function saveModel(
  model: HE2Gene,
  path: string,
  extra: { targetGenes?: string[]; auxGenes?: string[]; metadata?: Record<string, string> } = {},
): Promise<void> {
  const sd = await model.stateDict();
  const tensors = new Map<string, TensorEntry>();
  for (const [k, t] of sd) {
    if (k.endsWith("num_batches_tracked")) {
      tensors.set(k, {
        dtype: "I64",
        shape: [],
        bytes: new Uint8Array(new BigInt64Array([BigInt(t.data[0])]).buffer),
      });
    } else {
      tensors.set(k, {
        dtype: "F32",
        shape: t.shape,
        bytes: new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength),
      });
    }
  }
  const c = model.config;
  const metadata: Record<string, string> = {
    format: "he2gene",
    config: JSON.stringify({
      backbone: c.backbone,
      variant: c.variant,
      targetGenes: c.targetGenes,
      auxGenes: c.auxGenes,
    }),
    ...extra.metadata,
  };
  if (extra.targetGenes) metadata.target_genes = JSON.stringify(extra.targetGenes);
  if (extra.auxGenes) metadata.aux_genes = JSON.stringify(extra.auxGenes);
  await writeSafetensors(path, tensors, { metadata });
}
