"""Experiments (issue 12): the framework of :mod:`bioprop.experiments` (names, the output folder, files it may and may
not overwrite, the JSON record), ``bioprop experiment`` on the command line, and the ``variational-bound``
experiment against a brute-force enumeration written here with ``itertools.product`` and :mod:`math`."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from bioprop import experiments
from bioprop.errors import BioPropError
from bioprop.experiments import variational_bound as vb

JSON_FIELDS = {"experiment", "status", "summary", "source", "seed", "quick", "figures", "seconds", "torch", "bioprop",
               "machine", "results"}  # fmt: skip
PNG = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------------- framework


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """A registered experiment ``toy`` writing ``toy.bin`` (bytes that depend on the seed); returns the list of
    (seed, quick) of its runs."""
    calls: list[tuple[int, bool]] = []

    def run(out: Path, seed: int, quick: bool) -> dict[str, Any]:
        calls.append((seed, quick))
        experiments.figure_path(out, "toy", "toy.bin").write_bytes(f"seed {seed}".encode())
        return {"value": 1.5, "missing": float("nan"), "tensor": torch.tensor(2.0), "nested": {"list": (1, 2)}}

    experiments.names()  # the real experiments first: _load must not overwrite the toy
    toy = experiments.Experiment("toy", "a toy", "nowhere", ("toy.bin",), run)
    monkeypatch.setitem(experiments.CATALOG.entries, "toy", toy)
    return calls


def test_an_unknown_name_is_refused_listing_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(BioPropError, match=r"unknown experiment 'nope'; known: .*variational-bound"):
        experiments.get("nope")
    with pytest.raises(BioPropError, match="unknown experiment 'nope'"):
        experiments.run_experiment("nope", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_out_that_is_a_file_is_refused_and_left_alone(toy, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_bytes(b"not a folder")
    with pytest.raises(BioPropError, match="is a file, not a folder"):
        experiments.run_experiment("toy", out)
    assert out.read_bytes() == b"not a folder" and toy == []


def test_an_out_that_is_a_run_directory_is_refused_and_left_alone(toy, finished_run: Path) -> None:
    """A run directory holding files it did not write would refuse its own ``--overwrite``."""
    before = sorted(path.name for path in finished_run.iterdir())
    with pytest.raises(BioPropError, match=f"^--out '{re.escape(str(finished_run))}' is a run directory; give a"):
        experiments.run_experiment("toy", finished_run)
    assert sorted(path.name for path in finished_run.iterdir()) == before and toy == []


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("toy.json", b'{"some": "file of the user"}'),
        ("toy.json", json.dumps({"experiment": "other", "figures": ["toy.bin"]}).encode()),  # another's record
        ("toy.json", b"\x00\x01 not JSON"),
        ("toy.bin", b"a figure bioprop did not write"),
    ],
)
def test_a_foreign_file_of_an_own_name_is_refused_and_left_byte_identical(
    toy, tmp_path: Path, name: str, content: bytes
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_bytes(content)
    (out / "unrelated.txt").write_bytes(b"x")
    with pytest.raises(BioPropError, match=f"refusing to overwrite .*{name}"):
        experiments.run_experiment("toy", out)
    assert toy == [], "refused before any work"
    assert sorted(p.name for p in out.iterdir()) == sorted({name, "unrelated.txt"})
    assert (out / name).read_bytes() == content and (out / "unrelated.txt").read_bytes() == b"x"


def test_a_figure_its_own_record_does_not_list_is_foreign(toy, tmp_path: Path) -> None:
    """The record lists the figures a run wrote: a figure file it does not list was not written by bioprop."""
    out = tmp_path / "out"
    experiments.run_experiment("toy", out)
    record = json.loads((out / "toy.json").read_text())
    (out / "toy.json").write_text(json.dumps({**record, "figures": []}))
    with pytest.raises(BioPropError, match="refusing to overwrite .*toy.bin"):
        experiments.run_experiment("toy", out)
    assert (out / "toy.bin").read_bytes() == b"seed 0"


def test_a_rerun_overwrites_its_own_files_and_nothing_else(toy, tmp_path: Path) -> None:
    out = tmp_path / "a" / "b"  # created, parents included
    experiments.run_experiment("toy", out, seed=3)
    (out / "unrelated.txt").write_bytes(b"x")
    experiments.run_experiment("toy", out, seed=4, quick=True)
    assert toy == [(3, False), (4, True)]
    assert (out / "toy.bin").read_bytes() == b"seed 4"
    record = json.loads((out / "toy.json").read_text())
    assert record["seed"] == 4 and record["quick"] is True
    assert sorted(p.name for p in out.iterdir()) == ["toy.bin", "toy.json", "unrelated.txt"]


def test_a_run_stopped_after_writing_a_figure_can_be_run_again(toy, tmp_path: Path, monkeypatch) -> None:
    """The record written before the run claims the figure names: a run that dies half-way does not leave a figure
    that the next run would take for someone else's."""

    def crash(out: Path, seed: int, quick: bool) -> dict[str, Any]:
        experiments.figure_path(out, "toy", "toy.bin").write_bytes(b"half")
        raise KeyboardInterrupt

    original = experiments.CATALOG.entries["toy"]
    monkeypatch.setitem(experiments.CATALOG.entries, "toy", dataclasses.replace(original, run=crash))
    with pytest.raises(KeyboardInterrupt):
        experiments.run_experiment("toy", tmp_path)
    assert json.loads((tmp_path / "toy.json").read_text())["status"] == "interrupted"
    monkeypatch.setitem(experiments.CATALOG.entries, "toy", original)
    record = experiments.run_experiment("toy", tmp_path, seed=2)
    assert record["status"] == "finished" and (tmp_path / "toy.bin").read_bytes() == b"seed 2"


