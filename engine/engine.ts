/**
 * The engine: one device, its buffer pool, pipeline / uniform / bind-group caches, and command batching.
 *
 * Every dispatch is recorded into one open compute pass of one command encoder; the encoder is submitted
 * only when data must cross to the CPU (`read`), before a `queue.writeBuffer` that could overtake
 * recorded work (`tensor`), or every `autoFlush` dispatches. Per-dispatch host work is a cache lookup for
 * the pipeline, the uniform buffer (keyed by its packed contents) and the bind group (keyed by buffer ids).
 *
 * `HE2GENE_TRACE=1` prints each dispatch: kernel, shapes and workgroups.
 *
 * @module
 */
import { type AdapterDescription, createDevice, type DeviceOptions } from "./device.ts";
import type { Kernel, UniformType, UniformValues } from "./kernel.ts";
import { BufferPool, fmtBytes, type PoolStats } from "./pool.ts";
import { BYTES, checkShape, type DType, type Storage, Tensor } from "./tensor.ts";

const STORAGE_USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
const READ_USAGE = GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST;
const UNIFORM_USAGE = GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST;
/** Compute passes one `timeGpu` call can time (a begin and an end timestamp each). */
const TIMED_PASSES = 64;

/** A range of a tensor bound to one storage binding (element offsets; offset must respect the alignment). */
export interface TensorRange {
  tensor: Tensor;
  /** First element bound. */
  offset: number;
  /** Elements bound. */
  size: number;
}

/** One dispatch. */
export interface DispatchArgs<U extends Record<string, UniformType>> {
  /** Tensors (or ranges of tensors) in the kernel's binding order; engine textures where it declares one. */
  bindings: readonly (Tensor | TensorRange | EngineTexture)[];
  uniforms: UniformValues<U>;
  /** Workgroup counts; see {@linkcode grid}. */
  workgroups: readonly [number, number?, number?];
  /** Shapes or other detail shown in traces and errors, e.g. `"[128,64]x[64,32]"`. */
  info?: string;
}

/**
 * An rgba32float texture of the engine's texture cache ({@linkcode Engine.texture}): 4 floats per texel,
 * `width` texels per row, `height` rows.
 */
export interface EngineTexture {
  readonly texture: GPUTexture;
  readonly view: GPUTextureView;
  readonly width: number;
  readonly height: number;
  /** @internal Identity in bind group keys. */
  readonly id: number;
}

/**
 * Bytes of textures {@linkcode Engine.texture} keeps for reuse before it drops the least recently used.
 * ResNet-50 inference at batch 8 on llvmpipe holds ~320 MiB of them (conv2d's operands, blocks, flat
 * copies); at 256 MiB it re-created 48 textures (295 MiB of page faults) every call.
 */
const TEXTURE_CACHE_BYTES = 1024 * 2 ** 20;

/** Options for {@linkcode createEngine}. */
export interface EngineOptions extends DeviceOptions {
  /** Print each dispatch (default: `HE2GENE_TRACE=1`). */
  trace?: boolean;
  /** Submit after this many recorded dispatches (default 256). */
  autoFlush?: number;
  /** Free bytes the buffer pool may keep when it has to create a buffer (default 256 MiB). */
  poolSlackBytes?: number;
}

function envFlag(name: string): boolean {
  try {
    const v = Deno.env.get(name);
    return v !== undefined && v !== "" && v !== "0";
  } catch {
    return false;
  }
}

/** Thrown at the next synchronisation point after the device reported an error. */
export class GPUFailure extends Error {
  constructor(message: string) {
    super(message);
    this.name = "GPUFailure";
  }
}

/**
 * Split `n` threads into a dispatch grid of workgroups of `wg` threads, using y (and z) when x would
 * exceed the per-dimension limit. In WGSL recover the linear id as
 * `g.x + g.y * (nwg.x * WG_X)` with `@builtin(num_workgroups) nwg`.
 */
export function grid(n: number, wg: number, maxPerDim = 65535): [number, number, number] {
  const groups = Math.ceil(n / wg);
  if (groups <= maxPerDim) return [Math.max(groups, 1), 1, 1];
  const y = Math.ceil(groups / maxPerDim);
  const x = Math.ceil(groups / y);
  if (y > maxPerDim) throw new RangeError(`Cannot dispatch ${n} threads: more than ${maxPerDim}² workgroups`);
  return [x, y, 1];
}

/**
 * An engine bound to one GPU device.
 *
 * @example
 * ```ts
 * import { createEngine, add } from "../mod.ts";
 * const engine = await createEngine();
 * const a = engine.tensor(new Float32Array([1, 2, 3]), [3]);
 * console.log(await add(a, a).toArray()); // Float32Array [2, 4, 6]
 * ```
 */
