/**
 * Progress with ETA: a bar redrawn in place on a terminal, plain lines (every 10 % or 30 s) otherwise.
 *
 * @module
 */

/** A duration for people: `42s`, `3m07s`, `2h05m`; `?` when unknown. */
export function fmtTime(s: number): string {
  if (!Number.isFinite(s)) return "?";
  if (s < 60) return `${s.toFixed(0)}s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m}m${String(Math.round(s % 60)).padStart(2, "0")}s` : `${Math.floor(m / 60)}h${m % 60}m`;
}

/**
 * A progress bar over `total` items: `label done/total (pct%), rate unit/s, elapsed, ETA`. The rate's unit
 * is `unit`, by default the label when it is one word (`patches` → `2.00 patches/s`), else `items`.
 *
 * @example
 * ```ts
 * const bar = new Progress("patches", 120);
 * bar.tick(8, "batch 1"); // patches 8/120 (6%), 2.00 patches/s, elapsed 4s, ETA 56s, batch 1
 * bar.done();
 * ```
 */
export class Progress {
  #start = performance.now();
  #done = 0;
  #lastLine = 0;
  #lastPct = -1;
  readonly tty: boolean;
  #enc = new TextEncoder();

  constructor(
    readonly label: string,
    readonly total: number,
    readonly quiet = false,
    readonly unit = /^\w+$/.test(label) ? label : "items",
  ) {
    this.tty = !quiet && Deno.stderr.isTerminal();
  }

  /** Advance by `n` items; `note` is shown after the counts. */
  tick(n: number, note = ""): void {
    this.#done += n;
    if (this.quiet) return;
    const el = (performance.now() - this.#start) / 1000;
    const rate = this.#done / Math.max(el, 1e-9);
    const eta = (this.total - this.#done) / rate;
    const pct = Math.floor((100 * this.#done) / Math.max(this.total, 1));
    const text = `${this.label} ${this.#done}/${this.total} (${pct}%), ${rate.toFixed(2)} ${this.unit}/s, ` +
      `elapsed ${fmtTime(el)}, ETA ${fmtTime(eta)}${note ? ", " + note : ""}`;
    if (this.tty) {
      const width = 24;
      const fill = Math.round((width * this.#done) / Math.max(this.total, 1));
      const bar = "█".repeat(fill) + "░".repeat(width - fill);
      Deno.stderr.writeSync(this.#enc.encode(`\r\x1b[K${bar} ${text}`));
    } else if (pct >= this.#lastPct + 10 || el - this.#lastLine >= 30 || this.#done >= this.total) {
      this.#lastPct = pct - (pct % 10);
      this.#lastLine = el;
      console.error(text);
    }
  }

  /** Finish the line. */
  done(message?: string): void {
    if (this.tty) Deno.stderr.writeSync(this.#enc.encode("\n"));
    if (message && !this.quiet) console.error(message);
  }
}
