"""pocketlm onnx benchmark Space: `python spaces/onnx_benchmark/app.py [--host 127.0.0.1] [--port 7860]`.

The Blocks are built by `pocketlm.spaces.onnx_benchmark`, which the suite (`spaces/suite/app.py`) shares. Model ids come
from the flags, else the environment (`POCKETLM_NAMESPACE`, one variable per model: see the README).
"""

from pocketlm.cli import run
from pocketlm.spaces.cli import space_main


def build(args, folders):
    from pocketlm.spaces import onnx_benchmark  # after the command line is parsed: --help answers at once

    return onnx_benchmark.from_args(args, folders)


if __name__ == "__main__":
    run(lambda: space_main("onnx_benchmark", build))
