/** acg2vec TypeScript client: generated messages and @grpc/grpc-js stubs, plus a small typed client. */
export * from "./client.js";
export * from "./credentials.js";
export * from "./errors.js";
export * from "./retry.js";
export { cancelledError } from "./streams.js";
export { PROTOS_VERSION } from "./gen/version.js";
export * from "./gen/acg2vec/v1/common.js";
export * from "./gen/acg2vec/v1/image_feature.js";
export * from "./gen/acg2vec/v1/search.js";
export * from "./gen/acg2vec/v1/tagging.js";
export * from "./gen/acg2vec/v1/text_feature.js";
export {
  HealthCheckRequest,
  HealthCheckResponse,
  HealthCheckResponse_ServingStatus,
  HealthClient,
  HealthService,
  healthCheckResponse_ServingStatusToJSON,
} from "./gen/grpc/health/v1/health.js";
/** google.rpc messages of the rich error details (see richStatus, fieldViolations, retryDelayMs). */
export { Status } from "./gen/google/rpc/status.js";
export { BadRequest, BadRequest_FieldViolation, RetryInfo } from "./gen/google/rpc/error_details.js";
