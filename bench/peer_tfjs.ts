/**
 * The benchmark's peer: `@tensorflow/tfjs-backend-webgpu@4.22.0` on *our* GPUDevice (same adapter, same
 * limits), loaded with a dynamic import so nothing else in he2gene depends on it.
 *
 * Notes (tfjs 4.22 under Deno 2.9.6):
 * - kernels are registered under the backend name "webgpu"; a backend registered under another name must
 *   have them copied;
 * - `WEBGPU_CPU_FORWARD` would run inputs under 1000 elements on tfjs's CPU kernels: turned off;
 * - `dataSync()` fails in Deno (no 2-D canvas): `await data()` is used;
 * - a storage binding above `maxStorageBufferBindingSize` (e.g. the 161 MB 2048×19699 weight on llvmpipe)
 *   makes tfjs return zeros silently; the device's validation error is captured and reported.
 *
 * @module
 */

/** Timing of one shape on the peer. */
export interface PeerTiming {
  /** Median wall ms of matmul + readback of C. */
  wallMs: number;
  /** Median GPU ms of the matmul dispatch(es) from tfjs's profiler (timestamp queries), or NaN. */
  gpuMs: number;
  /** Sum of C, for a cross-check with ours on the same inputs. */
  checksum: number;
  /** WebGPU errors raised meanwhile (non-empty means the result is wrong). */
  errors: string[];
}

/** A tfjs-webgpu instance bound to a device. */
export interface TfjsPeer {
  name: string;
  timeMatmul(
    a: Float32Array,
    b: Float32Array,
    m: number,
    k: number,
    n: number,
    opts: { transposeB: boolean; warmup: number; reps: number },
  ): Promise<PeerTiming>;
  /**
   * Time one convolution pass in NHWC (filter HWIO): `fwd` a = x, b = filter; `dx` a = dy, b = filter
   * (kernel `Conv2DBackpropInput`); `dw` a = x, b = dy (kernel `Conv2DBackpropFilter`). Padding is explicit
   * and symmetric, dilation 1. The checksum is the sum of the result. A pass slower than `slowMs` (default
   * 2000) at warm-up is repeated once only; `reps` says how often it ran.
   */
  timeConv(
    pass: ConvPass,
    g: PeerConvGeometry,
    a: Float32Array,
    b: Float32Array,
    opts: { warmup: number; reps: number; slowMs?: number },
  ): Promise<PeerTiming & { reps: number }>;
  dispose(): void;
  /** The tfjs-core module (for other timings). */
  // deno-lint-ignore no-explicit-any
  tf: any;
}

/** A convolution pass. */
export type ConvPass = "fwd" | "dx" | "dw";

/** Geometry of a square convolution: batch n, input h×w, kernel k×k, output oh×ow. */
export interface PeerConvGeometry {
  n: number;
  h: number;
  w: number;
  cin: number;
  cout: number;
  k: number;
  stride: number;
  pad: number;
  oh: number;
  ow: number;
}

const BACKEND = "webgpu-peer";

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const h = s.length >> 1;
  return s.length === 0 ? NaN : s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
}

