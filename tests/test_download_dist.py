"""Under torchrun only rank 0 downloads; the others wait and use its files (issue #21, item 6).

A real 2-process gloo launch (as tests/test_ddp.py), downloading a real .tar.gz through a file://
URL (no network): rank 1 starts no download, finds the extracted archive when download_and_verify
returns, and a failed download is the same one error on both ranks instead of one per process.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from robustssl.data.download import file_md5

WORKER = Path(__file__).with_name("download_worker.py")


def _archive(path: Path) -> Path:
    data = b"hello from rank 0's download\n"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("pack/hello.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.slow
def test_under_torchrun_only_rank_0_downloads_and_the_others_wait_for_its_files(tmp_path):
    (tmp_path / "src").mkdir()
    archive = _archive(tmp_path / "src" / "pack.tar.gz")
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(WORKER), str(out),
           archive.as_uri(), file_md5(archive), (tmp_path / "src" / "missing.tar.gz").as_uri()]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in range(2))
    assert len(r0["downloads"]) == 2, r0  # the good archive and the attempt at the missing one
    assert r1["downloads"] == [], "rank 1 must not download"
    assert r0["path"] == r1["path"] and r0["extracted"] and r1["extracted"]  # rank 1 returned after rank 0's extraction
    assert r0["error"] and r1["error"] == r0["error"] and "Could not download" in r0["error"]
