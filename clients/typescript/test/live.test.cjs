// Calls a live acg2vec server through the built package (dist/). Run by tests/client/test_typescript.py,
// which starts the server and sets ACG2VEC_TARGET and ACG2VEC_SAMPLE_PNG; by hand:
//   ACG2VEC_TARGET=127.0.0.1:50051 ACG2VEC_SAMPLE_PNG=../../tests/data/sample.png npm test
"use strict";
const assert = require("node:assert/strict");
const fs = require("node:fs");
const { after, before, test } = require("node:test");
const { status } = require("@grpc/grpc-js");

const acg2vec = require("..");

const target = process.env.ACG2VEC_TARGET;
const samplePath = process.env.ACG2VEC_SAMPLE_PNG;
if (!target || !samplePath) throw new Error("set ACG2VEC_TARGET=host:port and ACG2VEC_SAMPLE_PNG=path/to.png");
const sample = fs.readFileSync(samplePath);
const { Rating, VectorSpace, IndexOutcome, HealthCheckResponse_ServingStatus: Serving } = acg2vec;

let client;
before(() => {
  client = new acg2vec.Acg2vecClient(target, { timeoutMs: 30_000, token: process.env.ACG2VEC_TOKEN || "unused-when-auth-is-off" });
});
after(() => client.close());

function isUnitVector(feature) {
  assert.equal(feature.values.length, feature.dimension);
  assert.ok(feature.dimension > 0);
  assert.equal(feature.normalized, true);
  assert.ok(Math.abs(acg2vec.norm(feature) - 1) < 1e-3, `norm ${acg2vec.norm(feature)}`);
  assert.ok(feature.model.name.length > 0 && feature.model.version >= 1, JSON.stringify(feature.model));
}

test("package version is the protos' version", () => {
  const pkg = require("../package.json");
  assert.equal(acg2vec.PROTOS_VERSION, pkg.version);
});

// Health status, waiting out a NOT_SERVING blip (a slow backend probe on a busy machine) as a caller would.
async function serving(name, waitMs = 30_000) {
  const deadline = Date.now() + waitMs;
  let status = await client.healthCheck(name);
  while (status !== Serving.SERVING && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 500));
    status = await client.healthCheck(name);
  }
  return status;
}

test("health: the whole server and every service are SERVING", async () => {
  assert.equal(await serving(""), Serving.SERVING);
  for (const name of acg2vec.SERVICE_NAMES) assert.equal(await serving(name), Serving.SERVING, name);
  await assert.rejects(client.healthCheck("no.such.Service"), (e) => e.code === status.NOT_FOUND);
});

test("TagImage tags the sample PNG within top_k, with a rating and its scores", async () => {
  const { result } = await client.tagImage(sample, { topK: 5, thresholds: { general: 0 } });
  assert.equal(result.tags.length, 5, "threshold 0 keeps every tag, top_k caps them");
  const scores = result.tags.map((t) => t.score);
  assert.deepEqual(scores, [...scores].sort((a, b) => b - a), "best first");
  for (const tag of result.tags) assert.ok(tag.name.length > 0 && tag.score >= 0 && tag.score <= 1);
  assert.notEqual(result.rating, Rating.RATING_UNSPECIFIED);
  assert.ok(acg2vec.ratingToJSON(result.rating).startsWith("RATING_"));
  assert.ok(result.ratingScores.length >= 3);
  const best = result.ratingScores.reduce((a, b) => (b.score > a.score ? b : a));
  assert.equal(result.rating, best.rating, "the rating is the most likely one");
  assert.equal(result.model.name, "tagger");
});

test("image and text features are unit vectors of their model", async () => {
  isUnitVector((await client.extractImageFeature(sample)).feature);
  const a = (await client.extractTextFeature("魔法少女まどか☆マギカ")).feature;
  const b = (await client.extractTextFeature("魔法少女まどか☆マギカ")).feature;
  isUnitVector(a);
  assert.deepEqual(a.values, b.values, "the same text gives the same vector");
  const batch = await client.extractTextFeatures(["初音ミク", "silver hair, red eyes"]);
  assert.equal(batch.features.length, 2);
});

