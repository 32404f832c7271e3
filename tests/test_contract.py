"""The rule contract (docs/contract.md), checked for every registered rule by what it promises, not by any rule's
code: ``grads`` is pure, ``create`` never changes what the network computes, a run has one output loss, and what a
rule declares (traces, diagnostics, figures) is all the trainer and the report need.

Options that switch on a rule's randomness or persistent state (brsf's redrawn feedback, ep's random-sign nudge and
persistent particles, the microcircuit's noise) are set here, so that purity is tested where it can fail.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import Tensor

from bioprop import losses, metrics, nets, rules, train
from bioprop.rules import base
from conftest import tiny_config

ENERGY = {name for name in rules.names() if "energy" in rules.entry(name).cls.networks
          and "feedforward" not in rules.entry(name).cls.networks}  # fmt: skip
RECURRENT = {name for name in rules.names() if rules.entry(name).cls.networks == {"recurrent"}}
#: Options that make a rule draw random numbers or keep per-example state, where it has them.
STATEFUL = {
    "ep": {"nudge": "random-sign", "persistent": True},
    "stdp": {"nudge": "random-sign", "persistent": True},
    "microcircuit": {"noise": 0.05},
    "eprop": {"feedback": "adaptive"},
}
STEPS = 8  # of the sequences the temporal rules get


def net_for(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if name in RECURRENT:  # a small one of the kind the rule trains (rflo: rate units only)
        declared = rules.entry(name).cls.arch or ""
        arch = {"rnn": "rnn:6", "sab": "sab:6:k_top=2,k_att=2"}.get(declared.partition(":")[0], "lsnn:3+3")
        return nets.build(arch, (STEPS, 4), 3).double()
    arch = "ebm:12" if name in ENERGY else "mlp:12"
    act = "auto"
    from bioprop.config import RunConfig

    act = RunConfig(rule=name, arch=arch).resolved_activation()
    return nets.build(arch, (1, 4, 4), 3, act).double()


def batch(seed: int = 1, n: int = 6, name: str | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Images (n, 1, 4, 4) and labels (n,); for a temporal rule, spike trains (T, n, 4) with labels in the last half
    of the steps (−1 before)."""
    g = torch.Generator().manual_seed(seed)
    if name in RECURRENT:
        x = (torch.rand(STEPS, n, 4, generator=g) < 0.4).double()
        y = torch.randint(0, 3, (n,), generator=g).expand(STEPS, n).clone()
        y[: STEPS // 2] = -1
        return x, y, torch.randperm(20, generator=g)[:n]
    x = torch.rand(n, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y, torch.randperm(20, generator=g)[:n]


def options(name: str) -> dict:
    declared = rules.entry(name).cls.options
    return {k: v for k, v in STATEFUL.get(name, {}).items() if k in declared}


def state(rule: base.Rule) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in rule.state_dict().items()}


def same_state(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", rules.names())
def test_grads_is_pure(name: str) -> None:
    """Same batch, same update; the rule's state (step count, feedback, particles, generators) and the global random
    state unchanged: the probes that measure a rule must not change what it learns."""
    net = net_for(name)
    rule = rules.create(name, net, **options(name))
    rule.prepare()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    for seed in (1, 2):  # state moves on: particles written, a step counted
        optimizer.zero_grad()
        rule.backward(*batch(seed, name=name))
        optimizer.step()
    before, rng = state(rule), torch.get_rng_state()
    first = rule.grads(*batch(1, name=name))
    second = rule.grads(*batch(1, name=name))
    assert torch.equal(torch.get_rng_state(), rng), "grads drew from the global random generator"
    assert same_state(before, state(rule)), "grads changed the rule's state"
    assert first.grads.keys() == second.grads.keys()
    assert all(torch.equal(first.grads[k], second.grads[k]) for k in first.grads)
    assert torch.equal(first.loss, second.loss)


@pytest.mark.parametrize("name", rules.names())
def test_create_leaves_what_the_net_computes_unchanged(name: str) -> None:
    net = net_for(name)
    x = batch(name=name)[0]
    before = net(x).detach()
    rules.create(name, net, **options(name))
    assert torch.equal(net(x).detach(), before)


def test_energy_net_output_does_not_depend_on_the_rule_created_last() -> None:
    """The fault seen: creating ep with 3 free steps, then chl with 60, changed net(x)."""
    net = net_for("ep")
    x = batch()[0]
    before = net(x).detach()
    rules.create("ep", net, free_steps=3)
    rules.create("chl", net, free_steps=60)
    rules.create("bp", net, output="ce")
    assert torch.equal(net(x).detach(), before)


@pytest.mark.parametrize("name", ["ep", "chl", "generec", "pc", "dendritic", "fa", "bp"])
def test_train_and_test_loss_are_one_quantity(name: str) -> None:
    """With output=se (where the rule can use it), the loss a step reports and the loss evaluate measures on the
    same batch are both ½‖z − onehot(y)‖², computed here by hand on the rule's own prediction."""
    given = {"output": "se"} if "output" in rules.entry(name).cls.options else {}
    rule = rules.create(name, net_for(name), **given)
    x, y, _ = batch()
    update = rule.grads(x, y)
    by_hand = 0.5 * (update.prediction - torch.eye(3, dtype=torch.float64)[y]).square().sum(1).mean()
    if rule.loss.name == "se":
        assert float(update.loss) == pytest.approx(float(by_hand), rel=1e-12)
    test_loss, _ = metrics.evaluate(rule, x, y)
    assert test_loss == pytest.approx(float(update.loss), rel=1e-9)
    assert rule.loss is losses.get(given.get("output", rule.loss.name))


def test_every_declaration_is_complete() -> None:
    """A figure names a plain .png file that is none of the run's own files, and only traces and diagnostics its rule
    declares; diagnostic patterns compile."""
    from bioprop.report import logs

    for name in rules.names():
        cls = rules.entry(name).cls
        traces = {t.name for t in cls.trace_specs}
        for pattern in cls.diagnostic_specs:
            re.compile(pattern.pattern)
        for spec in cls.figures:
            assert re.fullmatch(r"[a-z0-9_-]+\.png", spec.file), spec.file
            assert set(spec.traces) <= traces and (spec.preparation is None or spec.preparation in traces)
            assert all(0 <= i < len(cls.diagnostic_specs) for i in spec.diagnostics)
            assert spec.file not in logs.RUN_FILES, spec.file


def test_a_new_rule_needs_no_code_outside_rules(tmp_path: Path, monkeypatch) -> None:
    """A rule registered from outside the package, declaring a trace and a figure, is trained, checkpointed and
    drawn by the trainer and the report, which know it only by its declarations."""

    class Damped(base.Rule):
        """Backprop's gradient scaled by ½, with a made-up inner trace: 1/(t + 1) for t = 0..3."""

        trace_specs = (base.Trace("residual", "residual (a.u.)", relative=True),)
        figures = (base.FigureSpec("residual.png", "residual", traces=("residual",)),)

        def update(self, x, y, index=None):
            exact = base.backprop_update(self.net, x, y, self.loss)
            trace = 1.0 / torch.arange(1, 5, dtype=torch.float64)
            return exact._replace(grads={k: g / 2 for k, g in exact.grads.items()}, traces={"residual": trace})

    entry = base.Entry("damped", Damped, "test", "none", "half of backprop", rules.entry("bp").card)
    monkeypatch.setitem(base._REGISTRY, "damped", entry)
    run = tmp_path / "run"
    train.run(tiny_config(rule="damped", epochs=1, limit=100), run, quiet=True)
    assert (run / "residual.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["loss"] == "ce" and summary["status"] == "finished"
    from bioprop.report import logs

    assert "residual.png" in logs.run_files()
