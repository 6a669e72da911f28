/**
 * Tensors: a shape, a dtype and a GPU buffer from the engine's pool. Data stays on the GPU until
 * `toArray()` is awaited. `reshape` shares storage (reference counted); `dispose()` gives the buffer back.
 *
 * @module
 */
// A cycle (autograd imports Tensor): safe, since neither module uses the other at import time.
import { backward as backpropagate } from "./autograd.ts";
import type { Engine } from "./engine.ts";
import type { PooledBuffer } from "./pool.ts";

/** Element types. Only float32 is computed on today; f16 storage is reserved. */
export type DType = "f32" | "f16";

/** Bytes per element of a dtype. */
export const BYTES: Record<DType, number> = { f32: 4, f16: 2 };

/** Reference-counted GPU storage shared by a tensor and its reshapes. */
export interface Storage {
  readonly buf: PooledBuffer;
  /** Bytes in use (≤ buf.bytes). */
  readonly bytes: number;
  refs: number;
}

let nextTensorId = 1;

/** Product of a shape's dimensions (1 for a scalar). */
export function shapeSize(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Throw a `TypeError` unless `shape` is a list of non-negative integers. */
export function checkShape(shape: readonly number[], op: string): void {
  if (!Array.isArray(shape) || shape.some((d) => !Number.isInteger(d) || d < 0)) {
    throw new TypeError(`Cannot ${op}: shape must be non-negative integers, current value is [${shape}]`);
  }
}

/**
 * A float32 tensor on the GPU.
 *
 * @example
 * ```ts
 * import { createEngine } from "../mod.ts";
 * const engine = await createEngine();
 * const t = engine.tensor(new Float32Array([1, 2, 3, 4]), [2, 2]);
 * console.log(t.shape, await t.toArray());
 * t.dispose();
 * ```
 */
export class Tensor {
  /** Dimensions, outermost first. */
  readonly shape: readonly number[];
  /** Number of elements. */
  readonly size: number;
  readonly dtype: DType;
  /** Unique id, shown in traces and errors. */
  readonly id: number;
  /** Leaf tensors with `requiresGrad` receive `.grad` from `backward(loss)` (PyTorch semantics). */
  requiresGrad = false;
  /** Accumulated gradient of a leaf after `backward`; cleared by an optimizer's `zeroGrad()`. */
  grad: Tensor | null = null;
  #storage: Storage | null;

  constructor(readonly engine: Engine, storage: Storage, shape: readonly number[], dtype: DType = "f32") {
    this.shape = Object.freeze([...shape]);
    this.size = shapeSize(shape);
    this.dtype = dtype;
    this.#storage = storage;
    this.id = nextTensorId++;
  }

  /** Rank (number of dimensions). */
  get rank(): number {
    return this.shape.length;
  }

  /** True once `dispose()` was called. */
  get disposed(): boolean {
    return this.#storage === null;
  }

  /** The storage; throws a clear error if the tensor was released. */
  get storage(): Storage {
    if (!this.#storage) {
      throw new Error(
        `Cannot use tensor #${this.id} with shape [${this.shape}]: it was already released (dispose() or a scope ended)`,
      );
    }
    return this.#storage;
  }

  /** The GPU buffer holding the data (may be larger than the tensor). */
  get buffer(): GPUBuffer {
    return this.storage.buf.buffer;
  }

  /** Bytes of data (size × bytes per element). */
  get bytes(): number {
    return this.size * BYTES[this.dtype];
  }

  /** Read the data back to the CPU (one GPU round trip, ≥ 10 ms in Deno: call rarely). */
  toArray(): Promise<Float32Array> {
    return this.engine.read(this);
  }

  /** A tensor with the same data and another shape of the same size (no copy). */
  reshape(shape: readonly number[]): Tensor {
    checkShape(shape.map((d) => (d === -1 ? 0 : d)), "reshape");
    const st = this.storage;
    let s = [...shape];
    const infer = s.indexOf(-1);
    if (infer >= 0) {
      const rest = shapeSize(s.filter((_, i) => i !== infer));
      s[infer] = rest === 0 ? 0 : this.size / rest;
      s = s.map((d) => Math.round(d));
    }
    if (shapeSize(s) !== this.size) {
      throw new RangeError(
        `Cannot reshape tensor of shape [${this.shape}] (${this.size} elements) to [${shape}]`,
      );
    }
    st.refs++;
    return this.engine.wrap(st, s, this.dtype);
  }

  /**
   * Back-propagate from this tensor (usually a scalar loss): every leaf with `requiresGrad` that it depends
   * on gets `.grad` (accumulated, as in PyTorch). Consumes the recorded graph.
   */
  backward(): Promise<void> {
    return backpropagate(this);
  }

  /** Exclude this tensor from the enclosing scopes' cleanup. Returns the tensor. */
  keep(): this {
    this.engine.keep(this);
    return this;
  }

  /** Release the GPU buffer (back to the pool once no reshape shares it). Idempotent. */
  dispose(): void {
    const st = this.#storage;
    if (!st) return;
    this.#storage = null;
    this.engine.releaseStorage(st);
  }

  toString(): string {
    return `Tensor#${this.id}[${this.shape}]${this.disposed ? " (disposed)" : ""}`;
  }
}
