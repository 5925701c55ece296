"""Entry point: ``python -m sloguard.tune [hydra overrides]`` runs one study, ``-m`` sweeps.

Examples::

    python -m sloguard.tune optimizer=random seed=7 budget=30
    python -m sloguard.tune -m seed=42,142 optimizer=random,tpe

Every override (each combination of a sweep) is composed and validated before anything runs,
so a bad value fails with one line, exit status 2, and no MLflow run or trial log written.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import sys
from collections.abc import Sequence

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from sloguard import signals
from sloguard.backends import BackendSettings, backend_class
from sloguard.config import CONF_DIR, register_configs, validate
from sloguard.deploy import serve_command, simulated_only
from sloguard.evaluation import check_load_fits, slo_from_config, workload_from_config
from sloguard.exceptions import ConfigError, DiskFull
from sloguard.model_card import resolve_model
from sloguard.result import TrialRecord
from sloguard.slo_contract import SloContract, shortfalls

# Hydra flags after which validation is skipped (they print, they do not run)
_INFO_FLAGS = {
    "--help",
    "-h",
    "--hydra-help",
    "--info",
    "-i",
    "--cfg",
    "-c",
    "--shell-completion",
    "-sc",
    "--version",
}
_FLAGS = {"--multirun", "-m", "--run", "-r", "--resolve"}  # Hydra's that take no value
_FLAGS_WITH_VALUE = {
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
    "--package",
    "-p",
}
_env_run_id: str | None = None  # MLFLOW_RUN_ID as `mlflow run` exported it


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose and validate the configuration for ``overrides`` (no sweeps).

    Raises:
        ConfigError: With one line naming the bad value and what is allowed.
    """
    register_configs()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=list(overrides))
    except MissingConfigException as e:
        raise ConfigError(_missing_option(e)) from None
    except Exception as e:  # noqa: BLE001 - Hydra and OmegaConf raise many types
        raise ConfigError(_unknown_key(e) or _one_line(e)) from None
    resolve_model(cfg, overrides)
    validate(cfg)
    return cfg


def expand_sweeps(overrides: Sequence[str]) -> list[list[str]]:
    """Every combination of a sweep's values, as plain override lists."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception as e:  # noqa: BLE001
        raise ConfigError(_one_line(e)) from None
    choices = []
    for override in parsed:
        if override.is_sweep_override():
            key = override.get_key_element()
            choices.append([f"{key}={v}" for v in override.sweep_string_iterator()])
        else:
            choices.append([str(override.input_line)])
    return [list(combo) for combo in itertools.product(*choices)]


def check_overrides(argv: Sequence[str]) -> None:
    """Validate every job a command line would run, and that this machine can run its backend
    and reach its storage.

    Raises:
        ConfigError: On the first bad job.
    """
    overrides: list[str] = []
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
        elif arg in _INFO_FLAGS:
            return
        elif arg in _FLAGS_WITH_VALUE:
            skip_next = True
        elif arg.startswith("-") and arg.split("=")[0] not in _FLAGS | _FLAGS_WITH_VALUE:
            raise ConfigError(
                f"{arg!r} is not an option; give overrides as key=value, and see --help for the "
                "options"
            )
        elif not arg.startswith("-") and not arg.startswith("hydra"):
            overrides.append(arg)
    for combo in expand_sweeps(overrides):
        cfg = compose_config(combo)
        pinned = [k for k, v in cfg.knobs.items() if v is not None]
        if pinned:
            raise ConfigError(
                f"knobs.{pinned[0]}={cfg.knobs[pinned[0]]} fixes one configuration for "
                f"`sloguard evaluate`; a study searches the space: pin a knob with "
                f"space.{pinned[0]}.choices=[...] or narrow its space.{pinned[0]}.low/high"
            )
        backend_class(cfg.backend.name).preflight(BackendSettings.of(cfg))
        check_load_fits(cfg, workload_from_config(cfg))
        # the study and tracking packages (Optuna, MLflow, scikit-learn) load only for a valid
        # command line, so a bad value is refused fast
        from sloguard.study import StorageSpec
        from sloguard.tracking import check_tracking_uri

        StorageSpec(cfg.storage).check_reachable()
        check_tracking_uri(cfg.tracking.uri)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _job(cfg: DictConfig) -> float | None:
    from sloguard.study import StudyIncomplete, StudyStopped, run_study

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    resolve_model(cfg, list(hydra_cfg.overrides.task))  # checked by check_overrides already
    try:
        outcome = run_study(cfg, env_run_id=_env_run_id, nest_under_env_run=multirun)
    except ConfigError as e:
        print(f"sloguard: error: {e}", file=sys.stderr)
        sys.exit(2)
    except (StudyIncomplete, StudyStopped) as e:
        print(f"sloguard: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as e:
        print(f"sloguard: {interrupted_line(e, cfg)}", file=sys.stderr)
        sys.exit(signals.exit_status(e))
    except DiskFull as e:
        print(
            f"sloguard: study {e.study} stopped: {e.strerror}; free space, then resume it: "
            f"{_resume_hint(cfg, e.study)}",
            file=sys.stderr,
        )
        sys.exit(1)
    best = outcome.best
    if best is None:
        print(
            f"study {outcome.study_name}: no feasible configuration in "
            f"{len(outcome.records)} trials"
        )
        print(closest_line(outcome.records, slo_from_config(cfg)))
        return None
    m = best.result.metrics
    capacity = _capacity_words(m, cfg.capacity.target_rps)
    print(
        f"study {outcome.study_name}: best trial #{best.number} {capacity}"
        f"goodput {m['goodput_tok_s']:.1f} tok/s, TTFT p99 {m['ttft_p99_ms']:.1f} ms, "
        f"ITL p99 {m['itl_p99_ms']:.1f} ms; MLflow run {outcome.run_id}"
    )
    print("  " + " ".join(f"{k}={v}" for k, v in best.result.config.items()))
    print("  " + serve_command(str(cfg.model.path), best.result.config))
    only = simulated_only(best.result.config)
    if only:
        chosen = ", ".join(f"{k}={v}" for k, v in only.items())
        print(f"  (the simulator's {chosen}: no vLLM flag sets these)")
    return best.result.utility


def _capacity_words(m: dict[str, float], target_rps: float | None) -> str:
    """A capacity study's best trial in words (``""`` for a goodput study)."""
    if "capacity_rps" not in m:
        return ""
    words = f"capacity {m['capacity_rps']:.2f} req/s"
    if "capacity_per_gpu_rps" in m:
        words += f" ({m['capacity_per_gpu_rps']:.2f} per GPU on {m['gpus']:.0f})"
    if "gpus_needed" in m:  # names.GPUS_NEEDED: sloguard.tracking loads MLflow, kept out here
        copies = int(m["replicas_needed"])
        words += (
            f" on {m['gpus']:.0f} GPU(s): {m['gpus_needed']:.0f} GPUs serve {target_rps:g} req/s "
            f"({copies} replica{'s' * (copies > 1)})"
        )
    return words + ", "


