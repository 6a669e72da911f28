/**
 * The non-finite check every checkpoint reader of the CLI applies: a tensor that holds NaN or ±Inf makes
 * every prediction the same meaningless number, so such a checkpoint is refused, naming the tensors.
 *
 * @module
 */
import { countNonFinite, numel, type TensorEntry } from "./dtype.ts";
import { CheckpointError } from "./errors.ts";

/** One tensor with non-finite values. */
export interface NonFiniteTensor {
  name: string;
  dtype: string;
  nan: number;
  inf: number;
  numel: number;
}

/** The floating-point tensors that hold NaN or ±Inf, in the map's order. */
export function nonFiniteTensors(tensors: ReadonlyMap<string, TensorEntry>): NonFiniteTensor[] {
  const bad: NonFiniteTensor[] = [];
  for (const [name, t] of tensors) {
    const c = countNonFinite(t);
    if (c.nan || c.inf) bad.push({ name, dtype: t.dtype, ...c, numel: numel(t.shape) });
  }
  return bad;
}

/** `conv1.weight (F32 [4,3,3,3]: 108 NaN of 108 values)`-style descriptions, the first `max` of them. */
export function describeNonFinite(bad: readonly NonFiniteTensor[], max = 8): string {
  const one = (b: NonFiniteTensor) => {
    const what = [b.nan ? `${b.nan} NaN` : "", b.inf ? `${b.inf} Inf` : ""].filter(Boolean).join(" and ");
    return `${b.name} (${b.dtype}: ${what} of ${b.numel} values)`;
  };
  const shown = bad.slice(0, max).map(one);
  if (bad.length > max) shown.push(`and ${bad.length - max} more tensors`);
  return shown.join(", ");
}

/**
 * Throw a {@linkcode CheckpointError} naming `file` and every tensor that holds NaN or ±Inf (with counts);
 * `what` says what the file was going to be used for.
 *
 * @example
 * ```ts
 * import { assertFinite } from "./finite.ts";
 * const w = new Float32Array([1, NaN]);
 * try {
 *   assertFinite(new Map([["conv1.weight", { dtype: "F32", shape: [2], bytes: new Uint8Array(w.buffer) }]]), "m.pt");
 * } catch (e) {
 *   console.log((e as Error).message); // m.pt: expected finite weights, found NaN or Inf in 1 tensor: conv1.weight (F32: 1 NaN of 2 values). …
 * }
 * ```
 */
export function assertFinite(tensors: ReadonlyMap<string, TensorEntry>, file: string): void {
  const bad = nonFiniteTensors(tensors);
  if (bad.length === 0) return;
  const n = bad.length;
  throw new CheckpointError(
    file,
    -1,
    `expected finite weights, found NaN or Inf in ${n} tensor${n === 1 ? "" : "s"}: ${
      describeNonFinite(bad)
    }. ` +
      `A model with non-finite weights gives meaningless predictions; this checkpoint is damaged ` +
      `(or was saved after training diverged)`,
  );
}
