"""The layout as users meet it: every README command names a real module, flag and file, and the
package installed elsewhere trains from a config named by its installed name."""
import concurrent.futures
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from maepp import config_files

_FENCE = re.compile(r"```sh\n(.*?)```", re.S)


def _readme_commands(repo_root):
    """Every command line of the README's sh blocks, continuation lines joined, comments cut."""
    commands = []
    for block in _FENCE.findall((repo_root / "README.md").read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def _python_modules(commands):
    """{module: [flags the README gives it]} for each `python -m MODULE ...` and `maepp-* ...`."""
    modules = {}
    for command in commands:
        words = shlex.split(command.replace("[", " ").replace("]", " ").replace("|", " "))
        if "-m" in words and words[words.index("-m") + 1].startswith("maepp"):
            i = words.index("-m") + 1
            module, rest = words[i], words[i + 1:]
            if module == "maepp.tools.bench":
                module, rest = f"{module} {rest[0]}", rest[1:]
            flags = [w.split("=")[0].lstrip("-") for w in rest if w.startswith("--") and len(w) > 2]
            modules.setdefault(module, set()).update(f for f in flags if "." not in f)  # config overrides aside
    return modules


@pytest.mark.long(seconds=30)
def test_readme_names_only_modules_flags_and_files_that_exist(repo_root):
    commands = _readme_commands(repo_root)
    modules = _python_modules(commands)
    assert {"maepp.train", "maepp.data.prepare", "maepp.export", "maepp.downstream.evaluate",
            "maepp.weights.convert", "maepp.tools.summary", "maepp.tools.bench step"} <= set(modules)
    def helpfull(module):
        return subprocess.run([sys.executable, "-m", *module.split(), "--helpfull"], cwd=repo_root,
                              capture_output=True, text=True, timeout=300)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = dict(zip(modules, pool.map(helpfull, modules)))
    for module, flags in modules.items():
        result = results[module]
        assert result.returncode in (0, 1) and "--" in result.stdout, (module, result.stderr[-2000:])  # absl exits 1
        for flag in flags:
            assert re.search(rf"--(\[no\])?{flag}:", result.stdout), f"README passes --{flag} to {module}"
    for command in commands:
        for word in shlex.split(command):
            for path in re.findall(r"^(?:launch|benchmarks|configs|docs)/[\w./-]+", word):
                assert (repo_root / path.split(":")[0]).exists(), f"README names {path}, which is not there"


def test_configs_resolve_by_path_or_installed_name(repo_root):
    by_name = config_files.installed("audiomaepp:micro")
    assert by_name.endswith(os.path.join("configs", "audiomaepp.py") + ":micro")
    assert config_files.installed("configs/mae.py:base") == "configs/mae.py:base"  # a path stays a path
    assert config_files.installed("nonesuch:base") == "nonesuch:base"  # left to ml_collections' error
    argv = ["prog", "--config", "mae:huge", "--model_config=audiomaepp:micro", "--workdir", "audiomaepp:x"]
    resolved = config_files.resolve_argv(argv)
    assert resolved[2].endswith("mae.py:huge") and resolved[3].endswith("audiomaepp.py:micro")
    assert resolved[5] == "audiomaepp:x"  # only config flags are resolved


@pytest.mark.xdist_group("install")
def test_pip_install_then_train_from_another_directory_by_config_name(repo_root, tmp_path):
    """`pip install .` into a fresh venv (dependencies from this one, so no network), then
    maepp-train with an installed config, run outside the repository."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    deps = next(p for p in map(pathlib.Path, sys.path) if p.name == "site-packages" and (p / "jax").is_dir())
    (site / "maepp_test_deps.pth").write_text(f"{deps}\n")  # a path only: this venv's own .pth files stay off
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", str(repo_root)], check=True, capture_output=True, cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [str(venv / "bin" / "maepp-train"), "--config", "audiomaepp:micro", "--workdir", "W",
         "--config.total_steps=2", "--config.warmup_steps=1", "--config.batch_size=8", "--config.log_every=1",
         "--config.data.eval_source=", "--config.profile.first_step=0"],
        cwd=elsewhere, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stopped at step 2" in result.stdout
    assert (elsewhere / "W" / "config.json").exists()
    installed = subprocess.run([str(python), "-c", "import maepp, maepp.configs; print(maepp.__file__)"],
                               capture_output=True, text=True, cwd=elsewhere, check=True).stdout
    assert str(venv) in installed  # the installed copy ran, not the repository's
