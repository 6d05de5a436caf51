"""``python -m api``: serve the gateway with uvicorn on the configured host and port."""

from __future__ import annotations

import uvicorn

from shared.settings import get_settings


def main() -> None:
    s = get_settings()
    uvicorn.run("api.main:app", host=s.api_host, port=s.api_port, log_level=s.log_level.lower(), access_log=False)


if __name__ == "__main__":
    main()
