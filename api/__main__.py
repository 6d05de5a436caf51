"""``python -m api``: serve the gateway with uvicorn on the configured host and port."""

from __future__ import annotations

import uvicorn

from shared import logs
from shared.settings import get_settings


def main() -> None:
    s = get_settings()
    logs.configure("api", s.log_level, s.log_json)
    uvicorn.run("api.main:app", host=s.api_host, port=s.api_port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
