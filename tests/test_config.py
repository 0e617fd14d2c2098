import pytest

from utils import config


def test_mode_defaults_to_quick_and_reads_the_variable(monkeypatch):
    monkeypatch.delenv("RESNET_MODE", raising=False)
    assert config.mode() == "quick" and config.pick(quick=1, full=2) == 1
    monkeypatch.setenv("RESNET_MODE", "FULL")
    assert config.mode() == "full" and config.pick(quick=1, full=2) == 2
    assert "Mode: full" in config.describe()


def test_bad_mode_names_the_value(monkeypatch):
    monkeypatch.setenv("RESNET_MODE", "fast")
    with pytest.raises(ValueError, match=r"RESNET_MODE='fast' is not a mode; expected one of \('quick', 'full'\)"):
        config.mode()


def test_data_dir_from_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("RESNET_DATA", str(tmp_path / "new" / "folder"))
    assert config.data_dir() == (tmp_path / "new" / "folder").resolve()
    assert config.data_dir().is_dir()
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("RESNET_DATA", str(tmp_path / "file"))
    with pytest.raises(ValueError, match="is not a directory"):
        config.data_dir()
