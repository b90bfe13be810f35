"""The pocketlm Spaces suite: the four Spaces in tabs, mounted on the REST API (`/generate`, `/qa`, `/docs`) in
one process — `python spaces/suite/app.py [--host 127.0.0.1] [--port 7860]`.
"""

from pocketlm.cli import run
from pocketlm.spaces.cli import suite_main

if __name__ == "__main__":
    run(suite_main)
