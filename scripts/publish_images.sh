#!/usr/bin/env bash
# Builds both images of the Dockerfile and pushes them to a registry you name:
#   REGISTRY/acg2vec:TAG          the server (target runtime; the manifests' image `acg2vec`)
#   REGISTRY/acg2vec-trainer:TAG  builds the default models (target trainer; the models Job's `acg2vec-trainer`)
#
#   scripts/publish_images.sh REGISTRY [TAG]        e.g. scripts/publish_images.sh ghcr.io/you 0.1.0
#
# TAG defaults to the project version (pyproject.toml). Log in first (`docker login REGISTRY`). Environment:
#   DOCKER=podman        another docker-compatible CLI (default: docker)
#   PLATFORM=linux/amd64 build for the nodes' platform (passed as --platform)
#   BAKE_MODELS=1        bake the default models into the server image (see the Dockerfile)
# Then point an overlay at the pushed images and apply it (docs/deployment.md, first steps); the script prints the
# `kustomize edit set image` line to run.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 1 ] || [ $# -gt 2 ] || [ -z "$1" ]; then
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
registry=${1%/}
tag=${2:-$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)}
if [ -z "$tag" ]; then
  echo "no TAG given and no version in pyproject.toml: pass one, e.g. scripts/publish_images.sh $registry 0.1.0" >&2
  exit 2
fi
docker=${DOCKER:-docker}
platform=()
if [ -n "${PLATFORM:-}" ]; then platform=(--platform "$PLATFORM"); fi

server="$registry/acg2vec:$tag"
trainer="$registry/acg2vec-trainer:$tag"
set -x
"$docker" build "${platform[@]}" --target runtime --build-arg "BAKE_MODELS=${BAKE_MODELS:-0}" -t "$server" .
"$docker" build "${platform[@]}" --target trainer -t "$trainer" .
"$docker" push "$server"
"$docker" push "$trainer"
{ set +x; } 2>/dev/null
cat <<MSG

Pushed $server and $trainer. Point an overlay at them and apply it:
  (cd k8s/overlays/prod && kustomize edit set image acg2vec=$server acg2vec-trainer=$trainer)
  kubectl apply -k k8s/overlays/prod
MSG
