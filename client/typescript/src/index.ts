/**
 * @modelreg/client: the TypeScript client of the modelreg model registry.
 *
 * The messages, enums and the service descriptor are generated from `proto/`
 * by protoc-gen-es (`npm run generate`, into src/gen, never edited by hand);
 * this package adds a thin typed layer on top:
 *
 * - `connect(target, { token, actor, caCert })` returns a `RegistryClient`
 *   whose calls carry the caller's identity;
 * - `RegistryClient.watch()` is a `WatchTransitions` subscription that
 *   resumes after a broken connection from the last sequence it saw;
 * - `fieldViolations(err)` reads the `google.rpc.BadRequest` of an
 *   `INVALID_ARGUMENT` error.
 *
 * Every generated message schema, type and enum of `modelreg.v1` is
 * re-exported here (`Stage.PRODUCTION`, `PolicySchema`, `RegistryEvent`).
 */
export * from "./client.js";
export * from "./errors.js";
export * from "./watch.js";
export * from "./gen/modelreg/v1/resources_pb.js";
export * from "./gen/modelreg/v1/events_pb.js";
export * from "./gen/modelreg/v1/consumers_pb.js";
export * from "./gen/modelreg/v1/registry_pb.js";
export * as googleRpc from "./gen/google/rpc/error_details_pb.js";
export { Code, ConnectError } from "@connectrpc/connect";
export { create } from "@bufbuild/protobuf";
