// Calls a secured acg2vec server (mutual TLS + bearer tokens with scopes) through the built package (dist/).
// Run by tests/client/test_typescript.py, which starts the server with a CA made in the test and sets
// ACG2VEC_TARGET, ACG2VEC_CA_FILE, ACG2VEC_CERT_FILE, ACG2VEC_KEY_FILE, ACG2VEC_READ_TOKEN, ACG2VEC_WRITE_TOKEN.
"use strict";
const assert = require("node:assert/strict");
const fs = require("node:fs");
const { test } = require("node:test");
const { status } = require("@grpc/grpc-js");

const acg2vec = require("..");

const env = process.env;
for (const name of ["ACG2VEC_TARGET", "ACG2VEC_CA_FILE", "ACG2VEC_CERT_FILE", "ACG2VEC_KEY_FILE"]) {
  if (!env[name]) throw new Error(`set ${name}`);
}
const tls = {
  rootCerts: fs.readFileSync(env.ACG2VEC_CA_FILE),
  certChain: fs.readFileSync(env.ACG2VEC_CERT_FILE),
  privateKey: fs.readFileSync(env.ACG2VEC_KEY_FILE),
};

async function withClient(options, fn) {
  const client = new acg2vec.Acg2vecClient(env.ACG2VEC_TARGET, { timeoutMs: 30_000, retries: 0, ...options });
  try {
    return await fn(client);
  } finally {
    client.close();
  }
}

const code = (expected) => (e) => e.code === expected || assert.fail(`${e.code} ${e.details}`);

test("mutual TLS + a read token: read calls work, health needs no token", async () => {
  await withClient({ ...tls, token: env.ACG2VEC_READ_TOKEN }, async (client) => {
    const { feature } = await client.extractTextFeature("初音ミク");
    assert.equal(feature.values.length, feature.dimension);
  });
  await withClient(tls, async (client) => {
    assert.equal(await client.healthCheck(""), acg2vec.HealthCheckResponse_ServingStatus.SERVING);
  });
});

test("no token: UNAUTHENTICATED, also on a stream", async () => {
  await withClient(tls, async (client) => {
    await assert.rejects(client.extractTextFeature("x"), code(status.UNAUTHENTICATED));
    const call = client.tagging.streamTagImages(client.callMetadata(), client.streamCallOptions(30_000));
    call.end();
    await assert.rejects(
      (async () => {
        for await (const _ of call) assert.fail("no answer without a token");
      })(),
      code(status.UNAUTHENTICATED),
    );
  });
});

test("scopes: a read token may not delete, a write token may", async () => {
  await withClient({ ...tls, token: env.ACG2VEC_READ_TOKEN }, async (client) => {
    await assert.rejects(client.deleteIllustration("ts-secure-none"), code(status.PERMISSION_DENIED));
  });
  await withClient({ ...tls, token: env.ACG2VEC_WRITE_TOKEN }, async (client) => {
    assert.equal((await client.deleteIllustration("ts-secure-none")).existed, false);
  });
});

test("TLS without the client certificate is refused by a mutual-TLS server", async () => {
  await withClient({ rootCerts: tls.rootCerts, token: env.ACG2VEC_READ_TOKEN }, async (client) => {
    await assert.rejects(client.extractTextFeature("x"), code(status.UNAVAILABLE));
  });
  assert.throws(() => new acg2vec.Acg2vecClient("127.0.0.1:1", { privateKey: tls.privateKey }), TypeError);
});
