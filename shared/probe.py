"""Print what a service's health endpoint answers, whatever its status, from inside its container:
`docker compose exec executor python -m shared.probe 9102 /readyz` (docs/RUNBOOK.md). Exits 0 on 200, else 1."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3) or not argv[1].isdigit():
        print("usage: python -m shared.probe PORT [PATH]   (PATH defaults to /readyz)", file=sys.stderr)
        return 2
    url = f"http://127.0.0.1:{argv[1]}{argv[2] if len(argv) == 3 else '/readyz'}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:  # 503 while not ready: its body says why
        status, body = error.code, error.read()
    except OSError as error:
        print(f"{url}: {error}")
        return 1
    print(status, body.decode(errors="replace"))
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
