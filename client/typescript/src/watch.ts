/**
 * A `WatchTransitions` subscription that resumes by itself.
 *
 * The server promises an ordered, gap-free, duplicate-free stream that resumes
 * exactly after `after_sequence`, and heartbeats that are bookmarks (every
 * matching event up to their sequence was sent). So a client only has to
 * remember the last sequence it saw, from an event or a heartbeat, and reopen
 * the stream from there when the connection breaks: a server restart, a
 * network cut, `UNAVAILABLE` at shutdown.
 */
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import type { ModelRegistryService, WatchTransitionsResponse } from "./gen/modelreg/v1/registry_pb.js";
import { WatchTransitionsRequestSchema } from "./gen/modelreg/v1/registry_pb.js";
import type { EventType, RegistryEvent } from "./gen/modelreg/v1/events_pb.js";
import type { Stage } from "./gen/modelreg/v1/resources_pb.js";

/** What to watch; every list empty means everything. */
export interface WatchFilter {
  models?: string[];
  types?: EventType[];
  toStages?: Stage[];
}

export interface WatchOptions {
  /**
   * Where to start: undefined starts at the current end of the log (only new
   * events), 0n replays from the beginning, N resumes after event N.
   */
  afterSequence?: bigint;
  /** Reopen at most this many times in a row without a message in between (default: forever). */
  maxReconnects?: number;
  /** The first wait before reopening, doubling up to maxBackoffMs (default 100 ms). */
  initialBackoffMs?: number;
  /** The longest wait between two tries (default 5 s). */
  maxBackoffMs?: number;
  /** Ends the subscription when aborted. */
  signal?: AbortSignal;
}

/**
 * True when a failed call broke in the connection rather than being refused
 * by the server: `UNAVAILABLE` (a shutdown, a refused connection), or an
 * error without a `grpc-status` from the server whose code is what Node.js
 * makes of a dropped connection (a killed server resets the socket, which
 * ends the open streams as `CANCELED`, `ABORTED` or `INTERNAL`). An error the
 * server answered with (`UNAUTHENTICATED`, `INVALID_ARGUMENT`, ...) is final.
 */
export function isTransient(err: unknown): boolean {
  const ce = ConnectError.from(err);
  if (ce.code === Code.Unavailable) {
    return true;
  }
  const answered = ce.metadata.has("grpc-status");
  return !answered && [Code.Canceled, Code.Aborted, Code.Internal, Code.Unknown].includes(ce.code);
}

/**
 * A resuming subscription: iterate it with `for await` for every message
 * (`item.kind.case` is `"event"` or `"heartbeat"`), or `events()` for the
 * events alone. `cursor` is the last sequence seen (an event's or a
 * heartbeat's); store it and pass it back as `afterSequence` after a process
 * restart. `cancel()` ends the iteration.
 *
 * It trusts the server's guarantees and does not filter duplicates, so a
 * server bug stays visible.
 */
export class Watch implements AsyncIterable<WatchTransitionsResponse> {
  /** The last sequence seen; undefined only before the first message of a watch "from now". */
  cursor: bigint | undefined;
  /** How many times the stream was reopened after a broken connection. */
  reconnects = 0;

  private readonly abort = new AbortController();
  private started = false;

  constructor(
    private readonly client: Client<typeof ModelRegistryService>,
    private readonly filter: WatchFilter,
    private readonly options: WatchOptions = {},
  ) {
    this.cursor = options.afterSequence;
    options.signal?.addEventListener("abort", () => this.cancel(), { once: true });
    if (options.signal?.aborted) {
      this.cancel();
    }
  }

  /** Ends the subscription: the iteration stops, now or at its next message. */
  cancel(): void {
    this.abort.abort();
  }

  get cancelled(): boolean {
    return this.abort.signal.aborted;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<WatchTransitionsResponse> {
    if (this.started) {
      throw new Error("a Watch can be iterated once");
    }
    this.started = true;
    const initial = this.options.initialBackoffMs ?? 100;
    const max = this.options.maxBackoffMs ?? 5000;
    let failures = 0;
    while (!this.cancelled) {
      const request = create(WatchTransitionsRequestSchema, {
        models: this.filter.models ?? [],
        types: this.filter.types ?? [],
        toStages: this.filter.toStages ?? [],
        afterSequence: this.cursor,
      });
      try {
        for await (const item of this.client.watchTransitions(request, { signal: this.abort.signal })) {
          failures = 0;
          if (item.kind.case === "event") {
            this.cursor = item.kind.value.sequence;
          } else if (item.kind.case === "heartbeat") {
            // A bookmark never moves the cursor backwards.
            const seq = item.kind.value.sequence;
            this.cursor = this.cursor === undefined || seq > this.cursor ? seq : this.cursor;
          }
          yield item;
        }
        return; // the server ended the stream with OK
      } catch (err) {
        if (this.cancelled) {
          return;
        }
        if (!isTransient(err)) {
          throw err;
        }
        if (this.options.maxReconnects !== undefined && failures >= this.options.maxReconnects) {
          throw err;
        }
        failures += 1;
        this.reconnects += 1;
        const backoff = Math.min(max, initial * 2 ** (failures - 1));
        // Jitter spreads the reconnects of many workers after a restart.
        await sleep(backoff * (0.5 + Math.random() / 2), this.abort.signal);
      }
    }
  }

  /** The events of this subscription, skipping heartbeats (which still move `cursor`). */
  async *events(): AsyncGenerator<RegistryEvent> {
    for await (const item of this) {
      if (item.kind.case === "event") {
        yield item.kind.value;
      }
    }
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) {
      resolve();
      return;
    }
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}
