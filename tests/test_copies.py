"""Every family's converted model survives pickle, torch.save of the whole module and copy.deepcopy
(issue 19: `Can't pickle local object` for 5 of 6 families), with the same outputs and no shared storage."""

import copy
import io
import pickle

import pytest
import torch

import compressops as co

from .families import EXAMPLES, convert_example, tiny_input


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_pickle_torch_save_and_deepcopy_give_the_same_model(name):
    model = convert_example(name)
    x = tiny_input(EXAMPLES[name][1])
    with torch.no_grad():
        want = model(x)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    copies = [pickle.loads(pickle.dumps(model)), torch.load(buf, weights_only=False), copy.deepcopy(model)]
    for other in copies:
        assert [type(m) for m in other.modules()] == [type(m) for m in model.modules()]
        with torch.no_grad():
            assert torch.equal(other(x), want)
        ours = {b.untyped_storage().data_ptr() for b in model.buffers() if b.numel()}
        assert not any(b.untyped_storage().data_ptr() in ours for b in other.buffers() if b.numel())
    assert any(isinstance(m, co.configs.compressed_types()) for m in copies[0].modules())
