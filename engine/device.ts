/**
 * Adapter selection and device creation.
 *
 * - `DENO_WEBGPU_BACKEND` (vulkan | gl | metal | dx12) picks the backend in Deno; `HE2GENE_BACKEND` is an
 *   alias that is copied into it before the first adapter request.
 * - A hardware adapter is preferred; a software adapter (llvmpipe, SwiftShader, WARP) is reported as such.
 * - The device is requested with the adapter's maximum limits (the defaults cap a storage binding at
 *   128 MiB and workgroup memory at 16 KiB) and with `shader-f16` / `timestamp-query` / `subgroups` when
 *   present (Chrome offers `subgroups`; Deno 2.9.6 does not, on llvmpipe nor on an NVIDIA GPU); when a
 *   browser refuses those, with its default limits (the kernels read `device.limits` and fit within them).
 * - In a browser (no `Deno`) the environment variables read as unset and the backend is `browser`.
 * - Mesa's llvmpipe (the software adapter on Linux) runs 8 invocations per SIMD instruction (256-bit
 *   vectors) unless `LP_NATIVE_VECTOR_WIDTH=512` asks for 16, which an AVX-512 CPU runs natively. The adapter
 *   says its width in its name (`llvmpipe (LLVM 15.0.6, 512 bits)`); {@linkcode AdapterDescription.simdLanes}
 *   carries it to the kernels whose workgroup is one SIMD group (kernels/_wgsl.ts `blockWorkgroup`). The
 *   width is left as the user set it: see the README for what 512 bits gains and loses.
 *
 * @module
 */

/** What we know about the adapter a device was created on. */
export interface AdapterDescription {
  /** Human-readable adapter name, e.g. `llvmpipe (LLVM 15.0.6, 256 bits)` or `NVIDIA H100`. */
  name: string;
  /** Vendor string or PCI id reported by the adapter. */
  vendor: string;
  /** Architecture reported by the adapter (may be empty). */
  architecture: string;
  /** Device string or id reported by the adapter (may be empty). */
  device: string;
  /** Backend requested through `DENO_WEBGPU_BACKEND`, `auto` when the runtime chose, `browser` in a browser. */
  backend: string;
  /** True for CPU (software) adapters such as llvmpipe. */
  software: boolean;
  /**
   * Invocations a software adapter runs in one SIMD instruction, where its name says its vector width
   * (llvmpipe: `… 256 bits` → 8, `… 512 bits` → 16); absent elsewhere.
   */
  simdLanes?: number;
  /** Features enabled on the device. */
  features: string[];
  /** Why the device runs with the default limits instead of the adapter's (absent when it has them). */
  limitsFallback?: string;
}

/** Options for {@linkcode createDevice}. */
export interface DeviceOptions {
  /** Backend to ask Deno for (`vulkan`, `gl`, `metal`, `dx12`); default: `HE2GENE_BACKEND` or the runtime's. */
  backend?: string;
  /** Enable `shader-f16` when the adapter has it (default true). */
  f16?: boolean;
  /** Enable `subgroups` when the adapter has it (default true): the `subgroup` variants of batch norm and reduce. */
  subgroups?: boolean;
}

/** Limits requested at their adapter maximum. */
const LIMITS_AT_MAX = [
  "maxBufferSize",
  "maxStorageBufferBindingSize",
  "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupSizeX",
  "maxComputeWorkgroupSizeY",
  "maxComputeWorkgroupSizeZ",
  "maxComputeWorkgroupsPerDimension",
  "maxStorageBuffersPerShaderStage",
  "maxUniformBufferBindingSize",
  "maxBindGroups",
  "maxTextureDimension2D", // matmul's texture operands (kernels/matmul_tex.ts): rows of A up to this
] as const;

const SOFTWARE_NAMES = /llvmpipe|lavapipe|swiftshader|softpipe|warp|basic render|software/i;

