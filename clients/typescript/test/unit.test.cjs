// The client against an in-process grpc-js server with fake servicers (no models, no storage): call credentials,
// RetryInfo, interceptors, streams as async iterables, AbortSignal. Run by tests/client/test_typescript.py; by hand:
//   npm run build && node --test test/unit.test.cjs
"use strict";
const assert = require("node:assert/strict");
const { after, before, beforeEach, test } = require("node:test");
const { setTimeout: delay } = require("node:timers/promises");
const grpc = require("@grpc/grpc-js");

const acg2vec = require("..");

const { status } = grpc;
const TOKEN = "s3cret";
const FAST = { initialBackoffMs: 10, maxBackoffMs: 20 };

// What the fake server saw, and the failures it answers the next calls with: [code, retryDelayMs or undefined].
const seen = [];
let failures = [];
const cancelled = [];

function richError(code, retryDelayMs) {
  const metadata = new grpc.Metadata();
  if (retryDelayMs !== undefined) {
    const retryDelay = { seconds: Math.floor(retryDelayMs / 1000), nanos: (retryDelayMs % 1000) * 1e6 };
    const info = acg2vec.RetryInfo.encode({ retryDelay }).finish();
    const any = { typeUrl: "type.googleapis.com/google.rpc.RetryInfo", value: Buffer.from(info) };
    const statusBytes = acg2vec.Status.encode({ code, message: "busy", details: [any] }).finish();
    metadata.set("grpc-status-details-bin", Buffer.from(statusBytes));
  }
  return { code, details: `try again in ${retryDelayMs} ms`, metadata };
}

function record(method, call, request) {
  const metadata = call.metadata.getMap();
  seen.push({ method, request, authorization: metadata.authorization, intercepted: metadata["x-intercepted"] });
  const failure = failures.shift();
  return failure && richError(...failure);
}

const tagging = {
  tagImage(call, callback) {
    const error = record("TagImage", call, call.request);
    if (error) return callback(error);
    const image = call.request.image.toString();
    const answer = () => callback(null, acg2vec.TagImageResponse.fromPartial({ result: { tags: [{ name: image, score: 0.9 }] } }));
    if (image === "slow") setTimeout(answer, 3000).unref();
    else answer();
  },
  batchTagImages(call, callback) {
    const results = call.request.images.map((i) => ({ tags: [{ name: i.toString(), score: 1 }] }));
    callback(null, acg2vec.BatchTagImagesResponse.fromPartial({ results }));
  },
  streamTagImages(call) {
    call.on("cancelled", () => cancelled.push("StreamTagImages"));
    call.on("data", (request) => {
      record("StreamTagImages", call, request);
      const name = request.image.toString();
      const answer =
        name === "bad"
          ? { requestId: request.requestId, error: { code: status.INVALID_ARGUMENT, message: "not an image" } }
          : { requestId: request.requestId, result: { tags: [{ name, score: request.options?.topK ?? 0 }] } };
      call.write(acg2vec.StreamTagImagesResponse.fromPartial(answer));
    });
    call.on("end", () => call.end());
  },
  predictPopularity(call, callback) {
    record("PredictPopularity", call, call.request);
    const bookmarks = { bins: [{ lower: 0, upper: 10, probability: 1 }], mostLikelyBin: 0 };
    callback(null, acg2vec.PredictPopularityResponse.fromPartial({ popularity: { bookmarks } }));
  },
};

const textFeatures = {
  extractTextFeature(call, callback) {
    const error = record("ExtractTextFeature", call, call.request);
    if (error) return callback(error);
    callback(null, acg2vec.ExtractTextFeatureResponse.fromPartial({ feature: { values: [call.request.text.length], dimension: 1 } }));
  },
  batchExtractTextFeatures(call, callback) {
    const features = call.request.texts.map((t) => ({ values: [t.length], dimension: 1 }));
    callback(null, acg2vec.BatchExtractTextFeaturesResponse.fromPartial({ features }));
  },
  streamExtractTextFeatures(call) {
    call.on("data", (request) => {
      const feature = { values: [request.text.length], dimension: 1 };
      call.write(acg2vec.StreamExtractTextFeaturesResponse.fromPartial({ requestId: request.requestId, feature }));
    });
    call.on("end", () => call.end());
  },
};

