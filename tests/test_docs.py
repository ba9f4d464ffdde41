"""The README and the documentation site: the quick start is the script it shows, no development paths, the
reference pages generate, the nav names existing pages. (`mkdocs build --strict` itself runs in .ci/run.)"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def docs_hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_short_and_has_no_development_paths():
    assert len(README) < 12_000
    assert "../shared" not in README and "/work/" not in README
    assert "docs/img/gallery.png" in README and (ROOT / "docs" / "img" / "gallery.png").is_file()


def test_readme_quick_start_is_the_example_script():
    block = re.search(r"<!-- quickstart:begin -->\n```python\n(.*?)```", README, re.S)
    assert block, "README lost its quick start block (docs/gen_readme.py writes it)"
    assert block.group(1) == (ROOT / "examples" / "quickstart.py").read_text()
    assert "clean accuracy" in README.split("<!-- quickstart:end -->")[0]  # its printed output is there


def test_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -e ".[test]" && pip install --no-deps torchattacks==3.5.1 && python -m pytest -q' in README
    assert 'pip install --quiet -e ".[test]"' in ci and "pip install --quiet --no-deps torchattacks==3.5.1" in ci
    assert "\npython -m pytest -q\n" in ci


def test_readme_links_exist():
    for target in re.findall(r"\]\(((?:docs|examples)/[^)#]+)", README):
        assert (ROOT / target).exists(), target


def test_nav_pages_exist():
    nav = (ROOT / "mkdocs.yml").read_text().split("\nnav:", 1)[1]
    pages = re.findall(r"^\s+- [^:#]+: (\S+\.md)\s*$", nav, re.M)
    generated = set(docs_hooks().PAGES)
    assert len(pages) > 10
    for page in pages:
        assert page in generated or (ROOT / "docs" / page).is_file(), page


def test_generated_reference_pages():
    hooks = docs_hooks()
    cli = hooks.cli_reference()
    for text in ("## roiroa run", "## roiroa defend", "## roiroa patches", "--set KEY=VALUE", "examples:"):
        assert text in cli
    config = hooks.config_reference()
    for text in ("`data.source`", "`regions.q_roa`", "`evaluation.n_test`", "`[model.training]`", "[0, 2147483647]"):
        assert text in config, text
    schema = hooks.schema_reference()
    assert "`roiroa_results_version` (required)" in schema


def test_docs_do_not_point_at_development_folders():
    for page in (ROOT / "docs").glob("*.md"):
        assert "../shared" not in page.read_text(), page.name


def test_example_configs_say_where_their_files_come_from():
    for path in (ROOT / "examples").glob("*.toml"):
        text = path.read_text()
        if "weights" in text or "--data" in text:
            assert "https://" in text, f"{path.name} names files a user does not have without saying where"
