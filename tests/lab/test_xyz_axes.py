"""X/Y/Z axis parsing and the cell plan, against A1111's documented value forms (xyz_grid.py)."""

from __future__ import annotations

import random

import pytest

from sdstudio.config import GenerationRequest, HiresSettings
from sdstudio.errors import SDStudioError
from sdstudio.pipelines.scripts import axes as ax
from sdstudio.pipelines.scripts import xyz_grid as xyz


def values(label: str, text: str, kind: str = "txt2img", **kw) -> list:
    return ax.parse_values(ax.find_axis(label, kind), text, **kw)


@pytest.mark.parametrize(
    "label, text, expected",
    [
        ("Steps", "1-5", [1, 2, 3, 4, 5]),
        ("Steps", "1-5 (+2)", [1, 3, 5]),
        ("Steps", "10-1 (-3)", [10, 7, 4]),
        ("Steps", "1-10 [5]", [1, 3, 5, 7, 10]),  # np.linspace, int-truncated
        ("Steps", "[1,3,7]", [1, 3, 7]),
        ("Seed", "1, 5, 100-102", [1, 5, 100, 101, 102]),
        ("CFG Scale", "1-2 (+0.5)", [1.0, 1.5, 2.0]),
        ("CFG Scale", "0-1 [3]", [0.0, 0.5, 1.0]),
        ("CFG Scale", "3, 7.5", [3.0, 7.5]),
        ("Sampler", "Euler a, DPM++ 2M, k_lms", ["Euler a", "DPM++ 2M", "k_lms"]),
        ("Prompt S/R", 'cat,"dog, big",fox', ["cat", "dog, big", "fox"]),  # CSV quoting as csv.reader
        ("Schedule type", "Karras,Exponential", ["Karras", "Exponential"]),
    ],
)
def test_value_forms_match_a1111(label, text, expected):
    assert values(label, text, csv_mode=True) == expected


def test_dropdown_values_are_used_for_choice_axes_unless_csv_mode():
    sampler = ax.find_axis("Sampler")
    assert ax.parse_values(sampler, "", ["Euler", "DDIM"], csv_mode=False) == ["Euler", "DDIM"]
    assert ax.parse_values(sampler, "LMS", ["Euler"], csv_mode=True) == ["LMS"]
    steps = ax.find_axis("Steps")  # no dropdown in A1111: the text always counts
    assert ax.parse_values(steps, "2,3", ["9"], csv_mode=False) == [2, 3]


def test_prompt_order_gives_permutations():
    assert values("Prompt order", "a, b, c")[:3] == [("a", "b", "c"), ("a", "c", "b"), ("b", "a", "c")]
    assert len(values("Prompt order", "a, b, c")) == 6


def test_axis_indexes_follow_a1111_filtered_lists():
    # txt2img: 0 Nothing, 1 Seed, ..., 6 CFG Scale, 7 Prompt S/R, 9 Sampler (the webuiapi-era indexes)
    t2i = [a.label for a in ax.axis_options("txt2img")]
    i2i = [a.label for a in ax.axis_options("img2img")]
    assert t2i[:11] == ["Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "Hires steps",
                        "CFG Scale", "Prompt S/R", "Prompt order", "Sampler", "Hires sampler"]  # fmt: skip
    assert i2i[:10] == ["Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "CFG Scale",
                        "Image CFG Scale", "Prompt S/R", "Prompt order", "Sampler"]  # fmt: skip
    assert (
        ax.find_axis(7, "txt2img").label == "Prompt S/R" and ax.find_axis(7, "img2img").label == "Prompt S/R"
    )
    assert ax.find_axis("cfg scale").label == "CFG Scale"