const health = {
  check(call, callback) {
    record("Check", call, call.request);
    callback(null, { status: acg2vec.HealthCheckResponse_ServingStatus.SERVING });
  },
  watch(call) {
    call.on("cancelled", () => cancelled.push("Watch"));
    const S = acg2vec.HealthCheckResponse_ServingStatus;
    call.write({ status: S.SERVING });
    setTimeout(() => call.write({ status: S.NOT_SERVING }), 20);
  },
};

let server;
let target;
before(async () => {
  server = new grpc.Server();
  server.addService(acg2vec.TaggingServiceService, tagging);
  server.addService(acg2vec.TextFeatureServiceService, textFeatures);
  server.addService(acg2vec.HealthService, health);
  const port = await new Promise((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
  );
  target = `127.0.0.1:${port}`;
});
after(() => server.forceShutdown());
beforeEach(() => {
  seen.length = 0;
  cancelled.length = 0;
  failures = [];
});

function withClient(options, fn) {
  const client = new acg2vec.Acg2vecClient(target, { timeoutMs: 5000, retryPolicy: FAST, ...options });
  return Promise.resolve(fn(client)).finally(() => client.close());
}

test("the token travels as call credentials: client methods, streams and raw stubs given callOptions()", async () => {
  await withClient({ token: TOKEN }, async (client) => {
    await client.tagImage(Buffer.from("a"));
    for await (const _ of client.streamTagImages([{ requestId: "1", image: Buffer.from("b") }]));
    await new Promise((resolve, reject) =>
      client.tagging.tagImage({ image: Buffer.from("raw"), options: undefined }, client.callMetadata(), client.callOptions(), (e) =>
        e ? reject(e) : resolve(),
      ),
    );
  });
  assert.deepEqual(seen.map((s) => [s.method, s.authorization]), [
    ["TagImage", `Bearer ${TOKEN}`],
    ["StreamTagImages", `Bearer ${TOKEN}`],
    ["TagImage", `Bearer ${TOKEN}`],
  ]);
});

test("a token over plaintext to another host is refused unless allowPlaintextToken", () => {
  for (const remote of ["acg2vec.example.com:50051", "dns:///acg2vec:50051", "10.0.0.5:50051", "ipv4:127.0.0.1:1,10.0.0.1:2"]) {
    assert.equal(acg2vec.isLocalTarget(remote), false, remote);
    assert.throws(() => new acg2vec.Acg2vecClient(remote, { token: TOKEN }), /refusing to send the token in plaintext.*allowPlaintextToken: true/);
    for (const options of [{}, { token: TOKEN, tls: true }, { token: TOKEN, allowPlaintextToken: true }]) {
      new acg2vec.Acg2vecClient(remote, options).close(); // the channel connects lazily: nothing is sent here
    }
  }
  for (const local of ["127.0.0.1:1", "localhost:1", "[::1]:1", "dns:///localhost:1", "unix:/run/acg2vec.sock"]) {
    assert.equal(acg2vec.isLocalTarget(local), true, local);
  }
});

test("RESOURCE_EXHAUSTED with RetryInfo: retried after the server's delay, never sooner", async () => {
  await withClient({}, async (client) => {
    failures = [[status.RESOURCE_EXHAUSTED, 300]];
    const started = Date.now();
    const { result } = await client.tagImage(Buffer.from("later"));
    assert.equal(result.tags[0].name, "later");
    assert.ok(Date.now() - started >= 300, `${Date.now() - started} ms`);
    assert.equal(seen.length, 2);
  });
});

test("UNAVAILABLE with RetryInfo waits the server's delay, not the (short) backoff", async () => {
  await withClient({}, async (client) => {
    failures = [[status.UNAVAILABLE, 250], [status.UNAVAILABLE, 250]];
    const started = Date.now();
    await client.extractTextFeature("x");
    assert.ok(Date.now() - started >= 500, `${Date.now() - started} ms`);
    assert.equal(seen.length, 3);
  });
});

test("no retry: RESOURCE_EXHAUSTED without RetryInfo, a delay past maxRetryDelayMs or past the deadline", async () => {
  await withClient({}, async (client) => {
    failures = [[status.RESOURCE_EXHAUSTED, undefined]];
    await assert.rejects(client.tagImage(Buffer.from("x")), (e) => e.code === status.RESOURCE_EXHAUSTED);
    assert.equal(seen.length, 1);

    for (const [retryDelay, timeoutMs] of [[30_000, 60_000], [800, 300]]) {
      seen.length = 0;
      failures = [[status.RESOURCE_EXHAUSTED, retryDelay]];
      const started = Date.now();
      await assert.rejects(client.tagImage(Buffer.from("x"), {}, { timeoutMs }), (e) => {
        assert.equal(e.code, status.RESOURCE_EXHAUSTED);
        assert.equal(acg2vec.retryDelayMs(e), retryDelay);
        return true;
      });
      assert.ok(Date.now() - started < Math.min(retryDelay, timeoutMs), "no waiting for a retry that cannot happen");
      assert.equal(seen.length, 1);
    }
  });
});

test("UNAVAILABLE without RetryInfo: backoff retries up to maxAttempts; retries: 0 turns them off", async () => {
  await withClient({ retries: 2 }, async (client) => {
    failures = [[status.UNAVAILABLE], [status.UNAVAILABLE], [status.UNAVAILABLE]];
    await assert.rejects(client.tagImage(Buffer.from("x")), (e) => e.code === status.UNAVAILABLE);
    assert.equal(seen.length, 3);
  });
  seen.length = 0;
  await withClient({ retries: 0 }, async (client) => {
    failures = [[status.UNAVAILABLE]];
    await assert.rejects(client.tagImage(Buffer.from("x")), (e) => e.code === status.UNAVAILABLE);
    assert.equal(seen.length, 1);
  });
  assert.throws(() => new acg2vec.Acg2vecClient(target, { retries: 5 }), RangeError);
});

test("user interceptors run for every call and every retry attempt", async () => {
  const methods = [];
  const interceptor = (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        methods.push(options.method_definition.path);
        metadata.set("x-intercepted", "ts");
        next(metadata, listener);
      },
    });
  await withClient({ token: TOKEN, interceptors: [interceptor] }, async (client) => {
    failures = [[status.UNAVAILABLE, 10]];
    await client.tagImage(Buffer.from("a"));
    for await (const _ of client.streamTagImages([{ requestId: "1", image: Buffer.from("b") }]));
  });
  assert.deepEqual(methods, [
    "/acg2vec.v1.TaggingService/TagImage",
    "/acg2vec.v1.TaggingService/TagImage",
    "/acg2vec.v1.TaggingService/StreamTagImages",
  ]);
  assert.deepEqual(seen.map((s) => s.intercepted), ["ts", "ts", "ts"]);
  assert.ok(seen.every((s) => s.authorization === `Bearer ${TOKEN}`));
});

