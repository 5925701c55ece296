"""Statistics on hand-built MLflow data in a temporary sqlite store: known values in, known out."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from scipy.stats import mannwhitneyu

from analysis._mlflow import load_comparison
from analysis.compute_multiseed_stats import format_table, summarize
from analysis.plot_comparison import plot_all
from sloguard.cli import main as cli_main

# latency (e2el p50, ms) per trial; None = crashed; a trailing "!" would be an SLO miss
STUDIES = {
    ("random", 1): [500.0, None, 470.0, 600.0],
    ("random", 2): [520.0, 480.0, 700.0, 510.0],
    ("random", 3): [None, None, None, None],  # found nothing feasible: counts, not dropped
    ("tba-tpe", 1): [600.0, 460.0, 465.0, 470.0],
    ("tba-tpe", 2): [530.0, 455.0, None, 462.0],
    ("tba-tpe", 3): [490.0, 458.0, 459.0, 700.0],
}


def _log(
    tmp_path: Path, comparison: str = "cmp", capacity: bool = False, for_rate: bool = False
) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("stats", artifact_location=str(tmp_path / "art"))
    for (optimizer, seed), latencies in STUDIES.items():
        tags = {
            "sloguard.role": "study",
            "optimizer": optimizer,
            "seed": str(seed),
            "study_name": f"{optimizer}-{seed}",
            "comparison": comparison,
        }
        study = client.create_run(exp, tags=tags).info.run_id
        for n, latency in enumerate(latencies):
            trial = client.create_run(
                exp,
                tags={
                    MLFLOW_PARENT_RUN_ID: study,
                    "sloguard.role": "trial",
                    "sloguard.trial_number": str(n),
                    "feasible": str(latency is not None).lower(),
                    "crash_category": "none" if latency is not None else "oom",
                },
            ).info.run_id
            client.log_param(trial, "max_num_seqs", 16 * (n + 1))
            client.log_param(trial, "max_num_batched_tokens", 1024)
            if latency is not None:
                client.log_metric(trial, "e2el_p50_ms", latency)
                client.log_metric(trial, "goodput_tok_s", 1e5 / latency)
                if capacity:  # an objective=capacity_per_gpu study, on n + 1 GPUs
                    client.log_metric(trial, "capacity_rps", 1e4 / latency)
                    client.log_metric(trial, "capacity_per_gpu_rps", 1e4 / latency / (n + 1))
                if for_rate:  # an objective=gpus_for_rate study: 10 req/s over n + 1 GPUs
                    client.log_metric(trial, "capacity_rps", 10.0)  # searched up to the target
                    client.log_metric(trial, "target_per_gpu_rps", 10.0 / (n + 1))
    # a study of another comparison must be ignored
    client.create_run(
        exp,
        tags={
            "sloguard.role": "study",
            "optimizer": "random",
            "seed": "9",
            "study_name": "other",
            "comparison": "other",
        },
    )
    return uri


def test_summary_from_known_values(tmp_path: Path) -> None:
    uri = _log(tmp_path)
    studies, trials = load_comparison("cmp", tracking_uri=uri)
    assert len(studies) == 6 and len(trials) == 24
    s = summarize(trials, "random", "tba-tpe", latency="e2el_p50_ms", delta=0.05)
    assert s["best_latency_ms"] == 455.0
    assert s["fast_threshold_ms"] == pytest.approx(477.75)
    per = {(r["optimizer"], r["seed"]): r for r in s["studies"]}
    # random/1: fast trials = {2 (470)}; after the first hit: [600] -> consistency 0
    assert per[("random", 1)]["fast_trials"] == 1 and per[("random", 1)]["consistency"] == 0.0
    assert per[("random", 1)]["crashes"] == 1 and per[("random", 1)]["crash_waste_pct"] == 25.0
    # tba-tpe/1: fast = {1, 2, 3} (460, 465, 470): first hit 1, then 2 of 2 -> 1.0
    assert per[("tba-tpe", 1)]["first_hit"] == 1 and per[("tba-tpe", 1)]["consistency"] == 1.0
    assert per[("tba-tpe", 2)]["best_latency_ms"] == 455.0
    # no fast trial: no consistency to speak of, counted as 0
    assert per[("random", 2)]["fast_trials"] == 0 and per[("random", 2)]["consistency"] == 0.0
    # nothing feasible: zero goodput, the worst latency seen (700 ms), in every mean and test
    nothing = per[("random", 3)]
    assert nothing["best_goodput_tok_s"] == 0.0 and nothing["best_latency_ms"] == 700.0
    assert nothing["crash_waste_pct"] == 100.0
    opt = s["optimizers"]
    assert opt["random"]["fast_trials"]["mean"] == pytest.approx(1 / 3)
    assert opt["tba-tpe"]["fast_trials"]["mean"] == pytest.approx(7 / 3)
    assert opt["random"]["best_latency_ms"]["mean"] == pytest.approx((470 + 480 + 700) / 3)
    assert opt["random"]["best_goodput_tok_s"]["n"] == 3
    expected = mannwhitneyu([3, 2, 2], [1, 0, 0], alternative="greater").pvalue
    assert s["tests"]["fast_trials"]["p_one_sided"] == pytest.approx(expected)
    assert s["tests"]["best_latency_ms"]["alternative"] == "less"
    sd = np.std([470, 480, 700], ddof=1) / np.std([460, 455, 458], ddof=1)
    assert s["sd_ratio_best_latency"] == pytest.approx(sd)
    table = format_table(s, published=True)
    assert "| Fast-cluster trials / 4 | 0.33 ± 0.58 | 2.33 ± 0.58 |" in table
    assert f"| {expected:.3f} (1-sided) |" in table and "(2-sided) |" in table
    assert "| Feasibility | 7 / 12 | 11 / 12 |" in table
    assert "7.40 ± 2.51 / 10.20 ± 1.10, p=0.014" in table
    assert "Best capacity" not in table  # a goodput comparison has no capacity row


def test_no_test_with_fewer_than_three_studies_in_a_group(tmp_path: Path) -> None:
    _, trials = load_comparison("cmp", tracking_uri=_log(tmp_path))
    two = trials[trials["seed"].astype(int) < 3]
    s = summarize(two, "random", "tba-tpe", latency="e2el_p50_ms", delta=0.05)
    assert all("skipped" in t and "p_two_sided" not in t for t in s["tests"].values())
    table = format_table(s)
    assert "| — (n < 3) |" in table and "No Mann-Whitney test: fewer than 3" in table


def test_capacity_studies_compare_their_best_capacity(tmp_path: Path) -> None:
    _, trials = load_comparison("cmp", tracking_uri=_log(tmp_path, capacity=True))
    s = summarize(trials, "random", "tba-tpe", latency="e2el_p50_ms", delta=0.05)
    per = {(r["optimizer"], r["seed"]): r for r in s["studies"]}
    assert per[("tba-tpe", 2)]["best_capacity_rps"] == pytest.approx(1e4 / 455.0)
    assert per[("random", 1)]["best_capacity_rps"] == pytest.approx(1e4 / 470.0)
    assert per[("random", 3)]["best_capacity_rps"] == 0.0
    candidate, baseline = [1e4 / 460, 1e4 / 455, 1e4 / 458], [1e4 / 470, 1e4 / 480, 0.0]
    expected = mannwhitneyu(candidate, baseline, alternative="two-sided")
    assert s["tests"]["best_capacity_rps"]["p_two_sided"] == pytest.approx(expected.pvalue)
    row = (
        f"| Best capacity (req/s) | {np.mean(baseline):.2f} ± {np.std(baseline, ddof=1):.2f} | "
        f"{np.mean(candidate):.2f} ± {np.std(candidate, ddof=1):.2f} |"
    )
    assert row in format_table(s)
    # per GPU: tba-tpe seed 2's best is its first trial (530 ms on one GPU), not its fastest
    assert per[("tba-tpe", 2)]["best_capacity_per_gpu_rps"] == pytest.approx(1e4 / 530.0)
    assert per[("random", 3)]["best_capacity_per_gpu_rps"] == 0.0
    assert "| Best capacity per GPU (req/s) |" in format_table(s)
    assert "best_target_per_gpu_rps" not in s["tests"]


def test_gpus_for_rate_studies_compare_the_target_per_gpu_needed(tmp_path: Path) -> None:
    _, trials = load_comparison("cmp", tracking_uri=_log(tmp_path, for_rate=True))
    s = summarize(trials, "random", "tba-tpe", latency="e2el_p50_ms", delta=0.05)
    per = {(r["optimizer"], r["seed"]): r for r in s["studies"]}
    assert per[("tba-tpe", 3)]["best_target_per_gpu_rps"] == 10.0  # fewest GPUs: its first
    assert per[("random", 3)]["best_target_per_gpu_rps"] == 0.0
    assert "| Best target rate per GPU needed (req/s) |" in format_table(s)
    # every capacity is the target (the search stops there): no capacity row to rank by
    assert "best_capacity_rps" not in s["tests"]
    assert "| Best capacity (req/s)" not in format_table(s)


def test_goodput_studies_report_no_capacity(tmp_path: Path) -> None:
    _, trials = load_comparison("cmp", tracking_uri=_log(tmp_path))
    s = summarize(trials, "random", "tba-tpe", latency="e2el_p50_ms", delta=0.05)
    assert "best_capacity_rps" not in s["tests"] and "best_capacity_per_gpu_rps" not in s["tests"]
    assert "best_target_per_gpu_rps" not in s["tests"]
    assert "| Best capacity" not in format_table(s)


def test_report_writes_summary_and_figures(tmp_path: Path, capsys) -> None:
    uri = _log(tmp_path)
    out = tmp_path / "report"
    cli_main(["report", "--comparison", "cmp", "--tracking-uri", uri, "--output", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["candidate"] == "tba-tpe" and len(summary["studies"]) == 6
    for name in ("best_so_far.png", "fast_hits.png", "feasibility_map.png", "knob_scatter.png"):
        png = out / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "Mann-Whitney p" in capsys.readouterr().out


def test_report_on_nothing_fails_clearly(tmp_path: Path) -> None:
    uri = _log(tmp_path)
    with pytest.raises(SystemExit) as info:
        cli_main(
            [
                "report",
                "--comparison",
                "missing",
                "--tracking-uri",
                uri,
                "--output",
                str(tmp_path / "r"),
            ]
        )
    assert info.value.code == 2
    assert not (tmp_path / "r").exists()


def test_single_study_figures(tmp_path: Path) -> None:
    _, trials = load_comparison("cmp", tracking_uri=_log(tmp_path))
    one = trials[trials["study_name"] == "random-1"]
    paths = plot_all(one, tmp_path / "one")
    assert all(p.stat().st_size > 10_000 for p in paths)
