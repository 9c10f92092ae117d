import io
import subprocess
import sys

import pytest

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


# ---------------------------------------------------------------- ordinary mistakes: one line, no traceback
from hero_gym.cli import main  # noqa: E402

MISTAKES = [
    # (argv, words the one-line error must contain)
    (["play", "nonexistent/Env-v0"], ["unknown env", "hero_gym/Lookup-v0"]),
    (["play", "hero_gym/tauretail-v0"], ["did you mean", "hero_gym/TauRetail-v0"]),
    (["play", "hero_gym/Lookup-v0", "--parser", "bogus"], ["unknown parser", "hermes"]),
    (["play", "hero_gym/WebShop-v0", "-k", "num_products=abc"], ["num_products", "expected int"]),
    (["play", "hero_gym/Lookup-v0", "-k", "foo=1"], ["'foo'", "num_items"]),
    (["play", "hero_gym/Lookup-v0", "-k", "foo"], ["key=value"]),
    (["play", "hero_gym/Lookup-v0", "-o", "task_index=1000000000"], ["task_index", "1000000000"]),
    (["play", "hero_gym/Lookup-v0", "--bogus-flag"], ["--bogus-flag"]),
    (["train", "hero_gym/Lookup-v0", "--method", "foo"], ["unknown method", "grpo"]),
    (["train", "hero_gym/Lookup-v0", "-c", "bogus=1"], ["TrainConfig field", "turn_budget"]),
    (["train", "hero_gym/Lookup-v0", "--model", "nonexistent/model"], ["nonexistent/model"]),
    (["eval", "hero_gym/Lookup-v0", "--model", "tiny", "--adapter", "/nonexistent/adapter"],
     ["adapter", "/nonexistent/adapter"]),
]


@pytest.mark.parametrize("argv,words", MISTAKES, ids=[" ".join(a) for a, _ in MISTAKES])
def test_cli_mistakes_print_one_line_and_fail(argv, words, capsys, monkeypatch):
    monkeypatch.delenv("HERO_GYM_DEBUG", raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO(":quit\n"))
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1, err
    assert err.startswith("hero-gym: error:") and "Traceback" not in err
    for w in words:
        assert w in err, (w, err)


def test_cli_debug_shows_the_traceback(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    with pytest.raises(Exception, match="unknown env"):
        main(["play", "nope/Env-v0", "--debug"])


def test_eval_refuses_an_adapter_trained_on_another_base_model(tmp_path, capsys):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    (adapter / "hero_cli.json").write_text('{"model": "tiny"}')
    assert main(["eval", "hero_gym/Lookup-v0", "--model", "smollm2", "--adapter", str(adapter)]) == 2
    err = capsys.readouterr().err
    assert "trained on base model 'tiny'" in err and "--model tiny" in err


def test_the_console_script_prints_no_traceback():
    out = subprocess.run([sys.executable, "-m", "hero_gym.cli", "play", "hero_gym/Nope-v0"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and "Traceback" not in out.stderr


def test_play_shows_webshop_system_prompt_with_brackets_and_a_summary():
    out = _play("search[red shoes]\n", "hero_gym/WebShop-v0", "-k", "num_products=50", "--seed", "0")
    assert out.returncode == 0, out.stderr
    assert "search[your query]" in out.stdout and "click[buy now]" in out.stdout
    assert "> search[red shoes]" in out.stdout            # piped actions are echoed
    assert "Summary: hero_gym/WebShop-v0, 1 turn(s)" in out.stdout


# ---------------------------------------------------------------- help text and budgets
HELP_COMMANDS = [[], ["list"], ["play"], ["serve"], ["webshop-serve"], ["train"], ["eval"], ["warmstart"]]


@pytest.mark.parametrize("cmd", HELP_COMMANDS, ids=lambda c: " ".join(c) or "hero-gym")
def test_help_has_no_type_tags_or_rst_markup(cmd, capsys):
    assert main([*cmd, "--help"]) == 0
    text = capsys.readouterr().out
    assert "Usage:" in text and "--help" in text
    for tag in ("<bool>", "<str>", "<int>", "<list[", "<path>", "``"):
        assert tag not in text, (tag, text)


def test_train_help_says_budgets_count_whole_batches(capsys):
    main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "counted in whole batches" in text and "KEY=VALUE" in text


@pytest.mark.parametrize("budget, words", [("-1", ["must be > 0", "-1"]), ("0", ["must be > 0"]),
                                           ("3", ["below one batch", "= 8 episodes", ">= 8"])])
def test_train_refuses_impossible_budgets(budget, words, capsys, tmp_path):
    code = main(["train", "hero_gym/Lookup-v0", "--model", "tiny", "--budget", budget, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and all(w in err for w in words), err
    assert not (tmp_path / "r").exists()          # nothing trained, no adapter written


def test_train_says_when_a_budget_buys_one_whole_batch(monkeypatch, capsys, tmp_path):
    """A budget below one full batch is accepted with a note saying how many turns the batch may take."""
    import hero_gym.cli as cli

    seen = {}

    def stop(cfg):
        seen["cfg"] = cfg
        raise cli.CLIError("stop here")

    real = cli._check_budget
    monkeypatch.setattr(cli, "_check_budget", lambda cfg: (real(cfg), stop(cfg)))
    main(["train", "hero_gym/Lookup-v0", "--model", "tiny", "--budget", "12", "--out", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert "one batch here is 8 episodes of up to 6 turns" in out and "between 8 and 48 turns" in out


def test_ctrl_c_prints_one_line_and_exits_130(monkeypatch, capsys):
    """Ctrl-C inside a command (here `hero-gym bench`) ends with one line saying what is kept, no traceback."""
    pytest.importorskip("torch")
    from hero_gym.agents import bench

    def interrupted(argv, parser=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "main", interrupted)
    code = main(["bench", "--quick"])
    err = capsys.readouterr().err.strip()
    assert code == 130 and len(err.splitlines()) == 1 and "interrupted; what finished is kept" in err
