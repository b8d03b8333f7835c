"""benchmarks.speed: the smoke run's table, the reference rows' meta-gradients, the preset reading."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from benchmarks.speed import cli, peers, reference
from benchmarks.speed.presets import Inner, Setting, inner_settings, preset_settings
from lightning_meta.config import load_config
from lightning_meta.data.episode import Episode
from lightning_meta.models import Conv4


def _number(cell: str) -> float:
    return float(cell.strip().strip("*").rstrip("×"))


def _table(text: str, title: str) -> tuple[list[str], list[list[str]]]:
    """Header and body rows of the Markdown table that follows the line containing `title`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if title in line)
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip():
            if rows:
                break
            continue
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows[0], rows[2:]


def test_quick_run_prints_a_well_formed_table(omniglot_root, capsys):
    results = cli.main(["--quick", "--algorithms", "fomaml", "--root", str(omniglot_root)])
    out = capsys.readouterr().out

    head, body = _table(out, "ms per meta-iteration")
    for column in ("(a) lightning_meta", "(b) plain loop", "(c) torch.func/vmap", "(d) floor",
                   "(b)/(a)", "(a)/(c)", "(a)/(d)", "fastest of (b)+peers/(a)"):  # fmt: skip
        assert column in head
    assert len(body) == 1 and body[0][0].startswith("fomaml_omniglot_5w1s (2 tasks")
    row = dict(zip(head, body[0], strict=True))
    for column in head[1:]:
        assert _number(row[column]) > 0, (column, row[column])

    head, body = _table(out, "peak tensor memory")
    assert len(body) == 1 and body[0][0] == "fomaml_omniglot_5w1s"
    assert all(_number(cell) >= 0 for cell in body[0][1:])

    head, body = _table(out, "Episode sampling")
    assert len(body) == 1 and body[0][:2] == ["fomaml_omniglot_5w1s", "1"]
    assert all(_number(cell) > 0 for cell in body[0][2:])

    rows = results[1]["fomaml_omniglot_5w1s"]["rows"]
    assert {"a", "b", "c", "d"} <= set(rows)
    assert all(rows[r]["ms"] > 0 for r in rows)


CONV_BIASES = {f"features.{3 * i}.bias" for i in range(4)}


def _meta_batch(tasks: int = 3, ways: int = 3, shots: int = 2, queries: int = 2, size: int = 8) -> Episode:
    g = torch.Generator().manual_seed(0)
    labels = lambda k: torch.stack([torch.randperm(ways * k, generator=g) % ways for _ in range(tasks)])
    return Episode(
        torch.rand(tasks, ways * shots, 1, size, size, generator=g, dtype=torch.float64),
        labels(shots),
        torch.rand(tasks, ways * queries, 1, size, size, generator=g, dtype=torch.float64),
        labels(queries),
    )


def _setting(algorithm: str, steps=2, lr=0.4, batch_size=None, optimizer="sgd"):
    inner = Inner(steps, lr, batch_size, optimizer)
    return Setting(algorithm, inner, lr=1e-3, optimizer="adam", lam=2.0, cg_steps=3)


@pytest.mark.parametrize(
    "algorithm, inner",
    [
        ("fomaml", {}),
        ("maml", {}),
        ("maml", dict(steps=3, lr=0.1, batch_size=4)),
        ("reptile", dict(steps=3, lr=0.01, batch_size=4, optimizer="adam")),
        ("imaml", dict(steps=3, lr=0.1)),
    ],
)
def test_plain_loop_and_torch_func_rows_compute_the_same_meta_gradient(algorithm, inner):
    """(b) and (c) agree in float64 on one meta-batch, so neither reference row skips work the other does."""
    torch.manual_seed(0)
    model = Conv4(out_features=3, hidden=4, image_size=8).double()
    s, batch = _setting(algorithm, **inner), _meta_batch()
    plain = reference.plain_meta_grad(s, model, batch)
    func = reference.func_meta_grad(s, model, batch)
    assert plain.keys() == func.keys() == dict(model.named_parameters()).keys()
    for name in plain:
        if s.inner.optimizer == "adam" and name in CONV_BIASES:
            continue  # batch norm cancels them: gradient ~1e-17 noise, which Adam's g/sqrt(v) blows up to +-lr
        torch.testing.assert_close(plain[name], func[name], rtol=1e-9, atol=1e-12, msg=name)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("inner_state", ["carried", "batched"])