export class Engine {
  /** The adapter and backend this engine runs on. */
  readonly adapterInfo: AdapterDescription;
  readonly limits: GPUSupportedLimits;
  /** Largest bytes one storage binding may cover. */
  readonly maxBinding: number;
  /** Alignment of binding offsets, in bytes. */
  readonly offsetAlign: number;
  readonly pool: BufferPool;
  trace: boolean;
  autoFlush: number;

  #pipelines = new Map<string, { pipeline: GPUComputePipeline; layout: GPUBindGroupLayout; id: number }>();
  #uniforms = new Map<string, GPUBuffer>();
  #retiredUniforms: GPUBuffer[] = [];
  #textures = new Map<string, EngineTexture>();
  #retiredTextures: GPUTexture[] = [];
  #uniformIds = new WeakMap<GPUBuffer, number>();
  #bindGroups = new Map<string, GPUBindGroup>();
  #nextId = 1;
  #encoder: GPUCommandEncoder | null = null;
  #pass: GPUComputePassEncoder | null = null;
  #recorded = 0;
  #scopes: Set<Tensor>[] = [];
  #recent: string[] = [];
  #error: GPUFailure | null = null;
  #errorIsCompile = false;
  #destroyed = false;
  #words = new Uint32Array(64);
  #querySet: GPUQuerySet | null = null;

  constructor(readonly device: GPUDevice, description: AdapterDescription, options: EngineOptions = {}) {
    this.adapterInfo = description;
    this.limits = device.limits;
    this.maxBinding = device.limits.maxStorageBufferBindingSize;
    this.offsetAlign = device.limits.minStorageBufferOffsetAlignment;
    // Before the pool destroys free buffers: submit the work that may use them, and forget the bind groups
    // that name them (their ids never come back).
    this.pool = new BufferPool(device, device.limits.maxBufferSize, {
      slackBytes: options.poolSlackBytes,
      beforeDestroy: () => {
        this.flush();
        this.#bindGroups.clear();
      },
    });
    this.trace = options.trace ?? envFlag("HE2GENE_TRACE");
    this.autoFlush = options.autoFlush ?? 256;
    device.addEventListener("uncapturederror", (ev) => {
      const e = (ev as GPUUncapturedErrorEvent).error;
      this.#fail(`${e.constructor?.name ?? "GPUError"}: ${e.message}`);
    });
    device.lost.then((info) => {
      if (!this.#destroyed) this.#fail(`GPU device lost (${info.reason}): ${info.message}`);
    });
  }

  #fail(message: string, compile = false): void {
    const recent = this.#recent.length ? this.#recent.join("\n    ") : "(none)";
    const err = new GPUFailure(`${message}\n  last dispatches (newest last):\n    ${recent}`);
    // Report the first error loudly; later ones are usually its consequences.
    if (!this.#error || (compile && !this.#errorIsCompile)) {
      this.#error = err;
      this.#errorIsCompile = compile;
      console.error(`[he2gene] ${err.message}`);
    }
  }

  /** Throw the first device error reported since the last check, if any. */
  checkError(): void {
    const e = this.#error;
    if (e) {
      this.#error = null;
      throw e;
    }
  }

  // ---------------------------------------------------------------- tensors

