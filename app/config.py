"""The one ``Settings`` object (environment prefix ``MAILY_``); the only place that reads the environment."""

from __future__ import annotations

import logging
import secrets
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./maily.db"


class Settings(BaseSettings):
    """Every tunable of a node. Built once by ``create_app`` (tests pass their own)."""

    model_config = SettingsConfigDict(env_prefix="MAILY_", extra="ignore")

    env: Literal["dev", "test", "prod"] = "dev"
    node_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{secrets.token_hex(3)}")
    host: str = "127.0.0.1"
    port: int = 8000

    # auth (PROTOCOL.md section 0)
    jwt_secret: SecretStr | None = None
    jwt_public_key: str | None = None  # PEM, for RS256/ES256
    jwt_algorithms: list[str] = ["HS256"]
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway_s: float = 30.0
    api_key: SecretStr | None = None
    allowed_origins: list[str] = []  # empty: any Origin

    # storage
    database_url: str = DEFAULT_DATABASE_URL
    auto_migrate: bool | None = None  # None: migrate on start for SQLite only
    commit_window_ms: float = Field(default=10.0, ge=0, le=20)
    compact_after_updates: int = Field(default=1000, ge=10)

    # snapshots (README "Snapshots"): automatic ones every N updates or on a schedule, newest K kept
    auto_snapshot_every_updates: int = Field(default=500, ge=0)  # 0: no count trigger
    auto_snapshot_interval_s: float = Field(default=300.0, ge=0)  # 0: no schedule
    auto_snapshot_keep: int = Field(default=20, ge=1)
    pre_restore_snapshot_keep: int = Field(default=20, ge=1)
    request_timeout_s: float = Field(default=10.0, gt=0)  # longest wait of a REST call on storage/rooms

    # scale-out (README "Scaling out"): unset, one node with in-process broker, presence and limits;
    # set, every node sharing this Redis serves the same channels, presence, sessions and limits
    redis_url: str | None = None
    redis_prefix: str = Field(default="maily", pattern=r"^[A-Za-z0-9_.-]{1,32}$")  # of every key
    redis_timeout_s: float = Field(default=1.0, gt=0)  # longest wait for one Redis command or connect
    redis_probe_interval_s: float = Field(default=1.0, gt=0)  # Redis and reader liveness probes
    redis_probe_deadline_s: float = Field(default=3.0, gt=0)  # unseen probe: the reader is rebuilt
    presence_lease_s: float = Field(default=10.0, gt=0)  # a dead node's participants vanish after it
    rate_limit_sync_s: float = Field(default=0.1, gt=0)  # how often a node settles rate tokens in Redis
    publish_backlog_max: int = Field(default=10_000, ge=0)  # announcements kept while the broker is down
    # document updates kept for other nodes while the broker is down; past it a canvas is resynced
    relay_backlog_max_bytes: int = Field(default=32 * 1024 * 1024, ge=0)

    # rooms and limits
    unload_grace_s: float = 5.0
    load_timeout_s: float = 10.0
    max_frame_bytes: int = 64 * 1024
    max_sync_frame_bytes: int = 16 * 1024 * 1024
    peer_buffer_max_bytes: int = 2 * 1024 * 1024
    peer_queue_max: int = 1024  # frames, for connections that cannot be written to directly
    max_peers_per_room: int = 1000
    ws_ping_interval_s: float = 20.0

    # JSON channel protocol (PROTOCOL.md section 2, "Limits")
    max_message_bytes: int = 64 * 1024  # one JSON or MessagePack message
    max_message_depth: int = Field(default=32, ge=2)  # nesting of objects and arrays in one message
    rate_limit_per_s: float = Field(default=100.0, gt=0)  # messages per user, all connections together
    rate_limit_burst: float = Field(default=100.0, ge=1)  # token bucket size
    rate_limit_close_after: float = Field(default=100.0, ge=1)  # refused messages (decaying) before 4008
    max_channels_per_connection: int = 100
    max_connections_per_user: int = 20
    max_users_per_canvas: int = 1000
    idle_timeout_s: float = Field(default=60.0, gt=0)  # no frame at all for this long: close 4010
    heartbeat_interval_s: float = Field(default=25.0, gt=0)  # advertised in connection_ack
    session_ttl_s: float = 900.0  # a disconnected session stays resumable this long
    history_ttl_s: float = 900.0  # channel history (except :cursor channels)
    history_max_per_channel: int = Field(default=10_000, ge=1)
    history_replay_max: int = Field(default=100, ge=0)  # publications sent for options.history = true
    token_expiring_before_s: float = 60.0  # token_expiring is sent this long before expiry
    presence_idle_after_s: float = Field(default=60.0, gt=0)  # no cursor or edit: presence "idle"
    lock_ttl_s: float = Field(default=300.0, gt=0)  # element locks expire after this long
    max_cursor_batch: int = Field(default=100, ge=1)  # positions in one cursor_batch
    max_prompt_chars: int = Field(default=4000, ge=1)

    log_level: str = "INFO"
    log_json: bool = True

    @field_validator("jwt_algorithms")
    @classmethod
    def _one_family(cls, algorithms: list[str]) -> list[str]:
        families = {alg[:2] for alg in algorithms}
        if not algorithms or "none" in {a.lower() for a in algorithms}:
            raise ValueError("jwt_algorithms must name at least one real algorithm")
        if "HS" in families and len(families) > 1:
            raise ValueError("never mix HMAC (HS*) with public-key algorithms: that enables key confusion")
        return algorithms

    @model_validator(mode="after")
    def _secrets(self) -> Settings:
        uses_hmac = self.jwt_algorithms[0].startswith("HS")
        if uses_hmac and self.jwt_secret is None:
            if self.env == "prod":
                raise ValueError("MAILY_JWT_SECRET is required when MAILY_ENV=prod")
            self.jwt_secret = SecretStr(_dev_secret(self.dev_secret_file))
            self._generated_secret = True
        if not uses_hmac and not self.jwt_public_key:
            raise ValueError("MAILY_JWT_PUBLIC_KEY is required for public-key algorithms")
        return self

    _generated_secret: bool = PrivateAttr(default=False)
    # where the generated dev secret is kept, so `serve` and `token` agree across processes
    dev_secret_file: Path = Path(".maily-dev-secret")

    @property
    def generated_secret(self) -> bool:
        """True when no secret was configured and the development secret file is in use."""
        return self._generated_secret

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def should_migrate(self) -> bool:
        return self.is_sqlite if self.auto_migrate is None else self.auto_migrate


def _dev_secret(path: Path) -> str:
    """Read the development HS256 secret from ``path``, creating it (mode 0600) on first use."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        secret = secrets.token_urlsafe(32)
        path.touch(mode=0o600)
        path.write_text(secret + "\n")
        log.warning("no MAILY_JWT_SECRET set: generated a development secret", extra={"file": str(path)})
        return secret
