"""Colab parity: a chapter opened in Colab finds every committed file the rendered book shows.

The simulation, cheap enough for CI and offline:

- "Colab's" Python is a fresh virtual environment whose preinstalled packages (torch,
  torchvision, the scientific stack, Jupyter) are those of the course's `.venv`, minus the
  course itself: its editable install is hidden, so ``import utils`` only works once the setup
  cell has installed it. A stub ``google.colab`` is imported at kernel start, as Colab does.
- The repository is a git repository made from what this checkout commits (tracked files and
  untracked ones that git does not ignore), served by a ``file://`` URL.
- Notebooks run from a ``content`` folder outside the repository, as Colab runs them from
  ``/content``, in a real IPython kernel: the setup cell's ``!git`` and ``%pip`` lines run as
  written; only its URL and clone folder (``scripts.sync_setup_cells.setup_source``) differ
  from the book's cell. pip works offline (``PIP_NO_INDEX``), without build isolation.

Then a check notebook (the setup cell and one cell that asks the locators of ``utils``) looks
up every committed file that any chapter reads, found by scanning the chapters' code
(``repo_file``, ``repo_files``, ``figures.show``, ``committed_results_dir``, ``runs``, and any
string naming a file under ``results/`` or ``book/figures/``); and chapter 9 runs end to end
and must show the committed latency table. A committed file a chapter reads that the simulated
Colab cannot find fails ``test_every_committed_file_a_chapter_uses_is_found_in_colab`` with its
name and the chapters that read it.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path, PurePosixPath

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from scripts import sync_setup_cells as setup_cells

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
NOTEBOOKS = setup_cells.book_notebooks(BOOK)
LIGHT_CHAPTER = BOOK / "09_inference_cost.ipynb"  # quick mode: seconds on a CPU; shows a committed table
# The course's own install in .venv (editable): Colab does not have it before the setup cell.
COURSE_INSTALL = re.compile(r"^(__editable__.*resnet_step_by_step.*|resnet_step_by_step.*\.dist-info|utils)$")
KERNEL_NAME = "colab-simulated"
# A file no chapter uses and the repository does not commit: the check must report it missing.
CONTROL_MISSING = "results/no-such-result.json"

# ----------------------------------------------------------------------------- what the chapters use

_STRING = r"""\(\s*(?P<q>["'])(?P<arg>[^"'\n]+)(?P=q)\s*\)"""
USE_PATTERNS = {
    # files.repo_file("results").glob("time-to-accuracy-*.json"): every match
    "glob": re.compile(r"repo_file" + _STRING + r"""\s*\.glob\(\s*(?P<q2>["'])(?P<pattern>[^"'\n]+)(?P=q2)\s*\)"""),
    "file": re.compile(r"repo_file" + _STRING),
    "files": re.compile(r"repo_files" + _STRING),
    "figure": re.compile(r"figures\.(?:show|path)" + _STRING),
}
# Locators that return a committed folder, and the folder each should give.
FOLDER_LOCATORS = {
    "results/cifar10": re.compile(r"\bcommitted_results_dir\("),
    "results/runs": re.compile(r"\bruns\.(?:load_finished|finished|execute|results_root)\("),
    "results/weights": re.compile(r"\bweights\.(?:load_committed|committed_record)\("),
}


def _code(nb) -> str:
    return "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code" and "colab-setup" not in cell.metadata.get("tags", []))


def committed_uses(code: str) -> set[tuple[str, str]]:
    """``(kind, key)`` for every committed file or folder that ``code`` reads.

    kind ``file`` (key: a path), ``files`` (key: a glob pattern) or ``folder`` (key: the folder
    a locator such as ``reproduction.committed_results_dir()`` should return).
    """
    uses = set()
    globbed = set()
    for match in USE_PATTERNS["glob"].finditer(code):
        uses.add(("files", f"{match['arg'].rstrip('/')}/{match['pattern']}"))
        globbed.add(match.start())
    uses |= {("file", m["arg"]) for m in USE_PATTERNS["file"].finditer(code) if m.start() not in globbed}
    uses |= {("files", m["arg"]) for m in USE_PATTERNS["files"].finditer(code)}
    uses |= {("file", f"book/figures/{m['arg']}.svg") for m in USE_PATTERNS["figure"].finditer(code)}
    uses |= {("folder", folder) for folder, pattern in FOLDER_LOCATORS.items() if pattern.search(code)}
    return uses


LITERAL = re.compile(r"""(?P<q>["'])(?P<text>[^"'\n]{3,})(?P=q)""")
# Folders whose files a chapter shows: a string naming one of them is a use, however the path is built
# (``root / "results" / "study-degradation-quick.json"`` as much as ``repo_file(...)``).
SHOWN_FOLDERS = ("results/", "book/figures/")


def named_committed_files(code: str, committed: list[str]) -> set[tuple[str, str]]:
    """``("file", path)`` for every committed result or figure whose path or file name ``code`` spells out."""
    literals = {match["text"] for match in LITERAL.finditer(code)}
    return {
        ("file", name)
        for name in committed
        if name.startswith(SHOWN_FOLDERS)
        and any(text == name or text == PurePosixPath(name).name or name.endswith("/" + text) for text in literals)
    }


def chapter_uses() -> dict[tuple[str, str], list[str]]:
    """Every committed file or folder any notebook of the book reads, and which notebooks do."""
    committed = committed_files()
    uses: dict[tuple[str, str], list[str]] = {}
    for path in NOTEBOOKS:
        code = _code(nbformat.read(path, as_version=4))
        for use in committed_uses(code) | named_committed_files(code, committed):
            uses.setdefault(use, []).append(path.name)
    return uses


def committed_files(root: Path = ROOT) -> list[str]:
    """What the checkout commits: tracked files and untracked ones git does not ignore."""
    if subprocess.run(["git", "rev-parse", "--git-dir"], cwd=root, capture_output=True).returncode != 0:
        pytest.fail(f"{root} is not a git checkout: the Colab simulation clones what it commits")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=root, capture_output=True, check=True).stdout.decode()  # fmt: skip
    return sorted({name for name in listed.split("\0") if name and (root / name).is_file()})


def _glob_matches(name: str, pattern: str) -> bool:
    """``Path.glob``'s rule for a pattern without ``**``: folder by folder, ``*`` never crosses a ``/``."""
    parts, pattern_parts = name.split("/"), pattern.split("/")
    return len(parts) == len(pattern_parts) and all(map(fnmatch.fnmatchcase, parts, pattern_parts))


def expected_files(kind: str, key: str, committed: list[str]) -> list[str]:
    """The committed files a use of ``kind`` and ``key`` must find."""
    if kind == "file":
        return [key] if key in committed else [name for name in committed if name.startswith(key.rstrip("/") + "/")]
    if kind == "files":
        return [name for name in committed if _glob_matches(name, key)]
    return [name for name in committed if name.startswith(key + "/")]


# ----------------------------------------------------------------------------- static checks


def test_the_scan_finds_what_a_chapter_reads():
    code = "\n".join([
        'cpu = files.repo_file("results/latency-cpu.json")',
        "gpu = files.repo_files('results/latency-*.json')",
        'for path in sorted(files.repo_file("results").glob("time-to-accuracy-*.json")):',
        'figures.show("residual-block")',
        "RESULTS = reproduction.committed_results_dir()",
        "record, model = runs.load_finished(CIFAR_RUN)",
    ])  # fmt: skip
    assert committed_uses(code) == {
        ("file", "results/latency-cpu.json"),
        ("files", "results/latency-*.json"),
        ("files", "results/time-to-accuracy-*.json"),
        ("file", "book/figures/residual-block.svg"),
        ("folder", "results/cifar10"),
        ("folder", "results/runs"),
    }
    assert committed_uses("x = 1  # no committed file") == set()
    committed = ["results/study-degradation-quick.json", "results/README.md", "utils/files.py"]
    built = 'study = read_json(root / "results" / "study-degradation-quick.json")\nname = "files.py"'
    assert named_committed_files(built, committed) == {("file", "results/study-degradation-quick.json")}
    in_results = ["results/latency-cpu.json", "results/cifar10/resnet20-seed0.json", "book/figures/a.svg"]
    assert expected_files("files", "results/*.json", in_results) == ["results/latency-cpu.json"]
    assert expected_files("files", "results/*/*.json", in_results) == ["results/cifar10/resnet20-seed0.json"]
    assert expected_files("folder", "results/cifar10", in_results) == ["results/cifar10/resnet20-seed0.json"]


def test_the_chapters_read_committed_files_through_the_locator():
    uses = chapter_uses()
    assert ("file", "results/latency-cpu.json") in uses and LIGHT_CHAPTER.name in uses["file", "results/latency-cpu.json"], (
        f"{LIGHT_CHAPTER.name} should read its recorded table with files.repo_file('results/latency-cpu.json')"
    )


def test_every_file_a_chapter_reads_is_committed():
    committed = committed_files()
    missing = [f"{', '.join(names)}: {key}" for (kind, key), names in sorted(chapter_uses().items())
               if kind == "file" and not expected_files(kind, key, committed)]  # fmt: skip
    assert not missing, "chapters read files the repository does not commit (so Colab cannot have them):\n" + "\n".join(missing)


MARKDOWN_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)|<img\b[^>]*\bsrc\s*=\s*[\"']([^\"']+)")


