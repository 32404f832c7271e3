"""One definition of a run's settings: every field of RunConfig is a flag of `bioprop train` whose name, metavar
and help are generated from the field (its metadata and default), a flag and a config key of one field are the
same setting, and the network is checked against the dataset's real input shape, not an assumed one."""

from __future__ import annotations

import re
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from bioprop import cli as cli_module
from bioprop import nets
from bioprop.config import RunConfig, value_kind
from bioprop.errors import BioPropError

FIELDS = fields(RunConfig)
TINY = ["--data", "digits", "--arch", "mlp:8", "--epochs", "1", "--limit", "60", "--device", "cpu", "--quiet"]


def train_options() -> dict[str, Any]:
    """The click options of `bioprop train`, by their first long flag."""
    command = typer.main.get_command(cli_module.app).commands["train"]  # type: ignore[attr-defined]
    return {next(o for o in param.opts if o.startswith("--")): param for param in command.params}


def long_flag(item: Field) -> str:
    return item.metadata.get("flag") or "--" + item.name.replace("_", "-")


def default_of(item: Field) -> Any:
    return item.default_factory() if item.default is MISSING else item.default


def plain(text: str) -> str:
    """Help text with rich's escapes, the table's borders and the line breaks of its wrapping taken out."""
    return " ".join(text.replace("\\[", "[").replace("│", " ").split())


def test_every_field_has_a_flag_with_its_help_and_default() -> None:
    options = train_options()
    assert {"probe_batches", "probe_batch_size", "probe_every", "threads", "download"} <= {f.name for f in FIELDS}
    for item in FIELDS:
        option = options.pop(long_flag(item))
        help = plain(option.help)
        assert help.startswith(item.metadata["help"]), item.name
        assert "default" not in item.metadata["help"].lower(), f"{item.name}: its help states a default by hand"
        default = default_of(item)
        if item.metadata.get("unset") is not None and default in (None, {}):
            shown = item.metadata["unset"]
        elif isinstance(default, bool):
            shown = f"--no-{item.name.replace('_', '-')}" if not default else long_flag(item)
        else:
            shown = str(default)
        assert help.endswith(f"[default: {shown}]") and help.count("[default:") == 1, (item.name, help)
        assert option.default is None, f"{item.name}: a flag not given must leave a --config value standing"
        if value_kind(item.name) is bool:
            assert option.secondary_opts == [f"--no-{long_flag(item)[2:]}"] and option.metavar == ""
        elif item.metadata.get("choices"):
            assert option.metavar == "NAME" and f"One of {', '.join(item.metadata['choices'])}." in option.help
    assert sorted(options) == ["--config", "--out", "--overwrite", "--quiet"], "options besides the settings"


def test_help_at_80_columns_leaves_the_help_texts_room(cli, monkeypatch) -> None:
    """At 80 columns the help texts of `train` and `compare` are at least 36 characters wide: no column of choices
    (`[sgd|adam|adamw]`) or of negative flags (`--no-download`) crowds them to 20, as both once did."""
    monkeypatch.setenv("COLUMNS", "80")
    for command in ("train", "compare"):
        code, out, _ = cli(command, "--help")
        assert code == 0
        row = next(line for line in out.splitlines() if "--epochs" in line)
        help_column = len(row.rstrip()) - 1 - row.index("Passes")  # from the help's start to the panel's border
        assert help_column >= 36, (command, help_column)


