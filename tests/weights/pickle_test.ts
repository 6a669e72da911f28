import { CheckpointError, RefusedGlobalError } from "../../weights/mod.ts";
import { PyGlobal, unpickle } from "../../weights/pickle.ts";
import { assertEquals, assertThrows } from "../helpers.ts";
import { EXPECTED, fixture } from "./fixtures.ts";

/** Pickle values as JSON-like values: dict → object, bigint → string. */
function plain(v: unknown): unknown {
  if (v instanceof Map) return Object.fromEntries([...v].map(([k, x]) => [k, plain(x)]));
  if (Array.isArray(v)) return v.map(plain);
  if (typeof v === "bigint") return String(v);
  return v;
}

const none = { file: "t.pkl", base: 0, globals: new Map<string, PyGlobal>() };

for (let proto = 0; proto <= 5; proto++) {
  Deno.test(`unpickle reads containers and scalars of protocol ${proto}`, async () => {
    const bytes = await Deno.readFile(fixture(`plain_p${proto}.pkl`));
    const { value, end } = unpickle(bytes, 0, none);
    assertEquals(end, bytes.length);
    assertEquals(plain(value), EXPECTED._plain);
    const m = value as Map<string, unknown>;
    assertEquals(m.get("shared") === m.get("tuple"), true, "memo: the same tuple object twice");
  });
}

Deno.test("unpickle refuses a global it was not given, naming it and the byte offset", () => {
  // GLOBAL 'builtins\neval\n' at byte 2 of b"\x80\x02cbuiltins\neval\n."
  const bytes = new TextEncoder().encode("\x00\x02cbuiltins\neval\n.");
  bytes[0] = 0x80;
  const e = assertThrows(
    () => unpickle(bytes, 0, { ...none, base: 100 }),
    RefusedGlobalError,
    "builtins.eval",
  );
  assertEquals(e.message.endsWith("(at byte 102)"), true);
});

Deno.test("unpickle calls an allowed global through REDUCE", () => {
  // c__main__\nf\n (K\x01K\x02t R .
  const text = "c__main__\nf\n(K\x01K\x02tR.";
  const bytes = Uint8Array.from(text, (c) => c.charCodeAt(0));
  const globals = new Map([[
    "__main__.f",
    new PyGlobal("__main__", "f", (a) => (a[0] as number) + (a[1] as number)),
  ]]);
  assertEquals(unpickle(bytes, 0, { ...none, globals }).value, 3);
});

Deno.test("unpickle names the offset of a truncated argument", () => {
  // BININT (J) needs 4 bytes, has 2.
  const bytes = new Uint8Array([0x80, 2, 0x4a, 1, 2]);
  assertThrows(() => unpickle(bytes, 0, { ...none, base: 10 }), CheckpointError, "t.pkl: truncated pickle");
  assertThrows(() => unpickle(bytes, 0, { ...none, base: 10 }), CheckpointError, "(at byte 12)");
});

Deno.test("unpickle rejects an unknown opcode and a missing STOP", () => {
  assertThrows(() => unpickle(new Uint8Array([0x80, 2, 0xff]), 0, none), CheckpointError, "opcode 0xff");
  assertThrows(
    () => unpickle(new Uint8Array([0x80, 2, 0x4e]), 0, none),
    CheckpointError,
    "expected an opcode or STOP",
  );
});
