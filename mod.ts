/**
 * he2gene: HE2Gene (Chen et al., Bioinformatics 2024) on a WebGPU tensor engine written in WGSL.
 *
 * @example
 * ```ts
 * import { createEngine, matmul, relu } from "./mod.ts";
 * const engine = await createEngine();
 * const a = engine.tensor(new Float32Array([1, 2, 3, 4]), [2, 2]);
 * console.log(await relu(matmul(a, a)).toArray());
 * ```
 * @module
 */
export * from "./engine/mod.ts";
export * from "./kernels/mod.ts";
export * from "./ops/mod.ts";