test("bidirectional streams: async iterables in and out, per-item errors, the call's options as default", async () => {
  await withClient({}, async (client) => {
    async function* items() {
      yield { requestId: "a", image: Buffer.from("one") };
      yield { requestId: "b", image: Buffer.from("bad") };
      yield { requestId: "c", image: new Uint8Array(Buffer.from("three")), options: acg2vec.tagOptions({ topK: 7 }) };
    }
    const answers = [];
    for await (const answer of client.streamTagImages(items(), { topK: 2 })) answers.push(answer);
    assert.deepEqual(answers.map((a) => a.requestId), ["a", "b", "c"]);
    assert.equal(answers[1].error.code, status.INVALID_ARGUMENT);
    assert.deepEqual(answers.filter((a) => a.result).map((a) => [a.result.tags[0].name, a.result.tags[0].score]), [["one", 2], ["three", 7]]);

    const texts = [];
    for await (const a of client.streamExtractTextFeatures(["x", "yy"].map((text, i) => ({ requestId: `${i}`, text })))) texts.push(a.feature.values[0]);
    assert.deepEqual(texts, [1, 2]);
  });
});

test("streams: stopping early cancels the call; an error of the requests iterable reaches the consumer", async () => {
  await withClient({}, async (client) => {
    async function* endless() {
      for (let i = 0; ; i++) {
        yield { requestId: `${i}`, image: Buffer.from("img") };
        await delay(5);
      }
    }
    for await (const answer of client.streamTagImages(endless())) {
      assert.equal(answer.requestId, "0");
      break;
    }
    await delay(100);
    assert.deepEqual(cancelled, ["StreamTagImages"]);

    async function* failing() {
      yield { requestId: "ok", image: Buffer.from("img") };
      throw new Error("the source broke");
    }
    await assert.rejects(async () => {
      for await (const _ of client.streamTagImages(failing()));
    }, /the source broke/);
  });
});

