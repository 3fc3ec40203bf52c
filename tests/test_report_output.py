"""What a report writes for people: LaTeX a paper can include, a self-contained HTML page, and
figures whose lines, legend and axes say what they should. Records are hand-built (no training)."""

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from suite.cli.report import register
from suite.console import configure_logging
from suite.errors import DepthbenchError
from suite.run.figures import accuracy_figure, distinguishable
from suite.run.report import results_table, write_report
from suite.run.store import ResultsStore, records_frame
from tests.test_report import CPU, GPU, cell, realistic_run

FOLDER = f"cpu-onnxruntime-{'c' * 12}"


def sized(records: pd.DataFrame) -> pd.DataFrame:
    """The records with the deployed networks' sizes: fewer layers at lower budgets, and (as a
    merged network can) more MACs."""
    ok = records["status"] == "ok"
    budget = records.loc[ok, "budget_value"]
    return records.assign(
        params=(700_000 * budget).round().astype("Int64"),
        macs=(6_000_000 * (2 - budget)).round().astype("Int64"),
        depth=(52 * budget).round().astype("Int64"),
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """One report of a realistic run plus a measured and an infeasible dp_depth cell at 0.5."""
    records = realistic_run() + [
        cell("dp_depth", 0.5, status="infeasible", reason="no plan meets 0.5"),
    ]
    out = tmp_path_factory.mktemp("report")
    write_report(sized(records_frame(records)), out)
    return out / FOLDER


def latex_rows(tex: str) -> list[str]:
    body = tex.split("\\midrule\n", 1)[1].split("\\bottomrule", 1)[0]
    return [line for line in body.splitlines() if line.strip()]


def test_latex_has_a_label_bold_front_rows_and_no_hash(report):
    tex = (report / "results.tex").read_text()
    table = pd.read_csv(report / "results.csv")

    assert "\\label{tab:results-cpu-onnxruntime}" in tex
    assert "\\toprule" in tex and "\\bottomrule" in tex  # booktabs
    assert "c" * 8 not in tex  # neither the hash nor a prefix of it
    rows = latex_rows(tex)
    assert len(rows) == len(table) and table["global_front"].any()
    for line, on_front in zip(rows, table["global_front"], strict=True):
        cells = [c.strip() for c in line.removesuffix("\\\\").split("&")]
        assert all(c.startswith("\\textbf{") for c in cells) == on_front, line
        assert any(c.startswith("\\textbf{") for c in cells) == on_front, line
    assert "dp\\_depth" in tex and "95\\% intervals" in tex  # escaped for LaTeX


def test_constant_columns_are_in_the_caption_not_the_table(report):
    tex = (report / "results.tex").read_text()
    header = tex.split("\\toprule\n", 1)[1].split("\\\\", 1)[0]
    caption = re.search(r"\\caption\{(.*)\}", tex).group(1)

    for column in ("model", "data set", "fidelity", "seed"):
        assert column not in header
    for context in ("model mobilenet\\_v2-0.5", "data set digits", "fidelity full", "1 seed"):
        assert context in caption
    for column in ("method", "budget", "params (M)", "MACs (M)", "depth"):
        assert column in header
    markdown = (report / "results.md").read_text()
    assert "| model" not in markdown and "fidelity full" in markdown
    csv = pd.read_csv(report / "results.csv")  # the CSV keeps every column
    assert {"model", "dataset", "fidelity", "params", "macs", "depth"} <= set(csv.columns)


def test_a_column_that_varies_stays_in_the_table(tmp_path):
    records = records_frame(
        [cell("a", 0.5, seed=s, top1=90.0, latency_ms=1.0) for s in (0, 1)]
        + [cell("b", 0.5, top1=91.0, latency_ms=1.1)]
    )
    write_report(records, tmp_path)
    tex = (tmp_path / FOLDER / "results.tex").read_text()
    header = tex.split("\\toprule\n", 1)[1].split("\\\\", 1)[0]
    assert "seeds" in header and "seed(s)" in header  # 2 seeds and 1 seed
    assert "model" not in header


class Page(HTMLParser):
    """The tags, ids, links and images of an HTML page."""

    def __init__(self, text: str):
        super().__init__()
        self.tags, self.ids, self.links, self.images, self.meta = [], set(), [], [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if "id" in attrs:
            assert attrs["id"] not in self.ids, f"id {attrs['id']} twice"
            self.ids.add(attrs["id"])
        if tag == "a":
            self.links.append(attrs["href"])
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "meta":
            self.meta.append(attrs)


def test_the_html_page_is_self_contained_and_its_links_resolve(report):
    page = Page((report / "report.html").read_text())

    assert {"head", "style", "title", "table", "img"} <= set(page.tags)
    assert {"charset": "utf-8"} in page.meta
    assert len(page.images) == 2  # accuracy vs latency, speed-up vs drop
    for source in page.images:
        prefix = "data:image/svg+xml;base64,"
        assert source.startswith(prefix)
        svg = base64.b64decode(source.removeprefix(prefix)).decode()
        assert svg.lstrip().startswith("<?xml") and "<text" in svg
    anchors = [link.removeprefix("#") for link in page.links if link.startswith("#")]
    assert anchors and set(anchors) <= page.ids
    files = [link for link in page.links if not link.startswith("#")]
    assert files and all((report / link).is_file() for link in files)
    # dp_depth is measured at four budgets and infeasible at 0.5: each side links to the other
    assert {"#method-dp_depth", "#unmeasured-0", "#unmeasured-1"} <= set(page.links)
    assert {"method-dp_depth", "unmeasured-0", "unmeasured-1", "pairwise"} <= page.ids


def test_several_profiles_get_an_index_page(tmp_path):
    write_report(records_frame(realistic_run(CPU) + realistic_run(GPU)), tmp_path)

    index = Page((tmp_path / "index.html").read_text())

    assert {"charset": "utf-8"} in index.meta and "style" in index.tags
    assert index.links == [
        f"{FOLDER}/report.html",
        f"rtx2080ti-replay-{'d' * 12}/report.html",
    ]
    assert all((tmp_path / link).is_file() for link in index.links)
    back = Page((tmp_path / FOLDER / "report.html").read_text())
    assert "../index.html" in back.links


def test_one_profile_gets_no_index_page(report):
    assert not (report.parent / "index.html").exists()


def test_figures_are_png_svg_and_pdf_with_editable_text(report):
    for stem in ("accuracy_vs_latency", "speedup_vs_drop"):
        assert (report / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        svg = (report / f"{stem}.svg").read_text()
        texts = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
        assert "dp_depth" in texts and "original (reference lines)" in texts
        pdf = (report / f"{stem}.pdf").read_bytes()
        assert pdf.startswith(b"%PDF") and b"/FontFile2" in pdf  # TrueType (Type 42) fonts
        assert b"/Type3" not in pdf
    assert "median latency (ms)" in (report / "accuracy_vs_latency.svg").read_text()
    assert matplotlib.rcParams["svg.fonttype"] == "path"  # saving left the defaults alone


def scatter_points(figure) -> dict[str, np.ndarray]:
    """The plotted points of each method, read back from the figure."""
    return {
        collection.get_label(): collection.get_offsets()
        for collection in figure.axes[0].collections
        if not collection.get_label().startswith("_")
    }


@pytest.mark.parametrize(
    ("x", "column", "scale"), [("latency", "latency_ms_median", 1), ("speedup", "speedup", 1),
                               ("macs", "macs", 1e6)],
)  # fmt: skip
def test_the_x_axis_plots_the_chosen_column(x, column, scale):
    table = results_table(sized(records_frame(realistic_run())))

    figure = accuracy_figure(table, x=x)

    points = scatter_points(figure)
    assert set(points) == set(table["method"])
    for method, xy in points.items():
        rows = table[table["method"] == method]
        assert sorted(xy[:, 0]) == pytest.approx(sorted(rows[column].astype(float) / scale))
        assert sorted(xy[:, 1]) == pytest.approx(sorted(rows["top1"]))
    assert figure.axes[0].get_xscale() == "linear"
    assert accuracy_figure(table, x=x, log_x=True).axes[0].get_xscale() == "log"


def test_the_legend_is_outside_the_axes_and_the_global_front_is_behind():
    table = results_table(records_frame(realistic_run()))
    original = table[table["method"] == "original"].iloc[0]

    figure = accuracy_figure(table)
    figure.canvas.draw()

    (ax,) = figure.axes
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1  # right of the axes, over no point
    assert "front" not in ax.get_xlabel() and "front" not in ax.get_ylabel()
    lines = {line.get_label(): line for line in ax.get_lines()}
    steps = [line for line in ax.get_lines() if line.get_drawstyle().startswith("steps")]
    grey = [line for line in steps if line.get_color() == "0.6"]
    assert len(grey) == 1 and all(grey[0].get_zorder() < line.get_zorder()
                                  for line in steps if line is not grey[0])  # fmt: skip
    front = table[table["global_front"]]
    front = front[distinguishable(front)].sort_values("latency_ms_median")
    assert list(grey[0].get_xdata()) == pytest.approx(list(front["latency_ms_median"]))
    horizontal = [line for line in lines.values() if list(line.get_ydata()) == [original.top1] * 2]
    vertical = [
        line for line in lines.values()
        if list(line.get_xdata()) == [original.latency_ms_median] * 2
    ]  # fmt: skip
    assert horizontal and vertical  # the original's reference lines
    budgets = [text.get_text() for text in ax.texts]
    assert budgets == ["0.6×", "0.7×", "0.8×", "0.9×"]
    targets = sorted(line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--")
    assert targets == pytest.approx([0.6 * 2.0, 0.7 * 2.0, 0.8 * 2.0, 0.9 * 2.0])


def test_budget_targets_and_checks_come_from_the_records_when_they_have_them():
    records = records_frame(
        [cell("a", 0.5, seed=s, top1=90.0, latency_ms=1.0) for s in (0, 1)]
        + [cell("b", 0.5, top1=91.0, latency_ms=1.2), cell("original", 1.0, top1=95.0,
                                                          latency_ms=2.1)]
    )  # fmt: skip
    records["target_ms"] = [1.1, 1.1, 1.1, np.nan]
    records["budget_met"] = pd.array([True, True, False, pd.NA], dtype="boolean")

    table = results_table(records).set_index("method")

    assert table.loc[["a", "b"], "budget_met"].tolist() == [True, False]  # every seed met it
    assert pd.isna(table.loc["original", "budget_met"])
    assert table.loc["a", "target_ms"] == pytest.approx(1.1)
    ax = accuracy_figure(table.reset_index()).axes[0]
    dashed = [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert dashed == pytest.approx([1.1])  # the recorded target, not 0.5 x 2.1 ms
    assert "budget_met" not in results_table(records.drop(columns=["target_ms", "budget_met"]))


def test_x_axes_without_their_data_are_refused():
    table = results_table(records_frame([cell("a", 0.5, top1=90.0, latency_ms=1.0)]))
    with pytest.raises(DepthbenchError, match="--x speedup needs the 'original' network"):
        accuracy_figure(table, x="speedup")
    with pytest.raises(DepthbenchError, match="--x macs needs the MACs"):
        accuracy_figure(table, x="macs")


@pytest.fixture
def cli():
    app = typer.Typer()
    app.callback()(configure_logging)
    register(app)
    return app


@pytest.fixture
def run_dir(tmp_path) -> Path:
    store = ResultsStore(tmp_path / "results")
    for record in realistic_run():
        store.write(record)
    store.consolidate("run-a")
    return tmp_path / "results" / "run-a"


def test_cli_x_axis_log_x_and_methods(cli, run_dir, tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(
        cli,
        ["report", str(run_dir), "--out", str(out), "--x", "speedup", "--log-x",
         "--methods", "dp_depth, layerprune"],
        env={"COLUMNS": "200"},
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    folder = out / FOLDER
    assert set(pd.read_csv(folder / "results.csv")["method"]) == {
        "dp_depth", "layerprune", "original",
    }  # fmt: skip
    svg = (folder / "accuracy_vs_speedup.svg").read_text()
    assert "speed-up over original (×)" in svg and "depthshrinker" not in svg
    assert not (folder / "accuracy_vs_latency.svg").exists()
    assert "depthshrinker" not in result.output  # the printed fronts are filtered too


def test_cli_refuses_unknown_methods_and_axes(cli, run_dir):
    result = CliRunner().invoke(cli, ["report", str(run_dir), "--methods", "dp_depth,nope"])
    message = " ".join(result.output.split())
    assert result.exit_code == 1 and "error:" in message and "'nope'" in message
    assert "choose among deeprebirth, depthshrinker, dp_depth, layerprune, original" in message
    assert not (run_dir / "report").exists()
    result = CliRunner().invoke(cli, ["report", str(run_dir), "--x", "flops"])
    assert result.exit_code == 2 and "flops" in result.output


def front_point(top1, low, high, latency, latency_low, latency_high):
    return {"top1": top1, "top1_ci_low": low, "top1_ci_high": high, "latency_ms_median": latency,
            "latency_ms_ci_low": latency_low, "latency_ms_ci_high": latency_high}  # fmt: skip


def test_a_front_point_is_distinguishable_when_one_axis_separates_it_from_every_other():
    front = pd.DataFrame(
        [
            front_point(90.0, 89.0, 91.0, 1.00, 0.95, 1.05),  # a
            front_point(90.5, 90.0, 91.5, 1.02, 1.00, 1.04),  # b: overlaps a on both axes
            front_point(90.8, 89.5, 92.0, 1.20, 1.15, 1.25),  # c: slower beyond a's and b's noise
            front_point(95.0, 94.0, 96.0, 1.03, None, None),  # d: no latency interval; top-1 apart
        ]
    )

    assert list(distinguishable(front)) == [False, False, True, True]


def test_the_plotted_front_skips_points_the_intervals_cannot_tell_apart():
    """Two cells within each other's noise on both axes, both on the front by their medians:
    the staircase runs through neither, and both keep their markers."""
    records = records_frame(
        [
            cell("a", 0.5, correct=[1] * 90 + [0] * 10, latency_ms=1.00, noise_ms=0.05),
            cell("b", 0.5, correct=[1] * 91 + [0] * 9, latency_ms=1.02, noise_ms=0.05),
            cell("c", 0.5, correct=[1] * 99 + [0], latency_ms=3.0, noise_ms=0.05),
            cell("original", 1.0, correct=[1] * 99 + [0], latency_ms=3.0, noise_ms=0.05),
        ]
    )
    table = results_table(records)
    assert set(table.loc[table["global_front"], "method"]) >= {"a", "b"}

    (ax,) = accuracy_figure(table).axes

    grey = [line for line in ax.get_lines() if line.get_color() == "0.6"]
    assert len(grey) == 1 and not {1.0, 1.02} & set(grey[0].get_xdata())
    markers = [tuple(xy) for collection in ax.collections for xy in collection.get_offsets()]
    assert (1.0, 90.0) in markers and (1.02, 91.0) in markers
