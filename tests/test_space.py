"""The repository is a Hugging Face Space: README front matter that matches what the code pins."""

import re

import yaml
from conftest import REPO_ROOT


def front_matter() -> dict:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    match = re.match(r"---\n(.*?)\n---\n", text, re.DOTALL)
    assert match, "README.md must start with YAML front matter for the Space"
    return yaml.safe_load(match.group(1))


def test_space_front_matter_matches_the_pins():
    meta = front_matter()
    assert meta["sdk"] == "gradio" and (REPO_ROOT / meta["app_file"]).is_file()
    pinned = re.search(r"^gradio==(\S+)$", (REPO_ROOT / "requirements" / "common.txt").read_text(), re.MULTILINE)
    assert meta["sdk_version"] == pinned.group(1)  # the Space runs the Gradio the tests ran
    assert meta["python_version"] == "3.11"  # a string: YAML would read 3.10 as 3.1
    assert len(meta["short_description"]) <= 60  # the Hub's limit
