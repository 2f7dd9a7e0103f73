/**
 * Reading the rich error details (AIP-193) that modelreg puts on a failed call.
 *
 * The server sends a `google.rpc.Status` in the `grpc-status-details-bin`
 * trailer; Connect decodes it into `ConnectError.details`. Its details hold a
 * `google.rpc.BadRequest` (one violation per bad field) on `INVALID_ARGUMENT`,
 * and may hold a `PreconditionFailure` or a `ResourceInfo` on other codes.
 */
import type { DescMessage, MessageShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema } from "./gen/google/rpc/error_details_pb.js";

/** One bad field of a request: its path (`name`, `source.commit`) and why. */
export interface FieldViolation {
  field: string;
  description: string;
}

/** The error as a `ConnectError` (anything else becomes `Code.Unknown`). */
export function asConnectError(err: unknown): ConnectError {
  return ConnectError.from(err);
}

/** The status code of a failed call (`Code.InvalidArgument`, ...). */
export function errorCode(err: unknown): Code {
  return ConnectError.from(err).code;
}

/**
 * The first detail of type `schema` on a failed call, or undefined.
 * For example `errorDetail(err, PreconditionFailureSchema)`.
 */
export function errorDetail<Desc extends DescMessage>(err: unknown, schema: Desc): MessageShape<Desc> | undefined {
  return ConnectError.from(err).findDetails(schema)[0];
}

/** Every field violation of a failed call, in the server's order; empty when there is none. */
export function fieldViolations(err: unknown): FieldViolation[] {
  const found = errorDetail(err, BadRequestSchema);
  return (found?.fieldViolations ?? []).map((v) => ({ field: v.field, description: v.description }));
}