test("index, get, search by id, text and vector, delete", async () => {
  const id = `ts-client:${process.pid}`;
  const indexed = await client.indexIllustration(id, sample, { title: "sample", fields: { source: "ts" } });
  assert.ok([IndexOutcome.INDEX_OUTCOME_CREATED, IndexOutcome.INDEX_OUTCOME_UPDATED].includes(indexed.outcome));
  const again = await client.indexIllustration(id, sample, { title: "sample", fields: { source: "ts" } });
  assert.equal(again.outcome, IndexOutcome.INDEX_OUTCOME_UNCHANGED, "idempotent by id");

  const { illustration } = await client.getIllustration(id, true);
  assert.equal(illustration.id, id);
  assert.equal(illustration.metadata.fields.source, "ts");
  assert.ok(illustration.createTime instanceof Date);
  assert.match(illustration.contentSha256, /^[0-9a-f]{64}$/);

  const byVector = await client.search(
    { vector: illustration.imageVector.values, space: VectorSpace.VECTOR_SPACE_IMAGE },
    { topK: 5, filter: { fields: { source: "ts" } } },
  );
  assert.equal(byVector.hits[0].id, id, "its own image vector finds it first");
  assert.ok(byVector.hits[0].score > 0.99);

  const byText = await client.search({ text: "illustration" }, { topK: 3, filter: { fields: { source: "ts" } } });
  assert.equal(byText.space, VectorSpace.VECTOR_SPACE_TEXT);
  assert.deepEqual(byText.hits.map((h) => h.id), [id], "the filter leaves only this one");

  const byImage = await client.search({ image: sample }, { topK: 3, filter: { fields: { source: "ts" } } });
  assert.equal(byImage.hits[0].id, id);

  assert.equal((await client.deleteIllustration(id)).existed, true);
  await assert.rejects(client.getIllustration(id), (e) => e.code === status.NOT_FOUND);
});

test("bad input: INVALID_ARGUMENT with a message and BadRequest field violations", async () => {
  await assert.rejects(client.extractTextFeature(""), (e) => {
    assert.equal(e.code, status.INVALID_ARGUMENT);
    assert.match(e.details, /text is empty/);
    assert.deepEqual(acg2vec.fieldViolations(e).map((v) => v.field), ["text"]);
    return true;
  });
  await assert.rejects(client.tagImage(Buffer.from("not an image")), (e) => e.code === status.INVALID_ARGUMENT);
  assert.throws(() => acg2vec.searchRequest({ text: "a", illustrationId: "b" }), TypeError);
});

test("predictPopularity: deepix distributions that sum to 1", async () => {
  const { popularity } = await client.predictPopularity(sample);
  assert.equal(popularity.bookmarks.bins.length, 15);
  const total = popularity.bookmarks.bins.reduce((sum, bin) => sum + bin.probability, 0);
  assert.ok(Math.abs(total - 1) < 1e-3, `${total}`);
});

test("streams as async iterables: a bad item gets its own error, the good ones their answers", async () => {
  async function* items() {
    yield { requestId: "good", image: sample };
    yield { requestId: "bad", image: Buffer.from("nope") };
  }
  const answers = {};
  for await (const answer of client.streamTagImages(items(), { topK: 3 })) answers[answer.requestId] = answer;
  assert.ok(answers.good.result.tags.length <= 3 && answers.good.result.tags.length > 0);
  assert.equal(answers.bad.error.code, status.INVALID_ARGUMENT);

  const features = [];
  for await (const a of client.streamExtractImageFeatures([{ requestId: "img", image: sample }])) features.push(a);
  isUnitVector(features[0].feature);
  const texts = [];
  for await (const a of client.streamExtractTextFeatures([{ requestId: "t", text: "初音ミク" }])) texts.push(a);
  isUnitVector(texts[0].feature);

  const id = `ts-stream:${process.pid}`;
  const indexed = [];
  for await (const a of client.streamIndexIllustrations([{ id, image: sample, metadata: { title: "s" } }])) indexed.push(a);
  assert.deepEqual(indexed.map((a) => [a.id, a.error]), [[id, undefined]]);
  assert.equal((await client.deleteIllustration(id)).existed, true);
});

test("the raw stubs share the channel: with callMetadata() and streamCallOptions()", async () => {
  const call = client.tagging.streamTagImages(client.callMetadata(), client.streamCallOptions(30_000));
  call.write({ requestId: "raw", image: sample, options: acg2vec.tagOptions({ topK: 1 }) });
  call.end();
  const answers = [];
  for await (const answer of call) answers.push(answer.requestId);
  assert.deepEqual(answers, ["raw"]);
});
