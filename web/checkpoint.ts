/**
 * A checkpoint from bytes, for the page: PyTorch `.pt` (zip or legacy `torch.save`) or safetensors, read
 * by `weights/` as the CLI reads a file (`cli/checkpoint.ts`), with the gene names a safetensors file's
 * metadata carries. NaN / Inf weights are refused, naming the tensors.
 *
 * @module
 */
import type { Engine } from "../engine/engine.ts";
import { HE2Gene, type HostTensor } from "../model/mod.ts";
import { assertFinite, parseSafetensors, parseTorch, type TensorEntry, toFloat32 } from "../weights/mod.ts";

/** A model and the gene names of its checkpoint's metadata (safetensors), when present. */
export interface PageModel {
  model: HE2Gene;
  targetGenes?: string[];
  auxGenes?: string[];
  format: string;
}

/** safetensors starts with its header's length (u64 LE) and `{`; a `.pt` is a zip or a pickle. */
function isSafetensors(bytes: Uint8Array, name: string): boolean {
  if (name.toLowerCase().endsWith(".safetensors")) return true;
  return bytes.length > 9 && bytes[8] === 0x7b && bytes[6] === 0 && bytes[7] === 0;
}

function genes(meta: Record<string, string>, key: string): string[] | undefined {
  if (!meta[key]) return undefined;
  const v = JSON.parse(meta[key]);
  return Array.isArray(v) ? v.map(String) : undefined;
}

/**
 * Load a model from a checkpoint's bytes; `name` (the file's name) is used in messages.
 *
 * @example
 * ```ts ignore
 * const bytes = new Uint8Array(await (await fetch("model_base.pt")).arrayBuffer());
 * const { model } = loadCheckpoint(engine, bytes, "model_base.pt");
 * ```
 */
export function loadCheckpoint(engine: Engine, bytes: Uint8Array, name: string): PageModel {
  let entries: ReadonlyMap<string, TensorEntry>, metadata: Record<string, string> = {}, format: string;
  if (isSafetensors(bytes, name)) {
    const st = parseSafetensors(bytes, name);
    entries = st.tensors;
    metadata = st.metadata;
    format = "safetensors";
  } else {
    const ck = parseTorch(bytes, { file: name });
    entries = ck.tensors;
    format = `PyTorch ${ck.format}${ck.wrapper ? ` (under "${ck.wrapper}")` : ""}`;
  }
  assertFinite(entries, name);
  const tensors = new Map<string, HostTensor>();
  for (const [k, e] of entries) tensors.set(k, { shape: e.shape, data: toFloat32(e) });
  return {
    model: HE2Gene.fromStateDict(engine, tensors, name),
    targetGenes: genes(metadata, "target_genes"),
    auxGenes: genes(metadata, "aux_genes"),
    format,
  };
}
