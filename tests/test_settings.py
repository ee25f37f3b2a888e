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
    (folder / "dns.json").write_text(json.dumps({"data": "../data", "val": "pkg.mod:batches", "iterations": 5,
                                                  "comment": "ignored"}))
    settings = load_settings(folder / "model.onnx")
    assert settings["data"] == str((tmp_path / "data").resolve())
    assert settings["val"] == "pkg.mod:batches"
    assert settings["iterations"] == 5
    assert "comment" not in settings


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_bad_settings_file_is_a_clear_error(tmp_path, text):
    (tmp_path / "dns.json").write_text(text)
    with pytest.raises(DnsError, match="dns.json"):
        load_settings(tmp_path / "model.onnx")