/** llvmpipe's vector width in its adapter name, e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`. */
const LLVMPIPE_BITS = /llvmpipe.*\b(\d+) bits\b/i;

/**
 * The invocations per SIMD instruction of a software adapter named `name`: llvmpipe's vector width ÷ 32
 * (`llvmpipe (LLVM 15.0.6, 512 bits)` → 16), else undefined.
 *
 * @example
 * ```ts
 * simdLanesOf("llvmpipe (LLVM 15.0.6, 256 bits)"); // 8
 * ```
 */
export function simdLanesOf(name: string): number | undefined {
  const m = LLVMPIPE_BITS.exec(name);
  const bits = m ? Number(m[1]) : NaN;
  return bits >= 128 && bits % 32 === 0 ? bits / 32 : undefined;
}

/** Whether this runtime is Deno (a browser has no `Deno` global). */
const IN_DENO = typeof Deno !== "undefined";

function envGet(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined; // no --allow-env: behave as if unset
  }
}

/**
 * The backend the runtime chose when none was requested. Deno exposes no backend name; on Linux wgpu tries
 * Vulkan first, then OpenGL, and its OpenGL adapters report the placeholder subgroup range 4…128.
 */
function inferBackend(info: GPUAdapterInfo): string {
  if (!IN_DENO) return "browser";
  const os = Deno.build.os;
  if (os === "darwin") return "metal";
  if (os !== "linux") return "auto";
  const i = info as GPUAdapterInfo & { subgroupMinSize?: number; subgroupMaxSize?: number };
  return i.subgroupMinSize === 4 && i.subgroupMaxSize === 128 ? "gl (inferred)" : "vulkan (inferred)";
}

/** The backends `HE2GENE_BACKEND` / `DENO_WEBGPU_BACKEND` may name. */
export const BACKENDS: readonly string[] = ["vulkan", "gl", "metal", "dx12"];

// The names wgpu reads from DENO_WEBGPU_BACKEND (a comma-separated list, any case); an unknown one is
// skipped, so a misspelt value would leave no backend and be reported as "no adapter was found".
const BACKEND_NAMES = new Set(["vulkan", "vk", "gl", "gles", "opengl", "metal", "mtl", "dx12", "d3d12"]);

/** Why `value` of the environment variable `name` names no backend, or null when it does. */
function backendProblem(name: string, value: string): string | null {
  const parts = value.split(",").map((p) => p.trim().toLowerCase());
  if (parts.every((p) => BACKEND_NAMES.has(p))) return null;
  return `${name}=${value} is not a valid backend: valid values are ${BACKENDS.join(", ")}`;
}

/**
 * Why the backend the environment asks for (`HE2GENE_BACKEND`, else `DENO_WEBGPU_BACKEND`) cannot be used,
 * or null: an unknown name, e.g. `HE2GENE_BACKEND=bogus is not a valid backend: valid values are vulkan,
 * gl, metal, dx12`.
 *
 * @example
 * ```ts
 * const problem = backendEnvProblem();
 * if (problem) throw new Error(problem);
 * ```
 */
export function backendEnvProblem(): string | null {
  for (const name of ["HE2GENE_BACKEND", "DENO_WEBGPU_BACKEND"]) {
    const v = envGet(name);
    if (v !== undefined && v !== "") return backendProblem(name, v);
  }
  return null;
}

/** Error thrown when no WebGPU adapter can be found; its message says what to install. */
export class NoAdapterError extends Error {
  constructor(detail: string) {
    super(
      `Cannot create a WebGPU device: ${detail}.\n` +
        `  On Linux without a GPU install the Vulkan software adapter: ` +
        `apt-get install -y mesa-vulkan-drivers libvulkan1\n` +
        `  (or use OpenGL: DENO_WEBGPU_BACKEND=gl with Mesa's libgl1-mesa-dri / libegl1).\n` +
        `  With a GPU, install its Vulkan driver (NVIDIA: the driver's Vulkan ICD; AMD/Intel: mesa-vulkan-drivers).`,
    );
    this.name = "NoAdapterError";
  }
}

