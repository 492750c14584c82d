"""WebDataset tar shards of a manifest: writer and a DDP/worker-aware reader.

Each sample holds the stored image file unchanged (``png``/``jpg``...; CT stays 16-bit
``HU + offset``) and a ``json`` with the manifest row. Shards are written atomically and a
``shards.json`` index lists them with their sample counts.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from torch.utils.data import IterableDataset, get_worker_info

from meditok.data.datasets import image_to_sample_tensor, item_generator, rank_and_world
from meditok.data.manifest import read_manifest
from meditok.data.preprocess import PreprocessConfig
from meditok.data.readers import decode_image_bytes
from meditok.data.transforms import AugmentConfig
from meditok.errors import ImageReadError
from meditok.utils.io import atomic_path, atomic_write_text
from meditok.utils.lazy import require


def write_shards(manifest: str | Path | list[dict], out_dir: str | Path, root: str | Path | None = None,
                 samples_per_shard: int = 1000, split: str | None = None) -> dict[str, Any]:
    """Pack manifest rows into ``out_dir/shard-000000.tar``...; returns the index dict."""
    wds = require("webdataset", "data")
    if isinstance(manifest, (str, Path)):
        rows = read_manifest(manifest)
        root = Path(root) if root is not None else Path(manifest).parent
    else:
        rows, root = list(manifest), Path(root or ".")
    if split is not None:
        rows = [r for r in rows if r["split"] == split]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = []
    for start in range(0, len(rows), samples_per_shard):
        name = f"shard-{start // samples_per_shard:06d}.tar"
        chunk = rows[start:start + samples_per_shard]
        with atomic_path(out_dir / name) as tmp:
            with open(tmp, "wb") as fh, wds.TarWriter(fh, encoder=False, mtime=0.0) as sink:
                for i, r in enumerate(chunk):
                    path = Path(r["identifier"])
                    path = path if path.is_absolute() else root / path
                    ext = path.suffix.lower().lstrip(".") or "bin"
                    meta = {k: r[k] for k in r if k != "duplicate_of"}
                    sink.write({"__key__": f"{start + i:09d}", ext: path.read_bytes(),
                                "json": json.dumps(meta).encode()})
        shards.append({"name": name, "count": len(chunk)})
    index = {"num_samples": len(rows), "shards": shards}
    atomic_write_text(out_dir / "shards.json", json.dumps(index, indent=1))
    return index


class ShardDataset(IterableDataset):
    """Iterate samples of a shard folder, split disjointly across DDP ranks and workers.

    With at least as many shards as ``world_size * num_workers`` each consumer gets whole
    shards (``shards[consumer::consumers]``); otherwise every consumer reads all shards and
    keeps samples ``consumer::consumers``. Either way each sample goes to exactly one consumer.
    """

    def __init__(self, shard_dir: str | Path, pre: PreprocessConfig, train: bool, seed: int = 0,
                 aug: AugmentConfig | None = None, rank: int | None = None,
                 world_size: int | None = None, augment: bool = True):
        self.shard_dir = Path(shard_dir)
        index = json.loads((self.shard_dir / "shards.json").read_text())
        self.urls = [str(self.shard_dir / s["name"]) for s in index["shards"]]
        self.num_samples = int(index["num_samples"])
        self.pre, self.train, self.seed = pre, train, seed
        self.aug = (aug or AugmentConfig()) if train and augment else None
        self.rank, self.world_size = rank_and_world(rank, world_size)
        self.epoch = 0
        self.failures = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _consumer(self) -> tuple[int, int]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.rank * nw + wid, self.world_size * nw

    def raw_samples(self) -> Iterator[dict]:
        """Yield ``{'__key__', ext: bytes, 'json': bytes}`` for this consumer's share."""
        wds = require("webdataset", "data")
        me, total = self._consumer()
        whole = len(self.urls) >= total
        urls = self.urls[me::total] if whole else self.urls
        if not urls:
            return
        ds = wds.WebDataset(urls, shardshuffle=False, nodesplitter=None, workersplitter=None,
                            empty_check=False)
        for n, sample in enumerate(ds):
            if whole or n % total == me:
                yield sample

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for sample in self.raw_samples():
            meta = json.loads(sample["json"])
            ext = next(k for k in sample if k not in ("__key__", "__url__", "__local_path__", "json"))
            try:
                img = decode_image_bytes(sample[ext], meta["identifier"])
                gen = (item_generator(self.seed, self.epoch, int(sample["__key__"]))
                       if self.aug is not None else None)
                image = image_to_sample_tensor(img, self.pre, meta["modality"], self.aug, gen)
            except ImageReadError:
                if not self.train:
                    raise
                self.failures += 1
                continue
            label = meta.get("label", -1)
            yield {"image": image, "caption": str(meta.get("caption", "")),
                   "label": int(label) if label not in ("", None) else -1,
                   "modality": str(meta["modality"]), "identifier": str(meta["identifier"])}


__all__ = ["write_shards", "ShardDataset"]
