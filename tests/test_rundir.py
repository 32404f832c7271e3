"""The run directory: nothing bioprop did not write is ever removed, one writer at a time, a full disk loses nothing.

Rules under test (see :mod:`bioprop.report.logs`): ``--overwrite`` clears only a directory bioprop marked, and only
of the files a run writes; a run directory is held (``flock`` plus the holder's description) by the process that
writes to it, a second writer is refused naming the holder, a lock left by a killed process is taken over; a file
that cannot be written ends the run with one line naming it, the last checkpoint kept and no temporary file left.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from bioprop import train
from bioprop.report import logs
from conftest import TINY_FLAGS, tiny_config
from test_train import assert_same_results, checkpoint_epoch, interrupter, snapshot

# The flags of tiny_config(): 300 digits, 5 steps of 64 per epoch.
FLAGS = TINY_FLAGS


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -------------------------------------------------------------------------------------------- --overwrite


def test_a_run_directory_is_marked_and_every_file_in_it_is_documented(tmp_path: Path) -> None:
    handler = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "run"
    train.run(tiny_config(epochs=1, probe_every=2), out, quiet=True)
    marker = json.loads((out / ".bioprop-run").read_text())
    assert marker["format"] == "bioprop-run/1" and len(marker["id"]) == 32
    assert not (out / ".bioprop-lock").exists(), "the lock goes with the process that held it"
    assert signal.getsignal(signal.SIGTERM) is handler, "the SIGTERM handler is restored after the run"
    for name in os.listdir(out):
        assert f"``{name}``" in logs.__doc__, f"{name} is missing from the list of files in logs' docstring"
    train.run(tiny_config(epochs=1), out, overwrite=True, quiet=True)
    assert json.loads((out / ".bioprop-run").read_text())["id"] != marker["id"], "a new run, a new id"


def test_overwrite_refuses_a_folder_with_a_config_yaml_among_other_work(tmp_path: Path, cli) -> None:
    """The data loss of issue 9: a folder holding config.yaml, src/main.py and results.csv was deleted whole."""
    folder = tmp_path / "work"
    (folder / "src").mkdir(parents=True)
    (folder / "config.yaml").write_text("rule: fa\n")
    (folder / "src" / "main.py").write_text("print('mine')\n")
    (folder / "results.csv").write_text("a,b\n1,2\n")
    before = snapshot(folder)
    code, _, err = cli("train", *FLAGS, "--epochs", "1", "--quiet", "--overwrite", "--out", folder)
    line = one_line(err)
    assert code == 2 and line.startswith(f"bioprop: error: refusing to clear '{folder}': it is not a bioprop run")
    assert "holds 'results.csv', 'src', which bioprop did not write" in line
    assert snapshot(folder) == before


def test_overwrite_refuses_a_run_without_a_marker_which_still_resumes(run_copy: Path, cli) -> None:
    """Run directories of bioprop before the marker: never cleared (bioprop cannot prove it wrote them), but
    they can still be resumed, which writes only the run's own files."""
    (run_copy / ".bioprop-run").unlink()
    before = snapshot(run_copy)
    code, _, err = cli("train", *FLAGS, "--epochs", "1", "--quiet", "--overwrite", "--out", run_copy)
    assert code == 2 and "has no .bioprop-run marker" in one_line(err) and "before the marker" in err
    code, _, err = cli("train", *FLAGS, "--epochs", "1", "--quiet", "--out", run_copy)
    assert code == 2 and "is not empty; pass --overwrite" in one_line(err)
    assert snapshot(run_copy) == before
    (run_copy / "model.safetensors").unlink()  # as if killed after its last checkpoint
    summary = train.resume(run_copy, quiet=True)
    assert summary["status"] == "finished" and summary["resumed_from"] == 2
    assert (run_copy / "model.safetensors").is_file() and not (run_copy / ".bioprop-run").exists()


