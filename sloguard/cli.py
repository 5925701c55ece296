"""The ``sloguard`` command: ``tune`` runs studies, ``evaluate`` measures one configuration."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sloguard import signals
from sloguard.config import to_container
from sloguard.exceptions import ConfigError

_EPILOG = """examples:
  sloguard tune optimizer=tba-tpe seed=42
  sloguard tune -m seed=42,142 optimizer=random,tpe
  sloguard evaluate knobs.max_num_seqs=32 knobs.enforce_eager=true
  sloguard evaluate model=llama-3.1-8b hardware=l4-24gb knobs.gpu_memory_utilization=0.7
  sloguard tune optimizer=tba-tpe budget=24 workers=4 study_name=w
  sloguard sync --study w
  sloguard report --comparison paper-repro --output report/ --published
  sloguard classify-crash studies/<study>/server-logs/trial-003.log --exit-code 1
  sloguard calibrate backend=vllm-cpu model=tiny-random hardware=cpu space=cpu-small \
      --out conf/hardware/cpu.yaml --measurements calibration/cpu-tiny-random.json

Overrides are Hydra's: group=option (model, hardware, slo, workload, optimizer, backend,
space, prior) or key=value (seed, budget, resume, slo.ttft_ms, space.max_num_seqs.high, ...)."""


_OVERRIDES = """overrides (Hydra's):
  group=option       model, hardware, slo, workload, optimizer, backend, space, prior
                     (e.g. model=llama-3.1-8b workload=mixed backend=vllm-cpu)
  key=value          any value, e.g. seed=7 budget=30 slo.ttft_ms=300
                     space.max_num_seqs.high=256 backend.scheduler=slos-serve
  --cfg job          print the composed configuration instead of running
the groups' options are the files in conf/<group>/; README: "Configuration groups"."""

_SUBCOMMAND_HELP: dict[str, str] = {
    "tune": f"""usage: sloguard tune [-m] [--cfg job] [overrides ...]

Run a tuning study: an optimizer proposes configurations, each is served (the simulator by
default) and measured, and the study is tracked in MLflow (one run, a nested run per trial).
-m sweeps comma-separated values (Hydra multirun), e.g. -m seed=1,2,3 optimizer=random,tpe.

{_OVERRIDES}

examples:
  sloguard tune optimizer=tba-tpe seed=42 budget=30
  sloguard tune workload=mixed objective=capacity optimizer=tpe
  sloguard tune backend=vllm-cpu model=tiny-random hardware=cpu space=cpu-small prior=sim
  sloguard tune -m seed=42,142 optimizer=random,tpe comparison=mine""",
    "evaluate": f"""usage: sloguard evaluate [--cfg job] [overrides ...]

Serve one fixed configuration (knobs.<name>=value; unset knobs take the space's defaults) and
print its result as JSON: metrics, crash (if any) and the server's figures. Nothing is logged.

{_OVERRIDES}
  knobs.<knob>=value a knob's value: quantization, max_num_seqs, max_num_batched_tokens,
                     gpu_memory_utilization, max_model_len, enforce_eager,
                     enable_chunked_prefill, enable_prefix_caching; kv_cache_dtype,
                     long_prefill_token_threshold, scheduling_policy,
                     tensor_parallel_size, data_parallel_size, block_size and
                     num_speculative_tokens where the space lists their choices

examples:
  sloguard evaluate knobs.max_num_seqs=32 knobs.enforce_eager=true
  sloguard evaluate workload=mixed objective=capacity backend.scheduler=slos-serve""",
}


def _subcommand_help(command: str, rest: Sequence[str]) -> bool:
    """Print ``command``'s own help for -h/--help; whether it did."""
    if command in _SUBCOMMAND_HELP and ("-h" in rest or "--help" in rest):
        print(_SUBCOMMAND_HELP[command])
        return True
    return False


def evaluate(overrides: Sequence[str]) -> dict[str, Any]:
    """Evaluate one fixed configuration (``knobs.*``; the rest from the space's defaults)."""
    from sloguard.backends import BackendSettings, backend_class
    from sloguard.evaluation import TrialStep, slo_from_config
    from sloguard.space import SearchSpace
    from sloguard.tune import compose_config

    cfg = compose_config(overrides)
    backend_class(cfg.backend.name).preflight(BackendSettings.of(cfg))
    space = SearchSpace.from_config(cfg.space)
    fixed = {k: v for k, v in to_container(cfg.knobs).items() if v is not None}
    # a real server's log goes where Hydra puts a run's outputs (the simulator writes nothing)
    logs = Path(os.environ.get("SLOGUARD_OUTPUT_DIR", "outputs"), "evaluate")
    logs /= time.strftime("%Y-%m-%d/%H-%M-%S")
    step = TrialStep.from_config(cfg, space, slo_from_config(cfg), log_dir=logs)
    record = step.evaluate(fixed, 0)
    return {
        "model": cfg.model.name,
        "model_source": cfg.model.source,
        "hardware": cfg.hardware.name,
        "backend": cfg.backend.name,
        "workload": cfg.workload.name,
        "slo": to_container(cfg.slo),
        "repairs": record.repairs,
        **record.result.to_dict(),
    }


def main(argv: Sequence[str] | None = None) -> None:
    """The ``sloguard`` command line; SIGINT and SIGTERM end any command with one line."""
    signals.install()
    try:
        _main(argv)
    except KeyboardInterrupt as e:
        print(f"sloguard: {signals.signal_name(e)}: stopped", file=sys.stderr)
        sys.exit(signals.exit_status(e))
    except BrokenPipeError:  # the reader went away (`sloguard ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)


def _main(argv: Sequence[str] | None) -> None:
    parser = argparse.ArgumentParser(
        prog="sloguard",
        description="Crash-aware autotuner for vLLM serving: find the configuration with the "
        "highest SLO goodput.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser(
        "tune", help="run a tuning study (Hydra overrides; -m for sweeps)", add_help=False
    )
    sub.add_parser(
        "evaluate", help="evaluate one fixed configuration and print it as JSON", add_help=False
    )
    sub.add_parser(
        "classify-crash",
        help="classify a failed server's log (oom, cuda, timeout, config) as JSON",
        add_help=False,
    )
    sub.add_parser(
        "calibrate",
        help="fit the simulator's step-time coefficients to a real server (writes hardware YAML)",
        add_help=False,
    )
    sync = sub.add_parser(
        "sync",
        help="make MLflow equal the studies' storage (after kills or crashes)",
        description="Make MLflow equal the studies' storage: trials that finished without an "
        "MLflow run get one, half-logged runs are completed, dead workers' trials are queued "
        "again, and finished studies are closed.",
    )
    best = sub.add_parser(
        "best",
        help="print finished studies' best configurations as vllm serve lines",
        description="Print the best configuration of finished studies, from MLflow: the "
        "vllm serve command line and where its best_config.yaml artifact is.",
    )
    best.add_argument("--study", help="one study by name")
    best.add_argument("--comparison", help="every study tagged with this comparison")
    best.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI)")
    report = sub.add_parser("report", help="paired-seed statistics and figures from MLflow")
    _add_sync_arguments(sync)
    _add_report_arguments(report)
    args, rest = parser.parse_known_args(argv)
    if args.command == "report":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        _report(args)
        return
    if args.command == "best":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        _best(args)
        return
    if args.command == "sync":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        _sync(args)
        return
    if args.command == "classify-crash":
        from sloguard.crash_classifier import main as classify_main

        classify_main(rest)
        return
    if args.command == "calibrate":
        from sloguard.calibration import main as calibrate_main

        calibrate_main(rest)
        return
    if _subcommand_help(args.command, rest):
        return
    if args.command == "tune":
        from sloguard.tune import main as tune_main

        tune_main(rest)
        return
    try:
        if _print_config(rest):
            return
        payload = evaluate(rest)
    except ConfigError as e:
        print(f"sloguard: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(_finite(payload), indent=2))


def _print_config(rest: Sequence[str]) -> bool:
    """``--cfg job``: print the composed configuration; whether it was asked for."""
    flags = [i for i, a in enumerate(rest) if a == "--cfg"]
    if not flags:
        return False
    at = flags[0]
    if rest[at + 1 : at + 2] != ["job"]:
        raise ConfigError("--cfg takes 'job' (the composed configuration)")
    from omegaconf import OmegaConf

    from sloguard.tune import compose_config

    print(OmegaConf.to_yaml(compose_config([*rest[:at], *rest[at + 2 :]])), end="")
    return True


def _best(args: argparse.Namespace) -> None:
    """The vllm serve line of each finished study asked for, best goodput first."""
    from sloguard.tracking import best_configurations

    if (args.study is None) == (args.comparison is None):
        print(
            "sloguard: error: best needs one of --study NAME or --comparison NAME", file=sys.stderr
        )
        sys.exit(2)
    try:
        found = best_configurations(args.tracking_uri, args.study, args.comparison)
    except LookupError as e:
        print(f"sloguard: error: {e}", file=sys.stderr)
        sys.exit(2)
    for study, line, artifact in found:
        print(f"study {study}:\n  {line}\n  config file: {artifact}")


def _add_sync_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``sloguard sync``."""
    parser.add_argument(
        "--study", default=None, help="the study name (default: every study found)"
    )
    parser.add_argument(
        "--storage",
        default=None,
        help="the studies' storage URL (default: each journal file under --study-dir)",
    )
    parser.add_argument(
        "--study-dir",
        default=os.environ.get("SLOGUARD_STUDY_DIR", "studies"),
        help="where default-journal studies live (default: $SLOGUARD_STUDY_DIR or studies)",
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
    )
    parser.add_argument(
        "--grace-period",
        type=int,
        default=60,
        help="seconds without a heartbeat after which another machine's trial is dead "
        "(default 60)",
    )


def _sync(args: argparse.Namespace) -> None:
    from sloguard.study._sync import sync

    try:
        lines = sync(args)
    except ConfigError as e:
        print(f"sloguard: error: {e}", file=sys.stderr)
        sys.exit(2)
    print("\n".join(lines))


def _add_report_arguments(parser: argparse.ArgumentParser) -> None:
    from analysis._options import add_arguments

    add_arguments(parser)
    parser.add_argument("--output", default="report", help="folder for summary.json and PNGs")


def _report(args: argparse.Namespace) -> None:
    """Statistics (printed, and summary.json) and figures of one comparison."""
    from pathlib import Path

    from analysis._mlflow import load_comparison
    from analysis.compute_multiseed_stats import run
    from analysis.plot_comparison import plot_all

    if args.comparison is None and args.experiment is None:
        print(
            "sloguard: error: report needs --comparison NAME or --experiment NAME", file=sys.stderr
        )
        sys.exit(2)
    try:
        _, trials = load_comparison(args.comparison, args.experiment, args.tracking_uri)
    except LookupError as e:
        print(f"sloguard: error: {e}", file=sys.stderr)
        sys.exit(2)
    output = Path(args.output)
    run(args, output / "summary.json", trials)
    for path in plot_all(trials, output, args.latency_metric, args.delta):
        print(f"wrote {path}")


def _finite(value: Any) -> Any:
    """JSON has no NaN: report undefined numbers as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


if __name__ == "__main__":
    main()