  /**
   * Upload a Float32Array as a tensor of the given shape.
   *
   * @example
   * ```ts
   * const t = engine.tensor(new Float32Array(6), [2, 3]);
   * const w = engine.tensor(new Float32Array(6), [2, 3], { requiresGrad: true }); // a parameter
   * ```
   */
  tensor(
    data: Float32Array | number[],
    shape: readonly number[],
    options: { requiresGrad?: boolean } = {},
  ): Tensor {
    checkShape(shape, "create a tensor");
    const arr = data instanceof Float32Array ? data : new Float32Array(data);
    const n = shape.reduce((a, b) => a * b, 1);
    if (arr.length !== n) {
      throw new RangeError(
        `Cannot create a tensor of shape [${shape}]: it needs ${n} values, current value has ${arr.length}`,
      );
    }
    const t = this.empty(shape, "upload");
    if (n > 0) {
      // writeBuffer runs before any later submit; recorded work that still reads a recycled buffer
      // must go first.
      if (this.#recorded > 0) this.flush();
      this.device.queue.writeBuffer(t.buffer, 0, arr.buffer as ArrayBuffer, arr.byteOffset, arr.byteLength);
    }
    if (options.requiresGrad) t.requiresGrad = true;
    return t;
  }

  /** An uninitialised tensor (for kernel outputs). */
  empty(shape: readonly number[], label = "tensor", dtype: DType = "f32"): Tensor {
    checkShape(shape, "create a tensor");
    const bytes = shape.reduce((a, b) => a * b, 1) * BYTES[dtype];
    const buf = this.pool.acquire(Math.max(bytes, 16), STORAGE_USAGE, `${label}[${shape}]`);
    return this.wrap({ buf, bytes, refs: 1 }, shape, dtype);
  }

  /** A tensor of zeros (cleared on the GPU, in command order). */
  zeros(shape: readonly number[], label = "zeros"): Tensor {
    const t = this.empty(shape, label);
    this.#endPass();
    this.#enc().clearBuffer(t.buffer, 0, t.storage.buf.bytes);
    this.#recorded++;
    return t;
  }

  /**
   * Copy `size` elements of `src` (from `srcOffset`) into `dst` at `dstOffset`, in command order (no
   * kernel: a buffer copy). Used to assemble batches.
   *
   * @example
   * ```ts
   * engine.copy(view, batch, { dstOffset: k * view.size }); // batch[k] = view
   * ```
   */
  copy(src: Tensor, dst: Tensor, o: { srcOffset?: number; dstOffset?: number; size?: number } = {}): void {
    const so = o.srcOffset ?? 0, d0 = o.dstOffset ?? 0, n = o.size ?? src.size - so;
    if (so < 0 || d0 < 0 || so + n > src.size || d0 + n > dst.size) {
      throw new RangeError(
        `Cannot copy ${n} elements from [${src.shape}] at ${so} into [${dst.shape}] at ${d0}: out of range`,
      );
    }
    if (n === 0) return;
    this.#endPass();
    this.#enc().copyBufferToBuffer(src.buffer, so * 4, dst.buffer, d0 * 4, n * 4);
    this.#recorded++;
  }

  /** @internal Make a tensor over existing storage and register it with the current scope. */
  wrap(storage: Storage, shape: readonly number[], dtype: DType): Tensor {
    const t = new Tensor(this, storage, shape, dtype);
    const top = this.#scopes[this.#scopes.length - 1];
    if (top) top.add(t);
    return t;
  }

  /** @internal */
  releaseStorage(st: Storage): void {
    if (--st.refs === 0) this.pool.release(st.buf);
  }

  /** Called after every `read` (the NaN/Inf watch installs itself here). */
  afterRead: ((e: Engine) => Promise<void>) | null = null;

  /** Read a tensor back as a Float32Array (flushes recorded work). */
  async read(t: Tensor): Promise<Float32Array> {
    const data = await this.readRaw(t);
    if (this.afterRead) await this.afterRead(this);
    return data;
  }

  /** Read a tensor back without the `afterRead` check. */
  async readRaw(t: Tensor): Promise<Float32Array> {
    const bytes = t.bytes;
    const src = t.buffer;
    if (bytes === 0) return new Float32Array(0);
    this.checkError();
    const staging = this.pool.acquire(bytes, READ_USAGE, `readback[${t.shape}]`);
    this.#endPass();
    this.#enc().copyBufferToBuffer(src, 0, staging.buffer, 0, Math.ceil(bytes / 4) * 4);
    this.#recorded++;
    this.flush();
    try {
      await staging.buffer.mapAsync(GPUMapMode.READ, 0, Math.ceil(bytes / 4) * 4);
    } catch (e) {
      this.checkError();
      throw new GPUFailure(`Cannot read back tensor [${t.shape}]: ${(e as Error).message}`);
    }
    const out = new Float32Array(staging.buffer.getMappedRange(0, Math.ceil(bytes / 4) * 4).slice(0));
    staging.buffer.unmap();
    this.pool.release(staging);
    this.checkError();
    return out;
  }

  // ---------------------------------------------------------------- scopes

  /**
   * Run `fn`; every tensor created inside and not returned (nor `keep()`-ed) is disposed afterwards.
   * Works with async functions too, as long as scopes are not interleaved.
   *
   * @example
   * ```ts
   * const y = engine.scope(() => relu(add(a, b))); // the intermediate sum is released
   * ```
   */
  scope<T>(fn: () => T): T {
    const set = new Set<Tensor>();
    this.#scopes.push(set);
    let result: T;
    try {
      result = fn();
    } catch (e) {
      this.#closeScope(set, undefined);
      throw e;
    }
    if (result instanceof Promise) {
      return result.then(
        (r) => (this.#closeScope(set, r), r),
        (e) => {
          this.#closeScope(set, undefined);
          throw e;
        },
      ) as T;
    }
    this.#closeScope(set, result);
    return result;
  }

  #closeScope(set: Set<Tensor>, result: unknown): void {
    const idx = this.#scopes.lastIndexOf(set);
    if (idx >= 0) this.#scopes.splice(idx, 1);
    const keep = new Set<Tensor>();
    collectTensors(result, keep, 0);
    const parent = this.#scopes[this.#scopes.length - 1];
    for (const t of set) {
      if (keep.has(t)) parent?.add(t);
      else t.dispose();
    }
  }

  /** @internal Remove a tensor from every open scope. */
  keep(t: Tensor): void {
    for (const s of this.#scopes) s.delete(t);
  }

  #placeholder: Tensor | null = null;
  /**
   * A 4-element zero tensor, made once per engine, to bind where a kernel declares an optional input (a
   * bias, a residual) that a call does not give.
   */
  placeholder(): Tensor {
    if (!this.#placeholder || this.#placeholder.disposed) {
      this.#placeholder = this.scope(() => this.tensor(new Float32Array(4), [4]).keep());
    }
    return this.#placeholder;
  }

  // ---------------------------------------------------------------- dispatch

  #enc(): GPUCommandEncoder {
    return this.#encoder ??= this.device.createCommandEncoder({ label: "he2gene step" });
  }

  #endPass(): void {
    if (this.#pass) {
      this.#pass.end();
      this.#pass = null;
    }
  }