def test_overwrite_refuses_a_marked_run_holding_anything_else(run_copy: Path, tmp_path: Path, cli) -> None:
    """Only plain files with a run's file names are bioprop's: another file, a folder, and a link in place of
    curves.png (whose target lies outside) are refused by name, and nothing is removed, there or outside."""
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(b"not bioprop's")
    (run_copy / "curves.png").unlink()
    (run_copy / "curves.png").symlink_to(outside)
    (run_copy / "notes.txt").write_text("mine")
    (run_copy / "figures").mkdir()
    before = snapshot(run_copy)
    code, _, err = cli("train", *FLAGS, "--epochs", "1", "--quiet", "--overwrite", "--out", run_copy)
    assert code == 2
    assert one_line(err) == (f"bioprop: error: refusing to clear '{run_copy}': it holds 'curves.png', 'figures', "
                             f"'notes.txt', which bioprop did not write")  # fmt: skip
    assert snapshot(run_copy) == before and outside.read_bytes() == b"not bioprop's"


def test_resume_writes_nothing_into_a_directory_that_is_not_a_run(tmp_path: Path, cli) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "config.yaml").write_text(tiny_config().to_yaml())
    (folder / "metrics.csv").write_text("my,own\n1,2\n")
    before = snapshot(folder)
    code, _, err = cli("resume", folder)
    assert code == 2 and "no checkpoint" in one_line(err) and snapshot(folder) == before
    (folder / "checkpoint.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not safetensors}")
    before = snapshot(folder)
    code, _, err = cli("resume", folder)
    assert code == 2 and "corrupt or truncated checkpoint" in one_line(err) and snapshot(folder) == before
    (folder / "config.yaml").write_bytes(bytes(range(256)))  # binary: not UTF-8 text
    before = snapshot(folder)
    code, _, err = cli("resume", folder)
    assert code == 2 and one_line(err).startswith("bioprop: error:") and snapshot(folder) == before


def test_a_run_in_another_thread_leaves_signal_handling_alone(tmp_path: Path) -> None:
    """Signal handlers can only be set in the main thread: a run elsewhere must neither fail nor try."""
    results: dict[str, object] = {}
    worker = threading.Thread(target=lambda: results.update(train.run(tiny_config(epochs=1), tmp_path / "t",
                                                                     quiet=True)))  # fmt: skip
    worker.start()
    worker.join()
    assert results.get("status") == "finished"


# ------------------------------------------------------------------------------------- one writer at a time


def start_paused(tmp_path: Path, out: Path) -> subprocess.Popen:
    """A real `bioprop train` (2 epochs of 5 steps) paused before its 7th step, after epoch 1's checkpoint."""
    command = interrupter(tmp_path, "step:7", "pause", "train", *FLAGS, "--epochs", "2", "--quiet", "--out", out)
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # blocks until the process pauses (or ends, which fails the test)
    if line != "paused\n":
        proc.kill()
        pytest.fail(f"the run did not pause: {proc.communicate()[1]}")
    return proc


def test_a_live_run_holds_its_directory_against_a_second_writer(tmp_path: Path, cli) -> None:
    """Issue 9's second fault: `train --out SAME --overwrite` beside a running train cleared the directory under
    it. Now every second writer (train, train --overwrite, resume) is refused, naming the holder's pid."""
    out = tmp_path / "run"
    proc = start_paused(tmp_path, out)
    try:
        holder = json.loads((out / ".bioprop-lock").read_text())
        assert holder["pid"] == proc.pid and "train" in holder["command"]
        before = snapshot(out)
        for args in (["train", *FLAGS, "--quiet", "--out", out], ["train", *FLAGS, "--quiet", "--overwrite", "--out",
                     out], ["resume", out, "--quiet"]):  # fmt: skip
            code, _, err = cli(*args)
            assert code == 2 and f"'{out}' is in use by pid {proc.pid} on " in one_line(err), args
        assert snapshot(out) == before
    finally:
        _, err = proc.communicate("\n", timeout=300)  # let it go on
    assert proc.returncode == 0, err
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"
    assert checkpoint_epoch(out) == 2 and not (out / ".bioprop-lock").exists()


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path: Path, cli) -> None:
    out = tmp_path / "run"
    proc = start_paused(tmp_path, out)
    proc.kill()
    proc.communicate(timeout=60)
    with pytest.raises(ProcessLookupError):
        os.kill(proc.pid, 0)  # gone: the kernel released its flock, its description stays behind
    assert json.loads((out / ".bioprop-lock").read_text())["pid"] == proc.pid
    copy = Path(shutil.copytree(out, tmp_path / "copy"))
    code, _, err = cli("resume", out)
    assert code == 0, err
    assert f"taking over {out} from pid {proc.pid} on " in err
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"
    assert not (out / ".bioprop-lock").exists()
    code, _, err = cli("train", *FLAGS, "--epochs", "1", "--quiet", "--overwrite", "--out", copy)
    assert code == 0, err
    assert checkpoint_epoch(copy) == 1 and not (copy / ".bioprop-lock").exists()


