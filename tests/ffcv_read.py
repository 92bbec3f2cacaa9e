"""Read a whole beton with a *stock* FFCV Loader and stock decoders (no fastsat code involved)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def read_all(path: Path) -> dict[str, np.ndarray]:
    from ffcv.fields.decoders import IntDecoder, NDArrayDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.reader import Reader

    from ffcv.fields import IntField, RGBImageField

    handlers = Reader(str(path)).handlers
    names = list(handlers)
    decoders = {RGBImageField: SimpleRGBImageDecoder, IntField: IntDecoder}
    pipelines = {name: [decoders.get(type(h), NDArrayDecoder)()] for name, h in handlers.items()}
    threads = torch.get_num_threads()  # the Loader sets torch's thread count for the whole process
    loader = Loader(str(path), batch_size=64, num_workers=1, order=OrderOption.SEQUENTIAL,
                    pipelines=pipelines, drop_last=False)
    out = {name: [] for name in names}
    for batch in loader:
        for name, value in zip(names, batch):
            out[name].append(np.array(value, copy=True))
    torch.set_num_threads(threads)
    return {name: np.concatenate(v) for name, v in out.items()}


def manifest(path: Path) -> dict:
    return json.loads(Path(str(path) + ".json").read_text())
