"""Every benchmark family behind `python -m compressops bench <family>` parses its command line.

The benchmarks themselves run for minutes (make bench); this only catches a broken entry point or
argparse help text, which otherwise surfaces when someone first asks for --help.
"""

import importlib

import pytest

FAMILIES = {
    "int8": "compressops.bench.int8_linear",
    "int4": "compressops.bench.int4_linear",
    "sparse": "compressops.bench.sparse",
    "pq": "compressops.bench.pq_linear",
    "binary": "compressops.bench.binary_conv",
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_help_exits_cleanly(family, capsys):
    module = importlib.import_module(FAMILIES[family])
    with pytest.raises(SystemExit) as exc:
        module.main(["--help"])
    assert exc.value.code == 0
    assert "--quick" in capsys.readouterr().out


def test_every_family_is_listed_by_the_cli():
    import compressops.__main__ as cli
    import inspect

    src = inspect.getsource(cli)
    for module in FAMILIES.values():
        assert f'"{module}"' in src