def test_a_users_file_that_looks_like_a_record_is_still_the_users(toy, tmp_path: Path) -> None:
    """Ownership needs a record in the form bioprop writes (status, figures, version), not just the name."""
    fake = tmp_path / "toy.json"
    fake.write_text('{"experiment": "toy", "status": "finished"}')
    with pytest.raises(BioPropError, match="bioprop did not write it"):
        experiments.run_experiment("toy", tmp_path)
    assert fake.read_text() == '{"experiment": "toy", "status": "finished"}' and toy == []


def test_a_folder_named_like_a_figure_is_refused_before_any_work(toy, tmp_path: Path) -> None:
    experiments.run_experiment("toy", tmp_path, seed=1)
    before = (tmp_path / "toy.json").read_bytes()
    (tmp_path / "toy.bin").unlink()
    (tmp_path / "toy.bin").mkdir()
    with pytest.raises(BioPropError, match="is a folder or a link"):
        experiments.run_experiment("toy", tmp_path, seed=2)
    assert (tmp_path / "toy.json").read_bytes() == before and toy == [(1, False)]


@pytest.mark.parametrize("out, quick, says", [(None, False, "--out must be a folder"), ("", False, "--out must be"),
                                              ("x", "no", "quick must be True or False")])  # fmt: skip
def test_bad_arguments_of_the_api_are_one_line_errors(toy, tmp_path: Path, monkeypatch, out, quick, says) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BioPropError, match=says):
        experiments.run_experiment("toy", out, quick=quick)
    assert toy == [] and list(tmp_path.iterdir()) == []


def test_a_path_given_as_text_is_accepted(toy, tmp_path: Path) -> None:
    experiments.run_experiment("toy", str(tmp_path / "out"), seed=5)
    assert (tmp_path / "out" / "toy.bin").read_bytes() == b"seed 5"


def test_the_json_record(toy, tmp_path: Path) -> None:
    record = experiments.run_experiment("toy", tmp_path, seed=7)
    written = json.loads((tmp_path / "toy.json").read_text())
    assert set(written) == JSON_FIELDS and written == json.loads(json.dumps(record))
    assert (written["experiment"], written["summary"], written["source"]) == ("toy", "a toy", "nowhere")
    assert written["seed"] == 7 and written["quick"] is False and written["figures"] == ["toy.bin"]
    assert written["seconds"] >= 0 and written["torch"] == torch.__version__
    assert written["results"] == {"value": 1.5, "missing": None, "tensor": 2.0, "nested": {"list": [1, 2]}}