def relative_images(markdown: str) -> list[str]:
    """Images a markdown text refers to by a relative path (which Colab cannot show)."""
    targets = [a or b for a, b in MARKDOWN_IMAGE.findall(markdown)]
    return [t for t in targets if not re.match(r"^(https?:|data:)", t)]


def test_relative_image_detection():
    assert relative_images("![block](figures/residual-block.svg) and <img src='../x.png'>") == [
        "figures/residual-block.svg",
        "../x.png",
    ]
    assert relative_images("![ok](https://example.org/a.svg) ![inline](data:image/png;base64,AAAA)") == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_no_markdown_image_by_relative_path(path):
    nb = nbformat.read(path, as_version=4)
    found = [(i, t) for i, cell in enumerate(nb.cells) if cell.cell_type == "markdown" for t in relative_images(cell.source)]
    assert not found, (
        f"{path.name}: markdown cells show images by a relative path, which Colab cannot display: {found}; "
        "show a diagram with utils.figures.show(name) in a code cell instead"
    )


def test_the_simulated_cell_is_the_books_cell_but_for_url_and_folder():
    url, branch = setup_cells.repository_settings()
    colab_folder = setup_cells.colab_clone_dir(url)
    assert colab_folder == "/content/" + PurePosixPath(url).name
    local = setup_cells.setup_source("file:///tmp/origin", branch, "/tmp/content/course")
    book = setup_cells.expected_setup_source()
    assert local.replace("file:///tmp/origin", url).replace("/tmp/content/course", colab_folder) == book
    with pytest.raises(ValueError, match="clone_dir='/tmp/a b'"):
        setup_cells.setup_source("file:///tmp/origin", branch, "/tmp/a b")


