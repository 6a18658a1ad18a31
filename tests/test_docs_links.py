"""The documentation points only at what the repository holds: every relative link and every repository path it
names exists, inside the repository, and every benchmark result says where it comes from."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: The pages a user reads: the README, the changelog, the benchmarks page if it is kept at the root, and the site.
DOCUMENTS = sorted(
    {ROOT / "README.md", ROOT / "CHANGELOG.md", *ROOT.glob("BENCHMARKS.md"), *(ROOT / "docs").rglob("*.md")}
)

# [text](target) and ![alt](target); the target ends at the first space (a title may follow) or ")".
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# An inline code span.
CODE_SPAN = re.compile(r"`([^`\n]+)`")
# What a repository path in backticks starts with: the top-level folders that ship in the repository.
REPO_FOLDERS = ("src/", "tests/", "examples/", "benchmarks/", "docs/", ".ci/")
# Tokens that are patterns or placeholders rather than one path: `benchmarks/results/*.png`, `<split>`.
PLACEHOLDER = re.compile(r"[*<>{}\[\]|$]")
# Absolute paths of this machine's working folders, which no user has.
MACHINE_PATHS = re.compile(r"(/work/|/tmp/)")
# A relative path written in the text that climbs out of the page's folder: `../../notes.md`.
CLIMBING_PATH = re.compile(r"(?<![\w/.])((?:\.\./)+[\w.-][\w./-]*)")


def heading_anchors(markdown: str) -> set[str]:
    """The anchors of a page's headings as mkdocs (and GitHub, for these headings) writes them."""
    anchors = set()
    in_fence = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        if in_fence or not line.startswith("#"):
            continue
        title = line.lstrip("#").strip().replace("`", "")
        slug = re.sub(r"[^\w\s-]", "", title.lower()).strip()
        anchors.add(re.sub(r"[\s]+", "-", slug))
    return anchors


def without_fences(markdown: str) -> str:
    """The page without its fenced code blocks (commands there are checked as commands, not as links)."""
    return re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)


def problems_of(page: Path, *, root: Path = ROOT) -> list[str]:
    """Every link and repository path of `page` that does not exist inside `root`, in words."""
    text = page.read_text(encoding="utf-8")
    where = page.relative_to(root)
    problems = [
        f"{where}: names {match.group(0)!r}, a path outside the repository" for match in MACHINE_PATHS.finditer(text)
    ]
    for path in CLIMBING_PATH.findall(LINK.sub("", text)):  # links are checked below
        path = path.rstrip(".,:;")
        resolved = (page.parent / path).resolve()
        if root.resolve() not in (resolved, *resolved.parents):
            problems.append(f"{where}: names {path!r}, a path outside the repository")
    prose = without_fences(text)
    for target in LINK.findall(prose):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http(s), mailto: not a file; an anchor of the page itself: mkdocs checks those
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve()
        if root.resolve() not in (resolved, *resolved.parents):
            problems.append(f"{where}: links to {target!r}, outside the repository")
        elif not resolved.exists():
            problems.append(f"{where}: links to {target!r}, which does not exist")
        elif anchor and resolved.suffix == ".md" and anchor not in heading_anchors(resolved.read_text("utf-8")):
            problems.append(f"{where}: links to {target!r}, but {path_part} has no heading #{anchor}")
    for token in CODE_SPAN.findall(text):
        token = token.strip()
        if not token.startswith(REPO_FOLDERS) or PLACEHOLDER.search(token) or " " in token:
            continue
        path = token.split("::")[0].rstrip(".,:;")
        if not (root / path).exists():
            problems.append(f"{where}: names `{token}`, which is not in the repository")
    return problems


def test_the_documents_are_found():
    names = {page.relative_to(ROOT).as_posix() for page in DOCUMENTS}
    assert {"README.md", "CHANGELOG.md", "docs/method.md", "docs/benchmarks.md"} <= names


@pytest.mark.parametrize("page", DOCUMENTS, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_link_and_repository_path_exists_inside_the_repository(page):
    assert problems_of(page) == []


def test_a_made_up_path_a_broken_link_and_an_outside_path_are_reported(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "real.md").write_text("# A real heading\n", encoding="utf-8")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "See `benchmarks/made_up.py`, [a page](real.md#a-real-heading), [gone](missing.md),\n"
        "[no heading](real.md#nowhere), [up](../../elsewhere.md) and ../../notes/method.md.\n"
        "```bash\npython benchmarks/also_made_up.py   # commands in fences are not links\n```\n",
        encoding="utf-8",
    )
    problems = problems_of(page, root=tmp_path)
    assert any("`benchmarks/made_up.py`" in problem for problem in problems)
    assert any("'missing.md', which does not exist" in problem for problem in problems)
    assert any("has no heading #nowhere" in problem for problem in problems)
    assert any("'../../elsewhere.md', outside the repository" in problem for problem in problems)
    assert any("'../../notes/method.md', a path outside" in problem for problem in problems)
    assert not any("real.md#a-real-heading" in problem for problem in problems)
    assert len(problems) == 5, problems


RESULTS = sorted((ROOT / "benchmarks" / "results").glob("*.json"))


@pytest.mark.parametrize("result", RESULTS, ids=lambda path: path.name)
def test_every_benchmark_result_records_its_commit_date_and_machine(result):
    provenance = json.loads(result.read_text(encoding="utf-8"))["provenance"]
    assert re.fullmatch(r"[0-9a-f]{40}", provenance["commit"]), provenance
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}.*", provenance["date"]), provenance
    assert {"platform", "cpus", "torch", "gpu"} <= set(provenance["machine"]), provenance
    assert not re.search(r"[0-9a-f]{7}|_before", result.stem), f"{result.name}: the commit belongs inside the file"


def test_new_results_get_the_checkouts_commit():
    spec = importlib.util.spec_from_file_location("_provenance", ROOT / "benchmarks" / "_provenance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    provenance = module.provenance()
    assert re.fullmatch(r"[0-9a-f]{40}(\+changes)?|unknown", provenance["commit"]), provenance
    assert provenance["date"].endswith("+00:00")
    assert provenance["machine"]["cpus"] >= 1
    assert module.git_commit(Path("/")) == "unknown"
