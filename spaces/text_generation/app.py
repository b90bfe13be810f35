"""pocketlm text generation Space: `python spaces/text_generation/app.py [--host 127.0.0.1] [--port 7860]`.

The Blocks are built by `pocketlm.spaces.text_generation`, which the suite (`spaces/suite/app.py`) shares. Model ids come
from the flags, else the environment (`POCKETLM_NAMESPACE`, one variable per model: see the README).
"""

from pocketlm.cli import run
from pocketlm.spaces.cli import space_main


def build(args, folders):
    from pocketlm.spaces import text_generation  # after the command line is parsed: --help answers at once

    return text_generation.from_args(args, folders)


if __name__ == "__main__":
    run(lambda: space_main("text_generation", build))
