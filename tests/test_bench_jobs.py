"""Accuracy benchmarks with ``--jobs``: benchmarks/runpool.py runs training runs side by side in worker processes.

Checked here: results come back in the tasks' order whatever order they finish in, a task's error reaches the
caller, SIGTERM stops the workers at once, a run trained in a worker equals the same run trained in this process
(bit for bit: the seed, not the process, decides it), and suite.py refuses more jobs than CPUs, passes ``--jobs``
to the accuracy scripts only and says it in the machine line."""

from __future__ import annotations

import dataclasses
import math
import operator
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import accuracy_temporal  # noqa: E402
import runpool  # noqa: E402
import suite  # noqa: E402
from bioprop.errors import BioPropError  # noqa: E402


def test_results_come_back_in_task_order_and_each_is_reported_once() -> None:
    tasks = [(2, k) for k in range(7)]
    seen: list[tuple] = []
    results = runpool.run_tasks(operator.pow, tasks, jobs=2, done=lambda task, result: seen.append((task, result)))
    assert results == [2**k for k in range(7)]
    assert sorted(seen) == sorted((task, 2 ** task[1]) for task in tasks)


def test_a_tasks_error_reaches_the_caller_and_bad_jobs_are_refused() -> None:
    with pytest.raises(ValueError, match="math domain error"):
        runpool.run_tasks(math.sqrt, [(4.0,), (-1.0,), (9.0,)], jobs=2)
    with pytest.raises(ValueError, match="at least 1"):
        runpool.run_tasks(math.sqrt, [(4.0,)], jobs=0)
    assert runpool.run_tasks(math.sqrt, [(4.0,), (9.0,)], jobs=1) == [2.0, 3.0]


def test_a_worker_that_dies_is_reported_not_waited_for() -> None:
    """A worker ending abruptly (here os._exit, as the OOM killer would) raises WorkerDied naming the task: the
    parent never hangs on a result that will not come."""
    started = time.monotonic()
    with pytest.raises(runpool.WorkerDied, match=r"_exit\([34],\)"):
        runpool.run_tasks(os._exit, [(3,), (4,)], jobs=2)
    assert time.monotonic() - started < 30


