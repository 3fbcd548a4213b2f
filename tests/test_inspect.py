"""harness.inspect: layers the optimizer treats alike share a row; --all lists every parameter."""

import re

import pytest

from harness.inspect import describe, main


def table(text: str) -> list[dict[str, str]]:
    """The LR table's rows as {column: cell}, cut at the header's column starts (cells may be empty)."""
    header, *lines = text.split("\n\n")[1].splitlines()
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    return [{n: line[a:b].strip() for n, (a, b) in zip(names, bounds, strict=True)} for line in lines]


def test_d12_collapses_to_one_row_per_parameter_kind():
    rows = {r["name"]: r for r in table(describe(["model=d12"]))}
    # d12: 12 layers; value embeddings (and their gates) on the odd layers, as the recipe places them
    c_fc = rows["transformer.h.*.mlp.c_fc.weight"]
    assert (c_fc["layers"], c_fc["shape"], c_fc["multiplier"]) == ("0-11", "3072 x 768", "2")  # the recipe's 2x
    assert rows["transformer.h.*.attn.ve_gate.weight"]["layers"] == "1,3,5,7,9,11"
    assert rows["value_embeds.*.weight"]["layers"] == "1,3,5,7,9,11"
    assert rows["lm_head.weight"]["layers"] == ""
    assert len(rows) == 12  # 2 scalar vectors, wte, 6 block matrices, the gate, lm_head, value embeds


def test_every_row_is_kept_with_all_and_a_layer_that_differs_stays_apart():
    one_off = "mlp_lr.multipliers=[{match:'transformer.h.0.mlp.c_fc.weight',value:3.0}]"
    every = {r["name"]: r for r in table(describe(["model=tiny", "mlp_lr=none", one_off], every_row=True))}
    assert len(every) == 3 + 4 * 6 + 2 + 1 + 2  # tiny: 4 layers, 2 of them with value embeddings
    assert "layers" not in next(iter(every.values()))
    collapsed = {r["name"]: r for r in table(describe(["model=tiny", "mlp_lr=none", one_off]))}
    assert collapsed["transformer.h.0.mlp.c_fc.weight"]["layers"] == ""
    assert collapsed["transformer.h.*.mlp.c_fc.weight"]["layers"] == "1-3"
    # the numbers are the ones --all prints for those parameters
    assert collapsed["transformer.h.0.mlp.c_fc.weight"]["effective_lr"] == "0.06"
    for layer in (1, 2, 3):
        name = f"transformer.h.{layer}.mlp.c_fc.weight"
        assert every[name]["effective_lr"] == collapsed["transformer.h.*.mlp.c_fc.weight"]["effective_lr"] == "0.02"


def test_the_command_takes_all_between_overrides(capsys):
    main(["model=tiny", "--all", "rope=chunk"])
    assert "transformer.h.3.attn.c_q.weight" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--bogus"])
