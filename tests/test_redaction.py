from __future__ import annotations

from pathlib import Path

from sloguard.redaction import (
    REDACTED,
    is_secret_name,
    mask,
    redact_argv,
    redact_config,
    redact_text,
    secret_values,
)
from tests.conftest import run_cli

TOKEN = "hf_FAKEtoken0123456789"
KEY = "sk-FAKEapikey-98765"
PASSWORD = "pw-FAKE-4242"


def test_secret_names_are_told_from_knob_names() -> None:
    for name in ("HF_TOKEN", "hf_token", "--hf-token", "api_key", "VLLM_API_KEY", "password",
                 "AWS_SECRET_ACCESS_KEY", "db_passwd", "key", "--api-key"):  # fmt: skip
        assert is_secret_name(name), name
    for name in ("max_num_batched_tokens", "long_prefill_token_threshold", "kv_overcommit",
                 "keyboard", "tokens", "name", "max_tokens"):  # fmt: skip
        assert not is_secret_name(name), name


def test_a_config_shows_every_secret_as_stars() -> None:
    data = {
        "backend": {
            "env": {"HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "1"},
            "extra_args": ["--api-key", KEY, f"--hf-token={TOKEN}", "--max-num-seqs", "4"],
            "api_key": KEY,
        },
        "storage": f"postgresql://me:{PASSWORD}@db:5432/studies",
        "space": {"max_num_batched_tokens": {"low": 64}},
    }
    shown = redact_config(data)
    assert shown["backend"]["env"] == {"HF_TOKEN": REDACTED, "HF_HUB_OFFLINE": REDACTED}
    assert shown["backend"]["extra_args"] == [
        "--api-key", REDACTED, f"--hf-token={REDACTED}", "--max-num-seqs", "4"
    ]  # fmt: skip
    assert shown["backend"]["api_key"] == REDACTED
    assert shown["storage"] == f"postgresql://me:{REDACTED}@db:5432/studies"
    assert shown["space"] == data["space"]
    assert data["backend"]["api_key"] == KEY  # the original is untouched
    assert secret_values(data) == {TOKEN, KEY, PASSWORD}  # "1" is too short to scrub from text
    text = f"loaded with token {TOKEN} at postgresql://me:{PASSWORD}@db/x, key={KEY}"
    assert not {TOKEN, KEY, PASSWORD} & set(redact_text(text, secret_values(data)).split())
    assert redact_argv(["vllm", "--api-key", KEY]) == ["vllm", "--api-key", REDACTED]
    assert mask("sqlite:///x.db") == "sqlite:///x.db"


def test_a_study_never_writes_a_secret(study_env, tmp_path: Path) -> None:
    """A token in the environment and in backend.env, an API key and a storage-like URL with a
    password: 0 hits in the MLflow store, its artifacts, the study folder and Hydra's outputs."""
    env = {**study_env, "HF_TOKEN": TOKEN, "SLOGUARD_TEST_KEY": KEY}
    args = [
        "-m", "sloguard.tune", "budget=2", "workload=smoke", "study_name=s", "progress=false",
        "+backend.env.HF_TOKEN=${oc.env:HF_TOKEN}", "backend.api_key=${oc.env:SLOGUARD_TEST_KEY}",
        f"+backend.env.DB=postgresql://me:{PASSWORD}@db/x",
    ]  # fmt: skip
    done = run_cli(args, tmp_path, env)
    assert done.returncode == 0, done.stderr[-2000:]
    hits = [
        path
        for path in tmp_path.rglob("*")
        if path.is_file() and any(s.encode() in path.read_bytes() for s in (TOKEN, KEY, PASSWORD))
    ]
    assert hits == []
    assert (tmp_path / "mlruns").exists() or (tmp_path / "mlartifacts").exists()  # artifacts
    assert any(b"HF_TOKEN" in p.read_bytes() for p in tmp_path.rglob("config.yaml"))
