/**
 * A small typed client over the generated @grpc/grpc-js stubs: one channel for all services, a default
 * deadline, an optional bearer token, retries on UNAVAILABLE, and promise-returning unary methods. Responses
 * are the generated message types, unchanged; anything not wrapped is reachable through the raw stubs.
 */
import {
  type CallOptions,
  Channel,
  type ChannelCredentials,
  type ChannelOptions,
  type ClientUnaryCall,
  credentials,
  Metadata,
  type ServiceError,
} from "@grpc/grpc-js";

import { type FeatureVector } from "./gen/acg2vec/v1/common";
import { type ExtractImageFeatureResponse, ImageFeatureServiceClient } from "./gen/acg2vec/v1/image_feature";
import {
  type DeleteIllustrationResponse,
  type GetIllustrationResponse,
  type IllustrationMetadata,
  type IndexIllustrationResponse,
  SearchFilter,
  SearchRequest,
  type SearchResponse,
  SearchServiceClient,
  type UpdateIllustrationMetadataResponse,
  VectorSpace,
} from "./gen/acg2vec/v1/search";
import {
  type BatchTagImagesResponse,
  CategoryThresholds,
  TaggingServiceClient,
  TagOptions,
  type TagImageResponse,
} from "./gen/acg2vec/v1/tagging";
import {
  type BatchExtractTextFeaturesResponse,
  type ExtractTextFeatureResponse,
  TextFeatureServiceClient,
} from "./gen/acg2vec/v1/text_feature";
import { HealthCheckResponse_ServingStatus, HealthClient } from "./gen/grpc/health/v1/health";

export const DEFAULT_TIMEOUT_MS = 30_000;
export const DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024;
export const DEFAULT_RETRIES = 3;
/** The four acg2vec.v1 services; each is also a health-check name ("" is the whole server). */
export const SERVICE_NAMES = [
  "acg2vec.v1.TaggingService",
  "acg2vec.v1.ImageFeatureService",
  "acg2vec.v1.TextFeatureService",
  "acg2vec.v1.SearchService",
] as const;

export interface Acg2vecClientOptions {
  /** Channel credentials; default plaintext (or TLS when `tls` is true or any PEM option below is given). */
  credentials?: ChannelCredentials;
  tls?: boolean;
  /** PEM CA certificates that sign the server's certificate (default: the system roots); implies TLS. */
  rootCerts?: Uint8Array;
  /** PEM private key and certificate chain of this client, for servers that require mutual TLS; implies TLS. */
  privateKey?: Uint8Array;
  certChain?: Uint8Array;
  /** Sent as `authorization: Bearer <token>` on every call. */
  token?: string;
  /** Default deadline of unary calls in ms; `null` means none. Default 30 s. */
  timeoutMs?: number | null;
  /** Default deadline of streaming calls in ms (bulk work): none unless given. */
  streamTimeoutMs?: number | null;
  /** Send and receive limit; gRPC's default receive limit of 4 MiB is too small for image batches. */
  maxMessageBytes?: number;
  /** Retries on UNAVAILABLE (every acg2vec RPC is idempotent); 0 turns them off; gRPC allows at most 4. */
  retries?: number;
  /** Extra metadata sent with every call. */
  metadata?: Record<string, string>;
  /** Extra channel options; they win over the derived ones. */
  channelOptions?: ChannelOptions;
}

/** Per-call overrides. */
export interface CallSettings {
  timeoutMs?: number | null;
  metadata?: Record<string, string>;
}

export interface TagOptionsInit {
  /** At most this many tags, best first; 0 or unset: the server default. */
  topK?: number;
  /** Score thresholds per category; unset ones use the server default (0.5). */
  thresholds?: Partial<CategoryThresholds>;
  /** Also return deepix predictions (FAILED_PRECONDITION when no deepix model is installed). */
  includePopularity?: boolean;
}

/** Exactly one query kind. */
export type SearchQuery =
  | { image: Uint8Array }
  | { illustrationId: string }
  | { vector: number[]; space: VectorSpace }
  | { text: string };

export interface SearchOptions {
  topK?: number;
  filter?: Partial<SearchFilter>;
  pageToken?: string;
  exactRerank?: boolean;
}

type Callback<Res> = (error: ServiceError | null, response: Res) => void;
type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: Callback<Res>,
) => ClientUnaryCall;

/** gRPC's own retries (service config), the same policy as the Python client's. */
export function retryServiceConfig(retries: number): string {
  const names = [...SERVICE_NAMES, "grpc.health.v1.Health"].map((service) => ({ service }));
  if (retries <= 0) return JSON.stringify({ methodConfig: [] });
  if (retries > 4) throw new RangeError("retries: gRPC allows at most 4 (5 attempts)");
  return JSON.stringify({
    methodConfig: [
      {
        name: names,
        retryPolicy: {
          maxAttempts: retries + 1,
          initialBackoff: "0.1s",
          maxBackoff: "5s",
          backoffMultiplier: 2,
          retryableStatusCodes: ["UNAVAILABLE"],
        },
      },
    ],
  });
}

