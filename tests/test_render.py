"""benchmarks/render.py: tables, ratios against the probe, the plot and included pages."""

from __future__ import annotations

import json

from benchmarks import render


def _bench(name, group, seconds, probe=False, nbytes=1_000_000):
    return {
        "name": name,
        "group": group,
        "param": None,
        "stats": {"min": seconds},
        "extra_info": {"bytes": nbytes, "probe": probe},
    }


def _results():
    return {
        "benchmarks": [
            _bench("test_probe", "core|K=2", 0.002, probe=True),
            _bench("test_mean", "core|K=2", 0.004),
            _bench("test_noise", "noise", 0.5),
        ],
        "machine_info": {"python_version": "3.11.0", "aggkit_versions": {"numpy": "9.9"}},
        "commit_info": {"id": "abcdef1234567890", "dirty": False},
        "datetime": "2026-11-22",
    }


def test_ratio_is_probe_time_over_row_time_and_versions_are_listed():
    page = render.render([_results()])
    assert "| mean | 4.00 ms | 0.2 GB/s | 0.50x |" in page
    assert "| probe (probe) | 2.00 ms | 0.5 GB/s | 1.00x |" in page
    assert "| noise | 500.00 ms |" in page  # no probe in its group: no ratio
    assert "numpy 9.9" in page


def test_paired_group_shows_both_best_times_and_both_ratios():
    results = _results()
    paired = _bench("test_mean_vs_probe_paired", "core-paired|K=2", 0.3)
    paired["extra_info"].update(
        paired="probe", reference_ms=2.0, contender_ms=2.5, best_ratio=0.8, ratio=0.75
    )
    results["benchmarks"].append(paired)
    page = render.render([results])
    assert "| mean_vs_probe_paired | probe | 2.00 ms | 2.50 ms | 0.80x | 0.75x |" in page
    # A paired row's own time (both calls and the pauses) is no speed: it stays off the chart.
    assert "core-paired|K=2" not in render._ratios([results])


def test_main_writes_page_plot_and_included_markdown(tmp_path, monkeypatch):
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_results()))
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "acc.png").write_bytes(b"\x89PNG fake")
    (extra / "acc.md").write_text("## Accuracy\n\n![accuracy](acc.png)\n")
    out = tmp_path / "docs" / "benchmarks.md"
    monkeypatch.setattr(
        "sys.argv", ["render", str(results), "--out", str(out), "--include", str(extra / "acc.md")]
    )
    render.main()
    page = out.read_text()
    assert "![accuracy](img/extra-acc.png)" in page
    assert (tmp_path / "docs" / "img" / "extra-acc.png").read_bytes() == b"\x89PNG fake"
    assert f"]({render.PLOT_NAME})" in page
    assert (tmp_path / "docs" / render.PLOT_NAME).stat().st_size > 1000


def test_group_headings_read_as_words_and_keep_the_key():
    assert render.heading("robust-paired|K=100xn=431,080") == (
        "Robust aggregation (zeroing, clipping, weighted mean), 100 clients, 431,080 values, paired"
    )
    assert render.heading("noise|float32|n=431,080") == "Gaussian noise, float32, 431,080 values"
    assert (
        render.heading("secagg-mask|m=431,080,masks=15")
        == "SecAgg+ masks, 431,080 values, 15 masks"
    )
    page = render.render([_results()])
    assert "## Weighted mean, 2 clients\n\nGroup `core|K=2`." in page


def test_the_summary_section_stays_on_top_when_the_page_is_rendered_again(tmp_path, monkeypatch):
    from benchmarks import summary

    results = tmp_path / "results.json"
    results.write_text(json.dumps(_results()))
    out = tmp_path / "benchmarks.md"
    monkeypatch.setattr("sys.argv", ["render", str(results), "--out", str(out), "--no-plot"])
    render.main()
    data = {
        "started": "now",
        "load_before": [1.0, 1.0, 1.0],
        "load_after": [2.0, 2.0, 2.0],
        "workloads": [
            {
                "key": "mean",
                "title": "Weighted mean (FedAvg)",
                "what": "Each client's update.",
                "rounds": 2,
                "rows": [
                    {
                        "name": "aggkit `ak.mean()`",
                        "median_ms": 2.0,
                        "best_ms": 1.5,
                        "vs_aggkit": 1.0,
                    },
                    {
                        "name": "Flower `aggregate`",
                        "median_ms": 9.0,
                        "best_ms": 8.0,
                        "vs_aggkit": 4.5,
                    },
                ],
            }
        ],
    }
    summary.write_into(out, summary.section(data))
    assert out.read_text().startswith("# Benchmarks\n\n" + summary.START)
    assert "| Flower `aggregate` | 9.0 ms | 8.0 ms | 4.50x |" in out.read_text()
    render.main()  # the raw groups again: the summary is kept, once, on top
    page = out.read_text()
    assert page.startswith("# Benchmarks\n\n" + summary.START)
    assert page.count(summary.START) == 1 and "Group `core|K=2`." in page