test("AbortSignal cancels unary calls, streams and the wait before a retry (CANCELLED)", async () => {
  await withClient({}, async (client) => {
    const isCancelled = (e) => e.code === status.CANCELLED || assert.fail(`${e.code} ${e.message}`);
    let started = Date.now();
    await assert.rejects(client.tagImage(Buffer.from("slow"), {}, { signal: AbortSignal.timeout(100) }), isCancelled);
    assert.ok(Date.now() - started < 2000);

    started = Date.now();
    failures = [[status.RESOURCE_EXHAUSTED, 5000]];
    const waiting = { signal: AbortSignal.timeout(100), timeoutMs: 30_000 };
    await assert.rejects(client.tagImage(Buffer.from("x"), {}, waiting), isCancelled);
    assert.ok(Date.now() - started < 2000, "the retry wait ends with the signal");

    await assert.rejects(client.tagImage(Buffer.from("x"), {}, { signal: AbortSignal.abort() }), isCancelled);

    const controller = new AbortController();
    async function* slowly() {
      yield { requestId: "0", image: Buffer.from("img") };
      await delay(10_000, undefined, { ref: false }); // never finishes: the signal ends the call first
    }
    await assert.rejects(async () => {
      for await (const _ of client.streamTagImages(slowly(), {}, { signal: controller.signal })) controller.abort();
    }, isCancelled);
  });
});

test("deadline: one for all attempts", async () => {
  await withClient({ timeoutMs: 200 }, async (client) => {
    const started = Date.now();
    await assert.rejects(client.tagImage(Buffer.from("slow")), (e) => e.code === status.DEADLINE_EXCEEDED);
    assert.ok(Date.now() - started < 2000);
  });
});

test("typed methods for the other RPCs: predictPopularity, health check and watch, batches", async () => {
  await withClient({}, async (client) => {
    const { popularity } = await client.predictPopularity(Buffer.from("img"));
    assert.equal(popularity.bookmarks.bins[0].probability, 1);
    assert.equal(await client.healthCheck(), acg2vec.HealthCheckResponse_ServingStatus.SERVING);
    const statuses = [];
    for await (const s of client.watchHealth("")) {
      statuses.push(s);
      if (statuses.length === 2) break;
    }
    const S = acg2vec.HealthCheckResponse_ServingStatus;
    assert.deepEqual(statuses, [S.SERVING, S.NOT_SERVING]);
    await delay(100);
    assert.deepEqual(cancelled, ["Watch"], "leaving the loop cancels the watch");
    assert.equal((await client.tagImages([Buffer.from("p"), Buffer.from("q")])).results.length, 2);
    assert.deepEqual((await client.extractTextFeatures(["ab"])).features[0].values, [2]);
  });
});

test("the service config retries only the streams (unary calls are retried by the client)", () => {
  assert.deepEqual(acg2vec.STREAMING_METHODS, [
    ["acg2vec.v1.TaggingService", "StreamTagImages"],
    ["acg2vec.v1.ImageFeatureService", "StreamExtractImageFeatures"],
    ["acg2vec.v1.TextFeatureService", "StreamExtractTextFeatures"],
    ["acg2vec.v1.SearchService", "StreamIndexIllustrations"],
    ["grpc.health.v1.Health", "Watch"],
  ]);
  const config = JSON.parse(acg2vec.streamRetryServiceConfig(acg2vec.resolveRetryPolicy(2), acg2vec.STREAMING_METHODS));
  assert.equal(config.methodConfig[0].retryPolicy.maxAttempts, 3);
  assert.deepEqual(config.methodConfig[0].retryPolicy.retryableStatusCodes, ["UNAVAILABLE"]);
});

test("tagOptions: per-tag thresholds and a threshold mode per category", () => {
  const options = acg2vec.tagOptions({ tagThresholds: { long_hair: 0.9 }, modes: { general: "mcut", character: "fixed" } });
  assert.deepEqual(options.tagThresholds, { long_hair: 0.9 });
  assert.equal(options.modes.general, acg2vec.ThresholdMode.THRESHOLD_MODE_MCUT);
  assert.equal(options.modes.character, acg2vec.ThresholdMode.THRESHOLD_MODE_FIXED);
  assert.equal(options.modes.meta, acg2vec.ThresholdMode.THRESHOLD_MODE_UNSPECIFIED);
  assert.equal(acg2vec.tagOptions({}).modes, undefined);
  assert.throws(() => acg2vec.tagOptions({ modes: { general: "adaptive" } }), TypeError);
  const bytes = acg2vec.TagOptions.encode(options).finish();
  assert.equal(Math.fround(acg2vec.TagOptions.decode(bytes).tagThresholds.long_hair), Math.fround(0.9)); // a float on the wire
});
