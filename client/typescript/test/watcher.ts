/** Drains a Watch in the background so a test can wait on what arrived. */
import type { RegistryEvent, Watch, WatchTransitionsResponse } from "../src/index.js";

export class Collector {
  readonly items: WatchTransitionsResponse[] = [];
  error: unknown;
  finished = false;
  private readonly done: Promise<void>;
  private wake: () => void = () => {};

  constructor(readonly watch: Watch) {
    this.done = this.drain();
  }

  private async drain(): Promise<void> {
    try {
      for await (const item of this.watch) {
        this.items.push(item);
        this.wake();
      }
    } catch (err) {
      this.error = err; // reported by the test, not lost
    } finally {
      this.finished = true;
      this.wake();
    }
  }

  events(): RegistryEvent[] {
    return this.items.flatMap((i) => (i.kind.case === "event" ? [i.kind.value] : []));
  }

  /** Resolves once `predicate(items)` holds; rejects if the watch ends or fails first, or after timeoutMs. */
  async waitFor(predicate: (items: WatchTransitionsResponse[]) => boolean, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!predicate(this.items)) {
      if (this.error !== undefined) throw new Error(`watch failed: ${String(this.error)}`, { cause: this.error });
      if (this.finished) throw new Error("watch ended before the wait was over");
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`watch did not get there in ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  /** Waits for a heartbeat bookmarking `sequence`: every matching event up to it was sent. */
  waitCaughtUp(sequence: bigint, timeoutMs = 30_000): Promise<void> {
    return this.waitFor(
      (items) => items.some((i) => i.kind.case === "heartbeat" && i.kind.value.sequence >= sequence),
      timeoutMs,
    );
  }

  async stop(): Promise<void> {
    this.watch.cancel();
    await this.done;
  }
}
