"""Container health check: exit 0 when the local server answers /v2/health/ready with 200.

Standard library only (no curl in the image). Used by the Dockerfile's HEALTHCHECK and docker-compose.yml.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("SEPCONV_PORT", "8000")
    url = os.environ.get("SEPCONV_HEALTH_URL", f"http://127.0.0.1:{port}/v2/health/ready")
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
