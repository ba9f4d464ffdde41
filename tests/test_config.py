"""The run configuration: defaults, round trips through dict/JSON/TOML, --quick, and strict checking."""

from __future__ import annotations

import dataclasses
import json

import pytest

from roiroa.errors import InputError
from roiroa.evaluate.config import (
    Config,
    DataConfig,
    DefenceConfig,
    MapsConfig,
    RegionsConfig,
    quick,
    to_toml,
)
from roiroa.evaluate.validate import config_errors, config_from_dict, load_config


def validate(config: Config) -> None:
    assert config_errors(config) == []


# A config that differs from the defaults in every section.
CUSTOM = {
    "seed": 3,
    "device": "cpu",
    "batch_size": 32,
    "examples": 4,
    "data": {"source": "mnist", "test_fraction": 0.25, "max_test": 300, "n_fit": 100},
    "model": {"arch": "mnist-cnn", "training": {"epochs": 2, "lr": 0.01, "batch_size": 128, "shift": 1}},
    "attacks": [
        {"name": "fgsm", "eps": 0.1},
        {"name": "pgd-linf", "eps": 0.2, "steps": 30, "label": "pgd-strong"},
        {"name": "pgd-l2", "eps": 1.5, "steps": 5},
    ],
    "maps": {"importance": "saliency", "window": 6, "stride": 3, "baseline": 0.5, "vulnerability": "gradient"},
    "regions": {"q_roi": 0.3, "q_roa": 0.1, "threshold": "otsu"},
    "defence": {"fill": "mean", "oracle_q": [0.1, 0.5]},
}

CUSTOM_TOML = """
seed = 3
device = "cpu"
batch_size = 32
examples = 4

[data]
source = "mnist"
test_fraction = 0.25
max_test = 300
n_fit = 100

[model]
arch = "mnist-cnn"

[model.training]
epochs = 2
lr = 0.01
batch_size = 128
shift = 1

[[attacks]]
name = "fgsm"
eps = 0.1

[[attacks]]
name = "pgd-linf"
eps = 0.2
steps = 30
label = "pgd-strong"

[[attacks]]
name = "pgd-l2"
eps = 1.5
steps = 5

[maps]
importance = "saliency"
window = 6
stride = 3
baseline = 0.5
vulnerability = "gradient"

[regions]
q_roi = 0.3
q_roa = 0.1
threshold = "otsu"

[defence]
fill = "mean"
oracle_q = [0.1, 0.5]
"""


# ----------------------------------------------------------------------------------------------
# defaults and round trips


def test_defaults_validate():
    config = Config()
    validate(config)
    assert config.seed == 0 and config.quick is False
    assert config.data.source == "mnist" and config.data.max_test is None
    assert [a["name"] for a in config.attacks] == ["fgsm", "pgd-linf", "pgd-l2"]


def test_empty_dict_is_the_default():
    assert config_from_dict({}) == Config()


@pytest.mark.parametrize("config", [Config(), config_from_dict(CUSTOM)], ids=["default", "custom"])
def test_to_dict_round_trip(config):
    d = config.to_dict()
    json.dumps(d, allow_nan=False)  # JSON-able
    again = config_from_dict(d)
    assert again == config
    assert again.to_dict() == d


def test_custom_values_are_read():
    c = config_from_dict(CUSTOM)
    assert c.seed == 3 and c.batch_size == 32
    assert c.data == DataConfig(source="mnist", test_fraction=0.25, max_test=300, n_fit=100)
    assert c.maps == MapsConfig(importance="saliency", window=6, stride=3, baseline=0.5, vulnerability="gradient")
    assert c.regions == RegionsConfig(q_roi=0.3, q_roa=0.1, threshold="otsu")
    assert c.defence == DefenceConfig(fill="mean", oracle_q=(0.1, 0.5))
    assert c.regions.threshold == "otsu"
    assert c.attacks[1] == {"name": "pgd-linf", "eps": 0.2, "steps": 30, "label": "pgd-strong"}


def test_int_is_accepted_for_float_and_stored_as_float():
    c = config_from_dict({"maps": {"baseline": 1}, "regions": {"q_roi": 1}})
    assert c.maps.baseline == 1.0 and isinstance(c.maps.baseline, float)
    assert isinstance(c.regions.q_roi, float)


def test_load_config_json_and_toml_are_equal(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps(CUSTOM))
    (tmp_path / "c.toml").write_text(CUSTOM_TOML)
    from_json = load_config(tmp_path / "c.json")
    from_toml = load_config(tmp_path / "c.toml")
    assert from_json == from_toml == config_from_dict(CUSTOM)
    assert from_json != Config()


def test_load_config_partial_toml(tmp_path):
    (tmp_path / "p.toml").write_text("seed = 5\n[regions]\nq_roa = 0.3\n")
    c = load_config(tmp_path / "p.toml")
    assert c == dataclasses.replace(Config(), seed=5, regions=RegionsConfig(q_roa=0.3))


# ----------------------------------------------------------------------------------------------
# quick


