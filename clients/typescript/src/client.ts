/**
 * A small typed client over the generated @grpc/grpc-js stubs: one channel for all services, a default deadline,
 * the bearer token as call credentials, retries that honour the server's RetryInfo, user interceptors, and one
 * method per RPC: promises for unary calls, async iterables (in and out) for streams, an AbortSignal for each.
 * Responses are the generated message types, unchanged; the raw stubs stay reachable too.
 */
import {
  type CallCredentials,
  type CallOptions,
  Channel,
  type ChannelOptions,
  type ClientUnaryCall,
  type Interceptor,
  Metadata,
  type ServiceError,
} from "@grpc/grpc-js";

import { type CredentialOptions, channelCredentials, tokenCredentials } from "./credentials.js";
import { type FeatureVector } from "./gen/acg2vec/v1/common.js";
import {
  type BatchExtractImageFeaturesResponse,
  type ExtractImageFeatureResponse,
  ImageFeatureServiceClient,
  ImageFeatureServiceService,
  type StreamExtractImageFeaturesRequest,
  type StreamExtractImageFeaturesResponse,
} from "./gen/acg2vec/v1/image_feature.js";
import {
  type DeleteIllustrationResponse,
  type GetIllustrationResponse,
  type IllustrationMetadata,
  type IndexIllustrationResponse,
  SearchFilter,
  SearchRequest,
  type SearchResponse,
  SearchServiceClient,
  SearchServiceService,
  type StreamIndexIllustrationsRequest,
  type StreamIndexIllustrationsResponse,
  type UpdateIllustrationMetadataResponse,
  VectorSpace,
} from "./gen/acg2vec/v1/search.js";
import {
  type BatchTagImagesResponse,
  CategoryModes,
  CategoryThresholds,
  type PredictPopularityResponse,
  type StreamTagImagesRequest,
  type StreamTagImagesResponse,
  TaggingServiceClient,
  TaggingServiceService,
  TagOptions,
  type TagImageResponse,
  ThresholdMode,
} from "./gen/acg2vec/v1/tagging.js";
import {
  type BatchExtractTextFeaturesResponse,
  type ExtractTextFeatureResponse,
  type StreamExtractTextFeaturesRequest,
  type StreamExtractTextFeaturesResponse,
  TextFeatureServiceClient,
  TextFeatureServiceService,
} from "./gen/acg2vec/v1/text_feature.js";
import { HealthCheckResponse_ServingStatus, HealthClient, HealthService } from "./gen/grpc/health/v1/health.js";
import { type RetryPolicy, resolveRetryPolicy, streamRetryServiceConfig, waitBeforeRetry } from "./retry.js";
import { cancelledError, duplex, onAbort, readAll } from "./streams.js";

export const DEFAULT_TIMEOUT_MS = 30_000;
export const DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024;
/** The four acg2vec.v1 services; each is also a health-check name ("" is the whole server). */
export const SERVICE_NAMES = [
  "acg2vec.v1.TaggingService",
  "acg2vec.v1.ImageFeatureService",
  "acg2vec.v1.TextFeatureService",
  "acg2vec.v1.SearchService",
] as const;

/** [service, method] of every streaming RPC, read from the generated service definitions. */
export const STREAMING_METHODS: ReadonlyArray<readonly [string, string]> = [
  TaggingServiceService,
  ImageFeatureServiceService,
  TextFeatureServiceService,
  SearchServiceService,
  HealthService,
].flatMap((service) =>
  Object.values(service)
    .filter((method) => method.requestStream || method.responseStream)
    .map((method) => {
      const [, name, rpc] = method.path.split("/");
      return [name, rpc] as const;
    }),
);

export interface Acg2vecClientOptions extends CredentialOptions {
  /** Default deadline of unary calls in ms, all retry attempts together; `null` means none. Default 30 s. */
  timeoutMs?: number | null;
  /** Default deadline of streaming calls in ms (bulk work): none unless given. */
  streamTimeoutMs?: number | null;
  /** Send and receive limit; gRPC's default receive limit of 4 MiB is too small for image batches. */
  maxMessageBytes?: number;
  /** Retries on UNAVAILABLE (every acg2vec RPC is idempotent); 0 turns retrying off; at most 4. */
  retries?: number;
  /** Tunes the retries (backoff, the longest RetryInfo delay waited for, ...); see RetryPolicy. */
  retryPolicy?: Partial<RetryPolicy>;
  /** Extra metadata sent with every call. */
  metadata?: Record<string, string>;
  /** Extra channel options; they win over the derived ones. */
  channelOptions?: ChannelOptions;
  /** grpc-js client interceptors, run for every call (each retry attempt of a unary call included). */
  interceptors?: Interceptor[];
}

