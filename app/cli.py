"""The ``maily-realtime`` command: ``serve``, ``migrate`` and ``token`` (PROTOCOL.md section 0)."""

from __future__ import annotations

import argparse
import sys

from .config import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="maily-realtime", description="Maily Realtime collaboration server")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", help="run a node (migrates the embedded SQLite database on first start)"
    )
    serve.add_argument("--host", default=None, help="interface to bind (default MAILY_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default MAILY_PORT or 8000)")

    commands.add_parser("migrate", help="apply Alembic migrations to MAILY_DATABASE_URL")

    token = commands.add_parser("token", help="print a signed JWT (HS256 deployments)")
    token.add_argument("--sub", required=True, help="user id")
    token.add_argument("--name", default=None, help="display name (default: the user id)")
    token.add_argument(
        "--perm",
        action="append",
        default=[],
        metavar="RESOURCE=ROLE",
        help="e.g. canvas:123=write (repeatable)",
    )
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")

    args = parser.parse_args(argv)
    settings = Settings()
    if args.command == "serve":
        return _serve(settings, args.host, args.port)
    if args.command == "migrate":
        from storage.migrate import upgrade

        upgrade(settings.database_url)
        sys.stdout.write("database migrated to head\n")
        return 0
    return _token(settings, args.sub, args.name or args.sub, args.perm, args.ttl)


def _serve(settings: Settings, host: str | None, port: int | None) -> int:
    import uvicorn

    from .logging import configure
    from .main import create_app

    configure(settings.log_level, json_lines=settings.log_json)
    if settings.generated_secret:
        sys.stderr.write(
            f"MAILY_JWT_SECRET is not set: using the development secret kept in {settings.dev_secret_file}.\n"
            "Mint tokens with: maily-realtime token --sub alice --perm 'canvas:*=write'\n"
        )
    uvicorn.run(
        create_app(settings),
        host=host or settings.host,
        port=port or settings.port,
        ws="websockets-sansio",  # app/transport.py writes prebuilt frames to this protocol's transport
        ws_per_message_deflate=False,  # prebuilt frames are uncompressed
        ws_max_size=settings.max_sync_frame_bytes + 64,
        ws_ping_interval=settings.ws_ping_interval_s,
        ws_ping_timeout=settings.ws_ping_interval_s,
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    return 0


def _token(settings: Settings, sub: str, name: str, perm_args: list[str], ttl: int) -> int:
    from .auth import Authenticator

    perms = {}
    for item in perm_args:
        resource, sep, role = item.rpartition("=")
        if not sep or role not in ("read", "write", "admin") or not resource:
            sys.stderr.write(
                f"--perm must look like canvas:123=write (role read|write|admin), got {item!r}\n"
            )
            return 2
        perms[resource] = role
    sys.stdout.write(Authenticator(settings).issue(sub, name, perms, ttl_s=ttl) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
