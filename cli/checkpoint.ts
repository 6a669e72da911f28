/**
 * Load an HE2Gene checkpoint — PyTorch `.pt` (HE2Gene's `model_base.pt` / `model_spat.pt`, zip or legacy)
 * or our safetensors — into a model, with the gene names its metadata carries.
 *
 * @module
 */
import type { Engine } from "../engine/engine.ts";
import { HE2Gene, type HostTensor } from "../model/mod.ts";
import { readSafetensors, readTorch, type TensorEntry, toFloat32, writeSafetensors } from "../weights/mod.ts";

/** A loaded checkpoint. */
export interface LoadedModel {
  model: HE2Gene;
  /** Gene names from the checkpoint's metadata (safetensors), when present. */
  targetGenes?: string[];
  auxGenes?: string[];
  format: string;
}

/** Read a checkpoint's tensors as float32 host arrays, and its metadata. */
export async function readCheckpoint(
  path: string,
): Promise<{ tensors: Map<string, HostTensor>; metadata: Record<string, string>; format: string }> {
  const tensors = new Map<string, HostTensor>();
  if (path.endsWith(".safetensors")) {
    const st = await readSafetensors(path);
    for (const [k, e] of st.tensors) tensors.set(k, { shape: e.shape, data: toFloat32(e) });
    return { tensors, metadata: st.metadata, format: "safetensors" };
  }
  const ck = await readTorch(path);
  for (const [k, e] of ck.tensors) tensors.set(k, { shape: e.shape, data: toFloat32(e) });
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
 * Load a model from a checkpoint file; shape problems are reported all at once, naming the file.
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