@pytest.mark.parametrize("seed", [-1, 2**63, True, 1.5])
def test_a_bad_seed_is_refused_before_any_work(toy, tmp_path: Path, seed: Any) -> None:
    with pytest.raises(BioPropError, match="--seed must be an integer"):
        experiments.run_experiment("toy", tmp_path / "out", seed=seed)
    assert toy == [] and not (tmp_path / "out").exists()


def test_an_undeclared_figure_is_a_programming_error(toy, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="did not declare the figure 'other.png'"):
        experiments.figure_path(tmp_path, "toy", "other.png")


# ------------------------------------------------------------------------------------------------------ CLI


def assert_one_line_error(code: int, err: str, says: str) -> None:
    lines = err.strip("\n").splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("bioprop: error: ") and says in lines[0], err


def test_cli_lists_the_experiments(cli) -> None:
    for args in (["experiment", "--list"], ["experiment"]):
        code, out, _ = cli(*args)
        assert code == 0 and "variational-bound" in out and "Bengio et al. 2015" in out, out


def test_cli_unknown_experiment_is_one_line_and_exit_2(cli, tmp_path: Path) -> None:
    code, _, err = cli("experiment", "nope", "--out", tmp_path / "out")
    assert_one_line_error(code, err, "unknown experiment 'nope'; known: ")
    assert not (tmp_path / "out").exists()


def test_cli_out_that_is_a_file_is_one_line_and_exit_2(cli, tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"mine")
    code, _, err = cli("experiment", "variational-bound", "--quick", "--out", tmp_path / "file")
    assert_one_line_error(code, err, "is a file, not a folder")
    assert (tmp_path / "file").read_bytes() == b"mine"