@pytest.mark.parametrize(
    "label, text, field",
    [("Steps", "a-b", "script_args"), ("Sigma Churn", "1,2", "script_args"), ("Bogus", "1", "script_args")],
)
def test_bad_axes_are_clear_errors(label, text, field):
    base = ax.Cell(GenerationRequest(prompt="x", seed=1))
    with pytest.raises(SDStudioError) as err:
        axis = ax.find_axis(label)
        ax.confirm(axis, ax.parse_values(axis, text), base)
    assert err.value.field == field


def test_unknown_sampler_and_missing_sr_word_fail_before_work():
    base = GenerationRequest(prompt="a cat", seed=1)
    for axis, text in (("Sampler", "Euler, Nope"), ("Prompt S/R", "dog, fox")):
        opts = xyz.XYZOptions(
            x=xyz.AxisChoice(ax.find_axis(axis), text), y=xyz.nothing(), z=xyz.nothing(), csv_mode=True
        )
        with pytest.raises(SDStudioError):
            xyz.plan_xyz(base, opts)


def test_plan_applies_axes_in_a1111_index_order():
    base = GenerationRequest(prompt="a cat in a hat", seed=10, width=64, height=64)
    opts = xyz.options_from_args([1, "1-3", [], 7, "cat, dog", [], 6, "3, 7", []])
    plan = xyz.plan_xyz(base, opts)
    assert plan.shape == (3, 2, 2)
    assert plan.labels == (
        ["Seed: 1", "Seed: 2", "Seed: 3"],
        ["cat", "dog"],
        ["CFG Scale: 3.0", "CFG Scale: 7.0"],
    )
    c = plan.cells[2 + 1 * 3 + 1 * 6]  # ix=2, iy=1, iz=1
    assert (c.request.seed, c.request.prompt, c.request.cfg_scale) == (3, "a dog in a hat", 7.0)


def test_random_seed_values_are_fixed_once_and_vary_seeds_offsets():
    base = GenerationRequest(prompt="x", seed=-1)
    plan = xyz.plan_xyz(
        base, xyz.options_from_args([6, "3,7", [], 0, "", [], 0, "", []]), rng=random.Random(0)
    )
    assert plan.cells[0].request.seed == plan.cells[1].request.seed >= 0  # one seed for the whole grid
    varied = xyz.options_from_args([6, "3,7", [], 0, "", [], 0, "", [], True, False, False, False, True])
    plan = xyz.plan_xyz(base.replace(seed=5), varied)
    assert [c.request.seed for c in plan.cells] == [5, 6]


def test_batching_groups_consecutive_seeds_and_shares_identical_cells():
    base = GenerationRequest(prompt="x", seed=1)
    cells = [ax.Cell(base.replace(seed=s, cfg_scale=c)) for c in (3.0, 7.0) for s in (1, 2, 3, 9, 2)]
    calls = xyz.batch_groups(cells, max_batch=8)
    shapes = sorted((call.request.cfg_scale, call.request.seed, call.request.batch_size) for call, _ in calls)
    assert shapes == [(3.0, 1, 3), (3.0, 9, 1), (7.0, 1, 3), (7.0, 9, 1)]
    for call, targets in calls:
        if call.request.batch_size == 3:
            assert [sorted(cells[i].request.seed for i in t) for t in targets] == [[1], [2, 2], [3]]
    assert len(xyz.batch_groups(cells, max_batch=2)) == 6  # runs are cut at max_batch
    variation = [ax.Cell(base.replace(seed=s, subseed_strength=0.5)) for s in (1, 2)]
    assert len(xyz.batch_groups(variation)) == 2  # image i would get subseed + i: never batched


def test_hires_axes_need_hires_and_change_it():
    base = GenerationRequest(prompt="x", seed=1, hires=HiresSettings())
    opts = xyz.options_from_args([5, "2,4", [], 0, "", [], 0, "", []])  # Hires steps
    plan = xyz.plan_xyz(base, opts)
    assert [c.request.hires.second_pass_steps for c in plan.cells] == [2, 4]
    with pytest.raises(SDStudioError, match="hires"):
        xyz.plan_xyz(base.replace(hires=None), opts)
