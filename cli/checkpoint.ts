/**
 * Load an HE2Gene checkpoint file — PyTorch `.pt` (HE2Gene's `model_base.pt` / `model_spat.pt`, zip or
 * legacy) or our safetensors — into a model, with the gene names its metadata carries, and save a model as
 * safetensors. The conversions themselves are pipeline/checkpoint.ts's; this module reads and writes files.
 *
 * @module
 */
import type { Engine } from "../engine/engine.ts";
import type { HE2Gene, HostTensor } from "../model/mod.ts";
import { readSafetensors, readTorch, writeSafetensors } from "../weights/mod.ts";
import {
  checkpointTensors,
  type LoadedModel,
  modelCheckpoint,
  modelFromTensors,
} from "../pipeline/checkpoint.ts";

export type { LoadedModel };

/** Read a checkpoint's tensors as float32 host arrays, and its metadata (non-finite weights refused). */
export async function readCheckpoint(
  path: string,
): Promise<{ tensors: Map<string, HostTensor>; metadata: Record<string, string>; format: string }> {
  if ((await Deno.stat(path).catch(() => null))?.isDirectory) {
    throw new Error(`Cannot read the checkpoint ${path}: it is a folder, not a checkpoint file`);
  }
  if (path.endsWith(".safetensors")) {
    const st = await readSafetensors(path);
    return { tensors: checkpointTensors(st.tensors, path), metadata: st.metadata, format: "safetensors" };
  }
  const ck = await readTorch(path);
  const tensors = checkpointTensors(ck.tensors, path);
  return {
    tensors,
    metadata: {},
    format: `PyTorch ${ck.format}${ck.wrapper ? ` (under "${ck.wrapper}")` : ""}`,
  };
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
  return modelFromTensors(engine, await readCheckpoint(path), path);
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
  const { tensors, metadata } = await modelCheckpoint(model, extra);
  await writeSafetensors(path, tensors, { metadata });
}
