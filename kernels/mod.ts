/**
 * Kernels: WGSL, launchers and CPU references, one file per op family, and the tuning table that picks
 * among a family's variants. The differentiable ops built on them are in `ops/`.
 * @module
 */
export * from "./elementwise.ts";
export * from "./reduce.ts";
export * from "./batchnorm.ts";
export * from "./pool.ts";
export * from "./layernorm.ts";
export * from "./activation.ts";
export * from "./softmax.ts";
export * from "./attention.ts";
export * from "./loss.ts";
export * from "./optim.ts";
export * from "./conv2d/mod.ts";
export * from "./matmul.ts";
export * from "./tolerance.ts";
export * from "./tuning.ts";
