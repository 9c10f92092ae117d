"""A few HEROTrainer steps on CPU, logging the distillation loss and the env reward per step.

    python benchmarks/trl_hero_run.py ENV_ID MODEL METHOD STEPS [key=value env kwargs]

e.g. `python benchmarks/trl_hero_run.py hero_gym/Lookup-v0 tiny hero_rules 3`; env vars BATCH, GEN, MAXLEN, ITERS
(and TEACH, see below) size the run. The runs quoted in docs/trl.md were made with it.
"""
import os
import sys
import time

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
import torch  # noqa: E402
from trl.chat_template_utils import qwen2_5_chat_template  # noqa: E402

from hero_gym.adapters.trl import HEROConfig, HEROTrainer, environment_factory, task_dataset  # noqa: E402
from hero_gym.agents.models import load_named_model  # noqa: E402
from hero_gym.tools import ToolSpec  # noqa: E402

env_id, model_name, method, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
kw = dict(a.split("=", 1) for a in sys.argv[5:])
kw = {k: (int(v) if v.isdigit() else {"true": True, "false": False}.get(v, v)) for k, v in kw.items()}
torch.manual_seed(0)
torch.set_num_threads(2)
model, tok = load_named_model(model_name, device="cpu", dtype=torch.float32)
tok.chat_template = qwen2_5_chat_template
tools = None
if "WebShop" in env_id:
    from hero_gym.envs.webshop.env import SEARCH_TOOL

    tools = [SEARCH_TOOL, ToolSpec(name="click", description="Click a button on the current page (its text).",
                                   parameters={"type": "object", "required": ["target"], "properties": {
                                       "target": {"type": "string", "description": "the button text"}}})]
factory = environment_factory(env_id, tools=tools, **kw)
data = task_dataset(env_id, task_indices=list(range(8)), split="train" if "WebShop" in env_id else None, **kw)
E = {k: int(os.environ.get(k, d)) for k, d in [("BATCH", 4), ("GEN", 2), ("MAXLEN", 160), ("ITERS", 5)]}
args = HEROConfig(output_dir=f"/tmp/trl_run_{method}", method=method, max_steps=steps,
                  per_device_train_batch_size=E["BATCH"], num_generations=E["GEN"], max_completion_length=E["MAXLEN"],
                  max_tool_calling_iterations=E["ITERS"], logging_steps=1,
                  learning_rate=1e-5, report_to="none", bf16=False, use_cpu=True, save_strategy="no", seed=0,
                  disable_tqdm=True)
trainer = HEROTrainer(model=model, processing_class=tok, train_dataset=data, environment_factory=factory, args=args)
if os.environ.get("TEACH"):   # fit the model to open with a lookup call (so rollouts are multi-turn)
    import json

    env = factory()
    msgs = [*data[0]["prompt"][:-1], {"role": "user", "content": env.reset(**data[0])}]
    p_ids = tok.apply_chat_template(msgs, tools=trainer.tools, add_generation_prompt=True, tokenize=True,
                                    return_dict=True)["input_ids"]
    call = json.dumps({"name": "lookup", "arguments": {"key": os.environ["TEACH"]}})
    c_ids = tok(f"<tool_call>\n{call}\n</tool_call><|im_end|>", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p_ids + c_ids])
    opt = torch.optim.Adam(trainer.model.parameters(), lr=1e-2)
    for _ in range(200):
        h = trainer.model.model(input_ids=ids).last_hidden_state[0, len(p_ids) - 1:-1]
        loss = torch.nn.functional.cross_entropy(trainer.model.lm_head(h), torch.tensor(c_ids))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.002:
            break
    trainer.hero_teacher.shadow = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    print(f"taught the opening call (cross-entropy {loss.item():.4f})")
t0 = time.time()
trainer.train()
print(f"wall {time.time() - t0:.0f} s for {steps} steps")
keys = ["loss", "hero/distill_loss", f"rewards/{factory.__name__}/mean", "hero/env_success", "hero/turns_per_episode",
        "hero/scored_turns", "hero/masked_turns", "tools/call_frequency", "completions/mean_length"]
for row in trainer.state.log_history:
    if "hero/distill_loss" in row:
        print(f"step {row['step']}: " + ", ".join(f"{k}={row.get(k)}" for k in keys))
for ep in trainer._hero_batch.episodes[:2]:
    for t in ep.turns:
        print("  turn", t.index, repr(t.action_text[:100]), t.action_error and t.action_error["kind"], repr(t.observation[:80]))
