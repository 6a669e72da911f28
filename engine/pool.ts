/**
 * GPU buffer pool keyed by size class and usage. Released buffers go back to a free list and are handed
 * out again for any request of the same class, so a training step that allocates the same shapes every
 * iteration creates no new buffers after the first.
 *
 * Size classes: powers of two up to 1 MiB, then eight steps per power of two (≤ 12.5 % waste).
 *
 * @module
 */

/** A pooled GPU buffer with a stable id (used in bind-group cache keys). */
export interface PooledBuffer {
  readonly buffer: GPUBuffer;
  readonly id: number;
  /** Allocated bytes (the size class), ≥ the bytes asked for. */
  readonly bytes: number;
  readonly usage: number;
}

/** Round a request up to its size class (multiple of 16 bytes, at least 16). */
export function sizeClass(bytes: number): number {
  const b = Math.max(16, Math.ceil(bytes / 16) * 16);
  if (b <= 1 << 20) return 2 ** Math.ceil(Math.log2(b));
  const p = 2 ** Math.floor(Math.log2(b));
  const step = p / 8;
  return Math.ceil(b / step) * step;
}

/** Pool statistics, for leak checks in tests and long runs. */
export interface PoolStats {
  /** Buffers handed out and not yet released. */
  inUse: number;
  /** Bytes of buffers handed out. */
  inUseBytes: number;
  /** Buffers waiting in free lists. */
  free: number;
  freeBytes: number;
  /** Buffers created since the pool was made. */
  created: number;
  /** Largest `inUseBytes` seen since the last `resetPeak()`. */
  peakInUseBytes: number;
  /** Bytes of every buffer the pool holds (in use + free): the GPU memory it occupies. */
  totalBytes: number;
}

/**
 * @example
 * ```ts
 * const pool = new BufferPool(device);
 * const b = pool.acquire(1000, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC, "x");
 * pool.release(b);
 * ```
 */
export class BufferPool {
  #free = new Map<string, PooledBuffer[]>();
  #nextId = 1;
  #stats: PoolStats = {
    inUse: 0,
    inUseBytes: 0,
    free: 0,
    freeBytes: 0,
    created: 0,
    peakInUseBytes: 0,
    totalBytes: 0,
  };

  /**
   * `options.beforeDestroy` runs before free buffers are destroyed (the engine submits recorded work that
   * may still use them); `options.slackBytes` (default 256 MiB): free bytes the pool may keep when it has to
   * create a buffer.
   */
  constructor(
    readonly device: GPUDevice,
    readonly maxBufferSize: number,
    readonly options: { beforeDestroy?: () => void; slackBytes?: number } = {},
  ) {}

  /** Get a buffer of at least `bytes` bytes with exactly `usage`. */
  acquire(bytes: number, usage: number, label: string): PooledBuffer {
    if (bytes > this.maxBufferSize) {
      throw new RangeError(
        `Cannot allocate ${label}: ${fmtBytes(bytes)} exceeds the device's maxBufferSize ` +
          `(${fmtBytes(this.maxBufferSize)}); use a smaller batch size`,
      );
    }
    const size = Math.min(sizeClass(bytes), Math.max(16, Math.ceil(this.maxBufferSize / 16) * 16 - 16));
    const key = `${size}:${usage}`;
    const list = this.#free.get(key);
    const s = this.#stats;
    let pb = list?.pop();
    if (pb) {
      s.free--;
      s.freeBytes -= pb.bytes;
      pb.buffer.label = label;
    } else {
      // A miss while free lists hold other sizes: destroy the largest free buffers first, so that a run
      // whose shapes change (a checkpointed block recomputed in backward, stage after stage) holds about its
      // peak in use rather than the sum of every size's peak.
      if (s.freeBytes > (this.options.slackBytes ?? 256 * 2 ** 20)) this.#shrink();
      const buffer = this.device.createBuffer({ label, size, usage });
      pb = { buffer, id: this.#nextId++, bytes: size, usage };
      s.created++;
      s.totalBytes += size;
    }
    s.inUse++;
    s.inUseBytes += pb.bytes;
    if (s.inUseBytes > s.peakInUseBytes) s.peakInUseBytes = s.inUseBytes;
    return pb;
  }

  /** Return a buffer to its free list. */
  release(pb: PooledBuffer): void {
    const key = `${pb.bytes}:${pb.usage}`;
    let list = this.#free.get(key);
    if (!list) this.#free.set(key, list = []);
    list.push(pb);
    const s = this.#stats;
    s.inUse--;
    s.inUseBytes -= pb.bytes;
    s.free++;
    s.freeBytes += pb.bytes;
  }

  // Destroy free buffers, largest first, until at most the slack is left free.
  #shrink(): void {
    const slack = this.options.slackBytes ?? 256 * 2 ** 20;
    this.options.beforeDestroy?.();
    const all = [...this.#free.values()].flat().sort((a, b) => b.bytes - a.bytes);
    const gone = new Set<PooledBuffer>();
    for (const pb of all) {
      if (this.#stats.freeBytes <= slack) break;
      pb.buffer.destroy();
      gone.add(pb);
      this.#stats.totalBytes -= pb.bytes;
      this.#stats.free--;
      this.#stats.freeBytes -= pb.bytes;
    }
    for (const [key, list] of this.#free) {
      const keep = list.filter((pb) => !gone.has(pb));
      if (keep.length) this.#free.set(key, keep);
      else this.#free.delete(key);
    }
  }

  /** Destroy every free buffer (those in use are kept). */
  trim(): void {
    for (const list of this.#free.values()) {
      for (const pb of list) {
        pb.buffer.destroy();
        this.#stats.totalBytes -= pb.bytes;
      }
    }
    this.#free.clear();
    this.#stats.free = 0;
    this.#stats.freeBytes = 0;
  }

  /** Start a new peak measurement from the current use. */
  resetPeak(): void {
    this.#stats.peakInUseBytes = this.#stats.inUseBytes;
  }

  /** A snapshot of the counters. */
  stats(): PoolStats {
    return { ...this.#stats };
  }
}

/** Format a byte count as MiB/GiB for messages. */
export function fmtBytes(n: number): string {
  if (n >= 1 << 30) return `${(n / (1 << 30)).toFixed(2)} GiB`;
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(1)} KiB`;
  return `${n} B`;
}
