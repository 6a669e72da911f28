/**
 * Differentiable ops: `defineOp` declarations and their gradient rules, over the launchers of kernels/.
 * @module
 */
export * from "./conv2d.ts";
