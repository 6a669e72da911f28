/**
 * Kernels: WGSL, launchers and CPU references, one file per op family.
 * @module
 */
export * from "./elementwise.ts";
export * from "./reduce.ts";
