#!/usr/bin/env bash
# README command 1: set up, build the default models if missing, and serve on the embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
scripts/setup.sh
echo "setup: $((SECONDS - started)) s"
started=$SECONDS
.venv/bin/acg2vec models build-defaults
echo "default models: $((SECONDS - started)) s"
LISTEN=${ACG2VEC_LISTEN:-127.0.0.1:50051}
# Local mode: no authentication, which the server allows on loopback only. For tokens and TLS, set
# ACG2VEC_AUTH=token and ACG2VEC_AUTH_TOKENS_FILE / ACG2VEC_TLS_* (docs/security.md).
AUTH=${ACG2VEC_AUTH:-none}
cat <<MSG

acg2vec is starting on ${LISTEN} (auth: ${AUTH}; metrics on :${ACG2VEC_METRICS_PORT:-9090}/metrics; data in ./var). Try:
  .venv/bin/grpcurl -plaintext ${LISTEN} list
  .venv/bin/grpcurl -plaintext -d "{\"image\": \"\$(base64 -w0 tests/data/sample.png)\"}" ${LISTEN} acg2vec.v1.TaggingService/TagImage
Stop with Ctrl-C (graceful: in-flight calls finish).

MSG
exec .venv/bin/acg2vec serve --listen "$LISTEN" --auth "$AUTH" "$@"
