/**
 * Kernels: WGSL, launchers and CPU references, one file per op family.
 * @module
 */
export * from "./elementwise.ts";
export * from "./reduce.ts";
export * from "./batchnorm.ts";
export * from "./pool.ts";
export * from "./loss.ts";
export * from "./optim.ts";
export * from "./conv2d/mod.ts";
export * from "./matmul.ts";
export * from "./tolerance.ts";
export * from "./selftest.ts";