def test_help_shows_every_setting_and_no_bool_placeholder(cli, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps at the terminal's width; wide enough to keep flags whole
    code, out, _ = cli("train", "--help")
    assert code == 0
    text = plain(out)
    for item in FIELDS:
        assert long_flag(item) in text and item.metadata["help"] in text, item.name
    assert "--download " in text and "[default: --no-download]" in text  # the negative flag: its default
    assert "<bool>" not in out
    for args in (["--help"], ["resume", "--help"], ["datasets", "--help"]):
        assert "<bool>" not in cli(*args)[1], args


# ------------------------------------------------------------------------------- a flag and a key, one setting

# Values other than the default that a field accepts, where its type alone does not give one.
NAMED = {"rule": "fa", "data": "kmnist", "arch": "mlp:8"}
NEEDS = {"step_size": {"schedule": "step"}}  # a step size without --schedule step is refused as having no effect


def sample(item: Field, folder: Path) -> Any:
    """A valid value for ``item`` that is not its default, in the field's type."""
    kind, default = value_kind(item.name), default_of(item)
    if kind is bool:
        return not default
    if item.metadata.get("choices"):
        return next(c for c in item.metadata["choices"] if c not in (default, "cuda"))
    if kind is int:
        return (default or 0) + 2
    if kind is float:
        return default / 2 if default is not None else 0.5  # inside every float range (momentum stays below 1)
    if kind is dict:
        return {"output": "se"}  # an option of the default rule, bp
    if item.metadata.get("path"):
        return str(folder)
    return NAMED[item.name]


def as_flags(values: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for name, value in values.items():
        flag = long_flag(next(f for f in FIELDS if f.name == name))
        if isinstance(value, bool):
            args.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, dict):
            for key, option in value.items():
                args += [flag, f"{key}={option}"]
        else:
            args += [flag, str(value)]
    return args


@pytest.fixture
def started(monkeypatch) -> list[RunConfig]:
    """The configs `bioprop train` hands to bioprop.train.run, which is replaced by a recorder."""
    from bioprop import train

    seen: list[RunConfig] = []

    def record(config, out_dir, overwrite=False, quiet=False):
        seen.append(config)
        return {}

    monkeypatch.setattr(train, "run", record)
    return seen


@pytest.mark.parametrize("item", FIELDS, ids=[f.name for f in FIELDS])
def test_a_flag_and_a_config_key_are_one_setting(cli, started, tmp_path, item: Field) -> None:
    values = {**NEEDS.get(item.name, {}), item.name: sample(item, tmp_path)}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(values))
    code, _, err = cli("train", *as_flags(values), "--quiet", "--out", tmp_path / "a")
    assert code == 0, err
    code, _, err = cli("train", "--config", tmp_path / "c.yaml", "--quiet", "--out", tmp_path / "b")
    assert code == 0, err
    by_flag, by_key = started
    threads = {} if item.name == "threads" else {"threads": by_flag.threads}  # else the CLI's choice, as resolved
    assert by_flag.to_dict() == {**RunConfig().to_dict(), **threads, **values}
    assert by_flag.to_dict() == by_key.to_dict()


def test_a_flag_overrides_the_config_key_both_ways(cli, started, tmp_path) -> None:
    (tmp_path / "c.yaml").write_text("download: true\nprobe_batches: 3\nlimit: 9\n")
    code, _, err = cli("train", "--config", tmp_path / "c.yaml", "--no-download", "--probe-batches", "2",
                       "--quiet", "--out", tmp_path / "run")  # fmt: skip
    assert code == 0, err
    assert (started[0].download, started[0].probe_batches, started[0].limit) == (False, 2, 9)


def test_probe_settings_given_as_flags_land_in_the_runs_config(cli, tmp_path) -> None:
    code, _, err = cli("train", *TINY, "--batch-size", "8", "--probe-batches", "2", "--probe-batch-size", "16",
                       "--probe-every", "3", "--out", tmp_path / "run")  # fmt: skip
    assert code == 0, err
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (written["probe_batches"], written["probe_batch_size"], written["probe_every"]) == (2, 16, 3)
    rows = (tmp_path / "run" / "alignment.csv").read_text().splitlines()
    assert rows[0].startswith("step,")
    assert {int(row.split(",")[0]) for row in rows[1:]} == {0, 3, 6}, "60 examples in batches of 8: steps 1..8"


@pytest.mark.parametrize(
    ("flags", "text", "says"),
    [
        (["--probe-batches", "0"], "probe_batches: 0\n", "probe_batches must be a positive integer, not '0'"),
        (
            ["--probe-batch-size", "-1"],
            "probe_batch_size: -1\n",
            "probe_batch_size must be a positive integer, not '-1'",
        ),
        (["--probe-every", "-2"], "probe_every: -2\n", "probe_every must be 0 or a positive integer, not '-2'"),
        (["--data-dir", ""], "data_dir: ''\n", "data_dir needs a path, not ''"),
        (["--clip", "0.0"], "clip: 0.0\n", "clip must be a positive finite number, not '0.0'"),
        (["--clip", "-1.5"], "clip: -1.5\n", "clip must be a positive finite number, not '-1.5'"),
    ],
)
def test_bad_setting_is_named_as_it_was_given(cli, tmp_path, flags, text, says) -> None:
    """The same check of one field, named `--probe-batches` for a flag and `config '...': probe_batches` for a key."""
    code, _, err = cli("train", *flags, "--out", tmp_path / "run")
    assert code == 2 and err == f"bioprop: error: {flags[0]} {says.split(' ', 1)[1]}\n", err
    (tmp_path / "c.yaml").write_text(text)
    code, _, err = cli("train", "--config", tmp_path / "c.yaml", "--out", tmp_path / "run")
    assert code == 2 and err == f"bioprop: error: config '{tmp_path / 'c.yaml'}': {says}\n", err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("item", [f for f in FIELDS if f.metadata.get("choices")], ids=lambda f: f.name)
