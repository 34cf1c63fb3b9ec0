"""ICTM segmentation (Wang & Wang 2019; Wang, Li, Wei, Wang 2017): the energy theorem, recovery of a
noisy two-region image, agreement with a brute-force minimiser, and the CLI and API around it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sdstudio.lab import ictm
from sdstudio.lab.heat import heat_convolve


def two_regions(size: int = 64, sigma: float = 0.3, seed: int = 0):
    """A disc and a bar (0.7) on a background (0.3) with Gaussian noise; returns (image, truth)."""
    yy, xx = np.mgrid[:size, :size]
    truth = ((yy - size / 2) ** 2 + (xx - size * 0.4) ** 2 < (size * 0.3) ** 2) | (
        (xx > size * 0.75) & (yy > size * 0.2) & (yy < size * 0.6)
    )
    rng = np.random.default_rng(seed)
    return np.where(truth, 0.7, 0.3) + rng.normal(0, sigma, truth.shape), truth


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("boundary", ["neumann", "periodic"])
def test_heat_kernel_keeps_constants_and_is_symmetric_positive_definite(boundary):
    n = 5 * 6
    g = heat_convolve(np.eye(n).reshape(n, 5, 6), 1.5, boundary).reshape(n, n)  # G as a matrix
    assert np.allclose(g, g.T, atol=1e-12)
    assert np.linalg.eigvalsh(g).min() > 0
    assert np.allclose(heat_convolve(np.ones((5, 6)), 1.5, boundary), 1)


@pytest.mark.parametrize(
    "phases, channels, init, boundary",
    [(2, 1, "quantile", "neumann"), (3, 3, "quantile", "periodic"), (4, 3, "box", "neumann"),
     (8, 1, "quantile", "neumann")],
)  # fmt: skip
def test_energy_never_increases_on_random_images(phases, channels, init, boundary):
    rng = np.random.default_rng(phases * 10 + channels)
    for trial in range(3):
        image = rng.random((24, 20, channels))
        tau, lam = float(rng.uniform(0.5, 6)), float(rng.uniform(0.05, 2))
        result = ictm.segment(image, phases, tau, lam, max_iter=200, init=init, boundary=boundary)
        e = np.array(result.energy)
        assert len(e) == result.iterations + 1
        assert np.all(np.diff(e) <= 1e-12 * abs(e[0])), (trial, tau, lam, np.diff(e).max())
        assert result.converged  # finitely many labelings and a strict decrease: a fixed point
        assert math.isclose(
            e[-1], ictm.energy(image, result.labels, phases, tau, lam, boundary), rel_tol=1e-12
        )


def test_recovers_a_noisy_two_region_image():
    image, truth = two_regions(64, sigma=0.3)
    result = ictm.segment(image, 2, tau=4.0, lam=1.0)
    found = result.labels == int(np.argmax(result.means[:, 0]))
    assert result.converged and result.iterations < 50
    assert iou(found, truth) > 0.9  # 0.914 measured (seed 0; 0.908-0.928 over seeds 0-4)
    naive = image > 0.5  # thresholding alone (lambda = 0) keeps the noise
    assert iou(naive, truth) < 0.8
    assert np.allclose(sorted(result.means[:, 0]), [0.3, 0.7], atol=0.03)


def brute_force_energies(f: np.ndarray, tau: float, lam: float):
    """E(u, c(u)) per pixel of every two-phase labeling of a tiny image, in matrix form (G as a matrix)."""
    h, w = f.shape
    n = h * w
    g = heat_convolve(np.eye(n).reshape(n, h, w), tau).reshape(n, n)
    u = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(np.float64)  # (2^n, n): all labelings
    fv = f.ravel()

    def data(v):
        count = v.sum(1)
        c = (v @ fv) / np.maximum(count, 1)
        return (v * (fv[None] - c[:, None]) ** 2).sum(1)

    length = np.einsum("bi,ij,bj->b", u, g, 1 - u)
    return (data(u) + data(1 - u) + lam * math.sqrt(math.pi / tau) * length) / n, u.astype(np.int64)


TINY = np.array([[0.2, 0.25, 0.7, 0.8], [0.3, 0.6, 0.75, 0.7], [0.2, 0.3, 0.8, 0.2], [0.25, 0.2, 0.7, 0.75]])


@pytest.mark.parametrize("tau, lam", [(0.5, 0.05), (1.0, 0.1)])
def test_agrees_with_brute_force_minimiser_on_4x4(tau, lam):
    energies, labelings = brute_force_energies(TINY, tau, lam)
    best = labelings[energies.argmin()].reshape(4, 4)
    result = ictm.segment(TINY, 2, tau, lam)
    assert result.converged
    assert math.isclose(result.energy[-1], energies.min(), rel_tol=1e-12)
    assert np.array_equal(result.labels, best) or np.array_equal(result.labels, 1 - best)
    # the module's energy is the brute force's, labeling by labeling
    for i in np.random.default_rng(0).choice(len(labelings), 50, replace=False):
        ours = ictm.energy(TINY, labelings[i].reshape(4, 4), 2, tau, lam)
        assert math.isclose(ours, energies[i], rel_tol=1e-12)


def test_ictm_is_local_a_strong_length_term_can_leave_it_above_the_global_minimum():
    """ICTM descends to a fixed point, not necessarily the global minimiser (here: one region)."""
    energies, _ = brute_force_energies(TINY, 1.0, 0.3)
    result = ictm.segment(TINY, 2, 1.0, 0.3)
    assert result.converged and result.energy[-1] >= energies.min() - 1e-15
    assert result.energy[-1] <= result.energy[0]


def test_multiphase_recovers_four_grey_levels():
    rng = np.random.default_rng(3)
    truth = np.zeros((48, 48), dtype=np.int64)
    truth[:, 24:] = 1
    truth[24:, :24] = 2
    truth[30:44, 30:44] = 3
    image = np.array([0.1, 0.4, 0.65, 0.9])[truth] + rng.normal(0, 0.1, truth.shape)
    result = ictm.segment(image, 4, tau=2.0, lam=0.5)
    order = np.argsort(result.means[:, 0])  # region k of ours -> its grey level's rank
    rank = np.empty(4, dtype=np.int64)
    rank[order] = np.arange(4)
    assert (rank[result.labels] == truth).mean() > 0.98


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="phases"):
        ictm.segment(np.zeros((8, 8)), 9)
    with pytest.raises(ValueError, match="tau"):
        ictm.segment(np.zeros((8, 8)), 2, tau=0)
    with pytest.raises(ValueError, match="init"):
        ictm.segment(np.zeros((8, 8)), 2, init="random")


# --- CLI and API ----------------------------------------------------------------------------------
def _png(array: np.ndarray, path):
    from PIL import Image

    Image.fromarray((np.clip(array, 0, 1) * 255).astype(np.uint8)).save(path)
    return path


def test_cli_segment_writes_regions_energy_and_animation(tmp_path):
    import json

    from PIL import Image

    from sdstudio.cli import main

    image, truth = two_regions(48, sigma=0.25)
    src = _png(image, tmp_path / "in.png")
    out = tmp_path / "seg"
    assert (
        main(["lab", "segment", str(src), "--phases", "2", "--tau", "4", "--lambda", "1", "--out", str(out)])
        == 0
    )
    summary = json.loads((out / "segment.json").read_text())
    assert summary["converged"] and summary["phases"] == 2 and summary["lambda"] == 1.0
    rows = (out / "energy.csv").read_text().splitlines()
    assert rows[0] == "iteration,energy" and len(rows) == summary["iterations"] + 2
    energy = [float(r.split(",")[1]) for r in rows[1:]]
    assert energy == sorted(energy, reverse=True)
    labels = np.asarray(Image.open(out / "labels.png"))
    bright = labels == (255 if summary["means"][1][0] > summary["means"][0][0] else 0)
    assert iou(bright, truth) > 0.9
    gif = Image.open(out / "iterations.gif")
    assert gif.n_frames == summary["iterations"] + 1 and gif.width == 2 * 48 * 2
    assert Image.open(out / "regions.png").size == (48, 48) and (out / "energy.png").stat().st_size > 0


@pytest.mark.parametrize(
    "argv, field",
    [(["--phases", "9"], "phases"), (["--tau", "0"], "tau"), (["--max-iter", "501"], "max_iter")],
)
def test_cli_segment_rejects_bad_arguments(tmp_path, capsys, argv, field):
    from sdstudio.cli import main

    src = _png(np.zeros((8, 8)), tmp_path / "in.png")
    assert main(["lab", "segment", str(src), "--out", str(tmp_path / "o"), *argv]) == 2
    assert field.replace("_", "-") in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_segment_rejects_missing_and_non_images(tmp_path, capsys):
    from sdstudio.cli import main

    (tmp_path / "text.png").write_text("not an image")
    for name, message in (("missing.png", "image not found"), ("text.png", "not an image file")):
        assert main(["lab", "segment", str(tmp_path / name), "--out", str(tmp_path / "o")]) == 2
        assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from fastapi.testclient import TestClient

    from sdstudio.api import ServerSettings, create_app
    from sdstudio.lab.routes import router
    from tests.server.conftest import TEST_HOSTS

    root = tmp_path_factory.mktemp("lab-segment")
    settings = ServerSettings(allowed_hosts=TEST_HOSTS, outdir=root / "outputs", models_dir=root / "models")
    app = create_app(settings, routers=[router])
    with TestClient(app) as c:
        yield c
    app.state.studio.stop()


def test_api_segment_returns_regions_labels_and_energy(client):
    from PIL import Image

    from tests.server.conftest import decode_png, png_b64

    image, truth = two_regions(48, sigma=0.25)
    picture = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8))
    r = client.post("/api/lab/segment", json={"image": png_b64(picture), "phases": 2, "lambda": 1.0})
    assert r.status_code == 200, r.text
    body = r.json()
    info = body["info"]
    assert body["labels"] == ["boundaries", "regions"] and info["lambda"] == 1.0 and info["converged"]
    assert len(info["energy"]) == info["iterations"] + 1
    assert all(b <= a for a, b in zip(info["energy"], info["energy"][1:]))
    labels = np.asarray(decode_png(info["label_map"]))
    assert iou(labels == int(np.argmax(np.array(info["means"])[:, 0])), truth) > 0.9
    assert decode_png(body["image"]).width == 2 * 48


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"phases": 9}, "phases"),
        ({"phases": 1}, "phases"),
        ({"max_iter": 501}, "max_iter"),
        ({"tau": 0}, "tau"),
        ({"lambda": -1}, "lambda"),
        ({"size": 4096}, "size"),
        ({"size": 512, "phases": 8, "max_iter": 500}, "max_iter"),  # over the work budget
        ({"image": "not base64!!"}, "image"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_api_segment_rejects_bad_input_with_422(client, payload, field):
    from PIL import Image

    from tests.server.conftest import png_b64

    body = {"image": png_b64(Image.new("RGB", (16, 16)))} | payload
    r = client.post("/api/lab/segment", json=body)
    assert r.status_code == 422, r.text
    assert field in r.text
