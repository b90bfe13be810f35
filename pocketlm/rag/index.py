"""FAISS indexes over passage embeddings: exact (`IndexFlatIP`) or compressed (OPQ rotation + product quantiser).

Vectors are unit length, so inner product is cosine similarity. An index is saved without pickle: the FAISS
binary (`faiss.write_index`) beside JSON metadata — `passages.jsonl` (id, title, text, in index order) and
`index_config.json` (encoder, dimension, FAISS factory string, size, build time).

Why the OPQ parameters are what they are (the sweep is `benchmarks/rag_index.py`; docs/rag.md has its table):
at a few thousand passages the codes are not what dominates an OPQ index's size — the OPQ matrix
(`d_out × d` floats) and the PQ codebooks (`2**nbits × d_out` floats) are. A full-width `OPQ48_384,PQ48`
stores a 384×384 rotation (0.59 MB) and 0.39 MB of codebooks, more than the 8× budget (0.77 MB) for the
4,000-passage index (6.2 MB flat) before any code. So the rotation also reduces the dimension (384 → `d_out`),
which shrinks both, and each sub-quantiser keeps 8 bits (256 centroids, trained on the indexed vectors
themselves). The default `OPQ32_128,PQ32` (128 dims, 4 per sub-quantiser, 32 bytes per passage) keeps recall@5
above 0.9× flat well inside the size budget; 64 dims lose too much recall, and 192 dims sit too close to the
size budget for a smaller corpus. IVF is left out
by default: an exhaustive scan of 4,000 PQ codes takes well under a millisecond, while IVF would add a
coarse quantiser (`nlist × d_out` floats) and miss neighbours in unprobed lists — it pays off from roughly
10^5 vectors on. `ivf_nlist` is there for larger corpora.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pocketlm.errors import ConfigError
from pocketlm.io import atomic_write, write_json
from pocketlm.rag.corpus import Passage

INDEX_KINDS = ("flat", "opq")


@dataclass(frozen=True)
class IndexSpec:
    """How to build one index. `kind="flat"` ignores the other fields."""

    kind: str = "flat"
    opq_dim: int = 64
    """Output dimension of the OPQ rotation (a multiple of `pq_m`): the dimension the codes live in."""
    pq_m: int = 16
    """Sub-quantisers: bytes per vector at 8 bits."""
    pq_bits: int = 8
    ivf_nlist: int = 0
    """Inverted lists (0 = none: exhaustive scan over the codes)."""
    nprobe: int = 8

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ConfigError(f"index kind must be one of {', '.join(INDEX_KINDS)}, not {self.kind!r}")
        if self.kind == "opq" and self.opq_dim % self.pq_m:
            raise ConfigError(f"opq_dim ({self.opq_dim}) must be a multiple of pq_m ({self.pq_m})")

    def factory_string(self, dim: int) -> str:
        if self.kind == "flat":
            return "Flat"
        ivf = f"IVF{self.ivf_nlist}," if self.ivf_nlist else ""
        return f"OPQ{self.pq_m}_{min(self.opq_dim, dim)},{ivf}PQ{self.pq_m}x{self.pq_bits}"


def build_faiss_index(vectors: np.ndarray, spec: IndexSpec, seed: int = 0):
    """Train (if needed) and fill a FAISS inner-product index with `vectors` (float32, unit length)."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    if spec.kind == "opq":
        needed = max(2**spec.pq_bits, spec.ivf_nlist)
        if n < needed:
            raise ConfigError(
                f"{n} vectors are too few to train {spec.factory_string(dim)} (needs at least {needed}); "
                "use a flat index or fewer pq_bits"
            )
    index = faiss.index_factory(dim, spec.factory_string(dim), faiss.METRIC_INNER_PRODUCT)
    if spec.kind == "opq":
        opq, training_pq = _prepare_training(index, seed)
        index.train(vectors)
        opq.pq = None  # only used for training; `training_pq` is freed with this frame
        if spec.ivf_nlist:
            faiss.extract_index_ivf(index).nprobe = spec.nprobe
    index.add(vectors)
    return index


def _prepare_training(index, seed: int):
    """Seed the k-means runs of PQ (and IVF) training, and train the OPQ rotation for the PQ actually used.

    By default FAISS's OPQ optimises its rotation for an internal 8-bit PQ (and so needs 256 training
    vectors even for a 4-bit index); handing it a PQ of the index's own shape optimises the rotation for
    the codes that are stored.
    """
    import faiss

    inner = faiss.downcast_index(index.index)
    inner.pq.cp.seed = seed
    if isinstance(inner, faiss.IndexIVF):
        inner.cp.seed = seed
    opq = faiss.downcast_VectorTransform(index.chain.at(0))
    training_pq = faiss.ProductQuantizer(opq.d_out, inner.pq.M, inner.pq.nbits)
    training_pq.cp.seed = seed
    opq.pq = training_pq  # FAISS does not own it: the caller keeps `training_pq` alive until training ends
    return opq, training_pq


