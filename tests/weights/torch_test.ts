import { CheckpointError, parseTorch, readTorch, RefusedGlobalError, toFloat32 } from "../../weights/mod.ts";
import { assertEquals, assertRejects } from "../helpers.ts";
import { assertTensor, EXPECTED, fixture } from "./fixtures.ts";

for (
  const [file, format] of [
    ["small_model.pt", "zip"],
    ["small_model_legacy.pt", "legacy"],
    ["small_model_deflate.pt", "zip"],
    ["small_model_p4.pt", "zip"],
    ["model_base.pt", "zip"],
    ["model_fp16.pt", "zip"],
  ] as const
) {
  Deno.test(`readTorch reads ${file} (${format}) back exactly, in state-dict order`, async () => {
    const ckpt = await readTorch(fixture(file));
    assertEquals(ckpt.format, format);
    assertEquals(ckpt.wrapper, null);
    assertEquals(ckpt.skipped, []);
    const want = EXPECTED[file];
    assertEquals([...ckpt.tensors.keys()], Object.keys(want));
    for (const [k, w] of Object.entries(want)) assertTensor(k, ckpt.tensors.get(k), w);
  });
}

Deno.test("readTorch finds the zip folder from data.pkl, not from the name archive/", async () => {
  const ckpt = await readTorch(fixture("model_base.pt"));
  assertEquals(ckpt.tensors.get("fc1.weight")?.shape, [5, 8]);
  assertEquals(ckpt.tensors.get("base_model.bn1.num_batches_tracked")?.dtype, "I64");
  assertEquals(ckpt.tensors.get("base_model.bn1.num_batches_tracked")?.shape, []);
});

Deno.test("readTorch makes non-contiguous views contiguous and keeps storage offsets", async () => {
  const { tensors } = await readTorch(fixture("small_model.pt"));
  const base = toFloat32(tensors.get("shared_base")!);
  assertEquals(Array.from(toFloat32(tensors.get("shared_slice")!)), Array.from(base.subarray(2, 5)));
  assertEquals(Array.from(toFloat32(tensors.get("shared_strided")!)), [base[1], base[4], base[7]]);
  assertEquals(tensors.get("transposed")?.shape, [4, 3]);
  assertEquals(tensors.get("empty")?.bytes.length, 0);
  assertEquals(Array.from(toFloat32(tensors.get("scalar")!)), [3.5]);
});

Deno.test("readTorch unwraps a checkpoint dict's state_dict and says so", async () => {
  const ckpt = await readTorch(fixture("wrapped.pt"));
  assertEquals(ckpt.wrapper, "state_dict");
  for (const [k, w] of Object.entries(EXPECTED["wrapped.pt"])) assertTensor(k, ckpt.tensors.get(k), w);
});

Deno.test("readTorch converts float16 and bfloat16 to float32 on request, exactly", async () => {
  const { tensors } = await readTorch(fixture("small_model.pt"), { float32: true });
  const want = EXPECTED["small_model.pt"];
  for (const k of ["f16", "bf16", "f16_transposed", "f64"]) {
    const t = tensors.get(k)!;
    assertEquals(t.dtype, "F32");
    assertEquals(t.shape, want[k].shape);
    const f = new Float32Array(t.bytes.slice().buffer);
    assertEquals(Array.from(f), want[k].values.map((v) => Math.fround(v as number)), k);
  }
  assertEquals(tensors.get("i64")?.dtype, "I64");
  const fp16 = await readTorch(fixture("model_fp16.pt"), { float32: true });
  assertEquals([...fp16.tensors.values()].filter((t) => t.dtype === "F16").length, 0);
});

Deno.test("readTorch refuses os.system in a zip checkpoint, naming the global and its byte offset", async () => {
  // os.system pickles as posix.system on Linux.
  const e = await assertRejects(
    () => readTorch(fixture("evil.pt")),
    RefusedGlobalError,
    "refused global posix.system",
  );
  assertEquals((e as RefusedGlobalError).global, "posix.system");
  const at = Number(/at byte (\d+)/.exec(e.message)?.[1]);
  const bytes = await Deno.readFile(fixture("evil.pt"));
  assertEquals(String.fromCharCode(...bytes.subarray(at, at + 14)), "cposix\nsystem\n"); // the GLOBAL opcode
});

Deno.test("readTorch refuses a bare pickle that calls os.system", async () => {
  await assertRejects(() => readTorch(fixture("evil_raw.pkl")), RefusedGlobalError, "system");
});

Deno.test("readTorch names the file and byte offset of a truncated zip", async () => {
  const e = await assertRejects(() => readTorch(fixture("truncated.pt")), CheckpointError, "truncated.pt");
  if (!/at byte \d+/.test(e.message) || !/end-of-central-directory/.test(e.message)) {
    throw new Error(`unexpected message: ${e.message}`);
  }
});

Deno.test("readTorch names the storage and byte offset of a truncated legacy file", async () => {
  const size = Deno.statSync(fixture("truncated_legacy.pt")).size;
  const e = await assertRejects(
    () => readTorch(fixture("truncated_legacy.pt")),
    CheckpointError,
    `file ends at byte ${size}`,
  );
  if (!/truncated_legacy\.pt: expected .*storage \d+.* \(at byte \d+\)$/.test(e.message)) {
    throw new Error(`unexpected message: ${e.message}`);
  }
});

Deno.test("parseTorch rejects a file that is neither zip nor pickle at byte 0", () => {
  try {
    parseTorch(new TextEncoder().encode("hello"), { file: "x.pt" });
  } catch (e) {
    assertEquals((e as Error).message.startsWith("x.pt: expected a PyTorch checkpoint"), true);
    assertEquals((e as Error).message.endsWith("(at byte 0)"), true);
    return;
  }
  throw new Error("no error");
});

Deno.test("parseTorch names the offset when the legacy main pickle is cut short", async () => {
  const bytes = await Deno.readFile(fixture("small_model_legacy.pt"));
  const e = await assertRejects(
    () => Promise.resolve(parseTorch(bytes.subarray(0, 400), { file: "cut.pt" })),
    CheckpointError,
    "cut.pt: truncated pickle",
  );
  if (!/at byte \d+/.test(e.message)) throw new Error(`unexpected message: ${e.message}`);
});

Deno.test("parseTorch throws a CheckpointError with a byte offset at every truncation point", async () => {
  for (const file of ["small_model_legacy.pt", "small_model.pt", "small_model_p4.pt"]) {
    const bytes = await Deno.readFile(fixture(file));
    for (let cut = 0; cut < bytes.length; cut++) {
      try {
        parseTorch(bytes.subarray(0, cut), { file });
      } catch (e) {
        if (!(e instanceof CheckpointError) || !/\(at byte \d+\)$/.test(e.message)) {
          throw new Error(`${file} cut at ${cut}: ${(e as Error).name}: ${(e as Error).message}`);
        }
        continue;
      }
      throw new Error(`${file} cut at ${cut}: no error`);
    }
  }
});
