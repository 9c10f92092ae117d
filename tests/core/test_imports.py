import subprocess
import sys


def test_core_and_envs_do_not_import_torch():
    code = (
        "import sys, hero_gym\n"
        "print(hero_gym.list_envs())\n"
        "import hero_gym.envs.example, hero_gym.envs.tau_bench, hero_gym.envs.webshop\n"
        "for name in ('hero_gym/Lookup-v0', 'hero_gym/TauRetail-v0', 'hero_gym/TauAirline-v0', 'hero_gym/WebShop-v0'):\n"
        "    e = hero_gym.make(name); e.reset(seed=0); e.close()\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "hero_gym/TauRetail-v0" in out.stdout
