/**
 * Shared input checks of the NCHW kernels (batch norm, pooling).
 *
 * @module
 */
import { Tensor } from "../engine/tensor.ts";

/** Check an NCHW input; returns [N, C, H, W]. Errors name the op. */
export function checkNCHW(op: string, x: Tensor): [number, number, number, number] {
  if (!(x instanceof Tensor)) {
    throw new TypeError(`Cannot ${op}: expected a Tensor, current value is ${typeof x}`);
  }
  if (x.rank !== 4) {
    throw new RangeError(`Cannot ${op}: expected input of shape [N, C, H, W], current value is [${x.shape}]`);
  }
  const [n, c, h, w] = x.shape;
  return [n, c, h, w];
}
