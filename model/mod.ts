/**
 * Networks built from ops and kernels: the ResNet backbone and the HE2Gene heads. Imports `engine/`,
 * `kernels/` and `ops/` only.
 *
 * @module
 */
export * from "./resnet.ts";
export * from "./he2gene.ts";
export * from "./metrics.ts";
export * from "./train.ts";
export * from "./encoder.ts";
export * from "./vit.ts";
