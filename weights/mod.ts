/**
 * Checkpoint readers and writers that return `name → { dtype, shape, bytes }` and know no model:
 * PyTorch `torch.save` files (zip and legacy pickles, read by a restricted unpickler) and safetensors.
 *
 * @example
 * ```ts ignore
 * import { readTorch, toFloat32, writeSafetensors } from "./mod.ts";
 * const { tensors } = await readTorch("model_base.pt");
 * console.log(toFloat32(tensors.get("fc1.bias")!).length);
 * await writeSafetensors("model_base.safetensors", tensors);
 * ```
 *
 * @module
 */
export {
  asFloat32Entry,
  countNonFinite,
  type DType,
  DTYPE_SIZE,
  isFloat,
  type NonFinite,
  numel,
  type TensorEntry,
  toFloat32,
} from "./dtype.ts";
export { CheckpointError, RefusedGlobalError } from "./errors.ts";
export { assertFinite, describeNonFinite, type NonFiniteTensor, nonFiniteTensors } from "./finite.ts";
export {
  encodeSafetensors,
  parseSafetensors,
  readSafetensors,
  type Safetensors,
  writeSafetensors,
  type WriteSafetensorsOptions,
} from "./safetensors.ts";
export { parseTorch, readTorch, type ReadTorchOptions, type TorchCheckpoint } from "./torch.ts";