export class Acg2vecClient {
  readonly channel: Channel;
  readonly tagging: TaggingServiceClient;
  readonly imageFeatures: ImageFeatureServiceClient;
  readonly textFeatures: TextFeatureServiceClient;
  readonly searchService: SearchServiceClient;
  readonly health: HealthClient;
  private readonly options: Acg2vecClientOptions;

  /** target: `host:port`, e.g. `127.0.0.1:50051`. */
  constructor(target: string, options: Acg2vecClientOptions = {}) {
    this.options = options;
    const creds = options.credentials ?? channelCredentials(options);
    const maxBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    const channelOptions: ChannelOptions = {
      "grpc.max_send_message_length": maxBytes,
      "grpc.max_receive_message_length": maxBytes,
      "grpc.per_rpc_retry_buffer_size": maxBytes,
      "grpc.service_config": retryServiceConfig(options.retries ?? DEFAULT_RETRIES),
      ...options.channelOptions,
    };
    this.channel = new Channel(target, creds, channelOptions);
    const shared = { channelOverride: this.channel };
    this.tagging = new TaggingServiceClient(target, creds, shared);
    this.imageFeatures = new ImageFeatureServiceClient(target, creds, shared);
    this.textFeatures = new TextFeatureServiceClient(target, creds, shared);
    this.searchService = new SearchServiceClient(target, creds, shared);
    this.health = new HealthClient(target, creds, shared);
  }

  /** Metadata for a call: the client's token and metadata plus `extra`. Use it with the raw stubs. */
  callMetadata(extra: Record<string, string> = {}): Metadata {
    const metadata = new Metadata();
    if (this.options.token) metadata.set("authorization", `Bearer ${this.options.token}`);
    for (const [key, value] of Object.entries({ ...this.options.metadata, ...extra })) metadata.set(key, value);
    return metadata;
  }

  /** Call options with a deadline `timeoutMs` from now (`null`: none); default the client's unary deadline. */
  callOptions(timeoutMs?: number | null): Partial<CallOptions> {
    const ms = timeoutMs === undefined ? (this.options.timeoutMs ?? DEFAULT_TIMEOUT_MS) : timeoutMs;
    return ms === null ? {} : { deadline: new Date(Date.now() + ms) };
  }

  /** Call options for the bidirectional streams (no deadline unless `streamTimeoutMs` was given). */
  streamCallOptions(timeoutMs?: number | null): Partial<CallOptions> {
    return this.callOptions(timeoutMs === undefined ? (this.options.streamTimeoutMs ?? null) : timeoutMs);
  }

  private unary<Req, Res>(
    stub: object,
    method: UnaryMethod<Req, Res>,
    request: Req,
    settings: CallSettings = {},
  ): Promise<Res> {
    const metadata = this.callMetadata(settings.metadata);
    const options = this.callOptions(settings.timeoutMs);
    return new Promise((resolve, reject) => {
      method.call(stub, request, metadata, options, (error, response) => (error ? reject(error) : resolve(response)));
    });
  }

  tagImage(image: Uint8Array, options: TagOptionsInit = {}, settings?: CallSettings): Promise<TagImageResponse> {
    const request = { image: Buffer.from(image), options: tagOptions(options) };
    return this.unary(this.tagging, this.tagging.tagImage, request, settings);
  }

  /** Up to the server's max_batch_size images; fails as a whole on a bad one (see fieldViolations). */
  tagImages(images: Uint8Array[], options: TagOptionsInit = {}, settings?: CallSettings): Promise<BatchTagImagesResponse> {
    const request = { images: images.map((i) => Buffer.from(i)), options: tagOptions(options) };
    return this.unary(this.tagging, this.tagging.batchTagImages, request, settings);
  }

  extractImageFeature(image: Uint8Array, settings?: CallSettings): Promise<ExtractImageFeatureResponse> {
    return this.unary(this.imageFeatures, this.imageFeatures.extractImageFeature, { image: Buffer.from(image) }, settings);
  }

  extractTextFeature(text: string, settings?: CallSettings): Promise<ExtractTextFeatureResponse> {
    return this.unary(this.textFeatures, this.textFeatures.extractTextFeature, { text }, settings);
  }

  extractTextFeatures(texts: string[], settings?: CallSettings): Promise<BatchExtractTextFeaturesResponse> {
    return this.unary(this.textFeatures, this.textFeatures.batchExtractTextFeatures, { texts }, settings);
  }

