/**
 * Checkpoint readers and writers (PyTorch zip / legacy pickles, safetensors) that return
 * `name → { dtype, shape, bytes }` and know no model. (Filled by the checkpoint issue; nothing is
 * exported yet.)
 *
 * @module
 */
export {};