/** Per-call settings. */
export interface CallSettings {
  /** Deadline of this call in ms (all attempts together); `null`: none. */
  timeoutMs?: number | null;
  metadata?: Record<string, string>;
  /** Cancels the call (it ends with CANCELLED), also while it waits to retry. */
  signal?: AbortSignal;
}

export interface TagOptionsInit {
  /** At most this many tags, best first; 0 or unset: the server default. */
  topK?: number;
  /** Score thresholds per category; unset ones use the server default (0.5). */
  thresholds?: Partial<CategoryThresholds>;
  /** Also return deepix predictions (FAILED_PRECONDITION when no deepix model is installed). */
  includePopularity?: boolean;
  /** Thresholds of single tags (tag name -> threshold), over their category's threshold and mode. */
  tagThresholds?: Record<string, number>;
  /** How each category's cut is chosen: "fixed" (the threshold) or "mcut" (the adaptive cut of the WD tagger apps). */
  modes?: Partial<Record<keyof CategoryModes, "fixed" | "mcut" | ThresholdMode>>;
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

/** Stream items: `requestId` comes back in the answer; `options` default to the call's. */
export interface TagStreamItem {
  requestId: string;
  image: Uint8Array;
  options?: TagOptions;
}
export interface ImageStreamItem {
  requestId: string;
  image: Uint8Array;
}
export interface TextStreamItem {
  requestId: string;
  text: string;
}
export interface IndexStreamItem {
  id: string;
  image: Uint8Array;
  metadata?: Partial<IllustrationMetadata>;
}

/** Requests as a sync or async iterable (an array, a generator, a Node stream in object mode...). */
export type Items<T> = Iterable<T> | AsyncIterable<T>;

type Callback<Res> = (error: ServiceError | null, response: Res) => void;
type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: Callback<Res>,
) => ClientUnaryCall;

export class Acg2vecClient {
  readonly channel: Channel;
  readonly tagging: TaggingServiceClient;
  readonly imageFeatures: ImageFeatureServiceClient;
  readonly textFeatures: TextFeatureServiceClient;
  readonly searchService: SearchServiceClient;
  readonly health: HealthClient;
  readonly retryPolicy: RetryPolicy | undefined;
  private readonly options: Acg2vecClientOptions;
  private readonly callCredentials: CallCredentials | undefined;

  /** target: `host:port`, e.g. `127.0.0.1:50051` (any gRPC target: `dns:///acg2vec:50051`, `unix:/path`). */
  constructor(target: string, options: Acg2vecClientOptions = {}) {
    this.options = options;
    const creds = channelCredentials(options);
    this.callCredentials = tokenCredentials(target, creds, options);
    this.retryPolicy = resolveRetryPolicy(options.retries, options.retryPolicy);
    const maxBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    const channelOptions: ChannelOptions = {
      "grpc.max_send_message_length": maxBytes,
      "grpc.max_receive_message_length": maxBytes,
      "grpc.per_rpc_retry_buffer_size": maxBytes,
      "grpc.service_config": streamRetryServiceConfig(this.retryPolicy, STREAMING_METHODS),
      ...options.channelOptions,
    };
    this.channel = new Channel(target, creds, channelOptions);
    const shared = { channelOverride: this.channel, interceptors: options.interceptors ?? [] };
    this.tagging = new TaggingServiceClient(target, creds, shared);
    this.imageFeatures = new ImageFeatureServiceClient(target, creds, shared);
    this.textFeatures = new TextFeatureServiceClient(target, creds, shared);
    this.searchService = new SearchServiceClient(target, creds, shared);
    this.health = new HealthClient(target, creds, shared);
  }

  /** Metadata for a call: the client's metadata plus `extra`. Use it with the raw stubs. */
  callMetadata(extra: Record<string, string> = {}): Metadata {
    const metadata = new Metadata();
    for (const [key, value] of Object.entries({ ...this.options.metadata, ...extra })) metadata.set(key, value);
    return metadata;
  }

  /** Call options: the token's call credentials and a deadline `timeoutMs` from now (`null`: none; default: the
   * client's unary deadline). Use it with the raw stubs. */
  callOptions(timeoutMs?: number | null): Partial<CallOptions> {
    const ms = timeoutMs === undefined ? (this.options.timeoutMs ?? DEFAULT_TIMEOUT_MS) : timeoutMs;
    const options: Partial<CallOptions> = this.callCredentials ? { credentials: this.callCredentials } : {};
    if (ms !== null) options.deadline = new Date(Date.now() + ms);
    return options;
  }

