/**
 * The tuning table: which kernel variant each op uses, per shape class, on one engine. Ops that have several
 * correct variants (conv2d strategies and block sizes, matmul tiles) ask {@linkcode chosenVariant} at every
 * call; without a table entry they use their built-in default for the adapter's kind (software adapters such
 * as llvmpipe, or GPUs). `he2gene tune` times the candidates an op lists and stores the fastest per
 * (op, shape class); prediction and training load that table with {@linkcode useTuning}.
 *
 * Variant ids are strings the op family parses, e.g. `blocked/t16` or `implicit_gemm/8x8`; a shape class is
 * a string the op derives from its shapes (e.g. `k3s1 c64 hw56`), coarse enough that ResNet-50's layers
 * fall into a few dozen classes.
 *
 * This module knows no file system: `model/tune_cache.ts` reads and writes tables.
 *
 * @example
 * ```ts
 * useTuning(engine, { entries: { "conv2d.fwd|k3s1 c64 hw56": "blocked/t16" } });
 * const v = chosenVariant(engine, "conv2d.fwd", "k3s1 c64 hw56"); // "blocked/t16"
 * ```
 * @module
 */
import type { Engine } from "../engine/engine.ts";

/** A table of choices: `entries["op|shape class"] = variant id`. */
export interface TuningTable {
  entries: Record<string, string>;
}

const tables = new WeakMap<Engine, TuningTable>();
/** Forced variants per op (tests, selftest and tune time one variant at a time). */
const forced = new Map<string, string>();

/** Use `table` for the ops run on `engine` (null: built-in defaults only). */
export function useTuning(engine: Engine, table: TuningTable | null): void {
  if (table) tables.set(engine, table);
  else tables.delete(engine);
}

/** The table in use on `engine`, if any. */
export function tuningOf(engine: Engine): TuningTable | undefined {
  return tables.get(engine);
}

/** The key of one entry of a {@linkcode TuningTable}. */
export const tuningKey = (op: string, shapeClass: string) => `${op}|${shapeClass}`;

/**
 * The variant `op` should use for `shapeClass` on `engine`: a forced one ({@linkcode withVariant}), else the
 * table's, else `undefined` (the op uses its default).
 */
export function chosenVariant(engine: Engine, op: string, shapeClass: string): string | undefined {
  return forced.get(op) ?? tables.get(engine)?.entries[tuningKey(op, shapeClass)];
}

/** The variant `op` is forced to ({@linkcode withVariant}), if any. */
export function forcedVariant(op: string): string | undefined {
  return forced.get(op);
}

/**
 * Run `fn` with `op` forced to `variant` on every engine (the op must support it for the shapes it meets,
 * else it throws naming the variant). Restores the previous setting afterwards, also on errors; async
 * functions keep the setting until they settle.
 */
export function withVariant<T>(op: string, variant: string, fn: () => T): T {
  const before = forced.get(op);
  forced.set(op, variant);
  const restore = () => {
    if (before === undefined) forced.delete(op);
    else forced.set(op, before);
  };
  let result: T;
  try {
    result = fn();
  } catch (e) {
    restore();
    throw e;
  }
  if (result instanceof Promise) return result.finally(restore) as T;
  restore();
  return result;
}
