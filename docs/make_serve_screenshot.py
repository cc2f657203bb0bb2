"""Make docs/serve.png: the editor page in Chromium, as the browser test leaves it (a photo
uploaded, its face outlined, Smiling at +1.5 and the expression "Male-0.5" applied).

It runs tests/test_serve_browser.py (which starts `conceptvae serve` and drives the page with
Playwright in the system's chromium) and keeps its screenshot. Run from the repository root:
``.venv/bin/python docs/make_serve_screenshot.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def main() -> None:
    out = Path(__file__).resolve().with_name("serve.png")
    root = out.parent.parent
    env = {**os.environ, "CONCEPTVAE_SERVE_SCREENSHOT": str(out), "CI": "1"}  # fail, never skip
    cmd = [sys.executable, "-m", "pytest", "-q", "tests/test_serve_browser.py"]
    subprocess.run(cmd, cwd=root, env=env, check=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
