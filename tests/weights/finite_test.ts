/** The non-finite check of checkpoint tensors: every float dtype, by bit pattern, and the readers that use it. */
import { join } from "node:path";
import { readCheckpoint } from "../../cli/checkpoint.ts";
import {
  assertFinite,
  CheckpointError,
  countNonFinite,
  type DType,
  nonFiniteTensors,
  type TensorEntry,
  writeSafetensors,
} from "../../weights/mod.ts";
import { assertEquals, assertRejects, assertThrows } from "../helpers.ts";
import { EXPECTED, fixture } from "./fixtures.ts";

const entry = (dtype: DType, words: ArrayLike<number>, bits: 16 | 32 | 64): TensorEntry => {
  const bytes = bits === 16
    ? new Uint8Array(Uint16Array.from(words).buffer)
    : bits === 32
    ? new Uint8Array(Uint32Array.from(words).buffer)
    : new Uint8Array(Float64Array.from(words).buffer);
  return { dtype, shape: [bytes.length / (bits / 8)], bytes };
};

Deno.test("countNonFinite tells NaN from Inf in every float dtype and ignores integers", () => {
  const f32 = new Float32Array([1, NaN, Infinity, -Infinity, -0, 3.4e38, 1e-45]);
  assertEquals(countNonFinite({ dtype: "F32", shape: [7], bytes: new Uint8Array(f32.buffer) }), {
    nan: 1,
    inf: 2,
  });
  // F16: 0x7c00 +Inf, 0xfc00 −Inf, 0x7e00 NaN, 0x7bff max finite, 0x0001 subnormal.
  assertEquals(countNonFinite(entry("F16", [0x7c00, 0xfc00, 0x7e00, 0x7bff, 0x0001], 16)), {
    nan: 1,
    inf: 2,
  });
  // BF16: 0x7f80 +Inf, 0xff81 NaN (negative, lowest mantissa bit), 0x7f7f max finite.
  assertEquals(countNonFinite(entry("BF16", [0x7f80, 0xff81, 0x7f7f, 0x3f80], 16)), { nan: 1, inf: 1 });
  // F64: a NaN whose mantissa bits are all in the low word, −Inf, and values beyond float32's range.
  const f64 = new Float64Array([1e300, -Infinity, 0]);
  new Uint32Array(f64.buffer).set([1, 0x7ff00000], 4);
  assertEquals(countNonFinite({ dtype: "F64", shape: [3], bytes: new Uint8Array(f64.buffer) }), {
    nan: 1,
    inf: 1,
  });
  for (const dtype of ["I64", "I32", "I16", "I8", "U8", "BOOL"] as const) {
    assertEquals(countNonFinite({ dtype, shape: [8], bytes: new Uint8Array(8).fill(0xff) }), {
      nan: 0,
      inf: 0,
    });
  }
  assertEquals(countNonFinite({ dtype: "F32", shape: [0], bytes: new Uint8Array(0) }), { nan: 0, inf: 0 });
});

Deno.test("countNonFinite reads unaligned views (safetensors data need not be aligned)", () => {
  const buf = new Uint8Array(1 + 12);
  new DataView(buf.buffer).setFloat32(1 + 4, NaN, true);
  new DataView(buf.buffer).setFloat32(1 + 8, 2, true);
  assertEquals(countNonFinite({ dtype: "F32", shape: [3], bytes: buf.subarray(1) }), { nan: 1, inf: 0 });
});

Deno.test("assertFinite names the file and every bad tensor with its counts", () => {
  const t = new Map<string, TensorEntry>([
    ["conv1.weight", entry("F32", [0x7fc00000, 0x7fc00000, 0x3f800000], 32)],
    ["bn1.num_batches_tracked", { dtype: "I64", shape: [], bytes: new Uint8Array(8).fill(0xff) }],
    ["fc.bias", entry("F16", [0x7c00, 0x3c00], 16)],
    ["fc.weight", entry("BF16", [0x3f80], 16)],
  ]);
  assertEquals(nonFiniteTensors(t).map((b) => b.name), ["conv1.weight", "fc.bias"]);
  const e = assertThrows(() => assertFinite(t, "m.pt"), CheckpointError, "m.pt: expected finite weights");
  for (
    const s of ["2 tensors", "conv1.weight (F32: 2 NaN of 3 values)", "fc.bias (F16: 1 Inf of 2 values)"]
  ) {
    if (!e.message.includes(s)) throw new Error(`"${s}" missing from: ${e.message}`);
  }
  t.delete("conv1.weight");
  t.delete("fc.bias");
  assertFinite(t, "m.pt");
});

Deno.test("a 25 M-value float32 tensor passes, and one NaN at its last element is found", () => {
  const f = new Float32Array(25_000_000).fill(0.5);
  const t = new Map([["w", { dtype: "F32" as const, shape: [f.length], bytes: new Uint8Array(f.buffer) }]]);
  assertFinite(t, "big.safetensors");
  f[f.length - 1] = NaN;
  assertThrows(() => assertFinite(t, "big.safetensors"), Error, "w (F32: 1 NaN of 25000000 values)");
});

Deno.test("readCheckpoint refuses NaN / Inf in F16, BF16 and F64 safetensors and F64 beyond float32", async () => {
  const dir = await Deno.makeTempDir({ prefix: "he2gene-finite-" });
  try {
    const cases: [TensorEntry, string][] = [
      [entry("F16", [0x3c00, 0x7e00], 16), "(F16: 1 NaN of 2 values)"],
      [entry("BF16", [0xff80, 0x3f80], 16), "(BF16: 1 Inf of 2 values)"],
      [entry("F64", [1, NaN, Infinity], 64), "(F64: 1 NaN and 1 Inf of 3 values)"],
      [entry("F64", [1, 1e39], 64), "within float32's range"],
    ];
    for (const [e, want] of cases) {
      const path = join(dir, `${e.dtype}.safetensors`);
      await writeSafetensors(path, new Map([["ok", entry("F32", [0x3f800000], 32)], ["layer.weight", e]]));
      await assertRejects(() => readCheckpoint(path), CheckpointError, want);
      await assertRejects(() => readCheckpoint(path), CheckpointError, `${path}: `);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("readCheckpoint refuses a legacy .pt whose float16 tensor holds NaN", async () => {
  const dir = await Deno.makeTempDir({ prefix: "he2gene-finite-" });
  try {
    const bytes = await Deno.readFile(fixture("small_model_legacy.pt"));
    const hex = EXPECTED["small_model_legacy.pt"].f16.hex;
    const raw = Uint8Array.from(hex.match(/../g)!, (h) => parseInt(h, 16));
    let at = -1;
    for (let i = 0; at < 0 && i + raw.length <= bytes.length; i++) {
      if (raw.every((b, j) => bytes[i + j] === b)) at = i;
    }
    if (at < 0) throw new Error("f16's bytes not found in small_model_legacy.pt");
    bytes.set([0x00, 0x7e], at + 2); // element 1: float16 NaN
    const path = join(dir, "legacy.pt");
    await Deno.writeFile(path, bytes);
    await assertRejects(() => readCheckpoint(path), CheckpointError, "f16 (F16: 1 NaN of 6 values)");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