  /** Call options for the streams (no deadline unless `streamTimeoutMs` was given). */
  streamCallOptions(timeoutMs?: number | null): Partial<CallOptions> {
    return this.callOptions(timeoutMs === undefined ? (this.options.streamTimeoutMs ?? null) : timeoutMs);
  }

  /** One unary call, retried per the RetryPolicy (honouring RetryInfo) within one deadline for all attempts. */
  private async unary<Req, Res>(
    stub: object,
    method: UnaryMethod<Req, Res>,
    request: Req,
    settings: CallSettings = {},
  ): Promise<Res> {
    const { signal } = settings;
    const options = this.callOptions(settings.timeoutMs);
    const deadline = options.deadline === undefined ? Infinity : (options.deadline as Date).getTime();
    const metadata = this.callMetadata(settings.metadata);
    for (let attempt = 1; ; attempt++) {
      if (signal?.aborted) throw cancelledError(signal);
      try {
        return await new Promise<Res>((resolve, reject) => {
          let stop = () => {};
          const call = method.call(stub, request, metadata.clone(), options, (error, response) => {
            stop();
            if (error) reject(signal?.aborted ? cancelledError(signal) : error);
            else resolve(response);
          });
          stop = onAbort(signal, () => call.cancel());
        });
      } catch (error) {
        const wait = signal?.aborted ? undefined : waitBeforeRetry(this.retryPolicy, error as ServiceError, attempt, deadline);
        if (wait === undefined) throw error;
        await sleep(wait, signal);
      }
    }
  }

  // TaggingService ----------------------------------------------------------------------------------------------

  tagImage(image: Uint8Array, options: TagOptionsInit = {}, settings?: CallSettings): Promise<TagImageResponse> {
    const request = { image: buffer(image), options: tagOptions(options) };
    return this.unary(this.tagging, this.tagging.tagImage, request, settings);
  }

  /** Up to the server's max_batch_size images; fails as a whole on a bad one (see fieldViolations). */
  tagImages(images: Uint8Array[], options: TagOptionsInit = {}, settings?: CallSettings): Promise<BatchTagImagesResponse> {
    const request = { images: images.map(buffer), options: tagOptions(options) };
    return this.unary(this.tagging, this.tagging.batchTagImages, request, settings);
  }

  /** Bulk tagging over one stream: answers carry the requestId; a bad item gets its own `error`, the rest go on. */
  streamTagImages(
    items: Items<TagStreamItem>,
    options: TagOptionsInit = {},
    settings: CallSettings = {},
  ): AsyncGenerator<StreamTagImagesResponse, void, undefined> {
    const shared = tagOptions(options);
    const requests = mapItems(items, (item): StreamTagImagesRequest => ({
      requestId: item.requestId,
      image: buffer(item.image),
      options: item.options ?? shared,
    }));
    const call = () => this.tagging.streamTagImages(this.callMetadata(settings.metadata), this.streamCallOptions(settings.timeoutMs));
    return lazily(() => duplex(call(), requests, settings.signal));
  }

  /** deepix popularity predictions; FAILED_PRECONDITION when the server has no deepix model. */
  predictPopularity(image: Uint8Array, settings?: CallSettings): Promise<PredictPopularityResponse> {
    return this.unary(this.tagging, this.tagging.predictPopularity, { image: buffer(image) }, settings);
  }

  // ImageFeatureService -----------------------------------------------------------------------------------------

  extractImageFeature(image: Uint8Array, settings?: CallSettings): Promise<ExtractImageFeatureResponse> {
    return this.unary(this.imageFeatures, this.imageFeatures.extractImageFeature, { image: buffer(image) }, settings);
  }

  /** Up to the server's max_batch_size images, vectors in input order. */
  extractImageFeatures(images: Uint8Array[], settings?: CallSettings): Promise<BatchExtractImageFeaturesResponse> {
    const request = { images: images.map(buffer) };
    return this.unary(this.imageFeatures, this.imageFeatures.batchExtractImageFeatures, request, settings);
  }

  streamExtractImageFeatures(
    items: Items<ImageStreamItem>,
    settings: CallSettings = {},
  ): AsyncGenerator<StreamExtractImageFeaturesResponse, void, undefined> {
    const requests = mapItems(items, (item): StreamExtractImageFeaturesRequest => ({
      requestId: item.requestId,
      image: buffer(item.image),
    }));
    const call = () =>
      this.imageFeatures.streamExtractImageFeatures(this.callMetadata(settings.metadata), this.streamCallOptions(settings.timeoutMs));
    return lazily(() => duplex(call(), requests, settings.signal));
  }

  // TextFeatureService ------------------------------------------------------------------------------------------

  extractTextFeature(text: string, settings?: CallSettings): Promise<ExtractTextFeatureResponse> {
    return this.unary(this.textFeatures, this.textFeatures.extractTextFeature, { text }, settings);
  }

