"""``sdstudio lab xyz`` / ``lab matrix`` end to end on a tiny diffusers folder."""

from __future__ import annotations

from PIL import Image

from sdstudio.cli import main

FAST = ["--width", "32", "--height", "32", "--steps", "2", "--sampler", "Euler", "--precision", "fp32"]


def test_lab_xyz_writes_cells_and_one_grid_per_z(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main(["lab", "xyz", "a cat", "--model", str(tiny_dir), *FAST, "--seed", "3",
               "--x-type", "Steps", "--x-values", "1-2", "--z-type", "CFG Scale", "--z-values", "3,7"])  # fmt: skip
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    cells = [line.split(" ", 1)[1] for line in lines if line.startswith("cell ")]
    grids = [line.split(" ", 1)[1] for line in lines if line.startswith("grid ")]
    assert len(cells) == 4 and len(grids) == 1 + 2  # the combined grid + one per Z value
    assert all("/txt2img-images/" in c for c in cells) and all("/txt2img-grids/" in g for g in grids)
    texts = [Image.open(tmp_path / c).info["parameters"] for c in cells]
    assert ["Steps: 1," in texts[0], "Steps: 2," in texts[1], "CFG scale: 7," in texts[3]] == [True] * 3
    sub = Image.open(tmp_path / grids[1])
    assert (
        sub.width == 2 * 32 + 0 and "Script: X/Y/Z plot" in sub.info["parameters"]
    )  # no Y labels: no left band


def test_lab_matrix(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main(["lab", "matrix", "a cat|hat", "--model", str(tiny_dir), *FAST, "--seed", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert out.count("cell outputs/txt2img-images/") == 2 and out.count("grid outputs/txt2img-grids/") == 1
    from sdstudio.runtime.history import HistoryStore

    store = HistoryStore(tmp_path / "outputs" / "history.sqlite3", tmp_path / "outputs")
    try:  # cells and the grid are recorded like any CLI image (the image service's one path)
        assert store.query()[1] == 3
    finally:
        store.close()


def test_lab_xyz_bad_axis_is_a_clear_error(tiny_dir, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    rc = main(
        ["lab", "xyz", "a cat", "--model", str(tiny_dir), *FAST, "--x-type", "Sigma Churn", "--x-values", "1"]
    )
    assert rc == 2 and "not supported" in capsys.readouterr().err
