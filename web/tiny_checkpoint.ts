/**
 * A tiny HE2Gene-Base checkpoint (TINY backbone, random weights of a fixed seed) written as safetensors,
 * for the browser tests and the screenshot: no trained weights ship with he2gene.
 *
 * @module
 */
import { createEngine } from "../engine/engine.ts";
import { HE2Gene, TINY } from "../model/mod.ts";
import { type TensorEntry, writeSafetensors } from "../weights/mod.ts";

/**
 * Write the checkpoint to `path`: 3 target and 5 aux genes (`genes` sets how many and their names, which
 * then go in its metadata as `he2gene convert` writes them), seed 1.
 *
 * @example
 * ```ts ignore
 * await tinyCheckpoint("/tmp/tiny.safetensors");
 * ```
 */
export async function tinyCheckpoint(
  path: string,
  genes?: { target: string[]; aux: string[] },
): Promise<void> {
  const engine = await createEngine();
  const model = HE2Gene.init(engine, {
    backbone: TINY,
    variant: "base",
    targetGenes: genes?.target.length ?? 3,
    auxGenes: genes?.aux.length ?? 5,
  }, 1);
  const tensors = new Map<string, TensorEntry>();
  for (const [k, t] of await model.stateDict()) {
    tensors.set(
      k,
      k.endsWith("num_batches_tracked")
        ? { dtype: "I64", shape: [], bytes: new Uint8Array(new BigInt64Array([BigInt(t.data[0])]).buffer) }
        : {
          dtype: "F32",
          shape: t.shape,
          bytes: new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength),
        },
    );
  }
  const metadata: Record<string, string> = genes
    ? { target_genes: JSON.stringify(genes.target), aux_genes: JSON.stringify(genes.aux) }
    : {};
  await writeSafetensors(path, tensors, { metadata });
  model.dispose();
  engine.destroy();
}
