import {
  CheckpointError,
  encodeSafetensors,
  parseSafetensors,
  readSafetensors,
  readTorch,
  type TensorEntry,
  writeSafetensors,
} from "../../weights/mod.ts";
import { assertEquals, assertThrows } from "../helpers.ts";
import { assertTensor, EXPECTED, fixture } from "./fixtures.ts";

function concat(chunks: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let p = 0;
  for (const c of chunks) out.set(c, p), p += c.length;
  return out;
}

/** A safetensors file from a header object and data bytes, header unpadded. */
function build(header: unknown, data: Uint8Array): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const len = new Uint8Array(8);
  new DataView(len.buffer).setBigUint64(0, BigInt(json.length), true);
  return concat([len, json, data]);
}

Deno.test("safetensors round trip keeps every dtype, shape, byte, the key order and the metadata", async () => {
  const { tensors } = await readTorch(fixture("small_model.pt"));
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/small.safetensors`;
    const metadata = {
      target_genes: JSON.stringify(["GAPDH", "ACTB"]),
      config: JSON.stringify({ heads: 3 }),
    };
    await writeSafetensors(path, tensors, { metadata });
    assertEquals([...Deno.readDirSync(dir)].map((e) => e.name), ["small.safetensors"]); // no temporary left
    const back = await readSafetensors(path);
    assertEquals(back.metadata, metadata);
    assertEquals([...back.tensors.keys()], [...tensors.keys()]);
    for (const [k, w] of Object.entries(EXPECTED["small_model.pt"])) assertTensor(k, back.tensors.get(k), w);
    // The header length is a multiple of 8 and every tensor is aligned to its element size.
    const bytes = await Deno.readFile(path);
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    assertEquals(n % 8, 0);
    for (const [k, t] of back.tensors) {
      const size = t.dtype === "F64" || t.dtype === "I64"
        ? 8
        : t.dtype === "F32" || t.dtype === "I32"
        ? 4
        : 1;
      if (t.bytes.length && (t.bytes.byteOffset % size) !== 0 && size > 2) {
        throw new Error(`${k} is misaligned`);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("parseSafetensors reads an unpadded header whose order differs from the data order", () => {
  const data = new Uint8Array(new Float32Array([1, 2, 3]).buffer);
  const file = build({
    b: { dtype: "F32", shape: [1], data_offsets: [8, 12] },
    __metadata__: { format: "pt" },
    a: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
  }, data);
  const { tensors, metadata } = parseSafetensors(file, "x.safetensors");
  assertEquals([...tensors.keys()], ["b", "a"]);
  assertEquals(metadata, { format: "pt" });
  assertEquals(Array.from(new Float32Array(tensors.get("a")!.bytes.slice().buffer)), [1, 2]);
});

Deno.test("parseSafetensors names the file and offset of bad input", () => {
  const data = new Uint8Array(8);
  const t = (h: unknown, d = data) => () => parseSafetensors(build(h, d), "bad.safetensors");
  assertThrows(
    t({ a: { dtype: "F32", shape: [3], data_offsets: [0, 8] } }),
    CheckpointError,
    "expected 12 bytes",
  );
  assertThrows(t({ a: { dtype: "Q8", shape: [1], data_offsets: [0, 8] } }), CheckpointError, "known dtype");
  assertThrows(
    t({ a: { dtype: "F32", shape: [1], data_offsets: [4, 8] } }),
    CheckpointError,
    "hole or overlap",
  );
  assertThrows(t({ a: { dtype: "F32", shape: [1], data_offsets: [0, 4] } }), CheckpointError, "4 more bytes");
  assertThrows(
    t({ a: { dtype: "F64", shape: [2], data_offsets: [0, 16] } }),
    CheckpointError,
    "bad.safetensors: tensor a: expected data up to byte",
  );
  assertThrows(t({ __metadata__: { n: 1 } }, new Uint8Array(0)), CheckpointError, "strings to strings");
  assertThrows(
    () => parseSafetensors(new Uint8Array(5), "short.st"),
    CheckpointError,
    "short.st: expected an 8-byte",
  );
  const huge = new Uint8Array(16);
  new DataView(huge.buffer).setBigUint64(0, 1000n, true);
  assertThrows(() => parseSafetensors(huge, "h.st"), CheckpointError, "(at byte 0)");
});

Deno.test("encodeSafetensors refuses bytes that do not match dtype and shape", () => {
  const t = new Map<string, TensorEntry>([["w", { dtype: "F32", shape: [2, 2], bytes: new Uint8Array(12) }]]);
  assertThrows(() => encodeSafetensors(t), RangeError, "needs 16 bytes, got 12");
});

Deno.test("writeSafetensors leaves neither the target nor a temporary file when it fails", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const bad = new Map<string, TensorEntry>([["w", { dtype: "F32", shape: [2], bytes: new Uint8Array(4) }]]);
    let threw = false;
    await writeSafetensors(`${dir}/w.safetensors`, bad).catch(() => threw = true);
    assertEquals(threw, true);
    assertEquals([...Deno.readDirSync(dir)].length, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
