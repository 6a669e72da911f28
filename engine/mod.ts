/**
 * The engine: device, tensors, buffer pool, kernel declarations and dispatch. Knows nothing of histology.
 * @module
 */
export {
  createEngine,
  Engine,
  type EngineOptions,
  type EngineTexture,
  GPUFailure,
  grid,
  type TensorRange,
} from "./engine.ts";
export { type AdapterDescription, createDevice, type DeviceOptions, NoAdapterError } from "./device.ts";
export {
  type BindingDecl,
  defineKernel,
  type Kernel,
  type KernelFamily,
  single,
  type UniformType,
  type VariantParams,
  variants,
} from "./kernel.ts";
export { BufferPool, type PoolStats, sizeClass } from "./pool.ts";
export { type DType, shapeSize, Tensor } from "./tensor.ts";
export {
  backward,
  clearGraph,
  defineOp,
  isRecording,
  needsGrad,
  noGrad,
  type OpDecl,
  requiresGrad,
  Tape,
  zeroGrad,
} from "./autograd.ts";
export { checkNumerics, watchNumerics } from "./numerics.ts";
export { mulberry32 } from "./random.ts";