def index_nbytes(index) -> int:
    """What the index weighs serialised (= on disk, = in memory to within a few bytes)."""
    import faiss

    return int(faiss.serialize_index(index).nbytes)


class PassageIndex:
    """A FAISS index plus the passages it holds, in the same order, and how it was built."""

    FAISS_NAME = "index.faiss"
    PASSAGES_NAME = "passages.jsonl"
    CONFIG_NAME = "index_config.json"

    def __init__(self, index, passages: list[Passage], config: dict):
        if index.ntotal != len(passages):
            raise ValueError(f"the FAISS index holds {index.ntotal} vectors but there are {len(passages)} passages")
        self.index = index
        self.passages = passages
        self.config = config

    @classmethod
    def build(cls, vectors: np.ndarray, passages: list[Passage], spec: IndexSpec, encoder: str, seed: int = 0) -> PassageIndex:
        started = time.perf_counter()
        index = build_faiss_index(vectors, spec, seed)
        build_s = time.perf_counter() - started
        config = {
            "encoder": encoder,
            "dim": int(vectors.shape[1]),
            "count": len(passages),
            "spec": asdict(spec),
            "factory": spec.factory_string(vectors.shape[1]),
            "metric": "inner_product",
            "build_seconds": round(build_s, 4),
            "size_bytes": index_nbytes(index),
        }
        return cls(index, passages, config)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def size_mb(self) -> float:
        return self.config["size_bytes"] / 1e6

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and row numbers, each `(len(queries), k)`; rows are -1 where fewer than k passages exist."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.dim:
            raise ConfigError(f"query vectors have {queries.shape[1]} dimensions but the index has {self.dim}: was it built with another encoder?")
        return self.index.search(queries, min(k, self.index.ntotal))

    def extended(self, vectors: np.ndarray, passages: list[Passage]) -> PassageIndex:
        """A new index holding this one's passages and `passages` (embedded as `vectors`); this one is unchanged.

        Users' documents go in this way: the FAISS index is cloned and the new vectors added to the clone (an
        OPQ index encodes them with its trained rotation and codebooks), so whatever fails leaves the index
        being searched as it was. Ids must be new: an id names one passage.
        """
        import faiss

        vectors = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        if len(vectors) != len(passages):
            raise ValueError(f"{len(vectors)} vectors for {len(passages)} passages")
        if vectors.shape[1] != self.dim:
            raise ConfigError(f"new vectors have {vectors.shape[1]} dimensions but the index has {self.dim}")
        ids = [p.id for p in passages]
        if clash := sorted(set(ids) & {p.id for p in self.passages}) or len(set(ids)) < len(ids):
            raise ConfigError(f"passage ids must be new and distinct; already in the index or repeated: {clash}")
        index = faiss.clone_index(self.index)
        index.add(vectors)
        config = {**self.config, "count": index.ntotal, "size_bytes": index_nbytes(index)}
        return PassageIndex(index, [*self.passages, *passages], config)

    def save(self, folder: str | Path, name: str = FAISS_NAME) -> None:
        """Write the FAISS binary, the passages and the config into `folder` (each file atomically)."""
        import faiss

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / name, lambda tmp: faiss.write_index(self.index, tmp))
        lines = "".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in self.passages)
        atomic_write(folder / self.PASSAGES_NAME, lambda tmp: Path(tmp).write_text(lines, encoding="utf-8"))
        configs = _read_json(folder / self.CONFIG_NAME) if (folder / self.CONFIG_NAME).is_file() else {}
        configs[name] = self.config
        write_json(folder / self.CONFIG_NAME, configs)

    @classmethod
    def load(cls, folder: str | Path, name: str = FAISS_NAME) -> PassageIndex:
        import faiss

        from pocketlm.data import read_jsonl

        folder = Path(folder)
        path = folder / name
        if not path.is_file():
            from pocketlm.hub import ArtifactNotFoundError

            raise ArtifactNotFoundError(f"no FAISS index {name!r} in {folder}")
        configs = _read_json(folder / cls.CONFIG_NAME)
        passages = [Passage(str(r["id"]), str(r.get("title", "")), str(r["text"])) for r in read_jsonl(folder / cls.PASSAGES_NAME, ("id", "text"))]
        return cls(faiss.read_index(str(path)), passages, configs.get(name, {}))


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def recall_at_k(ranked_ids: list[list[str]], gold_ids: list[str], ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Share of questions whose gold passage is among the first k retrieved, for each k."""
    if len(ranked_ids) != len(gold_ids):
        raise ValueError("one ranking per gold id expected")
    total = max(len(gold_ids), 1)
    return {f"recall@{k}": sum(gold in ranked[:k] for ranked, gold in zip(ranked_ids, gold_ids)) / total for k in ks}
