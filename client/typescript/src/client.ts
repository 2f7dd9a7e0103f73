/**
 * A thin, typed layer over the generated `ModelRegistryService` client.
 *
 * What the generated Connect client makes awkward, and this adds:
 *
 * - `connect()` builds the gRPC (HTTP/2) transport, plaintext or TLS with a CA
 *   certificate, and attaches the caller's identity to every call
 *   (`authorization: Bearer` for a token, `x-modelreg-actor` for local mode).
 * - Methods return the resource itself (`createModel` resolves to a `Model`,
 *   not a `CreateModelResponse`), give unary calls a deadline, and list
 *   methods iterate over every page.
 * - `watch()` resumes `WatchTransitions` after a broken connection from the
 *   last sequence it saw (see watch.ts).
 *
 * Everything else is the generated code: `client.rpc` is the generated client,
 * with the identity already attached, for every RPC and option.
 */
import { readFileSync } from "node:fs";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { Health, HealthCheckResponse_ServingStatus } from "./gen/grpc/health/v1/health_pb.js";
import type { RegistryEvent } from "./gen/modelreg/v1/events_pb.js";
import {
  ApproveTransitionRequestSchema,
  CreateModelRequestSchema,
  ListEventsRequestSchema,
  ListVersionsRequestSchema,
  ModelRegistryService,
  RegisterVersionRequestSchema,
  ReportDeploymentRequestSchema,
  TransitionStageRequestSchema,
  UpdateModelRequestSchema,
  type ApproveTransitionResponse,
  type TransitionStageResponse,
  type VerifyAuditLogResponse,
} from "./gen/modelreg/v1/registry_pb.js";
import type { Deployment, Model, ModelVersion } from "./gen/modelreg/v1/resources_pb.js";
import { Watch, type WatchFilter, type WatchOptions } from "./watch.js";

/** The metadata key naming the caller while the server runs without tokens. */
export const ACTOR_HEADER = "x-modelreg-actor";

/** `grpc.health.v1` serving status: `ServingStatus.SERVING`, ... */
export const ServingStatus = HealthCheckResponse_ServingStatus;
export type ServingStatus = HealthCheckResponse_ServingStatus;

export interface ConnectOptions {
  /** A bearer token, sent as `authorization: Bearer TOKEN`. */
  token?: string;
  /** The identity to act as on a server in local mode (no tokens), sent as `x-modelreg-actor`. */
  actor?: string;
  /**
   * The CA that signed the server's certificate: the path of a PEM file
   * (string) or the PEM itself (Buffer or Uint8Array). Implies TLS.
   */
  caCert?: string | Uint8Array;
  /** Force TLS on (with Node's default roots when caCert is absent) or off. Default: TLS exactly when caCert is given. */
  tls?: boolean;
  /** The deadline of every unary call made through the methods of RegistryClient, in ms (default 30 s; 0: none). Streams get none. */
  timeoutMs?: number;
}

/**
 * Opens a client to the registry at `target` (`host:port`). The connection is
 * made on the first call; `close()` ends it.
 */
export function connect(target: string, options: ConnectOptions = {}): RegistryClient {
  let ca: Uint8Array | undefined;
  if (typeof options.caCert === "string") {
    ca = readFileSync(options.caCert);
  } else if (options.caCert !== undefined) {
    ca = options.caCert;
  }
  const tls = options.tls ?? ca !== undefined;
  if (ca !== undefined && !tls) {
    throw new Error("caCert was given with tls: false");
  }
  const baseUrl = `${tls ? "https" : "http"}://${target}`;
  const identity: [string, string][] = [];
  if (options.token) {
    identity.push(["authorization", `Bearer ${options.token}`]);
  }
  if (options.actor) {
    identity.push([ACTOR_HEADER, options.actor]);
  }
  const withIdentity: Interceptor = (next) => (req) => {
    for (const [key, value] of identity) {
      req.header.set(key, value);
    }
    return next(req);
  };
  // A session manager of our own, so that close() can end the connection.
  const sessions = new Http2SessionManager(baseUrl, {}, ca !== undefined ? { ca: Buffer.from(ca) } : {});
  const transport = createGrpcTransport({ baseUrl, sessionManager: sessions, interceptors: [withIdentity] });
  return new RegistryClient(transport, sessions, target, options.timeoutMs ?? 30_000);
}

type Transport = ReturnType<typeof createGrpcTransport>;
type Init<S extends Parameters<typeof create>[0]> = MessageInitShape<S>;

/** A `ModelRegistryService` client that adds the caller's identity to every call. */
export class RegistryClient {
  /** The generated client, with the identity attached: for RPCs and options these methods do not cover. */
  readonly rpc: Client<typeof ModelRegistryService>;
  private readonly healthClient: Client<typeof Health>;

  constructor(
    readonly transport: Transport,
    private readonly sessions: Http2SessionManager,
    /** The address this client talks to, for messages. */
    readonly target: string,
    /** The deadline of unary calls, in ms (0: none). */
    readonly timeoutMs: number,
  ) {
    this.rpc = createClient(ModelRegistryService, transport);
    this.healthClient = createClient(Health, transport);
  }

  private get opts() {
    return this.timeoutMs > 0 ? { timeoutMs: this.timeoutMs } : {};
  }

  /** Closes the connection; calls in flight fail. */
  close(): void {
    this.sessions.abort();
  }

  // -- health -------------------------------------------------------------

