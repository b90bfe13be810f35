"""The pocketlm Spaces suite: the four Spaces in tabs, mounted on the REST API (`/generate`, `/qa`, `/docs`) in
one process — `python spaces/suite/app.py [--host 127.0.0.1] [--port 7860]`. Model ids come from the flags,
else the environment (`POCKETLM_NAMESPACE`, one variable per model: see the README).
"""

from pocketlm.cli import run
from pocketlm.spaces.suite_main import main

if __name__ == "__main__":
    run(main)