def test_contributing_quotes_the_current_setup_cell():
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    quoted = re.search(r"```ipython3\n(   # Colab setup:.*?)\n   ```", text, re.DOTALL)
    assert quoted, "CONTRIBUTING.md should quote the Colab setup cell in its 'The first two cells' section"
    cell = "\n".join(line[3:] for line in quoted.group(1).splitlines())
    assert cell == setup_cells.expected_setup_source(), (
        "CONTRIBUTING.md quotes an outdated Colab setup cell: copy the output of "
        "`python -c 'from scripts import sync_setup_cells as s; print(s.expected_setup_source())'`"
    )


# ----------------------------------------------------------------------------- the simulation

# A stand-in for Colab's module: the setup cell only asks whether it is imported.
FAKE_COLAB = '"""A stub of Colab\'s google.colab module (tests/test_colab.py)."""\n'

RUNNER = '''\
"""Execute one notebook in the simulated Colab kernel; save it with its outputs."""
import sys

import nbformat
from nbclient import NotebookClient

source, target, folder, timeout, kernel = sys.argv[1:6]
nb = nbformat.read(source, as_version=4)
try:
    NotebookClient(nb, timeout=int(timeout), kernel_name=kernel, resources={"metadata": {"path": folder}}).execute()
finally:
    nbformat.write(nb, target)
'''

# Runs inside the simulated Colab, after the setup cell: asks the package's locators.
CHECK_CELL = '''\
import json
from pathlib import Path

import utils
from utils import files, reproduction, runs, weights

USES = json.loads({uses!r})
root = files.repo_root()


def inside(path):
    return Path(path).resolve().relative_to(root).as_posix()


def every_file(folder):
    return [inside(p) for p in sorted(Path(folder).rglob("*")) if p.is_file()]


report = {{"utils": utils.__file__, "root": str(root), "found": {{}}}}
for kind, key in USES:
    try:
        if kind == "file":
            path = files.repo_file(key)
            found = every_file(path) if path.is_dir() else [inside(path)]
        elif kind == "files":
            found = [inside(p) for p in files.repo_files(key)]
        else:
            folder = {{
                "results/cifar10": reproduction.committed_results_dir,
                "results/runs": lambda: runs.results_root() / "runs",
                "results/weights": lambda: files.repo_file(weights.WEIGHTS_FOLDER),
            }}[key]()
            assert inside(folder) == key, f"the locator gives {{folder}}, not {{key}} of the clone"
            found = every_file(folder) if folder.is_dir() else []
        report["found"][f"{{kind}}:{{key}}"] = found
    except Exception as error:
        report["found"][f"{{kind}}:{{key}}"] = f"{{type(error).__name__}}: {{error}}"
print("REPORT " + json.dumps(report))
'''


