"""pocketlm onnx benchmark Space: `python spaces/onnx_benchmark/app.py [--host 127.0.0.1] [--port 7860]`.

The Blocks are built by `pocketlm.spaces.onnx_benchmark`, which the suite (`spaces/suite/app.py`) shares.
"""

from pocketlm.cli import run
from pocketlm.spaces.cli import space_main

if __name__ == "__main__":
    run(lambda: space_main("onnx_benchmark"))