  search(query: SearchQuery, options: SearchOptions = {}, settings?: CallSettings): Promise<SearchResponse> {
    return this.unary(this.searchService, this.searchService.search, searchRequest(query, options), settings);
  }

  /** Idempotent by id: the same id, image and metadata again answers INDEX_OUTCOME_UNCHANGED. */
  indexIllustration(
    id: string,
    image: Uint8Array,
    metadata: Partial<IllustrationMetadata> = {},
    settings?: CallSettings,
  ): Promise<IndexIllustrationResponse> {
    const request = { id, image: Buffer.from(image), metadata: illustrationMetadata(metadata) };
    return this.unary(this.searchService, this.searchService.indexIllustration, request, settings);
  }

  getIllustration(id: string, includeVectors = false, settings?: CallSettings): Promise<GetIllustrationResponse> {
    return this.unary(this.searchService, this.searchService.getIllustration, { id, includeVectors }, settings);
  }

  /** Replaces the whole user metadata. */
  updateIllustrationMetadata(
    id: string,
    metadata: Partial<IllustrationMetadata>,
    settings?: CallSettings,
  ): Promise<UpdateIllustrationMetadataResponse> {
    const request = { id, metadata: illustrationMetadata(metadata) };
    return this.unary(this.searchService, this.searchService.updateIllustrationMetadata, request, settings);
  }

  /** Idempotent: an unknown id answers `existed: false`. */
  deleteIllustration(id: string, settings?: CallSettings): Promise<DeleteIllustrationResponse> {
    return this.unary(this.searchService, this.searchService.deleteIllustration, { id }, settings);
  }

  /** grpc.health.v1 status of `service` ("" = the whole server, or one of SERVICE_NAMES, or "liveness"). */
  async healthCheck(service = "", settings?: CallSettings): Promise<HealthCheckResponse_ServingStatus> {
    const response = await this.unary(this.health, this.health.check, { service }, settings);
    return response.status;
  }

  close(): void {
    for (const stub of [this.tagging, this.imageFeatures, this.textFeatures, this.searchService, this.health]) {
      stub.close();
    }
    this.channel.close();
  }
}

/** TLS credentials from the PEM options (mutual TLS with privateKey + certChain), or plaintext. */
export function channelCredentials(options: Acg2vecClientOptions): ChannelCredentials {
  const { rootCerts, privateKey, certChain } = options;
  if ((privateKey === undefined) !== (certChain === undefined)) {
    throw new TypeError("mutual TLS needs both privateKey and certChain");
  }
  if (!options.tls && !rootCerts && !privateKey) return credentials.createInsecure();
  const pem = (value?: Uint8Array) => (value === undefined ? null : Buffer.from(value));
  return credentials.createSsl(pem(rootCerts), pem(privateKey), pem(certChain));
}

export function tagOptions(init: TagOptionsInit): TagOptions {
  return TagOptions.fromPartial({
    topK: init.topK ?? 0,
    includePopularity: init.includePopularity ?? false,
    thresholds: CategoryThresholds.fromPartial(init.thresholds ?? {}),
  });
}

function illustrationMetadata(metadata: Partial<IllustrationMetadata>): IllustrationMetadata {
  return { title: "", artist: "", sourceUrl: "", fields: {}, ...metadata };
}

/** The SearchRequest for one query kind; a TypeError before anything is sent when the query is not exactly one. */
export function searchRequest(query: SearchQuery, options: SearchOptions = {}): SearchRequest {
  const kinds = (["image", "illustrationId", "vector", "text"] as const).filter(
    (k) => (query as Record<string, unknown>)[k] !== undefined,
  );
  if (kinds.length !== 1) {
    throw new TypeError(`search needs exactly one of image, illustrationId, vector, text; got ${kinds.length}`);
  }
  const request = SearchRequest.fromPartial({
    topK: options.topK ?? 10,
    filter: options.filter ? SearchFilter.fromPartial(options.filter) : undefined,
    pageToken: options.pageToken ?? "",
    exactRerank: options.exactRerank ?? false,
  });
  if ("image" in query) request.image = Buffer.from(query.image);
  else if ("illustrationId" in query) request.illustrationId = query.illustrationId;
  else if ("vector" in query) {
    if (query.space === undefined || query.space === VectorSpace.VECTOR_SPACE_UNSPECIFIED) {
      throw new TypeError("a vector query needs its space (VectorSpace.VECTOR_SPACE_IMAGE or VECTOR_SPACE_TEXT)");
    }
    request.vector = { values: query.vector, space: query.space };
  } else request.text = query.text;
  return request;
}

/** Euclidean norm of a feature vector (1 for the server's normalised vectors). */
export function norm(vector: FeatureVector): number {
  return Math.sqrt(vector.values.reduce((sum, v) => sum + v * v, 0));
}
