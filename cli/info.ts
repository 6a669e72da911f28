/**
 * `he2gene info`: the adapter, backend, limits and features.
 * @module
 */
import { createEngine } from "../mod.ts";

const SHOWN_LIMITS = [
  "maxBufferSize",
  "maxStorageBufferBindingSize",
  "minStorageBufferOffsetAlignment",
  "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupsPerDimension",
  "maxStorageBuffersPerShaderStage",
] as const;

/** Print what `createEngine()` finds on this machine. */
export async function runInfo(options: { json: boolean }): Promise<void> {
  const engine = await createEngine();
  const limits = Object.fromEntries(
    SHOWN_LIMITS.map((k) => [k, (engine.limits as unknown as Record<string, number>)[k]]),
  );
  const info = { adapter: engine.adapterInfo, limits };
  if (options.json) {
    console.log(JSON.stringify(info, null, 2));
  } else {
    const a = engine.adapterInfo;
    console.log(`adapter:  ${a.name}${a.software ? " (software adapter: expect CPU speed)" : ""}`);
    console.log(`backend:  ${a.backend}`);
    console.log(`features: ${a.features.join(", ") || "(none)"}`);
    for (const [k, v] of Object.entries(limits)) console.log(`${k.padEnd(34)} ${v}`);
  }
  engine.destroy();
}
