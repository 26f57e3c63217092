"""Hub references (inference.hub) and `python -m training push`, offline.

The Hub is never contacted: a Hugging Face cache is built in tmp_path with the layout huggingface_hub writes
(models--owner--name/{blobs,refs,snapshots/<commit>}), and HF_HUB_OFFLINE=1 (tests/conftest.py) makes the
client read only that. Uploads go to monkeypatched HfApi methods.
"""

import hashlib
import re
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
from conftest import write_tiny_generator
from helpers_onnx import CLASS_NAMES, make_card, tiny_net_path, write_model
from huggingface_hub import ModelCard as HubModelCard
from huggingface_hub import constants
from huggingface_hub.errors import LocalEntryNotFoundError, LocalTokenNotFoundError, RepositoryNotFoundError

from inference import hub
from inference.classifier import OnnxClassifier
from inference.generators import GeneratorError, open_generator
from inference.hub import HubError, HubRef, hub_file, is_hub_ref, parse_hub_ref, resolve_generator_source
from training.__main__ import main

SHA = "0123456789abcdef0123456789abcdef01234567"
PUSHED = "89abcdef0123456789abcdef0123456789abcdef"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache in tmp_path. huggingface_hub computes constants.HF_HUB_CACHE from the
    environment once, at import, but its download functions read the constant at every call."""
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def cache_files(cache: Path, repo_id: str, files: dict[str, Path], commit: str = SHA, branch: str = "main") -> Path:
    """Put files into the cache as a download would: blobs, snapshot symlinks to them, refs/<branch>."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for name, source in files.items():
        blob = repo / "blobs" / hashlib.sha256(source.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, blob)
        pointer = repo / "snapshots" / commit / name
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.symlink_to(blob)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / branch).write_text(commit)
    return repo / "snapshots" / commit


