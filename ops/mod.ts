/**
 * Ops: differentiable operations (`defineOp` and their gradient rules) over the launchers of kernels/.
 * @module
 */
export * from "./reduce.ts";
export * from "./batchnorm.ts";
export * from "./pool.ts";
export * from "./conv2d.ts";
