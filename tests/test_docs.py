"""The docs live in the repo: README's links resolve, nothing points outside
the repo, and the generated API reference covers the public names."""
import importlib.util
import pathlib
import re

import nerve

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def test_every_relative_link_resolves_and_none_leaves_the_repo():
    for page in PAGES:
        text = page.read_text()
        assert "../shared" not in text, page
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path = (page.parent / target).resolve()
            assert path.exists(), f"{page.name}: link to {target} does not resolve"
            assert ROOT in path.parents or path == ROOT, f"{page.name}: {target} is outside the repo"


def test_readme_links_the_guides():
    text = (ROOT / "README.md").read_text()
    for page in ("docs/api.md", "docs/training.md", "docs/saving.md", "docs/cli.md", "docs/sklearn.md"):
        assert f"]({page})" in text, page


def test_generated_api_reference_covers_the_public_names():
    spec = importlib.util.spec_from_file_location("gen_api", ROOT / "docs" / "gen_api.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    text = gen.render()
    for name in nerve.__all__:
        obj = getattr(nerve, name)
        if callable(obj) and not isinstance(obj, type(nerve)):
            assert f"nv.{name}" in text, name
    for name in ("NerveClassifier", "NerveRegressor", "top_k_accuracy", "load_table", "predict_proba"):
        assert name in text, name
    committed = (ROOT / "docs" / "api.md").read_text()
    for name in ("NerveClassifier", "sample_weight", "predict_proba", "top_k_accuracy"):
        assert name in committed, name


def test_api_reference_is_current():
    """docs/api.md is generated from the code: a name added without
    regenerating it (python docs/gen_api.py) fails here."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, str(root / "docs" / "gen_api.py"), "--check"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
