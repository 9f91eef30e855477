"""visbench tables from real result files made in this session (tiny trainings on real Fashion-MNIST
images and a tiny bench run), checked for structure; malformed inputs named; plots written."""

from __future__ import annotations

import csv
import json
import shutil
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from visbench import tables
from visbench.results import make_result, now_iso, write_result

# (name, build kwargs): a full-attention ViT and a causal one of the same shape, and a gated CNN.
TINY_MODELS = [
    ("test_vit", {"img_size": 32}),
    ("vit_causal_tiny", {"img_size": 32, "depth": 2}),
    ("test_mambaout", {}),
]


def _train_and_evaluate(name: str, kwargs: dict, seed: int, data) -> dict:
    """A few SGD steps on real images, then top-1 / top-5 on 128 held-out images: real numbers."""
    import timm
    import visbench.backbones  # noqa: F401  (the registration point)
    from visbench.backbones.complexity import count_macs, count_params

    start = now_iso()
    (x_train, y_train), (x_test, y_test) = data
    torch.manual_seed(seed)
    model = timm.create_model(name, in_chans=1, num_classes=10, **kwargs)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for step in range(4):
        batch = slice(32 * step, 32 * (step + 1))
        loss = torch.nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        logits = model(x_test)
    top5 = logits.topk(5, dim=1).indices
    top1 = 100.0 * (top5[:, 0] == y_test).float().mean().item()
    top5_acc = 100.0 * (top5 == y_test[:, None]).any(dim=1).float().mean().item()
    return make_result(
        model=name,
        task="classification",
        dataset="fashion_mnist",
        input_size=(32, 32),
        params=count_params(model),
        macs=count_macs(model, (1, 32, 32)),
        metrics={"top1": top1, "top5": top5_acc},
        start_time=start,
        seed=seed,
        tokens=4 if "vit" in name else None,
        extra={"steps": 4, "final_loss": loss.item()},
    )


@pytest.fixture(scope="module")
def run_root(tmp_path_factory: pytest.TempPathFactory, fashion_mnist_dir: Path) -> Path:
    from visbench import bench
    from visbench.data.fashion_mnist import load_fashion_mnist

    def prep(split: str, n: int):
        images, labels = load_fashion_mnist(fashion_mnist_dir, split)
        x = torch.from_numpy(images[:n].copy()).float().div(255).unsqueeze(1)
        return torch.nn.functional.pad(x, (2, 2, 2, 2)), torch.from_numpy(labels[:n].astype("int64"))

    data = (prep("train", 128), prep("test", 128))
    root = tmp_path_factory.mktemp("runs")
    for name, kwargs in TINY_MODELS:
        for seed in (0, 1):
            write_result(root / f"{name}-s{seed}", _train_and_evaluate(name, kwargs, seed, data))
    result = bench.measure(
        "test_vit", (32, 32), batch_size=2, warmup=1, repeats=2, iters=1, train=False, memory="process"
    )
    write_result(root / "bench-test_vit-32", result)
    return root


