/** Paths and expected values of tests/fixtures/weights (written by make_fixtures.py). */
import { type TensorEntry, toFloat32 } from "../../weights/mod.ts";
import { assertEquals } from "../helpers.ts";

/** Absolute path of a fixture file. */
export function fixture(name: string): string {
  return new URL(`../fixtures/weights/${name}`, import.meta.url).pathname;
}

/** What make_fixtures.py recorded for one tensor. */
export interface Expected {
  dtype: string;
  shape: number[];
  hex: string;
  values: (number | string)[];
}

/** file → key → expected tensor. */
export const EXPECTED: Record<string, Record<string, Expected>> = JSON.parse(
  Deno.readTextFileSync(fixture("expected.json")),
);

export function hex(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

/** Exact comparison of a read tensor with the recorded one: dtype, shape, bytes, and float32 values. */
export function assertTensor(key: string, got: TensorEntry | undefined, want: Expected): void {
  if (!got) throw new Error(`missing tensor ${key}`);
  assertEquals(got.dtype, want.dtype, `${key}: dtype`);
  assertEquals(got.shape, want.shape, `${key}: shape`);
  assertEquals(hex(got.bytes), want.hex, `${key}: bytes`);
  if (got.dtype === "I64") {
    const v = new BigInt64Array(got.bytes.slice().buffer);
    assertEquals(Array.from(v, String), want.values, `${key}: int64 values`);
  } else if (got.dtype !== "F64") {
    assertEquals(Array.from(toFloat32(got)), want.values, `${key}: values as float32`);
  }
}
