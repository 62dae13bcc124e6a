// An ES module app that installed the packed @acg2vec/client next to its own @grpc/grpc-js (a different minor
// than the client's dev dependency). Run by tests/client/test_typescript.py with ACG2VEC_TARGET and
// ACG2VEC_SAMPLE_PNG; prints what it saw as JSON.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

import * as grpc from "@grpc/grpc-js";
import { Acg2vecClient, HealthCheckResponse_ServingStatus, PROTOS_VERSION } from "@acg2vec/client";

const require = createRequire(import.meta.url);
const sample = readFileSync(process.env.ACG2VEC_SAMPLE_PNG);
// The app's own grpc-js credentials: with two grpc-js copies this failed ("Channel credentials must be a
// ChannelCredentials object", grpc-node#2228); with grpc-js as a peer dependency there is one copy.
const client = new Acg2vecClient(process.env.ACG2VEC_TARGET, {
  credentials: grpc.credentials.createInsecure(),
  token: "unused-when-auth-is-off",
  timeoutMs: 60_000,
});
try {
  const serving = (await client.healthCheck()) === HealthCheckResponse_ServingStatus.SERVING;
  const { result } = await client.tagImage(sample, { topK: 3 });
  const answers = [];
  for await (const a of client.streamExtractTextFeatures([{ requestId: "t", text: "初音ミク" }])) answers.push(a);
  let cancelled;
  try {
    await client.extractImageFeature(sample, { signal: AbortSignal.abort() });
  } catch (e) {
    cancelled = e.code === grpc.status.CANCELLED;
  }
  console.log(
    JSON.stringify({
      flavour: "esm",
      resolved: import.meta.resolve("@acg2vec/client"),
      grpcJs: require("@grpc/grpc-js/package.json").version,
      version: PROTOS_VERSION,
      serving,
      tags: result.tags.length,
      stream: answers.map((a) => [a.requestId, a.feature.dimension === a.feature.values.length]),
      cancelled,
    }),
  );
} finally {
  client.close();
}
