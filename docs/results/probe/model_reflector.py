"""The model reflector's accuracy against the oracle on saved probe rollouts (episodes.jsonl of a probe run).

    python docs/results/probe/model_reflector.py EPISODES.jsonl N_EPISODES [--warm-start-pilot]

Runs :class:`~hero_gym.agents.reflector.LLMReflector` (the policy reflecting on its own episodes, as HERO
trains) on the first N episodes and prints the error verdict's precision / recall against the oracle
(``info["oracle_action"]`` recorded by the probe) and the target's exact-match rate, as the probe does.
"""

import json
import sys
import time

from hero_gym.agents.policy import HFPolicy
from hero_gym.agents.probe import normalise_action, turn_kind
from hero_gym.agents.probe_score import _model_verdict
from hero_gym.agents.reflector import LLMReflector
from hero_gym.records import load_jsonl


def main(path, n, pilot):
    eps = load_jsonl(path)[:n]
    if pilot:
        from hero_gym.agents.warmstart import WarmStartConfig, load_warm_started

        model, tok = load_warm_started(WarmStartConfig(
            env_kwargs={"max_results": 5, "instruction_once": True}, tool_prompt="compact", episodes=40, noise=0.1,
            recovery_rounds=0, eval_goals=0, max_new_tokens=64, max_turns=8))
    else:
        from hero_gym.agents.models import load_named_model

        model, tok = load_named_model("smollm2")
    t0 = time.perf_counter()
    refl = LLMReflector(HFPolicy(model, tok, lora=None)).reflect(eps)
    secs = time.perf_counter() - t0
    judged = flagged = wrong = tp = targets = exact = parsed = 0
    for ep, r in zip(eps, refl):
        parsed += len(r.turns)
        for t, turn in enumerate(ep.turns):
            a = normalise_action(turn.parsed_action or turn.action_text, "bracket")
            o = normalise_action(turn.info.get("oracle_action"), "bracket")
            kind = turn_kind(turn.action_error, a, o)
            if kind == "unjudged":
                continue
            v, tgt = _model_verdict(r.get(t), a, "bracket")
            judged += 1
            wrong += kind in ("invalid", "wrong")
            flagged += v == "error"
            tp += v == "error" and kind in ("invalid", "wrong")
            targets += tgt is not None
            exact += tgt is not None and tgt == o
    print(json.dumps({"episodes": len(eps), "turns_judged": judged, "turns_diagnosed": parsed, "flagged": flagged,
                      "wrong": wrong, "precision": tp / flagged if flagged else None,
                      "recall": tp / wrong if wrong else None, "targets": targets,
                      "target_exact": exact / targets if targets else None, "seconds": secs,
                      "attempts": [r.attempts for r in refl], "raw_first": (refl[0].raw or "")[:600]}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), "--warm-start-pilot" in sys.argv)
