"""Models and generators on the Hugging Face Hub, always at a pinned revision.

A Hub reference is huggingface_hub's hf:// URI (read by its `parse_hf_uri`) of a model repo, with the
revision required:

    hf://alice/c10-lt-ce@0123456789abcdef0123456789abcdef01234567/cifar10_lt_ce_resnet32.onnx   # a file
    hf://alice/c10-lt-generator@0123456789abcdef0123456789abcdef01234567                        # a folder
    hf://alice/c10-lt-ce@refs/pr/1/cifar10_lt_ce_resnet32.onnx                                   # a pull request

    path = hub_file("hf://alice/c10-lt-ce@<sha>/cifar10_lt_ce_resnet32.onnx")  # local cached copy
    folder = hub_folder("hf://alice/c10-lt-generator@<sha>")

`python -m training push` uploads a model and prints the reference to use. A branch or tag instead of a
commit sha works but logs a warning: what it names can change under a deployed app. With HF_HUB_OFFLINE
set only the local Hugging Face cache is read, without a single request. Every failure becomes a
`HubError` that names the reference and says what to do.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from huggingface_hub import (
    _CACHED_NO_EXIST,
    constants,
    hf_hub_download,
    parse_hf_uri,
    snapshot_download,
    try_to_load_from_cache,
)
from huggingface_hub.errors import (
    HfUriError,
    HFValidationError,
    LocalEntryNotFoundError,
    LocalTokenNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from inference.generator_folder import GENERATOR_DOWNLOAD_PATTERNS, INFO_FILE

log = logging.getLogger(__name__)

PREFIX = "hf://"
COMMIT_SHA = re.compile(r"[0-9a-f]{40}")


class HubError(ValueError):
    """A Hub reference that is malformed or cannot be resolved; the message says what to do."""


class _MissingFile(HubError):
    """The repo exists at that revision but has no such file."""


@dataclass(frozen=True)
class HubRef:
    repo_id: str  # owner/name
    revision: str  # a commit sha, or (not pinned) a branch or tag
    path: str = ""  # a file or folder in the repo; "" is the repo's root

    def __str__(self) -> str:
        return f"{PREFIX}{self.repo_id}@{self.revision.replace('/', '%2F')}" + (f"/{self.path}" if self.path else "")

    @property
    def pinned(self) -> bool:
        return bool(COMMIT_SHA.fullmatch(self.revision))

    def join(self, name: str) -> HubRef:
        return replace(self, path=f"{self.path}/{name}" if self.path else name)


def is_hub_ref(text) -> bool:
    """An hf:// reference, or a Hub web address pasted in its place (which `parse_hub_ref` refuses, saying how
    to write it), as opposed to a local path or a plain Hub id."""
    return isinstance(text, str) and (text.strip().startswith(PREFIX) or _is_web_address(text.strip()))


def parse_hub_ref(text: str) -> HubRef:
    """`hf://owner/name@revision[/path]` → HubRef; HubError with an example when it is malformed or not pinned.

    huggingface_hub's own parser (`parse_hf_uri`) reads the reference, so the grammar is the library's:
    `@refs/pr/1/model.onnx` is revision refs/pr/1, a '/' in a branch name is written %2F. We take model repos
    only, and a web address only as the hf:// reference it converts to."""
    text = text.strip()
    try:
        uri = parse_hf_uri(text)
    except HfUriError as error:
        if isinstance(error.__cause__, HFValidationError):
            raise HubError(f"{text}: not a valid repo id ({error.msg})") from error
        reason = f" ({error.msg.strip()})" if is_hub_ref(text) else ""  # the library's reason, when it is about ours
        raise HubError(f"{text!r} is not a Hub reference{reason}: expected hf://owner/name@<commit sha>/path/in/repo"
                       ) from error
    path = uri.path_in_repo.strip("/")
    if uri.type != "model":
        kind = "a bucket" if uri.is_bucket else f"a {uri.type} repo"
        raise HubError(f"{text} names {kind}, and only model repos hold models and generators: use "
                       "hf://owner/name@<commit sha>/path (no datasets/, spaces/ or buckets/)")
    if not text.startswith(PREFIX):
        revision = uri.revision if uri.revision and COMMIT_SHA.fullmatch(uri.revision) else "<commit sha>"
        raise HubError(f"{text} is a web address; paste it as {HubRef(uri.id, revision, path)}")
    if uri.revision is None:
        raise HubError(f"{text} has no revision, and Hub models are only loaded at a pinned revision: add "
                       f"@<commit sha> after the repo id, e.g. {PREFIX}{uri.id}@<40-hex commit sha>"
                       + (f"/{path}" if path else "") + " (`python -m training push` prints it)")
    if ".." in path.split("/"):
        raise HubError(f"{text}: the path in the repo may not contain '..'")
    return HubRef(uri.id, uri.revision, path)


def hub_file(ref: str | HubRef) -> Path:
    """The local copy of a file on the Hub (downloaded into the Hugging Face cache once)."""
    ref = parse_hub_ref(ref) if isinstance(ref, str) else ref
    if not ref.path:
        raise HubError(f"{ref} names a repo, not a file: add the file's path, e.g. {ref}/model.onnx")
    try:
        local = hf_hub_download(ref.repo_id, filename=ref.path, revision=ref.revision, local_files_only=_offline())
    except Exception as error:  # the client raises its own errors, OSError, ValueError, httpx errors…
        raise _hub_error(ref, error) from error
    # The cache keeps files under snapshots/<commit sha>/<path in repo>.
    _warn_if_not_pinned(ref, Path(local).parents[ref.path.count("/")].name)
    return Path(local)  # not resolved: the snapshot path keeps the file's name, the blob it links to does not


