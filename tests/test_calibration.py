import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sloguard.backends import BackendSettings
from sloguard.backends.sim import SimBackend
from sloguard.calibration import (
    Probe,
    design_probes,
    fit,
    measure,
    predict,
    probe_knobs,
    resolve_load_rates,
)
from sloguard.config import HardwareConfig
from sloguard.slo_contract import SloContract
from tests.backends_tests.vllm_tests.conftest import TINY_MODEL, vllm_python  # noqa: F401
from tests.conftest import run_cli

CPU = ("model=tiny-random", "hardware=cpu", "space=cpu-small")
TRUTH = {
    "eager_step_overhead_ms": 4.0,
    "seq_overhead_ms": 0.3,
    "compute_efficiency": 0.02,
    "attention_efficiency": 2.0,
    "request_overhead_ms": 8.0,
    "stream_overhead_ms": 1.5,
}


def _synthetic(cfg, truth: dict, noise: float = 0.3) -> tuple[list[Probe], list[dict]]:
    """Probes (load rates resolved) and what the sim with ``truth`` measures for them."""
    probes = design_probes(cfg)
    closed = [p for p in probes if p.kind != "load"]
    sustained = dict(
        zip([p.name for p in closed], predict(cfg, closed, truth, noise), strict=True)
    )
    probes = resolve_load_rates(probes, sustained)
    return probes, predict(cfg, probes, truth, noise)


def test_probes_span_batch_sizes_and_prompt_lengths_in_both_modes(compose) -> None:
    probes = design_probes(compose(*CPU))
    names = [p.name for p in probes]
    assert names[:9] == [
        "decode-c1-eager", "decode-c4-eager", "decode-c8-eager", "decode-c32-eager",
        "prefill-256-eager", "prefill-1024-eager", "prefill-1792-eager",
        "load-30-eager", "load-70-eager",
    ]  # fmt: skip
    assert [n.replace("-graph", "-eager") for n in names[9:]] == names[:9]
    eager_only = design_probes(compose(*CPU, "hardware.supports_cudagraphs=false"))
    assert all(p.eager for p in eager_only) and len(eager_only) == 9
    assert all(p.prompt_len + p.output_len <= 2048 for p in probes)


def test_load_probes_run_at_shares_of_what_the_widest_decode_probe_sustained(compose) -> None:
    probes = design_probes(compose(*CPU))
    with pytest.raises(ValueError, match="load probe load-30-eager has no rate yet"):
        probes[7].workload()
    measured = {"decode-c32-eager": {"output_throughput_tok_s": 960.0},
                "decode-c32-graph": {"output_throughput_tok_s": 1920.0}}  # fmt: skip
    resolved = resolve_load_rates(probes, measured)
    rates = {p.name: p.rate for p in resolved if p.kind == "load"}
    # 960 tok/s of 96-token requests is 10 req/s
    assert rates == pytest.approx({"load-30-eager": 3.0, "load-70-eager": 7.0,
                                   "load-30-graph": 6.0, "load-70-graph": 14.0})  # fmt: skip
    wl = resolved[8].workload()
    assert wl.concurrency == 0 and wl.offered_rate() == pytest.approx(7.0, rel=0.3)


def test_fit_recovers_the_coefficients_that_produced_the_measurements(compose) -> None:
    # at noise 0.15; at 0.3 the fixed and the per-stream frontend delays trade off (9.5 and
    # 2.3 ms for 8 and 1.5): both lengthen TTFT, and noise blurs how it grows with load
    cfg = compose(*CPU, "hardware.supports_cudagraphs=false")
    probes, measured = _synthetic(cfg, TRUTH, noise=0.15)
    calibration = fit(cfg, probes, measured)
    for name, value in TRUTH.items():
        assert calibration.hardware[name] == pytest.approx(value, rel=0.15), name
    assert calibration.noise == pytest.approx(0.15, abs=0.1)
    assert calibration.median_error < 0.05


def test_fit_finds_a_machine_four_times_as_fast_as_the_preset(compose) -> None:
    # a preset fitted on one CPU, measurements from one 4x as fast (as an AVX-512 host is against
    # the AVX2 one of hardware=cpu): from the preset alone the fit stopped at 8% median error
    # with seq_overhead_ms 3x off; it also starts as if the machine were 4x faster
    cfg = compose(*CPU, "hardware.supports_cudagraphs=false")
    preset = {name: float(cfg.hardware[name]) for name in TRUTH}
    truth = {n: v * 4 if n.endswith("_efficiency") else v / 4 for n, v in preset.items()}
    probes, measured = _synthetic(cfg, truth, noise=0.15)
    calibration = fit(cfg, probes, measured)
    for name, value in truth.items():
        assert calibration.hardware[name] == pytest.approx(value, rel=0.15), name
    assert calibration.median_error < 0.05