def closest_line(records: Sequence[TrialRecord], slo: SloContract) -> str:
    """The trial that came closest to the SLOs, and what it missed by how much."""
    ran = [r for r in records if r.result.crash is None and r.result.metrics]
    if not ran:
        return "  every trial crashed: see crash_category in MLflow (or the trials.jsonl export)"

    def how_far(record: TrialRecord) -> float:
        missed = shortfalls(record.result.metrics, slo)
        return max((_off(value, limit) for _, value, limit in missed), default=0.0)

    closest = min(ran, key=how_far)
    missed = ", ".join(
        f"{what} {value:.4g} vs {limit:.4g} ({100 * (value - limit) / limit:+.0f}%)"
        for what, value, limit in shortfalls(closest.result.metrics, slo)
    )
    knobs = " ".join(f"{k}={v}" for k, v in closest.result.config.items())
    return f"  closest: trial #{closest.number}, which missed {missed}\n  {knobs}"


def _off(value: float, limit: float) -> float:
    """How far ``value`` is past ``limit``, as a share of it (attainment: below it)."""
    if not limit:
        return math.inf
    return abs(value - limit) / limit


def main(argv: Sequence[str] | None = None) -> None:
    """Validate the command line, then hand it to Hydra."""
    global _env_run_id
    args = list(sys.argv[1:] if argv is None else argv)
    signals.install()  # also where a script started this with SIGINT ignored
    try:
        check_overrides(args)
    except ConfigError as e:
        print(f"sloguard: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        print(
            f"sloguard: {signals.signal_name(e)}: stopped before the study started",
            file=sys.stderr,
        )
        sys.exit(signals.exit_status(e))
    # `mlflow run` exports the run to log into; only the first start_run would see it under a
    # multirun, so take it out of the environment and pass it on explicitly
    _env_run_id = os.environ.pop("MLFLOW_RUN_ID", None)
    sys.argv = [sys.argv[0], *args]
    register_configs()
    _job()


def interrupted_line(e: KeyboardInterrupt, cfg: DictConfig) -> str:
    """One line: which signal stopped which study, and the command that resumes it."""
    study = getattr(e, "study", None)
    if study is None:
        return f"{signals.signal_name(e)}: stopped before the study started; nothing to resume"
    how = _resume_hint(cfg, study)
    return (
        f"{signals.signal_name(e)}: study {study} stopped, its MLflow run marked KILLED; the "
        f"trials in flight run again when it resumes: {how}"
    )


def _resume_hint(cfg: DictConfig, study: str | None) -> str:
    return "run the same command again" if cfg.study_name else f"add study_name={study}"


_GROUPS = ("model", "hardware", "slo", "workload", "optimizer", "backend", "space", "prior")


def _missing_option(e: MissingConfigException) -> str:
    missing = e.missing_cfg_file or ""
    group, _, value = missing.partition("/")
    if value and group in _GROUPS:
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        line = f"{group}={value!r} is not known; choose one of: {', '.join(options)}"
        if group == "model":
            line += "; or any model by its config.json: model.path=DIR (or a cached hub id)"
        return line
    return _one_line(e)


def _unknown_key(e: BaseException) -> str | None:
    """'space.foo is not known; choose one of: ...' for an override of a key the schema lacks."""
    cause = e.__cause__ or e.__context__
    parent = getattr(cause, "object_type", None)
    key = getattr(cause, "key", None)
    if (
        not isinstance(cause, (ConfigKeyError, ConfigAttributeError))
        or key is None
        or not dataclasses.is_dataclass(parent)
    ):
        return None
    full_key = str(getattr(cause, "full_key", key))
    names = [f.name for f in dataclasses.fields(parent)]
    return f"{full_key!r} is not known; choose one of: {', '.join(names)}"


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    cause = e.__cause__ or e.__context__
    if cause is not None:
        lines += [ln.strip() for ln in str(cause).splitlines()[:1] if ln.strip()]
    text = "; ".join(
        dict.fromkeys(
            ln
            for ln in lines
            if not ln.startswith(
                ("full_key", "object_type", "reference_type", "Set the environment")
            )
        )
    )
    return text or type(e).__name__


if __name__ == "__main__":
    main()
