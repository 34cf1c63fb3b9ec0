"""Diffusion generated denoising of target-valued images (Osting & Wang): the projections are the
nearest points on the target set, the energy does not increase and the error falls on every example."""

from __future__ import annotations

import numpy as np
import pytest

from sdstudio.lab import manifold as m


def fibonacci_sphere(n: int) -> np.ndarray:
    """n nearly evenly spread unit vectors (n, 3)."""
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = np.pi * (1 + 5**0.5) * i
    r = np.sqrt(1 - z**2)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], -1)


def test_sphere_projection_is_the_nearest_point_by_brute_force():
    rng = np.random.default_rng(0)
    circle = np.stack([np.cos(t := np.linspace(0, 2 * np.pi, 100_000)), np.sin(t)], -1)
    ball = fibonacci_sphere(100_000)  # spacing about 0.011 rad
    for grid, dim in ((circle, 2), (ball, 3)):
        v = rng.normal(size=(20, dim)) * rng.uniform(0.1, 3, (20, 1))
        p = m.project_sphere(v)
        assert np.abs(np.linalg.norm(p, axis=-1) - 1).max() < 1e-12
        ours = np.linalg.norm(v - p, axis=-1)
        brute = np.linalg.norm(v[:, None] - grid[None], axis=-1).min(1)
        assert np.all(ours <= brute + 1e-12)
        assert np.all(brute - ours < 0.02 * np.linalg.norm(v, axis=-1))  # and the grid gets as close


def test_sphere_projection_of_zero_keeps_the_fallback():
    prev = np.array([[0.0, 1.0, 0.0]])
    assert np.array_equal(m.project_sphere(np.zeros((1, 3)), prev), prev)


@pytest.mark.parametrize("n", [2, 3, 4, 5])
@pytest.mark.parametrize("special", [False, True])
def test_orthogonal_projection_lands_on_o_n_and_so_n(n, special):
    a = np.random.default_rng(n).normal(size=(200, n, n))
    q = m.project_orthogonal(a, special)
    assert np.abs(np.swapaxes(q, -1, -2) @ q - np.eye(n)).max() < 1e-6
    det = np.linalg.det(q)
    if special:
        assert np.abs(det - 1).max() < 1e-6
    else:
        assert np.allclose(np.abs(det), 1) and np.allclose(np.sign(det), np.sign(np.linalg.det(a)))


def _rot2(t):
    return np.stack([np.stack([np.cos(t), -np.sin(t)], -1), np.stack([np.sin(t), np.cos(t)], -1)], -2)


@pytest.mark.parametrize("special", [False, True])
def test_2x2_projection_is_the_nearest_point_by_brute_force(special):
    rotations = _rot2(np.linspace(0, 2 * np.pi, 50_000, endpoint=False))  # all of SO(2)
    group = rotations if special else np.concatenate([rotations, rotations @ np.diag([1.0, -1.0])])
    a = np.random.default_rng(1).normal(size=(30, 2, 2))
    ours = np.linalg.norm(a - m.project_orthogonal(a, special), axis=(-2, -1))
    brute = np.linalg.norm(a[:, None] - group[None], axis=(-2, -1)).min(1)
    assert np.all(ours <= brute + 1e-12) and np.all(brute - ours < 1e-4)


def test_so3_projection_beats_every_sampled_rotation_and_every_nearby_one():
    rng = np.random.default_rng(2)
    q = rng.normal(size=(100_000, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)  # uniform random rotations (quaternions)
    w, x, y, z = q.T
    samples = np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)  # fmt: skip
    for a in rng.normal(size=(8, 3, 3)):  # about half have det < 0: the determinant fix matters
        p = m.project_orthogonal(a, special=True)
        ours = np.linalg.norm(a - p)
        assert ours <= np.linalg.norm(a - samples, axis=(-2, -1)).min() + 1e-12
        nearby = p @ m.rotation_from_axis_angle(rng.normal(0, 0.05, (2000, 3)))
        assert ours <= np.linalg.norm(a - nearby, axis=(-2, -1)).min() + 1e-12


