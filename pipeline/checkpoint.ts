/**
 * HE2Gene checkpoints as models, in memory: the tensors of a PyTorch `.pt` (HE2Gene's `model_base.pt` /
 * `model_spat.pt`, zip or legacy) or of our safetensors into a model with the gene names its metadata
 * carries, and a model into the tensors and metadata of a safetensors file. Files are the caller's
 * (cli/checkpoint.ts reads and writes them).
 *
 * @module
 */
import type { Engine } from "../engine/engine.ts";
import { EncoderHeads, HE2Gene, HEAD_KINDS, type HeadKind, type HostTensor } from "../model/mod.ts";
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
  if (ck.metadata[ENCODER_META_KEY] !== undefined) {
    throw new Error(
      `Cannot load ${file} as an HE2Gene model: it holds heads trained on ${
        ck.metadata["he2gene.unfreeze_last"] !== undefined
          ? `the last ${ck.metadata["he2gene.unfreeze_last"]} fine-tuned block(s) of a`
          : "a frozen"
      } ${encoderRecord(ck.metadata, file).kind} encoder, whose other weights it does not carry (load it ` +
        `with its encoder: predict-patches / predict-slide --encoder-weights FILE)`,
    );
  }
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

/** The metadata key of a checkpoint of heads on a frozen encoder: an {@linkcode EncoderRecord} as JSON. */
export const ENCODER_META_KEY = "he2gene.encoder";

/**
 * The encoder heads were trained on, as their checkpoint records it (its weights are not copied: ViT-L is
 * 1.2 GB): enough to find the weights file again, check it is the same, and preprocess as in training.
 */
export interface EncoderRecord {
  /** `--encoder`. */
  kind: "resnet50" | "he2gene" | "timm";
  /** e.g. "resnet50 (torchvision)". */
  name: string;
  /** Feature length D. */
  dim: number;
  /** The weights file: its path when training (absolute), size in bytes, and fingerprint. */
  weights: { name: string; path: string; size: number; sha256: string; hashed: string };
  /** timm's config.json content (timm only). */
  config?: unknown;
  /** What the encoder's images are: side, normalisation. */
  preprocess: { inputSize: number; mean: number[]; std: number[] };
}

/**
 * The encoder record of a heads checkpoint's metadata (an Error naming `file` when it is not one).
 *
 * @example
 * ```ts
 * const rec = encoderRecord(ck.metadata, "best.safetensors"); // rec.weights.path, rec.preprocess
 * ```
 */
export function encoderRecord(meta: Record<string, string>, file = "checkpoint"): EncoderRecord {
  let r: EncoderRecord;
  try {
    r = JSON.parse(meta[ENCODER_META_KEY]);
  } catch (e) {
    throw new Error(
      `Cannot read ${file}: its ${ENCODER_META_KEY} metadata is not JSON (${(e as Error).message})`,
    );
  }
  if (!r || !["resnet50", "he2gene", "timm"].includes(r.kind) || typeof r.weights?.size !== "number") {
    throw new Error(`Cannot read ${file}: its ${ENCODER_META_KEY} metadata is not an encoder record`);
  }
  return r;
}

/** The head kind a heads checkpoint's metadata names (`head`). */
export function headKindOf(meta: Record<string, string>, file = "checkpoint"): HeadKind {
  const h = meta.head as HeadKind;
  if (!HEAD_KINDS.includes(h)) {
    throw new Error(`Cannot read ${file}: its head metadata is ${meta.head}, not ${HEAD_KINDS.join(" | ")}`);
  }
  return h;
}

/**
 * Heads on a frozen encoder as safetensors entries (float32) and metadata: `format` "he2gene-heads", `head`,
 * `config`, the gene names, and {@linkcode ENCODER_META_KEY} with the encoder record.
 *
 * @example
 * ```ts
 * const { tensors, metadata } = await headsCheckpoint(heads, { encoder: record, targetGenes, auxGenes });
 * ```
 */
export async function headsCheckpoint(
  model: EncoderHeads,
  extra: {
    encoder: EncoderRecord;
    targetGenes?: string[];
    auxGenes?: string[];
    metadata?: Record<string, string>;
  },
): Promise<{ tensors: Map<string, TensorEntry>; metadata: Record<string, string> }> {
  const tensors = new Map<string, TensorEntry>();
  for (const [k, t] of await model.stateDict()) {
    tensors.set(k, {
      dtype: "F32",
      shape: t.shape,
      bytes: new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength),
    });
  }
  const metadata: Record<string, string> = {
    format: "he2gene-heads",
    head: model.config.head,
    config: JSON.stringify(model.config),
    [ENCODER_META_KEY]: JSON.stringify(extra.encoder),
    ...extra.metadata,
  };
  if (extra.targetGenes) metadata.target_genes = JSON.stringify(extra.targetGenes);
  if (extra.auxGenes) metadata.aux_genes = JSON.stringify(extra.auxGenes);
  return { tensors, metadata };
}

/**
 * Heads from a heads checkpoint's tensors, with `encoder` for `predict` (null: features only).
 *
 * @example
 * ```ts
 * const { model } = headsFromTensors(engine, await readCheckpoint("best.safetensors"), null, "best.safetensors");
 * const p = model.predictFeatures(features); // (N, D) → target, aux, tumorProb
 * ```
 */
export function headsFromTensors(
  engine: Engine,
  ck: { tensors: Map<string, HostTensor>; metadata: Record<string, string> },
  encoder: EncoderHeads["encoder"],
  file: string,
): { model: EncoderHeads; targetGenes?: string[]; auxGenes?: string[] } {
  return {
    model: EncoderHeads.fromStateDict(engine, ck.tensors, {
      head: headKindOf(ck.metadata, file),
      encoder,
      file,
    }),
    targetGenes: genes(ck.metadata, "target_genes"),
    auxGenes: genes(ck.metadata, "aux_genes"),
  };
}