/** Load tfjs-webgpu and register it as a backend on `device`. */
export async function createTfjsPeer(device: GPUDevice, adapterInfo: GPUAdapterInfo): Promise<TfjsPeer> {
  const tf = await import("@tensorflow/tfjs-core");
  const wg = await import("@tensorflow/tfjs-backend-webgpu");
  tf.env().set("WEBGPU_CPU_FORWARD", false);
  // deno-lint-ignore no-explicit-any
  const backend = new (wg as any).WebGPUBackend(device, adapterInfo);
  if (tf.findBackendFactory(BACKEND) == null) {
    for (const k of tf.getKernelsForBackend("webgpu")) tf.registerKernel({ ...k, backendName: BACKEND });
  } else {
    tf.removeBackend(BACKEND);
  }
  if (tf.findBackendFactory("webgpu") != null) tf.removeBackend("webgpu");
  tf.registerBackend(BACKEND, () => backend, 100);
  if (!(await tf.setBackend(BACKEND))) throw new Error("tf.setBackend(webgpu-peer) failed");
  await tf.ready();

  const errors: string[] = [];
  const onErr = (e: Event) => errors.push(String((e as GPUUncapturedErrorEvent).error?.message ?? e));
  device.addEventListener("uncapturederror", onErr);

  return {
    name: "tfjs-webgpu 4.22.0",
    tf,
    async timeMatmul(a, b, m, k, n, { transposeB, warmup, reps }) {
      const ta = tf.tensor2d(a, [m, k]);
      const tb = tf.tensor2d(b, transposeB ? [n, k] : [k, n]);
      const first = errors.length;
      // Capture the peer's validation errors here (they would otherwise reach our engine's handler).
      device.pushErrorScope("validation");
      const wall: number[] = [];
      const gpu: number[] = [];
      let checksum = NaN;
      try {
        for (let i = 0; i < warmup + reps; i++) {
          const t0 = performance.now();
          const c = tf.matMul(ta, tb, false, transposeB);
          const data = (await c.data()) as Float32Array;
          const t1 = performance.now();
          c.dispose();
          if (i >= warmup) wall.push(t1 - t0);
          if (i === warmup) checksum = data.reduce((s, v) => s + v, 0);
        }
        if (device.features.has("timestamp-query")) {
          for (let i = 0; i < Math.min(reps, 3); i++) {
            // deno-lint-ignore no-explicit-any
            let c: any = null;
            const info = await tf.time(() => {
              c = tf.matMul(ta, tb, false, transposeB);
            });
            c.dispose();
            gpu.push(info.kernelMs as number);
          }
        }
      } finally {
        ta.dispose();
        tb.dispose();
        const err = await device.popErrorScope();
        if (err) errors.push(err.message);
      }
      return { wallMs: median(wall), gpuMs: median(gpu), checksum, errors: errors.slice(first) };
    },
    async timeConv(pass, g, a, b, { warmup, reps, slowMs = 2000 }) {
      const xShape: [number, number, number, number] = [g.n, g.h, g.w, g.cin];
      const yShape: [number, number, number, number] = [g.n, g.oh, g.ow, g.cout];
      const fShape: [number, number, number, number] = [g.k, g.k, g.cin, g.cout];
      type Pad = [[number, number], [number, number], [number, number], [number, number]];
      const pad: Pad = [[0, 0], [g.pad, g.pad], [g.pad, g.pad], [0, 0]];
      const strides: [number, number] = [g.stride, g.stride];
      const ta = tf.tensor4d(a, pass === "dx" ? yShape : xShape);
      const tb = tf.tensor4d(b, pass === "dw" ? yShape : fShape);
      // Explicit padding: no dimRoundingMode.
      const attrs = { strides, pad, dataFormat: "NHWC" };
      // deno-lint-ignore no-explicit-any
      const run = (): any =>
        pass === "fwd"
          ? tf.conv2d(ta, tb, strides, pad, "NHWC")
          : pass === "dx"
          ? tf.engine().runKernel("Conv2DBackpropInput", { dy: ta, filter: tb }, {
            ...attrs,
            inputShape: xShape,
          })
          : tf.engine().runKernel("Conv2DBackpropFilter", { x: ta, dy: tb }, {
            ...attrs,
            filterShape: fShape,
          });
      const first = errors.length;
      device.pushErrorScope("validation");
      const wall: number[] = [];
      const gpu: number[] = [];
      let checksum = NaN;
      let n = warmup + reps;
      try {
        for (let i = 0; i < n; i++) {
          const t0 = performance.now();
          const c = run();
          const data = (await c.data()) as Float32Array;
          const t1 = performance.now();
          c.dispose();
          if (i === 0 && t1 - t0 > slowMs) n = Math.min(n, warmup + 1);
          if (i >= warmup) wall.push(t1 - t0);
          if (i === warmup) checksum = data.reduce((s, v) => s + v, 0);
        }
        if (device.features.has("timestamp-query")) {
          for (let i = 0; i < Math.min(n - warmup, 3); i++) {
            // deno-lint-ignore no-explicit-any
            let c: any = null;
            const info = await tf.time(() => {
              c = run();
            });
            c.dispose();
            gpu.push(info.kernelMs as number);
          }
        }
      } finally {
        ta.dispose();
        tb.dispose();
        const err = await device.popErrorScope();
        if (err) errors.push(err.message);
      }
      return {
        wallMs: median(wall),
        gpuMs: median(gpu),
        checksum,
        errors: errors.slice(first),
        reps: n - warmup,
      };
    },
    dispose() {
      device.removeEventListener("uncapturederror", onErr);
      if (tf.findBackend(BACKEND) != null || tf.findBackendFactory(BACKEND) != null) {
        tf.removeBackend(BACKEND);
      }
    },
  };
}
