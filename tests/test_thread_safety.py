"""Every compressed module gives the same answer when called from several Python threads at once
(inference servers share one model between request threads)."""

import threading

import pytest
import torch

from .families import EXAMPLES, convert_example, tiny_input


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_concurrent_forward_matches_serial(name):
    kind = EXAMPLES[name][1]
    model = convert_example(name)
    inputs = [tiny_input(kind, b) for b in ((1, 3, 9, 17) if kind == "linear" else (1, 2, 3, 1))]
    with torch.inference_mode():
        expected = [model(x) for x in inputs]
    results, errors = {}, []

    def work(i):
        try:
            with torch.inference_mode():
                for _ in range(5):
                    for j, x in enumerate(inputs):
                        results[(i, j)] = model(x)
                        assert torch.equal(results[(i, j)], expected[j])
        except Exception as e:  # surfaced below; an exception in a thread would otherwise vanish
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert len(results) == 4 * len(inputs)
