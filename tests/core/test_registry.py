import subprocess
import sys
import textwrap

import gymnasium as gym

import hero_gym

SHIPPED = ["hero_gym/Lookup-v0", "hero_gym/TauAirline-v0", "hero_gym/TauRetail-v0", "hero_gym/WebShop-v0",
           "hero_gym/WebShopBrowser-v0"]


def test_shipped_envs_are_listed_and_known_to_gymnasium():
    envs = hero_gym.list_envs()
    for env_id in SHIPPED:
        assert env_id in envs
        assert env_id in gym.registry


def test_gymnasium_make_works_directly():
    env = gym.make("hero_gym/Lookup-v0", max_turns=2)
    assert env.unwrapped.max_turns == 2
    env.close()


def test_register_custom_env():
    hero_gym.register("mylab/Custom-v0", "hero_gym.envs.example.lookup:LookupEnv", num_items=2)
    assert "mylab/Custom-v0" in hero_gym.list_envs()
    env = hero_gym.make("mylab/Custom-v0")
    assert env.unwrapped.num_tasks() == 2
    env.close()


PLUGIN = textwrap.dedent('''
    from hero_gym.envs.example import LookupEnv

    class EchoEnv(LookupEnv):
        """A third-party env."""

    def register_more():
        import hero_gym
        hero_gym.register("thirdparty/Hooked-v1", "hero_gym_test_plugin:EchoEnv")
''')


def test_entry_point_plugin_is_discovered(tmp_path):
    """A package exposing envs through the ``hero_gym.envs`` group shows up in list_envs()."""
    (tmp_path / "hero_gym_test_plugin.py").write_text(PLUGIN)
    dist = tmp_path / "hero_gym_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: hero-gym-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[hero_gym.envs]\nthirdparty/Echo-v0 = hero_gym_test_plugin:EchoEnv\n"
        "hero_gym_test_plugin = hero_gym_test_plugin:register_more\n")
    code = ("import sys, hero_gym; envs = hero_gym.list_envs(); print(envs); "
            "assert 'thirdparty/Echo-v0' in envs and 'thirdparty/Hooked-v1' in envs; "
            "e = hero_gym.make('thirdparty/Echo-v0'); print(type(e.unwrapped).__name__)")
    out = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(tmp_path), "PATH": ""},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "EchoEnv" in out.stdout


def test_broken_plugin_warns_instead_of_breaking(tmp_path):
    dist = tmp_path / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[hero_gym.envs]\nbroken = no_such_module:register\n")
    code = "import hero_gym; print(len(hero_gym.list_envs()))"
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], env={"PYTHONPATH": str(tmp_path), "PATH": ""},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "could not load env plugin 'broken'" in out.stderr


def test_the_core_names_no_env_module_and_registration_is_lazy():
    from pathlib import Path
    core = Path(hero_gym.__file__).parent
    for path in core.glob("*.py"):
        if path.name == "cli.py":   # its webshop-serve command starts that env's server
            continue
        text = path.read_text()
        for module in ("tau_bench", "webshop", "example.lookup"):
            assert module not in text, f"{path.name} names the env module {module}"
    code = ("import sys, hero_gym; assert 'hero_gym/TauRetail-v0' in hero_gym.list_envs(); "
            "assert not [m for m in sys.modules if m.startswith(('hero_gym.envs.tau_bench', 'hero_gym.envs.webshop'))]")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_shipped_registration_is_idempotent():
    from hero_gym.envs import SHIPPED_ENVS, register_envs
    register_envs()
    assert set(SHIPPED_ENVS) <= set(hero_gym.list_envs())