  /** Submit everything recorded so far. Cheap when nothing is recorded. */
  flush(): void {
    this.#endPass();
    if (this.#encoder) {
      this.device.queue.submit([this.#encoder.finish()]);
      this.#encoder = null;
      this.#recorded = 0;
      for (const b of this.#retiredUniforms) b.destroy();
      this.#retiredUniforms.length = 0;
      for (const t of this.#retiredTextures) t.destroy();
      this.#retiredTextures.length = 0;
    }
  }

  // ---------------------------------------------------------------- textures

  /**
   * An rgba32float texture of `width` × `height` texels for `role` (e.g. `"matmul.A"`), taken from a small
   * cache: the same role and size gets the same texture back (its contents are whatever was last written:
   * fill it first, with {@linkcode copyToTexture} or a kernel). Fresh memory costs page faults on a software
   * adapter (~4 ms per MiB here), so textures stay for reuse, up to 1 GiB in all (least recently used
   * dropped first, after the work recorded so far). Not counted in the buffer pool's statistics.
   *
   * @example
   * ```ts
   * const t = engine.texture("matmul.A", k / 4, m);
   * engine.copyToTexture(a, t);
   * ```
   */
  texture(role: string, width: number, height: number): EngineTexture {
    const max = this.limits.maxTextureDimension2D;
    if (!(width >= 1 && height >= 1 && width <= max && height <= max)) {
      throw new RangeError(
        `Cannot make texture ${role} of ${width} × ${height} texels: each side must be 1 to ${max}`,
      );
    }
    const key = `${role}:${width}x${height}`;
    let t = this.#textures.get(key);
    if (t) {
      this.#textures.delete(key); // re-insert: most recently used last
      this.#textures.set(key, t);
      return t;
    }
    const texture = this.device.createTexture({
      label: key,
      size: [width, height],
      format: "rgba32float",
      usage: GPUTextureUsage.TEXTURE_BINDING | GPUTextureUsage.STORAGE_BINDING | GPUTextureUsage.COPY_DST,
    });
    t = { texture, view: texture.createView(), width, height, id: this.#nextId++ };
    this.#textures.set(key, t);
    let bytes = 0;
    for (const u of this.#textures.values()) bytes += u.width * u.height * 16;
    for (const [k, u] of this.#textures) {
      if (bytes <= TEXTURE_CACHE_BYTES || u === t) break;
      this.#textures.delete(k);
      this.#retiredTextures.push(u.texture);
      bytes -= u.width * u.height * 16;
    }
    return t;
  }

  /**
   * Copy rows of `src` into texture `dst` in command order (no kernel): `rows` rows (default `dst.height`)
   * of `4 · width` floats each (`width` texels, default `dst.width`), starting at element `srcOffset`,
   * consecutive in `src` (a row pitch of `4 · width`, which must be a multiple of 64 floats: WebGPU's
   * 256-byte row alignment), into the texture's rows from `at.y` (default 0), texels from `at.x` (default 0).
   *
   * @example
   * ```ts
   * engine.copyToTexture(a, engine.texture("matmul.A", k / 4, m)); // A: m × k, k a multiple of 64
   * ```
   */
  copyToTexture(
    src: Tensor,
    dst: EngineTexture,
    srcOffset = 0,
    rows = dst.height,
    at: { x?: number; y?: number; width?: number } = {},
  ): void {
    const { x = 0, y = 0, width = dst.width } = at;
    const pitch = width * 16;
    const bytes = pitch * rows;
    if (
      pitch % 256 !== 0 || srcOffset < 0 || srcOffset % 4 !== 0 || srcOffset * 4 + bytes > src.bytes ||
      !(rows >= 1 && y >= 0 && y + rows <= dst.height) || !(width >= 1 && x >= 0 && x + width <= dst.width)
    ) {
      throw new RangeError(
        `Cannot copy ${rows} rows of ${width} texels of [${src.shape}] from element ${srcOffset} into a ` +
          `${dst.width} × ${dst.height} texture at (${x}, ${y}): rows of ${width * 4} floats must be a ` +
          `multiple of 64, start at a multiple of 4 elements and lie within the tensor and the texture`,
      );
    }
    this.#endPass();
    this.#enc().copyBufferToTexture(
      { buffer: src.buffer, offset: srcOffset * 4, bytesPerRow: pitch, rowsPerImage: rows },
      { texture: dst.texture, origin: [x, y] },
      [width, rows],
    );
    this.#recorded++;
  }

  /**
   * Copy `texels` texels (4 floats each) of `src` from element `srcOffset` into row `row` of `dst`,
   * starting at its first texel, in command order: the last, partial row of a flat layout.
   */
  copyRowToTexture(src: Tensor, dst: EngineTexture, srcOffset: number, row: number, texels: number): void {
    if (
      srcOffset < 0 || srcOffset % 4 !== 0 || srcOffset * 4 + texels * 16 > src.bytes || !(texels >= 1) ||
      texels > dst.width || !(row >= 0 && row < dst.height)
    ) {
      throw new RangeError(
        `Cannot copy ${texels} texels of [${src.shape}] from element ${srcOffset} into row ${row} of a ` +
          `${dst.width} × ${dst.height} texture: they must lie within the tensor and the texture`,
      );
    }
    this.#endPass();
    this.#enc().copyBufferToTexture(
      { buffer: src.buffer, offset: srcOffset * 4 },
      { texture: dst.texture, origin: [0, row] },
      [texels, 1],
    );
    this.#recorded++;
  }

  /** Wait until the GPU has finished all submitted work. */
  async sync(): Promise<void> {
    this.flush();
    await this.device.queue.onSubmittedWorkDone();
    this.checkError();
  }

  #pipeline(kernel: Kernel): { pipeline: GPUComputePipeline; layout: GPUBindGroupLayout; id: number } {
    let p = this.#pipelines.get(kernel.source);
    if (p) return p;
    const module = this.device.createShaderModule({ label: kernel.name, code: kernel.source });
    module.getCompilationInfo?.().then((info) => {
      const errors = info.messages.filter((m) => m.type === "error");
      if (errors.length === 0) return;
      const lines = kernel.source.split("\n");
      const text = errors.map((m) =>
        `  line ${m.lineNum} (body line ${m.lineNum - kernel.headerLines}): ${m.message}\n` +
        `    ${lines[m.lineNum - 1] ?? ""}`
      ).join("\n");
      this.#fail(`WGSL compile error in kernel ${kernel.name}:\n${text}`, true);
    }).catch(() => {});
    const entries: GPUBindGroupLayoutEntry[] = kernel.bindings.map((b, i) =>
      b.texture === "sampled"
        ? { binding: i, visibility: GPUShaderStage.COMPUTE, texture: { sampleType: "unfilterable-float" } }
        : b.texture === "write"
        ? {
          binding: i,
          visibility: GPUShaderStage.COMPUTE,
          storageTexture: { access: "write-only", format: "rgba32float" },
        }
        : {
          binding: i,
          visibility: GPUShaderStage.COMPUTE,
          buffer: { type: b.access === "read" ? "read-only-storage" : "storage" },
        }
    );
    entries.push({
      binding: kernel.bindings.length,
      visibility: GPUShaderStage.COMPUTE,
      buffer: { type: "uniform" },
    });
    const layout = this.device.createBindGroupLayout({ label: kernel.name, entries });
    const pipeline = this.device.createComputePipeline({
      label: kernel.name,
      layout: this.device.createPipelineLayout({ label: kernel.name, bindGroupLayouts: [layout] }),
      compute: { module, entryPoint: "main" },
    });
    p = { pipeline, layout, id: this.#nextId++ };
    this.#pipelines.set(kernel.source, p);
    return p;
  }

  #uniformBuffer(kernel: Kernel, values: UniformValues<Record<string, UniformType>>): GPUBuffer {
    const nWords = kernel.uniformBytes / 4;
    if (this.#words.length < nWords) this.#words = new Uint32Array(nWords);
    const words = this.#words.subarray(0, nWords);
    words.fill(0);
    kernel.pack(values, words);
    let key = kernel.name;
    for (let i = 0; i < nWords; i++) key += "," + words[i];
    let buf = this.#uniforms.get(key);
    if (buf) {
      return buf;
    }
    buf = this.device.createBuffer({
      label: `${kernel.name} uniforms`,
      size: kernel.uniformBytes,
      usage: UNIFORM_USAGE,
      mappedAtCreation: true,
    });
    new Uint32Array(buf.getMappedRange()).set(words);
    buf.unmap();
    this.#uniformIds.set(buf, this.#nextId++);
    this.#uniforms.set(key, buf);
    if (this.#uniforms.size > 4096) {
      // Evict the oldest half; destroy them after the next submit (recorded work may use them).
      let n = 2048;
      for (const [k, b] of this.#uniforms) {
        if (n-- === 0) break;
        this.#uniforms.delete(k);
        this.#retiredUniforms.push(b);
      }
      this.#bindGroups.clear();
    }
    return buf;
  }

  /**
   * Record one dispatch of `kernel`. Tensors are bound whole (up to the binding limit) or as ranges.
   *
   * @example
   * ```ts
   * engine.run(scaleKernel, { bindings: [x, y], uniforms: { n: x.size, alpha: 2 }, workgroups: grid(x.size, 64) });
   * ```
   */
  run<U extends Record<string, UniformType>>(kernel: Kernel<U>, args: DispatchArgs<U>): void {
    if (this.#destroyed) throw new GPUFailure(`Cannot run kernel ${kernel.name}: the engine was destroyed`);
    const k = kernel as unknown as Kernel;
    const { pipeline, layout, id } = this.#pipeline(k);
    const ubuf = this.#uniformBuffer(k, args.uniforms as UniformValues<Record<string, UniformType>>);
    const b = args.bindings;
    if (b.length !== k.bindings.length) {
      throw new TypeError(
        `Cannot run kernel ${k.name}: it has ${k.bindings.length} bindings, current value has ${b.length}`,
      );
    }
    let key = `${id}|${this.#uniformIds.get(ubuf)}`;
    const ranges: (GPUBufferBinding | GPUTextureView)[] = [];
    for (let i = 0; i < b.length; i++) {
      const r = b[i];
      if (!k.bindings[i].texture !== !("view" in r)) {
        throw new TypeError(
          `Cannot run kernel ${k.name}: binding "${k.bindings[i].name}" takes a ${
            k.bindings[i].texture ? "texture" : "tensor"
          }`,
        );
      }
      if ("view" in r) {
        key += `|t${r.id}`;
        ranges.push(r.view);
        continue;
      }
      let buffer: GPUBuffer, offset: number, size: number, bid: number;
      if (r instanceof Tensor) {
        const st = r.storage;
        if (r.bytes > this.maxBinding) {
          throw new RangeError(
            `Cannot run kernel ${k.name} (${args.info ?? ""}): binding "${k.bindings[i].name}" holds ` +
              `${fmtBytes(r.bytes)}, more than maxStorageBufferBindingSize (${fmtBytes(this.maxBinding)}); ` +
              `this kernel must split it into ranges, or use a smaller batch size`,
          );
        }
        buffer = st.buf.buffer;
        bid = st.buf.id;
        offset = 0;
        size = Math.min(st.buf.bytes, this.maxBinding - (this.maxBinding % 16));
      } else {
        const st = r.tensor.storage;
        const el = BYTES[r.tensor.dtype];
        buffer = st.buf.buffer;
        bid = st.buf.id;
        offset = r.offset * el;
        size = Math.ceil((r.size * el) / 16) * 16;
        if (offset % this.offsetAlign !== 0) {
          throw new RangeError(
            `Cannot bind ${k.name}.${
              k.bindings[i].name
            }: offset ${offset} B is not a multiple of ${this.offsetAlign}`,
          );
        }
        size = Math.min(size, st.buf.bytes - offset);
        if (size > this.maxBinding) {
          throw new RangeError(
            `Cannot bind ${k.name}.${k.bindings[i].name}: range of ${
              fmtBytes(size)
            } exceeds maxStorageBufferBindingSize`,
          );
        }
      }
      key += `|${bid}:${offset}:${size}`;
      ranges.push({ buffer, offset, size });
    }
    let group = this.#bindGroups.get(key);
    if (!group) {
      const entries: GPUBindGroupEntry[] = ranges.map((r, i) => ({ binding: i, resource: r }));
      entries.push({ binding: b.length, resource: { buffer: ubuf } });
      group = this.device.createBindGroup({ label: k.name, layout, entries });
      if (this.#bindGroups.size > 8192) this.#bindGroups.clear();
      this.#bindGroups.set(key, group);
    }
    const [x, y = 1, z = 1] = args.workgroups;
    const line = `${k.name} ${args.info ?? ""} wg=${x}x${y}x${z}`;
    if (this.#recent.length >= 8) this.#recent.shift();
    this.#recent.push(line);
    if (this.trace) console.error(`[he2gene] dispatch ${line}`);
    if (this.#profile) {
      this.#profiledDispatch(this.#profile.byShape ? line : k.name, pipeline, group, x, y, z);
      return;
    }
    const pass = this.#pass ??= this.#beginPass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, group);
    pass.dispatchWorkgroups(x, y, z);
    if (++this.#recorded >= this.autoFlush) this.flush();
  }

  // ---------------------------------------------------------------- profiling

  #profile: {
    qs: GPUQuerySet;
    names: string[];
    pending: Promise<void>[];
    totals: Map<string, [number, number]>;
    byShape: boolean;
  } | null = null;

  /**
   * Per-kernel GPU time: while on, each dispatch runs in its own timestamped pass (slower, for profiling
   * only; needs `timestamp-query`). `profileReport()` returns the totals per kernel name.
   *
   * @example
   * ```ts
   * engine.startProfile();
   * model.predict(x);
   * console.table(await engine.profileReport());
   * ```
   */
  startProfile(options: { byShape?: boolean } = {}): void {
    if (!this.device.features.has("timestamp-query")) {
      throw new GPUFailure("Cannot profile: the device has no timestamp-query feature");
    }
    this.flush();
    this.#profile = {
      qs: this.device.createQuerySet({ label: "he2gene profile", type: "timestamp", count: 512 }),
      names: [],
      pending: [],
      totals: new Map(),
      byShape: options.byShape ?? false,
    };
  }

  #profiledDispatch(
    name: string,
    pipeline: GPUComputePipeline,
    group: GPUBindGroup,
    x: number,
    y: number,
    z: number,
  ) {
    const p = this.#profile!;
    this.#endPass();
    const i = p.names.length;
    p.names.push(name);
    const pass = this.#enc().beginComputePass({
      label: `profile ${name}`,
      timestampWrites: { querySet: p.qs, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 },
    });
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, group);
    pass.dispatchWorkgroups(x, y, z);
    pass.end();
    this.#recorded++;
    if (p.names.length === 256) this.#collectProfile();
  }

  #collectProfile(): void {
    const p = this.#profile!;
    const n = p.names.length;
    if (n === 0) return;
    const names = p.names;
    p.names = [];
    const bytes = n * 16;
    const resolve = this.pool.acquire(
      bytes,
      GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
      "profile",
    );
    const staging = this.pool.acquire(bytes, READ_USAGE, "profile readback");
    const enc = this.#enc();
    enc.resolveQuerySet(p.qs, 0, 2 * n, resolve.buffer, 0);
    enc.copyBufferToBuffer(resolve.buffer, 0, staging.buffer, 0, bytes);
    this.flush();
    p.pending.push(
      staging.buffer.mapAsync(GPUMapMode.READ, 0, bytes).then(() => {
        const t = new BigInt64Array(staging.buffer.getMappedRange(0, bytes).slice(0));
        staging.buffer.unmap();
        this.pool.release(resolve);
        this.pool.release(staging);
        names.forEach((name, i) => {
          const ms = Number(t[2 * i + 1] - t[2 * i]) / 1e6;
          const cur = p.totals.get(name) ?? [0, 0];
          p.totals.set(name, [cur[0] + ms, cur[1] + 1]);
        });
      }),
    );
  }

  /** Stop profiling and return GPU milliseconds and dispatch counts per kernel, slowest first. */
  async profileReport(): Promise<{ kernel: string; ms: number; dispatches: number }[]> {
    const p = this.#profile;
    if (!p) return [];
    this.#collectProfile();
    await Promise.all(p.pending);
    this.#profile = null;
    p.qs.destroy();
    return [...p.totals].map(([kernel, [ms, dispatches]]) => ({ kernel, ms, dispatches })).sort((a, b) =>
      b.ms - a.ms
    );
  }

  /** While `timeGpu` runs: its query set, the passes begun so far (each gets a begin/end pair). */
  #timing: { qs: GPUQuerySet; passes: number } | null = null;

  /** Begin a compute pass; inside `timeGpu`, one with timestamps (until its query set is full). */
  #beginPass(): GPUComputePassEncoder {
    const t = this.#timing;
    if (!t) return this.#enc().beginComputePass({ label: "he2gene pass" });
    const i = t.passes++;
    if (i >= TIMED_PASSES) return this.#enc().beginComputePass({ label: "he2gene pass (untimed)" });
    return this.#enc().beginComputePass({
      label: "he2gene timed pass",
      timestampWrites: { querySet: t.qs, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 },
    });
  }

  /**
   * Time the dispatches `fn` records, on the GPU, with timestamp queries: the sum over the compute passes
   * `fn` records (a buffer clear or copy between dispatches ends one pass and begins the next; the clears
   * and copies themselves are not counted). Returns milliseconds, or `null` when the device has no
   * `timestamp-query` or `fn` recorded more passes than there are queries (64) (`fn` still runs).
   */
  async timeGpu(fn: () => void): Promise<number | null> {
    if (!this.device.features.has("timestamp-query") || this.#profile || this.#timing) {
      fn();
      await this.sync();
      return null;
    }
    this.flush();
    this.#querySet ??= this.device.createQuerySet({
      label: "he2gene timestamps",
      type: "timestamp",
      count: 2 * TIMED_PASSES,
    });
    const timing = this.#timing = { qs: this.#querySet, passes: 0 };
    const saved = this.autoFlush;
    this.autoFlush = Infinity;
    try {
      fn();
      this.#endPass();
    } finally {
      this.autoFlush = saved;
      this.#timing = null;
    }
    const n = Math.min(timing.passes, TIMED_PASSES);
    if (n === 0 || timing.passes > TIMED_PASSES) {
      await this.sync();
      return n === 0 ? 0 : null;
    }
    const bytes = 16 * n;
    const resolve = this.pool.acquire(
      bytes,
      GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
      "timestamps",
    );
    const staging = this.pool.acquire(bytes, READ_USAGE, "timestamps readback");
    const enc = this.#enc();
    enc.resolveQuerySet(this.#querySet, 0, 2 * n, resolve.buffer, 0);
    enc.copyBufferToBuffer(resolve.buffer, 0, staging.buffer, 0, bytes);
    this.flush();
    await staging.buffer.mapAsync(GPUMapMode.READ, 0, bytes);
    const t = new BigInt64Array(staging.buffer.getMappedRange(0, bytes).slice(0));
    staging.buffer.unmap();
    this.pool.release(resolve);
    this.pool.release(staging);
    this.checkError();
    let ns = 0n;
    for (let i = 0; i < n; i++) ns += t[2 * i + 1] - t[2 * i];
    return Number(ns) / 1e6;
  }

  /** Buffer pool counters (tensors alive, bytes). */
  stats(): PoolStats {
    return this.pool.stats();
  }

  /** Release the device. The engine cannot be used afterwards. */
  destroy(): void {
    if (this.#destroyed) return;
    this.flush();
    this.#destroyed = true;
    this.pool.trim();
    this.#querySet?.destroy();
    for (const b of this.#uniforms.values()) b.destroy();
    for (const t of this.#textures.values()) t.texture.destroy();
    this.#textures.clear();
    this.device.destroy();
  }
}

function collectTensors(v: unknown, out: Set<Tensor>, depth: number): void {
  if (depth > 4 || v === null || typeof v !== "object") return;
  if (v instanceof Tensor) {
    out.add(v);
    return;
  }
  if (Array.isArray(v)) {
    for (const x of v) collectTensors(x, out, depth + 1);
  } else if (v instanceof Map) {
    for (const x of v.values()) collectTensors(x, out, depth + 1);
  } else if (Object.getPrototypeOf(v) === Object.prototype) {
    for (const x of Object.values(v)) collectTensors(x, out, depth + 1);
  }
}

/**
 * Create an engine on the best available adapter.
 *
 * @example
 * ```ts
 * const engine = await createEngine();
 * console.log(engine.adapterInfo.name, engine.adapterInfo.backend);
 * engine.destroy();
 * ```
 */
export async function createEngine(options: EngineOptions = {}): Promise<Engine> {
  const { device, description } = await createDevice(options);
  return new Engine(device, description, options);
}
