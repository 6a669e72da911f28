/**
 * HE2Gene checkpoints as models, in memory: the tensors of a PyTorch `.pt` (HE2Gene's `model_base.pt` /
 * `model_spat.pt`, zip or legacy) or of our safetensors into a model with the gene names its metadata
 * carries, and a model into the tensors and metadata of a safetensors file. Files are the caller's
 * (cli/checkpoint.ts reads and writes them).
 *
 * @module
 */
import type { Engine } from "../engine/engine.ts";
import { HE2Gene, type HostTensor } from "../model/mod.ts";
import {
  assertFinite,
  CheckpointError,
  countNonFinite,
  parseSafetensors,
  parseTorch,
  type TensorEntry,
  toFloat32,
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
 * The entries as float32 host arrays. Refused, naming `file` and the tensors: NaN or ±Inf in any float
 * tensor (F16, BF16, F32, F64), and F64 values beyond float32's range.
 *
 * @example
 * ```ts
 * const host = checkpointTensors(parseSafetensors(bytes, "best.safetensors").tensors, "best.safetensors");
 * ```
 */
export function checkpointTensors(
  entries: ReadonlyMap<string, TensorEntry>,
  file: string,
): Map<string, HostTensor> {
  assertFinite(entries, file);
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
      file,
      -1,
      `expected float64 weights within float32's range (±3.4e38), found larger values in ${
        overflow.join(", ")
      }`,
    );
  }
  return tensors;
}

function genes(meta: Record<string, string>, key: string): string[] | undefined {
  if (!meta[key]) return undefined;
  const v = JSON.parse(meta[key]);
  return Array.isArray(v) ? v.map(String) : undefined;
}

/**
 * A model from a checkpoint's host tensors and metadata; shape problems are reported all at once, naming
 * `file`.
 */
export function modelFromTensors(
  engine: Engine,
  ck: { tensors: Map<string, HostTensor>; metadata: Record<string, string>; format: string },
  file: string,
): LoadedModel {
  return {
    model: HE2Gene.fromStateDict(engine, ck.tensors, file),
    targetGenes: genes(ck.metadata, "target_genes"),
    auxGenes: genes(ck.metadata, "aux_genes"),
    format: ck.format,
  };
}

/**
 * Safetensors by its name, or by its header (a u64 LE length whose high bytes are 0, then `{`) when the name
 * says nothing (a URL in the browser); else PyTorch's `torch.save` (a zip or a pickle).
 */
function isSafetensors(bytes: Uint8Array, name: string): boolean {
  if (name.toLowerCase().endsWith(".safetensors")) return true;
  return bytes.length > 9 && bytes[8] === 0x7b && bytes[6] === 0 && bytes[7] === 0;
}

/**
 * Parse a checkpoint's bytes (safetensors by name or header, see `isSafetensors`; else PyTorch's `torch.save`) to
 * float32 host tensors and metadata; NaN / Inf weights are refused, naming `name` and the tensors.
 */
export function parseCheckpoint(
  bytes: Uint8Array,
  name: string,
): { tensors: Map<string, HostTensor>; metadata: Record<string, string>; format: string } {
  if (isSafetensors(bytes, name)) {
    const st = parseSafetensors(bytes, name);
    return { tensors: checkpointTensors(st.tensors, name), metadata: st.metadata, format: "safetensors" };
  }
  const ck = parseTorch(bytes, { file: name });
  return {
    tensors: checkpointTensors(ck.tensors, name),
    metadata: {},
    format: `PyTorch ${ck.format}${ck.wrapper ? ` (under "${ck.wrapper}")` : ""}`,
  };
}

/**
 * Load a model from a checkpoint's bytes (see {@linkcode parseCheckpoint}), with the gene names its
 * metadata carries.
 *
 * @example
 * ```ts
 * const { model, targetGenes } = loadCheckpoint(engine, bytes, "model_base.pt");
 * ```
 */
export function loadCheckpoint(engine: Engine, bytes: Uint8Array, name: string): LoadedModel {
  return modelFromTensors(engine, parseCheckpoint(bytes, name), name);
}

/**
 * A model's state dict as safetensors entries (float32; `num_batches_tracked` as int64) and the metadata
 * he2gene writes with them: the model config and the gene names. `encodeSafetensors` or
 * `writeSafetensors` (weights/) makes the file.
 *
 * @example
 * ```ts
 * const { tensors, metadata } = await modelCheckpoint(model, { targetGenes, auxGenes });
 * const chunks = encodeSafetensors(tensors, { metadata });
 * ```
 */
export async function modelCheckpoint(
  model: HE2Gene,
  extra: { targetGenes?: string[]; auxGenes?: string[]; metadata?: Record<string, string> } = {},
): Promise<{ tensors: Map<string, TensorEntry>; metadata: Record<string, string> }> {
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
  return { tensors, metadata };
}
