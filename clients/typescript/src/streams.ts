/**
 * gRPC streams as async iterables: requests from any (async) iterable go out with backpressure, answers come back
 * through `for await`, and the call is cancelled when the consumer stops early, the AbortSignal fires or the
 * requests iterable throws (whose error then reaches the consumer).
 */
import { once } from "node:events";

import { type ClientDuplexStream, type ClientReadableStream, Metadata, type ServiceError, status } from "@grpc/grpc-js";

/** The error a call ends with when its AbortSignal fires: CANCELLED, as for grpc-js's own `call.cancel()`. */
export function cancelledError(signal?: AbortSignal): ServiceError {
  const reason = signal?.reason instanceof Error ? `: ${signal.reason.message}` : "";
  const details = `cancelled by the AbortSignal${reason}`;
  return Object.assign(new Error(`${status.CANCELLED} CANCELLED: ${details}`), {
    code: status.CANCELLED,
    details,
    metadata: new Metadata(),
  });
}

/** Runs `onAbort` when `signal` fires (at once if it already has); returns the function that stops listening. */
export function onAbort(signal: AbortSignal | undefined, onAbort: () => void): () => void {
  if (!signal) return () => {};
  if (signal.aborted) {
    onAbort();
    return () => {};
  }
  signal.addEventListener("abort", onAbort, { once: true });
  return () => signal.removeEventListener("abort", onAbort);
}

/** Answers of a server-streaming call. */
export async function* readAll<Res>(
  call: ClientReadableStream<Res>,
  signal?: AbortSignal,
): AsyncGenerator<Res, void, undefined> {
  call.on("error", () => {}); // the iterator below reports errors; a late one must not crash the process
  const stop = onAbort(signal, () => call.cancel());
  try {
    for await (const response of call) yield response as Res;
  } catch (error) {
    throw signal?.aborted ? cancelledError(signal) : error;
  } finally {
    stop();
    call.cancel(); // a no-op once the call has ended
  }
}

/** Writes `requests` into a bidirectional call and yields its answers. */
export async function* duplex<Req, Res>(
  call: ClientDuplexStream<Req, Res>,
  requests: Iterable<Req> | AsyncIterable<Req>,
  signal?: AbortSignal,
): AsyncGenerator<Res, void, undefined> {
  call.on("error", () => {});
  const stopWriting = new AbortController();
  let requestsError: { error: unknown } | undefined;
  const pump = async () => {
    try {
      for await (const request of requests) {
        if (stopWriting.signal.aborted) return;
        if (!call.write(request)) await once(call, "drain", { signal: stopWriting.signal });
      }
      if (!stopWriting.signal.aborted) call.end();
    } catch (error) {
      if (stopWriting.signal.aborted) return; // the call ended first: its own outcome is what counts
      requestsError = { error };
      call.cancel();
    }
  };
  const stop = onAbort(signal, () => call.cancel());
  void pump();
  try {
    for await (const response of call) yield response as Res;
    if (requestsError) throw requestsError.error;
  } catch (error) {
    if (requestsError) throw requestsError.error;
    throw signal?.aborted ? cancelledError(signal) : error;
  } finally {
    stopWriting.abort();
    stop();
    call.cancel();
  }
}