def folder_files(folder: Path, prefix: str = "") -> dict[str, Path]:
    return {prefix + str(p.relative_to(folder)): p for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def model_with_card(tmp_path_factory, tmp_path) -> Path:
    return write_model(tiny_net_path(tmp_path_factory), tmp_path / "tiny.onnx", make_card())


@pytest.fixture(scope="module")
def tiny_generator_folder(tmp_path_factory) -> Path:
    return write_tiny_generator(tmp_path_factory.mktemp("generator") / "generator", ["red", "green", "blue"])


# -------------------------------------------------------------------------------------------- references


def test_parse_hub_ref_files_and_folders():
    assert parse_hub_ref(f"hf://alice/c10-lt-ce@{SHA}/models/c10.onnx") == HubRef("alice/c10-lt-ce", SHA, "models/c10.onnx")
    assert parse_hub_ref(f"hf://alice/gen@{SHA}") == HubRef("alice/gen", SHA, "")
    assert parse_hub_ref(f"hf://alice/gen@{SHA}/generator/") == HubRef("alice/gen", SHA, "generator")
    pr = parse_hub_ref("hf://alice/gen@refs%2Fpr%2F1/m.onnx")  # HfFileSystem's encoding of a '/' in a revision
    assert pr.revision == "refs/pr/1" and str(pr) == "hf://alice/gen@refs%2Fpr%2F1/m.onnx"
    assert parse_hub_ref(f"hf://alice/gen@{SHA}").pinned and not pr.pinned
    assert str(parse_hub_ref(f"hf://alice/gen@{SHA}/a.onnx")) == f"hf://alice/gen@{SHA}/a.onnx"
    assert is_hub_ref("hf://x/y@z") and not is_hub_ref("model_zoo/x.onnx") and not is_hub_ref(None)


@pytest.mark.parametrize("text, message", [
    ("hf://alice/c10-lt-ce/c10.onnx", r"no revision.*pinned.*add @<commit sha>.*hf://alice/c10-lt-ce@<40-hex commit sha>/c10.onnx"),
    ("hf://alice/c10-lt-ce", "no revision"),
    ("hf://alice@abc/c10.onnx", "not a Hub reference"),
    ("model_zoo/c10.onnx", "not a Hub reference"),
    (f"hf://alice/bad--name@{SHA}/a.onnx", "not a valid repo id"),
    (f"hf://alice/c10@{SHA}/../secret", "'..'"),
])
def test_malformed_or_unpinned_refs_are_refused(text, message):
    with pytest.raises(HubError, match=message):
        parse_hub_ref(text)


def test_refs_follow_huggingface_hubs_grammar():
    """huggingface_hub's parse_hf_uri reads them: a pull-request revision keeps its slashes, so the path after it
    is the file's, and the explicit models/ prefix is the same repo."""
    assert parse_hub_ref("hf://alice/c10@refs/pr/1/model.onnx") == HubRef("alice/c10", "refs/pr/1", "model.onnx")
    assert parse_hub_ref("hf://alice/c10@refs/pr/12") == HubRef("alice/c10", "refs/pr/12", "")
    assert parse_hub_ref(f"hf://models/alice/c10@{SHA}/m.onnx") == HubRef("alice/c10", SHA, "m.onnx")
    assert parse_hub_ref("hf://alice/c10@feature%2Fx/m.onnx").revision == "feature/x"
    ref = parse_hub_ref("hf://alice/c10@refs/pr/1/model.onnx")
    assert parse_hub_ref(str(ref)) == ref  # what we print reads back


@pytest.mark.parametrize("text", [f"hf://spaces/alice/demo@{SHA}/model.onnx", f"hf://datasets/alice/cifar@{SHA}/m.onnx",
                                  "hf://buckets/alice/b/model.onnx"])
def test_refs_to_other_kinds_of_repo_say_only_model_repos_hold_models(text):
    with pytest.raises(HubError, match="only model repos hold models"):
        parse_hub_ref(text)


@pytest.mark.parametrize("url, converted", [
    (f"https://huggingface.co/alice/c10/blob/{SHA}/model.onnx", f"hf://alice/c10@{SHA}/model.onnx"),
    (f"https://huggingface.co/alice/c10/resolve/{SHA}/sub/model.onnx?download=true", f"hf://alice/c10@{SHA}/sub/model.onnx"),
    ("https://huggingface.co/alice/c10/blob/main/model.onnx", "hf://alice/c10@<commit sha>/model.onnx"),
    ("https://hf.co/alice/c10", "hf://alice/c10@<commit sha>"),
])
def test_a_pasted_web_address_says_how_to_write_it(url, converted):
    assert is_hub_ref(url)
    with pytest.raises(HubError) as refused:
        parse_hub_ref(url)
    assert str(refused.value) == f"{url} is a web address; paste it as {converted}"
    assert not is_hub_ref("https://example.com/alice/c10/blob/main/model.onnx")


def test_a_web_address_as_generator_is_refused_with_the_reference_to_use(hub_cache):
    with pytest.raises(HubError, match=f"paste it as hf://alice/gen@{SHA}/gen"):
        resolve_generator_source(f"https://huggingface.co/alice/gen/tree/{SHA}/gen", None)


# ----------------------------------------------------------------------------------------------- hub_file


def test_hub_file_reads_the_cache_offline_and_the_classifier_loads_it(hub_cache, model_with_card):
    cache_files(hub_cache, "alice/c10-lt-ce", {"tiny.onnx": model_with_card})
    path = hub_file(f"hf://alice/c10-lt-ce@{SHA}/tiny.onnx")
    assert path == hub_cache / "models--alice--c10-lt-ce" / "snapshots" / SHA / "tiny.onnx"  # named, not the blob
    classifier = OnnxClassifier(path)
    assert classifier.card.class_names == CLASS_NAMES


def test_uncached_file_offline_fails_at_once_with_what_to_do(hub_cache, model_with_card):
    cache_files(hub_cache, "alice/c10-lt-ce", {"tiny.onnx": model_with_card})
    for ref in (f"hf://alice/c10-lt-ce@{SHA}/other.onnx", f"hf://alice/never-downloaded@{SHA}/tiny.onnx"):
        start = time.perf_counter()
        with pytest.raises(HubError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE is set") as error:
            hub_file(ref)
        assert ref in str(error.value)
        assert time.perf_counter() - start < 10  # no network wait: a download attempt retries for about 23 s


def test_offline_is_honoured_when_set_after_import(hub_cache, monkeypatch):
    calls = []
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "hf_hub_download", lambda *args, **kwargs: calls.append(kwargs) or "/x")
    hub_file(f"hf://alice/c10@{SHA}/a.onnx")
    assert calls[-1]["local_files_only"] is True  # HF_HUB_OFFLINE=1 is still in the environment
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    hub_file(f"hf://alice/c10@{SHA}/a.onnx")
    assert calls[-1]["local_files_only"] is False


def test_branch_revision_works_but_warns_with_the_pinned_ref(hub_cache, model_with_card, caplog):
    cache_files(hub_cache, "alice/branchy", {"tiny.onnx": model_with_card}, branch="main")
    with caplog.at_level("WARNING", logger="inference.hub"):
        path = hub_file("hf://alice/branchy@main/tiny.onnx")
    assert path.parent.name == SHA
    assert "not pinned" in caplog.text and f"hf://alice/branchy@{SHA}/tiny.onnx" in caplog.text


def http_error(kind, status):
    import httpx2

    response = httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/x"))
    return kind("server said no", response=response)


@pytest.mark.parametrize("error, message", [
    (lambda: http_error(RepositoryNotFoundError, 404), "repo alice/c10 was not found.*check the repo id"),
    (lambda: http_error(huggingface_hub.errors.RevisionNotFoundError, 404), f"has no revision '{SHA}'"),
    (lambda: http_error(huggingface_hub.errors.RemoteEntryNotFoundError, 404), "has no file 'a.onnx'.*file name"),
    (lambda: LocalEntryNotFoundError("connection refused"), "could not be reached.*network"),
    (lambda: ValueError("something else"), r"could not be downloaded \(ValueError: something else\)"),
])
def test_online_failures_become_hub_errors(monkeypatch, error, message):
    def failing(*args, **kwargs):
        raise error()

    monkeypatch.setattr(hub, "_offline", lambda: False)
    monkeypatch.setattr(hub, "hf_hub_download", failing)
    with pytest.raises(HubError, match=message):
        hub_file(f"hf://alice/c10@{SHA}/a.onnx")


# ------------------------------------------------------------------------------------------------ generators


def test_generator_ref_resolves_to_a_local_folder_open_generator_opens(hub_cache, tiny_generator_folder, tmp_path,
                                                                       monkeypatch):
    extra = tmp_path / "big.bin"
    extra.write_bytes(b"not needed")
    cache_files(hub_cache, "alice/c10-gen", {**folder_files(tiny_generator_folder, "gen/"), "other/big.bin": extra})
    patterns = []
    real_snapshot_download = hub.snapshot_download
    monkeypatch.setattr(hub, "snapshot_download",
                        lambda *a, **k: patterns.append(k["allow_patterns"]) or real_snapshot_download(*a, **k))

    local, revision = resolve_generator_source(f"hf://alice/c10-gen@{SHA}/gen", None)
    assert Path(local) == hub_cache / "models--alice--c10-gen" / "snapshots" / SHA / "gen" and revision is None
    from inference.generator_folder import GENERATOR_DOWNLOAD_PATTERNS

    assert patterns == [[f"gen/{pattern}" for pattern in GENERATOR_DOWNLOAD_PATTERNS]]
    assert {"gen/generator.json", "gen/unet/*", "gen/scheduler/*", "gen/model_index.json"} <= set(patterns[0])

    generator = open_generator(f"hf://alice/c10-gen@{SHA}/gen", class_names=["red", "green", "blue"])
    assert generator.class_names == ["red", "green", "blue"]
    [image] = generator.generate(class_index=2, count=1, steps=2)
    assert image.size == (16, 16)


def test_generator_source_passes_local_paths_and_hub_ids_through(hub_cache, tiny_generator_folder, tmp_path):
    assert resolve_generator_source(str(tiny_generator_folder), None) == (str(tiny_generator_folder), None)
    assert resolve_generator_source("some-user/sd-model", "abc") == ("some-user/sd-model", "abc")
    index = tmp_path / "model_index.json"
    index.write_text("{}")
    cache_files(hub_cache, "some-user/sd-model", {"model_index.json": index})
    # A cached text-to-image pipeline at a repo's root: diffusers opens it by id at the pinned revision.
    assert resolve_generator_source(f"hf://some-user/sd-model@{SHA}", None) == ("some-user/sd-model", SHA)


def test_generator_ref_errors_are_generator_errors(hub_cache):
    with pytest.raises(GeneratorError, match="not in the local Hugging Face cache"):
        open_generator(f"hf://alice/never-downloaded@{SHA}")
    with pytest.raises(GeneratorError, match="no revision"):
        open_generator("hf://alice/c10-gen/gen")
    with pytest.raises(GeneratorError, match="give it once"):
        open_generator(f"hf://alice/c10-gen@{SHA}", revision="main")


# ------------------------------------------------------------------------------------------------------ push


def test_push_dry_run_of_an_exported_model(model_with_card, tmp_path, capsys):
    out = tmp_path / "staged"
    assert main(["push", "--checkpoint", str(model_with_card), "--repo-id", "alice/tiny", "--dry-run", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "tiny.onnx"]
    assert OnnxClassifier(out / "tiny.onnx").card == make_card()
    readme = HubModelCard.load(out / "README.md")  # the model-index itself: tests/test_push_card.py
    meta = {key: value for key, value in readme.data.to_dict().items() if key != "model-index"}
    assert meta == {"library_name": "onnx", "license": "apache-2.0", "pipeline_tag": "image-classification",
                    "tags": ["long-tail", "longtail-studio", "onnx", "ce"], "metrics": ["accuracy"]}  # toy-lt: no datasets
    body = readme.text
    assert body.startswith("\n# tiny\n") and "| bird | 7 | tail |" in body and "## Test accuracy (%)" in body
    printed = capsys.readouterr().out
    assert "nothing uploaded" in printed and "hf://alice/tiny@<commit sha>/tiny.onnx" in printed


def test_push_dry_run_of_a_run_exports_it_with_its_config(tmp_path_factory, tmp_path, monkeypatch, capsys):
    import training.export

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("method:\n  name: ce\n")
    exported = []

    def export_checkpoint(checkpoint, output, which="best", overrides=(), tolerance=1e-4):  # the real one trains data
        exported.append((Path(checkpoint), which))
        write_model(tiny_net_path(tmp_path_factory), Path(output), make_card(dataset="cifar10_lt", model_name="resnet32"))

    monkeypatch.setattr(training.export, "export_checkpoint", export_checkpoint)
    out = tmp_path / "staged"
    assert main(["push", "--checkpoint", str(run), "--repo-id", "alice/c10", "--which", "last", "--dry-run", str(out)]) == 0
    assert exported == [(run, "last")]
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "cifar10_lt_ce_resnet32.onnx", "config.yaml"]
    readme = HubModelCard.load(out / "README.md")
    assert readme.data.datasets == ["uoft-cs/cifar10"] and readme.text.startswith("\n# cifar10_lt_ce_resnet32\n")
    assert {result.dataset_type for result in readme.data.eval_results} == {"uoft-cs/cifar10"}


def test_push_dry_run_of_a_generator_folder(tiny_generator_folder, tmp_path, capsys):
    out = tmp_path / "staged"
    assert main(["push", "--checkpoint", str(tiny_generator_folder), "--repo-id", "alice/gen", "--dry-run", str(out)]) == 0
    assert set(folder_files(out)) == {"README.md", "generator.json", "unet/config.json",
                                      "unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"}
    readme = HubModelCard.load(out / "README.md")
    assert readme.data.tags == ["long-tail", "longtail-studio", "diffusion", "class-conditional"]
    assert readme.text.startswith("\n" + (tiny_generator_folder / "README.md").read_text().strip() + "\n\n")
    assert "Not measured" in readme.text and readme.data.eval_results is None  # no --recognition-report
    assert "hf://alice/gen@<commit sha>\n" in capsys.readouterr().out
    assert open_generator(out).class_names == ["red", "green", "blue"]


def test_push_uploads_one_folder_and_prints_the_pinned_ref(model_with_card, monkeypatch, capsys):
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = (repo_id, kwargs)

    def create_branch(self, repo_id, **kwargs):
        calls["create_branch"] = (repo_id, kwargs)

    def upload_folder(self, repo_id, folder_path, **kwargs):  # the staging folder is gone after the push
        calls["upload_folder"] = (repo_id, sorted(p.name for p in Path(folder_path).iterdir()), kwargs)
        return SimpleNamespace(oid=PUSHED)

    for name, fake in (("create_repo", create_repo), ("create_branch", create_branch), ("upload_folder", upload_folder)):
        monkeypatch.setattr(huggingface_hub.HfApi, name, fake)
    assert main(["push", "--checkpoint", str(model_with_card), "--repo-id", "alice/tiny", "--private",
                 "--branch", "dev", "--commit-message", "first model"]) == 0
    assert calls["create_repo"] == ("alice/tiny", {"exist_ok": True, "private": True})
    assert calls["create_branch"] == ("alice/tiny", {"branch": "dev", "exist_ok": True})
    assert calls["upload_folder"] == ("alice/tiny", ["README.md", "tiny.onnx"],
                                      {"commit_message": "first model", "revision": "dev"})
    printed = capsys.readouterr().out
    assert f"commit {PUSHED}" in printed and f"  hf://alice/tiny@{PUSHED}/tiny.onnx\n" in printed
    assert parse_hub_ref(printed.strip().splitlines()[-1].strip()).pinned


def test_push_without_a_token_is_one_clear_line(model_with_card, tmp_path, monkeypatch, capsys):
    # The real client, not logged in: HfApi(token=True) refuses before any request.
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    assert main(["push", "--checkpoint", str(model_with_card), "--repo-id", "alice/tiny"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: not logged in") and "hf auth login" in error and "Traceback" not in error


@pytest.mark.parametrize("raised, message", [
    (lambda: LocalTokenNotFoundError("no token"), "not logged in"),
    (lambda: http_error(huggingface_hub.errors.HfHubHTTPError, 403), "refused the push to alice/tiny.*write access"),
    (lambda: huggingface_hub.errors.OfflineModeIsEnabled("offline"), "HF_HUB_OFFLINE is set.*--dry-run"),
    (lambda: ConnectionError("network is unreachable"), "could not push to alice/tiny.*network is unreachable"),
])
def test_hub_client_errors_exit_2_with_a_message(model_with_card, monkeypatch, capsys, raised, message):
    def create_repo(self, repo_id, **kwargs):
        raise raised()

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    assert main(["push", "--checkpoint", str(model_with_card), "--repo-id", "alice/tiny"]) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1
    assert re.search(message, error)


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "no/such/run", "--repo-id", "alice/tiny"], "no/such/run does not exist"),
    (["--repo-id", "tiny"], "must be owner/name"),
    (["--repo-id", "alice/bad--name"], "not a valid repo id"),
])
def test_bad_push_arguments_exit_2(model_with_card, capsys, args, message):
    argv = ["push", "--checkpoint", str(model_with_card)] + args if "--checkpoint" not in args else ["push"] + args
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_push_refuses_a_foreign_onnx_and_a_used_dry_run_folder(tmp_path_factory, model_with_card, tmp_path, capsys):
    foreign = write_model(tiny_net_path(tmp_path_factory), tmp_path / "foreign.onnx", None)
    assert main(["push", "--checkpoint", str(foreign), "--repo-id", "alice/x", "--dry-run", str(tmp_path / "a")]) == 2
    assert "foreign.onnx cannot be pushed" in capsys.readouterr().err
    used = tmp_path / "used"
    used.mkdir()
    (used / "old.txt").write_text("x")
    assert main(["push", "--checkpoint", str(model_with_card), "--repo-id", "alice/x", "--dry-run", str(used)]) == 2
    assert "is not an empty folder" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the app on Hub models


