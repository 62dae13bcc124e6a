// The CommonJS twin of esm.mjs: the same package through `require` (its dist/cjs build).
"use strict";
const { readFileSync } = require("node:fs");
const grpc = require("@grpc/grpc-js");
const { Acg2vecClient, HealthCheckResponse_ServingStatus, PROTOS_VERSION } = require("@acg2vec/client");

async function main() {
  const sample = readFileSync(process.env.ACG2VEC_SAMPLE_PNG);
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
        flavour: "cjs",
        resolved: require.resolve("@acg2vec/client"),
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
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
