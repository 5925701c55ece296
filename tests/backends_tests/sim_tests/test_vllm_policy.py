"""The vllm scheduling policy gives exactly the results the engine gave before it had policies.

The digests below were printed by this file's ``_digest`` (then building the engine's settings
inline) run on commit a6fce77 (one ``run_engine`` function): every workload in
``conf/workload`` (but the trace, which needs a file), under the default knobs, without chunked
prefill, with prefix caching and with a small batch, with step-time noise. A digest covers every
token time, send time and error, and the engine's counters, as exact floats. azure-code's were
printed again when its preset went from 1000 requests to 800 (1000 arrive past the load limit);
its 1000-request digests had matched a6fce77's. tool-calling's (prefix caching on in every
variant) were printed again when the hit rate took vLLM's denominator (every prompt token looked
up, not only the cacheable ones): each variant's digest without the hit rate was the same
before and after, and its rate went from 1.0 to 0.596. Seven were printed again on a CPU
without AVX-512, where they came out differently: numpy's AVX-512 ``exp`` rounds a few of the
step-time jitter factors an ulp apart from the C library's, which the jitter now uses on every
CPU (the other 41 were the same there).
"""

from __future__ import annotations

import hashlib

import pytest

from tests.backends_tests.sim_tests.conftest import serve_composed

VARIANTS: dict[str, dict[str, object]] = {
    "default": {},
    "whole-prefill": {"enable_chunked_prefill": False, "max_num_batched_tokens": 8192},
    "prefix-cache": {"enable_prefix_caching": True},
    "small-batch": {"max_num_seqs": 8, "max_num_batched_tokens": 1024},
}
WORKLOADS = ("azure-code", "azure-conv", "chat", "chat-poisson", "chatbot", "coding", "mixed",
             "reasoning", "smoke", "summarization", "summarize", "tool-calling")  # fmt: skip


def _digest(workload_name: str, variant: str) -> str:
    run, _ = serve_composed([f"workload={workload_name}"], knobs=VARIANTS[variant], jitter_seed=3)
    text = repr(
        (
            [(r.send_time, r.scheduled_time, r.error, r.token_times.tolist())
             for r in run.records],
            run.duration_s, run.timed_out, run.num_steps, run.num_preemptions,
            run.peak_kv_usage, run.mean_batch_tokens, run.prefix_cache_hit_rate,
        )
    )  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()[:16]


EXPECTED: dict[tuple[str, str], str] = {
    ("azure-code", "default"): "a32a9a4ede904d4d",
    ("azure-code", "whole-prefill"): "05a237846feda69b",
    ("azure-code", "prefix-cache"): "a32a9a4ede904d4d",
    ("azure-code", "small-batch"): "3081084eb52e3201",
    ("azure-conv", "default"): "bf468acb307ab055",
    ("azure-conv", "whole-prefill"): "3ed92dd50b938746",
    ("azure-conv", "prefix-cache"): "bf468acb307ab055",
    ("azure-conv", "small-batch"): "33b2c95df71cf6ec",
    ("chat", "default"): "bec7c244ab555b3c",
    ("chat", "whole-prefill"): "3ec70f6fdce6e87c",
    ("chat", "prefix-cache"): "bec7c244ab555b3c",
    ("chat", "small-batch"): "08cb68d6ca963812",
    ("chat-poisson", "default"): "b7a6d7c0dc36edb3",
    ("chat-poisson", "whole-prefill"): "c16aa7f7529c0917",
    ("chat-poisson", "prefix-cache"): "b7a6d7c0dc36edb3",
    ("chat-poisson", "small-batch"): "3733b69831665056",
    ("chatbot", "default"): "4477d492c1534ec4",
    ("chatbot", "whole-prefill"): "5c8f110f1ab5f6b8",
    ("chatbot", "prefix-cache"): "4477d492c1534ec4",
    ("chatbot", "small-batch"): "9ce4dcd290f099bb",
    ("coding", "default"): "817b2cc8f36af717",
    ("coding", "whole-prefill"): "445f50f9ccb37183",
    ("coding", "prefix-cache"): "817b2cc8f36af717",
    ("coding", "small-batch"): "bde3efe2bebe6df3",
    ("mixed", "default"): "df70a5c1804cc2e5",
    ("mixed", "whole-prefill"): "79d36813a8fad9d9",
    ("mixed", "prefix-cache"): "df70a5c1804cc2e5",
    ("mixed", "small-batch"): "3ce5649116980d63",
    ("reasoning", "default"): "22ac19e57e2b2db3",
    ("reasoning", "whole-prefill"): "538f9d7d8f3f28e4",
    ("reasoning", "prefix-cache"): "22ac19e57e2b2db3",
    ("reasoning", "small-batch"): "422e4c7b80f03350",
    ("smoke", "default"): "2c74676b5698d152",
    ("smoke", "whole-prefill"): "7e13766908ab5f9f",
    ("smoke", "prefix-cache"): "2c74676b5698d152",
    ("smoke", "small-batch"): "7db408c34582705f",
    ("summarization", "default"): "f901bcb14591c378",
    ("summarization", "whole-prefill"): "2535376ee6b1faa3",
    ("summarization", "prefix-cache"): "f901bcb14591c378",
    ("summarization", "small-batch"): "ce3b039b87fba8f8",
    ("summarize", "default"): "2f4b4b7d651e27ff",
    ("summarize", "whole-prefill"): "5321643924922a83",
    ("summarize", "prefix-cache"): "2f4b4b7d651e27ff",
    ("summarize", "small-batch"): "4ccd3af3e83d2d97",
    ("tool-calling", "default"): "67ac6cdb6c9d9185",
    ("tool-calling", "whole-prefill"): "b6d631c4f4941005",
    ("tool-calling", "prefix-cache"): "67ac6cdb6c9d9185",
    ("tool-calling", "small-batch"): "38ae7e772cb32c99",
}


@pytest.mark.parametrize("workload_name", WORKLOADS)
def test_vllm_policy_gives_the_recorded_results(workload_name: str) -> None:
    for variant in VARIANTS:
        assert _digest(workload_name, variant) == EXPECTED[workload_name, variant], variant


if __name__ == "__main__":  # prints the table above, for the commit the docstring names
    for name in WORKLOADS:
        for variant in VARIANTS:
            print(f"    ({name!r}, {variant!r}): {_digest(name, variant)!r},")
