"""Run by tests/test_download_dist.py under torchrun (2 processes, gloo):

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/download_worker.py OUT GOOD_URL MD5 BAD_URL

Each rank calls download_and_verify on a good archive and on a missing one, records the
downloads it started (robustssl's own "downloading ..." log lines), what it got back and the
error it raised, and writes OUT/rank{r}.json.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch

from robustssl import dist
from robustssl.data.download import download_and_verify
from robustssl.data.readers import DatasetError


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def main(out: Path, good_url: str, md5: str, bad_url: str) -> None:
    _, created = dist.init_from_env(torch.device("cpu"))
    lines = _Lines()
    log = logging.getLogger("robustssl.data.download")
    log.setLevel(logging.INFO)
    log.addHandler(lines)
    path = download_and_verify(good_url, out / "data", md5)
    result: dict[str, object] = {"path": str(path), "extracted": (out / "data" / "pack" / "hello.txt").is_file()}
    try:
        download_and_verify(bad_url, out / "data_bad", md5)
        result["error"] = None
    except DatasetError as e:
        result["error"] = str(e)
    result["downloads"] = [line for line in lines.lines if line.startswith("downloading")]
    (out / f"rank{dist.rank()}.json").write_text(json.dumps(result))
    dist.shutdown(created)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])
