"""The layout as users meet it: every command in the README and docs/ names a real module, flag and
file; docs/layout.md names every module and the imports keep its order; every cited document and
path is in the repository; the package installed elsewhere trains from a config named by its
installed name."""

import concurrent.futures
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from maepp import program

_FENCE = re.compile(r"```sh\n(.*?)```", re.S)


def _readme_commands(repo_root):
    """Every command line of the sh blocks of the README and docs/, continuation lines joined,
    comments cut."""
    commands = []
    pages = [repo_root / "README.md", *sorted((repo_root / "docs").glob("*.md"))]
    for block in (block for page in pages for block in _FENCE.findall(page.read_text())):
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
            module, rest = words[i], words[i + 1 :]
            if module == "maepp.tools.bench":
                module, rest = f"{module} {rest[0]}", rest[1:]
            flags = [w.split("=")[0].lstrip("-") for w in rest if w.startswith("--") and len(w) > 2]
            modules.setdefault(module, set()).update(f for f in flags if "." not in f)  # config overrides aside
    return modules


@pytest.mark.e2e
@pytest.mark.long(seconds=30)
def test_the_docs_name_only_modules_flags_and_files_that_exist(repo_root):
    commands = _readme_commands(repo_root)
    modules = _python_modules(commands)
    assert {
        "maepp.train",
        "maepp.data.prepare",
        "maepp.export",
        "maepp.downstream.evaluate",
        "maepp.weights.convert",
        "maepp.tools.summary",
        "maepp.tools.bench step",
    } <= set(modules)

    def helpfull(module):
        return subprocess.run(
            [sys.executable, "-m", *module.split(), "--helpfull"],
            cwd=repo_root,
            capture_output=True,
            text=True,
            timeout=300,
        )

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = dict(zip(modules, pool.map(helpfull, modules)))
    for module, flags in modules.items():
        result = results[module]
        assert result.returncode in (0, 1) and "--" in result.stdout, (module, result.stderr[-2000:])  # absl exits 1
        for flag in flags:
            assert re.search(rf"--(\[no\])?{flag}:", result.stdout), f"the docs pass --{flag} to {module}"
    for command in commands:
        for word in shlex.split(command):
            for path in re.findall(r"^(?:launch|benchmarks|configs|docs)/[\w./-]+", word):
                assert (repo_root / path.split(":")[0]).exists(), f"the docs name {path}, which is not there"


def test_configs_resolve_by_path_or_installed_name(repo_root):
    by_name = program.installed("audiomaepp:micro")
    assert by_name.endswith(os.path.join("configs", "audiomaepp.py") + ":micro")
    assert program.installed("configs/mae.py:base") == "configs/mae.py:base"  # a path stays a path
    assert program.installed("nonesuch:base") == "nonesuch:base"  # left to ml_collections' error
    argv = ["prog", "--config", "mae:huge", "--model_config=audiomaepp:micro", "--workdir", "audiomaepp:x"]
    resolved = program.resolve_argv(argv)
    assert resolved[2].endswith("mae.py:huge") and resolved[3].endswith("audiomaepp.py:micro")
    assert resolved[5] == "audiomaepp:x"  # only config flags are resolved


@pytest.mark.e2e
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
    build_outputs = ("build", "maepp.egg-info")  # where setuptools writes unless told otherwise (setup.py)
    present = {name for name in build_outputs if (repo_root / name).exists()}
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            str(repo_root),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    assert {name for name in build_outputs if (repo_root / name).exists()} == present, "pip wrote into the checkout"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [
            str(venv / "bin" / "maepp-train"),
            "--config",
            "audiomaepp:micro",
            "--workdir",
            "W",
            "--config.total_steps=2",
            "--config.warmup_steps=1",
            "--config.batch_size=8",
            "--config.log_every=1",
            "--config.evals.held_out.source=",
            "--config.profile.first_step=0",
        ],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stopped at step 2" in result.stdout
    assert (elsewhere / "W" / "config.json").exists()
    installed = subprocess.run(
        [str(python), "-c", "import maepp, maepp.configs; print(maepp.__file__)"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        check=True,
    ).stdout
    assert str(venv) in installed  # the installed copy ran, not the repository's


def _layout_groups(repo_root) -> dict:
    """docs/layout.md's groups, in order -> {module name: group index}."""
    groups, index = {}, -1
    for line in (repo_root / "docs" / "layout.md").read_text().splitlines():
        if line.startswith("## "):
            index = index + 1 if not line.startswith("## Outside") else None
        elif index is not None and line.startswith("|"):
            for path in re.findall(r"`((?:maepp|configs)/[\w/]+\.py)`", line):
                groups[_module_name(path)] = index
    return groups


def _module_name(path: str) -> str:
    parts = pathlib.PurePath(path).with_suffix("").parts
    parts = ("maepp", "configs", *parts[1:]) if parts[0] == "configs" else parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(repo_root, modules) -> dict:
    """module -> the maepp modules it imports (`from maepp import x` names module maepp.x)."""
    import ast

    edges = {}
    for module in modules:
        parts = module.split(".")
        relative = pathlib.Path("configs", *parts[2:]) if parts[:2] == ["maepp", "configs"] else pathlib.Path(*parts)
        path = repo_root / relative.with_suffix(".py")
        if not path.exists():
            path = repo_root / relative / "__init__.py"
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "maepp":
                targets |= {
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names
                }
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.split(".")[0] == "maepp"}
        edges[module] = targets - {module}
    return edges


