"""``python -m api``: serve the gateway with uvicorn on the configured host and port."""

from __future__ import annotations

import uvicorn

from shared import logs
from shared.settings import get_settings


class Server(uvicorn.Server):
    """uvicorn's shutdown waits for every open connection before the app's own, and a long
    poll or an SSE stream stays open until its job ends: the event hub is drained first, so
    they answer with the job as it stands and the gateway exits at once on SIGTERM."""

    def __init__(self, config: uvicorn.Config, app) -> None:
        super().__init__(config)
        self.app = app

    async def shutdown(self, sockets=None) -> None:
        hub = getattr(self.app.state, "events", None)  # set by the app's lifespan
        if hub is not None:
            hub.drain()
        await super().shutdown(sockets)


def main() -> None:
    s = get_settings()
    logs.configure("api", s.log_level, s.log_json)
    from api.main import app

    config = uvicorn.Config(
        app, host=s.api_host, port=s.api_port, log_config=None, access_log=False,
        timeout_graceful_shutdown=s.api_shutdown_grace_s,
    )  # fmt: skip
    Server(config, app).run()


if __name__ == "__main__":
    main()
