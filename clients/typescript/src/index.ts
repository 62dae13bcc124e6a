/** acg2vec TypeScript client: generated messages and @grpc/grpc-js stubs, plus a small typed client. */
export * from "./client";
export * from "./errors";
export { PROTOS_VERSION } from "./gen/version";
export * from "./gen/acg2vec/v1/common";
export * from "./gen/acg2vec/v1/image_feature";
export * from "./gen/acg2vec/v1/search";
export * from "./gen/acg2vec/v1/tagging";
export * from "./gen/acg2vec/v1/text_feature";
export {
  HealthCheckRequest,
  HealthCheckResponse,
  HealthCheckResponse_ServingStatus,
  HealthClient,
  healthCheckResponse_ServingStatusToJSON,
} from "./gen/grpc/health/v1/health";