/**
 * Pick an adapter (hardware first) and create a device with the adapter's maximum limits.
 *
 * @example
 * ```ts
 * const { device, description } = await createDevice();
 * console.log(description.name, description.software ? "(software)" : "");
 * device.destroy();
 * ```
 */
export async function createDevice(
  options: DeviceOptions = {},
): Promise<{ device: GPUDevice; adapter: GPUAdapter; description: AdapterDescription }> {
  const backend = options.backend ?? envGet("HE2GENE_BACKEND");
  const problem = options.backend ? backendProblem("backend", options.backend) : backendEnvProblem();
  if (problem) throw new RangeError(`Cannot create a WebGPU device: ${problem}`);
  if (backend && IN_DENO) {
    try {
      Deno.env.set("DENO_WEBGPU_BACKEND", backend);
    } catch { /* no env permission: the runtime default applies */ }
  }
  // Mesa's window-system probe prints "XDG_RUNTIME_DIR is invalid or not set" on headless machines.
  if (IN_DENO && !envGet("XDG_RUNTIME_DIR")) {
    try {
      Deno.env.set("XDG_RUNTIME_DIR", "/tmp");
    } catch { /* no env permission: the message is only noise */ }
  }
  if (typeof navigator === "undefined" || !("gpu" in navigator) || !navigator.gpu) {
    throw new NoAdapterError("this runtime has no navigator.gpu (use Deno 2.x)");
  }
  let adapter: GPUAdapter | null = null;
  try {
    adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
  } catch (e) {
    throw new NoAdapterError(`requestAdapter failed (${(e as Error).message})`);
  }
  if (!adapter) throw new NoAdapterError("no adapter was found");

  const info = adapter.info;
  // Chrome leaves `description` empty: SwiftShader reads as "google swiftshader".
  const name = info.description || info.device ||
    [info.vendor, info.architecture].filter(Boolean).join(" ") || "unknown adapter";
  // deno-lint-ignore no-explicit-any
  const fallback = Boolean((info as any).isFallbackAdapter);
  const software = fallback || SOFTWARE_NAMES.test(name);
  const simdLanes = software ? simdLanesOf(name) : undefined;

  const requiredLimits: Record<string, number> = {};
  for (const key of LIMITS_AT_MAX) {
    const v = (adapter.limits as unknown as Record<string, number>)[key];
    if (typeof v === "number") requiredLimits[key] = v;
  }
  const requiredFeatures: GPUFeatureName[] = [];
  if (adapter.features.has("timestamp-query")) requiredFeatures.push("timestamp-query");
  if ((options.f16 ?? true) && adapter.features.has("shader-f16")) requiredFeatures.push("shader-f16");
  // Not in @webgpu/types 0.1.38's GPUFeatureName.
  const subgroups = "subgroups" as GPUFeatureName;
  if ((options.subgroups ?? true) && adapter.features.has(subgroups)) requiredFeatures.push(subgroups);

  let device: GPUDevice, limitsFallback: string | undefined;
  try {
    device = await adapter.requestDevice({ label: "he2gene", requiredLimits, requiredFeatures });
  } catch (e) {
    // A browser may cap what a page gets below the adapter's report: fall back to the defaults.
    limitsFallback = `the adapter's limits were refused (${(e as Error).message}); using the defaults`;
    device = await adapter.requestDevice({ label: "he2gene", requiredFeatures });
  }
  const description: AdapterDescription = {
    name,
    vendor: info.vendor,
    architecture: info.architecture ?? "",
    device: info.device ?? "",
    backend: envGet("DENO_WEBGPU_BACKEND") ?? inferBackend(info),
    software,
    ...(simdLanes ? { simdLanes } : {}),
    features: [...device.features].sort(),
    ...(limitsFallback ? { limitsFallback } : {}),
  };
  return { device, adapter, description };
}
