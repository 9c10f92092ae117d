import subprocess
import sys

from typer.testing import CliRunner

from hero_gym.cli import app


def test_list():
    result = CliRunner().invoke(app, ["list"])
    assert result.exit_code == 0
    assert "hero_gym/Lookup-v0" in result.output and "hero_gym/TauRetail-v0" in result.output


def _play(stdin: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hero_gym.cli", "play", *args], input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_play_lookup_with_piped_stdin():
    from hero_gym.envs.example import LookupEnv
    code = LookupEnv().table["banana"]
    out = _play(f"hello\nlookup(key=\"banana\")\n:tools\nanswer(code=\"{code}\")\n",
                "hero_gym/Lookup-v0", "-o", "task_index=1")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "What is the code for banana?" in text
    assert "lookup(key)" in text                    # tools shown
    assert f"Observation: {code}" in text           # tool result shown
    assert "Total reward: 1" in text
    assert text.count("Tools:") == 2                # :tools re-shows them


def test_play_reports_action_errors_and_truncation():
    out = _play("nope(x=1)\nlookup(k=1)\n", "hero_gym/Lookup-v0", "-k", "max_turns=2", "--seed", "0")
    assert out.returncode == 0, out.stderr
    assert "Action error (unknown_tool)" in out.stdout
    assert "Action error (invalid_arguments)" in out.stdout
    assert "truncated" in out.stdout
