"""pocketlm question answering Space: `python spaces/question_answering/app.py [--host 127.0.0.1] [--port 7860]`.

The Blocks are built by `pocketlm.spaces.question_answering`, which the suite (`spaces/suite/app.py`) shares.
"""

from pocketlm.cli import run
from pocketlm.spaces.cli import space_main

if __name__ == "__main__":
    run(lambda: space_main("question_answering"))
