"""Text encoders freed between jobs (``backends.idle_weights``): freed, read back bit for bit, never
freed while held, and never read back from a checkpoint that changed meanwhile."""

from __future__ import annotations

import pytest
import torch

from sdstudio.backends.idle_weights import IdleWeights, free_parameters, held_weights
from sdstudio.errors import SDStudioError
from sdstudio.models.tiny import tiny_sd1
from sdstudio.prompts.encode import encode_prompts


def copies(modules) -> list[dict[str, torch.Tensor]]:
    return [{k: v.clone() for k, v in m.state_dict().items()} for m in modules]


@pytest.fixture
def model():
    m = tiny_sd1()
    originals = copies(m.text_encoders)
    m.idle_text_encoders = IdleWeights(m.text_encoders, lambda: copies_of(originals), "text encoder")
    return m


def copies_of(state_dicts):
    return [{k: v.clone() for k, v in sd.items()} for sd in state_dicts]


def test_freed_weights_read_back_bit_for_bit_and_encode_the_same(model):
    before = encode_prompts(model, ["a red cube"]).context
    originals = copies(model.text_encoders)
    assert model.idle_text_encoders.release()
    encoder = model.text_encoders[0]
    assert all(p.is_meta for p in encoder.parameters())
    assert all(not b.is_meta for b in encoder.buffers())  # position_ids: in no state dict, so they stay
    after = encode_prompts(model, ["a red cube"]).context  # reads them back first
    assert not model.idle_text_encoders.released
    assert torch.equal(before, after)
    for sd, original in zip(copies(model.text_encoders), originals, strict=True):
        assert sd.keys() == original.keys()
        assert all(torch.equal(sd[k], original[k]) for k in sd)


def test_held_weights_are_never_freed(model):
    idle = model.idle_text_encoders
    with held_weights(idle):
        assert not idle.release()
        assert not any(p.is_meta for p in model.text_encoders[0].parameters())
    assert idle.release() and not idle.release()  # freed once; a second release is a no-op
    with held_weights(None):  # a model that frees nothing
        pass


def test_a_changed_checkpoint_is_an_error_and_stays_freed(model):
    idle = model.idle_text_encoders
    changed = copies(model.text_encoders)
    for sd in changed:
        for k, v in sd.items():
            if v.is_floating_point():
                sd[k] = v + 1
    idle.reload = lambda: changed
    idle.release()
    with pytest.raises(SDStudioError, match="changed on disk"):
        encode_prompts(model, ["a red cube"])
    assert idle.released and all(p.is_meta for p in model.text_encoders[0].parameters())


def test_shared_parameters_stay_shared():
    layer = torch.nn.Linear(3, 3)
    net = torch.nn.Sequential(layer, torch.nn.Linear(3, 3))
    net[1].weight = layer.weight  # tied
    free_parameters(net)
    assert net[0].weight is net[1].weight and net[0].weight.is_meta and net[0].weight.shape == (3, 3)