def test_sigterm_stops_the_workers_at_once(tmp_path: Path) -> None:
    """A parent running three 60-second tasks on two workers, sent SIGTERM. Each task handles SIGTERM as a bioprop
    run does (its own handler while it runs: save, raise, restore), so a worker survives it and would go on to the
    queued third task. The parent ends within seconds with KeyboardInterrupt, the third task never starts and no
    worker outlives the parent."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import os, signal, sys, time\n"
        f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
        "import runpool\n"
        "def task(path):\n"
        "    open(path, 'w').write(str(os.getpid()))\n"
        "    def handler(signum, frame):\n"
        "        raise KeyboardInterrupt\n"
        "    previous = signal.signal(signal.SIGTERM, handler)\n"
        "    try:\n"
        "        time.sleep(60)\n"
        "    finally:\n"
        "        signal.signal(signal.SIGTERM, previous)\n"
        "if __name__ == '__main__':\n"
        "    try:\n"
        f"        runpool.run_tasks(task, [({str(tmp_path / 'a')!r},), ({str(tmp_path / 'b')!r},), "
        f"({str(tmp_path / 'c')!r},)], jobs=2)\n"
        "    except KeyboardInterrupt:\n"
        "        sys.exit(7)\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)], start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not ((tmp_path / "a").exists() and (tmp_path / "b").exists()):
            assert time.monotonic() < deadline and parent.poll() is None, "the workers did not start"
            time.sleep(0.1)
        time.sleep(0.5)
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=20) == 7
    finally:  # a failure leaves nothing running: the parent and its workers share a session of their own
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()
    assert not (tmp_path / "c").exists(), "a worker started a queued task after SIGTERM"
    for name in "ab":
        pid = int((tmp_path / name).read_text())
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


def test_a_run_in_a_worker_equals_the_same_run_here(tmp_path: Path) -> None:
    """accuracy_temporal.run_one on a short store-recall, one epoch: seed 1 trained in a worker (beside seed 0) and
    trained in this process, the same test loss and accuracy to the last bit."""
    tasks = [(tmp_path / "jobs" / f"tbptt-s{seed}", "store-recall", "tbptt", seed, 1, 5, 1) for seed in (0, 1)]
    in_workers = runpool.run_tasks(accuracy_temporal.run_one, tasks, jobs=2)
    here = accuracy_temporal.run_one(tmp_path / "here" / "tbptt-s1", *tasks[1][1:])
    assert in_workers[1]["status"] == here["status"] == "finished"
    assert (in_workers[1]["test_loss"], in_workers[1]["test_accuracy"]) == (here["test_loss"], here["test_accuracy"])
    assert in_workers[0]["test_loss"] != in_workers[1]["test_loss"]  # two seeds, two runs
    # the same run asked for with another --threads is read, not retrained (threads do not change what is computed)
    metrics = tmp_path / "here" / "tbptt-s1" / "metrics.csv"
    written = metrics.read_bytes(), metrics.stat().st_mtime_ns
    again = accuracy_temporal.run_one(tmp_path / "here" / "tbptt-s1", "store-recall", "tbptt", 1, 1, 5, 2)
    assert again["test_loss"] == here["test_loss"] and (metrics.read_bytes(), metrics.stat().st_mtime_ns) == written
    # another budget there is refused, the run left as it was (it used to be trained over)
    with pytest.raises(BioPropError, match="tbptt-s1 holds a run with other settings"):
        accuracy_temporal.run_one(tmp_path / "here" / "tbptt-s1", "store-recall", "tbptt", 1, 2, 5, 1)
    assert (metrics.read_bytes(), metrics.stat().st_mtime_ns) == written


@pytest.mark.parametrize("script", ["accuracy_temporal", "accuracy_fmnist"])
def test_a_run_is_given_the_scripts_threads(tmp_path, monkeypatch, script) -> None:
    """run_one hands ``--threads`` to bioprop, which sets torch's for the run (a new run: in its config; a resumed
    one: to resume, which would otherwise use those its config recorded)."""
    import importlib

    module = importlib.import_module(script)
    seen: list[tuple] = []

    def run(config, run_dir, **kwargs):
        seen.append(("run", config.threads))
        run_dir.mkdir()  # as an interrupted run leaves it (recorded with 1 thread)
        (run_dir / "config.yaml").write_text(dataclasses.replace(config, threads=1).to_yaml())
        (run_dir / "checkpoint.safetensors").write_bytes(b"")
        return {}

    monkeypatch.setattr(module.train, "run", run)
    monkeypatch.setattr(module.train, "resume", lambda run_dir, **kwargs: seen.append(("resume", kwargs["threads"])))
    args = ("store-recall", "tbptt", 0, 1, 5) if script == "accuracy_temporal" else ("mlp", "fa", 0, 1, None)
    module.run_one(tmp_path / "run", *args, 3)
    module.run_one(tmp_path / "run", *args, 2)
    assert seen == [("run", 3), ("resume", 2)]


def test_the_shared_jobs_check_and_the_default_threads(monkeypatch) -> None:
    runpool.check_jobs(2, 1, 2, "here")
    with pytest.raises(ValueError, match=r"^--jobs 2 × --threads 2 needs 4 CPUs; --cpus 0-2 has 3$"):
        runpool.check_jobs(2, 2, 3, "--cpus 0-2")
    with pytest.raises(ValueError, match=r"^--jobs 0: at least 1$"):
        runpool.check_jobs(0, 1, 2, "here")
    monkeypatch.setattr(runpool.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert [runpool.default_threads(jobs) for jobs in (1, 2, 3, 5, 6)] == [5, 2, 1, 1, 1]
    for text, threads in (("3", 3), ("4,2", 4), ("0", 2), ("x", 2), ("", 2), ("²", 2)):
        monkeypatch.setenv("OMP_NUM_THREADS", text)
        assert runpool.default_threads(2) == threads, text


def test_suite_jobs_are_checked_against_the_cpus_and_reach_the_accuracy_scripts_only(tmp_path: Path) -> None:
    with pytest.raises(BioPropError, match=r"--jobs 2 × --threads 1 needs 2 CPUs; --cpus 0 has 1"):
        suite.check_jobs(2, 1, "0")
    with pytest.raises(BioPropError, match=r"--jobs 2 × --threads 2 needs 4 CPUs; --cpus 0-2 has 3"):
        suite.check_jobs(2, 2, "0-2")
    with pytest.raises(BioPropError, match="--jobs 0: at least 1"):
        suite.check_jobs(0, 1, None)
    suite.check_jobs(3, 1, "0,2-3")
    assert suite.cpu_count("0,2-3") == 3
    two = suite.Options(tmp_path, jobs=2)
    for name in ("temporal-cue-accumulation", "fmnist-lenet"):
        argv = suite.BENCHES[name].commands(two)[0].argv
        assert argv[argv.index("--jobs") + 1] == "2"
        assert "--jobs" not in suite.BENCHES[name].commands(suite.Options(tmp_path))[0].argv  # the old command
    assert "--jobs" not in suite.BENCHES["speed-temporal"].commands(two)[0].argv
    line = suite.machine_line(dict(suite.machine(1, "0-1", jobs=2), load_after=[1.0, 1.0, 1.0], seconds=5))
    assert "1 thread per run, 2 runs at a time" in line
    assert "runs at a time" not in suite.machine_line(dict(suite.machine(1, "0"), load_after=[1.0, 1, 1]))


@pytest.mark.parametrize(
    ("args", "token"),
    [(["--entries", ""], "unknown entry ''"), (["--entries", "sab,sab"], "names an entry twice"),
     (["--seeds", "x"], "not a whole number: 'x'"), (["--seeds", "0,0"], "'0' is given twice"),
     (["--seeds", "-1"], "'-1' is negative"), (["--epochs", "0"], "--epochs 0"), (["--jobs", "0"], "--jobs 0"),
     (["--threads", "0"], "--threads 0"), (["--jobs", "999"], "--jobs 999 × --threads 1")],
)  # fmt: skip
def test_accuracy_temporal_refuses_bad_input_before_training(monkeypatch, capsys, tmp_path, args, token) -> None:
    """One line naming the bad token, exit 2, nothing written (an empty --entries used to start the whole suite)."""
    monkeypatch.setattr(sys, "argv", ["accuracy_temporal.py", *args, "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as stop:
        accuracy_temporal.main()
    err = capsys.readouterr().err
    assert (
        stop.value.code == 2 and err.count("\n") == 1 and err.startswith("accuracy_temporal: error:") and token in err
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "token"),
    [(["--seeds", "0", "0"], "--seeds 0 0"), (["--rules", "fa", "fa"], "--rules fa fa"),
     (["--epochs", "0"], "--epochs"), (["--seeds", "-1"], "non-negative"), (["--rules", "nope"], "'nope'"),
     (["--jobs", "0"], "--jobs 0"), (["--threads", "0"], "--threads 0"),
     (["--jobs", "999"], "--jobs 999 × --threads 1 needs 999 CPUs; this process has"),
     (["--jobs", "1", "--threads", "999"], "--jobs 1 × --threads 999 needs 999 CPUs")],
)  # fmt: skip
def test_accuracy_fmnist_refuses_bad_input_before_training(monkeypatch, capsys, tmp_path, args, token) -> None:
    import accuracy_fmnist

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the default threads: CPUs ÷ jobs, 1 with --jobs 999
    monkeypatch.setattr(sys, "argv", ["accuracy_fmnist.py", "--suite", "mlp", *args, "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as stop:
        accuracy_fmnist.main()
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and err.startswith("accuracy_fmnist: error:") and token in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("cpus", "message"),
    [("0,0", "CPU 0 is named twice"), ("0-1,1", "CPU 1 is named twice"), ("0-", "'0-' is not"), ("²", "'²' is not"),
     ("1-0", "'1-0' is not"), ("", "'' is not")],
)  # fmt: skip
def test_suite_cpus_taskset_cannot_read_or_names_twice_are_refused(cpus: str, message: str) -> None:
    """A CPU named twice would let --jobs oversubscribe it; '0-' and non-ASCII digits taskset cannot read."""
    with pytest.raises(BioPropError, match=message):
        suite.parse_cpus(cpus, allowed={0, 1})
    assert suite.cpu_set("0,2-3") == {0, 2, 3}


def test_the_heartbeat_ticks_while_tasks_run_survives_a_failing_tick_and_stops_with_them(capsys) -> None:
    ticks: list[float] = []

    def tick() -> None:
        ticks.append(time.monotonic())
        if len(ticks) == 2:
            raise OSError("disk gone")

    assert runpool.run_tasks(time.sleep, [(0.35,), (0.35,)], jobs=1, tick=tick, every=0.1) == [None, None]
    ended, count = time.monotonic(), len(ticks)
    assert count >= 4  # ~7 in 0.7 s; the second raised and the ticks went on
    assert capsys.readouterr().err.count("runpool: no progress line: disk gone\n") == 1
    time.sleep(0.3)
    assert len(ticks) == count and all(t <= ended for t in ticks)  # none after the tasks ended
    ticks.clear()
    assert runpool.run_tasks(operator.pow, [(2, 3), (3, 2)], jobs=2, tick=tick, every=30.0) == [8, 9]
    assert ticks == []  # quicker than one interval: no line
