/**
 * Networks built from kernels: the ResNet backbone, HE2Gene's heads and losses, training and prediction.
 * Imports `engine/` and `kernels/` only. (Filled by the model issue; nothing is exported yet.)
 *
 * @module
 */
export {};