def test_quick_caps_defaults():
    q = quick(Config())
    assert q.quick is True
    assert q.data.max_test == 200 and q.data.n_fit == 200
    by_name = {a["name"]: a for a in q.attacks}
    assert by_name["pgd-linf"]["steps"] == 10 and by_name["pgd-l2"]["steps"] == 10
    assert "steps" not in by_name["fgsm"]
    assert by_name["fgsm"] == {"name": "fgsm"}  # its eps is chosen from the data (roiroa.evaluate.defaults)
    # the rest is unchanged
    assert q.maps == Config().maps and q.model == Config().model and q.seed == 0
    validate(q)


def test_quick_keeps_smaller_values_and_adds_missing_steps():
    c = config_from_dict(
        {
            "data": {"max_test": 50, "n_fit": 30},
            "attacks": [{"name": "pgd-linf", "steps": 4}, {"name": "pgd-l2"}, {"name": "fgsm"}],
        }
    )
    q = quick(c)
    assert q.data.max_test == 50 and q.data.n_fit == 30
    assert q.attacks[0]["steps"] == 4
    assert q.attacks[1]["steps"] == 10  # default 20 capped
    assert "steps" not in q.attacks[2]
    # the original is untouched (frozen config, dicts not mutated)
    assert "steps" not in c.attacks[1] and c.quick is False


def test_quick_idempotent():
    for c in (Config(), config_from_dict(CUSTOM)):
        q = quick(c)
        assert quick(q) == q


# ----------------------------------------------------------------------------------------------
# bad configs: each an InputError naming the key