def test_rodrigues_gives_rotations_with_the_right_angle():
    w = np.random.default_rng(3).normal(size=(50, 3))
    r = m.rotation_from_axis_angle(w)
    assert np.abs(np.swapaxes(r, -1, -2) @ r - np.eye(3)).max() < 1e-12
    assert np.allclose(np.linalg.det(r), 1)
    angle = np.linalg.norm(w, axis=1) % (2 * np.pi)
    expected = np.degrees(np.minimum(angle, 2 * np.pi - angle))
    assert np.allclose(m.rotation_angle(np.broadcast_to(np.eye(3), r.shape), r), expected, atol=1e-6)


@pytest.mark.parametrize("name", m.EXAMPLES)
def test_denoising_lowers_the_error_and_never_raises_the_energy(name):
    ex = m.example(name, size=32)
    result = m.denoise(ex.noisy, ex.target, truth=ex.truth)
    e = np.array(result.energy)
    assert np.all(np.diff(e) <= 1e-12 * abs(e[0]))
    assert result.converged
    assert result.error[-1] < 0.6 * result.error[0]  # measured at 32 px: 22->12.5, 25->7.0, 27->10.8 degrees
    on_m = ex.target.project(result.field, result.field)
    assert np.abs(on_m - result.field).max() < 1e-9  # the output is on the target set
    naive = m.blur_project(ex.noisy, ex.target, 1.0)
    assert ex.target.error(naive, ex.truth).mean() < result.error[0]


def test_fixed_boundary_values_give_the_smooth_frame_field_inside():
    """Wang & Osting's boundary-value problem: λ = 0, boundary frames fixed, a rough start inside."""
    n = 24
    yy, xx = np.mgrid[:n, :n].astype(np.float64)
    truth = m.rotation_from_axis_angle(np.stack([0 * xx, 0 * xx, 0.06 * xx + 0.03 * yy], -1))  # harmonic
    fixed = np.ones((n, n), dtype=bool)
    fixed[3:-3, 3:-3] = False
    start = truth @ m.rotation_from_axis_angle(np.random.default_rng(1).normal(0, 0.5, (n, n, 3)))
    target = m.orthogonal(3, special=True)
    result = m.denoise(truth, target, tau=1.0, lam=0.0, fixed=fixed, start=start, truth=truth, tol=1e-8)
    assert result.converged and np.array_equal(result.field[fixed], truth[fixed])
    assert result.error[0] > 20 and result.error[-1] < 0.1  # measured 26.3 -> 0.010 degrees
    e = np.array(result.energy)
    assert np.all(np.diff(e) <= 1e-12 * abs(e[0]))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="example"):
        m.example("torus")
    with pytest.raises(ValueError, match="tau"):
        m.denoise(np.ones((4, 4, 2)), m.sphere(2), tau=0)


@pytest.mark.parametrize("name", m.EXAMPLES)
def test_to_rgb_pictures_are_images(name):
    ex = m.example(name, size=8)
    rgb = m.to_rgb(ex.truth, ex.target)
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8


def test_cli_denoise_manifold_writes_fields_errors_and_json(tmp_path, capsys):
    import json

    from PIL import Image

    from sdstudio.cli import main

    out = tmp_path / "dm"
    assert main(["lab", "denoise-manifold", "--example", "s2", "--size", "24", "--out", str(out)]) == 0
    data = json.loads((out / "denoise.json").read_text())
    assert data["target"] == "S2" and data["size"] == [24, 24] and data["tau"] == 0.5
    assert data["error_denoised"] < data["error_noisy"] == data["error_per_iteration"][0]
    rows = (out / "error.csv").read_text().splitlines()
    assert rows[0] == "iteration,error,energy" and len(rows) == data["iterations"] + 2
    assert Image.open(out / "fields.png").width == 4 * 24 * 3 and (out / "error.png").stat().st_size > 0
    assert "error" in capsys.readouterr().out
    assert main(["lab", "denoise-manifold", "--example", "s1", "--lambda", "-1", "--out", str(out)]) == 2
    assert main(["lab", "denoise-manifold", "--example", "s1", "--size", "4", "--out", str(out)]) == 2
