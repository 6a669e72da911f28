/**
 * The helpers every `train` path shares (cli/train_loop.ts): reading `--resume`'s checkpoint and turning a
 * training loop's interrupt into the message that names the checkpoint to continue from.
 */
import { join } from "node:path";
import { Interrupted } from "../../cli/errors.ts";
import { resumeFrom, untilInterrupted } from "../../cli/train_loop.ts";
import { TrainingInterrupted } from "../../pipeline/train.ts";
import { writeSafetensors } from "../../weights/safetensors.ts";
import { assertEquals, assertRejects } from "../helpers.ts";

Deno.test("untilInterrupted names the checkpoint to resume from; other errors pass through", async () => {
  let closed = 0;
  const progress = { done: () => void closed++ };
  const out = "/runs/a";
  const e = await assertRejects(
    () => untilInterrupted(out, progress, () => Promise.reject(new TrainingInterrupted("after epoch 3"))),
    Interrupted,
  );
  assertEquals(
    (e as Error).message,
    `training stopped after epoch 3; the checkpoint is saved in ${join(out, "checkpoint.safetensors")}: ` +
      "continue with --resume",
  );
  assertEquals(closed, 1);
  await assertRejects(
    () => untilInterrupted(out, progress, () => Promise.reject(new RangeError("bad batch"))),
    RangeError,
    "bad batch",
  );
  assertEquals(closed, 1);
  assertEquals(await untilInterrupted(out, progress, () => Promise.resolve(7)), 7);
});

Deno.test("resumeFrom reads the run's checkpoint, nothing without --resume, and names the run folder", async () => {
  const dir = await Deno.makeTempDir();
  try {
    assertEquals(await resumeFrom(dir, false), undefined);
    await assertRejects(() => resumeFrom(dir, true), Error, `Cannot resume from ${dir}: `);
    const file = join(dir, "checkpoint.safetensors");
    const bytes = new Uint8Array(new Float32Array([1, 2]).buffer);
    await writeSafetensors(file, new Map([["w", { dtype: "F32" as const, shape: [2], bytes }]]), {
      metadata: { epoch: "4" },
    });
    const r = await resumeFrom(dir, true);
    assertEquals([r?.from, r?.file, r?.metadata.epoch], [dir, file, "4"]);
    assertEquals([...(r?.tensors.get("w")?.bytes ?? [])], [...bytes]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