def _colab_environment(tmp: Path, venv: Path) -> dict[str, str]:
    """The environment of the simulated Colab: none of this checkout's settings leak in."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RESNET_", "PIP_", "JUPYTER", "PYTHON", "IPYTHON", "VIRTUAL_ENV", "MPLBACKEND"))}  # fmt: skip
    if "RESNET_DATA" in os.environ:  # a local copy of CIFAR-10 stands in for Colab's download
        env["RESNET_DATA"] = os.environ["RESNET_DATA"]
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if not p.startswith(str(ROOT / ".venv"))]
    env.update({
        "PATH": os.pathsep.join([str(venv / "bin"), *path]),
        "RESNET_MODE": "quick",
        "IPYTHONDIR": str(tmp / "ipython"),
        "JUPYTER_PATH": str(tmp / "jupyter"),
        "JUPYTER_DATA_DIR": str(tmp / "jupyter-data"),
        "JUPYTER_RUNTIME_DIR": str(tmp / "jupyter-runtime"),
        "JUPYTER_CONFIG_DIR": str(tmp / "jupyter-config"),
        "PIP_NO_INDEX": "1",  # offline: what Colab preinstalls is all there is
        "PIP_NO_BUILD_ISOLATION": "0",  # pip's spelling of --no-build-isolation (setuptools is preinstalled)
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_CACHE_DIR": str(tmp / "pip-cache"),
    })  # fmt: skip
    return env


def _make_origin(origin: Path) -> None:
    """A git repository of what this checkout commits, on the branch the setup cell clones."""
    for name in committed_files():
        target = origin / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    _, branch = setup_cells.repository_settings()
    git = ["git", "-c", "user.name=colab-test", "-c", "user.email=colab-test@localhost", "-c", "commit.gpgsign=false"]
    for args in (["init", "-q", "-b", branch], ["add", "-A"], ["commit", "-q", "-m", "what the checkout commits"]):
        subprocess.run(git + args, cwd=origin, check=True, capture_output=True)


def _make_python(tmp: Path) -> Path:
    """A fresh virtual environment with .venv's packages preinstalled, the course's own hidden."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    stack = tmp / "preinstalled"
    stack.mkdir()
    course_site = Path(sysconfig.get_paths()["purelib"])
    for entry in course_site.iterdir():
        if not COURSE_INSTALL.match(entry.name) and entry.suffix != ".pth":
            (stack / entry.name).symlink_to(entry)
    fake = tmp / "fake-colab" / "google" / "colab"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(FAKE_COLAB)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    Path(site, "colab-preinstalled.pth").write_text(f"{stack}\n{tmp / 'fake-colab'}\n")
    startup = tmp / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-google-colab.py").write_text("import google.colab  # Colab's kernel imports it at start\n")
    kernel = tmp / "jupyter" / "kernels" / KERNEL_NAME
    kernel.mkdir(parents=True)
    spec = {"argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Colab (simulated)", "language": "python"}  # fmt: skip
    (kernel / "kernel.json").write_text(json.dumps(spec))
    return python