BAD = {
    "unknown top-level key": ({"sede": 1}, r"unknown key 'sede'"),
    "unknown nested key": ({"data": {"sorce": "mnist"}}, r"unknown key 'data\.sorce'"),
    "seed is a string": ({"seed": "a"}, r"'seed' must be an int"),
    "attacks not a list": ({"attacks": "fgsm"}, r"'attacks' must be a list"),
    "attacks a table": ({"attacks": {"name": "fgsm"}}, r"'attacks' must be a list"),
    "attack entry not a table": ({"attacks": ["fgsm"]}, r"'attacks\[0\]' must be a table"),
    "data not a table": ({"data": "mnist"}, r"'data' must be a table"),
    "bool for int": ({"seed": True}, r"'seed' must be an int"),
    "bool for nested int": ({"maps": {"window": False}}, r"'maps\.window' must be an int"),
    "bool for float": ({"regions": {"q_roi": True}}, r"'regions\.q_roi' must be a number"),
    "string for float": ({"model": {"training": {"lr": "0.1"}}}, r"'model\.training\.lr' must be a number"),
    "negative seed": ({"seed": -1}, r"'seed'.*Got -1"),
    "q_roi 0": ({"regions": {"q_roi": 0}}, r"'regions\.q_roi'.*\(0, 1\].*Got 0"),
    "q_roi 1.5": ({"regions": {"q_roi": 1.5}}, r"'regions\.q_roi'.*Got 1\.5"),
    "q_roa nan": ({"regions": {"q_roa": float("nan")}}, r"'regions\.q_roa'"),
    "stride 0": ({"maps": {"stride": 0}}, r"'maps\.stride'.*Got 0"),
    "stride > window": ({"maps": {"window": 4, "stride": 5}}, r"maps\.stride \(5\).*maps\.window \(4\)"),
    "test_fraction 1": ({"data": {"test_fraction": 1.0}}, r"'data\.test_fraction'"),
    "oracle_q 0": ({"defence": {"oracle_q": [0.1, 0.0]}}, r"'defence\.oracle_q'"),
    "unknown device": ({"device": "tpu"}, r"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got 'tpu'"),
    "unknown arch": ({"model": {"arch": "resnet"}}, r"'model\.arch' must be one of .*mnist-cnn"),
    "unknown importance": ({"maps": {"importance": "shap"}}, r"'maps\.importance'"),
    "unknown threshold": ({"regions": {"threshold": "median"}}, r"'regions\.threshold' must be one of 'top_q', 'otsu'"),
    "unknown attack name": (
        {"attacks": [{"name": "pgd"}]},
        r"unknown attack 'pgd'.*fgsm, .*pgd-l2, pgd-linf",
    ),
    "attack without name": ({"attacks": [{"eps": 0.1}]}, r"attacks: an attack entry needs a 'name'"),
    "unknown attack hyperparameter": (
        {"attacks": [{"name": "fgsm", "eps": 0.1, "steps": 3}]},
        r"'fgsm'.*'steps'",
    ),
    "negative eps": ({"attacks": [{"name": "fgsm", "eps": -0.1}]}, r"'eps'.*Got -0\.1"),
    "linf eps 2.0": ({"attacks": [{"name": "pgd-linf", "eps": 2.0}]}, r"'eps' parameter of LinfPGD.*\(0, 1\].*2\.0"),
    "fractional steps": ({"attacks": [{"name": "pgd-l2", "steps": 2.5}]}, r"'steps'.*Got 2\.5"),
    "empty attacks": ({"attacks": []}, r"'attacks' is empty"),
    "duplicate labels": (
        {"attacks": [{"name": "fgsm"}, {"name": "pgd-linf", "label": "fgsm"}]},
        r"two attacks share a name.*'label'",
    ),
    "duplicate names": ({"attacks": [{"name": "fgsm"}, {"name": "fgsm", "eps": 0.3}]}, r"share a name"),
    "unknown fill": ({"defence": {"fill": "plaid"}}, r"'defence\.fill' must be one of blur, lowrank, mean.*'plaid'"),
    "reserved attack label": ({"attacks": [{"name": "fgsm", "label": "clean"}]}, r"label 'clean' is reserved"),
    "label all": ({"attacks": [{"name": "fgsm", "label": "all"}]}, r"label 'all' is reserved"),
    "steps above the limit": (
        {"attacks": [{"name": "pgd-linf", "steps": 10**9}]},
        r"attacks\[0\]\.steps = 1000000000 is above limits\.max_steps \(10000\)",
    ),
    "unknown defence": (
        {"evaluation": {"defences": ["global", "moat"]}},
        r"evaluation\.defences: unknown defence 'moat'",
    ),
    "bad scope parameter": ({"evaluation": {"defences": [{"name": "per_input", "probe_eps": 2}]}}, r"probe_eps"),
    "run_defences not defined": ({"evaluation": {"run_defences": ["nope"]}}, r"run_defences names 'nope'"),
    "unknown sweep scope": (
        {"evaluation": {"sweep_scopes": ["median"]}},
        r"sweep_scopes: 'median' is not a mask scope",
    ),
    "patch adaptive not defined": ({"patches": {"adaptive": ["x"]}}, r"patches\.adaptive names 'x'"),
    "literal normalization": (
        {"model": {"normalization": "mnist"}},
        r"'model\.normalization' must be one of 'none', 'cifar10', 'imagenet'",
    ),
    "no gradient attack to evaluate": (
        {"evaluation": {"attacks": [{"name": "square"}]}},
        r"evaluation\.attacks.*gradient attack",
    ),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_config_raises(case):
    data, match = BAD[case]
    with pytest.raises(InputError, match=match):
        config_from_dict(data)


def test_every_error_is_reported_at_once_one_line_each():
    with pytest.raises(InputError) as info:
        config_from_dict(
            {"seed": -1, "sede": 2, "regions": {"q_roa": 2.0}, "attacks": [{"name": "fgsm", "label": "all"}]}
        )
    lines = str(info.value).splitlines()
    assert len(lines) == 4, lines
    assert any("unknown key 'sede'" in line for line in lines)
    assert any("'seed'" in line for line in lines) and any("regions.q_roa" in line for line in lines)
    assert any("reserved" in line for line in lines)


def test_printed_config_reads_back_equal(tmp_path):
    """`roiroa config` prints TOML that load_config reads back to the same config (defaults and custom)."""
    for config in (Config(), config_from_dict(CUSTOM), quick(Config())):
        path = tmp_path / "c.toml"
        path.write_text(to_toml(config.to_dict()))
        assert load_config(path) == config


def test_quick_overlays_every_command():
    q = quick(Config())
    assert q.evaluation.n_test == 40 and q.patches.n_test == 50
    steps = {a["name"]: a.get("steps", a.get("queries")) for a in q.evaluation.attacks}
    assert steps == {"pgd-linf": 5, "square": 20}
    assert all(a["steps"] <= 20 for a in q.patches.attacks)


def test_duplicate_labels_fixed_by_label():
    c = config_from_dict({"attacks": [{"name": "fgsm"}, {"name": "fgsm", "eps": 0.3, "label": "fgsm-0.3"}]})
    assert len(c.attacks) == 2


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("bad.json", '{"seed": 1,}', r"bad\.json is not valid JSON"),
        ("bad.toml", "seed = = 1\n", r"bad\.toml is not valid TOML"),
        ("list.json", "[1, 2]", "table of settings at the top level"),
        ("c.toml", '[data]\nsorce = "mnist"\n', r"unknown key 'data\.sorce'.*source"),
    ],
)
def test_bad_config_file_raises(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError, match=match):
        load_config(path)


def test_missing_file_raises(tmp_path):
    with pytest.raises(InputError, match=r"cannot read config .*missing\.json"):
        load_config(tmp_path / "missing.json")


def test_unreadable_file_raises(tmp_path):
    # a folder cannot be read as a file, even by root
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    with pytest.raises(InputError, match=r"cannot read config .*folder\.toml"):
        load_config(folder)


def test_permission_denied_raises(tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("running as root: file permissions are not enforced")
    path = tmp_path / "secret.json"
    path.write_text("{}")
    path.chmod(0)
    try:
        with pytest.raises(InputError, match=r"cannot read config .*secret\.json"):
            load_config(path)
    finally:
        path.chmod(0o600)


def test_attack_name_of_wrong_type_raises_input_error():
    with pytest.raises(InputError, match="attack"):
        config_from_dict({"attacks": [{"name": ["pgd-linf"]}]})


def test_attack_random_start_must_be_bool():
    with pytest.raises(InputError, match="random_start"):
        config_from_dict({"attacks": [{"name": "pgd-linf", "random_start": "false"}]})
