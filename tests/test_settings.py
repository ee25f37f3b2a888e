"""dns.json beside a model supplies defaults; relative paths resolve against its folder."""

from __future__ import annotations

import json

import pytest

from onnx_dns.errors import DnsError
from onnx_dns.settings import load_settings


def test_no_settings_file_gives_nothing(tmp_path):
    assert load_settings(tmp_path / "model.onnx") == {}


def test_relative_data_paths_resolve_against_the_settings_folder(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "dns.json").write_text(json.dumps({"data": "../data", "val": "val.npz", "iterations": 5,
                                                  "comment": "ignored"}))
    settings = load_settings(folder / "model.onnx")
    assert settings["data"] == str((tmp_path / "data").resolve())
    assert settings["val"] == str((folder / "val.npz").resolve())
    assert settings["iterations"] == 5
    assert "comment" not in settings


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_bad_settings_file_is_a_clear_error(tmp_path, text):
    (tmp_path / "dns.json").write_text(text)
    with pytest.raises(DnsError, match="dns.json"):
        load_settings(tmp_path / "model.onnx")


def test_command_line_beats_settings_beats_defaults():
    from onnx_dns.options import TrainConfig, merge

    options = merge({"iterations": 7, "lr": None}, {"iterations": 5, "lr": 0.5, "batch_size": 8})
    assert options.train.iterations == 7
    assert options.train.lr == 0.5
    assert options.train.batch_size == 8
    assert options.train.seed == TrainConfig().seed


def test_per_layer_c_on_the_command_line_means_paper_mode():
    from onnx_dns.options import merge

    assert merge({}, {"target": "110x"}).target == 110.0
    paper = merge({"c": {"fc1": 2.0}}, {"target": "110x"})
    assert paper.target is None and paper.c == {"fc1": 2.0}
    assert merge({"c": {"fc1": 2.0}, "target": "50x"}, {}).target == 50.0


@pytest.mark.parametrize("settings, message", [({"iteratons": 5}, "unknown setting 'iteratons'"),
                                               ({"target": "0.5x"}, "at least 1x"),
                                               ({"target": "lots"}, "such as 100x")])
def test_bad_settings_values_are_option_errors(settings, message):
    from onnx_dns.errors import OptionError
    from onnx_dns.options import merge

    with pytest.raises(OptionError, match=message):
        merge({}, settings)


def test_the_api_checks_options_as_the_command_line_does():
    from onnx_dns.errors import OptionError
    from onnx_dns.options import CompressOptions, TrainConfig

    with pytest.raises(OptionError, match="--iterations 0"):
        TrainConfig(iterations=0)
    with pytest.raises(OptionError, match="--sparsity fc1=1.5"):
        CompressOptions(sparsity={"fc1": 1.5})
    with pytest.raises(OptionError, match="--optimizer 'adam'"):
        TrainConfig(optimizer="adam")
    assert CompressOptions(target="4x").target == 4.0


def test_a_bad_value_from_dns_json_says_so():
    from onnx_dns.errors import OptionError
    from onnx_dns.options import merge

    with pytest.raises(OptionError, match=r"--lr -1 \(from dns.json\)"):
        merge({}, {"lr": -1})
    with pytest.raises(OptionError, match=r"--lr -1: "):
        merge({"lr": -1}, {})