def test_a_value_outside_the_choices_is_refused_naming_them(cli, tmp_path, item: Field) -> None:
    code, _, err = cli("train", long_flag(item), "bogus", "--out", tmp_path / "run")
    choices = ", ".join(item.metadata["choices"])
    assert (code, err) == (2, f"bioprop: error: unknown {long_flag(item)} 'bogus'; choose one of {choices}\n")


# ----------------------------------------------------------------------------- the network for the real data


def test_lenet_on_digits_is_refused_naming_the_arch_and_the_shape(cli, tmp_path) -> None:
    code, out, err = cli("train", "--arch", "lenet", "--data", "digits", "--out", tmp_path / "run")
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert err.startswith("bioprop: error: arch 'lenet' needs 28x28 or 32x32 images") and "1x8x8" in err
    assert not (tmp_path / "run").exists()


def test_a_network_the_dataset_cannot_feed_is_refused_naming_it(cli, tmp_path) -> None:
    """ebm-conv's two 5x5 convolutions, each followed by 2x2 pooling, need inputs of at least 16x16 (8x8 -> 4 ->
    2, too small for the second convolution)."""
    code, _, err = cli("train", "--rule", "ep", "--arch", "ebm-conv", "--data", "digits", "--out", tmp_path / "run")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "arch 'ebm-conv'" in err and "dataset digits has 1x8x8 inputs and 10 classes" in err
    assert not (tmp_path / "run").exists()


LENET_CASES = [((1, 28, 28), True), ((3, 32, 32), True), ((1, 8, 8), False), ((1, 30, 30), False),
               ((1, 36, 36), False), ((1, 28, 32), False)]  # fmt: skip


@pytest.mark.parametrize(("in_shape", "fits"), LENET_CASES)
def test_lenet_takes_28_or_32_pixel_squares_only(in_shape, fits) -> None:
    """LeNet-5's first feature maps are 28x28 (LeCun et al. 1998, layer C1): from 32x32 inputs, or from 28x28 ones
    that its first convolution pads by 2. Other sizes would be padded or cut into shape without a word."""
    config = RunConfig(arch="lenet", data="somewhere")
    if not fits:
        with pytest.raises(BioPropError, match=re.escape("x".join(map(str, in_shape)))):
            config.check_arch(in_shape, 10)
        return
    config.check_arch(in_shape, 10)
    net = nets.build("lenet", in_shape, 10)
    first = net[0]
    side = (in_shape[1] + 2 * first.padding[0] - first.kernel_size[0]) // first.stride[0] + 1
    assert side == 28


def test_the_arch_is_not_checked_against_an_assumed_dataset() -> None:
    """check() needs no data: an arch that only a dataset can refute passes it (and check_arch then decides);
    the old check built every arch for a 28x28, 10-class dataset, which let lenet through for 8x8 digits."""
    config = RunConfig(arch="lenet", data="digits").check()
    with pytest.raises(BioPropError, match="1x8x8"):
        config.check_arch((1, 8, 8), 10)
    config.check_arch((1, 28, 28), 10)
    with pytest.raises(BioPropError, match=r"n_classes must be an integer of at least 2.*1 classes"):
        RunConfig(arch="mlp:8").check_arch((1, 8, 8), 1)


def test_arch_auto_is_the_network_the_rule_trains_and_is_recorded() -> None:
    """A newcomer's `bioprop train --rule ep` must not be refused for the default arch: auto is mlp:256, or
    ebm:256 for a rule that trains energy-based networks only, and the config holds the concrete arch."""
    assert RunConfig(rule="ep").arch == "ebm:256" and RunConfig(rule="chl").arch == "ebm:256"
    assert RunConfig(rule="fa").arch == "mlp:256" and RunConfig(rule="bp").arch == "mlp:256"
    assert RunConfig(rule="ep", arch="ebm:32").arch == "ebm:32"
    assert "arch: ebm:256" in RunConfig(rule="ep").to_yaml()


def test_every_activation_of_the_networks_is_a_choice_of_the_flag() -> None:
    RunConfig(rule="ep", arch="ebm:32", activation="hard_tanh").check()
    RunConfig(rule="fa", activation="hard_tanh").check()


@pytest.mark.parametrize("seed", [2**63, -(2**63) - 1, 10**23])
def test_a_rule_seed_outside_64_bits_is_one_line_not_an_overflow(seed: int) -> None:
    from bioprop import rules

    with pytest.raises(BioPropError, match=rf"rule fa: option seed={seed} must be a 64-bit integer"):
        rules.create("fa", nets.build("mlp:8", (4,), 3), seed=seed)
    with pytest.raises(BioPropError, match="must be a 64-bit integer"):
        rules.create("fa", nets.build("mlp:8", (4,), 3), seed=str(seed))