def test_app_serves_hub_models_and_shows_the_ones_it_cannot_fetch(hub_cache, model_with_card, tmp_path, monkeypatch):
    import app

    cache_files(hub_cache, "alice/c10-lt-ce", {"hub_model.onnx": model_with_card})
    monkeypatch.setenv("LONGTAIL_HUB_MODELS", f"hf://alice/c10-lt-ce@{SHA}/hub_model.onnx, "
                                              f"hf://alice/never-downloaded@{SHA}/missing.onnx")
    local = tmp_path / "local_models"
    local.mkdir()
    shutil.copyfile(model_with_card, local / "local.onnx")
    studio = app.build_studio(local, generator=None)
    assert studio.catalog.names() == ["local.onnx", "hub_model.onnx"]
    assert studio.catalog.get("hub_model.onnx").card.class_names == CLASS_NAMES
    [problem] = studio.catalog.problems
    assert "never-downloaded" in problem and "HF_HUB_OFFLINE" in problem

    demo = app.build_app(studio=studio, examples_dir=tmp_path)
    assert "A Hub model could not be loaded" in str(demo.config)
    from PIL import Image

    from studio_app.handlers import Handlers

    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "red.png")
    records = Handlers(studio).classify("hub_model.onnx", [str(tmp_path / "red.png")], 3)[5]
    assert records[0]["prediction"] in CLASS_NAMES
