/**
 * Differentiable ops: each declares its forward and its gradient rule with `defineOp` (engine/autograd.ts)
 * and runs the launchers of `kernels/`. One file per op family.
 * @module
 */
export * from "./elementwise.ts";
export * from "./reduce.ts";
export * from "./loss.ts";
export * from "./matmul.ts";
export * from "./conv2d.ts";
export * from "./batchnorm.ts";
export * from "./pool.ts";
export * from "./transformer.ts";
export * from "./shape.ts";
export * from "./selftest.ts";