def test_docs_layout_names_every_module_and_imports_go_up_its_order_without_cycles(repo_root):
    groups = _layout_groups(repo_root)
    files = [
        p.relative_to(repo_root).as_posix() for p in [*repo_root.glob("maepp/**/*.py"), *repo_root.glob("configs/*.py")]
    ]
    unnamed = sorted(f for f in files if _module_name(f) not in groups)
    assert not unnamed, f"docs/layout.md does not name {unnamed}"
    edges = _imports(repo_root, groups)
    against = [(a, b) for a, targets in edges.items() for b in targets if groups[b] > groups[a]]
    assert not against, f"imports against docs/layout.md's order (module -> what it imports): {against}"
    state = {}  # a depth-first search: 1 on the current path, 2 done

    def visit(module, path):
        state[module] = 1
        for target in sorted(edges[module]):
            assert state.get(target) != 1, f"an import cycle: {' -> '.join([*path, target])}"
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(groups):
        if module not in state:
            visit(module, [module])


def _slug(heading: str) -> str:
    """A Markdown heading's anchor, as GitHub makes it."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _text_files(repo_root):
    skipped = {".venv", ".git", ".peer", ".whl", "runs", "build", "__pycache__", ".pytest_cache"}
    for path in repo_root.rglob("*"):
        relative = path.relative_to(repo_root)
        if (
            path.is_file()
            and not skipped & set(relative.parts)
            and relative.parts[:2] != ("tests", "data")
            and (path.suffix in (".py", ".md", ".sh", ".sbatch", ".toml", ".txt", ".cfg") or path.name == "Makefile")
        ):
            yield relative, path.read_text()


def test_every_cited_document_and_path_is_in_the_repository(repo_root):
    """The explanations point inside the repository: no file cites a document kept beside it, and
    every path a file names (docs pages with their sections, modules, scripts) exists."""
    outside = re.compile("|".join(re.escape(name) for name in ("PAPER" + ".md", "STACK" + ".md", "../" + "shared")))
    # A path from the repository's root, not the tail of another path (~/maepp/.venv on a TPU worker).
    cited = re.compile(r"(?<![\w~/.-])((?:docs|maepp|configs|tests|benchmarks|launch)/[\w./-]*\w)(#[\w-]+)?")
    headings = {}
    for page in (repo_root / "docs").glob("*.md"):
        headings[f"docs/{page.name}"] = {
            _slug(line.lstrip("#")) for line in page.read_text().splitlines() if line.startswith("#")
        }
    problems = []
    for relative, text in _text_files(repo_root):
        problems += [f"{relative} cites {m.group(0)}, outside the repository" for m in outside.finditer(text)]
        for match in cited.finditer(text):
            path, anchor = match.group(1), match.group(2)
            if "*" in path or path.endswith((".jsonl-", "/")) or (not (repo_root / path).exists() and "." not in path):
                continue  # a pattern, or a folder named in prose
            if not (repo_root / path).exists():
                problems.append(f"{relative} cites {path}, which is not there")
            elif anchor and anchor[1:] not in headings.get(path, set()):
                problems.append(f"{relative} cites {path}{anchor}: no such section")
    assert not problems, "\n".join(problems)


@pytest.mark.e2e
def test_the_extras_pull_no_cuda_wheel_and_no_second_tensorflow(repo_root, tmp_path):
    """What pip would add for every extra at once, in this environment (PyTorch's CPU build
    installed, as the README has a CPU user install it first): no nvidia-* wheel, and no
    `tensorflow` beside tensorflow-cpu."""
    report = tmp_path / "report.json"
    extras = ".[torch,hear,tpu,gpu-aot,test]"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report), extras],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    added = {entry["metadata"]["name"].lower() for entry in json.loads(report.read_text())["install"]}
    assert "maepp" in added and not {name for name in added if name.startswith("nvidia-")}, added
    assert "tensorflow" not in added, added
