"""The names of SLO-Guard's MLflow tags and metrics: tracking writes them, analysis reads them."""

from __future__ import annotations

# MLflow's own tag (mlflow.utils.mlflow_tags.MLFLOW_PARENT_RUN_ID), spelled out so that the
# names load without MLflow: a trial run's study run; a study's outer run (multirun)
PARENT_RUN = "mlflow.parentRunId"
EXPERIMENT_KIND = "mlflow.experimentKind"  # which view MLflow's UI opens an experiment in
PRIMARY_METRIC = "mlflow.experiment.primaryMetric.name"  # the UI's first chart
NOTE = "mlflow.note.content"  # an experiment's or run's description in MLflow's UI

# tags of study and trial runs
ROLE = "sloguard.role"  # "study" or "trial"
STUDY_ROLE = "study"
TRIAL_ROLE = "trial"
TRIAL_NUMBER = "sloguard.trial_number"  # the trial's number in the study
OPTUNA_TRIAL = "sloguard.optuna_trial"  # the Optuna trial that ran it (a re-run has its own)
STORAGE = "sloguard.storage"  # where the study lives (password masked)
STUDY_NAME = "study_name"
OPTIMIZER = "optimizer"
SEED = "seed"
BACKEND = "backend"
MODEL = "model"
HARDWARE = "hardware"
WORKLOAD = "workload"
SLO = "slo"
CONFIG_HASH = "config_hash"
COMPARISON = "comparison"
PHASE = "phase"
FEASIBLE = "feasible"  # "true" or "false"
CRASH_CATEGORY = "crash_category"  # "none" for a trial that did not crash
CRASH_SUBCAUSE = "crash_subcause"
CRASH_PHASE = "crash_phase"
CRASH_EVIDENCE = "crash_evidence"
REPAIRS = "repairs"
ABORT_REASON = "abort_reason"  # why the measurement window stopped early (infeasible for sure)
BEST_PREFIX = "best."  # study run: the best trial's launched knobs

# metrics of a trial run (from the trial's result)
GOODPUT = "goodput_tok_s"
TTFT_P99 = "ttft_p99_ms"
ITL_P99 = "itl_p99_ms"
E2EL_P50 = "e2el_p50_ms"
E2EL_MEAN = "e2el_mean_ms"
ATTAINMENT = "attainment"
OUTPUT_THROUGHPUT = "output_throughput_tok_s"
CAPACITY = "capacity_rps"
CAPACITY_PER_GPU = "capacity_per_gpu_rps"  # objective=capacity_per_gpu: capacity / GPUS
GPUS = "gpus"  # the GPUs a configuration runs on (tensor x data parallel x replicas)
# objective=gpus_for_rate: copies of a configuration that capacity.target_rps takes, their GPUs,
# and the target over those GPUs (what the study maximises: fewer GPUs, higher)
REPLICAS_NEEDED = "replicas_needed"
GPUS_NEEDED = "gpus_needed"
TARGET_PER_GPU = "target_per_gpu_rps"
UTILITY = "utility"
ABORTED_EARLY = "aborted_early"  # 1: the window stopped once the trial was certainly infeasible

# metrics of a study run: per-trial curves (step = trial number), then the study's summary
CRASHES = "crashes"
FEASIBLE_TRIALS = "feasible_trials"
NUM_TRIALS = "num_trials"


def objective_metric(objective: str) -> str:
    """The trial metric an ``objective`` maximises (``objective=capacity``: ``capacity_rps``)."""
    return {
        "capacity": CAPACITY,
        "capacity_per_gpu": CAPACITY_PER_GPU,
        "gpus_for_rate": TARGET_PER_GPU,
    }.get(objective, GOODPUT)


def best(metric: str) -> str:
    """The study metric holding the best feasible trial's ``metric`` (``best_goodput_tok_s``)."""
    return f"best_{metric}"
