/**
 * When a failed call is tried again. Unary calls are retried by the client, because gRPC's own retries ignore the
 * google.rpc.RetryInfo the server attaches to RESOURCE_EXHAUSTED (overloaded) and UNAVAILABLE (a backend is down)
 * and would come back sooner than asked. Streams use gRPC's own retries (service config), before the first answer.
 */
import { type ServiceError, status } from "@grpc/grpc-js";

import { retryDelayMs } from "./errors.js";

export interface RetryPolicy {
  /** Attempts in all, the first included (2..5; gRPC caps it at 5 for the streams). */
  maxAttempts: number;
  /** Backoff before the first retry on a retryable code without RetryInfo; a random wait up to it. */
  initialBackoffMs: number;
  maxBackoffMs: number;
  backoffMultiplier: number;
  /** Retried after a jittered exponential backoff (every acg2vec RPC is idempotent). */
  retryableCodes: status[];
  /** A RetryInfo delay longer than this is not waited for: the call fails with the server's answer at once. */
  maxRetryDelayMs: number;
}

export const DEFAULT_RETRIES = 3;
/** gRPC silently caps maxAttempts at 5, so asking for more is an error rather than a surprise. */
export const MAX_ATTEMPTS_LIMIT = 5;
/** Retried after the server's retry_delay when they carry a RetryInfo. */
export const RETRY_INFO_CODES: readonly status[] = [status.RESOURCE_EXHAUSTED, status.UNAVAILABLE];
/** Added on top of the server's delay so that clients refused at the same moment do not all return together. */
export const RETRY_INFO_JITTER = 0.2;

export const DEFAULT_RETRY_POLICY: RetryPolicy = {
  maxAttempts: DEFAULT_RETRIES + 1,
  initialBackoffMs: 100,
  maxBackoffMs: 5_000,
  backoffMultiplier: 2,
  retryableCodes: [status.UNAVAILABLE],
  maxRetryDelayMs: 10_000,
};

/** The policy from the `retries` shorthand and/or a partial policy; `undefined` when retrying is off. */
export function resolveRetryPolicy(retries?: number, policy?: Partial<RetryPolicy>): RetryPolicy | undefined {
  const resolved = { ...DEFAULT_RETRY_POLICY, ...policy };
  if (retries !== undefined) {
    if (!Number.isInteger(retries) || retries < 0) throw new RangeError(`retries must be an integer >= 0, got ${retries}`);
    if (retries === 0) return undefined;
    resolved.maxAttempts = retries + 1;
  }
  if (resolved.maxAttempts < 2 || resolved.maxAttempts > MAX_ATTEMPTS_LIMIT) {
    throw new RangeError(`retries: gRPC allows 1..${MAX_ATTEMPTS_LIMIT - 1} (maxAttempts 2..${MAX_ATTEMPTS_LIMIT})`);
  }
  return resolved;
}

/**
 * Milliseconds to wait before attempt `attempt + 1`, or undefined to give up and surface `error`.
 *
 * With a RetryInfo on RESOURCE_EXHAUSTED or UNAVAILABLE: at least the server's delay, never sooner; no retry when it
 * is longer than maxRetryDelayMs or than the time left before `deadline` (ms since the epoch; Infinity: none).
 */
export function waitBeforeRetry(
  policy: RetryPolicy | undefined,
  error: ServiceError,
  attempt: number,
  deadline: number,
): number | undefined {
  if (policy === undefined || attempt >= policy.maxAttempts || typeof error?.code !== "number") return undefined;
  const serverDelay = RETRY_INFO_CODES.includes(error.code) ? safely(() => retryDelayMs(error)) : undefined;
  let wait: number;
  if (serverDelay !== undefined) {
    if (serverDelay > policy.maxRetryDelayMs) return undefined;
    wait = serverDelay * (1 + Math.random() * RETRY_INFO_JITTER);
  } else if (policy.retryableCodes.includes(error.code)) {
    const backoff = Math.min(policy.initialBackoffMs * policy.backoffMultiplier ** (attempt - 1), policy.maxBackoffMs);
    wait = Math.random() * backoff;
  } else {
    return undefined;
  }
  return Date.now() + wait >= deadline ? undefined : wait;
}

/** A malformed status detail counts as none: the call's own error is what the caller must see. */
function safely<T>(read: () => T): T | undefined {
  try {
    return read();
  } catch {
    return undefined;
  }
}

/** gRPC service config: the policy for the streaming methods, whose retries happen inside the channel. */
export function streamRetryServiceConfig(
  policy: RetryPolicy | undefined,
  methods: ReadonlyArray<readonly [service: string, method: string]>,
): string {
  if (policy === undefined) return JSON.stringify({ methodConfig: [] });
  const seconds = (ms: number) => `${(ms / 1000).toFixed(9)}s`;
  return JSON.stringify({
    methodConfig: [
      {
        name: methods.map(([service, method]) => ({ service, method })),
        retryPolicy: {
          maxAttempts: policy.maxAttempts,
          initialBackoff: seconds(policy.initialBackoffMs),
          maxBackoff: seconds(policy.maxBackoffMs),
          backoffMultiplier: policy.backoffMultiplier,
          retryableStatusCodes: policy.retryableCodes.map((code) => status[code]),
        },
      },
    ],
  });
}
