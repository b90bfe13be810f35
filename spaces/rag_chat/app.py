"""pocketlm rag chat Space: `python spaces/rag_chat/app.py [--host 127.0.0.1] [--port 7860]`.

The Blocks are built by `pocketlm.spaces.rag_chat`, which the suite (`spaces/suite/app.py`) shares. Model ids come
from the flags, else the environment (`POCKETLM_NAMESPACE`, one variable per model: see the README).
"""

from pocketlm.cli import run
from pocketlm.rag.documents import DocumentLimits
from pocketlm.spaces.cli import space_main


def build(args, folders):
    from pocketlm.spaces import rag_chat  # after the command line is parsed: --help answers at once

    return rag_chat.from_args(args, folders)


if __name__ == "__main__":
    run(lambda: space_main("rag_chat", build, max_file_size=DocumentLimits().max_file_bytes))