def test_reptile_rows_carry_the_inner_adam_state_alike(inner_state):
    """Over two meta-batches (b)'s torch.optim.Adam and (c)'s functional state agree, and the state matters."""
    torch.manual_seed(0)
    model = Conv4(out_features=3, hidden=4, image_size=8).double()
    s = Setting("reptile", Inner(3, 0.01, 4, "adam"), lr=1.0, optimizer="sgd", inner_state=inner_state)
    plain_ctx, func_ctx = reference.plain_context(s, model), reference.func_context(s, model)
    fresh = reference.plain_meta_grad(Setting("reptile", s.inner, 1.0, "sgd"), model, _meta_batch())
    for seed in (0, 1):
        batch = _meta_batch() if seed == 0 else Episode(*(f.flip(0) for f in _meta_batch()))
        plain = reference.plain_meta_grad(s, model, batch, plain_ctx)
        func = reference.func_meta_grad(s, model, batch, func_ctx)
        for name in plain:
            if name not in CONV_BIASES:
                torch.testing.assert_close(plain[name], func[name], rtol=1e-9, atol=1e-12, msg=name)
    weight = "features.0.weight"
    assert not torch.allclose(plain[weight], fresh[weight])  # the second meta-batch started from a used state


def test_maml_rows_keep_the_second_order_terms():
    torch.manual_seed(0)
    model = Conv4(out_features=3, hidden=4, image_size=8).double()
    batch = _meta_batch()
    first = reference.plain_meta_grad(_setting("fomaml"), model, batch)
    second = reference.plain_meta_grad(_setting("maml"), model, batch)
    assert max((first[k] - second[k]).abs().max().item() for k in first) > 1e-6


def test_inner_settings_read_the_nested_inner_node():
    node = OmegaConf.create(
        dict(inner=dict(steps=5, lr=1e-3, batch_size=10, optimizer="adam"), eval_inner=dict(steps=50, lr=None))
    )
    assert inner_settings(node) == Inner(5, 1e-3, 10, "adam")


@pytest.mark.parametrize(
    "algorithm, inner, optimizer",
    [
        ("reptile", (5, 1e-3, 10, "adam"), "sgd"),
        ("fomaml", (1, 0.4, None, "sgd"), "adam"),
        ("maml", (1, 0.4, None, "sgd"), "adam"),
        ("imaml", (16, 0.1, None, "sgd"), "adam"),
    ],
)
def test_preset_settings_read_the_paper_presets(algorithm, inner, optimizer):
    s = preset_settings(load_config([f"experiment={algorithm}_omniglot_5w1s"]))
    assert (s.algorithm, s.inner, s.optimizer) == (algorithm, Inner(*inner), optimizer)
    if algorithm == "imaml":
        assert (s.lam, s.cg_steps, s.cg_damping) == (2.0, 5, 0.0)


@pytest.mark.parametrize("algorithm", ["fomaml", "maml"])
def test_higher_row_computes_the_plain_loop_meta_gradient(algorithm):
    pytest.importorskip("higher")
    torch.manual_seed(0)
    model = Conv4(out_features=3, hidden=4, image_size=8).double()
    s, batch = _setting(algorithm), _meta_batch()
    s = Setting(s.algorithm, s.inner, lr=0.0, optimizer="sgd")  # the step leaves the meta-gradient in .grad
    expected = reference.plain_meta_grad(s, model, batch)
    peers.higher_step(s, model)(batch)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-9, atol=1e-12, msg=name)