  /** The server's `grpc.health.v1` status for `service` ("" for the whole server). */
  async health(service = "", timeoutMs = this.timeoutMs): Promise<ServingStatus> {
    const reply = await this.healthClient.check({ service }, timeoutMs > 0 ? { timeoutMs } : {});
    return reply.status;
  }

  /** Resolves once the health check answers SERVING; rejects with the last answer after `timeoutMs`. */
  async waitUntilServing(timeoutMs = 30_000, pollMs = 50): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let last: unknown;
    while (Date.now() < deadline) {
      try {
        last = ServingStatus[await this.health("", Math.min(2000, Math.max(1, deadline - Date.now())))];
        if (last === "SERVING") {
          return;
        }
      } catch (err) {
        last = err;
      }
      await new Promise((resolve) => setTimeout(resolve, pollMs));
    }
    throw new Error(`${this.target} not SERVING after ${timeoutMs} ms (last: ${String(last)})`);
  }

  // -- models ---------------------------------------------------------------

  /** Creates a model; `ALREADY_EXISTS` if the name is taken. */
  async createModel(request: Init<typeof CreateModelRequestSchema>): Promise<Model> {
    return must((await this.rpc.createModel(request, this.opts)).model, "CreateModel");
  }

  /** One model; `NOT_FOUND` if there is none by that name. */
  async getModel(name: string): Promise<Model> {
    return must((await this.rpc.getModel({ name }, this.opts)).model, "GetModel");
  }

  /** Changes the fields named in `updateMask.paths`; `etag` guards against lost updates. */
  async updateModel(request: Init<typeof UpdateModelRequestSchema>): Promise<Model> {
    return must((await this.rpc.updateModel(request, this.opts)).model, "UpdateModel");
  }

  // -- versions -------------------------------------------------------------

  /** Registers a version; a retry with the same `requestId` returns the original one. */
  async registerVersion(request: Init<typeof RegisterVersionRequestSchema>): Promise<ModelVersion> {
    return must((await this.rpc.registerVersion(request, this.opts)).version, "RegisterVersion");
  }

  /** One version, by number or by alias. */
  async getVersion(model: string, version: bigint | number | string): Promise<ModelVersion> {
    const request = typeof version === "string" ? { model, alias: version } : { model, version: BigInt(version) };
    return must((await this.rpc.getVersion(request, this.opts)).version, "GetVersion");
  }

  /** Every version of a model (of `stage`, if given), in version order, fetching page after page. */
  async *listVersions(request: Init<typeof ListVersionsRequestSchema>): AsyncGenerator<ModelVersion> {
    const req = create(ListVersionsRequestSchema, request);
    yield* everyPage(req, (r) => this.rpc.listVersions(r, this.opts), (page) => page.versions);
  }

  /** Points `alias` at a version; resolves to the model with its aliases. */
  async setAlias(model: string, alias: string, version: bigint | number): Promise<Model> {
    return must((await this.rpc.setAlias({ model, alias, version: BigInt(version) }, this.opts)).model, "SetAlias");
  }

  // -- lifecycle ------------------------------------------------------------

  /** Moves a version: `version` is set when the move applied, `request` when it waits for approval. */
  async transitionStage(request: Init<typeof TransitionStageRequestSchema>): Promise<TransitionStageResponse> {
    return this.rpc.transitionStage(request, this.opts);
  }

  /** Approves a pending transition request (as a second person). */
  async approveTransition(requestId: string, comment = ""): Promise<ApproveTransitionResponse> {
    return this.rpc.approveTransition(create(ApproveTransitionRequestSchema, { requestId, comment }), this.opts);
  }

  /** Records what a deployment worker did with a version in an environment. */
  async reportDeployment(request: Init<typeof ReportDeploymentRequestSchema>): Promise<Deployment> {
    return must((await this.rpc.reportDeployment(request, this.opts)).deployment, "ReportDeployment");
  }

  // -- events ---------------------------------------------------------------

  /** Every matching event of the log, in sequence order, fetching page after page. */
  async *listEvents(request: Init<typeof ListEventsRequestSchema> = {}): AsyncGenerator<RegistryEvent> {
    const req = create(ListEventsRequestSchema, request);
    yield* everyPage(req, (r) => this.rpc.listEvents(r, this.opts), (page) => page.events);
  }

  /** Re-computes the event log's hash chain on the server. */
  async verifyAuditLog(): Promise<VerifyAuditLogResponse> {
    return this.rpc.verifyAuditLog({}, this.opts);
  }

  /**
   * Subscribes to the event log; iterate the result with `for await`.
   * `options.afterSequence`: undefined starts at the current end of the log,
   * 0n replays from the beginning, N resumes after event N. After a broken
   * connection the stream reopens from the last sequence seen.
   */
  watch(filter: WatchFilter = {}, options: WatchOptions = {}): Watch {
    return new Watch(this.rpc, filter, options);
  }
}

/** Every item of a paged list RPC: `call` fetches a page of `req`, `items` reads it. */
async function* everyPage<R extends { pageToken: string }, P extends { nextPageToken: string }, T>(
  req: R,
  call: (req: R) => Promise<P>,
  items: (page: P) => T[],
): AsyncGenerator<T> {
  for (;;) {
    const page = await call(req);
    yield* items(page);
    if (!page.nextPageToken) return;
    req.pageToken = page.nextPageToken;
  }
}

function must<T>(value: T | undefined, method: string): T {
  if (value === undefined) {
    throw new Error(`${method} answered without its resource`);
  }
  return value;
}
