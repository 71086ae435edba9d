"""Where a model package's files come from: a local folder or a Hugging Face repository.

Hugging Face files are fetched on first use with ``huggingface-hub`` (its progress bars, its cache, and its
offline mode: ``HF_HUB_OFFLINE=1`` or an unreachable hub serve files already in the cache). A repo id may
pin a revision (branch, tag or commit) as ``owner/name@revision``.
"""

from __future__ import annotations

import re
from pathlib import Path

from ...errors import ModelPackageError


class MissingPackageFile(ModelPackageError):
    """The package (local or on the hub) exists but lacks this file."""


REPO_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*"
REPO_ID = re.compile(f"^{REPO_ID_PATTERN}$")
PINNED_REPO_ID = re.compile(f"^(?P<repo>{REPO_ID_PATTERN})(?:@(?P<revision>[^@\\s]+))?$")  # owner/name[@revision]


def pinned(spec: str, revision: str | None) -> str:
    """``spec`` with ``revision`` pinned (``owner/name@revision``); ``revision=None`` leaves it as it is. A folder
    or an already pinned repo id cannot take a revision."""
    if revision is None:
        return spec
    if Path(spec).expanduser().exists() or not REPO_ID.match(spec):
        raise ModelPackageError(f"--revision {revision} needs a Hugging Face repo id without a revision, not {spec!r}",
                                "drop --revision for a local folder, or pass the repo id alone")
    return f"{spec}@{revision}"


class PackageSource:
    """Files of one model package, addressed by their path inside the package."""

    def __init__(self, spec: str | Path, revision: str | None = None, *, relative_to: Path | None = None):
        """``spec``: a folder, ``owner/name`` or ``owner/name@revision``; ``revision`` wins over the latter."""
        self.spec = str(spec)
        self.revision = revision
        local = Path(spec).expanduser()
        if relative_to is not None and not local.is_absolute() and (relative_to / local).is_dir():
            local = relative_to / local
        if local.is_dir():
            self.local_root: Path | None = local.resolve()
            self.repo_id: str | None = None
        elif local.exists():
            raise ModelPackageError(f"model package {self.spec} is a file, not a folder",
                                    "pass the folder that holds the package's config files")
        elif match := PINNED_REPO_ID.match(self.spec):
            self.local_root, self.repo_id = None, match["repo"]
            self.revision = revision or match["revision"]
        else:
            raise ModelPackageError(f"model package {self.spec!r} is neither a folder nor a Hugging Face repo id",
                                    "pass an existing folder, or a repo id such as LuLing/IScene")

    @property
    def id(self) -> str:
        """A stable name for manifests: the repo id (with its pinned revision), or the folder path."""
        if self.repo_id is None:
            return str(self.local_root)
        return self.repo_id if self.revision is None else f"{self.repo_id}@{self.revision}"

    def __repr__(self) -> str:
        return f"PackageSource({self.id!r})"

    def resolve(self, spec: str) -> PackageSource:
        """Another package named from inside this one (a repo id, or a folder relative to this package)."""
        return PackageSource(spec, relative_to=self.local_root)

    def path(self, relpath: str) -> Path:
        """The local path of a package file, downloading it first if the package is remote."""
        if self.local_root is not None:
            path = self.local_root / relpath
            if not path.is_file():
                raise MissingPackageFile(f"model package {self.id} has no file {relpath}",
                                        "the package is incomplete: download it again or check the folder")
            return path
        return self._download(relpath)

    def has(self, relpath: str) -> bool:
        if self.local_root is not None:
            return (self.local_root / relpath).is_file()
        try:
            self._download(relpath)
        except MissingPackageFile:
            return False
        return True

    def _download(self, relpath: str) -> Path:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            FileMetadataError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
        # LocalEntryNotFoundError subclasses EntryNotFoundError: it must be caught first.
        try:
            return Path(hf_hub_download(self.repo_id, relpath, revision=self.revision))
        except LocalEntryNotFoundError:
            raise ModelPackageError(
                f"{relpath} of {self.id} is not in the local Hugging Face cache, and the hub is unreachable "
                "(or HF_HUB_OFFLINE is set)",
                "connect to the internet once (or run `iscene-server download` where it is), "
                "or pass a local package folder with --model") from None
        except EntryNotFoundError:
            raise MissingPackageFile(f"Hugging Face repo {self.repo_id} has no file {relpath}",
                                    "check that the repo id names an I-Scene or TRELLIS package") from None
        except RevisionNotFoundError:
            raise ModelPackageError(f"Hugging Face repo {self.repo_id} has no revision {self.revision}",
                                    "check the branch, tag or commit given with --revision (or after '@')") from None
        except RepositoryNotFoundError:
            raise ModelPackageError(f"Hugging Face repo {self.repo_id} was not found",
                                    "check the spelling; private repos need `hf auth login`") from None
        except (HfHubHTTPError, FileMetadataError) as exc:
            raise ModelPackageError(f"downloading {relpath} of {self.repo_id} failed: {str(exc).splitlines()[0]}",
                                    "try again later; if HF_ENDPOINT is set, check that it names a Hugging Face "
                                    "hub (or a mirror of it)") from None
