/**
 * Reads the rich error details (google.rpc.Status in the `grpc-status-details-bin` trailer) that the server
 * attaches to failed calls: BadRequest field violations name the bad field (e.g. `images[3]`), RetryInfo says
 * how long to wait after RESOURCE_EXHAUSTED or UNAVAILABLE.
 */
import { type ServiceError } from "@grpc/grpc-js";

import { BadRequest, type BadRequest_FieldViolation, RetryInfo } from "./gen/google/rpc/error_details.js";
import { Status } from "./gen/google/rpc/status.js";

const DETAILS_KEY = "grpc-status-details-bin";
const TYPE_PREFIX = "type.googleapis.com/";

/** The google.rpc.Status of a failed call, or undefined when the server sent none. */
export function richStatus(error: ServiceError): Status | undefined {
  const [raw] = error.metadata?.get(DETAILS_KEY) ?? [];
  if (raw === undefined) return undefined;
  return Status.decode(typeof raw === "string" ? Buffer.from(raw, "base64") : raw);
}

/** BadRequest field violations of a failed call (empty when there are none). */
export function fieldViolations(error: ServiceError): BadRequest_FieldViolation[] {
  const details = richStatus(error)?.details ?? [];
  return details
    .filter((any) => any.typeUrl === `${TYPE_PREFIX}google.rpc.BadRequest`)
    .flatMap((any) => BadRequest.decode(any.value).fieldViolations);
}

/** The server's suggested retry delay in ms (RESOURCE_EXHAUSTED and UNAVAILABLE answers carry one), or undefined. */
export function retryDelayMs(error: ServiceError): number | undefined {
  const any = richStatus(error)?.details.find((d) => d.typeUrl === `${TYPE_PREFIX}google.rpc.RetryInfo`);
  const delay = any ? RetryInfo.decode(any.value).retryDelay : undefined;
  return delay ? delay.seconds * 1000 + delay.nanos / 1e6 : undefined;
}
