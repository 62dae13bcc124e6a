"""One typed settings object, read from ACG2VEC_* environment variables and CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

InferenceKind = Literal["inprocess", "tfserving"]
IndexType = Literal["HNSW", "FLAT", "IVF_FLAT", "IVF_SQ8", "AUTOINDEX"]
AuthMode = Literal["token", "none"]
LogFormat = Literal["text", "json"]
OtlpProtocol = Literal["", "grpc", "http/protobuf"]

#: Commands the application must not use on Tendis; the embedded server disables them so that using one fails
#: fast. Tendis 2.7's command table (src/tendisplus/commands/*.cpp) has no WATCH/UNWATCH/DISCARD (MULTI/EXEC
#: exist without them), no HELLO (RESP2 only), none of the blocking pops, GEO*, ZPOPMIN/MAX, WAIT, TOUCH,
#: RANDOMKEY, SWAPDB, MIGRATE, FUNCTION; it has EVAL and OBJECT, which stay off by design (no Lua).
TENDIS_UNSUPPORTED_COMMANDS: tuple[str, ...] = (
    "WATCH", "UNWATCH", "DISCARD", "HELLO",
    "EVAL", "EVALSHA", "SCRIPT", "FUNCTION", "FCALL", "FCALL_RO",
    "BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BZPOPMIN", "BZPOPMAX",
    "SWAPDB", "RANDOMKEY", "OBJECT", "WAIT", "MIGRATE", "TOUCH", "ZPOPMIN", "ZPOPMAX",
    "GEOADD", "GEODIST", "GEOHASH", "GEOPOS", "GEORADIUS", "GEORADIUSBYMEMBER",
    "GEORADIUS_RO", "GEORADIUSBYMEMBER_RO", "GEOSEARCH", "GEOSEARCHSTORE",
)  # fmt: skip


class Settings(BaseSettings):
    """Everything the server can be told. Env: ACG2VEC_<FIELD> (upper case)."""

    model_config = SettingsConfigDict(env_prefix="ACG2VEC_", extra="ignore")

    # --- transport
    listen: str = Field(
        "127.0.0.1:50051", description="gRPC address to bind, host:port ('0.0.0.0:50051' in containers)."
    )
    metrics_port: int = Field(9090, description="Prometheus /metrics HTTP port on the same host; 0 disables it.")
    max_message_bytes: int = Field(32 * 1024 * 1024, description="Largest gRPC message accepted or sent.")
    grace_period_s: float = Field(15.0, description="On SIGTERM, how long in-flight calls may finish.")
    max_connection_age_s: float = Field(
        300.0,
        description="Each client connection is closed (GOAWAY) after this long, so clients reconnect and spread over "
        "new replicas (a Kubernetes Service balances per connection); 0: never.",
    )
    max_connection_age_grace_s: float = Field(
        60.0,
        description="After max_connection_age_s, how long calls in progress on the old connection may finish; a longer "
        "stream then ends with UNAVAILABLE (`acg2vec index` resumes on a new one).",
    )
    access_log: bool = Field(True, description="Log one line per call.")
    log_level: str = "INFO"
    log_format: LogFormat = Field(
        "text", description="text: readable lines; json: one JSON object per line, with trace_id and span_id."
    )

    # --- tracing (OpenTelemetry; the standard OTEL_* variables apply: docs/deployment.md#tracing)
    tracing: bool = Field(
        False,
        description="Trace every RPC (server span, W3C trace context from the caller) and backend call (child "
        "spans), exported over OTLP. OTEL_SDK_DISABLED=true turns it off.",
    )
    otlp_endpoint: str = Field(
        "",
        description="OTLP collector, e.g. http://otel-collector:4317 (grpc) or http://otel-collector:4318 "
        "(http/protobuf); empty: OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT, else localhost.",
    )
    otlp_protocol: OtlpProtocol = Field(
        "", description="grpc or http/protobuf; empty: OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL, else grpc."
    )

    # --- security (docs/security.md); SecretStr fields come from env only (no CLI flag) and never print
    auth: AuthMode = Field(
        "token",
        description="token: every call but health and reflection needs a bearer token with the right scope; "
        "none: no authentication (loopback only, or with mutual TLS).",
    )
    auth_tokens_file: Path | None = Field(
        None, description="Tokens file: 'NAME SCOPES TOKEN' per line (TOKEN: sha256:<hex> or plain); re-read on change."
    )
    auth_tokens: SecretStr = Field(
        SecretStr(""), description="Tokens in the tokens-file format, entries split by newlines or ';' (env only)."
    )
    tls_cert_file: Path | None = Field(None, description="PEM server certificate (chain); with tls_key_file: TLS on.")
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file.")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS)."
    )
    health_listen: str = Field(
        "", description="Extra plaintext host:port serving only grpc.health.v1 (probes when TLS is on); empty = none."
    )

    # --- storage
    data_dir: Path = Field(Path("var"), description="Where embedded backends keep their data.")
    model_repository: Path | None = Field(
        None, description="TF-Serving layout model repository; default <data_dir>/models."
    )

    # --- inference
    inference_backend: InferenceKind = "inprocess"
    tfserving_target: str = Field(
        "127.0.0.1:8500",
        description="TF-Serving gRPC target when inference_backend=tfserving: host:port, or dns:///name:port of a "
        "headless Service to spread calls over every TF-Serving pod (round_robin).",
    )
    inference_timeout_s: float = Field(
        30.0,
        description="Longest a model call may wait and run (any backend; TF-Serving gets it as the gRPC deadline); "
        "past it the call fails with UNAVAILABLE and a retry hint.",
    )
    inference_timeout_s_per_model: str = Field(
        "", description="Per-model inference_timeout_s, e.g. 'tagger=120' for a big imported tagger."
    )
    inference_threads: int = Field(2, description="Threads running in-process TensorFlow calls.")
    tagger_model: str = "tagger"
    image_feature_model: str = "illust2vec"
    text_model: str = "acgvoc2vec"
    joint_model: str = Field(
        "joint",
        description="The joint image–text model: when installed, Search(text) compares the query with pictures in "
        "its space (an illustration's text-space vector is its picture's); without it, with its tag text.",
    )
    popularity_model: str = "deepix"

    # --- vectors (Milvus)
    milvus_uri: str = Field(
        "",
        description="A file path means Milvus Lite; http://host:19530 a Milvus server. Default <data_dir>/milvus.db "
        "(Milvus Lite), or the standalone server with --milvus-standalone.",
    )
    milvus_standalone: bool = Field(
        False,
        description="Start the Milvus standalone server (PyPI package milvus, `pip install 'acg2vec[standalone]'`) "
        "with its data under <data_dir>/milvus-standalone, use it, and stop it on exit: HNSW search past ~100k "
        "illustrations on one machine (Milvus Lite scans). Not with milvus_uri.",
    )
    milvus_standalone_port: int = Field(0, description="Port of the started standalone server (0: a free one).")
    milvus_token: SecretStr = Field(SecretStr(""), description="Milvus token or user:password (env only).")
    milvus_collection: str = Field(
        "acg2vec_illustrations",
        description="Base name of the vector collections: <base>_<space>_<model>_v<version>, reached through the "
        "aliases <base>_image and <base>_text (the live version of each space).",
    )
    milvus_index_type: IndexType = "HNSW"
    hnsw_m: int = 16
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 128
    ivf_nlist: int = Field(1024, description="Clusters of an IVF_FLAT / IVF_SQ8 index (about 4*sqrt(rows)).")
    ivf_nprobe: int = Field(32, description="Clusters an IVF search visits (recall vs speed).")
    milvus_timeout_s: float = 10.0
    milvus_concurrency: int = Field(
        8, ge=1, description="Milvus calls in flight at once (a server or cluster; Milvus Lite takes one at a time)."
    )
    milvus_collections: Literal["live", "next"] = Field(
        "live",
        description="live: serve the collections the aliases name, with the model versions that filled them. next: "
        "serve (and index into) the newest installed model versions' collections without touching the aliases, to "
        "re-index for an upgrade while the live ones keep serving; `acg2vec collections switch` makes them live.",
    )

    # --- metadata (Tendis / Redis protocol)
    redis_url: str = Field("", description="redis://host:port/0 of Tendis or Redis; empty starts an embedded server.")
    redis_cluster: bool = Field(
        False, description="redis_url is a node of a Redis Cluster / Tendis cluster (redis-py RedisCluster)."
    )
    redis_key_prefix: str = "acg2vec:v1"
    redis_timeout_s: float = 5.0
    lease_ttl_s: float = Field(
        30.0, gt=0.5,
        description="Per-id write lease (replicas share the store): a write must finish within 2/3 of it, and a "
        "crashed replica's ids are free again after it.",
    )  # fmt: skip
    embedded_redis_port: int = Field(0, description="Port of the embedded Redis-protocol server; 0 picks a free one.")
    tendis_compat: bool = Field(True, description="Disable commands Tendis lacks on the embedded server.")

    # --- request limits
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = Field(
        50_000_000, description="Decompression-bomb guard: width*height above this is refused."
    )
    downscale_above_pixels: int = Field(
        4_194_304,
        description="Images with more pixels are downscaled (box filter) before the model graph decodes them, which "
        "takes about 36 bytes per pixel: bounds its memory and time. 0: never.",
    )
    max_text_chars: int = 2048
    max_batch_size: int = 64
    max_top_k: int = 1000
    default_tag_top_k: int = 64
    default_tag_threshold: float = 0.5
    tag_thresholds_file: Path | None = Field(
        None,
        description="Default thresholds of single tags: CSV rows 'tag,threshold' or a JSON object {tag: threshold}; "
        "a request's category or tag thresholds win over them.",
    )
    health_probe_interval_s: float = 2.0

    # --- load: concurrency limits, bounded queues, dynamic batching (docs/reliability.md)
    max_concurrent_calls: int = Field(
        256, description="Calls in progress at once (health, reflection excepted); past it RESOURCE_EXHAUSTED. 0: off."
    )
    max_calls_per_client: int = Field(
        128, description="Calls in progress at once per client (its IP address); past it RESOURCE_EXHAUSTED. 0: off."
    )
    batch_max_size: int = Field(
        32, description="Dynamic batching: most items in one model run (concurrent requests joined); 1: off."
    )
    batch_max_size_per_model: str = Field(
        "",
        description="Per-model batch_max_size, e.g. 'tagger=2,acgvoc2vec=128'; a request with more items runs as "
        "chunks of it, so a big model stays responsive.",
    )
    batch_max_wait_ms: float = Field(
        5.0, description="Dynamic batching: how long a batch waits for more requests while its model is busy."
    )
    inference_queue_items: int = Field(
        256, description="Items waiting for inference per model; past it RESOURCE_EXHAUSTED (with a retry hint)."
    )
    inference_concurrency: int = Field(
        1,
        description="Batches of one model running at once (in-process: 1 gives the largest batches; TF-Serving: "
        "about its replicas x batch threads).",
    )

    @model_validator(mode="after")
    def _resolve_paths(self) -> Settings:
        if self.model_repository is None:
            self.model_repository = self.data_dir / "models"
        if self.milvus_standalone and self.milvus_uri:
            raise ValueError("milvus_standalone starts its own Milvus server: unset milvus_uri, or turn it off")
        if not self.milvus_uri and not self.milvus_standalone:
            self.milvus_uri = str(self.data_dir / "milvus.db")
        if self.redis_cluster and not self.redis_url:
            raise ValueError("redis_cluster needs redis_url (a cluster node); the embedded server is not a cluster")
        return self

    @model_validator(mode="after")
    def _check_load_settings(self) -> Settings:
        self.batch_max_sizes()  # a malformed value fails at start-up, with the fix in the message
        self.inference_timeouts()
        if min(self.batch_max_size, self.inference_queue_items, self.inference_concurrency) < 1:
            raise ValueError("batch_max_size, inference_queue_items and inference_concurrency must be at least 1")
        if self.inference_timeout_s <= 0:
            raise ValueError("inference_timeout_s must be above 0 (seconds)")
        return self

    def batch_max_sizes(self) -> dict[str, int]:
        """batch_max_size_per_model as a dict: 'tagger=16,acgvoc2vec=128' -> {'tagger': 16, 'acgvoc2vec': 128}."""
        return {k: int(v) for k, v in _per_model("batch_max_size_per_model", self.batch_max_size_per_model,
                                                 "size", "tagger=16,acgvoc2vec=128", integer=True).items()}  # fmt: skip

    def inference_timeouts(self) -> dict[str, float]:
        """inference_timeout_s_per_model as a dict: 'tagger=120' -> {'tagger': 120.0}."""
        return _per_model("inference_timeout_s_per_model", self.inference_timeout_s_per_model, "seconds",
                          "tagger=120,deepix=60")  # fmt: skip

    @property
    def models_root(self) -> Path:
        assert self.model_repository is not None
        return self.model_repository

    @property
    def grpc_port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


def _per_model(setting: str, value: str, unit: str, example: str, integer: bool = False) -> dict[str, float]:
    """'model=number' entries split by commas; a malformed entry fails with the fix in the message."""
    parsed: dict[str, float] = {}
    for entry in filter(None, (e.strip() for e in value.split(","))):
        model, _, number = (part.strip() for part in entry.partition("="))
        try:
            amount = int(number) if integer else float(number)
        except ValueError:
            amount = 0
        if not model or not amount > 0 or amount != amount:  # amount != amount: NaN
            raise ValueError(
                f"{setting} entry {entry!r} is malformed: write model={unit} pairs split by commas, e.g. "
                f"'{example}' ({unit} above 0)"
            )
        parsed[model] = amount
    return parsed
