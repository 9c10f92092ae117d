"""The README's "register your own environment" example runs and passes check_env."""

import re
from pathlib import Path

import hero_gym

README = Path(__file__).resolve().parents[2] / "README.md"


def test_register_your_own_env_example():
    text = README.read_text()
    section = text.split("## Register your own environment", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert "mylab/Guess-v0" in hero_gym.list_envs()
    env = hero_gym.make("mylab/Guess-v0")
    hero_gym.check_env(env)
    env = hero_gym.make("mylab/Guess-v0")
    env.reset(seed=0)
    secret = env.unwrapped.secret
    assert env.step(f"guess(n={secret})")[1] == 0.0  # default parser is hermes: not a call -> message
    obs, reward, terminated, *_ = env.step(hero_gym.ToolCall(name="guess", arguments={"n": secret}))
    assert (obs, reward, terminated) == ("Correct!", 1.0, True)