def test_cli_run_writes_the_json_and_the_figure(cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, stdout, err = cli("experiment", "variational-bound", "--quick", "--seed", "2", "--out", out)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["variational-bound.json", vb.FIGURE]
    assert str(out / "variational-bound.json") in stdout and vb.FIGURE in stdout
    record = json.loads((out / "variational-bound.json").read_text())
    assert record["seed"] == 2 and record["quick"] is True and record["figures"] == [vb.FIGURE]
    assert (out / vb.FIGURE).read_bytes()[:8] == PNG


# ----------------------------------------------------------------- the variational bound, against brute force


def sigmoid(a: float) -> float:
    return 1 / (1 + math.exp(-a))


def bernoulli(value: float, p: float) -> float:
    return p if value == 1 else 1 - p


def brute_joint(net: vb.BeliefNet, x: list[int], h: tuple[int, ...]) -> float:
    """p(x, h) = Π_j p(h_j) Π_i p(x_i | h), term by term."""
    b, w, c = net.prior.tolist(), net.weight.tolist(), net.bias.tolist()
    prior = math.prod(bernoulli(h_j, sigmoid(b_j)) for h_j, b_j in zip(h, b, strict=True))
    likelihood = math.prod(
        bernoulli(x_i, sigmoid(sum(w_ij * h_j for w_ij, h_j in zip(row, h, strict=True)) + c_i))
        for x_i, row, c_i in zip(x, w, c, strict=True)
    )
    return prior * likelihood


def brute_terms(net: vb.BeliefNet, x: list[int], q: dict[tuple[int, ...], float]) -> dict[str, float]:
    """log p(x), E_q[log p(x,h)], H[q], KL(q ‖ p(h|x)) by enumerating h with itertools.product."""
    latent = itertools.product((0, 1), repeat=net.prior.shape[0])
    joint = {h: brute_joint(net, x, h) for h in latent}
    evidence = sum(joint.values())
    return {
        "log_evidence": math.log(evidence),
        "expected_log_joint": sum(q[h] * math.log(joint[h]) for h in joint if q[h] > 0),
        "entropy": -sum(q[h] * math.log(q[h]) for h in joint if q[h] > 0),
        "kl": sum(q[h] * math.log(q[h] / (joint[h] / evidence)) for h in joint if q[h] > 0),
    }


def brute_factorised(mu: list[float]) -> dict[tuple[int, ...], float]:
    return {h: math.prod(bernoulli(h_j, m_j) for h_j, m_j in zip(h, mu, strict=True))
            for h in itertools.product((0, 1), repeat=len(mu))}  # fmt: skip


def random_net(m: int, n: int, seed: int, scale: float = 2.0) -> vb.BeliefNet:
    g = torch.Generator().manual_seed(seed)
    return vb.BeliefNet(torch.randn(m, generator=g, dtype=torch.float64),
                        scale * torch.randn(n, m, generator=g, dtype=torch.float64),
                        torch.randn(n, generator=g, dtype=torch.float64))  # fmt: skip


def as_dict(probabilities: torch.Tensor) -> dict[tuple[int, ...], float]:
    """Probabilities in the order of itertools.product((0, 1), repeat=m)."""
    m = int(math.log2(len(probabilities)))
    return dict(zip(itertools.product((0, 1), repeat=m), probabilities.tolist(), strict=True))


def test_states_enumerate_in_itertools_order() -> None:
    assert vb.states(3).tolist() == [list(h) for h in itertools.product((0.0, 1.0), repeat=3)]
    with pytest.raises(ValueError, match="1 <= m <= 12"):
        vb.states(13)


@pytest.mark.parametrize("seed", [0, 1])
def test_decomposition_to_1e_10_against_brute_force(seed: int) -> None:
    """Every term against its own enumeration, for factorised q (edges 0 and 1 included), general categorical q
    (states of probability 0 included), the prior and the posterior; and the identity itself to 1e-10."""
    net = random_net(m=4, n=5, seed=seed)
    g = torch.Generator().manual_seed(100 + seed)
    h = vb.states(4)
    mus = [torch.rand(4, generator=g, dtype=torch.float64), torch.tensor([0.0, 0.3, 1.0, 0.9], dtype=torch.float64)]
    categorical = torch.softmax(3 * torch.randn(16, generator=g, dtype=torch.float64), 0)
    categorical[[2, 5, 11]] = 0
    qs = [vb.factorised(mu, h) for mu in mus] + [categorical / categorical.sum(), vb.factorised(net.prior.sigmoid(), h)]
    for x in ([0, 1, 1, 0, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]):
        log_joints = vb.log_joint(net, torch.tensor(x, dtype=torch.float64), h)
        posterior = torch.softmax(log_joints, 0)
        for q in [*qs, posterior]:
            terms = vb.decompose(q, log_joints)
            expected = brute_terms(net, x, as_dict(q))
            for key, value in expected.items():
                assert getattr(terms, key).item() == pytest.approx(value, abs=1e-10), key
            assert abs(terms.residual.item()) < 1e-10
            assert abs(expected["log_evidence"] - sum(v for k, v in expected.items() if k != "log_evidence")) < 1e-10
        assert vb.decompose(posterior, log_joints).kl.abs().item() < 1e-12
    for mu in mus:  # the factorised q against its own product
        assert as_dict(vb.factorised(mu, h)) == pytest.approx(brute_factorised(mu.tolist()), abs=1e-15)


def brute_bound_of_means(net: vb.BeliefNet, x: list[int], mu: torch.Tensor) -> torch.Tensor:
    """E_q[log p(x,h)] + H[q] for the factorised q of means ``mu``, by enumeration, differentiable in ``mu``."""
    total = mu.new_zeros(())
    for h in itertools.product((0, 1), repeat=len(mu)):
        q = math.prod(mu[j] if h_j else 1 - mu[j] for j, h_j in enumerate(h))
        total = total + q * (math.log(brute_joint(net, x, h)) - torch.log(q))
    return total


def test_a_mean_field_step_is_the_exact_maximiser_over_its_unit() -> None:
    """At the new μ_j the bound's derivative in μ_j is 0 (autograd through the enumeration) and moving μ_j either
    way lowers the bound: each coordinate step maximises the bound over its unit."""
    net, x = random_net(m=3, n=4, seed=2), [1, 0, 1, 1]
    log_joints = vb.log_joint(net, torch.tensor(x, dtype=torch.float64), vb.states(3))
    mu = torch.tensor([0.2, 0.7, 0.5], dtype=torch.float64)
    for j in range(3):
        mu = vb.mean_field_update(mu, j, log_joints)
        point = mu.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(brute_bound_of_means(net, x, point), point)
        assert abs(grad[j].item()) < 1e-10
        at = brute_bound_of_means(net, x, mu).item()
        for step in (-1e-3, 1e-3):
            moved = mu.clone()
            moved[j] += step
            assert brute_bound_of_means(net, x, moved).item() < at


def test_mean_field_never_lowers_the_bound_and_is_tight_when_the_posterior_factorises() -> None:
    """Each visible unit seeing one latent unit: p(h|x) is factorised, and one sweep reaches log p(x) (1e-6). In a
    dense net with strong weights (explaining away) the bound rises at every step but stops short of log p(x)."""
    m, n = 3, 6
    sparse = random_net(m, n, seed=3)
    sparse = sparse._replace(weight=sparse.weight * torch.eye(m, dtype=torch.float64).repeat(2, 1))
    dense = random_net(m, n, seed=4, scale=3.0)
    x = [1, 0, 1, 1, 0, 0]
    for net, tight in ((sparse, True), (dense, False)):
        log_joints = vb.log_joint(net, torch.tensor(x, dtype=torch.float64), vb.states(m))
        mu = net.prior.sigmoid()
        bounds = [brute_bound_of_means(net, x, mu).item()]
        for _ in range(5):
            for j in range(m):
                mu = vb.mean_field_update(mu, j, log_joints)
                bounds.append(brute_bound_of_means(net, x, mu).item())
        log_px = brute_terms(net, x, brute_factorised(mu.tolist()))["log_evidence"]
        assert all(b >= a - 1e-12 for a, b in zip(bounds, bounds[1:], strict=False))
        assert all(b <= log_px + 1e-12 for b in bounds)
        if tight:
            assert log_px - bounds[m] < 1e-6, "one sweep"
        else:
            assert log_px - bounds[-1] > 1e-3 and bounds[-1] > bounds[0] + 0.1


def test_mirror_ascent_raises_the_bound_to_log_p_x() -> None:
    """A categorical q can be the posterior: mirror steps raise the bound at every step and end within 1e-6 of
    log p(x) (each checked by enumeration); KL falls strictly until it reaches rounding."""
    net, x = random_net(m=4, n=5, seed=5), [1, 1, 0, 1, 0]
    log_joints = vb.log_joint(net, torch.tensor(x, dtype=torch.float64), vb.states(4))
    g = torch.Generator().manual_seed(6)
    q = torch.softmax(2 * torch.randn(16, generator=g, dtype=torch.float64), 0)
    bounds, kls = [], []
    for _ in range(30):
        terms = brute_terms(net, x, as_dict(q))
        bounds.append(terms["expected_log_joint"] + terms["entropy"])
        kls.append(terms["kl"])
        q = vb.mirror_step(q, log_joints, 0.5)
    assert all(b >= a - 1e-12 for a, b in zip(bounds, bounds[1:], strict=False))
    assert all(b < a for a, b in zip(kls, kls[1:], strict=False) if a > 1e-12)
    assert kls[0] > 0.1 and terms["log_evidence"] - bounds[-1] < 1e-6


@pytest.fixture(scope="module")
def quick_record(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return experiments.run_experiment(vb.NAME, tmp_path_factory.mktemp("vb"), seed=0, quick=True)


def test_the_experiments_numbers(quick_record: dict[str, Any]) -> None:
    """What the quick run records: the decomposition to 1e-10 over every x ∈ {0, 1}^n, KL ≥ 0, the bound below
    log p(x) and never falling along both inferences, mirror ascent within 1e-6 of log p(x), mean-field not."""
    results = quick_record["results"]
    decomposition = results["decomposition"]
    assert decomposition["x_vectors"] == 2 ** results["model"]["visible"]
    assert decomposition["max_abs_residual"] < 1e-10 and decomposition["total_probability_error"] < 1e-12
    for kind in ("factorised", "categorical", "prior", "posterior"):
        assert decomposition[kind]["max_abs_residual"] < 1e-10 and decomposition[kind]["min_kl"] > -1e-12
    assert decomposition["posterior"]["max_kl"] < 1e-12
    for key in ("mean_field", "mirror"):
        run = results[key]
        assert run["min_increase"] > -1e-12 and run["max_abs_residual"] < 1e-10
        assert all(b <= results["log_px"] + 1e-12 for b in run["bound"])
        assert run["bound"][-1] > run["bound"][0] and run["kl"][-1] < run["kl"][0]
    assert results["mirror"]["final_gap"] < 1e-6 and results["mirror"]["first_step_within_1e-6"] is not None
    assert results["mean_field"]["final_gap"] > 1e-6