  extractTextFeatures(texts: string[], settings?: CallSettings): Promise<BatchExtractTextFeaturesResponse> {
    return this.unary(this.textFeatures, this.textFeatures.batchExtractTextFeatures, { texts }, settings);
  }

  streamExtractTextFeatures(
    items: Items<TextStreamItem>,
    settings: CallSettings = {},
  ): AsyncGenerator<StreamExtractTextFeaturesResponse, void, undefined> {
    const requests = mapItems(items, (item): StreamExtractTextFeaturesRequest => ({ requestId: item.requestId, text: item.text }));
    const call = () =>
      this.textFeatures.streamExtractTextFeatures(this.callMetadata(settings.metadata), this.streamCallOptions(settings.timeoutMs));
    return lazily(() => duplex(call(), requests, settings.signal));
  }

  // SearchService -----------------------------------------------------------------------------------------------

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
    const request = { id, image: buffer(image), metadata: illustrationMetadata(metadata) };
    return this.unary(this.searchService, this.searchService.indexIllustration, request, settings);
  }

  /** Bulk indexing over one stream; answers carry the id and may come in any order. */
  streamIndexIllustrations(
    items: Items<IndexStreamItem>,
    settings: CallSettings = {},
  ): AsyncGenerator<StreamIndexIllustrationsResponse, void, undefined> {
    const requests = mapItems(items, (item): StreamIndexIllustrationsRequest => ({
      id: item.id,
      image: buffer(item.image),
      metadata: illustrationMetadata(item.metadata ?? {}),
    }));
    const call = () =>
      this.searchService.streamIndexIllustrations(this.callMetadata(settings.metadata), this.streamCallOptions(settings.timeoutMs));
    return lazily(() => duplex(call(), requests, settings.signal));
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

  // grpc.health.v1 ----------------------------------------------------------------------------------------------

  /** Status of `service` ("" = the whole server, or one of SERVICE_NAMES, or "liveness"). */
  async healthCheck(service = "", settings?: CallSettings): Promise<HealthCheckResponse_ServingStatus> {
    const response = await this.unary(this.health, this.health.check, { service }, settings);
    return response.status;
  }

  /** Every change of `service`'s status, the current one first, until the signal fires or the server stops. */
  watchHealth(service = "", settings: CallSettings = {}): AsyncGenerator<HealthCheckResponse_ServingStatus, void, undefined> {
    const call = () => this.health.watch({ service }, this.callMetadata(settings.metadata), this.streamCallOptions(settings.timeoutMs));
    return lazily(async function* () {
      for await (const response of readAll(call(), settings.signal)) yield response.status;
    });
  }

  close(): void {
    for (const stub of [this.tagging, this.imageFeatures, this.textFeatures, this.searchService, this.health]) {
      stub.close();
    }
    this.channel.close();
  }
}

/** The call starts on the first `next()`, so a stream that is never iterated never opens. */
function lazily<T>(start: () => AsyncGenerator<T, void, undefined>): AsyncGenerator<T, void, undefined> {
  return (async function* () {
    yield* start();
  })();
}

async function* mapItems<T, R>(items: Items<T>, convert: (item: T) => R): AsyncGenerator<R, void, undefined> {
  for await (const item of items) yield convert(item);
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    let stop = () => {};
    const timer = setTimeout(() => {
      stop();
      resolve();
    }, ms);
    stop = onAbort(signal, () => {
      clearTimeout(timer);
      reject(cancelledError(signal));
    });
  });
}

/** A Buffer view of the bytes (no copy): the generated messages declare `bytes` fields as Buffer. */
function buffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

const THRESHOLD_MODES = { fixed: ThresholdMode.THRESHOLD_MODE_FIXED, mcut: ThresholdMode.THRESHOLD_MODE_MCUT };

export function tagOptions(init: TagOptionsInit): TagOptions {
  const modes: Partial<CategoryModes> = {};
  for (const [category, mode] of Object.entries(init.modes ?? {})) {
    const value = typeof mode === "string" ? THRESHOLD_MODES[mode] : mode;
    if (value === undefined) throw new TypeError(`unknown threshold mode ${String(mode)}; expected fixed or mcut`);
    modes[category as keyof CategoryModes] = value;
  }
  return TagOptions.fromPartial({
    topK: init.topK ?? 0,
    includePopularity: init.includePopularity ?? false,
    thresholds: CategoryThresholds.fromPartial(init.thresholds ?? {}),
    tagThresholds: { ...(init.tagThresholds ?? {}) },
    modes: init.modes ? CategoryModes.fromPartial(modes) : undefined,
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
  if ("image" in query) request.image = buffer(query.image);
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