class Colab:
    """The simulated Colab: its Python, its /content folder, and the setup cell pointed at a local clone."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.origin = tmp / "origin"
        _make_origin(self.origin)
        self.python = _make_python(tmp)
        self.env = _colab_environment(tmp, tmp / "venv")
        self.content = tmp / "content"
        self.content.mkdir()
        url, branch = setup_cells.repository_settings()
        self.clone = self.content / PurePosixPath(setup_cells.colab_clone_dir(url)).name
        self.setup_source = setup_cells.setup_source(self.origin.as_uri(), branch, str(self.clone))
        self.runner = tmp / "run_notebook.py"
        self.runner.write_text(RUNNER)

    def run(self, nb, name: str, timeout: int = 600):
        """Execute ``nb`` (its setup cell replaced by the local one) from the content folder."""
        nb = nbformat.from_dict(json.loads(json.dumps(nb)))
        setup = [cell for cell in nb.cells if "colab-setup" in cell.metadata.get("tags", [])]
        assert setup and setup[0] is nb.cells[0], f"{name}: the first cell must be the Colab setup cell"
        setup[0].source = self.setup_source
        source, target = self.content / name, self.tmp / f"executed-{name}"
        nbformat.write(nb, source)
        result = subprocess.run([str(self.python), str(self.runner), str(source), str(target), str(self.content),
                                 str(timeout), KERNEL_NAME],
                                cwd=self.content, env=self.env, capture_output=True, text=True, timeout=timeout + 120)  # fmt: skip
        assert result.returncode == 0, f"{name} failed in the simulated Colab:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        return nbformat.read(target, as_version=4)


def _text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", ""))
        parts.extend(str(v) for k, v in output.get("data", {}).items() if k.startswith("text/"))
    return "".join(parts)


@pytest.fixture(scope="module")
def colab(tmp_path_factory) -> Colab:
    if shutil.which("git") is None:
        pytest.fail("the Colab simulation needs git (the setup cell clones the repository)")
    return Colab(tmp_path_factory.mktemp("colab"))


@pytest.fixture(scope="module")
def uses() -> dict[tuple[str, str], list[str]]:
    return chapter_uses()


@pytest.fixture(scope="module")
def locator_report(colab, uses) -> dict:
    """Run the setup cell and ask every locator, in the simulated Colab."""
    asked = sorted(uses) + [("file", CONTROL_MISSING)]
    cells = [new_code_cell("", id="colab-setup", metadata={"tags": list(setup_cells.SETUP_TAGS)}),
             new_code_cell(CHECK_CELL.format(uses=json.dumps(asked)), id="locate")]  # fmt: skip
    nb = colab.run(new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}}),
                   "locate-committed-files.ipynb", timeout=300)  # fmt: skip
    lines = [line for line in _text(nb.cells[1]).splitlines() if line.startswith("REPORT ")]
    assert lines, f"the check cell printed no report:\n{_text(nb.cells[1])[-3000:]}"
    return json.loads(lines[-1][len("REPORT ") :])


def test_setup_cell_clones_and_installs_the_course_outside_the_repository(colab, locator_report):
    installed = Path(locator_report["utils"]).resolve()
    assert colab.tmp / "venv" in installed.parents, (
        f"utils was imported from {installed}, not from the simulated Colab's site-packages: "
        "the setup cell did not install it"
    )
    assert Path(locator_report["root"]) == colab.clone.resolve(), (
        f"utils finds the repository at {locator_report['root']}, not at the setup cell's clone {colab.clone}"
    )
    assert (colab.clone / "_toc.yml").is_file() and not (colab.content / "utils").exists()


def test_every_committed_file_a_chapter_uses_is_found_in_colab(locator_report, uses):
    committed = committed_files()
    problems = []
    for (kind, key), names in sorted(uses.items()):
        found = locator_report["found"][f"{kind}:{key}"]
        if isinstance(found, str):
            problems.append(f"{', '.join(names)} read {key}: {found}")
            continue
        missing = sorted(set(expected_files(kind, key, committed)) - set(found))
        if missing:
            problems.append(f"{', '.join(names)} read {key}: not found in Colab: {missing}")
    assert not problems, "in the simulated Colab, chapters cannot find committed files:\n" + "\n".join(problems)


def test_the_check_reports_a_file_the_repository_lacks(locator_report):
    answer = locator_report["found"][f"file:{CONTROL_MISSING}"]
    assert isinstance(answer, str) and "FileNotFoundError" in answer and CONTROL_MISSING in answer, answer


def test_a_light_chapter_shows_the_committed_table_in_colab(colab):
    nb = colab.run(nbformat.read(LIGHT_CHAPTER, as_version=4), LIGHT_CHAPTER.name)
    cells = {cell.get("id"): cell for cell in nb.cells}
    recorded = json.loads((ROOT / "results" / "latency-cpu.json").read_text())
    provenance = _text(cells["committed-load"])
    for key in ("command", "commit"):
        assert str(recorded[key]) in provenance, f"{LIGHT_CHAPTER.name} in Colab does not print the recorded {key}:\n{provenance}"
    table = _text(cells["committed-table"])
    expected = [f"{row['mean_ms']:.1f} ± {row['std_ms']:.1f}" for row in recorded["measurements"] if row["precision"] == "fp32"]
    absent = [cell for cell in expected if cell not in table]
    assert expected and not absent, f"the committed latency table in Colab lacks {absent}:\n{table[:3000]}"
