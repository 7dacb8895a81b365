"""Every code block of README.md runs as written (issue #21, item 2).

Each fenced block in README.md is named by the HTML comment before it, `<!-- readme-block: NAME -->`
(`(after OTHER)`: it runs in OTHER's folder, after it). Blocks run in a temporary folder, with tiny
settings from $ROBUSTSSL_OVERRIDES (applied to every config robustssl builds), HOME and
$ROBUSTSSL_DATA pointing at small datasets written here in their real formats. Bash blocks are
parsed with shlex (comments, `\\` continuations, `~`) and each `robustssl ...` line runs through
the CLI's own `main` in this process (a new Python per line would cost seconds each); Python
blocks are executed as they are. The blocks in SKIPPED are not run, for the reason given, and the
first test checks that they are exactly the ones that need what the reason says.
"""
from __future__ import annotations

import os
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from robustssl.cli import main

from .datafiles import write_cifar10, write_fashion_mnist, write_image_folder

pytestmark = pytest.mark.usefixtures("one_thread")

README = Path(__file__).resolve().parents[1] / "README.md"

# name -> (why it is not run, a string its code must contain: the thing it needs)
SKIPPED = {
    "setup": ("installs system and Python packages (apt-get, pip: root and network); CI runs scripts/test.sh itself",
              "scripts/"),
    "speed": ("train.compile compiles for minutes on a CPU; tests/test_accelerate.py trains with the three switches",
              "train.compile=true"),
    "torchrun": ("8 GPUs on 1 and 2 nodes; tests/test_ddp.py runs the same trainer under torchrun with 2 CPU processes",
                 "torchrun"),
}

TINY = " ".join([
    "train.epochs=1", "train.progress=false", "train.device=cpu", "model.width=4", "model.depth=10", "model.widen=1",
    "model.proj_hidden=16", "optim.batch_size=32", "attack.steps=1", "coreset.warmup_epochs=0",
    "eval.linear_epochs=2", "eval.train_examples=64", "eval.n_examples=16", "eval.eps_curve=[]",
    "eval.eps=0.5", "eval.pgd_alpha=0.1",  # AutoAttack breaks every image in its first attack instead of running all four
    "eval.autoattack_examples=4", "eval.aff_epochs=1", "eval.aff_steps=1", "eval.mc_crops=2",
    "postprocess.lp_epochs=1", "postprocess.aft_epochs=1", "postprocess.aft_steps=1", "postprocess.kmeans_iters=5",
])

MARKER = re.compile(r"<!--\s*readme-block:\s*([\w-]+)\s*(?:\(after\s+([\w-]+)\))?\s*-->")


@dataclass
class Block:
    name: str
    after: str | None
    lang: str
    code: str
    line: int


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of `text` with their names; ValueError for a block without a marker."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        start = i
        i += 1
        while not lines[i].startswith("```"):
            i += 1
        above = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        mark = MARKER.search(above)
        if not mark:
            raise ValueError(f"README.md line {start + 1}: a code block without a `<!-- readme-block: NAME -->` line above it")
        blocks.append(Block(mark.group(1), mark.group(2), fence.group(1), "\n".join(lines[start + 1 : i]), start + 1))
        i += 1
    return blocks


def commands(code: str) -> list[list[str]]:
    """The commands of a bash block: `\\` continuations joined, comments dropped, `~` expanded."""
    joined = re.sub(r"\\\n", " ", code)
    out = []
    for line in joined.splitlines():
        argv = [os.path.expanduser(a) if a.startswith("~") else a for a in shlex.split(line, comments=True)]
        if argv:
            out.append(argv)
    return out


def run_block(block: Block, capsys: pytest.CaptureFixture[str]) -> None:
    if block.lang == "python":
        exec(compile(block.code, f"README.md:{block.line}", "exec"), {"__name__": "__readme__"})
        return
    assert block.lang == "bash", f"README.md line {block.line}: a ```{block.lang} block cannot be run"
    for argv in commands(block.code):
        assert argv[0] == "robustssl", f"README.md block {block.name!r}: only robustssl commands are run here, not {argv}"
        code = main(argv[1:])
        err = capsys.readouterr().err
        assert code == 0, f"README.md block {block.name!r}: `{shlex.join(argv)}` exited {code}: {err[-2000:]}"


BLOCKS = readme_blocks(README.read_text())
CHAINS = [[b, *(a for a in BLOCKS if a.after == b.name)] for b in BLOCKS if b.after is None and b.name not in SKIPPED]


def test_every_readme_block_is_named_and_only_the_stated_ones_are_skipped():
    names = [b.name for b in BLOCKS]
    assert len(names) == len(set(names)), f"duplicate block names: {names}"
    assert all(b.after in names for b in BLOCKS if b.after), "an `after` names no block"
    by_name = {b.name: b for b in BLOCKS}
    for name, (_, needs) in SKIPPED.items():
        assert name in by_name, f"SKIPPED names {name!r}, which README.md does not have"
        assert needs in by_name[name].code, f"block {name!r} is skipped for needing {needs!r}, which it no longer holds"
    ran = {b.name for chain in CHAINS for b in chain}
    assert ran | set(SKIPPED) == set(names) and {"use", "load", "api", "backbones", "big"} <= ran


@pytest.fixture
def readme_env(tmp_path, monkeypatch):
    """HOME, $ROBUSTSSL_DATA and $ROBUSTSSL_OVERRIDES for the blocks, with small datasets in their real formats."""
    home, data = tmp_path / "home", tmp_path / "data"
    write_fashion_mnist(data / "fashion-mnist", n_train=128, n_test=32)
    for root in (data, home / "data"):  # the recipes' CIFAR-10, and `--data-root ~/data` of the transfer line
        write_cifar10(root, per_batch=16, n_test=16)
    write_image_folder(home / "imagenet32", size=16, n_per_class=20, classes=("cat", "dog"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("ROBUSTSSL_DATA", str(data))
    monkeypatch.setenv("ROBUSTSSL_OVERRIDES", TINY)
    monkeypatch.chdir(work)
    return work


@pytest.mark.slow
@pytest.mark.parametrize("chain", CHAINS, ids=[c[0].name for c in CHAINS])
def test_readme_blocks_run_as_written(chain, readme_env, capsys):
    start = time.perf_counter()
    for block in chain:
        run_block(block, capsys)
    print(f"README blocks {[b.name for b in chain]}: {time.perf_counter() - start:.1f}s")