def test_calibrate_refits_saved_measurements_into_a_hardware_config(
    compose, study_env, tmp_path: Path
) -> None:
    cfg = compose(*CPU, "hardware.supports_cudagraphs=false")
    # noise 0.15, where the fit is well posed (see above); at 0.3 scipy 1.17's least squares
    # lands seq_overhead_ms at 0.25 for 0.3, traded against the frontend delays
    probes, measured = _synthetic(cfg, TRUTH, noise=0.15)
    saved = tmp_path / "measured.json"
    payload = {"probes": [p.__dict__ for p in probes], "measured": measured}
    saved.write_text(json.dumps(payload))
    out = tmp_path / "cpu-fitted.yaml"
    proc = run_cli(
        ["-m", "sloguard.cli", "calibrate", *CPU, "hardware.supports_cudagraphs=false",
         "--out", str(out), "--measurements", str(saved)], tmp_path, study_env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "median error" in proc.stdout and "decode-c32-eager" in proc.stdout
    text = out.read_text()
    assert text.startswith("# cpu: step-time coefficients calibrated by `sloguard calibrate`")
    fitted = OmegaConf.merge(OmegaConf.structured(HardwareConfig), OmegaConf.load(out))
    assert fitted.seq_overhead_ms == pytest.approx(0.3, rel=0.15)
    assert fitted.vram_gb == cfg.hardware.vram_gb  # unfitted values kept from the base
    # the fitted config drives the sim and reproduces a probe it was fitted on
    sim_cfg = OmegaConf.merge(cfg, {"hardware": fitted})
    probe = probes[3]
    result = SimBackend(BackendSettings.of(sim_cfg)).evaluate(
        probe_knobs(cfg, probe.eager), probe.workload(), SloContract(), seed=0
    )
    real = payload["measured"][3]["tpot_p50_ms"]
    assert result.metrics["tpot_p50_ms"] == pytest.approx(real, rel=0.1)


@pytest.mark.parametrize(
    ("content", "overrides", "error"),
    [
        (
            {"setting": {"model": "tiny-random", "hardware": "cpu"}, "probes": [], "measured": []},
            [],  # the defaults: qwen2-1.5b on an a100-40gb
            "were taken with model=tiny-random hardware=cpu, not model=qwen2-1.5b "
            "hardware=a100-40gb: pass the same overrides",
        ),
        ("not json", list(CPU), "is not a saved calibration (JSON with probes and measured): "
         "JSONDecodeError: Expecting value: line 1 column 1 (char 0)"),
        ({"probes": []}, list(CPU), "is not a saved calibration (JSON with probes and "
         "measured): KeyError: 'measured'"),
        ({"probes": [], "measured": [{}]}, list(CPU), "has 0 probes but 1 measurements"),
    ],
)  # fmt: skip
def test_calibrate_refuses_measurements_it_cannot_refit(
    study_env, tmp_path: Path, content: object, overrides: list[str], error: str
) -> None:
    saved = tmp_path / "measured.json"
    saved.write_text(content if isinstance(content, str) else json.dumps(content))
    out = tmp_path / "hw.yaml"
    argv = ["calibrate", *overrides, "--out", str(out), "--measurements", str(saved)]
    proc = run_cli(["-m", "sloguard.cli", *argv], tmp_path, study_env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"sloguard: error: --measurements {saved} {error}"]
    assert not out.exists()


def test_calibrate_against_the_sim_is_one_clear_error(study_env, tmp_path: Path) -> None:
    out = tmp_path / "hw.yaml"
    proc = run_cli(["-m", "sloguard.cli", "calibrate", "--out", str(out)], tmp_path, study_env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "sloguard: error: backend=sim cannot be calibrated against itself; choose backend=vllm "
        "or backend=vllm-cpu (or pass --measurements FILE of saved ones)"
    ]
    assert not out.exists()


def test_a_kept_run_in_which_the_frontend_stalled_is_run_once_more(
    compose, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the sim's frontend never stalls: its second run of the first probe is made to look as a
    # stalled CPU build's does (tokens merged into chunks: median ITL 0, TPOT marked)
    cfg = compose(*CPU, "hardware.supports_cudagraphs=false")
    probes = design_probes(cfg)[:2]  # decode-c1-eager, decode-c4-eager
    served: list[list] = []

    class StallingSim(SimBackend):
        def evaluate_adaptive(self, config, next_workload, slo, *, seed, log_path=None):
            def stall_second(results: list):
                if len(results) == 2:
                    results[1].metrics.update(itl_p50_ms=0.0, tpot_p50_ms=-1.0)
                return next_workload(results)

            served.append(super().evaluate_adaptive(config, stall_second, slo, seed=seed))
            return served[-1]

    monkeypatch.setattr(
        "sloguard.backends.create_backend", lambda cfg: StallingSim(BackendSettings.of(cfg))
    )
    _, measured = measure(cfg, probes)
    (results,) = served
    assert len(results) == 5  # decode-c1 three times (the stalled kept run repeated), then twice
    assert measured[0]["tpot_p50_ms"] == results[2].metrics["tpot_p50_ms"] > 0
    assert measured[1] == {k: results[4].metrics[k] for k in measured[1]}


@pytest.mark.vllm
@pytest.mark.usefixtures("vllm_python")  # skips (fails in CI) without the CPU build
def test_calibrate_on_a_server_that_cannot_start_is_one_clear_error(
    study_env, tmp_path: Path
) -> None:
    # a KV budget below what the CPU build's worker takes: vLLM refuses at startup, before any
    # probe is served (this was an IndexError)
    out = tmp_path / "hw.yaml"
    low = ("low=0.01", "high=0.02", "default=0.01")
    argv = ["calibrate", *CPU, "backend=vllm-cpu", f"model.path={TINY_MODEL}",
            "hardware.supports_cudagraphs=false",
            *(f"space.gpu_memory_utilization.{v}" for v in low), "--out", str(out)]  # fmt: skip
    proc = run_cli(["-m", "sloguard.cli", *argv], tmp_path, study_env)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("sloguard: error: probe decode-c1-eager crashed: ")
    assert "kv" in line.lower()
    assert not out.exists()


@pytest.mark.vllm
# wall-clock timings of 24 requests on 2 cores. Of 16 runs on 2026-12-04, 3 ended over 0.3: one
# fit from the preset alone stopped at 1.16 (the fit now also starts as for a 4x faster and a 4x
# slower machine); in the other two a stalled frontend (decode TTFT p99 388 ms; load TTFT p50
# 126 ms against ~10) gave measurements no fit matches (0.63 and 0.30 refitted). With the new fit
# 3 of 11 further runs failed, and with the stall re-run 1 of 6 (the load probe stalled in both
# its runs): about one run in five, so up to five tries
@pytest.mark.flaky(reruns=4)
@pytest.mark.usefixtures("vllm_python")  # skips (fails in CI) without the CPU build
def test_probes_measured_on_a_real_server_fit_the_sim(compose, tmp_path: Path) -> None:
    cfg = compose(
        *CPU, "backend=vllm-cpu", f"model.path={TINY_MODEL}", "hardware.supports_cudagraphs=false"
    )
    probes = [Probe("decode-c4-eager", True, 32, 48, 4, 8), Probe("prefill-1024-eager", True,
              1024, 2, 1, 4), Probe("load-70-eager", True, 32, 48, 0, 12, 0.7)]  # fmt: skip
    probes, measured = measure(cfg, probes, log_dir=tmp_path)
    decode, prefill, load = measured
    assert 0 < decode["tpot_p50_ms"] < 200 and decode["output_throughput_tok_s"] > 0
    # a 1024-token prefill outlasts a decode step (on the tiny model it does not reliably
    # outlast four 32-token prompts arriving at once: 23.05 vs 22.87 ms in one run here)
    assert prefill["ttft_p50_ms"] > 2 * decode["tpot_p50_ms"]
    # the load probe ran open loop at 70% of the request rate the decode probe sustained
    assert probes[2].rate == pytest.approx(0.7 * decode["output_throughput_tok_s"] / 48)
    assert load["output_throughput_tok_s"] > 0
    assert "sloguard launch" in (tmp_path / "calibrate-eager.log").read_text()
    calibration = fit(cfg, probes, measured)
    assert all(math.isfinite(v) for v in calibration.hardware.values())
    assert calibration.median_error < 0.3, (measured, calibration.residuals)