@pytest.fixture(scope="module")
def out(run_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    out_dir = tmp_path_factory.mktemp("tables")
    return out_dir, tables.generate([run_root], out_dir)


def _rows(path: Path) -> list[list[str]]:
    with path.open() as f:
        return list(csv.reader(f))


def test_generate_writes_every_table_in_three_formats_and_plots(out: tuple[Path, list[Path]]) -> None:
    tmp_path, written = out
    names = {p.name for p in written}
    for table in ("classification", "detection", "segmentation", "causal", "long_short", "bench"):
        assert {f"{table}.md", f"{table}.tex", f"{table}.csv"} <= names
    for plot in ("accuracy_vs_macs", "throughput_vs_resolution", "r_vs_resolution"):
        for suffix in (".png", ".pdf"):  # PDF is the vector copy (SVG no longer written)
            path = tmp_path / f"{plot}{suffix}"
            assert path.stat().st_size > 1000, path
            assert path.name in names
        assert not (tmp_path / f"{plot}.svg").exists()
    assert "summary.md" in names
    summary = (tmp_path / "summary.md").read_text()
    assert "### Semantic segmentation" in summary and "| MambaOut-Small |" in summary


def test_markdown_shows_and_links_the_figures(out: tuple[Path, list[Path]]) -> None:
    tmp_path = out[0]
    summary = (tmp_path / "summary.md").read_text()
    for plot, table in (
        ("accuracy_vs_macs", "classification"),
        ("throughput_vs_resolution", "bench"),
        ("r_vs_resolution", "long_short"),
    ):
        assert f"]({plot}.png)" in summary and f"([PDF]({plot}.pdf))" in summary
        md = (tmp_path / f"{table}.md").read_text()
        assert f"]({plot}.png)" in md and f"]({plot}.pdf)" in md, table
    assert "](accuracy_vs_macs.png)" not in (tmp_path / "bench.md").read_text()


def test_classification_table_structure_and_markers(out: tuple[Path, list[Path]]) -> None:
    tmp_path = out[0]
    rows = _rows(tmp_path / "classification.csv")
    header, body = rows[0], rows[1:]
    assert header == [
        "model",
        "mixer",
        "order",
        "body",
        "dataset",
        "input",
        "params (M)",
        "MACs (G)",
        "MACs fvcore (G)",
        "img/s",
        "top-1 (%)",
        "source",
    ]
    measured = [r for r in body if r[-1] == "measured"]
    published = [r for r in body if r[-1].startswith("published: ")]
    assert len(measured) == len(TINY_MODELS)  # two seeds merged into one row per model
    assert all("(n=2)" in r[10] for r in measured)
    assert {r[0] for r in published} >= {"MambaOut-Tiny", "DeiT-S", "VMamba-T [s2l5]", "Vim-S"}
    assert body.index(measured[-1]) < body.index(published[0]), "measured rows come first"
    tex = (tmp_path / "classification.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert tex.count("\\\\") == len(body) + 1
    md = (tmp_path / "classification.md").read_text()
    assert md.count("\n| ") == len(body) + 1


def test_causal_table_pairs_orders_within_a_group(out: tuple[Path, list[Path]]) -> None:
    tmp_path = out[0]
    rows = _rows(tmp_path / "causal.csv")[1:]
    vit = [r for r in rows if r[0] == "attention" and r[1] == "isotropic"]
    assert [(r[4], r[6]) for r in vit] == [("test_vit", "no"), ("vit_causal_tiny", "yes")]


def test_long_short_and_bench_tables(out: tuple[Path, list[Path]]) -> None:
    tmp_path = out[0]
    long_short = _rows(tmp_path / "long_short.csv")
    assert long_short[0][:5] == ["dataset", "input", "tokens L", "r = L/6D", "long"]
    vit = next(r for r in long_short[1:] if r[5] == "vit_causal_tiny")
    assert vit[2] == "4" and vit[4] == "no" and float(vit[3]) == pytest.approx(4 / (6 * 192), abs=1e-3)
    bench_rows = _rows(tmp_path / "bench.csv")
    assert len(bench_rows) == 2 and bench_rows[1][0] == "test_vit"
    detection = _rows(tmp_path / "detection.csv")
    assert detection[0][5:13] == [
        "params (M)",
        "MACs (G)",
        "AP^b",
        "AP^b_50",
        "AP^b_75",
        "AP^m",
        "AP^m_50",
        "AP^m_75",
    ]
    assert all(r[-1].startswith("published") for r in detection[1:])
    tiny = [r for r in detection[1:] if r[0] == "MambaOut-Tiny"]
    assert tiny == [
        [
            "MambaOut-Tiny",
            "conv",
            "full",
            "coco",
            "800×1280",
            "43.0",
            "262",
            "45.1",
            "67.3",
            "49.6",
            "41.0",
            "64.1",
            "44.1",
            "published: MambaOut paper",
        ]
    ]


def test_half_written_result_is_an_error_naming_it_unless_skipped(run_root: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(run_root, runs)
    bad = runs / "broken" / "result.json"
    bad.parent.mkdir()
    good = json.loads(next(runs.rglob("result.json")).read_text())
    bad.write_text(json.dumps(good)[:200])  # cut mid-write
    with pytest.raises(ValueError, match="broken"):
        tables.generate([runs], tmp_path / "out")
    written = tables.generate([runs], tmp_path / "out2", skip_invalid=True)
    skipped = (tmp_path / "out2" / "skipped.txt").read_text()
    assert "broken" in skipped and any(p.name == "skipped.txt" for p in written)


def test_cli_reports_invalid_file_and_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "r1"
    run.mkdir()
    (run / "result.json").write_text('{"schema_version": 1, "model": "x"}')
    from visbench.cli import main

    assert main(["tables", str(run), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("visbench tables: error: ") and "r1" in err and err.count("\n") == 1


def test_malformed_reference_file_is_named(tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    ref.mkdir()
    (ref / "bad.yaml").write_text("source: {short: x, url: y}\nrows:\n  - {model: A, task: classification}\n")
    with pytest.raises(ValueError, match="bad.yaml.*dataset"):
        tables.load_reference(ref)
    (ref / "bad.yaml").write_text(
        "source: {short: x, url: y}\nrows:\n  - {model: A, task: classification, dataset: d, topp1: 1}\n"
    )
    with pytest.raises(ValueError, match="topp1"):
        tables.load_reference(ref)


def test_shipped_reference_rows_have_sources() -> None:
    rows = tables.load_reference()
    assert rows and all(
        r.source.startswith("published: ") and r.extra["url"].startswith("https://") for r in rows
    )
    tiny = next(r for r in rows if r.model == "MambaOut-Tiny" and r.task == "classification")
    assert (tiny.params, tiny.macs, tiny.metric("top1")[0]) == (26.5e6, 4.5e9, 82.7)
    assert tiny.source == "published: MambaOut README"


def _paper_row(rows: list[tables.Row], model: str, task: str) -> tables.Row:
    (row,) = [r for r in rows if r.model == model and r.task == task and r.source.endswith("MambaOut paper")]
    return row


def test_mambaout_paper_file_loads_with_its_tables(tmp_path: Path) -> None:
    shutil.copy(tables.REFERENCE_DIR / "mambaout_paper.yaml", tmp_path)
    rows = tables.load_reference(tmp_path)
    assert {r.source for r in rows} == {"published: MambaOut paper"}
    assert {r.extra["url"] for r in rows} == {"https://arxiv.org/html/2405.07992v3"}
    per_task = defaultdict(set)
    for r in rows:
        per_task[(r.task, r.dataset, r.input_size)].add(r.model)
    assert set(per_task) == {
        ("classification", "imagenet", (224, 224)),
        ("instance_segmentation", "coco", (800, 1280)),
        ("semantic_segmentation", "ade20k", (512, 2048)),
    }
    cls = per_task[("classification", "imagenet", (224, 224))]
    assert {"DeiT-Ti", "VMamba-T (v1)", "LocalVim-S", "EfficientVMamba-B", "PlainMamba-L3"} <= cls
    assert not any(m.startswith(("MambaOut", "Vim-", "VMambaV9")) for m in cls)  # other files have them
    seg = per_task[("semantic_segmentation", "ade20k", (512, 2048))]
    assert {"MambaOut-Tiny", "VMambaV9-B", "PlainMamba-L2", "ConvNeXt-T", "Swin-B"} <= seg
    assert len(rows) == 14 + 15 + 20


def test_mambaout_paper_rows_exact_values() -> None:
    rows = tables.load_reference()
    coco = _paper_row(rows, "MambaOut-Tiny", "instance_segmentation")
    assert (coco.dataset, coco.input_size, coco.params, coco.macs) == ("coco", (800, 1280), 43e6, 262e9)
    assert coco.metrics == {
        "bbox_mAP": [45.1],
        "bbox_mAP_50": [67.3],
        "bbox_mAP_75": [49.6],
        "segm_mAP": [41.0],
        "segm_mAP_50": [64.1],
        "segm_mAP_75": [44.1],
    }
    for model, params, macs, ss, ms in (
        ("MambaOut-Tiny", 54, 938, 47.4, 48.6),
        ("MambaOut-Base", 112, 1178, 49.6, 51.0),
    ):
        ade = _paper_row(rows, model, "semantic_segmentation")
        assert (ade.dataset, ade.input_size, ade.family, ade.mixer) == (
            "ade20k",
            (512, 2048),
            "gated_cnn",
            "conv",
        )
        assert (ade.params, ade.macs) == (params * 1e6, macs * 1e9)
        assert ade.metrics == {"miou_ss": [ss], "miou_ms": [ms]}
    # the paper gives PlainMamba no single-scale mIoU: the key stays out, nothing is made up
    plain = _paper_row(rows, "PlainMamba-L2", "semantic_segmentation")
    assert plain.metrics == {"miou_ms": [46.8]} and plain.order == "zigzag4" and plain.body == "isotropic"


def _fingerprint(r: tables.Row) -> tuple:
    return (r.input_size, r.params, r.macs, tuple(sorted((k, tuple(v)) for k, v in r.metrics.items())))


def _duplicates(rows: list[tables.Row]) -> list[str]:
    """Rows given twice: the same (model, task, dataset, source), the same (model, task, dataset) with
    the same numbers in two files, or the same numbers under two names (a row copied and renamed)."""
    problems: list[str] = []
    by_source: dict[tuple, int] = defaultdict(int)
    by_model: dict[tuple, set] = defaultdict(set)
    by_numbers: dict[tuple, list[str]] = defaultdict(list)
    for r in rows:
        by_source[(r.model, r.task, r.dataset, r.source)] += 1
        by_model[(r.model, r.task, r.dataset, _fingerprint(r))].add(r.source)
        numbers = len(r.metrics) + (r.params is not None) + (r.macs is not None)
        if numbers >= 3:
            by_numbers[(r.task, r.dataset, _fingerprint(r))].append(f"{r.model} ({r.source})")
    problems += [f"{k} listed {n} times" for k, n in by_source.items() if n > 1]
    problems += [f"{k[:3]} identical in {sorted(s)}" for k, s in by_model.items() if len(s) > 1]
    problems += [f"same numbers: {names}" for names in by_numbers.values() if len(names) > 1]
    return problems


def test_no_reference_row_is_given_twice() -> None:
    rows = tables.load_reference()
    assert _duplicates(rows) == []
    # the check itself catches a row copied into a second file, renamed or not
    (v9,) = [r for r in rows if r.model == "VMamba-T [s2l5]" and r.task == "instance_segmentation"]
    copy = tables.Row(**{**v9.__dict__, "source": "published: MambaOut paper"})
    assert len(_duplicates([*rows, copy])) == 2
    renamed = tables.Row(**{**v9.__dict__, "model": "VMambaV9-T", "source": "published: MambaOut paper"})
    assert len(_duplicates([*rows, renamed])) == 1


def test_segmentation_table_from_shipped_reference_rows() -> None:
    table = tables.segmentation_table(tables.load_reference())
    assert (table.name, table.title) == ("segmentation", "Semantic segmentation")
    assert table.columns == [
        "model",
        "mixer",
        "order",
        "dataset",
        "input",
        "params (M)",
        "MACs (G)",
        "mIoU SS (%)",
        "mIoU MS (%)",
        "source",
    ]
    small = [r for r in table.rows if r[0] == "MambaOut-Small"]
    assert small == [
        [
            "MambaOut-Small",
            "conv",
            "full",
            "ade20k",
            "512×2048",
            "76.0",
            "1032",
            "49.5",
            "50.6",
            "published: MambaOut paper",
        ]
    ]
    plain = next(r for r in table.rows if r[0] == "PlainMamba-L3")
    assert plain[7:9] == ["", "49.1"]
    assert len(table.rows) == 20 and all(r[-1].startswith("published: ") for r in table.rows)
    assert any("UperNet" in n and "512×2048" in n for n in table.notes)
    assert any("does not run segmentation" in n for n in table.notes)
    md = tables.to_markdown(table)
    assert "| MambaOut-Small | conv | full | ade20k | 512×2048 | 76.0 | 1032 | 49.5 | 50.6 |" in md
    assert "mIoU SS (\\%)" in tables.to_latex(table)


def test_detector_macs_keep_three_significant_figures() -> None:
    """A tiny embedded-data detector (~2G) must not print as "2" next to COCO's 262G."""
    assert [tables._gmacs(v) for v in (2.0066e9, 48.24e9, 262e9, None)] == ["2.01", "48.2", "262", ""]


def test_published_macs_sit_in_the_fvcore_column_next_to_measured_counts(tmp_path: Path) -> None:
    """Published figures are fvcore counts: they go under "MACs fvcore (G)", never under PyTorch's count."""
    result = make_result(
        model="gated_cnn_tiny",
        task="classification",
        dataset="imagenet",
        input_size=(224, 224),
        params=26_500_000,
        macs=4_470_000_000,
        metrics={"top1": 80.0},
        start_time=now_iso(),
        extra={"macs_fvcore": 4_510_000_000},
    )
    rows = tables.measured_rows([result]) + tables.load_reference()
    table = tables.classification_table(rows)
    macs, fvcore = table.columns.index("MACs (G)"), table.columns.index("MACs fvcore (G)")
    assert fvcore == macs + 1
    (ours,) = [r for r in table.rows if r[0] == "gated_cnn_tiny"]
    assert (ours[macs], ours[fvcore]) == ("4.47", "4.51")
    (published,) = [r for r in table.rows if r[0] == "MambaOut-Tiny"]
    assert (published[macs], published[fvcore]) == ("", "4.50")
    assert any("fvcore" in note and "published" in note for note in table.notes)
    without = tables.classification_table(tables.measured_rows([{**result, "extra": {}}]))
    assert without.rows[0][fvcore] == ""  # a result without the fvcore count leaves the cell empty


def test_bench_table_shows_engine_fvcore_macs_and_paired_ratio() -> None:
    result = make_result(
        model="gated_cnn_tiny",
        task="bench",
        dataset="synthetic",
        input_size=(224, 224),
        params=26_500_000,
        macs=4_470_000_000,
        metrics={},
        start_time=now_iso(),
        throughput={"img_per_s": 40.0, "img_per_s_iqr": 1.0, "batch_size": 16, "device": "cpu"},
        extra={
            "engine": "torch.compile(inductor, freezing)",
            "macs_fvcore": 4_510_000_000,
            "paired": [
                {"model": "mambaout_tiny", "engine": "torch.compile(inductor, freezing)"}
                | {"speed_ratio": 1.01, "speed_ratio_q1": 0.99, "speed_ratio_q3": 1.03}
            ],
        },
    )
    table = tables.bench_table([result])
    (row,) = table.rows
    cell = dict(zip(table.columns, row, strict=True))
    assert cell["MACs (G)"] == "4.47" and cell["MACs fvcore (G)"] == "4.51"
    assert cell["engine"] == "torch.compile(inductor, freezing)"
    assert cell["paired speed ratio [IQR]"] == "1.01x vs mambaout_tiny [0.99-1.03]"