def hub_folder(ref: str | HubRef, allow_patterns: list[str] | None = None) -> Path:
    """The local copy of a folder on the Hub (its path, or the whole repo), restricted to `allow_patterns`
    (relative to the folder, e.g. ["unet/*"]; None: every file in it)."""
    ref = parse_hub_ref(ref) if isinstance(ref, str) else ref
    prefix = f"{ref.path}/" if ref.path else ""
    patterns = [prefix + pattern for pattern in allow_patterns or ["*"]]
    try:
        snapshot = snapshot_download(ref.repo_id, revision=ref.revision, allow_patterns=patterns,
                                     local_files_only=_offline())
    except Exception as error:  # as in hub_file
        raise _hub_error(ref, error) from error
    folder = Path(snapshot, ref.path)
    # Offline, the client returns a cached snapshot without checking that it holds the folder.
    if not folder.is_dir():
        raise HubError(f"{ref}: the folder '{ref.path}' is not in the repo at that revision"
                       + (" (or not in the local cache, and HF_HUB_OFFLINE is set)" if _offline() else ""))
    _warn_if_not_pinned(ref, Path(snapshot).name)  # snapshots/<commit sha>
    return folder


def resolve_generator_source(source: str, revision: str | None) -> tuple[str, str | None]:
    """What `open_generator` should open: an existing local path or a Hub id as they are; an hf:// reference to
    a LongTail Studio generator (a folder with generator.json) → its local copy; an hf:// reference to a
    repo's root without one → (repo id, revision), a diffusers text-to-image model that diffusers resolves."""
    if Path(source).exists() or not is_hub_ref(source):
        return source, revision
    ref = parse_hub_ref(source)
    if revision is not None and revision != ref.revision:
        raise HubError(f"{source} is pinned to {ref.revision}, but the revision {revision} was also given: "
                       "give it once, in the reference")
    if _holds_generator(ref):
        # Only what opening the generator needs: the rest of the repo is never downloaded.
        return str(hub_folder(ref, list(GENERATOR_DOWNLOAD_PATTERNS))), None
    if ref.path:
        raise HubError(f"{source} holds no {INFO_FILE}: only a LongTail Studio generator can be a folder in a "
                       "repo; a diffusers text-to-image model must be a repo's root (hf://owner/name@<commit sha>)")
    return ref.repo_id, ref.revision


# ------------------------------------------------------------------------------------------------ helpers


def _is_web_address(text: str) -> bool:
    """A Hub page's address (https://huggingface.co/alice/c10/blob/<sha>/model.onnx, hf.co/...), as people paste."""
    host = urlsplit(text if "://" in text else f"//{text}").hostname or ""
    return text.lower().startswith(("http://", "https://", *constants.HF_URL_HOSTS)) and host in constants.HF_URL_HOSTS


def _offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once, at import; the environment may have been set later.
    return constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def _holds_generator(ref: HubRef) -> bool:
    """Whether the folder at `ref` is a LongTail Studio generator; the local cache answers when it knows."""
    info = _cached(ref.join(INFO_FILE))
    if isinstance(info, str):
        return True  # cached; a generator has a model_index.json too, so this is asked first
    if isinstance(_cached(ref.join("model_index.json")), str):
        return False  # a diffusers pipeline, already cached (maybe for offline use)
    if info is _CACHED_NO_EXIST:
        return False  # the Hub said so before
    try:
        hub_file(ref.join(INFO_FILE))
    except _MissingFile:
        return False
    return True


def _cached(ref: HubRef):
    """The cached file's path, _CACHED_NO_EXIST when the Hub said it does not exist, or None when unknown."""
    return try_to_load_from_cache(ref.repo_id, ref.path, revision=ref.revision)


def _hub_error(ref: HubRef, error: Exception) -> HubError:
    """The client's error as one sentence that names the reference and what to do."""
    # Subclasses first: RevisionNotFoundError and RemoteEntryNotFoundError are HTTP errors too.
    if isinstance(error, HubError):
        return error
    if isinstance(error, RevisionNotFoundError):
        return HubError(f"{ref}: {ref.repo_id} has no revision '{ref.revision}'; check the revision "
                        "(`python -m training push` prints the commit sha to use)")
    if isinstance(error, RemoteEntryNotFoundError):
        return _MissingFile(f"{ref}: {ref.repo_id} has no file '{ref.path}' at that revision; check the file name")
    if isinstance(error, RepositoryNotFoundError):
        return HubError(f"{ref}: the repo {ref.repo_id} was not found on the Hub; check the repo id (a private or "
                        "gated repo also needs a token: `hf auth login` or HF_TOKEN)")
    if isinstance(error, LocalTokenNotFoundError):
        return HubError(f"{ref}: a token is needed and none was found: `hf auth login` or set HF_TOKEN")
    if isinstance(error, LocalEntryNotFoundError) and _offline():
        return HubError(f"{ref} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: download it once "
                        "with network access (HF_HUB_OFFLINE unset), or use a local file")
    if isinstance(error, LocalEntryNotFoundError):
        return HubError(f"{ref}: the Hub could not be reached and it is not in the local Hugging Face cache; check "
                        "the network (and check the repo id / revision / file name)")
    first_line = (str(error).strip().splitlines() or [""])[0]
    return HubError(f"{ref} could not be downloaded ({type(error).__name__}: {first_line}); check the repo id / "
                    "revision / file name and the network")


@functools.cache  # once per reference and commit, not at every file of a folder
def _warn_if_not_pinned(ref: HubRef, commit: str) -> None:
    if not ref.pinned:
        log.warning("%s is not pinned: '%s' is a branch or tag, and what it names can change; it is now commit %s, "
                    "so pin it as %s", ref, ref.revision, commit, replace(ref, revision=commit))
