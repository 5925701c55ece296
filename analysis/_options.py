"""The options of ``sloguard report`` and the analysis scripts (argparse only: fast to load)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared with ``sloguard report``."""
    parser.add_argument("--comparison", default=None, help="the comparison tag of the studies")
    parser.add_argument("--experiment", default=None, help="or: every study of an experiment")
    parser.add_argument(
        "--tracking-uri", default=None, help="MLflow store (default: the tracking config's)"
    )
    parser.add_argument("--baseline", default="random", help="the optimizer compared against")
    parser.add_argument("--candidate", default="tba-tpe", help="the optimizer under test")
    parser.add_argument(
        "--latency-metric", default="e2el_p50_ms", help="the latency the best trials are ranked by"
    )
    parser.add_argument(
        "--delta",
        type=float,
        default=0.10,
        help="fast cluster: within this share of the best latency",
    )
    parser.add_argument(
        "--published", action="store_true", help="print the seed paper's numbers beside the table"
    )
