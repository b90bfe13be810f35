"""`python -m pocketlm.rag`: the RAG agent's REPL (see `pocketlm.rag.repl`)."""

import sys

from pocketlm.cli import run
from pocketlm.rag.repl import main

run(lambda: main(sys.argv[1:]))