# ---------------------------------------------------------------------------------------------- disk full


def fill_disk_at(monkeypatch: pytest.MonkeyPatch, out: Path, nth: int, full: bool) -> list[tuple[str, bool]]:
    """Make the ``nth`` low-level write (``os.write``) into ``out`` fail with ENOSPC, and with ``full`` every one
    after it too. Returns the log of (file name, written) of the writes into ``out``."""
    honest, log = os.write, []
    folder = str(out.resolve())

    def write(fd: int, data: bytes) -> int:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.dirname(path) != folder:
            return honest(fd, data)
        fails = len(log) + 1 == nth or (full and len(log) + 1 > nth)
        log.append((os.path.basename(path), not fails))
        if fails:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return honest(fd, data)

    monkeypatch.setattr(os, "write", write)
    return log


# A 3-epoch run writes, in order, its lock, marker, config.yaml and summary.json, then at each epoch end the
# checkpoint, metrics.csv and summary.json, at the end the plots, the model and summary.json: the 8th write is
# epoch 2's checkpoint, the 9th its metrics.csv, the 15th one of the final files. What failed, and how many
# checkpoints were written before, is read from the log of writes, not assumed.
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names a file descriptor's file through /proc")
@pytest.mark.parametrize(
    ("nth", "full"),
    [(8, False), (9, True), (15, True)],
    ids=["8th-write-fails-once", "9th-write-disk-stays-full", "15th-write-disk-stays-full"],
)
def test_a_full_disk_loses_nothing_and_resume_finishes_the_run(tmp_path: Path, monkeypatch, cli, nth, full) -> None:
    whole = tmp_path / "whole"
    train.run(tiny_config(epochs=3), whole, quiet=True)
    out = tmp_path / "run"
    log = fill_disk_at(monkeypatch, out, nth, full)
    code, _, err = cli("train", *FLAGS, "--epochs", "3", "--quiet", "--out", out)
    line = one_line(err)
    failed = next(name for name, written in log if not written).removesuffix(".tmp")
    kept = sum(1 for name, written in log if written and name == "checkpoint.safetensors.tmp")
    assert code == 74, err
    assert line.startswith(f"bioprop: error: cannot write '{out / failed}': No space left on device")
    assert f"the checkpoint of epoch {kept} is kept" in line and f"bioprop resume {out}" in line
    assert checkpoint_epoch(out) == kept, "the last good checkpoint stays"
    assert not list(out.glob("*.tmp")) and not (out / ".bioprop-lock").exists()
    summary = json.loads((out / "summary.json").read_text())
    if full:
        assert f"recording this failed too: cannot write '{out / 'summary.json'}'" in line
        assert summary["status"] == "running"  # the last summary that could be written
    else:
        assert summary["status"] == "failed" and f"cannot write '{out / failed}'" in summary["message"]
    monkeypatch.undo()  # space freed
    code, _, err = cli("resume", out, "--quiet")
    assert code == 0, err
    assert_same_results(whole, out)
