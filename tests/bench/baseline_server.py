"""Baseline for the fan-out benchmark: plain pycrdt-websocket under uvicorn, no auth, rooms by path.

Started by ``run_fanout.py`` as ``python tests/bench/baseline_server.py --port P``. It uses the same
uvicorn options as ``maily-realtime serve`` where they apply (``app/cli.py``); nothing of ours is imported.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

import uvicorn
from pycrdt.websocket import ASGIServer, WebsocketServer, exception_logger

MAX_SYNC_FRAME_BYTES = 16 * 1024 * 1024  # app.config.Settings.max_sync_frame_bytes
WS_PING_INTERVAL_S = 20.0  # app.config.Settings.ws_ping_interval_s


async def serve(host: str, port: int, log_level: str) -> None:
    """Run until SIGINT/SIGTERM (uvicorn installs the handlers and shuts down gracefully)."""
    log = logging.getLogger("baseline")
    # exception_logger: a client vanishing mid-send is logged, not raised through the room's task group
    websocket_server = WebsocketServer(exception_handler=exception_logger, log=log)
    app = ASGIServer(websocket_server)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        ws_max_size=MAX_SYNC_FRAME_BYTES + 64,
        ws_ping_interval=WS_PING_INTERVAL_S,
        ws_ping_timeout=WS_PING_INTERVAL_S,
        log_config=None,
        log_level=log_level.lower(),
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    async with websocket_server:
        await server.serve()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="plain pycrdt-websocket server (benchmark baseline)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(serve(args.host, args.port, args.log_level))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
