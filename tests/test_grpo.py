"""The GRPO stage on a tiny live model (CPU): shared weights, a phase, metrics, state, end to end."""

import json

import pytest
import torch
from entry import run_eco_train

from model.config import from_preset
from model.decoder import SigmaLM
from training.data.tokenizer import train_tokenizer
from training.grpo import CodeReward, GRPOStage, GRPOStageConfig, hf_view, trl_grpo_available
from training.tasks import TaskGenerator


@pytest.fixture(scope="module")
def tiny():
    tok = train_tokenizer([t.prompt for t in TaskGenerator(0).take(200)] * 2, 600)
    model = SigmaLM(from_preset("tiny", vocab_size=640, max_seq_len=384))
    model.init_weights(seed=0)
    return tok, model


def test_hf_view_shares_weights_and_matches_logits(tiny):
    _, model = tiny
    hf = hf_view(model)
    x = torch.randint(0, 600, (2, 12))
    torch.testing.assert_close(hf(x).logits.float(), model(x))
    assert hf.model.embed_tokens.weight is model.embed_tokens.weight


def test_phase_updates_live_weights_and_reports_metrics(tiny, monkeypatch):
    assert trl_grpo_available()
    tok, model = tiny
    calls = []
    original = CodeReward.__call__

    def varied(self, prompts, completions, task_id, **_):  # mixed rewards so advantages are non-zero
        out = original(self, prompts, completions, task_id)
        calls.append(len(out))
        return [2.0 if i % 2 else -1.0 for i in range(len(out))]

    monkeypatch.setattr(CodeReward, "__call__", varied)
    cfg = GRPOStageConfig(enabled=True, every=2, steps=2, prompts_per_step=2, generations=2,
                          max_completion_length=12, eval_tasks=2, lr=1e-3)
    stage = GRPOStage(cfg, tok, device=torch.device("cpu"), seed=0)
    try:
        assert not stage.should_run(1) and stage.should_run(2)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        rng = torch.get_rng_state()
        m = stage.run_phase(model, 2)
        assert any((before[n] != p).any() for n, p in model.named_parameters())
        assert torch.equal(rng, torch.get_rng_state())  # the pretraining RNG is untouched
        assert all(p.requires_grad and p.grad is None for p in model.parameters())
        for k in ("grpo_pass_rate", "grpo_mean_reward", "grpo_timeouts", "grpo_infra_failures",
                  "grpo_executions_per_s", "grpo_accelerator", "grpo_phase_s", "grpo_heldout_pass_rate"):
            assert k in m
        assert m["grpo_executions"] == 8 and sum(calls) == 8
        json.dumps(m)
        st = stage.state_dict()
        assert json.loads(json.dumps(st)) == st and st["phases"] == 1
        stage.load_state_dict(st)
    finally:
        stage.close()


def test_grpo_phase_inside_a_tiny_run(tmp_path):
    out = tmp_path / "run"
    r = run_eco_train("@train_sigma_args_cpu.txt", "--steps", "4", "--warmup-steps", "1", "--output-dir", str(out), "--checkpoint-dir",
                      str(tmp_path / "ck"), "--grpo", "on", "--grpo-every", "2", "--grpo-steps", "2",
                      "--grpo-generations", "2", "--grpo-prompts", "1", "--grpo-completion-length", "16",
                      "--grpo-eval-tasks", "2", "--seq-len", "256", "--resume", "never", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    grpo = [x for x in recs if x["event"] == "grpo"]
    assert len(grpo) == 2 and all(x["grpo_steps"] == 2 for x in grpo)
    for k in ("grpo_pass_rate", "grpo_mean_reward", "grpo_timeouts", "grpo_infra_failures",
              "grpo_executions_per_s", "grpo_accelerator"):
        assert k in grpo[0]
    assert next(x for x in recs if x["event"] == "startup")["trl_grpo_available"] in (0, 1, True, False)
